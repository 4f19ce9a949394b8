//! A node seen through a root directory: `/` on a real node, or the directory of an emulated
//! node (or a container's view of the host). Every device, sysfs and procfs path goes through
//! [`Node::path`], so the rest of the library never spells an absolute path.

use std::io::Read;
use std::path::{Path, PathBuf};

use crate::fsio::{self, Expect, InputError, Links};
use crate::types::{parse_cpu_list, CpuId, CpuIdentity, CpuListError, MsrSafeVersion};

pub use crate::types::format_cpu_list;

/// Why the node's own description (sysfs, procfs) could not be read.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error(transparent)]
    Input(#[from] InputError),
    #[error("online CPU list {path}")]
    CpuList {
        path: PathBuf,
        #[source]
        source: CpuListError,
    },
    #[error("{path}: no CPU is online")]
    NoCpuOnline { path: PathBuf },
    #[error("{path}: no vendor_id, cpu family and model lines for the first processor")]
    NoCpuIdentity { path: PathBuf },
    #[error("{path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

type Result<T, E = NodeError> = std::result::Result<T, E>;

/// The most bytes a version file or node holds (`255.255.255` and a terminator, with room).
pub const MAX_VERSION_BYTES: usize = 64;

/// The most bytes read from one sysfs or procfs text file (a CPU list of 8192 single CPUs is
/// about 40 KiB).
pub const MAX_SYSFS_BYTES: u64 = 64 * 1024;

pub const ONLINE_CPUS: &str = "/sys/devices/system/cpu/online";
pub const CPUINFO: &str = "/proc/cpuinfo";
pub const OSRELEASE: &str = "/proc/sys/kernel/osrelease";
pub const MSR_SAFE_VERSION: &str = "/sys/module/msr_safe/version";
pub const MSR_SAFE_VERSION_NODE: &str = "/dev/cpu/msr_safe_version";
pub const ALLOWLIST_NODE: &str = "/dev/cpu/msr_allowlist";
pub const BATCH_NODE: &str = "/dev/cpu/msr_batch";
pub const LOCKDOWN: &str = "/sys/kernel/security/lockdown";
/// The stock msr driver's write policy (`on`, `off`, `default`).
pub const MSR_ALLOW_WRITES: &str = "/sys/module/msr/parameters/allow_writes";
/// Names the allowlist node had before msr-safe 1.5.
pub const OLD_ALLOWLIST_NODES: [&str; 2] = ["/dev/cpu/msr_whitelist", "/dev/cpu/msr_approved_list"];

#[derive(Clone, Debug)]
pub struct Node {
    root: PathBuf,
}

impl Default for Node {
    fn default() -> Self {
        Node {
            root: PathBuf::from("/"),
        }
    }
}

impl Node {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Node { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// True when this node is not the machine's own `/`.
    pub fn is_rooted_elsewhere(&self) -> bool {
        self.root != Path::new("/")
    }

    /// Where an absolute system path lives on this node.
    pub fn path(&self, abs: &str) -> PathBuf {
        self.root.join(abs.trim_start_matches('/'))
    }

    /// The per-CPU device node `/dev/cpu/<cpu>/<leaf>`.
    pub fn cpu_node(&self, cpu: CpuId, leaf: &str) -> PathBuf {
        self.path(&format!("/dev/cpu/{}/{leaf}", cpu.0))
    }

    /// A small kernel text file (sysfs, procfs): at most [`MAX_SYSFS_BYTES`], a regular file
    /// (sysfs and procfs files are) and never a FIFO planted under an emulated root.
    pub(crate) fn read_text(&self, abs: &str) -> Result<String> {
        let p = self.path(abs);
        let bytes = fsio::read_file(
            &p,
            Expect::Regular,
            Links::Follow,
            MAX_SYSFS_BYTES,
            "kernel text file",
        )?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }

    /// Online CPUs, from the kernel's list (never from a count: CPUs may be offline or sparse).
    pub fn online_cpus(&self) -> Result<Vec<CpuId>> {
        let p = self.path(ONLINE_CPUS);
        let text = self.read_text(ONLINE_CPUS)?;
        let cpus = parse_cpu_list(&text).map_err(|source| NodeError::CpuList {
            path: p.clone(),
            source,
        })?;
        if cpus.is_empty() {
            return Err(NodeError::NoCpuOnline { path: p });
        }
        Ok(cpus)
    }

    /// The first processor's block of `/proc/cpuinfo` (read only as far as that block: the whole
    /// file is megabytes on a large node).
    fn first_cpuinfo_block(&self) -> Result<(PathBuf, String)> {
        use std::io::BufRead;
        let p = self.path(CPUINFO);
        let f = fsio::open_input(&p, Expect::Regular, Links::Follow)?;
        let mut first_block = String::new();
        for line in std::io::BufReader::new(f.take(MAX_SYSFS_BYTES)).lines() {
            let line = line.map_err(|source| NodeError::Read {
                path: p.clone(),
                source,
            })?;
            if line.trim().is_empty() && !first_block.is_empty() {
                break;
            }
            first_block.push_str(&line);
            first_block.push('\n');
        }
        Ok((p, first_block))
    }

    /// Vendor, family and model of the first processor in `/proc/cpuinfo`.
    pub fn cpu_identity(&self) -> Result<CpuIdentity> {
        self.cpu_facts().map(|(id, _)| id)
    }

    /// The CPU identity and the microcode revision the kernel reports for the first processor
    /// (`/proc/cpuinfo`'s `microcode` line, `0x2007006`; `None` where it has none, as in virtual
    /// machines), from one read of `/proc/cpuinfo`.
    pub fn cpu_facts(&self) -> Result<(CpuIdentity, Option<String>)> {
        let (p, block) = self.first_cpuinfo_block()?;
        let id = parse_cpuinfo(&block).ok_or(NodeError::NoCpuIdentity { path: p })?;
        Ok((id, cpuinfo_value(&block, "microcode").map(str::to_string)))
    }

    /// The kernel release (`uname -r`) of this node.
    pub fn kernel_release(&self) -> Option<String> {
        if let Ok(s) = self.read_text(OSRELEASE) {
            return Some(s.trim().to_string());
        }
        if self.is_rooted_elsewhere() {
            return None;
        }
        nix::sys::utsname::uname()
            .ok()
            .map(|u| u.release().to_string_lossy().into_owned())
    }

    /// msr-safe's version: `/sys/module/msr_safe/version` (readable by everyone), else the
    /// version node (mode 0400, `1.8.0\0` in one read). `None` when msr-safe is not loaded;
    /// `Some(Err)` when it says something that is not a version.
    pub fn msr_safe(&self) -> Option<std::result::Result<MsrSafeVersion, String>> {
        for abs in [MSR_SAFE_VERSION, MSR_SAFE_VERSION_NODE] {
            let path = self.path(abs);
            let Ok(mut f) = fsio::open_input(&path, Expect::DeviceOrRegular, Links::Follow) else {
                continue;
            };
            // One read: the node answers the whole version at once and 0 after.
            let mut buf = [0u8; MAX_VERSION_BYTES];
            let n = loop {
                match f.read(&mut buf) {
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    other => break other,
                }
            };
            let Ok(n) = n else { continue };
            let text = String::from_utf8_lossy(&buf[..n]);
            return Some(
                text.parse::<MsrSafeVersion>()
                    .map_err(|e| format!("{}: {e}", path.display())),
            );
        }
        None
    }

    /// msr-safe's version as it reports it (`1.8.0`), if the module is loaded.
    pub fn msr_safe_version(&self) -> Option<String> {
        match self.msr_safe()? {
            Ok(v) => Some(v.to_string()),
            Err(text) => Some(text),
        }
    }

    /// The kernel lockdown state (`none`, `integrity`, `confidentiality`) if the kernel has one.
    pub fn lockdown(&self) -> Option<String> {
        let s = self.read_text(LOCKDOWN).ok()?;
        // Format: "none [integrity] confidentiality": the bracketed word is in force.
        let start = s.find('[')?;
        let end = s[start..].find(']')? + start;
        Some(s[start + 1..end].to_string())
    }

    /// The stock msr driver's `allow_writes` parameter, if the module exposes it.
    pub fn msr_allow_writes(&self) -> Option<String> {
        self.read_text(MSR_ALLOW_WRITES)
            .ok()
            .map(|s| s.trim().to_string())
    }

    /// The path of msr-safe's allowlist node, under its current name or an older one.
    pub fn allowlist_node(&self) -> PathBuf {
        let current = self.path(ALLOWLIST_NODE);
        if current.exists() {
            return current;
        }
        OLD_ALLOWLIST_NODES
            .iter()
            .map(|n| self.path(n))
            .find(|p| p.exists())
            .unwrap_or(current)
    }
}

/// True for a kernel device node (as opposed to an emulated register file or a missing path).
pub fn is_char_device(path: &Path) -> bool {
    use std::os::unix::fs::FileTypeExt;
    std::fs::metadata(path)
        .map(|m| m.file_type().is_char_device())
        .unwrap_or(false)
}

/// The host name recorded in save files and checked on restore.
pub fn hostname() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "unknown".to_string())
}

