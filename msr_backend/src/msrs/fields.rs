//! Named bit fields of the MSRs sites tune or compare across nodes, so that a site policy can say
//! `IA32_ENERGY_PERF_BIAS.hint` instead of "bits 0-3 of 0x1B0". Bit positions are the Intel SDM
//! vol. 4's (architectural MSRs: table 2-2; RAPL: section 14.10; HWP: section 14.4) and AMD's
//! PPRs; where Linux's `arch/x86/include/asm/msr-index.h` names the same bits it agrees.
//!
//! Every MSR also has the pseudo-field `all` (bits 0-63), for comparing a whole register.

use crate::types::MsrAddr;

/// One named field: bits `lo..=hi` of an MSR.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Field {
    pub msr: u32,
    pub name: &'static str,
    pub lo: u8,
    pub hi: u8,
    /// What the field holds, in a few words.
    pub doc: &'static str,
}

impl Field {
    /// The field's bits in place.
    pub const fn mask(&self) -> u64 {
        bits_mask(self.lo, self.hi)
    }

    /// The field's value in `register`, shifted down.
    pub const fn extract(&self, register: u64) -> u64 {
        (register & self.mask()) >> self.lo
    }
}

/// Bits `lo..=hi` set (`lo <= hi <= 63`).
pub const fn bits_mask(lo: u8, hi: u8) -> u64 {
    let width = (hi - lo + 1) as u32;
    let ones = if width >= 64 {
        u64::MAX
    } else {
        (1u64 << width) - 1
    };
    ones << lo
}

const fn f(msr: u32, name: &'static str, lo: u8, hi: u8, doc: &'static str) -> Field {
    Field {
        msr,
        name,
        lo,
        hi,
        doc,
    }
}

/// The pseudo-field every MSR has: the whole register.
pub const ALL: &str = "all";

