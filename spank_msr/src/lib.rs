//! msr-restore's SLURM SPANK plugin (`libspank_msr.so`).
//!
//! In slurmd's job prolog (as root) it registers the job on the node and, for the first job,
//! snapshots the node's MSRs; in the job epilog it deregisters the job and, for the last job,
//! restores and verifies the registers. The bookkeeping and all MSR work are msr_backend's
//! ([`msr_backend::jobs`]); this crate only maps plugstack.conf arguments to a configuration and
//! outcomes and errors to SLURM (log lines, return codes, a drain reason).
//!
//! Build the plugin with `spank_msr/build-plugin.sh [--slurm-headers DIR]`, once per Slurm
//! major.minor (it runs `cargo build --release -p spank_msr --features slurm` against that
//! Slurm's headers; needs libslurm-dev and libclang-dev); without the feature the library holds
//! only the configuration and message code, so the workspace builds on machines without Slurm.
//!
//! In srun, sbatch and salloc (local and allocator contexts) and in job steps the plugin returns
//! at once: it does nothing privileged and touches no file there.

pub mod config;
pub mod report;

// The entry points need slurmd's symbols and Slurm's headers: only with the `slurm` feature, and
// not in unit tests.
#[cfg(all(feature = "slurm", not(test)))]
mod plugin;
