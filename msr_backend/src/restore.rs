//! Restore and drift check: read the node now, let [`crate::plan`] decide for each register,
//! write what differs, read back what was written and verify. Every failure (a CPU gone offline,
//! a register that cannot be read, written or verified) becomes a [`Finding`] and the rest goes on.
//!
//! One read pass: the registers are read once, and that read tells both what to write and what
//! the jobs had changed ([`MsrChange`], per MSR); only the registers written are read again, to
//! verify them. The work goes in groups: one CPU at a time on a worker pinned to it for the
//! per-CPU devices (all CPUs in parallel), as many CPUs as fill one ioctl for the batch device.
//! Memory follows the snapshot, not the number of writes: per-register lists in a report are
//! cut at [`LISTED`] entries (their counts stay complete) and everything else is kept per MSR.

use std::sync::Arc;

use rayon::prelude::*;
use serde::Serialize;

use crate::allowlist::{Allowlist, AllowlistEntry};
use crate::device::{self, DeviceError, MsrDevice, MsrOp, OpError, Parallelism, BATCH_CHUNK_OPS};
use crate::finding::{Finding, Problem, Stage};
use crate::msrs::msr_name;
use crate::plan::{self, drift_bits, plan_register, DriftBits, MaskChange, RegisterAction};
use crate::snapshot::Snapshot;
use crate::types::{format_cpu_list, CpuId, Hex64, MsrAddr, WriteMask};

/// How many registers a report lists one by one (findings, writes); the counts beside them are
/// always complete.
pub const LISTED: usize = 1000;

/// A register a restore wrote (or, with dry run, would write).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, schemars::JsonSchema)]
pub struct WriteRecord {
    pub cpu: CpuId,
    pub msr: MsrAddr,
    pub name: Option<String>,
    pub before: Hex64,
    pub after: Hex64,
    pub mask: Hex64,
}

/// One MSR whose compared bits differed from the snapshot on some CPUs: before a restore, what
/// the jobs on the node changed; in a check, the drift.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, schemars::JsonSchema)]
pub struct MsrChange {
    pub msr: MsrAddr,
    pub name: Option<String>,
    /// How many CPUs, and which (kernel list syntax).
    pub cpus: usize,
    pub cpu_list: String,
    /// Every bit that differed on any of them.
    pub bits: Hex64,
}

impl std::fmt::Display for MsrChange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MSR {}", self.msr)?;
        if let Some(n) = &self.name {
            write!(f, " {n}")?;
        }
        write!(
            f,
            " on {} CPU{} ({}), bits {}",
            self.cpus,
            if self.cpus == 1 { "" } else { "s" },
            self.cpu_list,
            self.bits
        )
    }
}

#[derive(Clone, Debug, Default, Serialize, schemars::JsonSchema)]
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
    /// How many registers or CPUs were not restored or not verified; the first 1000 (LISTED)
    /// are in `failures`.
    pub failed: usize,
    pub failures: Vec<Finding>,
    pub offline_cpus: Vec<CpuId>,
    /// CPUs online now that the save file does not cover (left alone).
    pub new_cpus: Vec<CpuId>,
    pub mask_changes: Vec<MaskChange>,
    /// The first 1000 (LISTED) registers written.
    pub writes: Vec<WriteRecord>,
    /// What differed from the snapshot before the restore, per MSR.
    pub changed: Vec<MsrChange>,
}

impl RestoreReport {
    pub fn ok(&self) -> bool {
        self.failed == 0
    }

    /// The failures that leave a register known to differ from the snapshot (a write refused,
    /// a read-back that does not hold): drift after the restore.
    pub fn still_drifted(&self) -> impl Iterator<Item = &Finding> {
        self.failures.iter().filter(|f| {
            matches!(
                f.problem,
                Problem::Mismatch { .. }
                    | Problem::Failed {
                        stage: Stage::Write,
                        ..
                    }
            )
        })
    }
}

