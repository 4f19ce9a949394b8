//! Lock bits: registers that firmware can lock until the next reset.
//!
//! While such a bit is set the bits it locks ignore writes (the SDM: "all write attempts to this
//! MSR are ignored until next RESET"; IA32_FEATURE_CONTROL faults instead). A difference in those
//! bits is then not a job's doing and no restore can undo it: [`crate::restore`] reports it as
//! `locked`, attempts no write to them, and never sets a lock bit itself.

use super::scope::Cpus;
use crate::types::{CpuIdentity, MsrAddr};

/// The lock of one register.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lock {
    /// The lock bit.
    pub bit: u8,
    /// The bits it holds while set (the lock bit included).
    pub locks: u64,
}

impl Lock {
    /// True when `value` has the lock bit set.
    pub fn is_set(self, value: u64) -> bool {
        value & (1 << self.bit) != 0
    }

    /// The bits that ignore writes while the register holds `value`.
    pub fn held(self, value: u64) -> u64 {
        if self.is_set(value) {
            self.locks
        } else {
            0
        }
    }
}

/// One row: `addr` has `lock` on `cpus`.
#[derive(Clone, Copy, Debug)]
pub struct LockRow {
    pub addr: u32,
    pub cpus: Cpus,
    pub lock: Lock,
}

const fn whole(addr: u32, cpus: Cpus, bit: u8) -> LockRow {
    LockRow {
        addr,
        cpus,
        lock: Lock {
            bit,
            locks: u64::MAX,
        },
    }
}

use Cpus::{Intel, IntelFamily6};

/// Sorted by address, one row per address and vendor (a test checks it).
pub static LOCKS: &[LockRow] = &[
    // SDM vol. 4 Table 2-2 (architectural), IA32_FEATURE_CONTROL bit 0 "Lock (R/WO)": when set,
    // the MSR cannot be written (writes #GP) until reset.
    whole(0x3A, Intel, 0),
    // SDM vol. 4 Table 2-20 (Sandy Bridge) and later, MSR_PKG_CST_CONFIG_CONTROL bit 15 "CFG
    // Lock (R/WO): when set, lock bits 15:0 of this register until next reset".
    LockRow {
        addr: 0xE2,
        cpus: IntelFamily6,
        lock: Lock {
            bit: 15,
            locks: 0xFFFF,
        },
    },
    // SDM vol. 3B §15.10.3 "Package RAPL Domain", MSR_PKG_POWER_LIMIT bit 63 "Lock: if set, all
    // write attempts to this MSR are ignored until next RESET" (PKG_PWR_LIM_LOCK).
    whole(0x610, IntelFamily6, 63),
    // §15.10.5 "DRAM RAPL Domain", MSR_DRAM_POWER_LIMIT bit 31, the same rule.
    whole(0x618, IntelFamily6, 31),
    // §15.10.4 "PP0/PP1 RAPL Domains", MSR_PP0_POWER_LIMIT and MSR_PP1_POWER_LIMIT bit 31.
    whole(0x638, IntelFamily6, 31),
    whole(0x640, IntelFamily6, 31),
    // SDM vol. 4 Table 2-29 (Ivy Bridge) and later: MSR_CONFIG_TDP_CONTROL bit 31
    // "Config_TDP_Lock", MSR_TURBO_ACTIVATION_RATIO bit 31 "TURBO_ACTIVATION_RATIO_Lock": "the
    // content of this register is locked until a reset".
    whole(0x64B, IntelFamily6, 31),
    whole(0x64C, IntelFamily6, 31),
    // SDM vol. 4 Skylake tables and Table 2-52 (Sapphire Rapids): MSR_PLATFORM_POWER_LIMIT
    // (R/W-L) bit 63 "Lock".
    whole(0x65C, IntelFamily6, 63),
];

/// The lock of `addr` on a CPU of `cpu`'s kind, if the table knows one.
pub fn lock_of(cpu: Option<&CpuIdentity>, addr: MsrAddr) -> Option<Lock> {
    let id = cpu?;
    LOCKS
        .iter()
        .find(|r| r.addr == addr.0 && r.cpus.matches(id))
        .map(|r| r.lock)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::msrs::models::Vendor;

    #[test]
    fn table_is_sorted_and_locks_hold_their_own_bit() {
        for w in LOCKS.windows(2) {
            assert!(w[0].addr < w[1].addr, "{:?} {:?}", w[0], w[1]);
        }
        for r in LOCKS {
            assert!(r.lock.bit < 64);
            assert_ne!(r.lock.locks & (1 << r.lock.bit), 0, "{r:?}");
        }
    }

    #[test]
    fn a_set_lock_holds_its_bits() {
        let spr = CpuIdentity {
            vendor: Vendor::Intel.vendor_id().into(),
            family: 6,
            model: 0x8F,
        };
        let pl = lock_of(Some(&spr), MsrAddr(0x610)).expect("0x610 has a lock");
        assert_eq!(pl.bit, 63);
        assert_eq!(pl.held(1 << 63 | 0x1234), u64::MAX);
        assert_eq!(pl.held(0x1234), 0);
        let cst = lock_of(Some(&spr), MsrAddr(0xE2)).expect("0xE2 has a lock");
        assert_eq!(cst.held(0x8000), 0xFFFF);
        assert_eq!(lock_of(Some(&spr), MsrAddr(0x199)), None);
        assert_eq!(lock_of(None, MsrAddr(0x610)), None);
    }
}
