//! The decisions, as pure functions of (saved snapshot, current snapshot): which registers a
//! restore writes and with what value, and which registers have drifted. No I/O here, so the
//! rules that matter are tested on their own (including property tests that no planned write
//! changes a bit outside the mask or touches an MSR outside the allowlist).
//!
//! The `current` snapshot always covers a subset of the saved CPUs and, as its allowlist, the
//! saved MSRs that the allowlist in effect now still lists, with the masks in effect now.

use serde::Serialize;

use crate::device::OpError;
use crate::msrs::lock::Lock;
use crate::msrs::msr_name;
use crate::msrs::scope::Scope;
use crate::snapshot::Snapshot;
use crate::types::{CpuId, Hex64, MsrAddr, WriteMask};

/// One register a restore will write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlannedWrite {
    pub cpu: CpuId,
    pub addr: MsrAddr,
    /// Bits the restore may change: writable under both the saved and the current allowlist.
    pub mask: WriteMask,
    pub current: u64,
    pub saved: u64,
    /// `mask.merge(current, saved)`.
    pub new: u64,
}

/// A register the plan cannot handle, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Unplanned {
    /// Could not be read when the snapshot was taken: there is nothing to put back.
    UnreadableAtSave {
        cpu: CpuId,
        addr: MsrAddr,
        error: OpError,
    },
    /// Cannot be read now: the restore cannot merge it.
    UnreadableNow {
        cpu: CpuId,
        addr: MsrAddr,
        error: OpError,
    },
}

#[derive(Clone, Debug, Default)]
pub struct RestorePlan {
    pub writes: Vec<PlannedWrite>,
    /// Registers whose writable bits already hold the saved value.
    pub unchanged: usize,
    pub unplanned: Vec<Unplanned>,
}

/// How a saved MSR's write mask compares with the allowlist in effect now.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, schemars::JsonSchema)]
pub struct MaskChange {
    pub msr: MsrAddr,
    pub saved_mask: WriteMask,
    /// `None`: not in the allowlist now (the MSR is left alone).
    pub current_mask: Option<WriteMask>,
    /// What a restore writes: saved & current.
    pub effective_mask: WriteMask,
}

/// Which bits the drift check compares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DriftBits {
    /// Bits writable under both allowlists: what a job could have changed and a restore fixes.
    Writable,
    /// Every bit of every readable register (counters and status registers always drift).
    All,
}

/// A register whose compared bits differ from the snapshot.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Drift {
    pub cpu: CpuId,
    pub msr: MsrAddr,
    pub name: Option<String>,
    pub expected: Hex64,
    pub actual: Hex64,
    pub changed_bits: Hex64,
}

/// The name to show for an MSR: the allowlist's comment, else the built-in table.
pub fn display_name(snapshot: &Snapshot, entry_index: usize) -> Option<String> {
    let e = &snapshot.entries()[entry_index];
    e.name
        .clone()
        .or_else(|| msr_name(e.addr).map(str::to_string))
}

/// Compare saved masks with the masks in effect now, for every saved MSR whose writable bits
/// differ (or that is no longer allowlisted).
pub fn mask_changes(
    saved: &Snapshot,
    current_allowlist: &crate::allowlist::Allowlist,
) -> Vec<MaskChange> {
    saved
        .entries()
        .iter()
        .filter_map(|e| {
            let current = current_allowlist.mask(e.addr);
            let effective = current.map_or(WriteMask::NONE, |c| c.intersect(e.mask));
            (current != Some(e.mask)
                && (e.mask.is_writable() || current.is_some_and(|c| c.is_writable())))
            .then_some(MaskChange {
                msr: e.addr,
                saved_mask: e.mask,
                current_mask: current,
                effective_mask: effective,
            })
        })
        .collect()
}

