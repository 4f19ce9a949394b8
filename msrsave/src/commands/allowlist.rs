//! `allowlist show | select | load | lint`.

use std::path::PathBuf;

use anyhow::{Context as _, Result};
use msr_backend::allowlist::{
    kernel_parse, lint as lint_text, read_file, select_allowlist, Allowlist, Severity,
};
use msr_backend::device::control;
use msr_backend::device::select::loaded_allowlist;
use msr_backend::{MsrAddr, WriteMask};
use schemars::JsonSchema;
use serde::Serialize;

use super::{shown, Context};
use crate::cli::AllowlistCommand;
use crate::output::{line, ExitStatus, Outcome, Report};

pub fn run(ctx: &Context, cmd: &AllowlistCommand) -> Result<Outcome> {
    match cmd {
        AllowlistCommand::Show { file } => show(ctx, file.as_ref()).map(Outcome::of),
        AllowlistCommand::Select => Ok(Outcome::of(AllowlistSelect {
            file: shown(&pick(ctx)?),
        })),
        AllowlistCommand::Load { file, auto } => load(ctx, file.as_ref(), *auto).map(Outcome::of),
        AllowlistCommand::Lint { files } => lint(files).map(Outcome::of),
    }
}

fn pick(ctx: &Context) -> Result<PathBuf> {
    let id = ctx.node.cpu_identity()?;
    Ok(select_allowlist(&id, &ctx.config.allowlist_dirs)?)
}

/// One allowlist entry.
#[derive(Serialize, JsonSchema)]
pub struct Entry {
    pub msr: MsrAddr,
    pub mask: WriteMask,
    pub name: Option<String>,
}

/// `allowlist show`: a list in the kernel's read-back form.
#[derive(Serialize, JsonSchema)]
pub struct AllowlistShow {
    pub source: String,
    pub digest: String,
    pub msrs: usize,
    pub writable: usize,
    pub entries: Vec<Entry>,
    #[serde(skip)]
    pub readback: String,
}

impl Report for AllowlistShow {
    const COMMAND: &'static str = "allowlist show";
    fn status(&self) -> ExitStatus {
        ExitStatus::Ok
    }
    fn text(&self) -> String {
        self.readback.clone()
    }
    fn shell(&self) -> Vec<(&'static str, String)> {
        vec![
            ("source", self.source.clone()),
            ("digest", self.digest.clone()),
            ("msrs", self.msrs.to_string()),
        ]
    }
}

fn show(ctx: &Context, file: Option<&PathBuf>) -> Result<AllowlistShow> {
    let list = match file.or(ctx.config.allowlist.as_ref()) {
        Some(f) => Allowlist::from_file(f)?,
        None => loaded_allowlist(&ctx.node)?,
    };
    Ok(AllowlistShow {
        source: list.source().to_string(),
        digest: list.digest(),
        msrs: list.len(),
        writable: list.writable_count(),
        entries: list
            .entries()
            .iter()
            .map(|e| Entry {
                msr: e.addr,
                mask: e.mask,
                name: e.name.clone(),
            })
            .collect(),
        readback: list.to_kernel_text(),
    })
}

/// `allowlist select`: the list for this CPU.
#[derive(Serialize, JsonSchema)]
pub struct AllowlistSelect {
    pub file: String,
}

impl Report for AllowlistSelect {
    const COMMAND: &'static str = "allowlist select";
    fn status(&self) -> ExitStatus {
        ExitStatus::Ok
    }
    fn text(&self) -> String {
        format!("{}\n", self.file)
    }
    fn shell(&self) -> Vec<(&'static str, String)> {
        vec![("file", self.file.clone())]
    }
}

/// `allowlist load`: what was loaded into msr-safe.
#[derive(Serialize, JsonSchema)]
pub struct AllowlistLoad {
    pub file: String,
    /// The allowlist node written.
    pub node: String,
    pub msrs: usize,
    pub writable: usize,
    pub digest: String,
}

