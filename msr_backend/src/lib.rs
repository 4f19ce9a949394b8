//! msr_backend: snapshot every allowlisted MSR on every online CPU, save it durably, put the
//! write-masked bits back later, and tell when a node has drifted from a snapshot.
//!
//! Data flows one way: allowlist + node -> device -> snapshot -> save file -> plan -> device ->
//! report. The decisions that matter (which bits a restore may write, what counts as drift) are
//! pure functions in [`plan`], tested without any device.
//!
//! Nothing here knows about SLURM or PBS; the plugin and the hooks call [`jobs`] or the `msrsave`
//! command line.

pub mod allowlist;
pub mod cause;
pub mod config;
pub mod device;
pub mod emulate;
pub mod error;
pub mod finding;
pub mod fleet;
pub mod fsio;
pub mod jobs;
pub mod metrics;
pub mod msrs;
pub mod node;
pub mod operations;
pub mod plan;
pub mod policy;
pub mod restore;
pub mod savefile;
pub mod snapshot;
#[cfg(any(test, feature = "test-doubles"))]
pub mod testing;
pub mod topology;
pub mod types;

pub use error::{Error, Result};
pub use types::{CpuId, Hex64, MsrAddr, WriteMask};
