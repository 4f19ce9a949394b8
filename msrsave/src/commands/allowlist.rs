//! `allowlist show | select | load | lint | compile`.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};
use msr_backend::allowlist::{
    kernel_parse, lint as lint_text, read_file, select_allowlist, Allowlist, Severity,
};
use msr_backend::device::control;
use msr_backend::device::select::loaded_allowlist;
use msr_backend::fsio::write_atomically;
use msr_backend::msrs::models::{self, ModelId};
use msr_backend::policy::compile::{
    self as policy_compile, CompiledEntry, Finding, Severity as FindingSeverity,
};
use msr_backend::policy::lint::{lint_for_model, model_of_file_name};
use msr_backend::policy::Policy;
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
        AllowlistCommand::Lint { files, cpu, policy } => {
            lint(files, cpu.as_deref(), policy.as_deref()).map(Outcome::of)
        }
        AllowlistCommand::Compile {
            policy,
            cpu,
            all,
            output,
            out_dir,
        } => compile(
            ctx,
            policy,
            cpu.as_deref(),
            *all,
            output.as_deref(),
            out_dir.as_deref(),
        )
        .map(Outcome::of),
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
    /// `error` (msr-safe would refuse the list, or the policy forbids it), `warning` or `note`.
    pub severity: String,
    pub message: String,
    /// The errno msr-safe would return, for the kernel's errors.
    pub errno: Option<String>,
    /// What the finding is about, for findings about the CPU model or the policy.
    pub kind: Option<policy_compile::FindingKind>,
}

/// The lint of one file.
#[derive(Serialize, JsonSchema)]
pub struct LintedFile {
    pub file: String,
    pub ok: bool,
    /// The CPU model the list was checked for (`06_55`), if known.
    pub cpu: Option<String>,
    pub msrs: usize,
    pub writable: usize,
    pub findings: Vec<LintFinding>,
}

/// `allowlist lint`: each file as the kernel would parse it, and what an admin should know.
#[derive(Serialize, JsonSchema)]
pub struct AllowlistLint {
    /// The policy the lists were checked against, if any.
    pub policy: Option<String>,
    pub files: Vec<LintedFile>,
}

impl Report for AllowlistLint {
    const COMMAND: &'static str = "allowlist lint";
    fn status(&self) -> ExitStatus {
        ExitStatus::ok_if(self.files.iter().all(|f| f.ok))
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
                let warnings = f
                    .findings
                    .iter()
                    .filter(|x| x.severity == "warning")
                    .count();
                line(
                    &mut h,
                    format!(
                        "{}: ok, {} MSRs, {} writable, {warnings} warnings{}",
                        f.file,
                        f.msrs,
                        f.writable,
                        f.cpu
                            .as_ref()
                            .map(|c| format!(" (checked for CPU model {c})"))
                            .unwrap_or_default()
                    ),
                );
            }
        }
        h
    }
}

fn parse_model(text: &str) -> Result<ModelId> {
    text.parse::<ModelId>().map_err(anyhow::Error::msg)
}

fn lint(files: &[PathBuf], cpu: Option<&str>, policy: Option<&Path>) -> Result<AllowlistLint> {
    let cpu = cpu.map(parse_model).transpose()?;
    let policy = policy.map(Policy::load).transpose()?;
    let mut out = Vec::new();
    for f in files {
        let text = read_file(f)?;
        let findings = lint_text(&text);
        let (msrs, writable) = match kernel_parse(&text) {
            Ok(e) => (e.len(), e.iter().filter(|e| e.mask != 0).count()),
            Err(_) => (0, 0),
        };
        let mut all: Vec<LintFinding> = findings
            .iter()
            .map(|x| LintFinding {
                line: x.line,
                severity: x.severity.to_string(),
                message: x.message.clone(),
                errno: x.kernel_error.as_ref().map(|k| format!("{:?}", k.errno)),
                kind: None,
            })
            .collect();
        let model = cpu.or_else(|| {
            f.file_name()
                .and_then(|n| n.to_str())
                .and_then(model_of_file_name)
        });
        if let Some(m) = model {
            all.extend(
                lint_for_model(&text, m, policy.as_ref())
                    .into_iter()
                    .map(|x| LintFinding {
                        line: x.line,
                        severity: x.severity.to_string(),
                        message: x.message,
                        errno: None,
                        kind: Some(x.kind),
                    }),
            );
        } else if policy.is_some() {
            all.push(LintFinding {
                line: 0,
                severity: "warning".to_string(),
                message: "not checked against the policy: the CPU model is unknown (name the file al_FF_MM or pass --cpu FF_MM)".to_string(),
                errno: None,
                kind: Some(policy_compile::FindingKind::UnknownModel),
            });
        }
        all.sort_by_key(|x| x.line);
        let errors = findings
            .iter()
            .filter(|x| x.severity == Severity::Error)
            .count()
            + all
                .iter()
                .filter(|x| x.kind.is_some() && x.severity == "error")
                .count();
        out.push(LintedFile {
            file: shown(f),
            ok: errors == 0,
            cpu: model.map(|m| m.to_string()),
            msrs,
            writable,
            findings: all,
        });
    }
    Ok(AllowlistLint {
        policy: policy.map(|p| p.source),
        files: out,
    })
}

