//! The job registry: one file per job holding the node, named by its validated [`JobId`].

use std::fmt;
use std::fs;
use std::path::PathBuf;
use std::time::SystemTime;

use super::state_dir::{StateDir, FILE_MODE};
use super::{JobError, JobResult};
use crate::fsio;

/// The longest job id accepted.
pub const MAX_JOB_ID_LEN: usize = 128;

/// A job id fit to be a file name: letters, digits and `._-[]@+` (SLURM ids, array ids `123_4`,
/// PBS ids `123[4].server`), not starting with a dot, at most 128 bytes.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(transparent)]
pub struct JobId(String);

impl JobId {
    pub fn new(id: &str) -> JobResult<JobId> {
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
        Ok(JobId(id.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Check a job id before it becomes a file name (see [`JobId`]).
pub fn validate_job_id(id: &str) -> JobResult<()> {
    JobId::new(id).map(drop)
}

/// A registered job.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Registration {
    pub job: JobId,
    /// When it registered (the file's modification time).
    pub since: Option<SystemTime>,
}

pub(crate) fn job_path(state: &StateDir, job: &JobId) -> PathBuf {
    state.jobs_dir().join(job.as_str())
}

/// The registered jobs, sorted. A writer's temporary file is skipped (a dead writer's is
/// removed); anything else in the directory that is not a job file of ours is refused.
pub fn list(state: &StateDir) -> JobResult<Vec<Registration>> {
    let dir = state.jobs_dir();
    let rd = match fs::read_dir(&dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => return Err(JobError::Io { path: dir, source }),
    };
    let mut jobs = Vec::new();
    for entry in rd {
        let entry = entry.map_err(|source| JobError::Io {
            path: dir.clone(),
            source,
        })?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with('.') && name.contains(".tmp.") {
            continue;
        }
        let path = entry.path();
        let job = JobId::new(&name).map_err(|_| JobError::Planted {
            path: path.clone(),
            reason: "not a job file msr-restore wrote (its name is not a job id)".to_string(),
        })?;
        state.entry(&path)?;
        let since = fs::symlink_metadata(&path).and_then(|m| m.modified()).ok();
        jobs.push(Registration { job, since });
    }
    jobs.sort_by(|a, b| a.job.cmp(&b.job));
    Ok(jobs)
}

/// Whether `job` is registered.
pub fn is_registered(state: &StateDir, job: &JobId) -> JobResult<bool> {
    state.entry(&job_path(state, job))
}

/// Register `job` (atomically: the file is there whole or not at all).
pub fn register(state: &StateDir, job: &JobId) -> JobResult<()> {
    let path = job_path(state, job);
    let text = format!(
        "job {job}\nbegan {}\npid {}\n",
        humantime::format_rfc3339_seconds(SystemTime::now()),
        std::process::id()
    );
    fsio::write_atomically(&path, text.as_bytes(), FILE_MODE)
        .map_err(|source| JobError::Write { path, source })
}

/// Forget `job`; true if it was registered.
pub fn deregister(state: &StateDir, job: &JobId) -> JobResult<bool> {
    let path = job_path(state, job);
    if !state.entry(&path)? {
        return Ok(false);
    }
    fs::remove_file(&path).map_err(|source| JobError::Io { path, source })?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_ids_are_checked() {
        for ok in ["123", "123_4", "123[4].server", "a-b@c+d"] {
            assert!(JobId::new(ok).is_ok(), "{ok}");
        }
        for bad in ["", ".hidden", "a/b", "../x", "a b", &"x".repeat(129)] {
            assert!(JobId::new(bad).is_err(), "{bad:?}");
        }
    }
}
