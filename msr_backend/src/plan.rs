//! The decisions, as pure functions of (saved snapshot, current snapshot): which registers a
//! restore writes and with what value, and which registers have drifted. No I/O here, so the
//! rules that matter are tested on their own (including property tests that no planned write
//! changes a bit outside the mask or touches an MSR outside the allowlist).
//!
//! The `current` snapshot always covers a subset of the saved CPUs and, as its allowlist, the
//! saved MSRs that the allowlist in effect now still lists, with the masks in effect now.

use serde::Serialize;

use crate::device::OpError;
use crate::msrs::msr_name;
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
    }
}
