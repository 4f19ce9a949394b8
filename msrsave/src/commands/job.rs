//! `job begin | end | status | reconcile`: the shared-node protocol of [`msr_backend::jobs`] on
//! the command line, for the PBS hooks, the Torque scripts and admins.

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::Result;
use msr_backend::error::chain;
use msr_backend::finding::Finding;
use msr_backend::jobs::{
    self, BeginOutcome, EndOutcome, JobError, Reconciled, RestoreSummary, SchedulerView, StateDir,
};
use msr_backend::restore::MsrChange;
use schemars::JsonSchema;
use serde::Serialize;

use super::{shown, Context};
use crate::cli::{JobArgs, JobCommand};
use crate::output::{line, ms, ExitStatus, Outcome, Report};

pub fn name(cmd: &JobCommand) -> &'static str {
    match cmd {
        JobCommand::Begin { .. } => "job begin",
        JobCommand::End { .. } => "job end",
        JobCommand::Status { .. } => "job status",
        JobCommand::Reconcile { .. } => "job reconcile",
    }
}

fn state_dir(ctx: &Context, args: &JobArgs) -> StateDir {
    StateDir {
        path: args
            .state_dir
            .clone()
            .unwrap_or_else(|| ctx.config.state_dir.clone()),
        lock_timeout: args
            .lock_timeout
            .map(Duration::from_secs)
            .unwrap_or(ctx.config.lock_timeout),
    }
}

/// The scheduler's list of the node's jobs, as the caller passed it.
fn view(args: &JobArgs) -> Option<SchedulerView> {
    args.running_jobs
        .as_ref()
        .map(|list| SchedulerView::Running {
            jobs: list
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect::<BTreeSet<_>>(),
            source: "the scheduler (--running-jobs)".to_string(),
        })
}

/// What a reconciliation did, for every job command's report.
#[derive(Serialize, JsonSchema, Default)]
pub struct ReconcileInfo {
    /// Registered jobs ended because the scheduler no longer runs them here, and why.
    pub reaped: Vec<String>,
    /// Temporary files of dead writers removed from the state directory.
    pub removed_temps: Vec<String>,
}

impl ReconcileInfo {
    /// One "note:" line per job ended and temporary file removed, for the text reports.
    fn notes(&self) -> String {
        let mut h = String::new();
        for r in self.reaped.iter().chain(&self.removed_temps) {
            line(&mut h, format!("note: {r}"));
        }
        h
    }
}

fn reconcile(
    ctx: &Context,
    state: &StateDir,
    args: &JobArgs,
    own: Option<&str>,
) -> Result<(ReconcileInfo, Option<RestoreSummary>)> {
    let Some(view) = view(args) else {
        return Ok((ReconcileInfo::default(), None));
    };
    let Reconciled {
        reaped,
        restored,
        stale_temps,
        ..
    } = jobs::reconcile(state, &ctx.setup(), &view, own)?;
    Ok((
        ReconcileInfo {
            reaped: reaped.iter().map(|r| r.to_string()).collect(),
            removed_temps: stale_temps.iter().map(|t| t.to_string()).collect(),
        },
        restored,
    ))
}

/// The restore at the end of the last job.
#[derive(Serialize, JsonSchema)]
pub struct RestorePart {
    pub ok: bool,
    pub written: usize,
    pub verified: usize,
    pub unchanged: usize,
    pub failed: usize,
    pub failures: Vec<Finding>,
}

/// Registers that still differ from the snapshot after the restore.
#[derive(Serialize, JsonSchema)]
pub struct CheckPart {
    pub ok: bool,
    pub clean: bool,
    pub drift: Vec<Finding>,
}

