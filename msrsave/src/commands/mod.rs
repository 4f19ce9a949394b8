//! One module per subcommand. Each returns an [`Outcome`]: a JSON object for tools, text for
//! people, and the exit status.

mod allowlist;
mod demo;
mod files;
mod info;
mod job;
mod node_ops;

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context as _, Result};
use msr_backend::config::Config;
use msr_backend::device::select::{open_backend, BackendRequest, OpenBackend};
use msr_backend::device::BackendKind;
use msr_backend::node::Node;
use serde_json::Value;

use crate::cli::{BackendArg, Cli, Command, GlobalArgs};

/// What a command produced.
pub struct Outcome {
    pub code: u8,
    pub json: Value,
    pub human: String,
}

impl Outcome {
    pub fn new(code: u8, json: Value, human: String) -> Outcome {
        Outcome { code, json, human }
    }

    pub fn print(&self, json: bool) {
        if json {
            println!("{}", self.json);
        } else {
            print!("{}", self.human);
            if !self.human.ends_with('\n') && !self.human.is_empty() {
                println!();
            }
        }
    }
}

/// The command's name as JSON reports and error messages give it.
pub fn name(command: &Command) -> &'static str {
    match command {
        Command::Save { .. } => "save",
        Command::Restore { .. } => "restore",
        Command::Check { .. } => "check",
        Command::Diff { .. } => "diff",
        Command::Show { .. } => "show",
        Command::Allowlist(a) => match a {
            crate::cli::AllowlistCommand::Show { .. } => "allowlist show",
            crate::cli::AllowlistCommand::Select => "allowlist select",
            crate::cli::AllowlistCommand::Load { .. } => "allowlist load",
            crate::cli::AllowlistCommand::Lint { .. } => "allowlist lint",
        },
        Command::Info => "info",
        Command::Emulate { .. } => "emulate",
        Command::Demo { .. } => "demo",
        Command::Job(j) => job::name(j),
    }
}

/// Global options merged over the configuration file.
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
        if let Some(b) = global.backend {
            config.backend = match b {
                BackendArg::Auto => None,
                BackendArg::Batch => Some(BackendKind::Batch),
                BackendArg::Safe => Some(BackendKind::Safe),
                BackendArg::Msr => Some(BackendKind::Msr),
            };
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

    pub fn request(&self) -> BackendRequest {
        BackendRequest {
            kind: self.config.backend,
            allowlist: self.config.allowlist.clone(),
            allowlist_dirs: self.config.allowlist_dirs.clone(),
        }
    }

    pub fn open(&self) -> Result<OpenBackend> {
        open_backend(&self.node, &self.request()).context("cannot open an MSR backend")
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
        } => demo::emulate(&cli.global, dir, *cpus, cpu_model, vendor),
        Command::Demo { cpus, keep } => demo::demo(*cpus, keep.as_deref()),
        Command::Diff {
            a,
            b,
            writable_only,
        } => files::diff(a, b, *writable_only),
        Command::Show { file, cpu } => files::show(file, *cpu),
        Command::Save { file, job_id } => node_ops::save(&ctx()?, file, job_id.as_deref()),
        Command::Restore {
            file,
            dry_run,
            allow_foreign_host,
        } => node_ops::restore(&ctx()?, file, *dry_run, *allow_foreign_host),
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
        ),
        Command::Allowlist(a) => allowlist::run(&ctx()?, a),
        Command::Info => info::info(&ctx()?),
        Command::Job(j) => job::run(&ctx()?, j),
    }
}

/// Milliseconds, for reports.
pub fn ms(d: std::time::Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

/// A path for messages.
pub fn shown(p: &Path) -> String {
    p.display().to_string()
}

/// Append a line to a report.
pub fn line(out: &mut String, text: impl AsRef<str>) {
    let _ = writeln!(out, "{}", text.as_ref());
}