/// Iterate the (cpu, entry) pairs of `current` with the saved value of the same register.
fn paired<'a>(
    saved: &'a Snapshot,
    current: &'a Snapshot,
) -> impl Iterator<
    Item = (
        CpuId,
        usize,
        WriteMask,
        WriteMask,
        Result<u64, OpError>,
        Result<u64, OpError>,
    ),
> + 'a {
    // Shared by every CPU's iterator: an Rc clone per CPU instead of a copy of the table.
    let saved_entry: std::rc::Rc<[Option<usize>]> = current
        .entries()
        .iter()
        .map(|e| saved.allowlist.index_of(e.addr))
        .collect();
    current
        .cpus
        .iter()
        .enumerate()
        .filter_map(move |(ci, &cpu)| saved.cpu_index(cpu).map(|si| (ci, si, cpu)))
        .flat_map(move |(ci, si, cpu)| {
            let saved_entry = std::rc::Rc::clone(&saved_entry);
            current
                .entries()
                .iter()
                .enumerate()
                .filter_map(move |(ei, e)| {
                    let se = saved_entry[ei]?;
                    let saved_mask = saved.entries()[se].mask;
                    Some((
                        cpu,
                        ei,
                        saved_mask,
                        e.mask,
                        saved.value(si, se),
                        current.value(ci, ei),
                    ))
                })
        })
}

/// What a restore does with one register whose writable bits (under both allowlists) are `mask`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RegisterAction {
    /// The writable bits already hold the saved value (or none is writable).
    Leave,
    /// Write `new` = `mask.merge(current, saved)`.
    Write { new: u64 },
    /// Unreadable when the snapshot was taken: nothing to put back.
    UnreadableAtSave(OpError),
    /// Unreadable now: the restore cannot merge it.
    UnreadableNow(OpError),
}

/// The decision for one register: the rule every restore path applies.
pub fn plan_register(
    mask: WriteMask,
    saved: Result<u64, OpError>,
    current: Result<u64, OpError>,
) -> RegisterAction {
    if !mask.is_writable() {
        return RegisterAction::Leave;
    }
    let saved = match saved {
        Ok(v) => v,
        Err(e) => return RegisterAction::UnreadableAtSave(e),
    };
    let current = match current {
        Ok(v) => v,
        Err(e) => return RegisterAction::UnreadableNow(e),
    };
    let new = mask.merge(current, saved);
    if new == current {
        RegisterAction::Leave
    } else {
        RegisterAction::Write { new }
    }
}

/// The compared bits that differ between a saved and a current value (0 if either is
/// unreadable: that is reported apart, not as drift).
pub fn drift_bits(
    mask: WriteMask,
    saved: Result<u64, OpError>,
    current: Result<u64, OpError>,
) -> u64 {
    match (saved, current) {
        (Ok(s), Ok(c)) => (s ^ c) & mask.0,
        _ => 0,
    }
}

/// One CPU of a register's domain: what it read at save time and what it reads now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Member {
    pub cpu: CpuId,
    pub saved: Result<u64, OpError>,
    pub current: Result<u64, OpError>,
}

/// One write a restore makes for a domain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DomainWrite {
    /// The CPU written from.
    pub cpu: CpuId,
    pub new: u64,
    pub current: u64,
    pub saved: u64,
    /// The bits written: restored bits, less those a set lock holds and the lock bit itself.
    pub mask: WriteMask,
}

/// Compared bits that differ from the snapshot (one entry for a domain holding one value).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DriftAt {
    pub cpu: CpuId,
    pub expected: u64,
    pub actual: u64,
    pub bits: u64,
}

/// A register whose lock bit is set now and whose locked bits differ from the snapshot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LockedAt {
    pub cpu: CpuId,
    pub expected: u64,
    pub actual: u64,
    /// The locked bits that differ.
    pub bits: u64,
    pub lock_bit: u8,
    /// Whether the saved value has the lock bit set too.
    pub at_save: bool,
}

