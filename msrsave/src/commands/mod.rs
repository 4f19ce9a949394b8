//! One module per subcommand. Each returns a typed report ([`crate::output::Report`]), turned
//! into an [`Outcome`] by [`dispatch`].

pub mod allowlist;
pub mod config;
pub mod demo;
pub mod files;
pub mod fleet;
pub mod info;
pub mod job;
pub mod node_ops;
pub mod slurm;

use std::path::Path;

use anyhow::{Context as _, Result};
use msr_backend::config::Config;
use msr_backend::device::select::OpenBackend;
use msr_backend::node::Node;
use msr_backend::operations::Setup;
use msr_backend::policy::Policy;

use crate::cli::{AllowlistCommand, Cli, Command, ConfigCommand, FleetCommand, GlobalArgs};
use crate::output::Outcome;

/// The command's name as JSON reports and error messages give it.
pub fn name(command: &Command) -> String {
    let sub = match command {
        Command::Save { .. } => "save",
        Command::Restore { .. } => "restore",
        Command::Check { .. } => "check",
        Command::Diff { .. } => "diff",
        Command::Show { .. } => "show",
        Command::Allowlist(a) => match a {
            AllowlistCommand::Show { .. } => "allowlist show",
            AllowlistCommand::Select => "allowlist select",
            AllowlistCommand::Load { .. } => "allowlist load",
            AllowlistCommand::Lint { .. } => "allowlist lint",
            AllowlistCommand::Compile { .. } => "allowlist compile",
        },
        Command::Info { .. } => "info",
        Command::Emulate { .. } => "emulate",
        Command::Demo { .. } => "demo",
        Command::Config(c) => match c {
            ConfigCommand::Show => "config show",
            ConfigCommand::Get { .. } => "config get",
        },
        Command::Job(j) => job::name(j),
        Command::Fleet(f) => match f {
            FleetCommand::Fingerprint { .. } => "fleet fingerprint",
            FleetCommand::Compare { .. } => "fleet compare",
        },
    };
    sub.to_string()
}

/// The configuration in force (file, then `--set`, then the global options) and the node.
pub struct Context {
    pub config: Config,
    pub node: Node,
}

impl Context {
    pub fn new(global: &GlobalArgs) -> Result<Context> {
        let mut config = match &global.config {
            Some(p) => Config::load(p)?,
            None => Config::load_default()?,
        };
        config.apply_overrides(&global.settings, "--set")?;
        if let Some(b) = global.backend {
            config.backend = b;
        }
        if let Some(a) = &global.allowlist {
            config.allowlist = Some(a.clone());
        }
        if !global.allowlist_dirs.is_empty() {
            config.allowlist_dirs = global.allowlist_dirs.clone();
        }
        if let Some(r) = &global.root {
            config.root = Some(r.clone());
        }
        let node = match &config.root {
            Some(r) => {
                anyhow::ensure!(r.is_dir(), "--root {}: not a directory", r.display());
                Node::new(r)
            }
            None => Node::default(),
        };
        Ok(Context { config, node })
    }

    pub fn setup(&self) -> Setup {
        Setup {
            node: self.node.clone(),
            ..Setup::from_config(&self.config)
        }
    }

    /// The site policy: `explicit` (a command's --policy), else the configuration's `policy`
    /// (the default file only if it exists). A named file that cannot be read is an error.
    pub fn policy(&self, explicit: Option<&Path>) -> Result<Option<Policy>> {
        let path = match explicit {
            Some(p) => Some(p.to_path_buf()),
            None => msr_backend::policy::configured(self.config.policy.as_ref()),
        };
        path.map(|p| Policy::load(&p).map_err(anyhow::Error::from))
            .transpose()
    }

    /// Open the backend for reading, or writing too.
    pub fn open(&self, write: bool) -> Result<OpenBackend> {
        self.setup()
            .open(write)
            .context("cannot open an MSR backend")
    }
}

pub fn dispatch(cli: &Cli) -> Result<Outcome> {
    // Commands on files alone need no node; the others read the configuration and the node.
    let ctx = || Context::new(&cli.global);
    match &cli.command {
        Command::Emulate {
            dir,
            cpus,
            cpu_model,
            vendor,
            packages,
            threads_per_core,
        } => demo::emulate(
            &cli.global,
            dir,
            *cpus,
            cpu_model,
            vendor,
            (*packages, *threads_per_core),
        )
        .map(Outcome::of),
        Command::Demo { cpus, keep } => demo::demo(*cpus, keep.as_deref()).map(Outcome::of),
        Command::Diff {
            a,
            b,
            writable_only,
        } => files::diff(a, b, *writable_only).map(Outcome::of),
        Command::Show { file, cpu } => files::show(file, *cpu).map(Outcome::of),
        Command::Save { file, job_id } => {
            node_ops::save(&ctx()?, file, job_id.as_deref()).map(Outcome::of)
        }
        Command::Restore {
            file,
            dry_run,
            allow_foreign_host,
        } => node_ops::restore(&ctx()?, file, *dry_run, *allow_foreign_host).map(Outcome::of),
        Command::Check {
            file,
            all_bits,
            prometheus,
            allow_foreign_host,
        } => node_ops::check(
            &ctx()?,
            file,
            *all_bits,
            prometheus.as_deref(),
            *allow_foreign_host,
        )
        .map(Outcome::of),
        Command::Allowlist(a) => allowlist::run(&ctx()?, a),
        Command::Info {
            slurm_series_file,
            slurmd,
        } => info::info(&ctx()?, slurm_series_file, slurmd.as_deref()).map(Outcome::of),
        Command::Config(c) => config::run(&ctx()?, c),
        Command::Job(j) => job::run(&ctx()?, j),
        Command::Fleet(f) => fleet::run(&ctx()?, f),
    }
}

/// A path for messages.
pub fn shown(p: &Path) -> String {
    p.display().to_string()
}