/// `job begin`.
#[derive(Serialize, JsonSchema)]
pub struct JobBegin {
    pub job_id: String,
    /// `taken` (first job: snapshot taken), `shared` (joins other jobs), `kept` (an earlier
    /// failed restore's snapshot is kept), `registered` (already registered).
    pub snapshot: String,
    pub active_jobs: Vec<String>,
    pub state_dir: String,
    pub elapsed_ms: Option<f64>,
    #[serde(flatten)]
    pub reconcile: ReconcileInfo,
    #[serde(skip)]
    text: String,
}

impl Report for JobBegin {
    const COMMAND: &'static str = "job begin";
    fn status(&self) -> ExitStatus {
        ExitStatus::Ok
    }
    fn text(&self) -> String {
        let mut h = self.reconcile.notes();
        line(&mut h, &self.text);
        h
    }
    fn shell(&self) -> Vec<(&'static str, String)> {
        vec![
            ("snapshot", self.snapshot.clone()),
            ("active_jobs", self.active_jobs.join(",")),
            ("reaped", self.reconcile.reaped.join("; ")),
        ]
    }
}

/// `job end`.
#[derive(Serialize, JsonSchema)]
pub struct JobEnd {
    pub job_id: String,
    /// Whether this was the last job on the node (the one that restores).
    pub last_job: bool,
    pub active_jobs: Vec<String>,
    pub restore: Option<RestorePart>,
    pub check: Option<CheckPart>,
    /// What the jobs on the node had changed: the registers that differed before the restore,
    /// per MSR (attributed to every job that held the node since the snapshot).
    pub changed: Vec<MsrChange>,
    pub notes: Vec<String>,
    pub note: Option<String>,
    pub error: Option<String>,
    pub elapsed_ms: Option<f64>,
    #[serde(flatten)]
    pub reconcile: ReconcileInfo,
}

impl Report for JobEnd {
    const COMMAND: &'static str = "job end";
    fn status(&self) -> ExitStatus {
        let clean = self.error.is_none()
            && self.restore.as_ref().is_none_or(|r| r.ok)
            && self.check.as_ref().is_none_or(|c| c.clean);
        ExitStatus::ok_if(clean)
    }
    fn text(&self) -> String {
        let mut h = self.reconcile.notes();
        if let Some(e) = &self.error {
            line(&mut h, format!("job {}: FAILED: {e}", self.job_id));
            return h;
        }
        match &self.restore {
            Some(r) => {
                let clean = self.status() == ExitStatus::Ok;
                line(
                    &mut h,
                    format!(
                        "job {}: last job on the node: restored {} registers ({} verified, {} already right) in {:.1} ms{}",
                        self.job_id,
                        r.written,
                        r.verified,
                        r.unchanged,
                        self.elapsed_ms.unwrap_or(0.0),
                        if clean { "; node clean" } else { "" }
                    ),
                );
                for f in &r.failures {
                    line(&mut h, format!("  NOT RESTORED {f}"));
                }
                if let Some(c) = &self.check {
                    for d in &c.drift {
                        line(&mut h, format!("  DRIFT {d}"));
                    }
                }
                for c in &self.changed {
                    line(&mut h, format!("  changed by the job(s): {c}"));
                }
                for n in &self.notes {
                    line(&mut h, format!("  note: {n}"));
                }
            }
            None => line(
                &mut h,
                format!(
                    "job {}: {}",
                    self.job_id,
                    self.note.as_deref().unwrap_or("nothing to restore")
                ),
            ),
        }
        h
    }
    fn shell(&self) -> Vec<(&'static str, String)> {
        vec![
            ("last_job", u8::from(self.last_job).to_string()),
            ("active_jobs", self.active_jobs.join(",")),
            ("reaped", self.reconcile.reaped.join("; ")),
            ("error", self.error.clone().unwrap_or_default()),
        ]
    }
}

/// `job status`: who holds the node.
#[derive(Serialize, JsonSchema)]
pub struct JobStatus {
    pub active_jobs: Vec<String>,
    /// The kept snapshot, if any.
    pub snapshot: Option<String>,
    pub state_dir: String,
}

