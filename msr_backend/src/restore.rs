//! Restore and drift check: read the node now, let [`crate::plan`] decide for each register of
//! each domain, write what differs, read back what was written and verify. Every failure (a CPU
//! gone offline, a register that cannot be read, written or verified) becomes a [`Finding`] and
//! the rest goes on.
//!
//! Registers have a scope ([`crate::msrs::scope`]): a register a package (die, core) shares is
//! one register of that domain. Every CPU is still read, so that CPUs of one domain that
//! disagree are seen (and reported as `inconsistent`, then handled CPU by CPU); a domain whose
//! CPUs agree is written once, from its first CPU, verified on every CPU of it, and reported once
//! (`package 1 MSR 0x00000610 ...`). A difference in bits a set lock holds is reported as
//! `locked`, never written ([`crate::msrs::lock`]). Writes run in the order the rules of
//! [`crate::msrs::order`] ask.
//!
//! One read pass: the registers are read once (every CPU in parallel, pinned on per-CPU kernel
//! nodes; as many ops as fill one ioctl on the batch device), and that read tells both what to
//! write and what the jobs had changed ([`MsrChange`], per MSR); only the registers written are
//! read again, to verify them. Memory follows the snapshot, not the number of writes:
//! per-register lists in a report keep the first [`LISTED`] in (CPU, MSR) order (their counts
//! stay complete) and everything else is kept per MSR.

use std::sync::Arc;

use rayon::prelude::*;
use serde::Serialize;

use crate::allowlist::{Allowlist, AllowlistEntry};
use crate::device::{self, DeviceError, MsrDevice, MsrOp, OpError};
use crate::finding::{Finding, Problem, Stage};
use crate::msrs::order;
use crate::msrs::scope::Scope;
use crate::plan::{self, plan_domain_into, DomainPlan, DomainWrite, DriftBits, MaskChange, Member};
use crate::snapshot::Snapshot;
use crate::topology::{Layout, Where};
use crate::types::{format_cpu_list, CpuId, Hex64, MsrAddr, WriteMask};

/// How many registers a report lists one by one (findings, writes); the counts beside them are
/// always complete.
pub const LISTED: usize = 1000;

/// A register a restore wrote (or, with dry run, would write).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, schemars::JsonSchema)]
pub struct WriteRecord {
    /// The CPU written from.
    pub cpu: CpuId,
    /// The register's scope: a register a core, die or package shares is written once for it.
    pub scope: Scope,
    /// Where the register sits: `CPU 3`, `package 1`.
    pub domain: String,
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
    /// The scope of its domains (`thread`: one register per CPU).
    pub scope: Scope,
    /// How many domains (CPUs, cores, dies or packages) it differed on.
    pub domains: usize,
    /// The packages of those domains (kernel list syntax; empty for per-CPU registers).
    pub packages: String,
}