/// Two CPUs of one domain that read a register differently (in the restored bits, or one
/// readable and the other not).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Disagreement {
    pub a: (CpuId, Result<u64, OpError>),
    pub b: (CpuId, Result<u64, OpError>),
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Inconsistency {
    pub at_save: Option<Disagreement>,
    pub now: Option<Disagreement>,
}

/// What one register of one domain needs, for a restore and for a check alike.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DomainPlan {
    /// The domain was handled as one register (its CPUs agree); false: CPU by CPU.
    pub one_value: bool,
    pub writes: Vec<DomainWrite>,
    pub unchanged: usize,
    pub unreadable_at_save: usize,
    /// Readable at save time, not now.
    pub unreadable_now: Vec<(CpuId, OpError)>,
    /// Registers compared (readable both times).
    pub compared: usize,
    pub drift: Vec<DriftAt>,
    /// The CPUs whose compared bits differ, and every such bit.
    pub changed_cpus: Vec<CpuId>,
    pub changed_bits: u64,
    pub locked: Vec<LockedAt>,
    pub inconsistent: Option<Inconsistency>,
}

fn disagree(mask: WriteMask, a: Result<u64, OpError>, b: Result<u64, OpError>) -> bool {
    match (a, b) {
        (Ok(x), Ok(y)) => (x ^ y) & mask.0 != 0,
        (Err(_), Err(_)) => false,
        _ => true,
    }
}

/// The first CPU of `members` that disagrees with the first one (see [`plan_domain`]).
pub fn first_disagreement(
    mask: WriteMask,
    members: &[Member],
    pick: impl Fn(&Member) -> Result<u64, OpError>,
) -> Option<Disagreement> {
    let first = members.first()?;
    members
        .iter()
        .find(|m| disagree(mask, pick(first), pick(m)))
        .map(|m| Disagreement {
            a: (first.cpu, pick(first)),
            b: (m.cpu, pick(m)),
        })
}

/// The decision for one register of one domain (its CPUs, in order).
///
/// `restore_mask`: the bits a restore writes (writable under the saved and the current
/// allowlist); they also decide whether the CPUs of the domain agree. `drift_mask`: the bits a
/// check compares. `lock`: the register's lock, if the table knows one.
///
/// A domain whose CPUs agree, at save time and now, is one register: at most one write, from
/// its first CPU, verified on all of them; drift and locks reported once. One whose CPUs
/// disagree is not behaving as one register (a scope wrongly recorded, or a register no one
/// shares here), so each CPU is handled on its own, as a per-thread register is, and the
/// disagreement is reported.
pub fn plan_domain(
    restore_mask: WriteMask,
    drift_mask: WriteMask,
    lock: Option<Lock>,
    members: &[Member],
) -> DomainPlan {
    let mut plan = DomainPlan::default();
    plan_domain_into(restore_mask, drift_mask, lock, members, &mut plan);
    plan
}

