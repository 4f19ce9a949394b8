//! Node-wide job bookkeeping shared by the SLURM plugin and the PBS hook: the first job on a node
//! snapshots its registers, the last job to end puts them back.
//!
//! Several jobs may share a node. [`begin`] registers a job; if no other job holds the node it
//! first snapshots the registers. [`end`] deregisters a job; if it was the last one it restores
//! the snapshot, verifies it, checks for drift and removes the node's state. A node-wide lock
//! (`flock` on `STATE_DIR/lock`) serialises concurrent prologs and epilogs.
//!
//! State directory layout (root-owned, mode 0700):
//!
//! ```text
//! STATE_DIR/lock           the node-wide lock; holds "pid job action" of the holder, for messages
//! STATE_DIR/snapshot.msr   the node as it was before the first of the current jobs (a save file)
//! STATE_DIR/jobs/<JOBID>   one file per job holding the node
//! ```
//!
//! Cases the resource managers produce, and what happens:
//! - a repeated begin of a registered job (a requeued job's prolog, a retried hook): nothing
//!   more, [`BeginOutcome::AlreadyRegistered`];
//! - an end of a job that never registered (its prolog failed or never ran): nothing to restore
//!   unless it is the last one and a snapshot is left, [`EndOutcome::NotRegistered`];
//! - a restore that cannot complete: an error naming the registers, the snapshot is kept, so the
//!   next end (or an admin's `msrsave restore STATE_DIR/snapshot.msr`) tries again and the next
//!   begin reuses it instead of snapshotting a node in an unknown state.
//!
//! Nothing here knows about SLURM or PBS: job ids are opaque strings.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use std::sync::Arc;

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

use crate::device::select::{open_backend, BackendRequest};
use crate::node::{hostname, Node};
use crate::plan::{Drift, DriftBits};
use crate::restore::{self, RegisterFailure, Stage};
use crate::savefile::{SaveFile, SaveMeta};
use crate::snapshot::Snapshot;

/// The state directory the plugin and the hooks use unless told otherwise. Under /run: a reboot
/// resets the registers and empties it together.
pub const DEFAULT_STATE_DIR: &str = "/run/msr-restore";
/// How long [`begin`] and [`end`] wait for the node-wide lock unless told otherwise.
pub const DEFAULT_LOCK_TIMEOUT: Duration = Duration::from_secs(60);
/// The snapshot file in the state directory.
pub const SNAPSHOT_FILE: &str = "snapshot.msr";
/// The lock file in the state directory.
pub const LOCK_FILE: &str = "lock";
/// The directory of job files in the state directory.
pub const JOBS_DIR: &str = "jobs";
/// The longest job id accepted.
pub const MAX_JOB_ID_LEN: usize = 128;
/// How many registers an error message names before it says "and N more".
pub const NAMED_REGISTERS: usize = 5;

/// Where the state is and how long to wait for the lock.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobsConfig {
    pub state_dir: PathBuf,
    pub lock_timeout: Duration,
}

impl Default for JobsConfig {
    fn default() -> Self {
        JobsConfig {
            state_dir: PathBuf::from(DEFAULT_STATE_DIR),
            lock_timeout: DEFAULT_LOCK_TIMEOUT,
        }
    }
}

impl JobsConfig {
    pub fn new(state_dir: impl Into<PathBuf>) -> Self {
        JobsConfig {
            state_dir: state_dir.into(),
            ..JobsConfig::default()
        }
    }

    pub fn snapshot_path(&self) -> PathBuf {
        self.state_dir.join(SNAPSHOT_FILE)
    }

    pub fn lock_path(&self) -> PathBuf {
        self.state_dir.join(LOCK_FILE)
    }

    pub fn jobs_dir(&self) -> PathBuf {
        self.state_dir.join(JOBS_DIR)
    }
}

/// One register that could not be restored or verified, or that drifted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RegisterProblem {
    pub cpu: u32,
    /// `None`: the whole CPU (offline).
    pub msr: Option<u32>,
    /// The register's name, when known (`IA32_PERF_CTL`).
    pub name: Option<String>,
    /// What went wrong: an errno and its meaning, or expected/actual values.
    pub detail: String,
}

impl fmt::Display for RegisterProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CPU {}", self.cpu)?;
        if let Some(msr) = self.msr {
            write!(f, " MSR {msr:#010x}")?;
        }
        if let Some(n) = &self.name {
            write!(f, " ({n})")?;
        }
        write!(f, ": {}", self.detail)
    }
}

/// Name the first [`NAMED_REGISTERS`] problems, then count the rest.
pub fn name_registers(problems: &[RegisterProblem]) -> String {
    let mut s = problems
        .iter()
        .take(NAMED_REGISTERS)
        .map(|p| p.to_string())
        .collect::<Vec<_>>()
        .join("; ");
    if problems.len() > NAMED_REGISTERS {
        s.push_str(&format!("; and {} more", problems.len() - NAMED_REGISTERS));
    }
    s
}

/// What a snapshot took.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SnapshotSummary {
    pub cpus: usize,
    pub msrs: usize,
    pub unreadable: usize,
    pub elapsed: Duration,
}

