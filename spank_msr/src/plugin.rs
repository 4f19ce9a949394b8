//! The SPANK entry points. Not compiled into the unit tests: it needs slurmd's symbols.

use std::error::Error;
use std::process::Command;

use msr_backend::config::OnDrift;
use msr_backend::jobs::{self, DeviceRegisters, EndOutcome};
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

/// Drain this node with `msg` as the reason (when `drain=yes`), and log what happened.
fn drain(cfg: &Config, msg: &str) {
    if !cfg.drain {
        return;
    }
    let node = node_name();
    let reason = report::drain_reason(msg);
    let out = Command::new(&cfg.scontrol)
        .arg("update")
        .arg(format!("nodename={node}"))
        .arg("state=drain")
        .arg(format!("reason={reason}"))
        .output();
    match out {
        Ok(o) if o.status.success() => {
            log(LogLevel::Info, &format!("node {node} drained: {reason}"))
        }
        Ok(o) => log(
            LogLevel::Error,
            &format!(
                "could not drain node {node} ({} {}): {}",
                cfg.scontrol.display(),
                o.status,
                String::from_utf8_lossy(&o.stderr).trim()
            ),
        ),
        Err(e) => log(
            LogLevel::Error,
            &format!(
                "could not run {} to drain node {node}: {e}",
                cfg.scontrol.display()
            ),
        ),
    }
}

/// Log `msg` as an error, drain if configured, and hand SLURM an error carrying the same text.
fn fail(cfg: &Config, what: &str, msg: String) -> Box<dyn Error> {
    drain(cfg, &format!("{what}: {msg}"));
    format!("{what}: {msg}").into()
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
                    "loaded: state_dir={} root={} on_drift={:?} drain={}",
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
        let regs = DeviceRegisters::from_config(&cfg.node);
        match jobs::begin(&cfg.jobs(), &job, &regs) {
            Ok(outcome) => {
                log(LogLevel::Info, &report::begin_line(&job, &outcome));
                Ok(())
            }
            Err(e) => Err(fail(&cfg, &format!("prolog job {job}"), e.to_string())),
        }
    }

    fn job_epilog(&mut self, spank: &mut SpankHandle) -> Result<(), Box<dyn Error>> {
        let job = spank.job_id()?.to_string();
        let cfg = config(spank)?;
        let regs = DeviceRegisters::from_config(&cfg.node);
        let outcome = match jobs::end(&cfg.jobs(), &job, &regs) {
            Ok(o) => o,
            Err(e) => return Err(fail(&cfg, &format!("epilog job {job}"), e.to_string())),
        };
        log(LogLevel::Info, &report::end_line(&job, &outcome));
        if let EndOutcome::Restored(s) = &outcome {
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