#[derive(Clone, Debug, Default, Serialize, schemars::JsonSchema)]
pub struct CheckReport {
    pub compared: usize,
    pub all_bits: bool,
    /// How many registers drifted (`drifted_cpus`: on how many CPUs); the first 1000 (LISTED)
    /// are in `drift`.
    pub drifted: usize,
    pub drifted_cpus: usize,
    pub drift: Vec<Finding>,
    pub failed: usize,
    pub failures: Vec<Finding>,
    pub offline_cpus: Vec<CpuId>,
    pub new_cpus: Vec<CpuId>,
    pub mask_changes: Vec<MaskChange>,
    /// The drift per MSR.
    pub changed: Vec<MsrChange>,
}

impl CheckReport {
    pub fn clean(&self) -> bool {
        self.drifted == 0 && self.failed == 0
    }

    /// One line fit for a health checker's log or a drain reason.
    pub fn summary(&self) -> String {
        if self.clean() {
            return format!(
                "MSR check clean: {} registers match the snapshot",
                self.compared
            );
        }
        let mut parts = Vec::new();
        if self.drifted > 0 {
            parts.push(format!(
                "MSR drift: {} registers on {} CPUs differ from the snapshot ({})",
                self.drifted,
                self.drifted_cpus,
                name_msrs(&self.changed, 4)
            ));
        }
        if self.failed > 0 {
            parts.push(format!(
                "{} registers or CPUs could not be checked",
                self.failed
            ));
        }
        parts.join("; ")
    }
}

/// `0x00000199 IA32_PERF_CTL, 0x00000610 ... and N more`.
pub fn name_msrs(changes: &[MsrChange], shown: usize) -> String {
    let mut list: Vec<String> = changes
        .iter()
        .take(shown)
        .map(|c| match &c.name {
            Some(n) => format!("{} {n}", c.msr),
            None => c.msr.to_string(),
        })
        .collect();
    if changes.len() > shown {
        list.push(format!("and {} more", changes.len() - shown));
    }
    list.join(", ").replacen(", and", " and", 1)
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

/// Which saved CPUs are online (with their row in the snapshot), which are not, which are new.
fn split_cpus(saved: &Snapshot, online: &[CpuId]) -> (Vec<(CpuId, usize)>, Vec<CpuId>, Vec<CpuId>) {
    let is_online = |c: &CpuId| online.binary_search(c).is_ok();
    let present = saved
        .cpus
        .iter()
        .enumerate()
        .filter(|(_, c)| is_online(c))
        .map(|(i, &c)| (c, i))
        .collect();
    let offline = saved
        .cpus
        .iter()
        .copied()
        .filter(|c| !is_online(c))
        .collect();
    let new = online
        .iter()
        .copied()
        .filter(|c| saved.cpu_index(*c).is_none())
        .collect();
    (present, offline, new)
}

fn name_of(entry: &AllowlistEntry) -> Option<String> {
    entry
        .name
        .clone()
        .or_else(|| msr_name(entry.addr).map(str::to_string))
}

/// What to do with the registers read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Restore { dry_run: bool },
    Check { bits: DriftBits },
}

/// The registers an operation covers: the entries of `list` (current masks) on the present CPUs.
struct Work<'a> {
    saved: &'a Snapshot,
    list: Arc<Allowlist>,
    /// For each entry of `list`: its index in the saved allowlist.
    saved_entry: Vec<usize>,
    /// For each entry of `list`: the bits compared and restored.
    masks: Vec<WriteMask>,
    names: Vec<Option<String>>,
    mode: Mode,
}

/// What one group of CPUs gave, merged as groups finish.
#[derive(Default)]
struct Tally {
    compared: usize,
    written: usize,
    unchanged: usize,
    verified: usize,
    unreadable_at_save: usize,
    failed: usize,
    failures: Vec<Finding>,
    drifted: usize,
    drift: Vec<Finding>,
    writes: Vec<WriteRecord>,
    /// Per entry of the work list: the CPUs whose compared bits differed, and those bits.
    changed: Vec<(u64, Vec<CpuId>)>,
}

fn push_listed<T>(list: &mut Vec<T>, item: T) {
    if list.len() < LISTED {
        list.push(item);
    }
}