/// What a restore did: [`NodeRegisters::restore`] restores, verifies by reading back and then
/// checks the node against the snapshot.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RestoreSummary {
    pub written: usize,
    pub unchanged: usize,
    pub verified: usize,
    /// Registers not restored or not verified. Non-empty means the restore failed.
    pub failures: Vec<RegisterProblem>,
    /// Registers that still differ from the snapshot in the check after the restore.
    pub drift: Vec<RegisterProblem>,
    /// Things an admin should know that did not stop the restore (changed write masks, CPUs
    /// online now that the snapshot does not cover).
    pub notes: Vec<String>,
    pub elapsed: Duration,
}

/// The MSR side of the bookkeeping: how to snapshot the node into a file and put it back.
/// [`crate::jobs`] decides when; an implementation decides how (device, allowlist, root).
pub trait NodeRegisters {
    /// Snapshot every allowlisted register of the node into `file` (written atomically).
    fn snapshot(&self, file: &Path, job_id: &str) -> crate::Result<SnapshotSummary>;
    /// Restore the node from `file`, verify and check for drift. `Err` only when nothing could
    /// be done (unreadable file, no device); per-register failures are in the summary.
    fn restore(&self, file: &Path) -> crate::Result<RestoreSummary>;
}

/// [`NodeRegisters`] on a real (or emulated, with a root) node through the device backends.
/// Opens the backend only when a snapshot or restore is due, so that a job joining a node that
/// is already held costs no device access.
#[derive(Clone, Debug)]
pub struct DeviceRegisters {
    pub node: Node,
    pub request: BackendRequest,
}

impl DeviceRegisters {
    pub fn new(node: Node, request: BackendRequest) -> Self {
        DeviceRegisters { node, request }
    }

    /// From the node-wide configuration (backend, allowlist, allowlist_dir, root).
    pub fn from_config(cfg: &crate::config::Config) -> Self {
        DeviceRegisters {
            node: cfg.root.as_ref().map(Node::new).unwrap_or_default(),
            request: BackendRequest {
                kind: cfg.backend,
                allowlist: cfg.allowlist.clone(),
                allowlist_dirs: cfg.allowlist_dirs.clone(),
            },
        }
    }
}

fn failure_problem(f: &RegisterFailure) -> RegisterProblem {
    let stage = match f.stage {
        Stage::Offline => "offline",
        Stage::Read => "read failed",
        Stage::Write => "write failed",
        Stage::Verify => "verify failed",
    };
    RegisterProblem {
        cpu: f.cpu.0,
        msr: f.msr.map(|m| m.0),
        name: f.name.clone(),
        detail: format!("{stage}: {}", f.error),
    }
}

fn drift_problem(d: &Drift) -> RegisterProblem {
    RegisterProblem {
        cpu: d.cpu.0,
        msr: Some(d.msr.0),
        name: d.name.clone(),
        detail: format!(
            "expected {} found {} (bits {})",
            d.expected, d.actual, d.changed_bits
        ),
    }
}

impl NodeRegisters for DeviceRegisters {
    fn snapshot(&self, file: &Path, job_id: &str) -> crate::Result<SnapshotSummary> {
        let start = Instant::now();
        let ob = open_backend(&self.node, &self.request)?;
        let snapshot = Snapshot::take(ob.device.as_ref(), Arc::clone(&ob.allowlist), &ob.online)?;
        let mut meta = SaveMeta::now(
            hostname(),
            ob.node.cpu_identity()?,
            ob.node.kernel_release(),
            ob.device.kind(),
        );
        meta.job_id = Some(job_id.to_string());
        meta.msr_safe = ob.node.msr_safe_version();
        let summary = SnapshotSummary {
            cpus: snapshot.cpus.len(),
            msrs: snapshot.allowlist.len(),
            unreadable: snapshot.unreadable(),
            elapsed: Duration::ZERO,
        };
        SaveFile { meta, snapshot }.store(file)?;
        Ok(SnapshotSummary {
            elapsed: start.elapsed(),
            ..summary
        })
    }

