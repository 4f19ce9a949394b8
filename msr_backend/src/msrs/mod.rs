//! Names of well-known MSRs, for entries whose allowlist line has no name comment and for
//! reports. A compact table: the architectural Intel MSRs (SDM vol. 4, table 2-2), the
//! model-specific ones that HPC sites tune (RAPL limits, uncore ratio, prefetchers, turbo) and the
//! AMD core, L3 and data-fabric counters. Names follow the SDM, or Linux's `msr-index.h` for AMD
//! where the PPR has no short name.
//!
//! The table also records which MSRs are read-only (or are free-running clocks such as the TSC,
//! APERF and MPERF, which a restore must never write back): the allowlist lint warns about a
//! write mask on one of those.

pub mod fields;
pub mod lock;
pub mod models;
pub mod order;
pub mod scope;

use crate::types::MsrAddr;

/// One row of the table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KnownMsr {
    pub addr: u32,
    pub name: &'static str,
    /// Read-only, or a free-running clock whose value must never be written back.
    pub read_only: bool,
}

const fn rw(addr: u32, name: &'static str) -> KnownMsr {
    KnownMsr {
        addr,
        name,
        read_only: false,
    }
}

const fn ro(addr: u32, name: &'static str) -> KnownMsr {
    KnownMsr {
        addr,
        name,
        read_only: true,
    }
}