impl Report for JobStatus {
    const COMMAND: &'static str = "job status";
    fn status(&self) -> ExitStatus {
        ExitStatus::Ok
    }
    fn text(&self) -> String {
        format!(
            "jobs holding the node: {}\nsnapshot: {}\n",
            if self.active_jobs.is_empty() {
                "none".to_string()
            } else {
                self.active_jobs.join(", ")
            },
            self.snapshot.as_deref().unwrap_or("none")
        )
    }
    fn shell(&self) -> Vec<(&'static str, String)> {
        vec![
            ("active_jobs", self.active_jobs.join(",")),
            ("jobs", self.active_jobs.len().to_string()),
            ("snapshot", self.snapshot.clone().unwrap_or_default()),
        ]
    }
}

/// `job reconcile`.
#[derive(Serialize, JsonSchema)]
pub struct JobReconcile {
    pub active_jobs: Vec<String>,
    /// The restore done because the reaped jobs were the last.
    pub restore: Option<RestorePart>,
    pub changed: Vec<MsrChange>,
    #[serde(flatten)]
    pub reconcile: ReconcileInfo,
}

impl Report for JobReconcile {
    const COMMAND: &'static str = "job reconcile";
    fn status(&self) -> ExitStatus {
        ExitStatus::ok_if(self.restore.as_ref().is_none_or(|r| r.ok))
    }
    fn text(&self) -> String {
        let mut h = self.reconcile.notes();
        if let Some(r) = &self.restore {
            line(
                &mut h,
                format!(
                    "the reaped jobs were the last: restored {} registers ({} verified)",
                    r.written, r.verified
                ),
            );
        }
        line(
            &mut h,
            format!("jobs holding the node: {}", self.active_jobs.len()),
        );
        h
    }
    fn shell(&self) -> Vec<(&'static str, String)> {
        vec![
            ("reaped", self.reconcile.reaped.len().to_string()),
            ("active_jobs", self.active_jobs.join(",")),
        ]
    }
}

fn restore_part(s: &RestoreSummary) -> RestorePart {
    RestorePart {
        ok: s.failed == 0,
        written: s.written,
        verified: s.verified,
        unchanged: s.unchanged,
        failed: s.failed,
        failures: s.failures.clone(),
    }
}

/// Count what the jobs changed in the `job_metrics` textfile, if one is configured; a failure is
/// a note, not a failed job end.
fn record_metrics(ctx: &Context, changed: &[MsrChange], notes: &mut Vec<String>) {
    if let Some(path) = &ctx.config.job_metrics {
        if let Err(e) = msr_backend::metrics::record_job_changes(path, changed) {
            notes.push(format!("could not update {}: {}", shown(path), chain(&e)));
        }
    }
}

fn active(state: &StateDir) -> Vec<String> {
    jobs::status(state).map(|s| s.jobs).unwrap_or_default()
}

