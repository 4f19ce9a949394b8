//! The library's error type. Each variant names what failed (file, line, CPU, MSR) so that a
//! binary can print it as it is and an admin knows what to do.

use std::path::PathBuf;

use crate::allowlist::AllowlistError;
use crate::device::DeviceError;
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

    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("{path}: {reason}")]
    Node { path: PathBuf, reason: String },

    #[error("no usable MSR backend: {0}")]
    NoBackend(String),

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
