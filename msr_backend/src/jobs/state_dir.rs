//! The state directory: where the node's snapshot, one file per job and the node lock live.
//!
//! ```text
//! STATE_DIR/lock           the node-wide lock; holds "pid job action" of the holder, for messages
//! STATE_DIR/snapshot.msr   the node as it was before the first of the current jobs (a save file)
//! STATE_DIR/jobs/<JOBID>   one file per job holding the node
//! ```
//!
//! The directory must be owned by the process's user (root) and not writable by others; every
//! file in it must be a regular file owned by the same user, and is never followed through a
//! link. Anything else found there (a link planted at the snapshot's name, a stray file) is
//! refused with a message that says what to remove, rather than trusted. Temporary files of
//! writers that no longer run (a kill -9 during a save) are removed, and said so.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

use super::{JobError, JobResult};
use crate::fsio::{self, StaleTemp};

/// The snapshot file in the state directory.
pub const SNAPSHOT_FILE: &str = "snapshot.msr";
/// The lock file in the state directory.
pub const LOCK_FILE: &str = "lock";
/// The directory of job files in the state directory.
pub const JOBS_DIR: &str = "jobs";
/// Mode of the state directory and its jobs directory.
pub const DIR_MODE: u32 = 0o700;
/// Mode of every file in it.
pub const FILE_MODE: u32 = 0o600;

/// Where the state is and how long to wait for the lock.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StateDir {
    pub path: PathBuf,
    pub lock_timeout: Duration,
}

impl Default for StateDir {
    fn default() -> Self {
        StateDir {
            path: PathBuf::from(crate::config::DEFAULT_STATE_DIR),
            lock_timeout: crate::config::DEFAULT_LOCK_TIMEOUT,
        }
    }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> JobError + '_ {
    move |source| JobError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// What a file in the state directory is.
enum Entry {
    Absent,
    /// A regular file of ours.
    File,
}

impl StateDir {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        StateDir {
            path: path.into(),
            ..StateDir::default()
        }
    }

    pub fn snapshot_path(&self) -> PathBuf {
        self.path.join(SNAPSHOT_FILE)
    }

    pub fn lock_path(&self) -> PathBuf {
        self.path.join(LOCK_FILE)
    }

    pub fn jobs_dir(&self) -> PathBuf {
        self.path.join(JOBS_DIR)
    }

    fn bad(&self, reason: String) -> JobError {
        JobError::StateDir {
            path: self.path.clone(),
            reason,
        }
    }