    fn restore(&self, file: &Path) -> crate::Result<RestoreSummary> {
        let start = Instant::now();
        let saved = SaveFile::load(file)?;
        saved.check_host(file, &hostname())?;
        let ob = open_backend(&self.node, &self.request)?;
        let dev = ob.device.as_ref();
        let r = restore::restore(dev, &saved.snapshot, &ob.allowlist, &ob.online, false)?;
        let c = restore::check(
            dev,
            &saved.snapshot,
            &ob.allowlist,
            &ob.online,
            DriftBits::Writable,
        )?;
        let mut failures: Vec<RegisterProblem> = r.failures.iter().map(failure_problem).collect();
        // A register the check could not read after the restore is not verified either.
        for f in c.failures.iter().map(failure_problem) {
            if !failures.contains(&f) {
                failures.push(f);
            }
        }
        let mut notes: Vec<String> = r
            .mask_changes
            .iter()
            .map(|m| match m.current_mask {
                Some(cur) => format!(
                    "MSR {} write mask changed since the snapshot: {} then, {} now; restored bits {}",
                    m.msr, m.saved_mask, cur, m.effective_mask
                ),
                None => format!(
                    "MSR {} is no longer in the allowlist: left alone",
                    m.msr
                ),
            })
            .collect();
        if !r.new_cpus.is_empty() {
            notes.push(format!(
                "CPUs online now but not in the snapshot, left alone: {}",
                crate::node::format_cpu_list(&r.new_cpus)
            ));
        }
        Ok(RestoreSummary {
            written: r.written,
            unchanged: r.unchanged,
            verified: r.verified,
            failures,
            drift: c.drift.iter().map(drift_problem).collect(),
            notes,
            elapsed: start.elapsed(),
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error("job id {id:?} is not usable as a file name: {reason}")]
    BadJobId { id: String, reason: String },

    #[error("state directory {path}: {reason}")]
    StateDir { path: PathBuf, reason: String },

    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("node lock {path} still held after {waited:?} (holder: {holder})")]
    LockTimeout {
        path: PathBuf,
        waited: Duration,
        holder: String,
    },

    #[error("cannot snapshot the node into {path} for job {job}: {source}")]
    Snapshot {
        job: String,
        path: PathBuf,
        #[source]
        source: Box<crate::Error>,
    },

    #[error(
        "cannot restore the node from {path} at the end of job {job}: {source} (snapshot kept)"
    )]
    RestoreError {
        job: String,
        path: PathBuf,
        #[source]
        source: Box<crate::Error>,
    },

    #[error(
        "restore incomplete at the end of job {job}: {} register(s) not restored or not verified: {} (snapshot kept at {})",
        summary.failures.len(),
        name_registers(&summary.failures),
        path.display()
    )]
    RestoreIncomplete {
        job: String,
        path: PathBuf,
        summary: Box<RestoreSummary>,
    },

    #[error("job {job} is the last job on the node but its snapshot {path} is missing: the registers cannot be restored")]
    SnapshotMissing { job: String, path: PathBuf },

    #[error("state inconsistent: job(s) {} hold the node but the snapshot {path} is missing; remove the files in {} once the node is known good", jobs.join(", "), path.parent().unwrap_or(Path::new("")).join(JOBS_DIR).display())]
    NoSnapshotForRunningJobs { jobs: Vec<String>, path: PathBuf },
}

pub type JobResult<T> = std::result::Result<T, JobError>;

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> JobError + '_ {
    move |source| JobError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// What [`begin`] did.
#[derive(Clone, Debug, PartialEq)]
pub enum BeginOutcome {
    /// The first job on the node: the registers were snapshotted.
    Snapshot(SnapshotSummary),
    /// Other jobs hold the node: the job was added, the snapshot of the first one stands.
    Joined { others: Vec<String> },
    /// No job held the node but the snapshot of an earlier, failed restore was there: it is
    /// kept as the state to restore (the node's current registers are not trusted).
    ReusedSnapshot {
        created: Option<std::time::SystemTime>,
    },
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

/// Check a job id before it becomes a file name: letters, digits and `._-[]@+` (SLURM ids,
/// array ids `123_4`, PBS ids `123[4].server`), not starting with a dot, at most 128 bytes.
pub fn validate_job_id(id: &str) -> JobResult<()> {
    let bad = |reason: &str| JobError::BadJobId {
        id: id.to_string(),
        reason: reason.to_string(),
    };
    if id.is_empty() {
        return Err(bad("empty"));
    }
    if id.len() > MAX_JOB_ID_LEN {
        return Err(bad("longer than 128 bytes"));
    }
    if id.starts_with('.') {
        return Err(bad("starts with a dot"));
    }
    if let Some(c) = id
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || "._-[]@+".contains(*c)))
    {
        return Err(bad(&format!("character {c:?} not allowed")));
    }
    Ok(())
}

/// Create the state directory if needed and refuse one that others could plant files in.
fn prepare_state_dir(cfg: &JobsConfig) -> JobResult<()> {
    let dir = &cfg.state_dir;
    let bad = |reason: String| JobError::StateDir {
        path: dir.clone(),
        reason,
    };
    if !dir.is_absolute() {
        return Err(bad("not an absolute path".to_string()));
    }
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| bad(format!("cannot create: {e}")))?;
    let meta = fs::symlink_metadata(dir).map_err(|e| bad(format!("cannot stat: {e}")))?;
    if !meta.file_type().is_dir() {
        return Err(bad(
            "not a directory (a symbolic link is refused)".to_string()
        ));
    }
    let euid = nix::unistd::geteuid().as_raw();
    if meta.uid() != euid {
        return Err(bad(format!(
            "owned by uid {}, not by this process (uid {euid})",
            meta.uid()
        )));
    }
    if meta.mode() & 0o022 != 0 {
        return Err(bad(format!(
            "writable by group or others (mode {:o})",
            meta.mode() & 0o7777
        )));
    }
    let jobs = cfg.jobs_dir();
    match fs::DirBuilder::new().mode(0o700).create(&jobs) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(bad(format!("cannot create {}: {e}", jobs.display()))),
    }
    let jm = fs::symlink_metadata(&jobs).map_err(io_err(&jobs))?;
    if !jm.file_type().is_dir() {
        return Err(bad(format!("{} is not a directory", jobs.display())));
    }
    Ok(())
}

