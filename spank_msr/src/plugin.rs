//! The SPANK entry points. Not compiled into the unit tests: it needs slurmd's symbols.

use std::error::Error;
use std::process::Command;

use msr_backend::config::OnDrift;
use msr_backend::jobs::{self, EndOutcome, SchedulerView};
use msr_backend::operations::Setup;
use slurm_spank::{
    spank_log, Context, LogLevel, Plugin, SpankHandle, SLURM_VERSION_NUMBER, SPANK_PLUGIN,
};

use crate::config::Config;
use crate::report;

#[derive(Default)]
struct SpankMsr;

SPANK_PLUGIN!(b"msr_restore", SLURM_VERSION_NUMBER, SpankMsr);

fn log(level: LogLevel, msg: &str) {
    spank_log(level, &format!("msr-restore: {msg}"));
}

fn config(spank: &SpankHandle) -> Result<Config, Box<dyn Error>> {
    let argv = spank.plugin_argv()?;
    Ok(Config::load(&argv)?)
}

/// The node's SLURM name: slurmd sets SLURMD_NODENAME for prolog and epilog; else the short
/// host name.
fn node_name() -> String {
    if let Ok(n) = std::env::var("SLURMD_NODENAME") {
        if !n.is_empty() {
            return n;
        }
    }
    let host = msr_backend::node::hostname();
    host.split('.').next().unwrap_or(&host).to_string()
}

/// Run a Slurm command with `args`; its stdout, or why it failed.
fn run_slurm(path: &std::path::Path, args: &[String]) -> Result<String, String> {
    match Command::new(path).args(args).output() {
        Ok(o) if o.status.success() => Ok(String::from_utf8_lossy(&o.stdout).into_owned()),
        Ok(o) => Err(format!(
            "{} {} ({}): {}",
            path.display(),
            args.join(" "),
            o.status,
            String::from_utf8_lossy(&o.stderr).trim()
        )),
        Err(e) => Err(format!("cannot run {}: {e}", path.display())),
    }
}

/// Run scontrol with `args`.
fn scontrol(cfg: &Config, args: &[String]) -> Result<String, String> {
    run_slurm(&cfg.scontrol, args)
}

/// Drain this node with `msg` as the reason (when `drain=yes`), and log what happened.
fn drain(cfg: &Config, msg: &str) {
    if !cfg.drain {
        return;
    }
    let node = node_name();
    let reason = report::drain_reason(msg);
    let args = [
        "update".to_string(),
        format!("nodename={node}"),
        "state=drain".to_string(),
        format!("reason={reason}"),
    ];
    match scontrol(cfg, &args) {
        Ok(_) => log(LogLevel::Info, &format!("node {node} drained: {reason}")),
        Err(e) => log(
            LogLevel::Error,
            &format!("could not drain node {node}: {e}"),
        ),
    }
}

/// Log `msg` as an error, drain if configured, and hand SLURM an error carrying the same text.
fn fail(cfg: &Config, what: &str, msg: String) -> Box<dyn Error> {
    drain(cfg, &format!("{what}: {msg}"));
    format!("{what}: {msg}").into()
}

/// Run squeue (beside scontrol) with `args`; its stdout, or why it failed.
fn squeue(cfg: &Config, args: &[String]) -> Result<String, String> {
    let path = cfg
        .scontrol
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .map_or_else(|| "squeue".into(), |d| d.join("squeue"));
    run_slurm(&path, args)
}

/// The jobs SLURM runs on this node: slurmd's own view (the job steps its slurmstepds run,
/// `scontrol listpids`, read on the node) and, so that a job allocated here without a step yet
/// (salloc) is never taken for gone, the controller's list of the node's jobs (`squeue -w`). A
/// job in either is running; when either cannot be asked, nothing is ended.
fn scheduler_view(cfg: &Config) -> SchedulerView {
    let steps = match scontrol(cfg, &["listpids".to_string()]) {
        Ok(out) => report::listpids_jobs(&out),
        Err(why) if why.contains(report::NO_STEPS) => Default::default(),
        Err(why) => return SchedulerView::Unknown { why },
    };
    let node = node_name();
    let allocated = match squeue(
        cfg,
        &[
            "-h".into(),
            "-w".into(),
            node.clone(),
            "-o".into(),
            "%A".into(),
        ],
    ) {
        Ok(out) => out
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(str::to_string)
            .collect::<Vec<_>>(),
        Err(why) => return SchedulerView::Unknown { why },
    };
    SchedulerView::Running {
        jobs: steps.into_iter().chain(allocated).collect(),
        source: format!("slurmd (scontrol listpids) and the controller (squeue -w {node})"),
    }
}