/// Sorted by address, one row per address (a test checks both), so lookups are a binary search.
pub static KNOWN_MSRS: &[KnownMsr] = &[
    rw(0x0, "IA32_P5_MC_ADDR"),
    rw(0x1, "IA32_P5_MC_TYPE"),
    rw(0x6, "IA32_MONITOR_FILTER_SIZE"),
    ro(0x10, "IA32_TIME_STAMP_COUNTER"),
    ro(0x17, "IA32_PLATFORM_ID"),
    rw(0x1B, "IA32_APIC_BASE"),
    ro(0x34, "MSR_SMI_COUNT"),
    rw(0x3A, "IA32_FEATURE_CONTROL"),
    rw(0x3B, "IA32_TSC_ADJUST"),
    rw(0x48, "IA32_SPEC_CTRL"),
    rw(0x49, "IA32_PRED_CMD"),
    rw(0x4E, "MSR_PPIN_CTL"),
    ro(0x4F, "MSR_PPIN"),
    rw(0x79, "IA32_BIOS_UPDT_TRIG"),
    rw(0x8B, "IA32_BIOS_SIGN_ID"),
    rw(0xC1, "IA32_PMC0"),
    rw(0xC2, "IA32_PMC1"),
    rw(0xC3, "IA32_PMC2"),
    rw(0xC4, "IA32_PMC3"),
    rw(0xC5, "IA32_PMC4"),
    rw(0xC6, "IA32_PMC5"),
    rw(0xC7, "IA32_PMC6"),
    rw(0xC8, "IA32_PMC7"),
    ro(0xCE, "MSR_PLATFORM_INFO"),
    rw(0xE2, "MSR_PKG_CST_CONFIG_CONTROL"),
    ro(0xE7, "IA32_MPERF"),
    ro(0xE8, "IA32_APERF"),
    ro(0xFE, "IA32_MTRRCAP"),
    ro(0x10A, "IA32_ARCH_CAPABILITIES"),
    rw(0x174, "IA32_SYSENTER_CS"),
    rw(0x175, "IA32_SYSENTER_ESP"),
    rw(0x176, "IA32_SYSENTER_EIP"),
    ro(0x179, "IA32_MCG_CAP"),
    rw(0x17A, "IA32_MCG_STATUS"),
    rw(0x17B, "IA32_MCG_CTL"),
    rw(0x186, "IA32_PERFEVTSEL0"),
    rw(0x187, "IA32_PERFEVTSEL1"),
    rw(0x188, "IA32_PERFEVTSEL2"),
    rw(0x189, "IA32_PERFEVTSEL3"),
    rw(0x18A, "IA32_PERFEVTSEL4"),
    rw(0x18B, "IA32_PERFEVTSEL5"),
    rw(0x18C, "IA32_PERFEVTSEL6"),
    rw(0x18D, "IA32_PERFEVTSEL7"),
    ro(0x198, "IA32_PERF_STATUS"),
    rw(0x199, "IA32_PERF_CTL"),
    rw(0x19A, "IA32_CLOCK_MODULATION"),
    rw(0x19B, "IA32_THERM_INTERRUPT"),
    rw(0x19C, "IA32_THERM_STATUS"),
    rw(0x1A0, "IA32_MISC_ENABLE"),
    rw(0x1A2, "MSR_TEMPERATURE_TARGET"),
    rw(0x1A4, "MSR_MISC_FEATURE_CONTROL"),
    rw(0x1A6, "MSR_OFFCORE_RSP_0"),
    rw(0x1A7, "MSR_OFFCORE_RSP_1"),
    rw(0x1AD, "MSR_TURBO_RATIO_LIMIT"),
    rw(0x1AE, "MSR_TURBO_RATIO_LIMIT1"),
    rw(0x1AF, "MSR_TURBO_RATIO_LIMIT2"),
    rw(0x1B0, "IA32_ENERGY_PERF_BIAS"),
    rw(0x1B1, "IA32_PACKAGE_THERM_STATUS"),
    rw(0x1B2, "IA32_PACKAGE_THERM_INTERRUPT"),
    rw(0x1D9, "IA32_DEBUGCTL"),
    rw(0x1F2, "IA32_SMRR_PHYSBASE"),
    rw(0x1F3, "IA32_SMRR_PHYSMASK"),
    rw(0x1FC, "MSR_POWER_CTL"),
    rw(0x200, "IA32_MTRR_PHYSBASE0"),
    rw(0x201, "IA32_MTRR_PHYSMASK0"),
    rw(0x202, "IA32_MTRR_PHYSBASE1"),
    rw(0x203, "IA32_MTRR_PHYSMASK1"),
    rw(0x204, "IA32_MTRR_PHYSBASE2"),
    rw(0x205, "IA32_MTRR_PHYSMASK2"),
    rw(0x206, "IA32_MTRR_PHYSBASE3"),
    rw(0x207, "IA32_MTRR_PHYSMASK3"),
    rw(0x208, "IA32_MTRR_PHYSBASE4"),
    rw(0x209, "IA32_MTRR_PHYSMASK4"),
    rw(0x20A, "IA32_MTRR_PHYSBASE5"),
    rw(0x20B, "IA32_MTRR_PHYSMASK5"),
    rw(0x20C, "IA32_MTRR_PHYSBASE6"),
    rw(0x20D, "IA32_MTRR_PHYSMASK6"),
    rw(0x20E, "IA32_MTRR_PHYSBASE7"),
    rw(0x20F, "IA32_MTRR_PHYSMASK7"),
    rw(0x210, "IA32_MTRR_PHYSBASE8"),
    rw(0x211, "IA32_MTRR_PHYSMASK8"),
    rw(0x212, "IA32_MTRR_PHYSBASE9"),
    rw(0x213, "IA32_MTRR_PHYSMASK9"),
    rw(0x214, "IA32_MTRR_PHYSBASE10"),
    rw(0x215, "IA32_MTRR_PHYSMASK10"),
    rw(0x216, "IA32_MTRR_PHYSBASE11"),
    rw(0x217, "IA32_MTRR_PHYSMASK11"),
    rw(0x218, "IA32_MTRR_PHYSBASE12"),
    rw(0x219, "IA32_MTRR_PHYSMASK12"),
    rw(0x21A, "IA32_MTRR_PHYSBASE13"),
    rw(0x21B, "IA32_MTRR_PHYSMASK13"),
    rw(0x21C, "IA32_MTRR_PHYSBASE14"),
    rw(0x21D, "IA32_MTRR_PHYSMASK14"),
    rw(0x21E, "IA32_MTRR_PHYSBASE15"),
    rw(0x21F, "IA32_MTRR_PHYSMASK15"),
    rw(0x250, "IA32_MTRR_FIX64K_00000"),
    rw(0x258, "IA32_MTRR_FIX16K_80000"),
    rw(0x259, "IA32_MTRR_FIX16K_A0000"),
    rw(0x268, "IA32_MTRR_FIX4K_C0000"),
    rw(0x269, "IA32_MTRR_FIX4K_C8000"),
    rw(0x26A, "IA32_MTRR_FIX4K_D0000"),
    rw(0x26B, "IA32_MTRR_FIX4K_D8000"),
    rw(0x26C, "IA32_MTRR_FIX4K_E0000"),
    rw(0x26D, "IA32_MTRR_FIX4K_E8000"),
    rw(0x26E, "IA32_MTRR_FIX4K_F0000"),
    rw(0x26F, "IA32_MTRR_FIX4K_F8000"),
    rw(0x277, "IA32_PAT"),
    rw(0x2FF, "IA32_MTRR_DEF_TYPE"),
    rw(0x309, "IA32_FIXED_CTR0"),
    rw(0x30A, "IA32_FIXED_CTR1"),
    rw(0x30B, "IA32_FIXED_CTR2"),
    rw(0x30C, "IA32_FIXED_CTR3"),
    ro(0x345, "IA32_PERF_CAPABILITIES"),
    rw(0x38D, "IA32_FIXED_CTR_CTRL"),
    ro(0x38E, "IA32_PERF_GLOBAL_STATUS"),
    rw(0x38F, "IA32_PERF_GLOBAL_CTRL"),
    rw(0x390, "IA32_PERF_GLOBAL_OVF_CTRL"),
    rw(0x3F1, "IA32_PEBS_ENABLE"),
    rw(0x3F6, "MSR_PEBS_LD_LAT"),
    ro(0x3F8, "MSR_PKG_C3_RESIDENCY"),
    ro(0x3F9, "MSR_PKG_C6_RESIDENCY"),
    ro(0x3FA, "MSR_PKG_C7_RESIDENCY"),
    ro(0x3FC, "MSR_CORE_C3_RESIDENCY"),
    ro(0x3FD, "MSR_CORE_C6_RESIDENCY"),
    ro(0x3FE, "MSR_CORE_C7_RESIDENCY"),
    rw(0x600, "IA32_DS_AREA"),
    ro(0x606, "MSR_RAPL_POWER_UNIT"),
    ro(0x60D, "MSR_PKG_C2_RESIDENCY"),
    rw(0x610, "MSR_PKG_POWER_LIMIT"),
    ro(0x611, "MSR_PKG_ENERGY_STATUS"),
    ro(0x613, "MSR_PKG_PERF_STATUS"),
    ro(0x614, "MSR_PKG_POWER_INFO"),
    rw(0x618, "MSR_DRAM_POWER_LIMIT"),
    ro(0x619, "MSR_DRAM_ENERGY_STATUS"),
    ro(0x61B, "MSR_DRAM_PERF_STATUS"),
    ro(0x61C, "MSR_DRAM_POWER_INFO"),
    rw(0x620, "MSR_UNCORE_RATIO_LIMIT"),
    ro(0x621, "MSR_UNCORE_PERF_STATUS"),
    rw(0x638, "MSR_PP0_POWER_LIMIT"),
    ro(0x639, "MSR_PP0_ENERGY_STATUS"),
    rw(0x63A, "MSR_PP0_POLICY"),
    rw(0x640, "MSR_PP1_POWER_LIMIT"),
    ro(0x641, "MSR_PP1_ENERGY_STATUS"),
    rw(0x642, "MSR_PP1_POLICY"),
    ro(0x64D, "MSR_PLATFORM_ENERGY_STATUS"),
    ro(0x64E, "MSR_PPERF"),
    rw(0x64F, "MSR_CORE_PERF_LIMIT_REASONS"),
    rw(0x65C, "MSR_PLATFORM_POWER_LIMIT"),
    rw(0x6E0, "IA32_TSC_DEADLINE"),
    rw(0x770, "IA32_PM_ENABLE"),
    ro(0x771, "IA32_HWP_CAPABILITIES"),
    rw(0x772, "IA32_HWP_REQUEST_PKG"),
    rw(0x773, "IA32_HWP_INTERRUPT"),
    rw(0x774, "IA32_HWP_REQUEST"),
    rw(0x777, "IA32_HWP_STATUS"),
    rw(0xC8D, "IA32_QM_EVTSEL"),
    ro(0xC8E, "IA32_QM_CTR"),
    rw(0xC8F, "IA32_PQR_ASSOC"),
    rw(0xD90, "IA32_BNDCFGS"),
    rw(0xDA0, "IA32_XSS"),
    rw(0xC0000080, "IA32_EFER"),
    rw(0xC0000081, "IA32_STAR"),
    rw(0xC0000082, "IA32_LSTAR"),
    rw(0xC0000083, "IA32_CSTAR"),
    rw(0xC0000084, "IA32_FMASK"),
    ro(0xC00000E7, "MSR_AMD_MPERF_RO"),
    ro(0xC00000E8, "MSR_AMD_APERF_RO"),
    ro(0xC00000E9, "MSR_AMD_IRPERF_COUNT"),
    rw(0xC0000100, "IA32_FS_BASE"),
    rw(0xC0000101, "IA32_GS_BASE"),
    rw(0xC0000102, "IA32_KERNEL_GS_BASE"),
    rw(0xC0000103, "IA32_TSC_AUX"),
    rw(0xC0000104, "MSR_AMD_TSC_RATIO"),
    rw(0xC0010000, "MSR_K7_EVNTSEL0"),
    rw(0xC0010001, "MSR_K7_EVNTSEL1"),
    rw(0xC0010002, "MSR_K7_EVNTSEL2"),
    rw(0xC0010003, "MSR_K7_EVNTSEL3"),
    rw(0xC0010004, "MSR_K7_PERFCTR0"),
    rw(0xC0010005, "MSR_K7_PERFCTR1"),
    rw(0xC0010006, "MSR_K7_PERFCTR2"),
    rw(0xC0010007, "MSR_K7_PERFCTR3"),
    rw(0xC0010010, "MSR_AMD_SYSCFG"),
    rw(0xC0010015, "MSR_AMD_HWCR"),
    ro(0xC0010061, "MSR_AMD_PSTATE_CURRENT_LIMIT"),
    rw(0xC0010062, "MSR_AMD_PSTATE_CTL"),
    ro(0xC0010063, "MSR_AMD_PSTATE_STATUS"),
    rw(0xC0010064, "MSR_AMD_PSTATE_DEF0"),
    rw(0xC0010065, "MSR_AMD_PSTATE_DEF1"),
    rw(0xC0010066, "MSR_AMD_PSTATE_DEF2"),
    rw(0xC0010067, "MSR_AMD_PSTATE_DEF3"),
    rw(0xC0010068, "MSR_AMD_PSTATE_DEF4"),
    rw(0xC0010069, "MSR_AMD_PSTATE_DEF5"),
    rw(0xC001006A, "MSR_AMD_PSTATE_DEF6"),
    rw(0xC001006B, "MSR_AMD_PSTATE_DEF7"),
    rw(0xC0010200, "MSR_F15H_PERF_CTL0"),
    rw(0xC0010201, "MSR_F15H_PERF_CTR0"),
    rw(0xC0010202, "MSR_F15H_PERF_CTL1"),
    rw(0xC0010203, "MSR_F15H_PERF_CTR1"),
    rw(0xC0010204, "MSR_F15H_PERF_CTL2"),
    rw(0xC0010205, "MSR_F15H_PERF_CTR2"),
    rw(0xC0010206, "MSR_F15H_PERF_CTL3"),
    rw(0xC0010207, "MSR_F15H_PERF_CTR3"),
    rw(0xC0010208, "MSR_F15H_PERF_CTL4"),
    rw(0xC0010209, "MSR_F15H_PERF_CTR4"),
    rw(0xC001020A, "MSR_F15H_PERF_CTL5"),
    rw(0xC001020B, "MSR_F15H_PERF_CTR5"),
    rw(0xC0010230, "MSR_AMD_L3_PERF_CTL0"),
    rw(0xC0010231, "MSR_AMD_L3_PERF_CTR0"),
    rw(0xC0010232, "MSR_AMD_L3_PERF_CTL1"),
    rw(0xC0010233, "MSR_AMD_L3_PERF_CTR1"),
    rw(0xC0010234, "MSR_AMD_L3_PERF_CTL2"),
    rw(0xC0010235, "MSR_AMD_L3_PERF_CTR2"),
    rw(0xC0010236, "MSR_AMD_L3_PERF_CTL3"),
    rw(0xC0010237, "MSR_AMD_L3_PERF_CTR3"),
    rw(0xC0010238, "MSR_AMD_L3_PERF_CTL4"),
    rw(0xC0010239, "MSR_AMD_L3_PERF_CTR4"),
    rw(0xC001023A, "MSR_AMD_L3_PERF_CTL5"),
    rw(0xC001023B, "MSR_AMD_L3_PERF_CTR5"),
    rw(0xC0010240, "MSR_AMD_DF_PERF_CTL0"),
    rw(0xC0010241, "MSR_AMD_DF_PERF_CTR0"),
    rw(0xC0010242, "MSR_AMD_DF_PERF_CTL1"),
    rw(0xC0010243, "MSR_AMD_DF_PERF_CTR1"),
    rw(0xC0010244, "MSR_AMD_DF_PERF_CTL2"),
    rw(0xC0010245, "MSR_AMD_DF_PERF_CTR2"),
    rw(0xC0010246, "MSR_AMD_DF_PERF_CTL3"),
    rw(0xC0010247, "MSR_AMD_DF_PERF_CTR3"),
    ro(0xC0010299, "MSR_AMD_RAPL_POWER_UNIT"),
    ro(0xC001029A, "MSR_AMD_CORE_ENERGY_STATUS"),
    ro(0xC001029B, "MSR_AMD_PKG_ENERGY_STATUS"),
    rw(0xC00102F0, "MSR_AMD_PPIN_CTL"),
    ro(0xC00102F1, "MSR_AMD_PPIN"),
];

