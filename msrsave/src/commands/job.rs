//! `job begin | end | status`: the shared-node bookkeeping of [`msr_backend::jobs`] on the
//! command line, for the PBS hooks and for admins.

use std::path::PathBuf;

use anyhow::Result;
use msr_backend::jobs::{
    self, BeginOutcome, DeviceRegisters, EndOutcome, JobError, JobsConfig, RegisterProblem,
};
use serde_json::{json, Value};

use super::{line, ms, shown, Context, Outcome};
use crate::cli::JobCommand;
use crate::{EXIT_FAILED, EXIT_OK};

pub fn name(cmd: &JobCommand) -> &'static str {
    match cmd {
        JobCommand::Begin { .. } => "job begin",
        JobCommand::End { .. } => "job end",
        JobCommand::Status { .. } => "job status",
    }
}

fn problems(p: &[RegisterProblem]) -> Value {
    Value::Array(
        p.iter()
            .map(|r| {
                json!({"cpu": r.cpu, "msr": r.msr.map(|m| format!("{m:#010x}")), "name": r.name, "error": r.detail})
            })
            .collect(),
    )
}

pub fn run(ctx: &Context, cmd: &JobCommand) -> Result<Outcome> {
    let state_dir = |d: &Option<PathBuf>| d.clone().unwrap_or_else(|| ctx.config.state_dir.clone());
    let regs = DeviceRegisters::from_config(&ctx.config);
    match cmd {
        JobCommand::Begin {
            job_id,
            state_dir: d,
            lock_timeout,
        } => {
            let cfg = jobs_config(state_dir(d), *lock_timeout);
            let outcome = jobs::begin(&cfg, job_id, &regs)?;
            let active = jobs::status(&cfg).map(|s| s.jobs).unwrap_or_default();
            let (kind, text) = match &outcome {
                BeginOutcome::Snapshot(s) => (
                    "taken",
                    format!(
                        "job {job_id}: first job on the node: snapshot of {} MSRs x {} CPUs ({} unreadable) in {:.1} ms",
                        s.msrs,
                        s.cpus,
                        s.unreadable,
                        ms(s.elapsed)
                    ),
                ),
                BeginOutcome::Joined { others } => {
                    ("shared", format!("job {job_id}: joins {}; their snapshot stands", others.join(", ")))
                }
                BeginOutcome::ReusedSnapshot { .. } => (
                    "kept",
                    format!("job {job_id}: the snapshot of an earlier failed restore is kept as the state to restore"),
                ),
                BeginOutcome::AlreadyRegistered => ("registered", format!("job {job_id}: already registered; nothing changed")),
            };
            Ok(Outcome::new(
                EXIT_OK,
                json!({"command": "job begin", "ok": true, "job_id": job_id, "snapshot": kind,
                       "active_jobs": active, "state_dir": shown(&cfg.state_dir)}),
                format!("{text}\n"),
            ))
        }
        JobCommand::End {
            job_id,
            state_dir: d,
            lock_timeout,
        } => {
            let cfg = jobs_config(state_dir(d), *lock_timeout);
            let active = || jobs::status(&cfg).map(|s| s.jobs).unwrap_or_default();
            match jobs::end(&cfg, job_id, &regs) {
                Ok(EndOutcome::Restored(s)) => {
                    let clean = s.failures.is_empty() && s.drift.is_empty();
                    let mut h = String::new();
                    line(
                        &mut h,
                        format!(
                            "job {job_id}: last job on the node: restored {} registers ({} verified, {} already right) in {:.1} ms{}",
                            s.written,
                            s.verified,
                            s.unchanged,
                            ms(s.elapsed),
                            if clean { "; node clean" } else { "" }
                        ),
                    );
                    for f in &s.failures {
                        line(&mut h, format!("  NOT RESTORED CPU {} {}: {}", f.cpu, reg(f), f.detail));
                    }
                    for f in &s.drift {
                        line(&mut h, format!("  DRIFT CPU {} {}: {}", f.cpu, reg(f), f.detail));
                    }
                    for n in &s.notes {
                        line(&mut h, format!("  note: {n}"));
                    }
                    Ok(Outcome::new(
                        if clean { EXIT_OK } else { EXIT_FAILED },
                        json!({"command": "job end", "ok": clean, "job_id": job_id, "last_job": true,
                               "active_jobs": active(),
                               "restore": {"ok": s.failures.is_empty(), "written": s.written, "verified": s.verified,
                                           "unchanged": s.unchanged, "failures": problems(&s.failures)},
                               "check": {"ok": s.drift.is_empty(), "clean": s.drift.is_empty(), "drift": problems(&s.drift)},
                               "notes": s.notes, "elapsed_ms": ms(s.elapsed)}),
                        h,
                    ))
                }
                Ok(EndOutcome::OthersRemain { others }) => Ok(Outcome::new(
                    EXIT_OK,
                    json!({"command": "job end", "ok": true, "job_id": job_id, "last_job": false,
                           "active_jobs": others, "restore": null, "check": null,
                           "note": "other jobs still hold the node; nothing restored"}),
                    format!("job {job_id}: other jobs ({}) still hold the node; nothing restored\n", others.join(", ")),
                )),
                Ok(EndOutcome::NotRegistered) => Ok(Outcome::new(
                    EXIT_OK,
                    json!({"command": "job end", "ok": true, "job_id": job_id, "last_job": false,
                           "active_jobs": active(), "restore": null, "check": null,
                           "note": "the job was not registered (its begin failed or never ran); nothing to restore"}),
                    format!("job {job_id}: not registered (its begin failed or never ran); nothing to restore\n"),
                )),
                Err(e @ (JobError::RestoreIncomplete { .. } | JobError::RestoreError { .. } | JobError::SnapshotMissing { .. })) => {
                    // The restore was attempted (or is impossible): a failure, not a usage error.
                    let failures = match &e {
                        JobError::RestoreIncomplete { summary, .. } => problems(&summary.failures),
                        _ => Value::Array(vec![]),
                    };
                    Ok(Outcome::new(
                        EXIT_FAILED,
                        json!({"command": "job end", "ok": false, "job_id": job_id, "last_job": true,
                               "active_jobs": active(), "restore": {"ok": false, "failures": failures},
                               "check": null, "error": e.to_string()}),
                        format!("job {job_id}: FAILED: {e}\n"),
                    ))
                }
                Err(e) => Err(e.into()),
            }
        }
        JobCommand::Status { state_dir: d } => {
            let cfg = JobsConfig::new(state_dir(d));
            let st = jobs::status(&cfg)?;
            let snap = st.snapshot.as_ref().map(|p| shown(p));
            Ok(Outcome::new(
                EXIT_OK,
                json!({"command": "job status", "ok": true, "active_jobs": st.jobs, "snapshot": snap}),
                format!(
                    "jobs holding the node: {}\nsnapshot: {}\n",
                    if st.jobs.is_empty() {
                        "none".to_string()
                    } else {
                        st.jobs.join(", ")
                    },
                    snap.unwrap_or_else(|| "none".to_string())
                ),
            ))
        }
    }
}

fn jobs_config(state_dir: PathBuf, lock_timeout: Option<u64>) -> JobsConfig {
    let mut cfg = JobsConfig::new(state_dir);
    if let Some(secs) = lock_timeout {
        cfg.lock_timeout = std::time::Duration::from_secs(secs);
    }
    cfg
}

fn reg(p: &RegisterProblem) -> String {
    match (p.msr, &p.name) {
        (Some(m), Some(n)) => format!("MSR {m:#010x} {n}"),
        (Some(m), None) => format!("MSR {m:#010x}"),
        (None, _) => "(whole CPU)".to_string(),
    }
}
