//! `allowlist show | select | load | lint`.

use std::path::PathBuf;

use anyhow::{Context as _, Result};
use msr_backend::allowlist::{
    kernel_parse, lint as lint_text, select_allowlist, Allowlist, Severity,
};
use msr_backend::device::control;
use msr_backend::device::select::loaded_allowlist;
use msr_backend::error::chain;
use serde_json::json;

use super::{line, shown, Context, Outcome};
use crate::cli::AllowlistCommand;
use crate::{EXIT_FAILED, EXIT_OK};

pub fn run(ctx: &Context, cmd: &AllowlistCommand) -> Result<Outcome> {
    match cmd {
        AllowlistCommand::Show { file } => show(ctx, file.as_ref()),
        AllowlistCommand::Select => {
            let path = pick(ctx)?;
            Ok(Outcome::new(
                EXIT_OK,
                json!({"command": "allowlist select", "ok": true, "file": shown(&path)}),
                format!("{}\n", shown(&path)),
            ))
        }
        AllowlistCommand::Load { file, auto } => load(ctx, file.as_ref(), *auto),
        AllowlistCommand::Lint { files } => lint(files),
    }
}

fn pick(ctx: &Context) -> Result<PathBuf> {
    let id = ctx.node.cpu_identity()?;
    Ok(select_allowlist(&id, &ctx.config.allowlist_dirs)?)
}

fn show(ctx: &Context, file: Option<&PathBuf>) -> Result<Outcome> {
    let list = match file.or(ctx.config.allowlist.as_ref()) {
        Some(f) => Allowlist::from_file(f)?,
        None => loaded_allowlist(&ctx.node).map_err(anyhow::Error::msg)?,
    };
    let entries: Vec<_> = list
        .entries()
        .iter()
        .map(|e| json!({"msr": e.addr, "mask": e.mask, "name": e.name}))
        .collect();
    Ok(Outcome::new(
        EXIT_OK,
        json!({"command": "allowlist show", "ok": true, "source": list.source(), "digest": list.digest(),
               "msrs": list.len(), "writable": list.writable_count(), "entries": entries}),
        list.to_kernel_text(),
    ))
}

fn load(ctx: &Context, file: Option<&PathBuf>, auto: bool) -> Result<Outcome> {
    let path = match (file, auto) {
        (Some(f), _) => f.clone(),
        (None, _) => pick(ctx)
            .context("allowlist load --auto: no list for this CPU, so nothing was loaded")?,
    };
    let text = std::fs::read(&path).with_context(|| format!("cannot read {}", shown(&path)))?;
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
        .map_err(|e| anyhow::anyhow!("{} not loaded: {}", shown(&path), chain(&e)))?;
    Ok(Outcome::new(
        EXIT_OK,
        json!({"command": "allowlist load", "ok": true, "file": shown(&path), "node": shown(&node),
               "msrs": list.len(), "writable": list.writable_count(), "digest": list.digest()}),
        format!(
            "loaded {} ({} MSRs, {} writable) into {}\n",
            shown(&path),
            list.len(),
            list.writable_count(),
            shown(&node)
        ),
    ))
}

fn lint(files: &[PathBuf]) -> Result<Outcome> {
    let mut h = String::new();
    let mut reports = Vec::new();
    let mut errors = 0;
    for f in files {
        let text = std::fs::read(f).with_context(|| format!("cannot read {}", shown(f)))?;
        let findings = lint_text(&text);
        let file_errors = findings
            .iter()
            .filter(|x| x.severity == Severity::Error)
            .count();
        errors += file_errors;
        for x in &findings {
            line(
                &mut h,
                format!("{}:{}: {}: {}", shown(f), x.line, x.severity, x.message),
            );
        }
        let (msrs, writable) = match kernel_parse(&text) {
            Ok(e) => (e.len(), e.iter().filter(|e| e.mask != 0).count()),
            Err(_) => (0, 0),
        };
        if file_errors == 0 {
            line(
                &mut h,
                format!(
                    "{}: ok, {msrs} MSRs, {writable} writable, {} warnings",
                    shown(f),
                    findings.len()
                ),
            );
        }
        let list: Vec<_> = findings
            .iter()
            .map(|x| {
                json!({"line": x.line, "severity": x.severity.to_string(), "message": x.message,
                           "errno": x.kernel_error.as_ref().map(|k| format!("{:?}", k.errno))})
            })
            .collect();
        reports.push(json!({"file": shown(f), "ok": file_errors == 0, "msrs": msrs, "writable": writable, "findings": list}));
    }
    Ok(Outcome::new(
        if errors == 0 { EXIT_OK } else { EXIT_FAILED },
        json!({"command": "allowlist lint", "ok": errors == 0, "files": reports}),
        h,
    ))
}
