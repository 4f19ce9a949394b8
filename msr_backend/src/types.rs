//! The value types every other module talks about, with no I/O: MSR addresses, CPU ids and
//! write masks (printed and serialised in hex, CPU ids in decimal as the kernel names them, so
//! that a value in a log, a save file or a `--json` report looks the same), CPU lists in the
//! kernel's syntax, the CPU model a node reports, and the backend an admin asks for.

use std::fmt;
use std::str::FromStr;

use serde::{de, Deserialize, Deserializer, Serialize, Serializer};

/// An MSR address as the devices take it (the per-CPU nodes truncate the offset to 32 bits and
/// the batch op carries a `__u32`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MsrAddr(pub u32);

/// A logical CPU, as numbered in `/sys/devices/system/cpu` and `/dev/cpu/N`.
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    schemars::JsonSchema,
)]
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

/// Lower-case hex of `bytes` (digests).
pub fn hex_bytes(bytes: &[u8]) -> String {
    use fmt::Write as _;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// The most CPUs a CPU list may name: x86-64's largest `CONFIG_NR_CPUS` (MAXSMP). A list naming
/// more is not the kernel's, and is refused before anything is allocated for it.
pub const MAX_CPUS: u32 = 8192;

/// Why a CPU list is not the kernel's.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CpuListError {
    #[error("empty CPU list")]
    Empty,
    #[error("{part:?} in CPU list {list:?} is not a CPU number or range")]
    NotANumber { part: String, list: String },
    #[error("range {part:?} in CPU list {list:?} runs backwards")]
    Backwards { part: String, list: String },
    #[error("CPU list {list:?} names CPU {cpu}; the kernel has at most {MAX_CPUS} (CPU numbers below {MAX_CPUS})")]
    TooLarge { cpu: u32, list: String },
}

/// Parse the kernel's CPU list syntax (`0-3,8,10-11`): sorted, without duplicates, every CPU
/// below [`MAX_CPUS`].
pub fn parse_cpu_list(text: &str) -> Result<Vec<CpuId>, CpuListError> {
    let text = text.trim();
    if text.is_empty() {
        return Err(CpuListError::Empty);
    }
    let mut cpus = Vec::new();
    for part in text.split(',') {
        let part = part.trim();
        let num = |s: &str| {
            let n = s
                .trim()
                .parse::<u32>()
                .map_err(|_| CpuListError::NotANumber {
                    part: part.to_string(),
                    list: text.to_string(),
                })?;
            if n >= MAX_CPUS {
                return Err(CpuListError::TooLarge {
                    cpu: n,
                    list: text.to_string(),
                });
            }
            Ok(n)
        };
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b) = (num(a)?, num(b)?);
                if a > b {
                    return Err(CpuListError::Backwards {
                        part: part.to_string(),
                        list: text.to_string(),
                    });
                }
                cpus.extend((a..=b).map(CpuId));
            }
            None => cpus.push(CpuId(num(part)?)),
        }
        // Overlapping ranges cannot make the list longer than MAX_CPUS distinct CPUs for long.
        if cpus.len() > 2 * MAX_CPUS as usize {
            cpus.sort_unstable();
            cpus.dedup();
        }
    }
    cpus.sort_unstable();
    cpus.dedup();
    Ok(cpus)
}

/// Format CPUs in the kernel's list syntax (inverse of [`parse_cpu_list`]).
pub fn format_cpu_list(cpus: &[CpuId]) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut i = 0;
    while i < cpus.len() {
        let start = cpus[i].0;
        let mut end = start;
        while i + 1 < cpus.len() && cpus[i + 1].0 == end + 1 {
            end += 1;
            i += 1;
        }
        out.push(if start == end {
            start.to_string()
        } else {
            format!("{start}-{end}")
        });
        i += 1;
    }
    out.join(",")
}

/// The CPU model a node reports, as msr-safe's allowlist file names use it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CpuIdentity {
    pub vendor: String,
    pub family: u32,
    pub model: u32,
}

