//! Restore order: which register is written before which.
//!
//! A restore writes each register once, with every saved field in one write, so the order of
//! fields inside one register never matters; the order between registers does where one
//! register enables or validates another. [`ranks`] turns the rules into a rank per allowlist
//! entry; the restore writes lower ranks first ([`crate::plan`] keeps it, a property test checks
//! it).

use super::scope::Cpus;
use crate::types::{CpuIdentity, MsrAddr};

/// `first..=first_last` are written before `then..=then_last` on `cpus`.
#[derive(Clone, Copy, Debug)]
pub struct Rule {
    pub first: (u32, u32),
    pub then: (u32, u32),
    pub cpus: Cpus,
    pub why: &'static str,
}

use Cpus::{AmdFamilies, Intel};

const COUNTERS_BEFORE_ENABLE: &str = "the global enable is written last, so that counters resume only once their values and event selections are back";

/// The rules. Each one cites its manual; a test checks they form no cycle.
pub static RULES: &[Rule] = &[
    // Intel SDM vol. 3B §20.2.2 (architectural performance monitoring v2): IA32_PERF_GLOBAL_CTRL
    // (0x38F) enables the general-purpose counters (IA32_PMCx 0xC1-0xC8, full-width IA32_A_PMCx
    // 0x4C1-0x4C8) selected by IA32_PERFEVTSELx (0x186-0x18D) and the fixed counters
    // (0x309-0x30C) controlled by IA32_FIXED_CTR_CTRL (0x38D).
    Rule {
        first: (0xC1, 0xC8),
        then: (0x38F, 0x38F),
        cpus: Intel,
        why: COUNTERS_BEFORE_ENABLE,
    },
    Rule {
        first: (0x186, 0x18D),
        then: (0x38F, 0x38F),
        cpus: Intel,
        why: COUNTERS_BEFORE_ENABLE,
    },
    Rule {
        first: (0x309, 0x30C),
        then: (0x38F, 0x38F),
        cpus: Intel,
        why: COUNTERS_BEFORE_ENABLE,
    },
    Rule {
        first: (0x38D, 0x38D),
        then: (0x38F, 0x38F),
        cpus: Intel,
        why: COUNTERS_BEFORE_ENABLE,
    },
    Rule {
        first: (0x4C1, 0x4C8),
        then: (0x38F, 0x38F),
        cpus: Intel,
        why: COUNTERS_BEFORE_ENABLE,
    },
    // SDM vol. 3B §15.4.2 (enabling HWP): while IA32_PM_ENABLE.HWP_ENABLE (0x770 bit 0) is
    // clear, the other HWP MSRs (IA32_HWP_REQUEST_PKG 0x772, IA32_HWP_INTERRUPT 0x773,
    // IA32_HWP_REQUEST 0x774) fault.
    Rule {
        first: (0x770, 0x770),
        then: (0x772, 0x774),
        cpus: Intel,
        why: "HWP must be enabled before its request and interrupt registers accept a write",
    },
    // AMD64 APM vol. 2 (24593) §13.2.1 and the PPRs for families 17h-1Ah: a counter
    // (PERF_CTR 0xC0010004-7) counts once its control (PERF_CTL 0xC0010000-3) has En set.
    Rule {
        first: (0xC001_0004, 0xC001_0007),
        then: (0xC001_0000, 0xC001_0003),
        cpus: AmdFamilies(0x10, 0x1A),
        why: "a counter is put back before the control that enables it",
    },
    // PPR for families 17h (54945) and 19h (55898): MSR C001_0062 [P-state Control] selects one
    // of the P-states that C001_0064-C001_006B define.
    Rule {
        first: (0xC001_0064, 0xC001_006B),
        then: (0xC001_0062, 0xC001_0062),
        cpus: AmdFamilies(0x17, 0x1A),
        why: "P-state definitions are put back before the P-state is selected",
    },
];