/// The node-wide lock, released when dropped (the kernel releases it if the process dies).
pub struct NodeLock {
    file: Flock<File>,
}

impl NodeLock {
    /// Take the lock, waiting up to `cfg.lock_timeout`. `what` ("job 12 begin") is written into
    /// the lock file so that a waiter that times out can name the holder.
    pub fn acquire(cfg: &JobsConfig, what: &str) -> JobResult<NodeLock> {
        let path = cfg.lock_path();
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&path)
            .map_err(io_err(&path))?;
        let start = Instant::now();
        let mut pause = Duration::from_millis(2);
        let mut locked = loop {
            match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
                Ok(l) => break l,
                Err((f, Errno::EWOULDBLOCK)) | Err((f, Errno::EINTR)) => file = f,
                Err((_, e)) => return Err(io_err(&path)(std::io::Error::from(e))),
            }
            if start.elapsed() >= cfg.lock_timeout {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                let holder = holder.trim();
                return Err(JobError::LockTimeout {
                    path,
                    waited: cfg.lock_timeout,
                    holder: if holder.is_empty() {
                        "unknown".to_string()
                    } else {
                        holder.to_string()
                    },
                });
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(50));
        };
        let note = format!("pid {} {what}\n", std::process::id());
        let _ = locked.set_len(0);
        let _ = locked.seek(SeekFrom::Start(0));
        let _ = locked.write_all(note.as_bytes());
        Ok(NodeLock { file: locked })
    }
}

impl Drop for NodeLock {
    fn drop(&mut self) {
        // Clear the holder note; dropping the Flock unlocks.
        let _ = self.file.set_len(0);
    }
}

fn job_path(cfg: &JobsConfig, job_id: &str) -> PathBuf {
    cfg.jobs_dir().join(job_id)
}

/// The registered jobs, sorted. Files that are not valid job ids (temporary files) are skipped.
fn list_jobs(cfg: &JobsConfig) -> JobResult<Vec<String>> {
    let dir = cfg.jobs_dir();
    let mut jobs = Vec::new();
    let rd = match fs::read_dir(&dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(jobs),
        Err(e) => return Err(io_err(&dir)(e)),
    };
    for entry in rd {
        let entry = entry.map_err(io_err(&dir))?;
        if let Some(name) = entry.file_name().to_str() {
            if validate_job_id(name).is_ok() {
                jobs.push(name.to_string());
            }
        }
    }
    jobs.sort();
    Ok(jobs)
}

fn exists(path: &Path) -> JobResult<bool> {
    match fs::symlink_metadata(path) {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(io_err(path)(e)),
    }
}

fn register(cfg: &JobsConfig, job_id: &str) -> JobResult<()> {
    let path = job_path(cfg, job_id);
    let text = format!(
        "job {job_id}\nbegan {}\npid {}\n",
        humantime::format_rfc3339_seconds(std::time::SystemTime::now()),
        std::process::id()
    );
    crate::savefile::write_atomically(&path, text.as_bytes(), crate::savefile::SAVE_FILE_MODE)
        .map_err(|e| JobError::Io {
            path: path.clone(),
            source: std::io::Error::other(e.to_string()),
        })?;
    fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).map_err(io_err(&path))
}

/// Register `job_id` on the node; snapshot the node first if no other job holds it.
pub fn begin(cfg: &JobsConfig, job_id: &str, regs: &dyn NodeRegisters) -> JobResult<BeginOutcome> {
    validate_job_id(job_id)?;
    prepare_state_dir(cfg)?;
    let _lock = NodeLock::acquire(cfg, &format!("job {job_id} begin"))?;
    if exists(&job_path(cfg, job_id))? {
        return Ok(BeginOutcome::AlreadyRegistered);
    }
    let others = list_jobs(cfg)?;
    let snapshot = cfg.snapshot_path();
    let have_snapshot = exists(&snapshot)?;
    let outcome = if !others.is_empty() {
        if !have_snapshot {
            return Err(JobError::NoSnapshotForRunningJobs {
                jobs: others,
                path: snapshot,
            });
        }
        BeginOutcome::Joined { others }
    } else if have_snapshot {
        let created = fs::metadata(&snapshot).and_then(|m| m.modified()).ok();
        BeginOutcome::ReusedSnapshot { created }
    } else {
        let summary = regs
            .snapshot(&snapshot, job_id)
            .map_err(|source| JobError::Snapshot {
                job: job_id.to_string(),
                path: snapshot.clone(),
                source: Box::new(source),
            })?;
        BeginOutcome::Snapshot(summary)
    };
    if let Err(e) = register(cfg, job_id) {
        // Leave no snapshot that no job owns behind a failed first begin.
        if matches!(outcome, BeginOutcome::Snapshot(_)) {
            let _ = fs::remove_file(&snapshot);
        }
        return Err(e);
    }
    Ok(outcome)
}