/// Sorted by MSR (a test checks), fields of one MSR in bit order.
pub static FIELDS: &[Field] = &[
    // IA32_PPIN: unique per package, never equal across nodes.
    f(0x4F, "ppin", 0, 63, "protected processor inventory number"),
    f(
        0x8B,
        "microcode",
        32,
        63,
        "microcode update signature (after CPUID leaf 1)",
    ),
    // MSR_PLATFORM_INFO (read-only).
    f(0xCE, "max_non_turbo_ratio", 8, 15, "base frequency ratio"),
    f(
        0xCE,
        "max_efficiency_ratio",
        40,
        47,
        "lowest frequency ratio",
    ),
    // MSR_PKG_CST_CONFIG_CONTROL (SDM: bits 2:0 on Broadwell and Skylake server).
    f(0xE2, "pkg_cstate_limit", 0, 2, "deepest package C-state"),
    f(
        0xE2,
        "io_mwait_redirection",
        10,
        10,
        "I/O MWAIT redirection enable",
    ),
    f(0xE2, "cfg_lock", 15, 15, "bits 15:0 locked until reset"),
    f(0xE2, "c3_auto_demotion", 25, 25, "C3 auto demotion enable"),
    f(0xE2, "c1_auto_demotion", 26, 26, "C1 auto demotion enable"),
    // IA32_ARCH_CAPABILITIES (read-only): mostly "not affected" bits (features), and RSBA/RRSBA,
    // which say the CPU may use alternative predictors (a weakness).
    f(
        0x10A,
        "rdcl_no",
        0,
        0,
        "not affected by rogue data cache load (Meltdown)",
    ),
    f(0x10A, "ibrs_all", 1, 1, "enhanced IBRS"),
    f(
        0x10A,
        "rsba",
        2,
        2,
        "RET may use alternative branch predictors",
    ),
    f(
        0x10A,
        "skip_l1dfl_vmentry",
        3,
        3,
        "no L1D flush needed on VM entry",
    ),
    f(
        0x10A,
        "ssb_no",
        4,
        4,
        "not affected by speculative store bypass",
    ),
    f(
        0x10A,
        "mds_no",
        5,
        5,
        "not affected by microarchitectural data sampling",
    ),
    f(
        0x10A,
        "pschange_mc_no",
        6,
        6,
        "no machine check on page size change",
    ),
    f(0x10A, "tsx_ctrl", 7, 7, "IA32_TSX_CTRL is available"),
    f(
        0x10A,
        "taa_no",
        8,
        8,
        "not affected by TSX asynchronous abort",
    ),
    f(
        0x10A,
        "sbdr_ssdp_no",
        13,
        13,
        "not affected by SBDR/SSDP (MMIO stale data)",
    ),
    f(
        0x10A,
        "fbsdp_no",
        14,
        14,
        "not affected by FBSDP (MMIO stale data)",
    ),
    f(
        0x10A,
        "psdp_no",
        15,
        15,
        "not affected by PSDP (MMIO stale data)",
    ),
    f(0x10A, "fb_clear", 17, 17, "VERW clears fill buffers"),
    f(
        0x10A,
        "rrsba",
        19,
        19,
        "RET may use predictors other than the RSB",
    ),
    f(
        0x10A,
        "pbrsb_no",
        24,
        24,
        "not affected by post-barrier RSB predictions",
    ),
    f(
        0x10A,
        "gds_ctrl",
        25,
        25,
        "affected by gather data sampling, has controls",
    ),
    f(
        0x10A,
        "gds_no",
        26,
        26,
        "not affected by gather data sampling",
    ),
    // IA32_PERF_CTL.
    f(
        0x199,
        "target",
        0,
        15,
        "target performance state (ratio in bits 15:8)",
    ),
    f(0x199, "turbo_disengage", 32, 32, "IDA (turbo) disengage"),
    // IA32_MISC_ENABLE (architectural bits, and turbo disable).
    f(0x1A0, "fast_strings", 0, 0, "fast-strings enable"),
    f(
        0x1A0,
        "auto_thermal_control",
        3,
        3,
        "automatic thermal control circuit enable",
    ),
    f(
        0x1A0,
        "perfmon_available",
        7,
        7,
        "performance monitoring available",
    ),
    f(0x1A0, "eist", 16, 16, "Enhanced Intel SpeedStep enable"),
    f(0x1A0, "monitor_fsm", 18, 18, "MONITOR/MWAIT enable"),
    f(0x1A0, "limit_cpuid", 22, 22, "limit CPUID maxval"),
    f(0x1A0, "xd_disable", 34, 34, "execute-disable bit disable"),
    f(0x1A0, "turbo_disable", 38, 38, "turbo mode (IDA) disable"),
    // MSR_MISC_FEATURE_CONTROL on Intel cores from Nehalem on (Intel's "hardware prefetcher
    // control" disclosure): a 1 turns a prefetcher off.
    f(
        0x1A4,
        "prefetchers",
        0,
        3,
        "the four prefetcher-disable bits",
    ),
    f(
        0x1A4,
        "l2_hw_prefetcher_disable",
        0,
        0,
        "L2 hardware prefetcher disable",
    ),
    f(
        0x1A4,
        "l2_adjacent_prefetcher_disable",
        1,
        1,
        "L2 adjacent cache line prefetcher disable",
    ),
    f(
        0x1A4,
        "dcu_prefetcher_disable",
        2,
        2,
        "L1 data (DCU) prefetcher disable",
    ),
    f(
        0x1A4,
        "dcu_ip_prefetcher_disable",
        3,
        3,
        "L1 data IP prefetcher disable",
    ),
    // MSR_TURBO_RATIO_LIMIT: one ratio per byte (per active-core group).
    f(
        0x1AD,
        "ratios",
        0,
        63,
        "maximum turbo ratio per core group, one byte each",
    ),
    // IA32_ENERGY_PERF_BIAS.
    f(
        0x1B0,
        "hint",
        0,
        3,
        "energy/performance bias (0 performance, 15 energy saving)",
    ),
    // MSR_POWER_CTL.
    f(0x1FC, "c1e_enable", 1, 1, "C1E enable"),
    // MSR_RAPL_POWER_UNIT (read-only).
    f(0x606, "power_units", 0, 3, "power unit: 1/2^N W"),
    f(0x606, "energy_units", 8, 12, "energy unit: 1/2^N J"),
    f(0x606, "time_units", 16, 19, "time unit: 1/2^N s"),
    // MSR_PKG_POWER_LIMIT.
    f(0x610, "pl1", 0, 14, "package power limit 1, in power units"),
    f(0x610, "pl1_enable", 15, 15, "limit 1 enable"),
    f(0x610, "pl1_clamp", 16, 16, "limit 1 clamping"),
    f(0x610, "pl1_time", 17, 23, "limit 1 time window"),
    f(
        0x610,
        "pl2",
        32,
        46,
        "package power limit 2, in power units",
    ),
    f(0x610, "pl2_enable", 47, 47, "limit 2 enable"),
    f(0x610, "pl2_clamp", 48, 48, "limit 2 clamping"),
    f(0x610, "pl2_time", 49, 55, "limit 2 time window"),
    f(0x610, "lock", 63, 63, "the register is locked until reset"),
    // MSR_DRAM_POWER_LIMIT.
    f(0x618, "limit", 0, 14, "DRAM power limit, in power units"),
    f(0x618, "enable", 15, 15, "limit enable"),
    f(0x618, "time", 17, 23, "time window"),
    f(0x618, "lock", 31, 31, "the register is locked until reset"),
    // MSR_UNCORE_RATIO_LIMIT.
    f(0x620, "max_ratio", 0, 6, "maximum uncore ratio"),
    f(0x620, "min_ratio", 8, 14, "minimum uncore ratio"),
    // MSR_PP0_POWER_LIMIT.
    f(0x638, "limit", 0, 14, "core power limit, in power units"),
    f(0x638, "enable", 15, 15, "limit enable"),
    f(0x638, "clamp", 16, 16, "clamping"),
    f(0x638, "time", 17, 23, "time window"),
    f(0x638, "lock", 31, 31, "the register is locked until reset"),
    // IA32_PM_ENABLE.
    f(
        0x770,
        "hwp_enable",
        0,
        0,
        "hardware P-states enabled (sticky until reset)",
    ),
    // IA32_HWP_REQUEST.
    f(0x774, "min_perf", 0, 7, "minimum performance"),
    f(0x774, "max_perf", 8, 15, "maximum performance"),
    f(
        0x774,
        "desired_perf",
        16,
        23,
        "desired performance (0: autonomous)",
    ),
    f(0x774, "epp", 24, 31, "energy/performance preference"),
    f(0x774, "activity_window", 32, 41, "activity window"),
    f(
        0x774,
        "package_control",
        42,
        42,
        "take the package-level request",
    ),
    // AMD MSR_AMD_HWCR (PPR: CpbDis, core performance boost disable).
    f(
        0xC0010015,
        "boost_disable",
        25,
        25,
        "core performance boost (turbo) disable",
    ),
    // AMD MSR_AMD_PPIN.
    f(
        0xC00102F1,
        "ppin",
        0,
        63,
        "protected processor inventory number",
    ),
];

