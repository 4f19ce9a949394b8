//! Which CPUs share one register: the scope of an MSR, per vendor and family.
//!
//! Many MSRs are not per logical CPU: a package power limit is one register of the package, read
//! and written the same from every CPU of it. A restore writes such a register once per domain
//! and a report names it once per domain ([`crate::restore`]).
//!
//! The table is conservative: a scope is recorded only where the vendor's manual says so, and
//! where in doubt the smaller domain is taken. A scope smaller than the truth costs writes of the
//! same value more than once; a larger one would miss writes. So:
//! - an MSR not in the table is per thread;
//! - registers the SDM gives as "Package" are recorded here per *die*: on packages of several
//!   dies (Cascade Lake-AP) Linux's RAPL, uncore-frequency and package-thermal drivers use one
//!   instance per die, and on every other package a die is the package;
//! - no module scope is recorded (Atom modules and AMD compute units are left per core or
//!   thread).

use serde::{Deserialize, Serialize};

use super::models::Vendor;
use crate::types::{CpuIdentity, MsrAddr};

/// The CPUs that share one instance of a register, from the smallest domain to the largest.
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Default,
    Serialize,
    Deserialize,
    schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// One register per logical CPU (hardware thread).
    #[default]
    Thread,
    /// One per core: shared by its hardware threads.
    Core,
    /// One per module (cluster of cores sharing an L2).
    Module,
    /// One per die.
    Die,
    /// One per package (socket).
    Package,
}

impl Scope {
    pub const ALL: [Scope; 5] = [
        Scope::Thread,
        Scope::Core,
        Scope::Module,
        Scope::Die,
        Scope::Package,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Scope::Thread => "thread",
            Scope::Core => "core",
            Scope::Module => "module",
            Scope::Die => "die",
            Scope::Package => "package",
        }
    }
}

impl std::fmt::Display for Scope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The CPUs a row of a table applies to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cpus {
    /// Intel, any family.
    Intel,
    /// Intel family 6 (every Core, Xeon and Atom since 2006), any model.
    IntelFamily6,
    /// AMD, families `lo..=hi` (0x17 Zen 1/2, 0x19 Zen 3/4, 0x1A Zen 5).
    AmdFamilies(u32, u32),
}

impl Cpus {
    pub fn matches(self, id: &CpuIdentity) -> bool {
        let intel = id.vendor == Vendor::Intel.vendor_id();
        let amd = id.vendor == Vendor::Amd.vendor_id();
        match self {
            Cpus::Intel => intel,
            Cpus::IntelFamily6 => intel && id.family == 6,
            Cpus::AmdFamilies(lo, hi) => amd && (lo..=hi).contains(&id.family),
        }
    }
}

/// One row: the MSRs `first..=last` have `scope` on `cpus`.
#[derive(Clone, Copy, Debug)]
pub struct ScopeRow {
    pub first: u32,
    pub last: u32,
    pub cpus: Cpus,
    pub scope: Scope,
}

const fn row(first: u32, last: u32, cpus: Cpus, scope: Scope) -> ScopeRow {
    ScopeRow {
        first,
        last,
        cpus,
        scope,
    }
}

use Cpus::{AmdFamilies, IntelFamily6};
use Scope::{Core, Die};