impl Report for AllowlistLoad {
    const COMMAND: &'static str = "allowlist load";
    fn status(&self) -> ExitStatus {
        ExitStatus::Ok
    }
    fn text(&self) -> String {
        format!(
            "loaded {} ({} MSRs, {} writable) into {}\n",
            self.file, self.msrs, self.writable, self.node
        )
    }
    fn shell(&self) -> Vec<(&'static str, String)> {
        vec![("file", self.file.clone()), ("msrs", self.msrs.to_string())]
    }
}

fn load(ctx: &Context, file: Option<&PathBuf>, auto: bool) -> Result<AllowlistLoad> {
    let path = match (file, auto) {
        (Some(f), _) => f.clone(),
        (None, _) => pick(ctx)
            .context("allowlist load --auto: no list for this CPU, so nothing was loaded")?,
    };
    let text = read_file(&path)?;
    // Refuse what the kernel would refuse, before writing: a duplicate would leave msr-safe
    // with an EMPTY list.
    let list = Allowlist::parse(&text, &shown(&path))?;
    let node = ctx.node.allowlist_node();
    anyhow::ensure!(
        node.exists(),
        "{} does not exist: msr-safe is not loaded (modprobe msr-safe), so no list was loaded",
        shown(&node)
    );
    let node = control::load_allowlist(&ctx.node, &text)
        .with_context(|| format!("{} not loaded", shown(&path)))?;
    Ok(AllowlistLoad {
        file: shown(&path),
        node: shown(&node),
        msrs: list.len(),
        writable: list.writable_count(),
        digest: list.digest(),
    })
}

/// One lint finding.
#[derive(Serialize, JsonSchema)]
pub struct LintFinding {
    pub line: usize,
    /// `error` (msr-safe would refuse the list) or `warning`.
    pub severity: String,
    pub message: String,
    /// The errno msr-safe would return, for errors.
    pub errno: Option<String>,
}

/// The lint of one file.
#[derive(Serialize, JsonSchema)]
pub struct LintedFile {
    pub file: String,
    pub ok: bool,
    pub msrs: usize,
    pub writable: usize,
    pub findings: Vec<LintFinding>,
}

/// `allowlist lint`: each file as the kernel would parse it, and what an admin should know.
#[derive(Serialize, JsonSchema)]
pub struct AllowlistLint {
    pub files: Vec<LintedFile>,
}

impl Report for AllowlistLint {
    const COMMAND: &'static str = "allowlist lint";
    fn status(&self) -> ExitStatus {
        if self.files.iter().all(|f| f.ok) {
            ExitStatus::Ok
        } else {
            ExitStatus::Failed
        }
    }
    fn text(&self) -> String {
        let mut h = String::new();
        for f in &self.files {
            for x in &f.findings {
                line(
                    &mut h,
                    format!("{}:{}: {}: {}", f.file, x.line, x.severity, x.message),
                );
            }
            if f.ok {
                line(
                    &mut h,
                    format!(
                        "{}: ok, {} MSRs, {} writable, {} warnings",
                        f.file,
                        f.msrs,
                        f.writable,
                        f.findings.len()
                    ),
                );
            }
        }
        h
    }
}

fn lint(files: &[PathBuf]) -> Result<AllowlistLint> {
    let mut out = Vec::new();
    for f in files {
        let text = read_file(f)?;
        let findings = lint_text(&text);
        let errors = findings
            .iter()
            .filter(|x| x.severity == Severity::Error)
            .count();
        let (msrs, writable) = match kernel_parse(&text) {
            Ok(e) => (e.len(), e.iter().filter(|e| e.mask != 0).count()),
            Err(_) => (0, 0),
        };
        out.push(LintedFile {
            file: shown(f),
            ok: errors == 0,
            msrs,
            writable,
            findings: findings
                .iter()
                .map(|x| LintFinding {
                    line: x.line,
                    severity: x.severity.to_string(),
                    message: x.message.clone(),
                    errno: x.kernel_error.as_ref().map(|k| format!("{:?}", k.errno)),
                })
                .collect(),
        });
    }
    Ok(AllowlistLint { files: out })
}