/// One compiled list.
#[derive(Serialize, JsonSchema)]
pub struct CompiledList {
    /// The CPU model, `06_55`.
    pub cpu: String,
    /// The file written, if any.
    pub file: Option<String>,
    pub msrs: usize,
    pub writable: usize,
    /// `sha256:<hex>` of the list in the kernel's read-back form (what `allowlist show` prints).
    pub digest: Option<String>,
    pub entries: Vec<CompiledEntry>,
    pub findings: Vec<Finding>,
    /// The list itself (empty when the policy allows nothing on this model).
    pub text: String,
}

/// `allowlist compile`: the lists a policy makes.
#[derive(Serialize, JsonSchema)]
pub struct AllowlistCompile {
    pub policy: String,
    pub policy_digest: String,
    pub lists: Vec<CompiledList>,
    /// Print the one list itself as the readable report (no --output, no --out-dir).
    #[serde(skip)]
    pub to_stdout: bool,
}

impl Report for AllowlistCompile {
    const COMMAND: &'static str = "allowlist compile";
    fn status(&self) -> ExitStatus {
        ExitStatus::ok_if(
            !self
                .lists
                .iter()
                .flat_map(|l| &l.findings)
                .any(|f| f.severity == FindingSeverity::Error),
        )
    }
    fn text(&self) -> String {
        if self.to_stdout {
            if let Some(l) = self.lists.first() {
                if !l.text.is_empty() {
                    return l.text.clone();
                }
            }
        }
        let mut h = String::new();
        for l in &self.lists {
            let what = match &l.file {
                Some(f) => format!("wrote {f}"),
                None if l.text.is_empty() => "no list".to_string(),
                None => "compiled".to_string(),
            };
            let count = |s: FindingSeverity| l.findings.iter().filter(|f| f.severity == s).count();
            line(
                &mut h,
                format!(
                    "{}: {what}: {} MSRs, {} writable; {} warnings, {} notes",
                    l.cpu,
                    l.msrs,
                    l.writable,
                    count(FindingSeverity::Warning),
                    count(FindingSeverity::Note)
                ),
            );
            for f in l
                .findings
                .iter()
                .filter(|f| f.severity != FindingSeverity::Note)
            {
                line(&mut h, format!("  {}: {}", f.severity, f.message));
            }
        }
        h
    }
    fn shell(&self) -> Vec<(&'static str, String)> {
        vec![
            ("policy", self.policy.clone()),
            ("lists", self.lists.len().to_string()),
            (
                "files",
                self.lists
                    .iter()
                    .filter_map(|l| l.file.clone())
                    .collect::<Vec<_>>()
                    .join(" "),
            ),
        ]
    }
}

/// Mode of the lists written: msr-safe's udev rules and our packages ship them world-readable.
const LIST_FILE_MODE: u32 = 0o644;

fn compile(
    ctx: &Context,
    policy: &Path,
    cpu: Option<&str>,
    all: bool,
    output: Option<&Path>,
    out_dir: Option<&Path>,
) -> Result<AllowlistCompile> {
    let policy = Policy::load(policy)?;
    let targets: Vec<ModelId> = if all {
        models::models().iter().map(|m| m.id).collect()
    } else {
        match cpu {
            Some(c) => vec![parse_model(c)?],
            None => vec![ModelId::from(&ctx.node.cpu_identity().context(
                "no --cpu given and this node's CPU model cannot be read",
            )?)],
        }
    };
    if let Some(d) = out_dir {
        anyhow::ensure!(d.is_dir(), "--out-dir {}: not a directory", shown(d));
    }
    let mut lists = Vec::new();
    for m in targets {
        let mut c = policy_compile::compile(&policy, m);
        if all {
            // With --all, a model the policy gives nothing is skipped, not a failure.
            for f in &mut c.findings {
                if f.kind == policy_compile::FindingKind::Empty {
                    f.severity = FindingSeverity::Note;
                }
            }
        }
        policy_compile::verify(&c).map_err(|e| {
            anyhow::anyhow!("BUG: the list compiled for {m} is not one the kernel takes: {e}")
        })?;
        let mut file = None;
        let mut digest = None;
        if !c.is_empty() {
            let list = Allowlist::parse(c.text.as_bytes(), &c.file_name)?;
            digest = Some(list.digest());
            let target = match (output, out_dir) {
                (Some(o), _) => Some(o.to_path_buf()),
                (None, Some(d)) => Some(d.join(&c.file_name)),
                _ => None,
            };
            if let Some(t) = target {
                write_atomically(&t, c.text.as_bytes(), LIST_FILE_MODE)
                    .with_context(|| format!("cannot write {}", shown(&t)))?;
                file = Some(shown(&t));
            }
        }
        lists.push(CompiledList {
            cpu: m.to_string(),
            file,
            msrs: c.entries.len(),
            writable: c.writable(),
            digest,
            entries: c.entries,
            findings: c.findings,
            text: c.text,
        });
    }
    Ok(AllowlistCompile {
        policy: policy.source.clone(),
        policy_digest: policy.digest.clone(),
        lists,
        to_stdout: output.is_none() && out_dir.is_none(),
    })
}