/// Every MSR with a scope larger than a thread. Sorted by address; the rows of one vendor do not
/// overlap (a test checks both).
pub static SCOPES: &[ScopeRow] = &[
    // Intel SDM vol. 4 (335592-079US), Table 2-20 (Sandy Bridge, inherited by every later
    // family-6 table that lists them): MSR_PLATFORM_INFO (0xCE) is "Package".
    row(0xCE, 0xCE, IntelFamily6, Die),
    // Same table: MSR_PKG_CST_CONFIG_CONTROL (0xE2) "Core".
    row(0xE2, 0xE2, IntelFamily6, Core),
    // Same table: IA32_THERM_INTERRUPT (0x19B), IA32_THERM_STATUS (0x19C) "Core".
    row(0x19B, 0x19C, IntelFamily6, Core),
    // Tables 2-19/2-20 (Sandy Bridge) and later: MSR_TURBO_RATIO_LIMIT (0x1AD) and, where
    // present, MSR_TURBO_RATIO_LIMIT1/2 or _CORES (0x1AE, 0x1AF) "Package".
    row(0x1AD, 0x1AF, IntelFamily6, Die),
    // Table 2-20: IA32_PACKAGE_THERM_STATUS (0x1B1), IA32_PACKAGE_THERM_INTERRUPT (0x1B2)
    // "Package".
    row(0x1B1, 0x1B2, IntelFamily6, Die),
    // Table 2-20: package C-state residency counters (0x3F8-0x3FA) "Package"; core ones
    // (0x3FC-0x3FE) "Core".
    row(0x3F8, 0x3FA, IntelFamily6, Die),
    row(0x3FC, 0x3FE, IntelFamily6, Core),
    // Table 2-20 and the Xeon tables (2-24 E5 v1, 2-36 E5 v3, 2-52 Sapphire Rapids): the RAPL
    // interface "Package": MSR_RAPL_POWER_UNIT (0x606), package C-state interrupt response
    // limits and C2 residency (0x60A-0x60D), MSR_PKG_POWER_LIMIT, _ENERGY_STATUS (0x610, 0x611),
    // MSR_PKG_PERF_STATUS, _POWER_INFO (0x613, 0x614), MSR_DRAM_POWER_LIMIT, _ENERGY_STATUS
    // (0x618, 0x619), MSR_DRAM_PERF_STATUS, _POWER_INFO (0x61B, 0x61C).
    row(0x606, 0x606, IntelFamily6, Die),
    row(0x60A, 0x60D, IntelFamily6, Die),
    row(0x610, 0x611, IntelFamily6, Die),
    row(0x613, 0x614, IntelFamily6, Die),
    row(0x618, 0x619, IntelFamily6, Die),
    row(0x61B, 0x61C, IntelFamily6, Die),
    // Table 2-36 (Xeon E5 v3) and later Xeons: MSR_UNCORE_RATIO_LIMIT (0x620),
    // MSR_UNCORE_PERF_STATUS (0x621) "Package" (Linux's intel-uncore-frequency: one per die).
    row(0x620, 0x621, IntelFamily6, Die),
    // Table 2-29 and later (Haswell): MSR_PKG_C8..C10_RESIDENCY (0x630-0x632) "Package".
    row(0x630, 0x632, IntelFamily6, Die),
    // Tables 2-20, 2-21: RAPL PP0 (0x638-0x63A) and PP1 (0x640-0x642) planes "Package".
    row(0x638, 0x63A, IntelFamily6, Die),
    row(0x640, 0x642, IntelFamily6, Die),
    // Table 2-29 (Ivy Bridge) and later: ConfigTDP (0x648-0x64C) "Package"; Skylake tables:
    // MSR_PLATFORM_ENERGY_STATUS (0x64D), MSR_CORE_PERF_LIMIT_REASONS (0x64F) "Package".
    row(0x648, 0x64D, IntelFamily6, Die),
    row(0x64F, 0x64F, IntelFamily6, Die),
    // Table 2-52 (Sapphire Rapids) and the Skylake tables: MSR_PLATFORM_POWER_LIMIT (0x65C)
    // "Package" (Platform on clients).
    row(0x65C, 0x65C, IntelFamily6, Die),
    // Perf limit reasons of later Xeons (0x690 core, 0x6B0 graphics, 0x6B1 ring) "Package".
    row(0x690, 0x690, IntelFamily6, Die),
    row(0x6B0, 0x6B1, IntelFamily6, Die),
    // SDM vol. 3B §15.4.4: IA32_HWP_REQUEST_PKG (0x772) holds the hints of every logical
    // processor of the package.
    row(0x772, 0x772, IntelFamily6, Die),
    // AMD PPR for family 17h (54945) and 19h (55898), RAPL: MSR C001_029A core energy status
    // per core, C001_029B package energy status per socket.
    row(0xC001_029A, 0xC001_029A, AmdFamilies(0x17, 0x1A), Core),
    row(0xC001_029B, 0xC001_029B, AmdFamilies(0x17, 0x1A), Die),
];

/// The scope of `addr` on a CPU of `cpu`'s kind; a thread when the CPU or the MSR is unknown.
pub fn scope_of(cpu: Option<&CpuIdentity>, addr: MsrAddr) -> Scope {
    let Some(id) = cpu else {
        return Scope::Thread;
    };
    SCOPES
        .iter()
        .find(|r| (r.first..=r.last).contains(&addr.0) && r.cpus.matches(id))
        .map_or(Scope::Thread, |r| r.scope)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn intel(model: u32) -> CpuIdentity {
        CpuIdentity {
            vendor: Vendor::Intel.vendor_id().into(),
            family: 6,
            model,
        }
    }

    #[test]
    fn table_is_sorted_and_rows_do_not_overlap() {
        for r in SCOPES {
            assert!(r.first <= r.last, "{r:?}");
            assert_ne!(r.scope, Scope::Thread, "a thread row says nothing: {r:?}");
        }
        for w in SCOPES.windows(2) {
            assert!(w[0].last < w[1].first, "{:?} then {:?}", w[0], w[1]);
        }
    }

    #[test]
    fn power_limits_are_per_die_controls_per_thread_unknown_per_thread() {
        let spr = intel(0x8F);
        for a in [0x610, 0x618, 0x620, 0x65C, 0x1AD, 0x1AE] {
            assert_eq!(scope_of(Some(&spr), MsrAddr(a)), Scope::Die, "{a:#x}");
        }
        for a in [0xE2, 0x19B, 0x19C] {
            assert_eq!(scope_of(Some(&spr), MsrAddr(a)), Scope::Core, "{a:#x}");
        }
        // Per logical processor by the SDM (vol. 3B §15.3.4 for EPB), or simply per thread.
        for a in [
            0x199, 0x19A, 0x1B0, 0x38F, 0xC1, 0x186, 0x1A6, 0x600, 0x774, 0x12345,
        ] {
            assert_eq!(scope_of(Some(&spr), MsrAddr(a)), Scope::Thread, "{a:#x}");
        }
        // Unknown CPU, other vendor: per thread.
        assert_eq!(scope_of(None, MsrAddr(0x610)), Scope::Thread);
        let milan = CpuIdentity {
            vendor: Vendor::Amd.vendor_id().into(),
            family: 0x19,
            model: 1,
        };
        assert_eq!(scope_of(Some(&milan), MsrAddr(0x610)), Scope::Thread);
        assert_eq!(scope_of(Some(&milan), MsrAddr(0xC001029B)), Scope::Die);
        let p4 = CpuIdentity {
            family: 0xF,
            ..intel(2)
        };
        assert_eq!(scope_of(Some(&p4), MsrAddr(0x610)), Scope::Thread);
    }
}
