//! The error where whole operations meet (use cases in [`crate::operations`], the job protocol's
//! device side). Each module owns its own error type; this one only gathers them. Every message
//! names what failed (file, line, CPU, MSR) and leaves its cause to `source()`: print an error
//! with [`chain`] to see each cause once.

use std::path::PathBuf;

use crate::allowlist::AllowlistError;
use crate::config::ConfigError;
use crate::device::control::ControlError;
use crate::device::select::NoBackend;
use crate::device::DeviceError;
use crate::fsio::InputError;
use crate::node::NodeError;
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
    NoBackend(#[from] NoBackend),

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

/// An error and its causes on one line (`a: b: c`), each cause once.
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let text = c.to_string();
        // A transparent wrapper repeats its inner message: print it once.
        if !out.ends_with(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cause = c.source();
    }
    out
}