pub fn run(ctx: &Context, cmd: &JobCommand) -> Result<Outcome> {
    let regs = ctx.setup();
    match cmd {
        JobCommand::Begin { job_id, args } => {
            let state = state_dir(ctx, args);
            let (reconcile, _) = reconcile(ctx, &state, args, Some(job_id))?;
            let outcome = jobs::begin(&state, job_id, &regs)?;
            let (kind, text, elapsed) = match &outcome {
                BeginOutcome::Snapshot(s) => (
                    "taken",
                    format!(
                        "job {job_id}: first job on the node: snapshot of {} MSRs x {} CPUs ({} unreadable) in {:.1} ms",
                        s.msrs, s.cpus, s.unreadable, ms(s.elapsed)
                    ),
                    Some(ms(s.elapsed)),
                ),
                BeginOutcome::Joined { others } => (
                    "shared",
                    format!("job {job_id}: joins {}; their snapshot stands", others.join(", ")),
                    None,
                ),
                BeginOutcome::ReusedSnapshot { .. } => (
                    "kept",
                    format!("job {job_id}: the snapshot of an earlier failed restore is kept as the state to restore"),
                    None,
                ),
                BeginOutcome::AlreadyRegistered => (
                    "registered",
                    format!("job {job_id}: already registered; nothing changed"),
                    None,
                ),
            };
            Ok(Outcome::of(JobBegin {
                job_id: job_id.clone(),
                snapshot: kind.to_string(),
                active_jobs: active(&state),
                state_dir: shown(&state.path),
                elapsed_ms: elapsed,
                reconcile,
                text,
            }))
        }
        JobCommand::End { job_id, args } => {
            let state = state_dir(ctx, args);
            let (reconcile, _) = reconcile(ctx, &state, args, Some(job_id))?;
            let mut report = JobEnd {
                job_id: job_id.clone(),
                last_job: false,
                active_jobs: Vec::new(),
                restore: None,
                check: None,
                changed: Vec::new(),
                notes: Vec::new(),
                note: None,
                error: None,
                elapsed_ms: None,
                reconcile,
            };
            match jobs::end(&state, job_id, &regs) {
                Ok(EndOutcome::Restored(s)) => {
                    report.last_job = true;
                    report.restore = Some(restore_part(&s));
                    report.check = Some(CheckPart {
                        ok: s.drift.is_empty(),
                        clean: s.drift.is_empty(),
                        drift: s.drift.clone(),
                    });
                    record_metrics(ctx, &s.changed, &mut report.notes);
                    report.changed = s.changed;
                    report.notes.extend(s.notes);
                    report.elapsed_ms = Some(ms(s.elapsed));
                }
                Ok(EndOutcome::OthersRemain { others }) => {
                    report.note = Some(format!(
                        "other jobs ({}) still hold the node; nothing restored",
                        others.join(", ")
                    ));
                }
                Ok(EndOutcome::NotRegistered) => {
                    report.note = Some(
                        "the job was not registered (its begin failed or never ran), and no restore was due"
                            .to_string(),
                    );
                }
                Err(
                    e @ (JobError::RestoreIncomplete { .. }
                    | JobError::RestoreError { .. }
                    | JobError::SnapshotMissing { .. }),
                ) => {
                    // The restore was attempted (or is impossible): a failure, not a usage error.
                    report.last_job = true;
                    if let JobError::RestoreIncomplete { summary, .. } = &e {
                        report.restore = Some(restore_part(summary));
                        report.changed = summary.changed.clone();
                    } else {
                        report.restore = Some(RestorePart {
                            ok: false,
                            written: 0,
                            verified: 0,
                            unchanged: 0,
                            failed: 0,
                            failures: Vec::new(),
                        });
                    }
                    report.error = Some(chain(&e));
                }
                Err(e) => return Err(e.into()),
            }
            report.active_jobs = active(&state);
            Ok(Outcome::of(report))
        }
        JobCommand::Status { args } => {
            let state = state_dir(ctx, args);
            let st = jobs::status(&state)?;
            Ok(Outcome::of(JobStatus {
                active_jobs: st.jobs,
                snapshot: st.snapshot.as_ref().map(|p| shown(p)),
                state_dir: shown(&state.path),
            }))
        }
        JobCommand::Reconcile { args } => {
            let state = state_dir(ctx, args);
            anyhow::ensure!(
                args.running_jobs.is_some(),
                "job reconcile needs --running-jobs IDS: the jobs the scheduler runs on this node now"
            );
            let (reconcile, restored) = reconcile(ctx, &state, args, None)?;
            if let Some(s) = &restored {
                let mut notes = Vec::new();
                record_metrics(ctx, &s.changed, &mut notes);
            }
            Ok(Outcome::of(JobReconcile {
                active_jobs: active(&state),
                changed: restored
                    .as_ref()
                    .map(|s| s.changed.clone())
                    .unwrap_or_default(),
                restore: restored.as_ref().map(restore_part),
                reconcile,
            }))
        }
    }
}