/// [`plan_domain`] into `plan` (cleared first; its lists keep their capacity, so that a caller
/// planning thousands of domains allocates once).
pub fn plan_domain_into(
    restore_mask: WriteMask,
    drift_mask: WriteMask,
    lock: Option<Lock>,
    members: &[Member],
    plan: &mut DomainPlan,
) {
    plan.one_value = false;
    plan.writes.clear();
    plan.unchanged = 0;
    plan.unreadable_at_save = 0;
    plan.unreadable_now.clear();
    plan.compared = 0;
    plan.drift.clear();
    plan.changed_cpus.clear();
    plan.changed_bits = 0;
    plan.locked.clear();
    plan.inconsistent = None;
    let inconsistent = if members.len() > 1 {
        Inconsistency {
            at_save: first_disagreement(restore_mask, members, |m| m.saved),
            now: first_disagreement(restore_mask, members, |m| m.current),
        }
    } else {
        Inconsistency::default()
    };
    if inconsistent != Inconsistency::default() {
        plan.inconsistent = Some(inconsistent);
        for m in members {
            let one = plan_domain(restore_mask, drift_mask, lock, std::slice::from_ref(m));
            plan.writes.extend(one.writes);
            plan.unchanged += one.unchanged;
            plan.unreadable_at_save += one.unreadable_at_save;
            plan.unreadable_now.extend(one.unreadable_now);
            plan.compared += one.compared;
            plan.drift.extend(one.drift);
            plan.changed_cpus.extend(one.changed_cpus);
            plan.changed_bits |= one.changed_bits;
            plan.locked.extend(one.locked);
        }
        return;
    }
    plan.one_value = true;
    let Some(rep) = members.first() else {
        return;
    };
    // Bits a set lock holds now ignore writes: never written, never drift, reported apart. The
    // lock bit itself is never written: a restore must not lock a register until reset.
    let held = match (lock, rep.current) {
        (Some(l), Ok(c)) => l.held(c),
        _ => 0,
    };
    let lock_bit = lock.map_or(0, |l| 1u64 << l.bit);
    let restore = WriteMask(restore_mask.0 & !held & !lock_bit);
    let drift = WriteMask(drift_mask.0 & !held);
    for m in members {
        let bits = drift_bits(drift, m.saved, m.current);
        if bits != 0 {
            plan.changed_cpus.push(m.cpu);
            plan.changed_bits |= bits;
        }
    }
    let mut locked = false;
    if let (Some(l), Ok(s), Ok(c)) = (lock, rep.saved, rep.current) {
        let bits = (s ^ c) & (drift_mask.0 | restore_mask.0) & held;
        if bits != 0 {
            locked = true;
            plan.locked.push(LockedAt {
                cpu: rep.cpu,
                expected: s,
                actual: c,
                bits,
                lock_bit: l.bit,
                at_save: l.is_set(s),
            });
        }
    }
    match (rep.saved, rep.current) {
        (Ok(_), Ok(_)) => {
            plan.compared += 1;
            let first_changed = members.iter().find_map(|m| {
                let bits = drift_bits(drift, m.saved, m.current);
                match (m.saved, m.current) {
                    (Ok(s), Ok(c)) if bits != 0 => Some(DriftAt {
                        cpu: m.cpu,
                        expected: s,
                        actual: c,
                        bits,
                    }),
                    _ => None,
                }
            });
            plan.drift.extend(first_changed);
        }
        (Ok(_), Err(e)) => plan.unreadable_now.push((rep.cpu, e)),
        (Err(_), _) => {}
    }
    // Unreadable at save comes first: nothing to put back, locked or not.
    let action = match rep.saved {
        Err(e) if restore_mask.is_writable() => RegisterAction::UnreadableAtSave(e),
        _ => plan_register(restore, rep.saved, rep.current),
    };
    match action {
        RegisterAction::Leave => plan.unchanged += usize::from(!locked),
        RegisterAction::UnreadableAtSave(_) => plan.unreadable_at_save += 1,
        // Counted above, once.
        RegisterAction::UnreadableNow(_) => {}
        RegisterAction::Write { new } => plan.writes.push(DomainWrite {
            cpu: rep.cpu,
            new,
            current: rep.current.unwrap_or_default(),
            saved: rep.saved.unwrap_or_default(),
            mask: restore,
        }),
    }
}

/// The wave of each register of a restore: registers of one wave are written together (each
/// CPU's writes in rank order), the waves one after another. A rule between two per-thread
/// registers holds within each CPU's writes; one that involves a register shared by several
/// CPUs (written from one of them) needs a later wave for the register it orders.
pub fn waves(edges: &[(usize, usize)], scopes: &[Scope]) -> Vec<u32> {
    crate::msrs::order::longest_paths(scopes.len(), edges, |i, j| {
        u32::from(scopes[i] != Scope::Thread || scopes[j] != Scope::Thread)
    })
}

/// The order a restore runs its writes in: by wave ([`waves`]), then CPU by CPU (CPUs run in
/// parallel), each CPU's writes in rank order (the longest chain of rules before the register).
pub struct WriteOrder {
    pub wave: Vec<u32>,
    rank: Vec<u32>,
}