impl std::fmt::Display for MsrChange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MSR {}", self.msr)?;
        if let Some(n) = &self.name {
            write!(f, " {n}")?;
        }
        let cpus = format!("{} CPU{}", self.cpus, if self.cpus == 1 { "" } else { "s" });
        match self.scope {
            Scope::Thread => write!(f, " on {cpus} ({})", self.cpu_list)?,
            Scope::Package => write!(
                f,
                " on package{} {} ({cpus})",
                if self.domains == 1 { "" } else { "s" },
                self.packages
            )?,
            scope => write!(
                f,
                " on {} {scope}{} of package{} {} ({cpus})",
                self.domains,
                if self.domains == 1 { "" } else { "s" },
                if self.packages.contains(['-', ',']) {
                    "s"
                } else {
                    ""
                },
                self.packages
            )?,
        }
        write!(f, ", bits {}", self.bits)
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
    /// Registers whose lock bit is set and whose locked bits differ from the snapshot: not
    /// written (writes to them are ignored until reset), not failures.
    pub locked: Vec<Finding>,
    /// Shared registers that CPUs of one domain read differently: handled CPU by CPU.
    pub inconsistent: Vec<Finding>,
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
    /// Registers whose lock bit is set and whose locked bits differ from the snapshot: not
    /// drift a job made (writes to them are ignored until reset).
    pub locked: Vec<Finding>,
    /// Shared registers that CPUs of one domain read differently: compared CPU by CPU.
    pub inconsistent: Vec<Finding>,
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
        if !self.locked.is_empty() {
            parts.push(format!(
                "{} locked registers differ (not drift: they ignore writes until reset)",
                self.locked.len()
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
    entry.display_name().map(str::to_string)
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
    /// For each entry of `list`: the bits restored (writable under both allowlists).
    masks: Vec<WriteMask>,
    /// For each entry of `list`: the bits compared.
    drift_masks: Vec<WriteMask>,
    names: Vec<Option<String>>,
    mode: Mode,
    /// Writes per chunk ([`WRITE_CHUNK`]).
    chunk: usize,
}

/// Findings listed by a report: the first [`LISTED`] in (CPU, MSR) order, whatever order the
/// work finished in.
struct Listed<T> {
    heap: std::collections::BinaryHeap<Keyed<T>>,
}

type Key = (CpuId, usize);

struct Keyed<T>(Key, T);

impl<T> PartialEq for Keyed<T> {
    fn eq(&self, o: &Self) -> bool {
        self.0 == o.0
    }
}
impl<T> Eq for Keyed<T> {}
impl<T> PartialOrd for Keyed<T> {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl<T> Ord for Keyed<T> {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        self.0.cmp(&o.0)
    }
}

impl<T> Default for Listed<T> {
    fn default() -> Self {
        Listed {
            heap: std::collections::BinaryHeap::new(),
        }
    }
}

impl<T> Listed<T> {
    fn push(&mut self, key: Key, item: T) {
        if self.heap.len() < LISTED {
            self.heap.push(Keyed(key, item));
        } else if self.heap.peek().is_some_and(|top| key < top.0) {
            self.heap.pop();
            self.heap.push(Keyed(key, item));
        }
    }

    /// Whether an item with `key` would be kept (to skip building one that would not).
    fn keeps(&self, key: Key) -> bool {
        self.heap.len() < LISTED || self.heap.peek().is_some_and(|top| key < top.0)
    }

    fn merge(&mut self, other: Listed<T>) {
        for Keyed(k, v) in other.heap {
            self.push(k, v);
        }
    }

    fn into_vec(self) -> Vec<T> {
        self.heap
            .into_sorted_vec()
            .into_iter()
            .map(|k| k.1)
            .collect()
    }
}

/// One domain of a scope among the present CPUs: where it sits, its CPUs with their rows in the
/// saved snapshot and in the read pass, and its CPUs alone (shared by the writes to verify).
struct DomainRows {
    at: Where,
    rows: Vec<(CpuId, usize, usize)>,
    cpus: Arc<[CpuId]>,
}

type Domains = Vec<DomainRows>;

/// The domains of each scope among the present CPUs, and each work entry's scope and lock (the
/// model's tables looked up once per entry, not once per write), computed once per operation.
struct Splits {
    by_scope: std::collections::HashMap<Scope, Domains>,
    scope: Vec<Scope>,
    lock: Vec<Option<crate::msrs::lock::Lock>>,
}

impl Splits {
    /// The domains of work entry `ei`'s scope.
    fn of(&self, ei: usize) -> &Domains {
        &self.by_scope[&self.scope[ei]]
    }
}

/// What the registers gave, merged as the work finishes.
#[derive(Default)]
struct Tally {
    compared: usize,
    written: usize,
    unchanged: usize,
    verified: usize,
    unreadable_at_save: usize,
    failed: usize,
    failures: Listed<Finding>,
    drifted: usize,
    drift: Listed<Finding>,
    writes: Listed<WriteRecord>,
    locked: Listed<Finding>,
    inconsistent: Listed<Finding>,
    /// Per entry of the work list: the bits that differed, the CPUs and the domains.
    changed: Vec<(usize, Change)>,
    /// Writes planned, not yet run.
    pending: Vec<Pending>,
}

/// A set of CPUs, one bit each (CPU numbers are below [`crate::types::MAX_CPUS`]): what a job
/// changed is kept per MSR without a list entry per register.
#[derive(Default, Clone)]
struct CpuBits(Vec<u64>);

impl CpuBits {
    fn insert(&mut self, cpu: CpuId) {
        let (word, bit) = (cpu.0 as usize / 64, cpu.0 % 64);
        if self.0.len() <= word {
            self.0.resize(word + 1, 0);
        }
        self.0[word] |= 1 << bit;
    }

    fn union(&mut self, other: &CpuBits) {
        if self.0.len() < other.0.len() {
            self.0.resize(other.0.len(), 0);
        }
        for (a, b) in self.0.iter_mut().zip(&other.0) {
            *a |= b;
        }
    }

    fn len(&self) -> usize {
        self.0.iter().map(|w| w.count_ones() as usize).sum()
    }

    fn is_empty(&self) -> bool {
        self.0.iter().all(|&w| w == 0)
    }

    /// The CPUs, in order.
    fn to_vec(&self) -> Vec<CpuId> {
        let mut out = Vec::with_capacity(self.len());
        for (i, &w) in self.0.iter().enumerate() {
            let mut w = w;
            while w != 0 {
                let bit = w.trailing_zeros();
                out.push(CpuId(i as u32 * 64 + bit));
                w &= w - 1;
            }
        }
        out
    }
}

#[derive(Default)]
struct Change {
    bits: u64,
    cpus: CpuBits,
    /// How many domains, of which scope, in which packages (for shared registers).
    domains: usize,
    scope: Option<Scope>,
    packages: std::collections::BTreeSet<u32>,
}

/// A write planned for one domain, kept small: a restore of every writable register of a large
/// node plans millions. The write itself (value, mask, what to verify where) is planned again
/// from the same snapshot and read pass when it runs ([`Work::write_of`]), a chunk at a time.
#[derive(Clone, Copy)]
struct Pending {
    /// The entry of the work list (an allowlist has at most 32,768).
    entry: u16,
    /// The domain among its scope's domains ([`Splits`]; at most one per CPU).
    domain: u16,
    /// The CPU written from (below [`crate::types::MAX_CPUS`]).
    cpu: u16,
    /// Whether the domain holds one value (written once for all its CPUs) or is handled CPU by
    /// CPU, as a per-thread register is.
    shared: bool,
}

impl Pending {
    fn new(entry: usize, domain: usize, cpu: CpuId, shared: bool) -> Pending {
        // Bounded where they come from: allowlists (32,768 entries) and CPU lists (8192 CPUs).
        let small = |n: usize| u16::try_from(n).expect("allowlist entries and CPUs fit in u16");
        Pending {
            entry: small(entry),
            domain: small(domain),
            cpu: small(cpu.0 as usize),
            shared,
        }
    }

    fn entry(&self) -> usize {
        usize::from(self.entry)
    }

    fn cpu(&self) -> CpuId {
        CpuId(u32::from(self.cpu))
    }
}

/// A planned write as it runs: the write, where it sits, and the CPUs it must hold on.
struct Planned {
    write: DomainWrite,
    at: Where,
    verify_on: Option<Arc<[CpuId]>>,
}

/// How many writes are planned again, run and verified at a time by [`restore`]: memory stays
/// bounded by the snapshot, whatever the number of writes (16,384 writes: about 1 MiB of ops).
pub const WRITE_CHUNK: usize = 1 << 14;

impl Tally {
    fn fail(&mut self, key: Key, f: Finding) {
        self.failed += 1;
        self.failures.push(key, f);
    }

    fn merge(mut self, mut other: Tally) -> Tally {
        self.compared += other.compared;
        self.written += other.written;
        self.unchanged += other.unchanged;
        self.verified += other.verified;
        self.unreadable_at_save += other.unreadable_at_save;
        self.failed += other.failed;
        self.drifted += other.drifted;
        self.failures.merge(other.failures);
        self.drift.merge(other.drift);
        self.writes.merge(other.writes);
        self.locked.merge(other.locked);
        self.inconsistent.merge(other.inconsistent);
        self.changed.extend(other.changed);
        // The larger list takes the smaller (both are sorted later): fewer and smaller copies.
        if self.pending.len() < other.pending.len() {
            std::mem::swap(&mut self.pending, &mut other.pending);
        }
        self.pending.extend(other.pending);
        self
    }

    /// The per-MSR changes, CPUs in order, and how many CPUs they touch in all.
    fn changes(&mut self, work: &Work) -> (Vec<MsrChange>, usize) {
        self.changed.sort_unstable_by_key(|c| c.0);
        let mut out = Vec::new();
        let mut all = CpuBits::default();
        for (ei, change) in &self.changed {
            if change.cpus.is_empty() {
                continue;
            }
            all.union(&change.cpus);
            let cpus = change.cpus.to_vec();
            let scope = change.scope.unwrap_or(Scope::Thread);
            let packages: Vec<CpuId> = change.packages.iter().map(|&p| CpuId(p)).collect();
            out.push(MsrChange {
                msr: work.list.entries()[*ei].addr,
                name: work.names[*ei].clone(),
                cpus: cpus.len(),
                cpu_list: format_cpu_list(&cpus),
                bits: Hex64(change.bits),
                scope,
                domains: change.domains,
                packages: format_cpu_list(&packages),
            });
        }
        (out, all.len())
    }
}

impl Work<'_> {
    /// The domains of each scope the work list's registers have, among the present CPUs.
    fn splits(&self, layout: &Layout, present: &[(CpuId, usize)]) -> Splits {
        let cpus: Vec<CpuId> = present.iter().map(|p| p.0).collect();
        let row_of = |c: CpuId| {
            present
                .binary_search_by_key(&c, |p| p.0)
                .map(|i| (present[i].1, i))
        };
        let scope: Vec<Scope> = self
            .list
            .entries()
            .iter()
            .map(|e| layout.scope(e.addr))
            .collect();
        let lock = self
            .list
            .entries()
            .iter()
            .map(|e| layout.lock(e.addr))
            .collect();
        let mut by_scope = std::collections::HashMap::new();
        for &scope in &scope {
            by_scope.entry(scope).or_insert_with(|| {
                layout
                    .topology
                    .split(scope, &cpus)
                    .into_iter()
                    .map(|(at, members)| {
                        let rows: Vec<(CpuId, usize, usize)> = members
                            .into_iter()
                            .filter_map(|c| row_of(c).ok().map(|(si, ci)| (c, si, ci)))
                            .collect();
                        let cpus = rows.iter().map(|r| r.0).collect();
                        DomainRows { at, rows, cpus }
                    })
                    .collect()
            });
        }
        Splits {
            by_scope,
            scope,
            lock,
        }
    }

    /// Decide for every register of every domain, from the snapshot and the read pass.
    fn plan(&self, current: &Snapshot, splits: &Splits) -> Tally {
        (0..self.list.len())
            .into_par_iter()
            .fold(Tally::default, |mut tally, ei| {
                self.plan_entry(&mut tally, ei, current, splits.lock[ei], splits.of(ei));
                tally
            })
            .reduce(Tally::default, Tally::merge)
    }

    fn plan_entry(
        &self,
        tally: &mut Tally,
        ei: usize,
        current: &Snapshot,
        lock: Option<crate::msrs::lock::Lock>,
        domains: &Domains,
    ) {
        let addr = self.list.entries()[ei].addr;
        let name = || self.names[ei].clone();
        let mut change = Change::default();
        let mut members: Vec<Member> = Vec::new();
        let mut plan = DomainPlan::default();
        for (di, DomainRows { at, rows, .. }) in domains.iter().enumerate() {
            self.members_into(ei, rows, current, &mut members);
            let Some(first) = members.first().map(|m| m.cpu) else {
                continue;
            };
            plan_domain_into(
                self.masks[ei],
                self.drift_masks[ei],
                lock,
                &members,
                &mut plan,
            );
            // Findings about the register sit at its domain when the domain holds one value,
            // at each CPU when its CPUs disagree (handled CPU by CPU).
            let place = |cpu: CpuId| if plan.one_value { *at } else { Where::Cpu(cpu) };
            if !plan.changed_cpus.is_empty() {
                change.bits |= plan.changed_bits;
                for &c in &plan.changed_cpus {
                    change.cpus.insert(c);
                }
                change.domains += 1;
                change.scope.get_or_insert(at.scope());
                change.packages.extend(at.package());
            }
            if let Some(i) = plan.inconsistent {
                tally.inconsistent.push(
                    (first, ei),
                    Finding {
                        cpu: first,
                        at: *at,
                        msr: Some(addr),
                        name: name(),
                        problem: Problem::Inconsistent(i),
                    },
                );
            }
            for l in &plan.locked {
                tally.locked.push(
                    (l.cpu, ei),
                    Finding {
                        cpu: l.cpu,
                        at: place(l.cpu),
                        msr: Some(addr),
                        name: name(),
                        problem: Problem::Locked {
                            expected: l.expected,
                            actual: l.actual,
                            bits: l.bits,
                            lock_bit: l.lock_bit,
                            at_save: l.at_save,
                        },
                    },
                );
            }
            for &(cpu, e) in &plan.unreadable_now {
                tally.fail(
                    (cpu, ei),
                    Finding::failed(cpu, addr, name(), Stage::Read, e).within(place(cpu)),
                );
            }
            match self.mode {
                Mode::Check { .. } => {
                    tally.compared += plan.compared;
                    for d in &plan.drift {
                        tally.drifted += 1;
                        tally.drift.push(
                            (d.cpu, ei),
                            Finding {
                                cpu: d.cpu,
                                at: place(d.cpu),
                                msr: Some(addr),
                                name: name(),
                                problem: Problem::Drift {
                                    expected: d.expected,
                                    actual: d.actual,
                                    bits: d.bits,
                                },
                            },
                        );
                    }
                }
                Mode::Restore { .. } => {
                    tally.unchanged += plan.unchanged;
                    tally.unreadable_at_save += plan.unreadable_at_save;
                    for w in &plan.writes {
                        tally
                            .pending
                            .push(Pending::new(ei, di, w.cpu, plan.one_value));
                    }
                }
            }
        }
        tally.changed.push((ei, change));
    }

    /// The saved and current values of register `ei` on the CPUs of one domain.
    fn members_into(
        &self,
        ei: usize,
        rows: &[(CpuId, usize, usize)],
        current: &Snapshot,
        members: &mut Vec<Member>,
    ) {
        members.clear();
        members.extend(rows.iter().map(|&(cpu, si, ci)| Member {
            cpu,
            saved: self.saved.value(si, self.saved_entry[ei]),
            current: current.value(ci, ei),
        }));
    }

    /// The write `p` stands for, planned again from the same snapshot and read pass (the plan is
    /// a pure function of them, so it is the write the first plan made).
    fn write_of(
        &self,
        p: &Pending,
        current: &Snapshot,
        splits: &Splits,
        scratch: &mut (Vec<Member>, DomainPlan),
    ) -> Planned {
        let ei = p.entry();
        let d = &splits.of(ei)[usize::from(p.domain)];
        let (members, plan) = scratch;
        self.members_into(ei, &d.rows, current, members);
        plan_domain_into(
            self.masks[ei],
            self.drift_masks[ei],
            splits.lock[ei],
            members,
            plan,
        );
        let write = plan
            .writes
            .iter()
            .find(|w| w.cpu == p.cpu())
            .copied()
            .expect("planning the same register of the same domain again gives the same writes");
        Planned {
            at: if p.shared { d.at } else { Where::Cpu(p.cpu()) },
            // A domain that holds one value is verified on all its CPUs, else on the CPU written.
            verify_on: (plan.one_value && d.cpus.len() > 1).then(|| Arc::clone(&d.cpus)),
            write,
        }
    }

    fn record(&self, entry: usize, w: &Planned, after: u64) -> WriteRecord {
        WriteRecord {
            cpu: w.write.cpu,
            scope: w.at.scope(),
            domain: w.at.to_string(),
            msr: self.list.entries()[entry].addr,
            name: self.names[entry].clone(),
            before: Hex64(w.write.current),
            after: Hex64(after),
            mask: Hex64(w.write.mask.0),
        }
    }

    /// Run the planned writes in the order the rules ask ([`crate::msrs::order`]), then read
    /// every CPU each write must hold on and compare. Both passes go a chunk of writes at a time
    /// ([`WRITE_CHUNK`]), so that memory follows the snapshot, not the number of writes.
    fn write_and_verify(
        &self,
        device: &dyn MsrDevice,
        layout: &Layout,
        splits: &Splits,
        current: &Snapshot,
        tally: &mut Tally,
    ) -> Result<(), DeviceError> {
        let mut pending = std::mem::take(&mut tally.pending);
        if pending.is_empty() {
            return Ok(());
        }
        let addrs: Vec<MsrAddr> = self.list.entries().iter().map(|e| e.addr).collect();
        let edges = order::edges(layout.cpu.as_ref(), &addrs);
        // A register handled CPU by CPU behaves as a per-thread one.
        let mut scopes = vec![Scope::Thread; addrs.len()];
        for p in &pending {
            if p.shared {
                let at = splits.of(p.entry())[usize::from(p.domain)].at;
                scopes[p.entry()] = scopes[p.entry()].max(at.scope());
            }
        }
        let order = plan::WriteOrder::new(&edges, &scopes);
        let wave = &order.wave;
        pending.sort_by_key(|p| order.key(p.entry(), p.cpu()));
        let mut scratch = (Vec::new(), DomainPlan::default());

        // Writes: a wave at a time, in chunks.
        let mut ok = vec![false; pending.len()];
        let mut start = 0;
        while start < pending.len() {
            let w = wave[pending[start].entry()];
            let end = start
                + pending[start..]
                    .iter()
                    .take(self.chunk)
                    .take_while(|p| wave[p.entry()] == w)
                    .count();
            let planned: Vec<Planned> = pending[start..end]
                .iter()
                .map(|p| self.write_of(p, current, splits, &mut scratch))
                .collect();
            let mut ops: Vec<MsrOp> = pending[start..end]
                .iter()
                .zip(&planned)
                .map(|(p, w)| MsrOp::write(p.cpu(), addrs[p.entry()], w.write.new, w.write.mask))
                .collect();
            device::execute(device, &mut ops)?;
            for (i, ((p, w), op)) in pending[start..end]
                .iter()
                .zip(&planned)
                .zip(&ops)
                .enumerate()
            {
                match op.result {
                    Some(Ok(_)) => ok[start + i] = true,
                    other => {
                        let e = other
                            .and_then(Result::err)
                            .unwrap_or(OpError::Errno(nix::errno::Errno::EIO));
                        tally.fail(
                            (p.cpu(), p.entry()),
                            Finding::failed(
                                p.cpu(),
                                addrs[p.entry()],
                                self.names[p.entry()].clone(),
                                Stage::Write,
                                e,
                            )
                            .within(w.at),
                        );
                    }
                }
            }
            start = end;
        }
        tally.written += ok.iter().filter(|o| **o).count();

        // Read back, once every write has run: per chunk, (CPU, write) pairs grouped by CPU.
        for start in (0..pending.len()).step_by(self.chunk) {
            let end = (start + self.chunk).min(pending.len());
            let planned: Vec<Option<Planned>> = (start..end)
                .map(|wi| {
                    ok[wi].then(|| self.write_of(&pending[wi], current, splits, &mut scratch))
                })
                .collect();
            let mut checks: Vec<(CpuId, usize)> = Vec::new();
            for (i, w) in planned.iter().enumerate() {
                if let Some(w) = w {
                    match &w.verify_on {
                        Some(cpus) => checks.extend(cpus.iter().map(|&c| (c, i))),
                        None => checks.push((w.write.cpu, i)),
                    }
                }
            }
            checks.sort_by_key(|c| c.0);
            let mut verify: Vec<MsrOp> = checks
                .iter()
                .map(|&(c, i)| MsrOp::read(c, addrs[pending[start + i].entry()]))
                .collect();
            device::execute(device, &mut verify)?;
            // Per write: the value its own CPU reads back, and whether every CPU holds.
            let mut held: Vec<bool> = planned.iter().map(Option::is_some).collect();
            let mut after = vec![0u64; planned.len()];
            for (&(cpu, i), v) in checks.iter().zip(&verify) {
                let (p, Some(w)) = (&pending[start + i], &planned[i]) else {
                    continue;
                };
                let mask = w.write.mask.0;
                let name = self.names[p.entry()].clone();
                let key = (cpu, p.entry());
                match v
                    .result
                    .unwrap_or(Err(OpError::Errno(nix::errno::Errno::EIO)))
                {
                    Ok(read) if read & mask == w.write.saved & mask => {
                        if cpu == w.write.cpu {
                            after[i] = read;
                        }
                    }
                    Ok(read) => {
                        held[i] = false;
                        tally.fail(
                            key,
                            Finding {
                                cpu,
                                at: w.at,
                                msr: Some(addrs[p.entry()]),
                                name,
                                problem: Problem::Mismatch {
                                    wrote: w.write.new,
                                    read,
                                    bits: (read ^ w.write.saved) & mask,
                                },
                            },
                        );
                    }
                    Err(e) => {
                        held[i] = false;
                        tally.fail(
                            key,
                            Finding::failed(cpu, addrs[p.entry()], name, Stage::Verify, e)
                                .within(w.at),
                        );
                    }
                }
            }
            for (i, w) in planned.iter().enumerate() {
                let (true, Some(w)) = (held[i], w) else {
                    continue;
                };
                tally.verified += 1;
                let p = &pending[start + i];
                let key = (p.cpu(), p.entry());
                if tally.writes.keeps(key) {
                    let record = self.record(p.entry(), w, after[i]);
                    tally.writes.push(key, record);
                }
            }
        }
        Ok(())
    }

    /// Read every register, decide, and (restoring) write and verify.
    fn run_all(
        &self,
        device: &dyn MsrDevice,
        present: &[(CpuId, usize)],
        layout: &Layout,
    ) -> Result<Tally, DeviceError> {
        let cpus: Vec<CpuId> = present.iter().map(|p| p.0).collect();
        let current = Snapshot::take(device, Arc::clone(&self.list), &cpus)?;
        let splits = self.splits(layout, present);
        let mut tally = self.plan(&current, &splits);
        match self.mode {
            Mode::Restore { dry_run: true } => {
                let pending = std::mem::take(&mut tally.pending);
                tally.written += pending.len();
                let mut scratch = (Vec::new(), DomainPlan::default());
                for p in &pending {
                    let key = (p.cpu(), p.entry());
                    if tally.writes.keeps(key) {
                        let w = self.write_of(p, &current, &splits, &mut scratch);
                        let record = self.record(p.entry(), &w, w.write.new);
                        tally.writes.push(key, record);
                    }
                }
            }
            Mode::Restore { dry_run: false } => {
                self.write_and_verify(device, layout, &splits, &current, &mut tally)?
            }
            Mode::Check { .. } => {}
        }
        Ok(tally)
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
    let masks: Vec<WriteMask> = list
        .entries()
        .iter()
        .zip(&saved_entry)
        .map(|(e, &si)| e.mask.intersect(saved.entries()[si].mask))
        .collect();
    let drift_masks = masks
        .iter()
        .map(|&m| match mode {
            Mode::Check {
                bits: DriftBits::All,
            } => WriteMask::ALL,
            _ => m,
        })
        .collect();
    let names = list.entries().iter().map(name_of).collect();
    Work {
        saved,
        list,
        saved_entry,
        masks,
        drift_masks,
        names,
        mode,
        chunk: WRITE_CHUNK,
    }
}

/// Put back the write-masked bits of `saved` on the CPUs of `online` that it covers, verify them,
/// and report what differed before (per MSR) and every register not restored.
///
/// `layout` says which CPUs share which register: a register shared by a domain is written once,
/// from its first CPU, and verified on every CPU of it ([`Layout::per_thread`]: every register
/// per CPU).
pub fn restore(
    device: &dyn MsrDevice,
    saved: &Snapshot,
    current_allowlist: &Allowlist,
    online: &[CpuId],
    layout: &Layout,
    dry_run: bool,
) -> Result<RestoreReport, DeviceError> {
    restore_in_chunks(
        device,
        saved,
        current_allowlist,
        online,
        layout,
        dry_run,
        WRITE_CHUNK,
    )
}

/// [`restore`], planning, running and verifying `chunk` writes at a time (at least one): the
/// same writes in the same order and the same report whatever the chunk; a smaller chunk holds
/// less memory and makes more device calls.
pub fn restore_in_chunks(
    device: &dyn MsrDevice,
    saved: &Snapshot,
    current_allowlist: &Allowlist,
    online: &[CpuId],
    layout: &Layout,
    dry_run: bool,
    chunk: usize,
) -> Result<RestoreReport, DeviceError> {
    let (present, offline, new_cpus) = split_cpus(saved, online);
    let mut w = work(saved, current_allowlist, Mode::Restore { dry_run });
    w.chunk = chunk.max(1);
    let mut t = w.run_all(device, &present, layout)?;
    let (changed, _) = t.changes(&w);
    let mut failures: Vec<Finding> = offline.iter().map(|&c| Finding::offline(c)).collect();
    let failed = t.failed + failures.len();
    failures.extend(t.failures.into_vec());
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
        writes: t.writes.into_vec(),
        changed,
        locked: t.locked.into_vec(),
        inconsistent: t.inconsistent.into_vec(),
    })
}

/// Compare the node now with `saved`; a register shared by a domain is compared once for it.
pub fn check(
    device: &dyn MsrDevice,
    saved: &Snapshot,
    current_allowlist: &Allowlist,
    online: &[CpuId],
    layout: &Layout,
    bits: DriftBits,
) -> Result<CheckReport, DeviceError> {
    let (present, offline, new_cpus) = split_cpus(saved, online);
    let w = work(saved, current_allowlist, Mode::Check { bits });
    let mut t = w.run_all(device, &present, layout)?;
    let (changed, drifted_cpus) = t.changes(&w);
    let mut failures: Vec<Finding> = offline.iter().map(|&c| Finding::offline(c)).collect();
    let failed = t.failed + failures.len();
    failures.extend(t.failures.into_vec());
    failures.truncate(LISTED);
    Ok(CheckReport {
        compared: t.compared,
        all_bits: bits == DriftBits::All,
        drifted: t.drifted,
        drifted_cpus,
        drift: t.drift.into_vec(),
        failed,
        failures,
        offline_cpus: offline,
        new_cpus,
        mask_changes: plan::mask_changes(saved, current_allowlist),
        changed,
        locked: t.locked.into_vec(),
        inconsistent: t.inconsistent.into_vec(),
    })
}
