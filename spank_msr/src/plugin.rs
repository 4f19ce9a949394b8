//! The SPANK entry points. Not compiled into the unit tests: it needs slurmd's symbols.

use std::error::Error;
use std::process::Command;

use slurm_spank::{spank_log, Context, LogLevel, Plugin, SpankHandle, SLURM_VERSION_NUMBER, SPANK_PLUGIN};

use crate::config::Config;

#[derive(Default)]
struct SpankMsr;

SPANK_PLUGIN!(b"msr_restore", SLURM_VERSION_NUMBER, SpankMsr);

fn log(level: LogLevel, msg: &str) {
    spank_log(level, &format!("msr-restore: {msg}"));
}

fn config(spank: &SpankHandle) -> Result<Config, Box<dyn Error>> {
    let argv = spank.plugin_argv()?;
    Ok(Config::parse(&argv)?)
}

fn node_name() -> String {
    std::env::var("SLURMD_NODENAME").unwrap_or_else(|_| "?".into())
}

fn drain(cfg: &Config, reason: &str) {
    let node = node_name();
    let out = Command::new(&cfg.scontrol)
        .args(["update", &format!("nodename={node}"), "state=drain", &format!("reason={reason}")])
        .output();
    log(LogLevel::Info, &format!("drain {node}: {out:?}"));
}

// SAFETY: the trait is unsafe because task callbacks run in processes slurmstepd forks; this
// plugin implements no task callback, and its job_prolog/job_epilog run in the short-lived
// `slurmstepd spank prolog/epilog` processes, which do not fork after calling it.
unsafe impl Plugin for SpankMsr {
    fn setup(&mut self, _spank: &mut SpankHandle) -> Result<(), Box<dyn Error>> {
        Ok(())
    }

    fn report_error(&self, _spank: &mut SpankHandle, error: &dyn Error) {
        let mut msg = error.to_string();
        let mut e = error;
        while let Some(src) = e.source() {
            msg.push_str(&format!(": {src}"));
            e = src;
        }
        log(LogLevel::Error, &msg);
    }

    fn init(&mut self, spank: &mut SpankHandle) -> Result<(), Box<dyn Error>> {
        let ctx = spank.context()?;
        log(LogLevel::Info, &format!("init in {ctx:?} uid {}", unsafe { libc_getuid() }));
        if ctx == Context::Slurmd {
            let cfg = config(spank)?;
            log(LogLevel::Info, &format!("loaded: {cfg:?}"));
        }
        Ok(())
    }

    fn job_prolog(&mut self, spank: &mut SpankHandle) -> Result<(), Box<dyn Error>> {
        let cfg = config(spank)?;
        log(LogLevel::Info, &format!("job_prolog job {} uid {} ctx {:?} env {:?}", spank.job_id()?, spank.job_uid()?, spank.context()?, std::env::var("SLURMD_NODENAME")));
        if std::path::Path::new("/tmp/msr-exp-prolog-fail").exists() {
            drain(&cfg, "msr-restore: prolog experiment reason");
            return Err("prolog experiment failure".into());
        }
        Ok(())
    }

    fn job_epilog(&mut self, spank: &mut SpankHandle) -> Result<(), Box<dyn Error>> {
        let cfg = config(spank)?;
        log(LogLevel::Info, &format!("job_epilog job {} uid {}", spank.job_id()?, spank.job_uid()?));
        if std::path::Path::new("/tmp/msr-exp-epilog-fail").exists() {
            drain(&cfg, "msr-restore: epilog experiment reason");
            return Err("epilog experiment failure".into());
        }
        Ok(())
    }
}

extern "C" {
    #[link_name = "getuid"]
    fn libc_getuid() -> u32;
}