impl fmt::Display for CpuIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} family {:#04x} model {:#04x}",
            self.vendor, self.family, self.model
        )
    }
}

/// Which kernel interface (or emulation of it) a device talks to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum BackendKind {
    /// msr-safe's `/dev/cpu/msr_batch` ioctl.
    Batch,
    /// msr-safe's per-CPU `/dev/cpu/N/msr_safe` nodes.
    Safe,
    /// The stock `/dev/cpu/N/msr` driver (our code enforces the allowlist).
    Msr,
}

impl BackendKind {
    pub const ALL: [BackendKind; 3] = [BackendKind::Batch, BackendKind::Safe, BackendKind::Msr];

    pub fn name(self) -> &'static str {
        match self {
            BackendKind::Batch => "batch",
            BackendKind::Safe => "safe",
            BackendKind::Msr => "msr",
        }
    }
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// msr-safe's version, as its module reports it (`1.8.0`; releases before 1.8 say `1.7`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct MsrSafeVersion {
    pub major: u32,
    pub minor: u32,
    pub patch: u32,
}

/// Which batch ABI a module version speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BatchAbi {
    /// 1.x: the 32-byte `msr_batch_op` our bindings describe (unchanged since 2017).
    V1,
    /// 2.x and later: another op struct; a 1.x array is refused with ENOPROTOOPT.
    Unsupported,
}

impl MsrSafeVersion {
    pub fn batch_abi(self) -> BatchAbi {
        if self.major == 1 {
            BatchAbi::V1
        } else {
            BatchAbi::Unsupported
        }
    }
}

impl fmt::Display for MsrSafeVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

impl FromStr for MsrSafeVersion {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let text = s.trim_end_matches(['\0', '\n']).trim();
        let mut parts = text.split('.');
        let mut next = |required: bool| -> Result<u32, String> {
            match parts.next() {
                Some(p) => p.parse::<u32>().map_err(|_| {
                    format!("{text:?} is not an msr-safe version (MAJOR.MINOR[.PATCH])")
                }),
                None if required => Err(format!(
                    "{text:?} is not an msr-safe version (MAJOR.MINOR[.PATCH])"
                )),
                None => Ok(0),
            }
        };
        let v = MsrSafeVersion {
            major: next(true)?,
            minor: next(true)?,
            patch: next(false)?,
        };
        if parts.next().is_some() {
            return Err(format!(
                "{text:?} is not an msr-safe version (MAJOR.MINOR[.PATCH])"
            ));
        }
        Ok(v)
    }
}

/// The backend an admin asks for: one type for the command line, the configuration file, the
/// SPANK plugin's arguments and the PBS hook's configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum BackendChoice {
    /// The first that works: batch, then safe, then msr.
    #[default]
    Auto,
    /// Exactly this one.
    Only(BackendKind),
}

impl BackendChoice {
    /// Every spelling accepted, for messages and `--help`.
    pub const NAMES: [&'static str; 4] = ["auto", "batch", "safe", "msr"];

    pub fn kind(self) -> Option<BackendKind> {
        match self {
            BackendChoice::Auto => None,
            BackendChoice::Only(k) => Some(k),
        }
    }
}

impl fmt::Display for BackendChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BackendChoice::Auto => f.write_str("auto"),
            BackendChoice::Only(k) => write!(f, "{k}"),
        }
    }
}

impl FromStr for BackendChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(BackendChoice::Auto),
            "batch" => Ok(BackendChoice::Only(BackendKind::Batch)),
            "safe" => Ok(BackendChoice::Only(BackendKind::Safe)),
            "msr" => Ok(BackendChoice::Only(BackendKind::Msr)),
            other => Err(format!(
                "backend {other:?} is not one of {}",
                Self::NAMES.join(", ")
            )),
        }
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