    /// Create the directory if needed and refuse one that others could plant files in. Removes
    /// the temporary files of dead writers and returns them.
    pub fn prepare(&self) -> JobResult<Vec<StaleTemp>> {
        let dir = &self.path;
        if !dir.is_absolute() {
            return Err(self.bad("not an absolute path".to_string()));
        }
        fs::DirBuilder::new()
            .recursive(true)
            .mode(DIR_MODE)
            .create(dir)
            .map_err(|e| self.bad(format!("cannot create: {e}")))?;
        self.check_dir(dir)?;
        let jobs = self.jobs_dir();
        match fs::DirBuilder::new().mode(DIR_MODE).create(&jobs) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(self.bad(format!("cannot create {}: {e}", jobs.display()))),
        }
        self.check_dir(&jobs)?;
        let mut stale = fsio::remove_stale_temps(&self.snapshot_path());
        stale.extend(fsio::remove_stale_temps(&self.lock_path()));
        Ok(stale)
    }

    fn check_dir(&self, dir: &Path) -> JobResult<()> {
        let meta = fs::symlink_metadata(dir)
            .map_err(|e| self.bad(format!("cannot stat {}: {e}", dir.display())))?;
        if !meta.file_type().is_dir() {
            return Err(self.bad(format!(
                "{} is not a directory (a symbolic link is refused): remove it",
                dir.display()
            )));
        }
        let euid = nix::unistd::geteuid().as_raw();
        if meta.uid() != euid {
            return Err(self.bad(format!(
                "{} is owned by uid {}, not by this process (uid {euid})",
                dir.display(),
                meta.uid()
            )));
        }
        if meta.mode() & 0o022 != 0 {
            return Err(self.bad(format!(
                "{} is writable by group or others (mode {:o})",
                dir.display(),
                meta.mode() & 0o7777
            )));
        }
        Ok(())
    }

    /// Whether `path` (a file of ours in the directory) exists; anything but a regular file
    /// owned by this process's user is refused with what to remove.
    pub(crate) fn entry(&self, path: &Path) -> JobResult<bool> {
        match self.classify(path)? {
            Entry::Absent => Ok(false),
            Entry::File => Ok(true),
        }
    }

    fn classify(&self, path: &Path) -> JobResult<Entry> {
        let meta = match fs::symlink_metadata(path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Entry::Absent),
            Err(e) => return Err(io_err(path)(e)),
        };
        let ft = meta.file_type();
        if !ft.is_file() {
            let kind = if ft.is_symlink() {
                "a symbolic link"
            } else if ft.is_dir() {
                "a directory"
            } else {
                "a special file"
            };
            return Err(JobError::Planted {
                path: path.to_path_buf(),
                reason: format!("{kind}, not a file msr-restore wrote"),
            });
        }
        let euid = nix::unistd::geteuid().as_raw();
        if meta.uid() != euid {
            return Err(JobError::Planted {
                path: path.to_path_buf(),
                reason: format!(
                    "owned by uid {}, not by uid {euid} which writes the state",
                    meta.uid()
                ),
            });
        }
        Ok(Entry::File)
    }

    /// Files in the state directory that are not ours (not the lock, the snapshot, the jobs
    /// directory or a writer's temporary file).
    pub(crate) fn strangers(&self) -> JobResult<Vec<PathBuf>> {
        let mut out = Vec::new();
        let rd = fs::read_dir(&self.path).map_err(io_err(&self.path))?;
        for entry in rd {
            let entry = entry.map_err(io_err(&self.path))?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            let ours = name == LOCK_FILE
                || name == SNAPSHOT_FILE
                || name == JOBS_DIR
                || name.starts_with(&format!(".{SNAPSHOT_FILE}.tmp."))
                || name.starts_with(&format!(".{LOCK_FILE}.tmp."));
            if !ours {
                out.push(entry.path());
            }
        }
        out.sort();
        Ok(out)
    }
}

/// The node-wide lock, released when dropped (the kernel releases it if the process dies).
pub struct NodeLock {
    file: Flock<File>,
}

impl NodeLock {
    /// Take the lock, waiting up to the state directory's lock timeout. `what` ("job 12 begin")
    /// is written into the lock file so that a waiter that times out can name the holder.
    pub fn acquire(state: &StateDir, what: &str) -> JobResult<NodeLock> {
        let path = state.lock_path();
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(FILE_MODE)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK)
            .open(&path)
            .map_err(|e| match e.raw_os_error() {
                Some(libc::ELOOP) => JobError::Planted {
                    path: path.clone(),
                    reason: "a symbolic link, not a file msr-restore wrote".to_string(),
                },
                _ => io_err(&path)(e),
            })?;
        let meta = file.metadata().map_err(io_err(&path))?;
        if !meta.file_type().is_file() {
            return Err(JobError::Planted {
                path,
                reason: "a special file, not a file msr-restore wrote".to_string(),
            });
        }
        state.entry(&path)?;
        let start = Instant::now();
        let mut pause = Duration::from_millis(2);
        let mut locked = loop {
            match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
                Ok(l) => break l,
                Err((f, Errno::EWOULDBLOCK)) | Err((f, Errno::EINTR)) => file = f,
                Err((_, e)) => return Err(io_err(&path)(std::io::Error::from(e))),
            }
            if start.elapsed() >= state.lock_timeout {
                let mut holder = String::new();
                let _ = (&file).take(256).read_to_string(&mut holder);
                let holder = holder.trim();
                return Err(JobError::LockTimeout {
                    path,
                    waited: state.lock_timeout,
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