impl WriteOrder {
    pub fn new(edges: &[(usize, usize)], scopes: &[Scope]) -> WriteOrder {
        WriteOrder {
            wave: waves(edges, scopes),
            rank: crate::msrs::order::longest_paths(scopes.len(), edges, |_, _| 1),
        }
    }

    /// The sort key of a write of register `entry` from `cpu`.
    pub fn key(&self, entry: usize, cpu: CpuId) -> (u32, CpuId, u32, usize) {
        (self.wave[entry], cpu, self.rank[entry], entry)
    }
}

/// What a restore must write so that every writable bit holds its saved value again.
pub fn plan_restore(saved: &Snapshot, current: &Snapshot) -> RestorePlan {
    let mut plan = RestorePlan::default();
    for (cpu, ei, saved_mask, current_mask, saved_v, current_v) in paired(saved, current) {
        let mask = saved_mask.intersect(current_mask);
        let addr = current.entries()[ei].addr;
        match plan_register(mask, saved_v, current_v) {
            RegisterAction::Leave => {
                if mask.is_writable() {
                    plan.unchanged += 1;
                }
            }
            RegisterAction::Write { new } => plan.writes.push(PlannedWrite {
                cpu,
                addr,
                mask,
                // Both are readable when a write is planned.
                current: current_v.unwrap_or_default(),
                saved: saved_v.unwrap_or_default(),
                new,
            }),
            RegisterAction::UnreadableAtSave(error) => plan
                .unplanned
                .push(Unplanned::UnreadableAtSave { cpu, addr, error }),
            RegisterAction::UnreadableNow(error) => {
                plan.unplanned
                    .push(Unplanned::UnreadableNow { cpu, addr, error })
            }
        }
    }
    plan
}

