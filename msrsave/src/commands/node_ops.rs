//! `save`, `restore` and `check`: the commands that touch a node's registers.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, Result};
use msr_backend::node::{format_cpu_list, hostname};
use msr_backend::plan::{DriftBits, MaskChange};
use msr_backend::restore::{self, CheckReport, RegisterFailure, RestoreReport};
use msr_backend::savefile::{write_atomically, SaveFile, SaveMeta};
use msr_backend::snapshot::Snapshot;
use msr_backend::CpuId;
use serde_json::json;

use super::{line, ms, shown, Context, Outcome};
use crate::{EXIT_FAILED, EXIT_OK};

/// Mode of the Prometheus textfile: node_exporter runs as its own user.
const PROMETHEUS_FILE_MODE: u32 = 0o644;

pub fn save(ctx: &Context, file: &Path, job_id: Option<&str>) -> Result<Outcome> {
    let start = Instant::now();
    let backend = ctx.open()?;
    let cpu = ctx.node.cpu_identity()?;
    let snapshot = Snapshot::take(
        backend.device.as_ref(),
        backend.allowlist.clone(),
        &backend.online,
    )
    .context("snapshot failed")?;
    let read_time = start.elapsed();
    let mut meta = SaveMeta::now(
        hostname(),
        cpu,
        ctx.node.kernel_release(),
        backend.device.kind(),
    );
    meta.job_id = job_id.map(str::to_string);
    meta.msr_safe = ctx.node.msr_safe_version();
    let save = SaveFile { meta, snapshot };
    save.store(file)?;
    let elapsed = start.elapsed();
    let s = &save.snapshot;
    let unreadable = s.unreadable();
    let mut human = String::new();
    line(
        &mut human,
        format!(
            "saved {} MSRs x {} CPUs ({} registers, {} unreadable) to {} in {:.1} ms (read {:.1} ms, backend {}, allowlist {})",
            s.allowlist.len(),
            s.cpus.len(),
            s.values.len(),
            unreadable,
            shown(file),
            ms(elapsed),
            ms(read_time),
            backend.device.kind(),
            backend.allowlist_origin
        ),
    );
    for w in &backend.warnings {
        line(&mut human, format!("warning: {w}"));
    }
    let unreadable_by_code = count_codes(s);
    if unreadable > 0 {
        line(&mut human, format!("unreadable registers by error: {unreadable_by_code:?} (recorded as such; they are not restored)"));
    }
    Ok(Outcome::new(
        EXIT_OK,
        json!({
            "command": "save", "ok": true, "file": shown(file), "backend": backend.device.kind(),
            "allowlist": backend.allowlist_origin, "cpus": s.cpus.len(), "cpu_list": format_cpu_list(&s.cpus),
            "msrs": s.allowlist.len(), "registers": s.values.len(), "unreadable": unreadable,
            "unreadable_by_error": unreadable_by_code, "elapsed_ms": ms(elapsed), "read_ms": ms(read_time),
            "warnings": backend.warnings,
        }),
        human,
    ))
}

fn count_codes(s: &Snapshot) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for v in &s.values {
        if let Err(e) = v {
            *m.entry(e.code()).or_insert(0) += 1;
        }
    }
    m
}

/// Load a save file and check that it belongs to this node, before any register is touched.
fn load_for_node(ctx: &Context, file: &Path, allow_foreign_host: bool) -> Result<SaveFile> {
    let save = SaveFile::load(file)?;
    if !allow_foreign_host {
        save.check_host(file, &hostname())?;
    }
    let cpu = ctx.node.cpu_identity()?;
    anyhow::ensure!(
        save.meta.cpu == cpu,
        "save file {} was taken on a {}, this node is a {}; refusing to restore another CPU model's registers. Nothing was written to any register",
        shown(file),
        save.meta.cpu,
        cpu
    );
    Ok(save)
}

fn label(cpu: CpuId, msr: Option<msr_backend::MsrAddr>, name: &Option<String>) -> String {
    match (msr, name) {
        (Some(m), Some(n)) => format!("CPU {cpu} MSR {m} {n}"),
        (Some(m), None) => format!("CPU {cpu} MSR {m}"),
        (None, _) => format!("CPU {cpu}"),
    }
}

