//! Restore and drift check: read the node now, let [`crate::plan`] decide, write, read back and
//! verify. Every failure (a CPU gone offline, a register that cannot be read, written or
//! verified) is collected into the report and the rest goes on.

use std::sync::Arc;

use serde::Serialize;

use crate::allowlist::{Allowlist, AllowlistEntry};
use crate::device::{self, MsrDevice, MsrOp, OpError};
use crate::error::Result;
use crate::names::msr_name;
use crate::plan::{self, Drift, DriftBits, MaskChange, PlannedWrite, Unplanned};
use crate::snapshot::Snapshot;
use crate::types::{CpuId, Hex64, MsrAddr};

/// Where in a restore or check a register failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    /// The CPU is no longer online.
    Offline,
    /// Reading the register's current value failed.
    Read,
    /// Writing the saved bits failed.
    Write,
    /// The register did not read back what was written.
    Verify,
}

/// One register (or one whole CPU, for [`Stage::Offline`]) that failed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RegisterFailure {
    pub cpu: CpuId,
    pub msr: Option<MsrAddr>,
    pub name: Option<String>,
    pub stage: Stage,
    /// errno name or our refusal (`EIO`, `ENXIO`, `EPERM`, `OUTSIDE_MASK`, `MISMATCH`, ...).
    pub code: String,
    pub error: String,
}

impl RegisterFailure {
    fn op(cpu: CpuId, addr: MsrAddr, name: Option<String>, stage: Stage, e: OpError) -> Self {
        RegisterFailure {
            cpu,
            msr: Some(addr),
            name,
            stage,
            code: e.code(),
            error: e.to_string(),
        }
    }

    fn offline(cpu: CpuId) -> Self {
        RegisterFailure {
            cpu,
            msr: None,
            name: None,
            stage: Stage::Offline,
            code: "OFFLINE".to_string(),
            error: format!(
                "CPU {cpu} is in the save file but not online now; its registers were skipped"
            ),
        }
    }
}

/// A register a restore wrote (or, with dry run, would write).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct WriteRecord {
    pub cpu: CpuId,
    pub msr: MsrAddr,
    pub name: Option<String>,
    pub before: Hex64,
    pub after: Hex64,
    pub mask: Hex64,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct RestoreReport {
    pub dry_run: bool,
    /// Registers written (or to be written, with dry run).
    pub written: usize,
    /// Registers whose writable bits already held the saved value.
    pub unchanged: usize,
    /// Written registers that read back the saved bits.
    pub verified: usize,
    /// Registers that could not be read when the snapshot was taken (nothing to restore).
    pub unreadable_at_save: usize,
    pub failures: Vec<RegisterFailure>,
    pub offline_cpus: Vec<CpuId>,
    /// CPUs online now that the save file does not cover (left alone).
    pub new_cpus: Vec<CpuId>,
    pub mask_changes: Vec<MaskChange>,
    pub writes: Vec<WriteRecord>,
}

impl RestoreReport {
    pub fn ok(&self) -> bool {
        self.failures.is_empty()
    }
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct CheckReport {
    pub compared: usize,
    pub all_bits: bool,
    pub drift: Vec<Drift>,
    pub failures: Vec<RegisterFailure>,
    pub offline_cpus: Vec<CpuId>,
    pub new_cpus: Vec<CpuId>,
    pub mask_changes: Vec<MaskChange>,
}

impl CheckReport {
    pub fn clean(&self) -> bool {
        self.drift.is_empty() && self.failures.is_empty()
    }