macro_rules! string_schema {
    ($t:ty, $name:literal, $desc:literal, $pattern:literal) => {
        impl schemars::JsonSchema for $t {
            fn schema_name() -> std::borrow::Cow<'static, str> {
                $name.into()
            }
            fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
                schemars::json_schema!({"type": "string", "description": $desc, "pattern": $pattern})
            }
        }
    };
}
string_schema!(
    MsrAddr,
    "MsrAddr",
    "an MSR address: 0x and 8 hex digits",
    "^0x[0-9a-f]{8}$"
);
string_schema!(
    WriteMask,
    "WriteMask",
    "a write mask: 0x and 16 hex digits",
    "^0x[0-9a-f]{16}$"
);
string_schema!(
    Hex64,
    "Hex64",
    "a 64-bit value: 0x and 16 hex digits",
    "^0x[0-9a-f]{16}$"
);

impl schemars::JsonSchema for BackendChoice {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "BackendChoice".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({"type": "string", "enum": BackendChoice::NAMES})
    }
}

impl Serialize for BackendChoice {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for BackendChoice {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?.parse().map_err(de::Error::custom)
    }
}

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
    fn cpu_lists_parse_as_the_kernel_writes_them() {
        let c = parse_cpu_list("0-3,8,10-11\n").unwrap();
        assert_eq!(
            c.iter().map(|c| c.0).collect::<Vec<_>>(),
            vec![0, 1, 2, 3, 8, 10, 11]
        );
        assert_eq!(format_cpu_list(&c), "0-3,8,10-11");
        assert_eq!(parse_cpu_list(""), Err(CpuListError::Empty));
        assert!(matches!(
            parse_cpu_list("3-1"),
            Err(CpuListError::Backwards { .. })
        ));
        assert!(matches!(
            parse_cpu_list("0-x"),
            Err(CpuListError::NotANumber { .. })
        ));
    }

    #[test]
    fn cpu_lists_beyond_the_kernels_limit_are_refused_before_allocating() {
        for list in ["0-1000000000", "0-4294967295", "8192", "0,5-99999999999"] {
            assert!(parse_cpu_list(list).is_err(), "{list}");
        }
        assert_eq!(parse_cpu_list("0-8191").unwrap().len(), 8192);
        // Overlapping ranges are fine (and do not grow without bound).
        let many = vec!["0-8191"; 100].join(",");
        assert_eq!(parse_cpu_list(&many).unwrap().len(), 8192);
    }

    #[test]
    fn backend_choice_has_one_spelling_everywhere() {
        for name in BackendChoice::NAMES {
            let c: BackendChoice = name.parse().unwrap();
            assert_eq!(c.to_string(), name);
            assert_eq!(serde_json::to_string(&c).unwrap(), format!("\"{name}\""));
        }
        assert!("msr_safe".parse::<BackendChoice>().is_err());
    }

    #[test]
    fn versions_parse_as_the_module_writes_them() {
        let v: MsrSafeVersion = "1.8.0\0".parse().unwrap();
        assert_eq!((v.major, v.minor, v.patch), (1, 8, 0));
        assert_eq!(v.batch_abi(), BatchAbi::V1);
        let old: MsrSafeVersion = "1.7\n".parse().unwrap();
        assert_eq!(old.to_string(), "1.7.0");
        assert!(old < v);
        let new: MsrSafeVersion = "2.0.4".parse().unwrap();
        assert_eq!(new.batch_abi(), BatchAbi::Unsupported);
        assert!("1".parse::<MsrSafeVersion>().is_err());
        assert!("1.8.0.1".parse::<MsrSafeVersion>().is_err());
        assert!("one.two".parse::<MsrSafeVersion>().is_err());
    }

    #[test]
    fn merge_takes_only_masked_bits() {
        let m = WriteMask(0x0000_ff00);
        assert_eq!(m.merge(0x1234_5678, 0xaaaa_bbcc), 0x1234_bb78);
    }
}
