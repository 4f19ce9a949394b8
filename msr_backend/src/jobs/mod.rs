//! Node-wide job bookkeeping shared by the SLURM plugin and the PBS hook: the first job on a node
//! snapshots its registers, the last job to end puts them back.
//!
//! - [`state_dir`]: where the state lives, who may own it, the node lock;
//! - [`registry`]: one file per job holding the node, named by a validated [`JobId`];
//! - this module, the protocol: [`begin`], [`end`], [`status`] and [`reconcile`].
//!
//! Several jobs may share a node. [`begin`] registers a job; if no other job holds the node it
//! first snapshots the registers. [`end`] deregisters a job; if it was the last one it restores
//! the snapshot, verifies it and removes the node's state. A node-wide lock serialises concurrent
//! prologs and epilogs.
//!
//! Cases the resource managers produce, and what happens:
//! - a repeated begin of a registered job (a requeued job's prolog, a retried hook): nothing
//!   more, [`BeginOutcome::AlreadyRegistered`];
//! - an end of a job that never registered (its prolog failed or never ran): nothing to restore
//!   unless it is the last one and a snapshot is left, [`EndOutcome::NotRegistered`];
//! - a restore that cannot complete: an error naming the registers, the snapshot is kept, so the
//!   next end (or an admin's `msrsave restore STATE_DIR/snapshot.msr`) tries again and the next
//!   begin reuses it instead of snapshotting a node in an unknown state;
//! - a job the scheduler forgot (slurmd or the mom died, its epilog never ran): [`reconcile`],
//!   called by the plugin and the hooks with the scheduler's own list of the jobs on the node,
//!   ends every registered job the scheduler no longer runs there (registered for longer than
//!   [`RECONCILE_GRACE`]), so the last real job restores the node.
//!
//! Nothing here knows about SLURM or PBS: job ids are opaque strings, and the scheduler's view
//! comes from the caller.

pub mod registry;
pub mod state_dir;

use std::collections::BTreeSet;
use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

pub use registry::{validate_job_id, JobId, Registration, MAX_JOB_ID_LEN};
pub use state_dir::{NodeLock, StateDir, JOBS_DIR, LOCK_FILE, SNAPSHOT_FILE};

use crate::finding::{name_registers, Finding};
use crate::fsio::StaleTemp;
use crate::restore::MsrChange;

/// How many registers an error message names before it says "and N more".
pub const NAMED_REGISTERS: usize = 5;
/// A registration younger than this is never reaped, whatever the scheduler says: a job whose
/// prolog has just run may not show in the scheduler's list of the node's jobs yet.
pub const RECONCILE_GRACE: Duration = Duration::from_secs(120);

/// What a snapshot took.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SnapshotSummary {
    pub cpus: usize,
    pub msrs: usize,
    pub unreadable: usize,
    pub elapsed: Duration,
}

/// What a restore did: [`NodeRegisters::restore`] reads the node once, restores, and verifies
/// what it wrote by reading it back.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RestoreSummary {
    pub written: usize,
    pub unchanged: usize,
    pub verified: usize,
    /// How many registers were not restored or not verified (non-zero: the restore failed); the
    /// first of them in `failures`.
    pub failed: usize,
    pub failures: Vec<Finding>,
    /// Registers known to still differ from the snapshot after the restore.
    pub drift: Vec<Finding>,
    /// What the jobs had changed: the registers that differed before the restore, per MSR.
    pub changed: Vec<MsrChange>,
    /// Things an admin should know that did not stop the restore (changed write masks, CPUs
    /// online now that the snapshot does not cover).
    pub notes: Vec<String>,
    pub elapsed: Duration,
}

/// The MSR side of the bookkeeping: how to snapshot the node into a file and put it back.
/// This module decides when; an implementation decides how (device, allowlist, root).
pub trait NodeRegisters {
    /// Snapshot every allowlisted register of the node into `file` (written atomically).
    fn snapshot(&self, file: &Path, job: &JobId) -> crate::Result<SnapshotSummary>;
    /// Restore the node from `file` and verify. `Err` only when nothing could be done
    /// (unreadable file, no device); per-register failures are in the summary.
    fn restore(&self, file: &Path) -> crate::Result<RestoreSummary>;
}