/// The value of `key` in a cpuinfo block (`key\t: value`).
fn cpuinfo_value<'t>(block: &'t str, key: &str) -> Option<&'t str> {
    block.lines().find_map(|line| {
        let (k, v) = line.split_once(':')?;
        (k.trim() == key)
            .then(|| v.trim())
            .filter(|v| !v.is_empty())
    })
}

fn parse_cpuinfo(text: &str) -> Option<CpuIdentity> {
    let mut vendor = None;
    let mut family = None;
    let mut model = None;
    // Only the first processor block: all CPUs of a node are one model.
    for line in text.lines() {
        if line.trim().is_empty() && vendor.is_some() {
            break;
        }
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        let (key, value) = (key.trim(), value.trim());
        match key {
            "vendor_id" => vendor = Some(value.to_string()),
            "cpu family" => family = value.parse::<u32>().ok(),
            "model" => model = value.parse::<u32>().ok(),
            _ => {}
        }
    }
    Some(CpuIdentity {
        vendor: vendor?,
        family: family?,
        model: model?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpuinfo_first_block() {
        let t = "processor\t: 0\nvendor_id\t: GenuineIntel\ncpu family\t: 6\nmodel\t\t: 85\nmodel name\t: Xeon\n\nprocessor\t: 1\nvendor_id\t: X\n";
        let id = parse_cpuinfo(t).unwrap();
        assert_eq!(
            id,
            CpuIdentity {
                vendor: "GenuineIntel".into(),
                family: 6,
                model: 85
            }
        );
        assert!(parse_cpuinfo("processor: 0\n").is_none());
        let t = "processor\t: 0\nmicrocode\t: 0x2007006\ncpu MHz\t\t: 2100.000\n";
        assert_eq!(cpuinfo_value(t, "microcode"), Some("0x2007006"));
        assert_eq!(cpuinfo_value(t, "model"), None);
    }

    #[test]
    fn paths_are_taken_under_the_root() {
        let n = Node::new("/tmp/node");
        assert_eq!(
            n.cpu_node(CpuId(3), "msr"),
            PathBuf::from("/tmp/node/dev/cpu/3/msr")
        );
        assert!(n.is_rooted_elsewhere());
        assert!(!Node::default().is_rooted_elsewhere());
    }
}