fn failure_lines(out: &mut String, failures: &[RegisterFailure]) {
    const SHOWN: usize = 50;
    for f in failures.iter().take(SHOWN) {
        line(
            out,
            format!(
                "  FAILED {:?} {}: {}",
                f.stage,
                label(f.cpu, f.msr, &f.name),
                f.error
            ),
        );
    }
    if failures.len() > SHOWN {
        line(
            out,
            format!("  ... and {} more (see --json)", failures.len() - SHOWN),
        );
    }
}

fn mask_change_lines(out: &mut String, changes: &[MaskChange]) {
    if changes.is_empty() {
        return;
    }
    line(out, format!("note: the allowlist in effect differs from the saved one for {} MSRs; only bits writable under both are used:", changes.len()));
    for c in changes.iter().take(20) {
        match c.current_mask {
            Some(m) => line(
                out,
                format!(
                    "  MSR {} saved mask {} now {} -> using {}",
                    c.msr, c.saved_mask, m, c.effective_mask
                ),
            ),
            None => line(
                out,
                format!(
                    "  MSR {} (saved mask {}) is not allowlisted now: left alone",
                    c.msr, c.saved_mask
                ),
            ),
        }
    }
}

pub fn restore(
    ctx: &Context,
    file: &Path,
    dry_run: bool,
    allow_foreign_host: bool,
) -> Result<Outcome> {
    let start = Instant::now();
    let save = load_for_node(ctx, file, allow_foreign_host)?;
    let backend = ctx.open()?;
    let report = restore::restore(
        backend.device.as_ref(),
        &save.snapshot,
        &backend.allowlist,
        &backend.online,
        dry_run,
    );
    let elapsed = start.elapsed();
    let report: RestoreReport = match report {
        Ok(r) => r,
        Err(e) => {
            // The device failed as a whole part-way: some registers may have been written.
            let msg = format!("restore from {} stopped: {e}", shown(file));
            return Ok(Outcome::new(
                EXIT_FAILED,
                json!({"command": "restore", "ok": false, "file": shown(file), "error": msg}),
                format!("msrsave restore: FAILED: {msg}\n"),
            ));
        }
    };
    let ok = report.ok();
    let mut human = String::new();
    let verb = if dry_run { "would write" } else { "wrote" };
    line(
        &mut human,
        format!(
            "restore from {} ({} CPUs, backend {}): {verb} {} registers, {} verified, {} already right, {} unreadable at save; {:.1} ms",
            shown(file),
            save.snapshot.cpus.len(),
            backend.device.kind(),
            report.written,
            report.verified,
            report.unchanged,
            report.unreadable_at_save,
            ms(elapsed)
        ),
    );
    for w in report.writes.iter().take(if dry_run { 200 } else { 20 }) {
        line(
            &mut human,
            format!(
                "  {}: {} -> {} (mask {})",
                label(w.cpu, Some(w.msr), &w.name),
                w.before,
                w.after,
                w.mask
            ),
        );
    }
    if report.writes.len() > 20 && !dry_run {
        line(
            &mut human,
            format!("  ... and {} more (see --json)", report.writes.len() - 20),
        );
    }
    mask_change_lines(&mut human, &report.mask_changes);
    if !report.new_cpus.is_empty() {
        line(
            &mut human,
            format!(
                "note: CPUs {} are online but not in the save file: left alone",
                format_cpu_list(&report.new_cpus)
            ),
        );
    }
    for w in &backend.warnings {
        line(&mut human, format!("warning: {w}"));
    }
    if !ok {
        line(
            &mut human,
            format!(
                "{} register(s) or CPU(s) were NOT restored:",
                report.failures.len()
            ),
        );
        failure_lines(&mut human, &report.failures);
    }
    let mut j = serde_json::to_value(&report)?;
    if let Some(o) = j.as_object_mut() {
        o.insert("command".into(), json!("restore"));
        o.insert("ok".into(), json!(ok));
        o.insert("file".into(), json!(shown(file)));
        o.insert("backend".into(), json!(backend.device.kind()));
        o.insert("elapsed_ms".into(), json!(ms(elapsed)));
    }
    Ok(Outcome::new(
        if ok { EXIT_OK } else { EXIT_FAILED },
        j,
        human,
    ))
}

