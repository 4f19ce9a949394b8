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

/// An error and its causes on one line (`a: b: c`). Errors in this library leave their cause
/// out of their own message and give it as the source, so each cause is printed once.
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let text = c.to_string();
        // Older messages still embed their source's text; do not print it twice.
        if !out.ends_with(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cause = c.source();
    }
    out
}
