//! `save`, `restore` and `check`: the commands that touch a node's registers, each one whole
//! operation of [`msr_backend::operations`].

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

use anyhow::{Context as _, Result};
use msr_backend::device::BackendKind;
use msr_backend::finding::Finding;
use msr_backend::fsio::write_atomically;
use msr_backend::metrics::{self, label};
use msr_backend::msrs::models::ModelId;
use msr_backend::msrs::scope::Scope;
use msr_backend::operations::{self, Fit};
use msr_backend::plan::{DriftBits, MaskChange};
use msr_backend::policy::check::{check_node, hide_host_bits, PolicyCheck};
use msr_backend::restore::{CheckReport, MsrChange, RestoreReport, WriteRecord};
use msr_backend::savefile::{LockState, Origin};
use msr_backend::types::format_cpu_list;
use schemars::JsonSchema;
use serde::Serialize;

use super::{shown, Context};
use crate::output::{line, ms, ExitStatus, Report};

/// Mode of the Prometheus textfile: node_exporter runs as its own user.
/// How many registers a readable report names before "and N more (see --format json)".
const SHOWN: usize = 50;

/// `save`: what was saved.
#[derive(Serialize, JsonSchema)]
pub struct SaveReport {
    pub file: String,
    pub backend: BackendKind,
    /// Where the allowlist came from.
    pub allowlist: String,
    pub cpus: usize,
    pub cpu_list: String,
    /// The topology the allowlist's shared registers are handled by (`2 packages, 224 CPUs`).
    pub topology: String,
    pub msrs: usize,
    pub registers: usize,
    pub unreadable: usize,
    /// Registers whose lock bit is set, per MSR (recorded in the save file too).
    pub locked: Vec<LockState>,
    /// Shared registers that CPUs of one domain read differently (restored CPU by CPU).
    pub inconsistent: Vec<Finding>,
    /// Unreadable registers by error code.
    pub unreadable_by_error: BTreeMap<String, usize>,
    /// The file's size.
    pub bytes: u64,
    pub elapsed_ms: f64,
    /// The register reads alone.
    pub read_ms: f64,
    pub warnings: Vec<String>,
    pub notes: Vec<String>,
}

impl Report for SaveReport {
    const COMMAND: &'static str = "save";
    fn status(&self) -> ExitStatus {
        ExitStatus::Ok
    }
    fn text(&self) -> String {
        let mut h = String::new();
        line(
            &mut h,
            format!(
                "saved {} MSRs x {} CPUs ({} registers, {} unreadable) to {} ({} bytes) in {:.1} ms (read {:.1} ms, backend {}, allowlist {})",
                self.msrs, self.cpus, self.registers, self.unreadable, self.file, self.bytes,
                self.elapsed_ms, self.read_ms, self.backend, self.allowlist
            ),
        );
        line(&mut h, format!("topology: {}", self.topology));
        for w in &self.warnings {
            line(&mut h, format!("warning: {w}"));
        }
        for n in &self.notes {
            line(&mut h, format!("note: {n}"));
        }
        for l in &self.locked {
            line(
                &mut h,
                format!(
                    "locked: MSR {} (bit {} set) on {} (CPUs {}): a restore will not write it",
                    l.msr,
                    l.lock_bit,
                    l.domains.join(", "),
                    l.cpus
                ),
            );
        }
        for f in self.inconsistent.iter().take(SHOWN) {
            line(&mut h, format!("INCONSISTENT {f}"));
        }
        if self.unreadable > 0 {
            line(
                &mut h,
                format!(
                    "unreadable registers by error: {:?} (recorded as such; they are not restored)",
                    self.unreadable_by_error
                ),
            );
        }
        h
    }
    fn shell(&self) -> Vec<(&'static str, String)> {
        vec![
            ("file", self.file.clone()),
            ("registers", self.registers.to_string()),
            ("unreadable", self.unreadable.to_string()),
        ]
    }
}

pub fn save(ctx: &Context, file: &Path, job_id: Option<&str>) -> Result<SaveReport> {
    let backend = ctx.open(false)?;
    let saved = operations::save(&backend, file, job_id).context("save failed")?;
    let s = &saved.file.snapshot;
    let mut by_error = BTreeMap::new();
    for (_, e) in s.errors() {
        *by_error.entry(e.code()).or_insert(0) += 1;
    }
    Ok(SaveReport {
        file: shown(file),
        backend: backend.device.kind(),
        allowlist: backend.allowlist_origin.clone(),
        cpus: s.cpus.len(),
        cpu_list: format_cpu_list(&s.cpus),
        topology: saved.topology.clone(),
        locked: saved.file.meta.locked.clone(),
        inconsistent: saved.inconsistent.clone(),
        msrs: s.allowlist.len(),
        registers: s.len(),
        unreadable: s.unreadable(),
        unreadable_by_error: by_error,
        bytes: std::fs::metadata(file).map(|m| m.len()).unwrap_or(0),
        elapsed_ms: ms(saved.elapsed),
        read_ms: ms(saved.read_elapsed),
        warnings: backend.warnings.clone(),
        notes: saved.stale_temps.iter().map(|t| t.to_string()).collect(),
    })
}