/// The check report as JSON and text; shared with `job end`.
pub fn check_outcome(
    file: &Path,
    report: &CheckReport,
    elapsed_ms: f64,
) -> Result<(serde_json::Value, String)> {
    let clean = report.clean();
    let mut human = String::new();
    line(&mut human, report.summary());
    const SHOWN: usize = 50;
    for d in report.drift.iter().take(SHOWN) {
        line(
            &mut human,
            format!(
                "  DRIFT {}: expected {} actual {} changed bits {}",
                label(d.cpu, Some(d.msr), &d.name),
                d.expected,
                d.actual,
                d.changed_bits
            ),
        );
    }
    if report.drift.len() > SHOWN {
        line(
            &mut human,
            format!("  ... and {} more (see --json)", report.drift.len() - SHOWN),
        );
    }
    failure_lines(&mut human, &report.failures);
    mask_change_lines(&mut human, &report.mask_changes);
    let mut j = serde_json::to_value(report)?;
    if let Some(o) = j.as_object_mut() {
        o.insert("command".into(), json!("check"));
        o.insert("ok".into(), json!(clean));
        o.insert("clean".into(), json!(clean));
        o.insert("drifted".into(), json!(report.drift.len()));
        o.insert("summary".into(), json!(report.summary()));
        o.insert("file".into(), json!(shown(file)));
        o.insert("elapsed_ms".into(), json!(elapsed_ms));
    }
    Ok((j, human))
}

pub fn check(
    ctx: &Context,
    file: &Path,
    all_bits: bool,
    prometheus: Option<&Path>,
    allow_foreign_host: bool,
) -> Result<Outcome> {
    let start = Instant::now();
    let save = load_for_node(ctx, file, allow_foreign_host)?;
    let backend = ctx.open()?;
    let bits = if all_bits {
        DriftBits::All
    } else {
        DriftBits::Writable
    };
    let report = restore::check(
        backend.device.as_ref(),
        &save.snapshot,
        &backend.allowlist,
        &backend.online,
        bits,
    )?;
    let (j, human) = check_outcome(file, &report, ms(start.elapsed()))?;
    if let Some(p) = prometheus {
        write_prometheus(p, file, &report)?;
    }
    Ok(Outcome::new(
        if report.clean() { EXIT_OK } else { EXIT_FAILED },
        j,
        human,
    ))
}

/// node_exporter textfile-collector metrics for one check.
fn write_prometheus(path: &Path, snapshot: &Path, report: &CheckReport) -> Result<()> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0);
    let mut cpus: Vec<CpuId> = report.drift.iter().map(|d| d.cpu).collect();
    cpus.sort_unstable();
    cpus.dedup();
    let snap = snapshot
        .display()
        .to_string()
        .replace('\\', "\\\\")
        .replace('"', "\\\"");
    let metrics: [(&str, &str, f64); 6] = [
        (
            "msr_restore_drift_registers",
            "Registers whose compared bits differ from the snapshot.",
            report.drift.len() as f64,
        ),
        (
            "msr_restore_drift_cpus",
            "CPUs with at least one drifted register.",
            cpus.len() as f64,
        ),
        (
            "msr_restore_check_failures",
            "Registers or CPUs that could not be checked.",
            report.failures.len() as f64,
        ),
        (
            "msr_restore_check_registers",
            "Registers compared.",
            report.compared as f64,
        ),
        (
            "msr_restore_check_clean",
            "1 if the last check found no drift and no failure.",
            if report.clean() { 1.0 } else { 0.0 },
        ),
        (
            "msr_restore_check_timestamp_seconds",
            "Unix time of the last check.",
            now,
        ),
    ];
    let mut text = String::new();
    for (name, help, value) in metrics {
        text.push_str(&format!(
            "# HELP {name} {help}\n# TYPE {name} gauge\n{name}{{snapshot=\"{snap}\"}} {value}\n"
        ));
    }
    write_atomically(path, text.as_bytes(), PROMETHEUS_FILE_MODE)?;
    Ok(())
}