/// The fields the table defines for `addr`.
pub fn fields_of(addr: MsrAddr) -> &'static [Field] {
    let lo = FIELDS.partition_point(|f| f.msr < addr.0);
    let hi = FIELDS.partition_point(|f| f.msr <= addr.0);
    &FIELDS[lo..hi]
}

/// The field `name` of `addr`, including the pseudo-field `all`.
pub fn field(addr: MsrAddr, name: &str) -> Option<Field> {
    if name == ALL {
        return Some(f(addr.0, ALL, 0, 63, "the whole register"));
    }
    fields_of(addr).iter().find(|f| f.name == name).copied()
}

/// Parse `N` or `N-M` (bit numbers 0 to 63, `N <= M`), as policy files give bits.
pub fn parse_bits(text: &str) -> Result<(u8, u8), String> {
    let bad = || format!("bits {text:?}: expected N or N-M with 0 <= N <= M <= 63");
    let num = |s: &str| s.trim().parse::<u8>().ok().filter(|&b| b <= 63);
    let (lo, hi) = match text.split_once('-') {
        Some((a, b)) => (num(a).ok_or_else(bad)?, num(b).ok_or_else(bad)?),
        None => {
            let b = num(text).ok_or_else(bad)?;
            (b, b)
        }
    };
    if lo > hi {
        return Err(bad());
    }
    Ok((lo, hi))
}

/// `3` or `0-3`.
pub fn format_bits(lo: u8, hi: u8) -> String {
    if lo == hi {
        lo.to_string()
    } else {
        format!("{lo}-{hi}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_is_sorted_and_names_are_unique_per_msr() {
        assert!(FIELDS.windows(2).all(|w| w[0].msr <= w[1].msr));
        for (i, a) in FIELDS.iter().enumerate() {
            assert!(a.lo <= a.hi && a.hi <= 63, "{a:?}");
            assert!(a.name != ALL, "{a:?}");
            assert!(
                a.name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'),
                "{a:?}"
            );
            for b in &FIELDS[i + 1..] {
                assert!(!(a.msr == b.msr && a.name == b.name), "{a:?} twice");
            }
        }
    }

    #[test]
    fn known_fields_and_values() {
        let hint = field(MsrAddr(0x1B0), "hint").expect("EPB hint");
        assert_eq!((hint.lo, hint.hi, hint.mask()), (0, 3, 0xF));
        assert_eq!(hint.extract(0xABC6), 6);
        let pl2 = field(MsrAddr(0x610), "pl2").unwrap();
        assert_eq!(pl2.mask(), 0x7FFF_0000_0000);
        assert_eq!(pl2.extract(0x0042_8230_0000_0000 | 0xFFFF), 0x230);
        assert_eq!(
            field(MsrAddr(0x1A0), "turbo_disable").unwrap().mask(),
            1 << 38
        );
        assert_eq!(field(MsrAddr(0x12345), "all").unwrap().mask(), u64::MAX);
        assert!(field(MsrAddr(0x1B0), "nope").is_none());
        assert_eq!(fields_of(MsrAddr(0x1A4)).len(), 5);
        assert_eq!(bits_mask(63, 63), 1 << 63);
        assert_eq!(bits_mask(0, 63), u64::MAX);
    }

    #[test]
    fn bits_parse_and_print() {
        assert_eq!(parse_bits("0-3"), Ok((0, 3)));
        assert_eq!(parse_bits("38"), Ok((38, 38)));
        assert_eq!(parse_bits(" 8 - 14 "), Ok((8, 14)));
        for bad in ["", "3-0", "64", "0-64", "a", "1-2-3", "-1"] {
            assert!(parse_bits(bad).is_err(), "{bad}");
        }
        assert_eq!(format_bits(0, 3), "0-3");
        assert_eq!(format_bits(38, 38), "38");
    }
}