    /// One line fit for a health checker's log or a drain reason.
    pub fn summary(&self) -> String {
        if self.drift.is_empty() && self.failures.is_empty() {
            return format!(
                "MSR check clean: {} registers match the snapshot",
                self.compared
            );
        }
        let mut parts = Vec::new();
        if !self.drift.is_empty() {
            let mut cpus: Vec<CpuId> = self.drift.iter().map(|d| d.cpu).collect();
            cpus.dedup();
            let mut regs: Vec<String> = Vec::new();
            for d in &self.drift {
                let label = match &d.name {
                    Some(n) => format!("{} {n}", d.msr),
                    None => d.msr.to_string(),
                };
                if !regs.contains(&label) {
                    regs.push(label);
                }
            }
            const SHOWN: usize = 4;
            let more = regs.len().saturating_sub(SHOWN);
            regs.truncate(SHOWN);
            let mut list = regs.join(", ");
            if more > 0 {
                list.push_str(&format!(" and {more} more"));
            }
            parts.push(format!(
                "MSR drift: {} registers on {} CPUs differ from the snapshot ({list})",
                self.drift.len(),
                cpus.len()
            ));
        }
        if !self.failures.is_empty() {
            parts.push(format!(
                "{} registers or CPUs could not be checked",
                self.failures.len()
            ));
        }
        parts.join("; ")
    }
}

/// The saved MSRs that the allowlist in effect now still lists, with today's masks: what a
/// restore or check may touch. With `writable_only`, MSRs with no bit writable under both
/// allowlists are left out (nothing to restore, nothing a job could change).
fn comparable(
    saved: &Snapshot,
    current_allowlist: &Allowlist,
    writable_only: bool,
) -> Arc<Allowlist> {
    let entries: Vec<AllowlistEntry> = saved
        .entries()
        .iter()
        .filter_map(|e| {
            let mask = current_allowlist.mask(e.addr)?;
            (!writable_only || mask.intersect(e.mask).is_writable()).then(|| AllowlistEntry {
                addr: e.addr,
                mask,
                name: e
                    .name
                    .clone()
                    .or_else(|| current_allowlist.get(e.addr).and_then(|c| c.name.clone())),
            })
        })
        .collect();
    // A subset of a valid (duplicate-free) list is valid.
    Arc::new(
        Allowlist::from_entries(entries, current_allowlist.source())
            .expect("a subset of a valid allowlist has no duplicates"),
    )
}

/// Which saved CPUs are online (in save-file order), which are not, and which are new.
fn split_cpus(saved: &Snapshot, online: &[CpuId]) -> (Vec<CpuId>, Vec<CpuId>, Vec<CpuId>) {
    let present = saved
        .cpus
        .iter()
        .copied()
        .filter(|c| online.contains(c))
        .collect();
    let offline = saved
        .cpus
        .iter()
        .copied()
        .filter(|c| !online.contains(c))
        .collect();
    let new = online
        .iter()
        .copied()
        .filter(|c| !saved.cpus.contains(c))
        .collect();
    (present, offline, new)
}

fn name_of(entry: &AllowlistEntry) -> Option<String> {
    entry
        .name
        .clone()
        .or_else(|| msr_name(entry.addr).map(str::to_string))
}

fn read_failures(current: &Snapshot) -> Vec<RegisterFailure> {
    let mut out = Vec::new();
    for (ci, &cpu) in current.cpus.iter().enumerate() {
        for (ei, e) in current.entries().iter().enumerate() {
            if let Err(err) = current.value(ci, ei) {
                out.push(RegisterFailure::op(
                    cpu,
                    e.addr,
                    name_of(e),
                    Stage::Read,
                    err,
                ));
            }
        }
    }
    out
}

/// Put back the write-masked bits of `saved` on the CPUs of `online`.
pub fn restore(
    device: &dyn MsrDevice,
    saved: &Snapshot,
    current_allowlist: &Allowlist,
    online: &[CpuId],
    dry_run: bool,
) -> Result<RestoreReport> {
    let (cpus, offline, new_cpus) = split_cpus(saved, online);
    let list = comparable(saved, current_allowlist, true);
    let current = Snapshot::take(device, list, &cpus)?;
    let plan = plan::plan_restore(saved, &current);

    let mut report = RestoreReport {
        dry_run,
        unchanged: plan.unchanged,
        failures: offline
            .iter()
            .map(|&c| RegisterFailure::offline(c))
            .collect(),
        offline_cpus: offline,
        new_cpus,
        mask_changes: plan::mask_changes(saved, current_allowlist),
        ..Default::default()
    };
    for u in &plan.unplanned {
        match *u {
            Unplanned::UnreadableAtSave { .. } => report.unreadable_at_save += 1,
            Unplanned::UnreadableNow { cpu, addr, error } => {
                let name = current.allowlist.get(addr).and_then(name_of);
                report
                    .failures
                    .push(RegisterFailure::op(cpu, addr, name, Stage::Read, error));
            }
        }
    }
    let name = |w: &PlannedWrite| current.allowlist.get(w.addr).and_then(name_of);
    if dry_run {
        report.written = plan.writes.len();
        report.writes = plan
            .writes
            .iter()
            .map(|w| WriteRecord {
                cpu: w.cpu,
                msr: w.addr,
                name: name(w),
                before: Hex64(w.current),
                after: Hex64(w.new),
                mask: Hex64(w.mask.0),
            })
            .collect();
        return Ok(report);
    }

    let mut ops: Vec<MsrOp> = plan
        .writes
        .iter()
        .map(|w| MsrOp::write(w.cpu, w.addr, w.new, w.mask))
        .collect();
    device::execute(device, &mut ops)?;
    let mut done: Vec<&PlannedWrite> = Vec::with_capacity(plan.writes.len());
    for (w, op) in plan.writes.iter().zip(&ops) {
        match op.result {
            Some(Ok(_)) => done.push(w),
            Some(Err(e)) => {
                report
                    .failures
                    .push(RegisterFailure::op(w.cpu, w.addr, name(w), Stage::Write, e))
            }
            None => report.failures.push(RegisterFailure::op(
                w.cpu,
                w.addr,
                name(w),
                Stage::Write,
                OpError::Errno(nix::errno::Errno::EIO),
            )),
        }
    }
    report.written = done.len();

    // Read back every register written and check its writable bits.
    let mut reads: Vec<MsrOp> = done.iter().map(|w| MsrOp::read(w.cpu, w.addr)).collect();
    device::execute(device, &mut reads)?;
    for (w, op) in done.iter().zip(&reads) {
        match op.result {
            Some(Ok(v)) if v & w.mask.0 == w.saved & w.mask.0 => {
                report.verified += 1;
                report.writes.push(WriteRecord {
                    cpu: w.cpu,
                    msr: w.addr,
                    name: name(w),
                    before: Hex64(w.current),
                    after: Hex64(v),
                    mask: Hex64(w.mask.0),
                });
            }
            Some(Ok(v)) => report.failures.push(RegisterFailure {
                cpu: w.cpu,
                msr: Some(w.addr),
                name: name(w),
                stage: Stage::Verify,
                code: "MISMATCH".to_string(),
                error: format!(
                    "reads back {} after writing {}: writable bits {} differ",
                    Hex64(v),
                    Hex64(w.new),
                    Hex64((v ^ w.saved) & w.mask.0)
                ),
            }),
            Some(Err(e)) => report.failures.push(RegisterFailure::op(
                w.cpu,
                w.addr,
                name(w),
                Stage::Verify,
                e,
            )),
            None => {}
        }
    }
    Ok(report)
}

/// Compare the node now with `saved`.
pub fn check(
    device: &dyn MsrDevice,
    saved: &Snapshot,
    current_allowlist: &Allowlist,
    online: &[CpuId],
    bits: DriftBits,
) -> Result<CheckReport> {
    let (cpus, offline, new_cpus) = split_cpus(saved, online);
    let list = comparable(saved, current_allowlist, bits == DriftBits::Writable);
    let current = Snapshot::take(device, list, &cpus)?;
    let drift = plan::find_drift(saved, &current, bits);
    let mut failures: Vec<RegisterFailure> = offline
        .iter()
        .map(|&c| RegisterFailure::offline(c))
        .collect();
    // A register unreadable now but readable at save time is a failure; one unreadable both
    // times (an MSR this CPU lacks) is not news.
    for f in read_failures(&current) {
        let (Some(addr), Some(si)) = (f.msr, saved.cpu_index(f.cpu)) else {
            continue;
        };
        let se = saved.allowlist.index_of(addr);
        if se.is_some_and(|se| saved.value(si, se).is_ok()) {
            failures.push(f);
        }
    }
    Ok(CheckReport {
        compared: current.values.iter().filter(|v| v.is_ok()).count(),
        all_bits: bits == DriftBits::All,
        drift,
        failures,
        offline_cpus: offline,
        new_cpus,
        mask_changes: plan::mask_changes(saved, current_allowlist),
    })
}