/// End the jobs slurmd forgot (its epilog never ran), and log each.
fn reconcile(cfg: &Config, regs: &Setup, own: &str) {
    let view = scheduler_view(cfg);
    match jobs::reconcile(&cfg.state_dir(), regs, &view, Some(own)) {
        Ok(r) => {
            for t in &r.stale_temps {
                log(LogLevel::Info, &t.to_string());
            }
            for j in &r.reaped {
                log(LogLevel::Info, &report::reaped_line(j));
            }
            if let Some(why) = &r.unknown {
                log(
                    LogLevel::Verbose,
                    &format!("cannot ask slurmd which jobs run here ({why}); no stale job ended"),
                );
            }
            if let Some(s) = &r.restored {
                log(LogLevel::Info, &report::restored_line("(reconciled)", s));
            }
        }
        Err(e) => log(
            LogLevel::Error,
            &format!("reconciliation failed: {}", msr_backend::error::chain(&e)),
        ),
    }
}

// SAFETY: the trait is unsafe because task callbacks run in processes slurmstepd forks; this
// plugin implements no task callback, and its job_prolog/job_epilog run in the short-lived
// `slurmstepd spank prolog/epilog` processes, which do not fork after calling it (threads the
// backend starts are joined before the callback returns).
unsafe impl Plugin for SpankMsr {
    /// No tracing subscriber: the plugin logs through spank_log itself.
    fn setup(&mut self, _spank: &mut SpankHandle) -> Result<(), Box<dyn Error>> {
        Ok(())
    }

    fn report_error(&self, _spank: &mut SpankHandle, error: &dyn Error) {
        log(LogLevel::Error, &error.to_string());
    }

    fn init(&mut self, spank: &mut SpankHandle) -> Result<(), Box<dyn Error>> {
        // srun, sbatch, salloc (local, allocator) and job steps (remote): nothing to do, no file
        // touched. In slurmd itself: check the arguments once, so a typo is in slurmd's log at
        // start (and, with `required`, slurmd refuses to start).
        if spank.context()? == Context::Slurmd {
            let cfg = config(spank)?;
            log(
                LogLevel::Verbose,
                &format!(
                    "loaded: state_dir={} root={} on_drift={} drain={}",
                    cfg.node.state_dir.display(),
                    cfg.node
                        .root
                        .as_ref()
                        .map_or("/".into(), |r| r.display().to_string()),
                    cfg.on_drift(),
                    cfg.drain
                ),
            );
        }
        Ok(())
    }

    fn job_prolog(&mut self, spank: &mut SpankHandle) -> Result<(), Box<dyn Error>> {
        let job = spank.job_id()?.to_string();
        let cfg = config(spank)?;
        let regs = Setup::from_config(&cfg.node);
        reconcile(&cfg, &regs, &job);
        match jobs::begin(&cfg.state_dir(), &job, &regs) {
            Ok(outcome) => {
                log(LogLevel::Info, &report::begin_line(&job, &outcome));
                Ok(())
            }
            Err(e) => Err(fail(
                &cfg,
                &format!("prolog job {job}"),
                msr_backend::error::chain(&e),
            )),
        }
    }

    fn job_epilog(&mut self, spank: &mut SpankHandle) -> Result<(), Box<dyn Error>> {
        let job = spank.job_id()?.to_string();
        let cfg = config(spank)?;
        let regs = Setup::from_config(&cfg.node);
        reconcile(&cfg, &regs, &job);
        let outcome = match jobs::end(&cfg.state_dir(), &job, &regs) {
            Ok(o) => o,
            Err(e) => {
                if let jobs::JobError::RestoreIncomplete { summary, .. } = &e {
                    if let Some(line) = report::changed_line(&job, summary) {
                        log(LogLevel::Info, &line);
                    }
                }
                return Err(fail(
                    &cfg,
                    &format!("epilog job {job}"),
                    msr_backend::error::chain(&e),
                ));
            }
        };
        log(LogLevel::Info, &report::end_line(&job, &outcome));
        if let EndOutcome::Restored(s) = &outcome {
            if let Some(line) = report::changed_line(&job, s) {
                log(LogLevel::Info, &line);
            }
            if let Some(path) = &cfg.node.job_metrics {
                if let Err(e) = msr_backend::metrics::record_job_changes(path, &s.changed) {
                    log(
                        LogLevel::Error,
                        &format!("job {job}: job metrics: {}", msr_backend::error::chain(&e)),
                    );
                }
            }
            for note in &s.notes {
                log(LogLevel::Info, &format!("job {job}: {note}"));
            }
            if !s.drift.is_empty() {
                let msg = report::drift_message(&job, s);
                match cfg.on_drift() {
                    OnDrift::Drain => return Err(fail(&cfg, "epilog", msg)),
                    OnDrift::Log => log(LogLevel::Error, &format!("{msg} (on_drift=log)")),
                }
            }
        }
        Ok(())
    }
}