impl Tally {
    fn new(entries: usize) -> Tally {
        Tally {
            changed: vec![(0, Vec::new()); entries],
            ..Tally::default()
        }
    }

    fn fail(&mut self, f: Finding) {
        self.failed += 1;
        push_listed(&mut self.failures, f);
    }

    fn merge(mut self, other: Tally) -> Tally {
        self.compared += other.compared;
        self.written += other.written;
        self.unchanged += other.unchanged;
        self.verified += other.verified;
        self.unreadable_at_save += other.unreadable_at_save;
        self.failed += other.failed;
        self.drifted += other.drifted;
        for f in other.failures {
            push_listed(&mut self.failures, f);
        }
        for d in other.drift {
            push_listed(&mut self.drift, d);
        }
        for w in other.writes {
            push_listed(&mut self.writes, w);
        }
        if self.changed.is_empty() {
            self.changed = other.changed;
        } else {
            for (mine, theirs) in self.changed.iter_mut().zip(other.changed) {
                mine.0 |= theirs.0;
                mine.1.extend(theirs.1);
            }
        }
        self
    }

    /// The per-MSR changes, CPUs in order, and how many CPUs they touch in all.
    fn changes(&mut self, work: &Work) -> (Vec<MsrChange>, usize) {
        let mut out = Vec::new();
        let mut all: Vec<CpuId> = Vec::new();
        for (ei, (bits, cpus)) in self.changed.iter_mut().enumerate() {
            if cpus.is_empty() {
                continue;
            }
            cpus.sort_unstable();
            all.extend_from_slice(cpus);
            out.push(MsrChange {
                msr: work.list.entries()[ei].addr,
                name: work.names[ei].clone(),
                cpus: cpus.len(),
                cpu_list: format_cpu_list(cpus),
                bits: Hex64(*bits),
            });
        }
        all.sort_unstable();
        all.dedup();
        (out, all.len())
    }
}