#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error("job id {id:?} is not usable as a file name: {reason}")]
    BadJobId { id: String, reason: String },

    #[error("state directory {path}: {reason}")]
    StateDir { path: PathBuf, reason: String },

    #[error(
        "{path} is {reason}; remove it (the state directory holds only what msr-restore writes)"
    )]
    Planted { path: PathBuf, reason: String },

    #[error("{path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("{path}")]
    Write {
        path: PathBuf,
        #[source]
        source: crate::fsio::WriteError,
    },

    #[error("node lock {path} still held after {waited:?} (holder: {holder})")]
    LockTimeout {
        path: PathBuf,
        waited: Duration,
        holder: String,
    },

    #[error("cannot snapshot the node into {path} for job {job}")]
    Snapshot {
        job: JobId,
        path: PathBuf,
        #[source]
        source: Box<crate::Error>,
    },

    #[error("cannot restore the node from {path} at the end of job {job} (snapshot kept)")]
    RestoreError {
        job: JobId,
        path: PathBuf,
        #[source]
        source: Box<crate::Error>,
    },

    #[error(
        "restore incomplete at the end of job {job}: {} register(s) not restored or not verified: {} (snapshot kept at {})",
        summary.failed,
        name_registers(&summary.failures, NAMED_REGISTERS),
        path.display()
    )]
    RestoreIncomplete {
        job: JobId,
        path: PathBuf,
        summary: Box<RestoreSummary>,
    },

    #[error("job {job} is the last job on the node but its snapshot {path} is missing: the registers cannot be restored")]
    SnapshotMissing { job: JobId, path: PathBuf },

    #[error("state inconsistent: job(s) {} hold the node but the snapshot {path} is missing; remove the files in {} once the node is known good", jobs.join(", "), path.parent().unwrap_or(Path::new("")).join(JOBS_DIR).display())]
    NoSnapshotForRunningJobs { jobs: Vec<String>, path: PathBuf },

    #[error("state directory {path} holds {}, which msr-restore did not put there; remove it", strangers.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", "))]
    Strangers {
        path: PathBuf,
        strangers: Vec<PathBuf>,
    },
}

pub type JobResult<T> = std::result::Result<T, JobError>;

/// What [`begin`] did.
#[derive(Clone, Debug, PartialEq)]
pub enum BeginOutcome {
    /// The first job on the node: the registers were snapshotted.
    Snapshot(SnapshotSummary),
    /// Other jobs hold the node: the job was added, the snapshot of the first one stands.
    Joined { others: Vec<String> },
    /// No job held the node but the snapshot of an earlier, failed restore was there: it is
    /// kept as the state to restore (the node's current registers are not trusted).
    ReusedSnapshot { created: Option<SystemTime> },
    /// The job was already registered (a requeued job, a repeated prolog): nothing changed.
    AlreadyRegistered,
}

/// What [`end`] did.
#[derive(Clone, Debug, PartialEq)]
pub enum EndOutcome {
    /// The last job: registers restored and verified, state removed. `drift` may be non-empty.
    Restored(RestoreSummary),
    /// Other jobs still hold the node: nothing restored.
    OthersRemain { others: Vec<String> },
    /// The job was not registered (its begin failed or never ran) and no restore was due.
    NotRegistered,
}

/// Who holds the node: for `msrsave job status` and health checks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeStatus {
    pub jobs: Vec<String>,
    pub snapshot: Option<PathBuf>,
}

/// What the scheduler says runs on this node, asked on the node itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SchedulerView {
    /// The ids of the jobs running on the node, spelt as the jobs were registered.
    Running {
        jobs: BTreeSet<String>,
        source: String,
    },
    /// The scheduler could not be asked: nothing is reaped.
    Unknown { why: String },
}

/// A registered job that [`reconcile`] ended, and why it was judged gone.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reaped {
    pub job: JobId,
    pub why: String,
}

impl fmt::Display for Reaped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "job {} ended by reconciliation: {}", self.job, self.why)
    }
}

/// What [`reconcile`] did.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Reconciled {
    pub reaped: Vec<Reaped>,
    /// Registrations left alone because the scheduler could not be asked.
    pub unknown: Option<String>,
    /// The restore done because the reaped jobs were the last ones.
    pub restored: Option<RestoreSummary>,
    /// Temporary files of dead writers removed from the state directory.
    pub stale_temps: Vec<StaleTemp>,
}

/// The state directory made ready, with nothing in it that is not ours.
fn open_state(state: &StateDir) -> JobResult<Vec<StaleTemp>> {
    let stale = state.prepare()?;
    let strangers = state.strangers()?;
    if !strangers.is_empty() {
        return Err(JobError::Strangers {
            path: state.path.clone(),
            strangers,
        });
    }
    Ok(stale)
}

fn names(jobs: &[Registration]) -> Vec<String> {
    jobs.iter().map(|r| r.job.to_string()).collect()
}

/// Register `job_id` on the node; snapshot the node first if no other job holds it.
pub fn begin(state: &StateDir, job_id: &str, regs: &dyn NodeRegisters) -> JobResult<BeginOutcome> {
    let job = JobId::new(job_id)?;
    open_state(state)?;
    let _lock = NodeLock::acquire(state, &format!("job {job} begin"))?;
    if registry::is_registered(state, &job)? {
        return Ok(BeginOutcome::AlreadyRegistered);
    }
    let others = registry::list(state)?;
    let snapshot = state.snapshot_path();
    let have_snapshot = state.entry(&snapshot)?;
    let outcome = if !others.is_empty() {
        if !have_snapshot {
            return Err(JobError::NoSnapshotForRunningJobs {
                jobs: names(&others),
                path: snapshot,
            });
        }
        BeginOutcome::Joined {
            others: names(&others),
        }
    } else if have_snapshot {
        let created = fs::symlink_metadata(&snapshot)
            .and_then(|m| m.modified())
            .ok();
        BeginOutcome::ReusedSnapshot { created }
    } else {
        let summary = regs
            .snapshot(&snapshot, &job)
            .map_err(|source| JobError::Snapshot {
                job: job.clone(),
                path: snapshot.clone(),
                source: Box::new(source),
            })?;
        BeginOutcome::Snapshot(summary)
    };
    if let Err(e) = registry::register(state, &job) {
        // Leave no snapshot that no job owns behind a failed first begin.
        if matches!(outcome, BeginOutcome::Snapshot(_)) {
            let _ = fs::remove_file(&snapshot);
        }
        return Err(e);
    }
    Ok(outcome)
}