/// The table row of `addr`, if it is a well-known MSR.
pub fn known_msr(addr: MsrAddr) -> Option<&'static KnownMsr> {
    KNOWN_MSRS
        .binary_search_by_key(&addr.0, |m| m.addr)
        .ok()
        .map(|i| &KNOWN_MSRS[i])
}

/// The usual name of a well-known MSR (`0x199` -> `IA32_PERF_CTL`).
pub fn msr_name(addr: MsrAddr) -> Option<&'static str> {
    known_msr(addr).map(|m| m.name)
}

/// True for MSRs that are read-only or must never be written back (TSC, APERF, MPERF, energy
/// and status counters, capability registers). Unknown MSRs give false.
pub fn is_read_only(addr: MsrAddr) -> bool {
    known_msr(addr).is_some_and(|m| m.read_only)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_is_sorted_and_unique() {
        for w in KNOWN_MSRS.windows(2) {
            assert!(
                w[0].addr < w[1].addr,
                "{:#x} ({}) is not before {:#x} ({})",
                w[0].addr,
                w[0].name,
                w[1].addr,
                w[1].name
            );
        }
        let mut names: Vec<&str> = KNOWN_MSRS.iter().map(|m| m.name).collect();
        names.sort_unstable();
        let n = names.len();
        names.dedup();
        assert_eq!(names.len(), n, "a name is used for two addresses");
        assert!(KNOWN_MSRS.iter().all(|m| !m.name.is_empty()
            && m.name
                .bytes()
                .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')));
    }

    #[test]
    fn well_known_names() {
        let cases = [
            (0x10, "IA32_TIME_STAMP_COUNTER"),
            (0xC1, "IA32_PMC0"),
            (0xC8, "IA32_PMC7"),
            (0x174, "IA32_SYSENTER_CS"),
            (0x186, "IA32_PERFEVTSEL0"),
            (0x18D, "IA32_PERFEVTSEL7"),
            (0x199, "IA32_PERF_CTL"),
            (0x1A4, "MSR_MISC_FEATURE_CONTROL"),
            (0x1B0, "IA32_ENERGY_PERF_BIAS"),
            (0x200, "IA32_MTRR_PHYSBASE0"),
            (0x21F, "IA32_MTRR_PHYSMASK15"),
            (0x277, "IA32_PAT"),
            (0x38D, "IA32_FIXED_CTR_CTRL"),
            (0x38F, "IA32_PERF_GLOBAL_CTRL"),
            (0x610, "MSR_PKG_POWER_LIMIT"),
            (0x618, "MSR_DRAM_POWER_LIMIT"),
            (0x620, "MSR_UNCORE_RATIO_LIMIT"),
            (0x638, "MSR_PP0_POWER_LIMIT"),
            (0x774, "IA32_HWP_REQUEST"),
            (0xC0000103, "IA32_TSC_AUX"),
            (0xC0010000, "MSR_K7_EVNTSEL0"),
            (0xC0010007, "MSR_K7_PERFCTR3"),
            (0xC0010200, "MSR_F15H_PERF_CTL0"),
            (0xC001020B, "MSR_F15H_PERF_CTR5"),
        ];
        for (addr, name) in cases {
            assert_eq!(msr_name(MsrAddr(addr)), Some(name), "{addr:#x}");
        }
        assert_eq!(msr_name(MsrAddr(0x12345)), None);
        assert!(is_read_only(MsrAddr(0x10)));
        assert!(is_read_only(MsrAddr(0xE7)));
        assert!(is_read_only(MsrAddr(0xE8)));
        assert!(!is_read_only(MsrAddr(0x199)));
        assert!(!is_read_only(MsrAddr(0x12345)));
    }
}