impl Work<'_> {
    /// Read, decide, write and verify the registers of `group` (CPUs with their saved row).
    fn run_group(
        &self,
        device: &dyn MsrDevice,
        group: &[(CpuId, usize)],
    ) -> Result<Tally, DeviceError> {
        let n = self.list.len();
        let entries = self.list.entries();
        let mut tally = Tally::new(n);
        let mut reads: Vec<MsrOp> = Vec::with_capacity(group.len() * n);
        for &(cpu, _) in group {
            reads.extend(entries.iter().map(|e| MsrOp::read(cpu, e.addr)));
        }
        run(device, &mut reads)?;
        // Writes and what each one is for: (op index in `reads`, saved value).
        let mut writes: Vec<MsrOp> = Vec::new();
        let mut planned: Vec<(usize, u64)> = Vec::new();
        for (gi, &(cpu, si)) in group.iter().enumerate() {
            for ei in 0..n {
                let op = &reads[gi * n + ei];
                let current = op
                    .result
                    .unwrap_or(Err(OpError::Errno(nix::errno::Errno::EIO)));
                let saved = self.saved.value(si, self.saved_entry[ei]);
                let addr = entries[ei].addr;
                let mask = self.masks[ei];
                let name = || self.names[ei].clone();
                let changed = drift_bits(mask, saved, current);
                if changed != 0 {
                    let slot = &mut tally.changed[ei];
                    slot.0 |= changed;
                    slot.1.push(cpu);
                }
                match self.mode {
                    Mode::Check { .. } => {
                        match (saved, current) {
                            (Ok(s), Ok(c)) => {
                                tally.compared += 1;
                                if changed != 0 {
                                    tally.drifted += 1;
                                    push_listed(
                                        &mut tally.drift,
                                        Finding {
                                            cpu,
                                            msr: Some(addr),
                                            name: name(),
                                            problem: Problem::Drift {
                                                expected: s,
                                                actual: c,
                                                bits: changed,
                                            },
                                        },
                                    );
                                }
                            }
                            // Unreadable now but readable at save time is a failure; one
                            // unreadable both times (an MSR this CPU lacks) is not news.
                            (Ok(_), Err(e)) => {
                                tally.fail(Finding::failed(cpu, addr, name(), Stage::Read, e))
                            }
                            (Err(_), _) => {}
                        }
                    }
                    Mode::Restore { dry_run } => match plan_register(mask, saved, current) {
                        RegisterAction::Leave => tally.unchanged += 1,
                        RegisterAction::UnreadableAtSave(_) => tally.unreadable_at_save += 1,
                        RegisterAction::UnreadableNow(e) => {
                            tally.fail(Finding::failed(cpu, addr, name(), Stage::Read, e))
                        }
                        RegisterAction::Write { new } => {
                            let s = saved.unwrap_or_default();
                            if dry_run {
                                tally.written += 1;
                                push_listed(
                                    &mut tally.writes,
                                    WriteRecord {
                                        cpu,
                                        msr: addr,
                                        name: name(),
                                        before: Hex64(current.unwrap_or_default()),
                                        after: Hex64(new),
                                        mask: Hex64(mask.0),
                                    },
                                );
                            } else {
                                writes.push(MsrOp::write(cpu, addr, new, mask));
                                planned.push((gi * n + ei, s));
                            }
                        }
                    },
                }
            }
        }
        if writes.is_empty() {
            return Ok(tally);
        }
        run(device, &mut writes)?;
        let mut verify: Vec<MsrOp> = Vec::with_capacity(writes.len());
        let mut verify_of: Vec<usize> = Vec::with_capacity(writes.len());
        for (wi, w) in writes.iter().enumerate() {
            let ei = planned[wi].0 % n;
            match w.result {
                Some(Ok(_)) => {
                    verify.push(MsrOp::read(w.cpu, w.addr));
                    verify_of.push(wi);
                }
                other => {
                    let e = other
                        .and_then(Result::err)
                        .unwrap_or(OpError::Errno(nix::errno::Errno::EIO));
                    tally.fail(Finding::failed(
                        w.cpu,
                        w.addr,
                        self.names[ei].clone(),
                        Stage::Write,
                        e,
                    ));
                }
            }
        }
        tally.written += verify.len();
        run(device, &mut verify)?;
        for (v, &wi) in verify.iter().zip(&verify_of) {
            let (ri, saved) = planned[wi];
            let ei = ri % n;
            let mask = self.masks[ei];
            let wrote = match writes[wi].kind {
                device::OpKind::Write { value, .. } => value,
                device::OpKind::Read => 0,
            };
            let before = reads[ri].result.and_then(Result::ok).unwrap_or_default();
            let name = self.names[ei].clone();
            match v
                .result
                .unwrap_or(Err(OpError::Errno(nix::errno::Errno::EIO)))
            {
                Ok(read) if read & mask.0 == saved & mask.0 => {
                    tally.verified += 1;
                    push_listed(
                        &mut tally.writes,
                        WriteRecord {
                            cpu: v.cpu,
                            msr: v.addr,
                            name,
                            before: Hex64(before),
                            after: Hex64(read),
                            mask: Hex64(mask.0),
                        },
                    );
                }
                Ok(read) => tally.fail(Finding {
                    cpu: v.cpu,
                    msr: Some(v.addr),
                    name,
                    problem: Problem::Mismatch {
                        wrote,
                        read,
                        bits: (read ^ saved) & mask.0,
                    },
                }),
                Err(e) => tally.fail(Finding::failed(v.cpu, v.addr, name, Stage::Verify, e)),
            }
        }
        Ok(tally)
    }

    /// Every present CPU, in groups, merged.
    fn run_all(
        &self,
        device: &dyn MsrDevice,
        present: &[(CpuId, usize)],
    ) -> Result<Tally, DeviceError> {
        let n = self.list.len().max(1);
        if device.parallelism() == Parallelism::Batched {
            let per_group = (BATCH_CHUNK_OPS / n).max(1);
            let mut tally = Tally::new(self.list.len());
            for group in present.chunks(per_group) {
                tally = tally.merge(self.run_group(device, group)?);
            }
            return Ok(tally);
        }
        present
            .par_chunks(1)
            .map(|group| self.run_group(device, group))
            .try_fold(
                || Tally::new(self.list.len()),
                |acc, t| t.map(|t| acc.merge(t)),
            )
            .try_reduce(|| Tally::new(self.list.len()), |a, b| Ok(a.merge(b)))
    }
}