/// Deregister `job_id`; if no job holds the node any more, restore it from the snapshot, verify,
/// check for drift and remove the snapshot. On a failed restore the snapshot is kept.
pub fn end(cfg: &JobsConfig, job_id: &str, regs: &dyn NodeRegisters) -> JobResult<EndOutcome> {
    validate_job_id(job_id)?;
    prepare_state_dir(cfg)?;
    let _lock = NodeLock::acquire(cfg, &format!("job {job_id} end"))?;
    let path = job_path(cfg, job_id);
    let registered = exists(&path)?;
    if registered {
        fs::remove_file(&path).map_err(io_err(&path))?;
    }
    let others = list_jobs(cfg)?;
    if !others.is_empty() {
        return Ok(if registered {
            EndOutcome::OthersRemain { others }
        } else {
            EndOutcome::NotRegistered
        });
    }
    let snapshot = cfg.snapshot_path();
    if !exists(&snapshot)? {
        return if registered {
            Err(JobError::SnapshotMissing {
                job: job_id.to_string(),
                path: snapshot,
            })
        } else {
            Ok(EndOutcome::NotRegistered)
        };
    }
    // No job holds the node and a snapshot is there: the last job ended (or an earlier restore
    // failed, or a begin died between snapshot and registration): restore now.
    let summary = regs
        .restore(&snapshot)
        .map_err(|source| JobError::RestoreError {
            job: job_id.to_string(),
            path: snapshot.clone(),
            source: Box::new(source),
        })?;
    if !summary.failures.is_empty() {
        return Err(JobError::RestoreIncomplete {
            job: job_id.to_string(),
            path: snapshot,
            summary: Box::new(summary),
        });
    }
    fs::remove_file(&snapshot).map_err(io_err(&snapshot))?;
    Ok(EndOutcome::Restored(summary))
}

