//! The error where whole operations meet (use cases in [`crate::operations`], the job protocol's
//! device side). Each module owns its own error type; this one only gathers them. Every message
//! names what failed (file, line, CPU, MSR) and leaves its cause to `source()`: print an error
//! with [`chain`] to see each cause once.

use std::path::PathBuf;

use crate::allowlist::AllowlistError;
use crate::config::ConfigError;
use crate::device::control::ControlError;
use crate::device::select::OpenError;
use crate::device::DeviceError;
use crate::fsio::InputError;
use crate::node::NodeError;
use crate::policy::PolicyError;
use crate::savefile::SaveFileError;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Allowlist(#[from] AllowlistError),

    #[error(transparent)]
    SaveFile(#[from] SaveFileError),

    #[error(transparent)]
    Device(#[from] DeviceError),

    #[error(transparent)]
    Node(#[from] NodeError),

    #[error(transparent)]
    Input(#[from] InputError),

    #[error(transparent)]
    Config(#[from] ConfigError),

    #[error(transparent)]
    Control(#[from] ControlError),

    #[error(transparent)]
    Open(#[from] OpenError),

    #[error(transparent)]
    Policy(#[from] PolicyError),

    #[error("{path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// A request that cannot be carried out as asked (the message says why and what to do).
    #[error("{0}")]
    Usage(String),
}

impl Error {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}

pub use crate::cause::chain;