/// Run ops of one group: pinned to their CPU on per-CPU kernel nodes, chunked on the batch device.
fn run(device: &dyn MsrDevice, ops: &mut [MsrOp]) -> Result<(), DeviceError> {
    match device.parallelism() {
        Parallelism::Batched => device::execute(device, ops),
        _ => {
            for group in ops.chunk_by_mut(|a, b| a.cpu == b.cpu) {
                device::run_on_cpu(device, group)?;
            }
            Ok(())
        }
    }
}

fn work<'a>(saved: &'a Snapshot, current_allowlist: &Allowlist, mode: Mode) -> Work<'a> {
    let writable_only = !matches!(
        mode,
        Mode::Check {
            bits: DriftBits::All
        }
    );
    let list = comparable(saved, current_allowlist, writable_only);
    let saved_entry: Vec<usize> = list
        .entries()
        .iter()
        .map(|e| saved.allowlist.index_of(e.addr).unwrap_or(0))
        .collect();
    let masks = list
        .entries()
        .iter()
        .zip(&saved_entry)
        .map(|(e, &si)| match mode {
            Mode::Check {
                bits: DriftBits::All,
            } => WriteMask::ALL,
            _ => e.mask.intersect(saved.entries()[si].mask),
        })
        .collect();
    let names = list.entries().iter().map(name_of).collect();
    Work {
        saved,
        list,
        saved_entry,
        masks,
        names,
        mode,
    }
}

/// Put back the write-masked bits of `saved` on the CPUs of `online` that it covers, verify them,
/// and report what differed before (per MSR) and every register not restored.
pub fn restore(
    device: &dyn MsrDevice,
    saved: &Snapshot,
    current_allowlist: &Allowlist,
    online: &[CpuId],
    dry_run: bool,
) -> Result<RestoreReport, DeviceError> {
    let (present, offline, new_cpus) = split_cpus(saved, online);
    let w = work(saved, current_allowlist, Mode::Restore { dry_run });
    let mut t = w.run_all(device, &present)?;
    let (changed, _) = t.changes(&w);
    let mut failures: Vec<Finding> = offline.iter().map(|&c| Finding::offline(c)).collect();
    let failed = t.failed + failures.len();
    failures.extend(t.failures);
    failures.truncate(LISTED);
    Ok(RestoreReport {
        dry_run,
        written: t.written,
        unchanged: t.unchanged,
        verified: t.verified,
        unreadable_at_save: t.unreadable_at_save,
        failed,
        failures,
        offline_cpus: offline,
        new_cpus,
        mask_changes: plan::mask_changes(saved, current_allowlist),
        writes: t.writes,
        changed,
    })
}

/// Compare the node now with `saved`.
pub fn check(
    device: &dyn MsrDevice,
    saved: &Snapshot,
    current_allowlist: &Allowlist,
    online: &[CpuId],
    bits: DriftBits,
) -> Result<CheckReport, DeviceError> {
    let (present, offline, new_cpus) = split_cpus(saved, online);
    let w = work(saved, current_allowlist, Mode::Check { bits });
    let mut t = w.run_all(device, &present)?;
    let (changed, drifted_cpus) = t.changes(&w);
    let mut failures: Vec<Finding> = offline.iter().map(|&c| Finding::offline(c)).collect();
    let failed = t.failed + failures.len();
    failures.extend(t.failures);
    failures.truncate(LISTED);
    Ok(CheckReport {
        compared: t.compared,
        all_bits: bits == DriftBits::All,
        drifted: t.drifted,
        drifted_cpus,
        drift: t.drift,
        failed,
        failures,
        offline_cpus: offline,
        new_cpus,
        mask_changes: plan::mask_changes(saved, current_allowlist),
        changed,
    })
}