/// The jobs holding the node and whether a snapshot is kept, read under the lock.
pub fn status(cfg: &JobsConfig) -> JobResult<NodeStatus> {
    if !exists(&cfg.state_dir)? {
        return Ok(NodeStatus {
            jobs: Vec::new(),
            snapshot: None,
        });
    }
    prepare_state_dir(cfg)?;
    let _lock = NodeLock::acquire(cfg, "status")?;
    let snapshot = cfg.snapshot_path();
    Ok(NodeStatus {
        jobs: list_jobs(cfg)?,
        snapshot: exists(&snapshot)?.then_some(snapshot),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;
    use std::collections::BTreeMap;
    use std::sync::{Arc, Barrier, Mutex};

    /// A node of a few registers kept in memory; the snapshot file holds their values as text.
    #[derive(Default)]
    struct FakeNode {
        regs: RefCell<BTreeMap<u32, u64>>,
        fail_snapshot: bool,
        /// Registers whose restore "fails".
        stuck: Vec<u32>,
        snapshots: RefCell<usize>,
        restores: RefCell<usize>,
    }

    impl FakeNode {
        fn new() -> Self {
            let n = FakeNode::default();
            n.regs.borrow_mut().insert(0x199, 0x1000);
            n.regs.borrow_mut().insert(0x610, 0x2000);
            n
        }
        fn set(&self, msr: u32, v: u64) {
            self.regs.borrow_mut().insert(msr, v);
        }
        fn get(&self, msr: u32) -> u64 {
            self.regs.borrow()[&msr]
        }
    }

    impl NodeRegisters for FakeNode {
        fn snapshot(&self, file: &Path, _job: &str) -> crate::Result<SnapshotSummary> {
            if self.fail_snapshot {
                return Err(crate::Error::Usage("allowlist unreadable".into()));
            }
            *self.snapshots.borrow_mut() += 1;
            let text: String = self
                .regs
                .borrow()
                .iter()
                .map(|(k, v)| format!("{k} {v}\n"))
                .collect();
            fs::write(file, text).map_err(|e| crate::Error::io(file, e))?;
            Ok(SnapshotSummary {
                cpus: 1,
                msrs: self.regs.borrow().len(),
                ..Default::default()
            })
        }
        fn restore(&self, file: &Path) -> crate::Result<RestoreSummary> {
            *self.restores.borrow_mut() += 1;
            let text = fs::read_to_string(file).map_err(|e| crate::Error::io(file, e))?;
            let mut s = RestoreSummary::default();
            for line in text.lines() {
                let mut it = line.split(' ');
                let k: u32 = it.next().and_then(|x| x.parse().ok()).unwrap_or(0);
                let v: u64 = it.next().and_then(|x| x.parse().ok()).unwrap_or(0);
                if self.stuck.contains(&k) {
                    s.failures.push(RegisterProblem {
                        cpu: 0,
                        msr: Some(k),
                        name: Some("IA32_PERF_CTL".into()),
                        detail: "EACCES: permission denied".into(),
                    });
                } else {
                    self.set(k, v);
                    s.written += 1;
                }
            }
            Ok(s)
        }
    }

    fn cfg() -> (tempfile::TempDir, JobsConfig) {
        let t = tempfile::tempdir().expect("tempdir");
        let c = JobsConfig {
            state_dir: t.path().join("state"),
            lock_timeout: Duration::from_secs(5),
        };
        (t, c)
    }

    #[test]
    fn one_job_snapshots_and_restores() {
        let (_t, c) = cfg();
        let node = FakeNode::new();
        let b = begin(&c, "17", &node).expect("begin");
        assert!(matches!(b, BeginOutcome::Snapshot(_)), "{b:?}");
        assert!(c.snapshot_path().exists());
        assert!(c.jobs_dir().join("17").exists());
        node.set(0x199, 0xdead);
        let e = end(&c, "17", &node).expect("end");
        assert!(matches!(e, EndOutcome::Restored(_)), "{e:?}");
        assert_eq!(node.get(0x199), 0x1000);
        assert!(!c.snapshot_path().exists());
        assert!(!c.jobs_dir().join("17").exists());
        let mode = fs::metadata(&c.state_dir).expect("stat").mode() & 0o777;
        assert_eq!(mode, 0o700);
    }

    #[test]
    fn last_job_restores_to_the_state_before_the_first() {
        let (_t, c) = cfg();
        let node = FakeNode::new();
        begin(&c, "1", &node).expect("begin 1");
        node.set(0x199, 0x1111);
        let b2 = begin(&c, "2", &node).expect("begin 2");
        assert_eq!(
            b2,
            BeginOutcome::Joined {
                others: vec!["1".into()]
            }
        );
        node.set(0x610, 0x2222);
        let e1 = end(&c, "1", &node).expect("end 1");
        assert_eq!(
            e1,
            EndOutcome::OthersRemain {
                others: vec!["2".into()]
            }
        );
        assert_eq!(node.get(0x199), 0x1111, "no restore while job 2 runs");
        let e2 = end(&c, "2", &node).expect("end 2");
        assert!(matches!(e2, EndOutcome::Restored(_)));
        assert_eq!(node.get(0x199), 0x1000);
        assert_eq!(node.get(0x610), 0x2000);
        assert_eq!(*node.snapshots.borrow(), 1);
        assert_eq!(*node.restores.borrow(), 1);
    }

    #[test]
    fn repeated_begin_is_idempotent() {
        let (_t, c) = cfg();
        let node = FakeNode::new();
        begin(&c, "5", &node).expect("begin");
        node.set(0x199, 0x5555);
        assert_eq!(
            begin(&c, "5", &node).expect("again"),
            BeginOutcome::AlreadyRegistered
        );
        assert_eq!(*node.snapshots.borrow(), 1);
        end(&c, "5", &node).expect("end");
        assert_eq!(node.get(0x199), 0x1000);
    }

    #[test]
    fn requeued_job_gets_a_fresh_cycle() {
        let (_t, c) = cfg();
        let node = FakeNode::new();
        begin(&c, "9", &node).expect("begin");
        end(&c, "9", &node).expect("end");
        node.set(0x199, 0x7777); // an admin changed it between the runs
        assert!(matches!(
            begin(&c, "9", &node).expect("begin again"),
            BeginOutcome::Snapshot(_)
        ));
        node.set(0x199, 0x8888);
        end(&c, "9", &node).expect("end again");
        assert_eq!(node.get(0x199), 0x7777);
    }

    #[test]
    fn end_without_begin_does_nothing() {
        let (_t, c) = cfg();
        let node = FakeNode::new();
        assert_eq!(end(&c, "3", &node).expect("end"), EndOutcome::NotRegistered);
        assert_eq!(*node.restores.borrow(), 0);
        // ... also while another job holds the node
        begin(&c, "4", &node).expect("begin");
        assert_eq!(end(&c, "3", &node).expect("end"), EndOutcome::NotRegistered);
        assert!(c.snapshot_path().exists());
    }

    #[test]
    fn failed_snapshot_registers_nothing() {
        let (_t, c) = cfg();
        let node = FakeNode {
            fail_snapshot: true,
            ..FakeNode::new()
        };
        let err = begin(&c, "6", &node).expect_err("snapshot fails");
        let msg = err.to_string();
        assert!(msg.contains("cannot snapshot"), "{msg}");
        assert!(msg.contains("allowlist unreadable"), "{msg}");
        assert!(!c.snapshot_path().exists());
        assert!(!c.jobs_dir().join("6").exists());
        assert_eq!(
            end(&c, "6", &node).expect("epilog after a failed prolog"),
            EndOutcome::NotRegistered
        );
    }

    #[test]
    fn failed_restore_keeps_the_snapshot_and_names_the_registers() {
        let (_t, c) = cfg();
        let node = FakeNode {
            stuck: vec![0x199],
            ..FakeNode::new()
        };
        begin(&c, "7", &node).expect("begin");
        node.set(0x199, 0x1234);
        let err = end(&c, "7", &node).expect_err("restore fails");
        let msg = err.to_string();
        assert!(
            msg.contains("CPU 0 MSR 0x00000199 (IA32_PERF_CTL): EACCES"),
            "{msg}"
        );
        assert!(msg.contains("snapshot kept"), "{msg}");
        assert!(c.snapshot_path().exists());
        assert!(!c.jobs_dir().join("7").exists());
        // The next job reuses the kept snapshot instead of trusting the node...
        let b = begin(&c, "8", &node).expect("begin 8");
        assert!(matches!(b, BeginOutcome::ReusedSnapshot { .. }), "{b:?}");
        assert_eq!(*node.snapshots.borrow(), 1);
    }

    #[test]
    fn kept_snapshot_is_retried_by_the_next_end() {
        let (_t, c) = cfg();
        let mut node = FakeNode {
            stuck: vec![0x199],
            ..FakeNode::new()
        };
        begin(&c, "7", &node).expect("begin");
        node.set(0x199, 0x1234);
        end(&c, "7", &node).expect_err("restore fails");
        node.stuck.clear();
        assert_eq!(
            end(&c, "7", &node).expect("retry"),
            EndOutcome::Restored(RestoreSummary {
                written: 2,
                ..Default::default()
            })
        );
        assert_eq!(node.get(0x199), 0x1000);
        assert!(!c.snapshot_path().exists());
    }

    #[test]
    fn registered_job_without_snapshot_is_an_error() {
        let (_t, c) = cfg();
        let node = FakeNode::new();
        begin(&c, "10", &node).expect("begin");
        fs::remove_file(c.snapshot_path()).expect("rm");
        let err = begin(&c, "11", &node).expect_err("no snapshot for running jobs");
        assert!(err.to_string().contains("job(s) 10"), "{err}");
        let err = end(&c, "10", &node).expect_err("missing snapshot");
        assert!(err.to_string().contains("is missing"), "{err}");
    }

    #[test]
    fn job_ids_are_checked() {
        for ok in ["1", "123_4", "123[4].pbs-server", "42.sched@host", "a-b+c"] {
            validate_job_id(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        for bad in ["", "../x", "a/b", ".hidden", "a b", "x\n", &"9".repeat(129)] {
            assert!(validate_job_id(bad).is_err(), "{bad:?} accepted");
        }
        let (_t, c) = cfg();
        assert!(begin(&c, "../../etc/passwd", &FakeNode::new()).is_err());
    }

    #[test]
    fn state_dir_writable_by_others_is_refused() {
        let (_t, c) = cfg();
        fs::create_dir_all(&c.state_dir).expect("mkdir");
        fs::set_permissions(&c.state_dir, fs::Permissions::from_mode(0o777)).expect("chmod");
        let err = begin(&c, "1", &FakeNode::new()).expect_err("refused");
        assert!(
            err.to_string().contains("writable by group or others"),
            "{err}"
        );
    }

    #[test]
    fn state_dir_symlink_is_refused() {
        let (t, c) = cfg();
        let real = t.path().join("real");
        fs::create_dir(&real).expect("mkdir");
        std::os::unix::fs::symlink(&real, &c.state_dir).expect("symlink");
        let err = begin(&c, "1", &FakeNode::new()).expect_err("refused");
        assert!(err.to_string().contains("symbolic link"), "{err}");
    }

    #[test]
    fn lock_timeout_names_the_holder() {
        let (_t, mut c) = cfg();
        prepare_state_dir(&c).expect("prepare");
        let _held = NodeLock::acquire(&c, "job 1 begin").expect("lock");
        c.lock_timeout = Duration::from_millis(100);
        let err = match NodeLock::acquire(&c, "job 2 end") {
            Ok(_) => panic!("second lock taken"),
            Err(e) => e,
        };
        let msg = err.to_string();
        assert!(msg.contains("still held"), "{msg}");
        assert!(msg.contains("job 1 begin"), "{msg}");
    }

    /// Register values shared between threads, for the concurrency test.
    struct SharedNode(Arc<Mutex<u64>>);

    impl NodeRegisters for SharedNode {
        fn snapshot(&self, file: &Path, _job: &str) -> crate::Result<SnapshotSummary> {
            let v = *self
                .0
                .lock()
                .map_err(|_| crate::Error::Usage("poison".into()))?;
            std::thread::sleep(Duration::from_millis(20));
            fs::write(file, v.to_string()).map_err(|e| crate::Error::io(file, e))?;
            Ok(SnapshotSummary::default())
        }
        fn restore(&self, file: &Path) -> crate::Result<RestoreSummary> {
            let text = fs::read_to_string(file).map_err(|e| crate::Error::io(file, e))?;
            let v: u64 = text
                .parse()
                .map_err(|_| crate::Error::Usage("bad fake snapshot".into()))?;
            std::thread::sleep(Duration::from_millis(20));
            *self
                .0
                .lock()
                .map_err(|_| crate::Error::Usage("poison".into()))? = v;
            Ok(RestoreSummary::default())
        }
    }

    #[test]
    fn concurrent_jobs_snapshot_once_and_restore_once() {
        let (_t, c) = cfg();
        let value = Arc::new(Mutex::new(100u64));
        let n = 6;
        let barrier = Arc::new(Barrier::new(n));
        let handles: Vec<_> = (0..n)
            .map(|i| {
                let c = c.clone();
                let value = Arc::clone(&value);
                let barrier = Arc::clone(&barrier);
                std::thread::spawn(move || {
                    let node = SharedNode(Arc::clone(&value));
                    barrier.wait();
                    let b = begin(&c, &format!("{i}"), &node).expect("begin");
                    if let Ok(mut v) = value.lock() {
                        *v += 1; // the job changes a register
                    }
                    barrier.wait(); // every job has begun before any ends
                    let e = end(&c, &format!("{i}"), &node).expect("end");
                    (b, e)
                })
            })
            .collect();
        let results: Vec<_> = handles
            .into_iter()
            .map(|h| h.join().expect("thread"))
            .collect();
        let snapshots = results
            .iter()
            .filter(|(b, _)| matches!(b, BeginOutcome::Snapshot(_)))
            .count();
        let restores = results
            .iter()
            .filter(|(_, e)| matches!(e, EndOutcome::Restored(_)))
            .count();
        assert_eq!(snapshots, 1);
        assert_eq!(restores, 1);
        assert_eq!(*value.lock().expect("lock"), 100);
        assert!(!c.snapshot_path().exists());
        assert!(list_jobs(&c).expect("list").is_empty());
    }

    #[test]
    fn status_lists_jobs() {
        let (_t, c) = cfg();
        assert_eq!(
            status(&c).expect("status of nothing"),
            NodeStatus {
                jobs: vec![],
                snapshot: None
            }
        );
        let node = FakeNode::new();
        begin(&c, "2", &node).expect("begin");
        begin(&c, "1", &node).expect("begin");
        let s = status(&c).expect("status");
        assert_eq!(s.jobs, vec!["1".to_string(), "2".to_string()]);
        assert_eq!(s.snapshot, Some(c.snapshot_path()));
    }

    #[test]
    fn long_lists_are_cut() {
        let p: Vec<_> = (0..8)
            .map(|i| RegisterProblem {
                cpu: i,
                msr: Some(0x199),
                name: None,
                detail: "EIO".into(),
            })
            .collect();
        let s = name_registers(&p);
        assert!(s.contains("CPU 4 MSR"), "{s}");
        assert!(!s.contains("CPU 5 MSR"), "{s}");
        assert!(s.ends_with("and 3 more"), "{s}");
    }
    fn emulated_node(dir: &Path, cpus: u32) -> Node {
        let list = crate::allowlist::Allowlist::parse(
            b"0x199 0xFFFF # IA32_PERF_CTL\n0x1A0 0x0\n0x610 0x00FFFFFFFFFFFFFF\n",
            "test",
        )
        .expect("allowlist");
        crate::emulate::create(
            dir,
            &crate::emulate::EmulatedNodeSpec {
                cpus,
                allowlist: &list,
                identity: crate::node::CpuIdentity {
                    vendor: "GenuineIntel".into(),
                    family: 6,
                    model: 0x55,
                },
            },
        )
        .expect("emulated node")
    }

    #[test]
    fn device_registers_on_an_emulated_node() {
        use crate::emulate::{peek, poke};
        use crate::types::{CpuId, MsrAddr};
        let (t, c) = cfg();
        let root = t.path().join("node");
        let node = emulated_node(&root, 4);
        let regs = DeviceRegisters::new(node, BackendRequest::default());
        let before = peek(&root, CpuId(2), MsrAddr(0x199)).expect("peek");
        let b = begin(&c, "100", &regs).expect("begin");
        match b {
            BeginOutcome::Snapshot(s) => {
                assert_eq!((s.cpus, s.msrs, s.unreadable), (4, 3, 0));
            }
            other => panic!("{other:?}"),
        }
        let changed = (before & !0xFFFF) | ((before + 1) & 0xFFFF);
        poke(&root, CpuId(2), MsrAddr(0x199), changed).expect("poke");
        let e = end(&c, "100", &regs).expect("end");
        match e {
            EndOutcome::Restored(s) => {
                assert_eq!(s.written, 1, "{s:?}");
                assert_eq!(s.verified, 1, "{s:?}");
                assert!(s.failures.is_empty() && s.drift.is_empty(), "{s:?}");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(peek(&root, CpuId(2), MsrAddr(0x199)).expect("peek"), before);
        assert!(!c.snapshot_path().exists());
    }

    #[test]
    fn device_registers_snapshot_error_names_the_cause() {
        let (t, c) = cfg();
        let root = t.path().join("node");
        let node = emulated_node(&root, 1);
        let regs = DeviceRegisters::new(
            node,
            BackendRequest {
                allowlist: Some(t.path().join("no-such-allowlist")),
                ..Default::default()
            },
        );
        let err = begin(&c, "5", &regs).expect_err("no allowlist");
        let msg = err.to_string();
        assert!(msg.contains("cannot snapshot"), "{msg}");
        assert!(msg.contains("no-such-allowlist"), "{msg}");
    }
}