/// The rules that apply on a CPU of `cpu`'s kind.
pub fn rules_for(cpu: Option<&CpuIdentity>) -> impl Iterator<Item = &'static Rule> + '_ {
    RULES
        .iter()
        .filter(move |r| cpu.is_some_and(|id| r.cpus.matches(id)))
}

/// The pairs `(i, j)` of `addrs` indexes where a rule puts `addrs[i]` before `addrs[j]`.
pub fn edges(cpu: Option<&CpuIdentity>, addrs: &[MsrAddr]) -> Vec<(usize, usize)> {
    let within = |a: MsrAddr, (lo, hi): (u32, u32)| (lo..=hi).contains(&a.0);
    let mut edges: Vec<(usize, usize)> = Vec::new();
    for rule in rules_for(cpu) {
        let firsts: Vec<usize> = (0..addrs.len())
            .filter(|&i| within(addrs[i], rule.first))
            .collect();
        if firsts.is_empty() {
            continue;
        }
        for j in (0..addrs.len()).filter(|&j| within(addrs[j], rule.then)) {
            edges.extend(firsts.iter().map(|&i| (i, j)));
        }
    }
    edges
}

/// The longest path to each of `n` nodes over acyclic `edges`, `weight(i, j)` per edge.
pub fn longest_paths(
    n: usize,
    edges: &[(usize, usize)],
    weight: impl Fn(usize, usize) -> u32,
) -> Vec<u32> {
    let mut rank = vec![0u32; n];
    // Without a cycle, a longest path has at most n edges: n passes settle every rank.
    for _ in 0..=n {
        let mut moved = false;
        for &(i, j) in edges {
            let r = rank[i] + weight(i, j);
            if rank[j] < r {
                rank[j] = r;
                moved = true;
            }
        }
        if !moved {
            break;
        }
    }
    rank
}

/// A rank for each of `addrs`: every rule's `first` has a lower rank than its `then`; MSRs no rule
/// names have rank 0. Unknown CPU: every rank 0.
pub fn ranks(cpu: Option<&CpuIdentity>, addrs: &[MsrAddr]) -> Vec<u32> {
    longest_paths(addrs.len(), &edges(cpu, addrs), |_, _| 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::msrs::models::Vendor;
    const INTEL: &str = Vendor::Intel.vendor_id();
    const AMD: &str = Vendor::Amd.vendor_id();

    fn id(vendor: &str, family: u32) -> CpuIdentity {
        CpuIdentity {
            vendor: vendor.into(),
            family,
            model: 1,
        }
    }

    #[test]
    fn the_rules_have_no_cycle_and_ranks_follow_them() {
        for cpu in [id(INTEL, 6), id(AMD, 0x19)] {
            // Every address any rule names, once.
            let mut addrs: Vec<MsrAddr> = RULES
                .iter()
                .flat_map(|r| (r.first.0..=r.first.1).chain(r.then.0..=r.then.1))
                .map(MsrAddr)
                .collect();
            addrs.sort_unstable();
            addrs.dedup();
            let rank = ranks(Some(&cpu), &addrs);
            assert!(
                rank.iter().all(|&r| (r as usize) <= RULES.len()),
                "a cycle: {rank:?}"
            );
            for rule in rules_for(Some(&cpu)) {
                for (i, a) in addrs.iter().enumerate() {
                    for (j, b) in addrs.iter().enumerate() {
                        if (rule.first.0..=rule.first.1).contains(&a.0)
                            && (rule.then.0..=rule.then.1).contains(&b.0)
                        {
                            assert!(rank[i] < rank[j], "{a} before {b}: {}", rule.why);
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn the_global_enable_comes_last_and_unknown_cpus_have_no_order() {
        let addrs = [0x38F, 0xC1, 0x199, 0x186].map(MsrAddr);
        assert_eq!(ranks(Some(&id(INTEL, 6)), &addrs), [1, 0, 0, 0]);
        assert_eq!(ranks(None, &addrs), [0, 0, 0, 0]);
        assert_eq!(ranks(Some(&id(AMD, 0x19)), &addrs), [0, 0, 0, 0]);
    }
}