/// Restore from the snapshot now that no job holds the node; remove it if the restore is whole.
fn restore_last(
    state: &StateDir,
    job: &JobId,
    regs: &dyn NodeRegisters,
) -> JobResult<RestoreSummary> {
    let snapshot = state.snapshot_path();
    let summary = regs
        .restore(&snapshot)
        .map_err(|source| JobError::RestoreError {
            job: job.clone(),
            path: snapshot.clone(),
            source: Box::new(source),
        })?;
    if summary.failed > 0 {
        return Err(JobError::RestoreIncomplete {
            job: job.clone(),
            path: snapshot,
            summary: Box::new(summary),
        });
    }
    fs::remove_file(&snapshot).map_err(|source| JobError::Io {
        path: snapshot.clone(),
        source,
    })?;
    Ok(summary)
}

/// Deregister `job_id`; if no job holds the node any more, restore it from the snapshot, verify
/// and remove the snapshot. On a failed restore the snapshot is kept.
pub fn end(state: &StateDir, job_id: &str, regs: &dyn NodeRegisters) -> JobResult<EndOutcome> {
    let job = JobId::new(job_id)?;
    open_state(state)?;
    let _lock = NodeLock::acquire(state, &format!("job {job} end"))?;
    let registered = registry::deregister(state, &job)?;
    let others = registry::list(state)?;
    if !others.is_empty() {
        return Ok(if registered {
            EndOutcome::OthersRemain {
                others: names(&others),
            }
        } else {
            EndOutcome::NotRegistered
        });
    }
    if !state.entry(&state.snapshot_path())? {
        return if registered {
            Err(JobError::SnapshotMissing {
                job,
                path: state.snapshot_path(),
            })
        } else {
            Ok(EndOutcome::NotRegistered)
        };
    }
    // No job holds the node and a snapshot is there: the last job ended (or an earlier restore
    // failed, or a begin died between snapshot and registration): restore now.
    restore_last(state, &job, regs).map(EndOutcome::Restored)
}

/// End every registered job that `view` says no longer runs on the node (except `own`, the job
/// whose prolog or epilog is calling, and registrations younger than [`RECONCILE_GRACE`]); if
/// they were the last, restore the node.
pub fn reconcile(
    state: &StateDir,
    regs: &dyn NodeRegisters,
    view: &SchedulerView,
    own: Option<&str>,
) -> JobResult<Reconciled> {
    let stale_temps = open_state(state)?;
    let mut out = Reconciled {
        stale_temps,
        ..Reconciled::default()
    };
    let (running, source) = match view {
        SchedulerView::Running { jobs, source } => (jobs, source),
        SchedulerView::Unknown { why } => {
            out.unknown = Some(why.clone());
            return Ok(out);
        }
    };
    let _lock = NodeLock::acquire(state, "reconcile")?;
    let now = SystemTime::now();
    for r in registry::list(state)? {
        if own == Some(r.job.as_str()) || running.contains(r.job.as_str()) {
            continue;
        }
        let age = r.since.and_then(|t| now.duration_since(t).ok());
        if age.is_none_or(|a| a < RECONCILE_GRACE) {
            continue;
        }
        if registry::deregister(state, &r.job)? {
            out.reaped.push(Reaped {
                why: format!(
                    "registered {} s ago, and {source} does not list it among the jobs on this node",
                    age.unwrap_or_default().as_secs()
                ),
                job: r.job,
            });
        }
    }
    if let Some(last) = out.reaped.last().map(|r| r.job.clone()) {
        if registry::list(state)?.is_empty() && state.entry(&state.snapshot_path())? {
            out.restored = Some(restore_last(state, &last, regs)?);
        }
    }
    Ok(out)
}

/// The jobs holding the node and whether a snapshot is kept, read under the lock.
pub fn status(state: &StateDir) -> JobResult<NodeStatus> {
    match fs::symlink_metadata(&state.path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(NodeStatus {
                jobs: Vec::new(),
                snapshot: None,
            })
        }
        Err(source) => {
            return Err(JobError::Io {
                path: state.path.clone(),
                source,
            })
        }
        Ok(_) => {}
    }
    open_state(state)?;
    let _lock = NodeLock::acquire(state, "status")?;
    let snapshot = state.snapshot_path();
    Ok(NodeStatus {
        jobs: names(&registry::list(state)?),
        snapshot: state.entry(&snapshot)?.then_some(snapshot),
    })
}

#[cfg(test)]
mod tests;