/// Registers whose compared bits differ between the snapshot and now. Registers unreadable on
/// either side are not drift; callers report them separately.
pub fn find_drift(saved: &Snapshot, current: &Snapshot, bits: DriftBits) -> Vec<Drift> {
    let mut drift = Vec::new();
    for (cpu, ei, saved_mask, current_mask, saved_v, current_v) in paired(saved, current) {
        let mask = match bits {
            DriftBits::Writable => saved_mask.intersect(current_mask),
            DriftBits::All => WriteMask::ALL,
        };
        let changed = drift_bits(mask, saved_v, current_v);
        let (Ok(s), Ok(c)) = (saved_v, current_v) else {
            continue;
        };
        if changed != 0 {
            drift.push(Drift {
                cpu,
                msr: current.entries()[ei].addr,
                name: display_name(current, ei),
                expected: Hex64(s),
                actual: Hex64(c),
                changed_bits: Hex64(changed),
            });
        }
    }
    drift
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use proptest::prelude::*;

    use super::*;
    use crate::allowlist::Allowlist;

    use crate::testing::allowlist_of as list;

    fn snap(al: Arc<Allowlist>, cpus: &[u32], values: Vec<Result<u64, OpError>>) -> Snapshot {
        Snapshot::from_outcomes(al, cpus.iter().map(|&c| CpuId(c)).collect(), values)
    }

    #[test]
    fn restore_writes_only_changed_masked_bits() {
        let saved = snap(
            list(&[(0x10, 0), (0x199, 0xffff)]),
            &[0],
            vec![Ok(5), Ok(0x1111_2222)],
        );
        let current = snap(
            list(&[(0x10, 0), (0x199, 0xffff)]),
            &[0],
            vec![Ok(9), Ok(0x3333_4444)],
        );
        let plan = plan_restore(&saved, &current);
        assert_eq!(plan.writes.len(), 1);
        assert_eq!(plan.writes[0].new, 0x3333_2222);
        assert_eq!(plan.unchanged, 0);
        let again = snap(
            list(&[(0x10, 0), (0x199, 0xffff)]),
            &[0],
            vec![Ok(9), Ok(0x3333_2222)],
        );
        assert!(plan_restore(&saved, &again).writes.is_empty());
    }

    #[test]
    fn restore_uses_the_intersection_of_saved_and_current_masks() {
        let saved = snap(list(&[(0x199, 0xff00)]), &[0], vec![Ok(0xabcd)]);
        let current = snap(list(&[(0x199, 0x0ff0)]), &[0], vec![Ok(0x0000)]);
        let plan = plan_restore(&saved, &current);
        assert_eq!(plan.writes[0].mask, WriteMask(0x0f00));
        assert_eq!(plan.writes[0].new, 0x0b00);
        let changes = mask_changes(&saved, &current.allowlist);
        assert_eq!(changes.len(), 1);
        assert_eq!(changes[0].effective_mask, WriteMask(0x0f00));
    }

    #[test]
    fn unreadable_registers_are_reported_not_written() {
        let eio = Err(OpError::Errno(nix::errno::Errno::EIO));
        let saved = snap(list(&[(1, 1), (2, 1)]), &[0], vec![eio, Ok(1)]);
        let current = snap(list(&[(1, 1), (2, 1)]), &[0], vec![Ok(0), eio]);
        let plan = plan_restore(&saved, &current);
        assert!(plan.writes.is_empty());
        assert_eq!(plan.unplanned.len(), 2);
    }

    #[test]
    fn drift_counts_writable_bits_unless_asked_for_all() {
        let saved = snap(
            list(&[(0x10, 0), (0x199, 0xff)]),
            &[0, 1],
            vec![Ok(1), Ok(0x100), Ok(1), Ok(0x100)],
        );
        let current = snap(
            list(&[(0x10, 0), (0x199, 0xff)]),
            &[1],
            vec![Ok(2), Ok(0x201)],
        );
        let d = find_drift(&saved, &current, DriftBits::Writable);
        assert_eq!(d.len(), 1);
        assert_eq!(
            (d[0].cpu, d[0].msr, d[0].changed_bits),
            (CpuId(1), MsrAddr(0x199), Hex64(0x01))
        );
        assert_eq!(find_drift(&saved, &current, DriftBits::All).len(), 2);
    }

    fn members(values: &[(u64, u64)]) -> Vec<Member> {
        values
            .iter()
            .enumerate()
            .map(|(i, &(s, c))| Member {
                cpu: CpuId(i as u32),
                saved: Ok(s),
                current: Ok(c),
            })
            .collect()
    }

    const PL_LOCK: Lock = Lock {
        bit: 63,
        locks: u64::MAX,
    };

    #[test]
    fn a_domain_that_agrees_is_written_once_and_verified_everywhere() {
        let p = plan_domain(
            WriteMask(0xffff),
            WriteMask(0xffff),
            None,
            &members(&[(0x10, 0x20); 4]),
        );
        assert!(p.one_value && p.inconsistent.is_none());
        assert_eq!(p.writes.len(), 1);
        assert_eq!(p.writes[0].cpu, CpuId(0));
        assert_eq!((p.drift.len(), p.changed_cpus.len(), p.compared), (1, 4, 1));
    }

    #[test]
    fn a_domain_that_disagrees_is_handled_cpu_by_cpu_and_reported() {
        // CPU 1 alone was changed (a raw write to one CPU's file, or a register not shared).
        let p = plan_domain(
            WriteMask(0xff),
            WriteMask(0xff),
            None,
            &members(&[(5, 5), (5, 9), (5, 5)]),
        );
        assert!(!p.one_value);
        let i = p.inconsistent.expect("reported");
        assert!(i.at_save.is_none());
        assert_eq!(i.now.expect("now").b, (CpuId(1), Ok(9)));
        assert_eq!(p.writes.len(), 1);
        assert_eq!(p.writes[0].cpu, CpuId(1));
        assert_eq!((p.unchanged, p.compared, p.drift.len()), (2, 3, 1));
        // Readable on one CPU and not on another disagrees too.
        let mut m = members(&[(1, 1), (1, 1)]);
        m[1].saved = Err(OpError::Errno(nix::errno::Errno::EIO));
        let p = plan_domain(WriteMask(1), WriteMask(1), None, &m);
        assert!(p.inconsistent.unwrap().at_save.is_some());
        assert_eq!(p.unreadable_at_save, 1);
    }

    #[test]
    fn a_set_lock_is_reported_not_written_and_never_set_by_a_restore() {
        let locked = 1 << 63;
        // Locked now and at save, the limit differs: locked, no write, no drift.
        let p = plan_domain(
            WriteMask(u64::MAX),
            WriteMask(u64::MAX),
            Some(PL_LOCK),
            &members(&[(locked | 0x100, locked | 0x200); 2]),
        );
        assert!(p.writes.is_empty() && p.drift.is_empty(), "{p:?}");
        assert_eq!(p.locked.len(), 1);
        assert!(p.locked[0].at_save);
        assert_eq!(p.locked[0].bits, 0x300);
        assert_eq!(p.unchanged, 0);
        // Unlocked now: the limit is restored, the saved lock bit is not set again.
        let p = plan_domain(
            WriteMask(u64::MAX),
            WriteMask(u64::MAX),
            Some(PL_LOCK),
            &members(&[(locked | 0x100, 0x200)]),
        );
        assert_eq!(p.writes.len(), 1);
        assert_eq!(p.writes[0].new, 0x100);
        assert_eq!(p.writes[0].mask.0 & locked, 0);
        // A lock of some bits (CFG Lock: bits 15:0) leaves the others to the restore.
        let cfg = Lock {
            bit: 15,
            locks: 0xffff,
        };
        let p = plan_domain(
            WriteMask(u64::MAX),
            WriteMask(u64::MAX),
            Some(cfg),
            &members(&[(0x8000 | 0x1_0001, 0x8000 | 0x2_0002)]),
        );
        assert_eq!(p.locked[0].bits, 0x3);
        assert_eq!(p.writes[0].new, 0x8000 | 0x1_0002);
    }

    #[test]
    fn waves_separate_rules_that_cross_scopes() {
        use Scope::{Die, Thread};
        // 0 before 1 (both per thread), 2 (per die) before 3 (per thread).
        let w = waves(&[(0, 1), (2, 3)], &[Thread, Thread, Die, Thread]);
        assert_eq!(w, [0, 0, 0, 1]);
    }

    proptest! {
        /// No planned write changes a bit outside saved mask & current mask, and none targets an
        /// MSR outside the current allowlist.
        #[test]
        fn planned_writes_stay_inside_both_masks(
            regs in proptest::collection::vec((0u32..64, any::<u64>(), any::<u64>(), any::<u64>(), any::<u64>(), any::<bool>()), 1..40),
        ) {
            let mut seen = std::collections::HashSet::new();
            let regs: Vec<_> = regs.into_iter().filter(|r| seen.insert(r.0)).collect();
            let saved_list: Vec<(u32, u64)> = regs.iter().map(|r| (r.0, r.1)).collect();
            // Some saved MSRs are no longer allowlisted now.
            let current_list: Vec<(u32, u64)> = regs.iter().filter(|r| r.5).map(|r| (r.0, r.2)).collect();
            let saved = snap(list(&saved_list), &[0], regs.iter().map(|r| Ok(r.3)).collect());
            let current = snap(list(&current_list), &[0], regs.iter().filter(|r| r.5).map(|r| Ok(r.4)).collect());
            let plan = plan_restore(&saved, &current);
            for w in &plan.writes {
                let cur_mask = current.allowlist.mask(w.addr);
                prop_assert!(cur_mask.is_some(), "write to {} outside the current allowlist", w.addr);
                let allowed = cur_mask.unwrap().0 & saved.allowlist.mask(w.addr).unwrap().0;
                prop_assert_eq!((w.new ^ w.current) & !allowed, 0);
                prop_assert_eq!(w.new & allowed, w.saved & allowed);
            }
        }

        /// A domain's plan writes only restored bits, never a held lock bit; a domain that
        /// agrees is written at most once and verified on every CPU; after the writes, on
        /// hardware where the domain holds one value, every CPU reads the saved bits back.
        #[test]
        fn domain_plans_write_once_inside_the_mask(
            mask in any::<u64>(),
            saved in any::<u64>(),
            current in any::<u64>(),
            n in 1usize..6,
            odd in proptest::option::of((0usize..6, any::<u64>())),
            lock in proptest::option::of((0u8..64, any::<u64>())),
        ) {
            let lock = lock.map(|(bit, locks)| Lock { bit, locks: locks | 1 << bit });
            let mut values = vec![(saved, current); n];
            if let Some((i, v)) = odd {
                if i < n {
                    values[i].1 = v;
                }
            }
            let m = members(&values);
            let mask = WriteMask(mask);
            let p = plan_domain(mask, mask, lock, &m);
            let mut written = std::collections::HashSet::new();
            for w in &p.writes {
                prop_assert!(written.insert(w.cpu), "two writes from {}", w.cpu);
                prop_assert_eq!(w.mask.0 & !mask.0, 0);
                prop_assert_eq!((w.new ^ w.current) & !w.mask.0, 0);
                if let Some(l) = lock {
                    prop_assert_eq!(w.mask.0 & (l.held(w.current) | 1 << l.bit), 0);
                }
                prop_assert_eq!(w.new & w.mask.0, w.saved & w.mask.0);
            }
            if p.one_value {
                prop_assert!(p.writes.len() <= 1);
                prop_assert!(p.inconsistent.is_none());
            } else {
                prop_assert!(p.inconsistent.is_some());
            }
        }

        /// Every rule holds in the order a restore runs its writes: a lower wave first, and
        /// within a wave each CPU's writes in rank order (CPUs run in parallel).
        #[test]
        fn restore_order_follows_every_rule(
            scopes in proptest::collection::vec(0usize..3, 2..8),
            raw_edges in proptest::collection::vec((0usize..8, 0usize..8), 0..10),
            cpus in 1u32..4,
        ) {
            let scopes: Vec<Scope> = scopes
                .into_iter()
                .map(|s| [Scope::Thread, Scope::Core, Scope::Die][s])
                .collect();
            let n = scopes.len();
            // A rule orders a lower index before a higher one: acyclic.
            let edges: Vec<(usize, usize)> = raw_edges
                .into_iter()
                .filter(|&(i, j)| i < j && j < n)
                .collect();
            let order = WriteOrder::new(&edges, &scopes);
            // Writes: per-thread registers from every CPU, shared ones from CPU 0, sorted as a
            // restore sorts them.
            let mut writes: Vec<(u32, CpuId, u32, usize)> = Vec::new();
            for (e, s) in scopes.iter().enumerate() {
                let from: Vec<u32> = if *s == Scope::Thread { (0..cpus).collect() } else { vec![0] };
                for c in from {
                    writes.push(order.key(e, CpuId(c)));
                }
            }
            writes.sort_unstable();
            let position = |e: usize, c: CpuId| writes.iter().position(|w| w.3 == e && w.1 == c);
            for &(a, b) in &edges {
                for wa in writes.iter().filter(|w| w.3 == a) {
                    for wb in writes.iter().filter(|w| w.3 == b) {
                        let same_cpu_rule = scopes[a] == Scope::Thread && scopes[b] == Scope::Thread;
                        if same_cpu_rule && wa.1 != wb.1 {
                            continue;
                        }
                        let before = wa.0 < wb.0
                            || (wa.0 == wb.0 && wa.1 == wb.1 && position(a, wa.1) < position(b, wb.1));
                        prop_assert!(before, "{:?} must run before {:?}", wa, wb);
                    }
                }
            }
        }
    }
}