fn failure_lines(out: &mut String, failures: &[Finding], total: usize) {
    for f in failures.iter().take(SHOWN) {
        line(out, format!("  FAILED {f}"));
    }
    if total > SHOWN.min(failures.len()) {
        line(
            out,
            format!(
                "  ... and {} more (see --format json)",
                total - SHOWN.min(failures.len())
            ),
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

/// Locked and inconsistent registers: reported, not failures.
fn shared_lines(out: &mut String, locked: &[Finding], inconsistent: &[Finding]) {
    if !locked.is_empty() {
        line(out, format!("{} locked register(s) differ from the snapshot; their lock bit makes them ignore writes until reset, so they were not written (not drift a job made):", locked.len()));
        for f in locked.iter().take(SHOWN) {
            line(out, format!("  LOCKED {f}"));
        }
    }
    if !inconsistent.is_empty() {
        line(
            out,
            format!(
                "{} shared register(s) read differently on CPUs of one domain; handled CPU by CPU:",
                inconsistent.len()
            ),
        );
        for f in inconsistent.iter().take(SHOWN) {
            line(out, format!("  INCONSISTENT {f}"));
        }
    }
}

/// `CPU 3` for a per-CPU register, `package 1 (CPU 56)` for one written once for its package.
fn written_at(w: &WriteRecord) -> String {
    if w.scope == Scope::Thread {
        format!("CPU {}", w.cpu)
    } else {
        format!("{} (CPU {})", w.domain, w.cpu)
    }
}

fn change_lines(out: &mut String, what: &str, changes: &[MsrChange]) {
    if changes.is_empty() {
        return;
    }
    line(out, format!("{what}, per MSR:"));
    for c in changes.iter().take(SHOWN) {
        line(out, format!("  {c}"));
    }
}

/// `restore`: what was written, verified, and not.
#[derive(Serialize, JsonSchema)]
pub struct RestoreOutput {
    pub file: String,
    /// `llnl-raw` for LLNL msrsave's format, else `msr-restore`.
    pub format: String,
    pub backend: BackendKind,
    pub cpus: usize,
    pub elapsed_ms: f64,
    pub warnings: Vec<String>,
    #[serde(flatten)]
    pub report: RestoreReport,
}

impl Report for RestoreOutput {
    const COMMAND: &'static str = "restore";
    fn status(&self) -> ExitStatus {
        ExitStatus::ok_if(self.report.ok())
    }
    fn text(&self) -> String {
        let r = &self.report;
        let mut h = String::new();
        let verb = if r.dry_run { "would write" } else { "wrote" };
        line(
            &mut h,
            format!(
                "restore from {} ({} CPUs, backend {}{}): {verb} {} registers, {} verified, {} already right, {} unreadable at save; {:.1} ms",
                self.file,
                self.cpus,
                self.backend,
                if self.format == LLNL_FORMAT { ", LLNL msrsave's format" } else { "" },
                r.written,
                r.verified,
                r.unchanged,
                r.unreadable_at_save,
                self.elapsed_ms
            ),
        );
        let listed = if r.dry_run { 200 } else { 20 };
        for w in r.writes.iter().take(listed) {
            line(
                &mut h,
                format!(
                    "  {} MSR {}{}: {} -> {} (mask {})",
                    written_at(w),
                    w.msr,
                    w.name.as_ref().map(|n| format!(" {n}")).unwrap_or_default(),
                    w.before,
                    w.after,
                    w.mask
                ),
            );
        }
        if r.written > listed.min(r.writes.len()) {
            line(
                &mut h,
                format!(
                    "  ... and {} more (see --format json)",
                    r.written - listed.min(r.writes.len())
                ),
            );
        }
        change_lines(&mut h, "found changed before the restore", &r.changed);
        shared_lines(&mut h, &r.locked, &r.inconsistent);
        mask_change_lines(&mut h, &r.mask_changes);
        if !r.new_cpus.is_empty() {
            line(
                &mut h,
                format!(
                    "note: CPUs {} are online but not in the save file: left alone",
                    format_cpu_list(&r.new_cpus)
                ),
            );
        }
        for w in &self.warnings {
            line(&mut h, format!("warning: {w}"));
        }
        if !r.ok() {
            line(
                &mut h,
                format!("{} register(s) or CPU(s) were NOT restored:", r.failed),
            );
            failure_lines(&mut h, &r.failures, r.failed);
        }
        h
    }
    fn shell(&self) -> Vec<(&'static str, String)> {
        vec![
            ("written", self.report.written.to_string()),
            ("verified", self.report.verified.to_string()),
            ("failed", self.report.failed.to_string()),
            ("locked", self.report.locked.len().to_string()),
        ]
    }
}

/// What `restore` reports as the format of an LLNL msrsave file.
pub const LLNL_FORMAT: &str = "llnl-raw";

pub fn restore(
    ctx: &Context,
    file: &Path,
    dry_run: bool,
    allow_foreign_host: bool,
) -> Result<RestoreOutput> {
    let start = Instant::now();
    let backend = ctx.open(!dry_run)?;
    let saved =
        operations::load_for_node(file, Origin::Named, &backend, Fit { allow_foreign_host })?;
    let report = operations::restore(&backend, &saved, dry_run).with_context(|| {
        format!(
            "restore from {} stopped; some registers may have been written",
            shown(file)
        )
    })?;
    Ok(RestoreOutput {
        file: shown(file),
        format: if saved.meta.is_none() {
            LLNL_FORMAT
        } else {
            "msr-restore"
        }
        .to_string(),
        backend: backend.device.kind(),
        cpus: saved.snapshot.cpus.len(),
        elapsed_ms: ms(start.elapsed()),
        warnings: backend.warnings.clone(),
        report,
    })
}

/// `check`: how the node compares with a snapshot or baseline.
#[derive(Serialize, JsonSchema)]
pub struct CheckOutput {
    pub file: String,
    /// True when nothing drifted and nothing failed.
    pub clean: bool,
    /// One line fit for a log or a drain reason.
    pub summary: String,
    pub elapsed_ms: f64,
    /// The site policy's checks (static and deny fields; host fields left out of the drift
    /// check), when a policy is in effect.
    pub policy: Option<PolicyCheck>,
    #[serde(flatten)]
    pub report: CheckReport,
}

impl Report for CheckOutput {
    const COMMAND: &'static str = "check";
    fn status(&self) -> ExitStatus {
        ExitStatus::ok_if(self.clean)
    }
    fn text(&self) -> String {
        let r = &self.report;
        let mut h = String::new();
        line(&mut h, &self.summary);
        for d in r.drift.iter().take(SHOWN) {
            line(&mut h, format!("  DRIFT {d}"));
        }
        if r.drifted > SHOWN.min(r.drift.len()) {
            line(
                &mut h,
                format!(
                    "  ... and {} more (see --format json)",
                    r.drifted - SHOWN.min(r.drift.len())
                ),
            );
        }
        if r.drifted > SHOWN {
            change_lines(&mut h, "drift", &r.changed);
        }
        failure_lines(&mut h, &r.failures, r.failed);
        shared_lines(&mut h, &r.locked, &r.inconsistent);
        mask_change_lines(&mut h, &r.mask_changes);
        if let Some(p) = &self.policy {
            for v in p.violations.iter().take(SHOWN) {
                line(&mut h, format!("  POLICY {}", v.message));
            }
            if !p.host_fields.is_empty() {
                line(
                    &mut h,
                    format!(
                        "note: host fields, never drift: {} (policy {})",
                        p.host_fields.join(", "),
                        p.policy
                    ),
                );
            }
        }
        h
    }
    fn shell(&self) -> Vec<(&'static str, String)> {
        vec![
            ("drifted", self.report.drifted.to_string()),
            ("failed", self.report.failed.to_string()),
            (
                "policy_violations",
                self.policy
                    .as_ref()
                    .map_or(0, |p| p.violations.len())
                    .to_string(),
            ),
            ("locked", self.report.locked.len().to_string()),
            ("summary", self.summary.clone()),
        ]
    }
}

pub fn check(
    ctx: &Context,
    file: &Path,
    all_bits: bool,
    prometheus: Option<&Path>,
    allow_foreign_host: bool,
) -> Result<CheckOutput> {
    let start = Instant::now();
    let policy = ctx.policy(None)?;
    let mut backend = ctx.open(false)?;
    let mut saved =
        operations::load_for_node(file, Origin::Named, &backend, Fit { allow_foreign_host })?;
    let bits = if all_bits {
        DriftBits::All
    } else {
        DriftBits::Writable
    };
    // The policy: static and deny fields on every check; host fields are never drift (with
    // --all-bits every bit is compared, as asked).
    let policy_check = match &policy {
        None => None,
        Some(p) => {
            let model = ModelId::from(&backend.node.cpu_identity()?);
            let mut pc = check_node(
                p,
                model,
                backend.device.as_ref(),
                &backend.allowlist,
                &backend.online,
            )
            .context("cannot check the site policy's fields")?;
            if all_bits {
                pc.host_fields.clear();
            } else {
                pc.host_fields = hide_host_bits(p, model, &mut backend.allowlist, &mut saved);
            }
            Some(pc)
        }
    };
    let report = operations::check(&backend, &saved, bits)?;
    let policy_clean = policy_check.as_ref().is_none_or(|p| p.clean());
    let clean = report.clean() && policy_clean;
    let summary = match &policy_check {
        Some(p) if !p.clean() => {
            if report.clean() {
                format!("MSR check: {}", p.summary())
            } else {
                format!("{}; {}", report.summary(), p.summary())
            }
        }
        _ => report.summary(),
    };
    if let Some(p) = prometheus {
        write_prometheus(p, file, &report, clean, policy_check.as_ref())?;
    }
    Ok(CheckOutput {
        file: shown(file),
        clean,
        summary,
        elapsed_ms: ms(start.elapsed()),
        policy: policy_check,
        report,
    })
}

/// node_exporter textfile-collector metrics for one check.
fn write_prometheus(
    path: &Path,
    snapshot: &Path,
    report: &CheckReport,
    clean: bool,
    policy: Option<&PolicyCheck>,
) -> Result<()> {
    let now = metrics::unix_now();
    let snap = label(&snapshot.display().to_string());
    let metrics: [(&str, &str, f64); 9] = [
        (
            "msr_restore_drift_registers",
            "Registers whose compared bits differ from the snapshot (a register a core, die or package shares counts once for it).",
            report.drifted as f64,
        ),
        (
            "msr_restore_locked_registers",
            "Registers whose lock bit is set and whose locked bits differ from the snapshot (not drift: they ignore writes until reset).",
            report.locked.len() as f64,
        ),
        (
            "msr_restore_inconsistent_registers",
            "Shared registers that CPUs of one core, die or package read differently.",
            report.inconsistent.len() as f64,
        ),
        (
            "msr_restore_drift_cpus",
            "CPUs with at least one drifted register.",
            report.drifted_cpus as f64,
        ),
        (
            "msr_restore_check_failures",
            "Registers or CPUs that could not be checked.",
            report.failed as f64,
        ),
        (
            "msr_restore_check_registers",
            "Registers compared.",
            report.compared as f64,
        ),
        (
            "msr_restore_check_clean",
            "1 if the last check found no drift, no failure and no policy violation.",
            if clean { 1.0 } else { 0.0 },
        ),
        (
            "msr_restore_policy_violations",
            "Fields that break the site policy (static value, deny writable), 0 without a policy.",
            policy.map_or(0.0, |p| p.violations.len() as f64),
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
    // Per MSR: on how many CPUs it drifts, and on how many of its domains (CPUs, cores, dies or
    // packages). A family only when it has samples (a clean node has none, and a family
    // without samples is refused by some parsers).
    if !report.changed.is_empty() {
        let name = "msr_restore_drift_msr_cpus";
        text.push_str(&format!(
            "# HELP {name} CPUs on which an MSR differs from the snapshot.\n# TYPE {name} gauge\n"
        ));
        for c in &report.changed {
            text.push_str(&format!(
                "{name}{{snapshot=\"{snap}\",msr=\"{}\",msr_name=\"{}\"}} {}\n",
                c.msr,
                label(c.name.as_deref().unwrap_or("")),
                c.cpus
            ));
        }
        let name = "msr_restore_drift_msr_domains";
        text.push_str(&format!(
            "# HELP {name} Domains (CPUs, cores, dies or packages, as scope says) on which an MSR differs from the snapshot.\n# TYPE {name} gauge\n"
        ));
        for c in &report.changed {
            text.push_str(&format!(
                "{name}{{snapshot=\"{snap}\",msr=\"{}\",msr_name=\"{}\",scope=\"{}\"}} {}\n",
                c.msr,
                label(c.name.as_deref().unwrap_or("")),
                c.scope,
                c.domains
            ));
        }
    }
    write_atomically(path, text.as_bytes(), metrics::FILE_MODE)?;
    Ok(())
}
