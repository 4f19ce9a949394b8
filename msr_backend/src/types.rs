//! Newtypes for the three things every other module talks about: MSR addresses, CPU ids and
//! write masks. All of them print and serialise in hex (CPU ids in decimal, as the kernel names
//! them), so that a value read in a log, a save file or a `--json` report looks the same.

use std::fmt;
use std::str::FromStr;

use serde::{de, Deserialize, Deserializer, Serialize, Serializer};

/// An MSR address as the devices take it (the per-CPU nodes truncate the offset to 32 bits and
/// the batch op carries a `__u32`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MsrAddr(pub u32);

/// A logical CPU, as numbered in `/sys/devices/system/cpu` and `/dev/cpu/N`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct CpuId(pub u32);

/// The bits of an MSR that msr-safe lets a user write.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct WriteMask(pub u64);

impl MsrAddr {
    /// Byte offset of this MSR in an emulated register file (8 bytes per address, so adjacent
    /// addresses do not overlap as they would at offset = address).
    pub const fn emulated_offset(self) -> u64 {
        self.0 as u64 * 8
    }
}

impl WriteMask {
    pub const NONE: WriteMask = WriteMask(0);
    pub const ALL: WriteMask = WriteMask(u64::MAX);

    pub const fn is_writable(self) -> bool {
        self.0 != 0
    }

    /// The value a masked write of `wanted` over `current` leaves in the register: the bits in
    /// the mask come from `wanted`, every other bit keeps its current value.
    pub const fn merge(self, current: u64, wanted: u64) -> u64 {
        (current & !self.0) | (wanted & self.0)
    }

    pub const fn intersect(self, other: WriteMask) -> WriteMask {
        WriteMask(self.0 & other.0)
    }
}

impl fmt::Display for MsrAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#010x}", self.0)
    }
}

impl fmt::Display for CpuId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl fmt::Display for WriteMask {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", Hex64(self.0))
    }
}

/// A 64-bit register value or mask shown as `0x` and 16 hex digits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct Hex64(pub u64);

impl fmt::Display for Hex64 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#018x}", self.0)
    }
}

/// Parse an unsigned integer the way people type register numbers: `0x` hex, or decimal.
fn parse_u64_hex_or_dec(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let parsed = match t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(&hex.replace('_', ""), 16),
        None => t.replace('_', "").parse::<u64>(),
    };
    parsed.map_err(|e| format!("{s:?} is not a number ({e}); write it as 0x1A2 or 418"))
}

impl FromStr for MsrAddr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let v = parse_u64_hex_or_dec(s)?;
        u32::try_from(v)
            .map(MsrAddr)
            .map_err(|_| format!("MSR address {s} does not fit in 32 bits"))
    }
}

impl FromStr for WriteMask {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_u64_hex_or_dec(s).map(WriteMask)
    }
}

impl FromStr for Hex64 {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_u64_hex_or_dec(s).map(Hex64)
    }
}

impl FromStr for CpuId {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.trim()
            .parse::<u32>()
            .map(CpuId)
            .map_err(|e| format!("{s:?} is not a CPU number ({e})"))
    }
}

macro_rules! hex_serde {
    ($t:ty) => {
        impl Serialize for $t {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }
        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                s.parse().map_err(de::Error::custom)
            }
        }
    };
}
hex_serde!(MsrAddr);
hex_serde!(WriteMask);
hex_serde!(Hex64);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_is_fixed_width_hex() {
        assert_eq!(MsrAddr(0x199).to_string(), "0x00000199");
        assert_eq!(WriteMask(0xffff).to_string(), "0x000000000000ffff");
        assert_eq!(Hex64(u64::MAX).to_string(), "0xffffffffffffffff");
    }

    #[test]
    fn parse_round_trips_and_rejects_garbage() {
        assert_eq!("0x199".parse::<MsrAddr>(), Ok(MsrAddr(0x199)));
        assert_eq!("409".parse::<MsrAddr>(), Ok(MsrAddr(409)));
        assert!("0x1_0000_0000".parse::<MsrAddr>().is_err());
        assert!("zz".parse::<WriteMask>().is_err());
        let j = serde_json::to_string(&MsrAddr(0xC0000103)).unwrap();
        assert_eq!(j, "\"0xc0000103\"");
        assert_eq!(
            serde_json::from_str::<MsrAddr>(&j).unwrap(),
            MsrAddr(0xC0000103)
        );
    }

    #[test]
    fn merge_takes_only_masked_bits() {
        let m = WriteMask(0x0000_ff00);
        assert_eq!(m.merge(0x1234_5678, 0xaaaa_bbcc), 0x1234_bb78);
    }
}
