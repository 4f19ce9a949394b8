//! Emulated nodes: a directory that stands in for `/`, with regular sparse files where the
//! kernel has device nodes. Tests, `msrsave demo` and admins' dry runs share one fixed layout:
//!
//! ```text
//! DIR/dev/cpu/<N>/msr_safe          register file: MSR a = 8 little-endian bytes at offset 8*a
//! DIR/dev/cpu/<N>/msr               the same file (a hard link), for the stock-driver backend
//! DIR/dev/cpu/msr_allowlist         the loaded allowlist, in the kernel's read-back form
//! DIR/sys/devices/system/cpu/online CPU list, e.g. 0-63
//! DIR/sys/module/msr_safe/version   msr-safe's version
//! DIR/proc/cpuinfo                  vendor_id, cpu family, model per processor
//! DIR/proc/sys/kernel/osrelease     kernel release
//! ```

use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::allowlist::Allowlist;
use crate::error::{Error, Result};
use crate::node::{Node, ALLOWLIST_NODE, CPUINFO, MSR_SAFE_VERSION, ONLINE_CPUS, OSRELEASE};
use crate::types::{CpuId, CpuIdentity, MsrAddr};

/// The msr-safe version an emulated node claims.
pub const EMULATED_MSR_SAFE_VERSION: &str = "1.8.0";
pub const EMULATED_KERNEL_RELEASE: &str = "emulated";

pub struct EmulatedNodeSpec<'a> {
    pub cpus: u32,
    pub allowlist: &'a Allowlist,
    pub identity: CpuIdentity,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |e| Error::io(path, e)
}

fn write_file(path: &Path, contents: &[u8]) -> Result<()> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).map_err(io(dir))?;
    }
    fs::write(path, contents).map_err(io(path))
}

/// A plausible register value: stable for a given (cpu, address), different across addresses,
/// and the same on every CPU for most registers (as package- and core-wide settings are).
pub fn plausible_value(cpu: CpuId, addr: MsrAddr) -> u64 {
    // splitmix64: cheap, well-spread bits.
    let mut z = (addr.0 as u64).wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    // Every eighth register differs per CPU, like counters and per-thread state.
    if addr.0 % 8 == 3 {
        z ^= cpu.0 as u64;
    }
    z
}

/// The register file of one CPU of an emulated node.
pub fn register_file(root: &Path, cpu: CpuId) -> PathBuf {
    Node::new(root).cpu_node(cpu, "msr_safe")
}

/// Write `value` into an emulated register, as a job on a real node would through msr-safe.
pub fn poke(root: &Path, cpu: CpuId, addr: MsrAddr, value: u64) -> Result<()> {
    let path = register_file(root, cpu);
    let f = OpenOptions::new()
        .write(true)
        .open(&path)
        .map_err(io(&path))?;
    f.write_all_at(&value.to_le_bytes(), addr.emulated_offset())
        .map_err(io(&path))
}

/// Read an emulated register.
pub fn peek(root: &Path, cpu: CpuId, addr: MsrAddr) -> Result<u64> {
    let path = register_file(root, cpu);
    let f = File::open(&path).map_err(io(&path))?;
    let mut buf = [0u8; 8];
    f.read_exact_at(&mut buf, addr.emulated_offset())
        .map_err(io(&path))?;
    Ok(u64::from_le_bytes(buf))
}

/// Make an emulated node under `dir`. Refuses a directory that already holds a node.
pub fn create(dir: &Path, spec: &EmulatedNodeSpec) -> Result<Node> {
    let node = Node::new(dir);
    if node.path("/dev/cpu").exists() {
        return Err(Error::Usage(format!(
            "{} already holds an emulated node (dev/cpu exists); remove it or pick another directory",
            dir.display()
        )));
    }
    if spec.cpus == 0 || spec.cpus > crate::types::MAX_CPUS {
        return Err(Error::Usage(format!(
            "an emulated node has 1 to {} CPUs (the kernel's most), not {}",
            crate::types::MAX_CPUS,
            spec.cpus
        )));
    }
    write_file(
        &node.path(ALLOWLIST_NODE),
        spec.allowlist.to_kernel_text().as_bytes(),
    )?;
    write_file(
        &node.path(ONLINE_CPUS),
        format!("0-{}\n", spec.cpus - 1).as_bytes(),
    )?;
    write_file(
        &node.path(MSR_SAFE_VERSION),
        format!("{EMULATED_MSR_SAFE_VERSION}\n").as_bytes(),
    )?;
    write_file(
        &node.path(OSRELEASE),
        format!("{EMULATED_KERNEL_RELEASE}\n").as_bytes(),
    )?;
    let mut cpuinfo = String::new();
    for cpu in 0..spec.cpus {
        cpuinfo.push_str(&format!(
            "processor\t: {cpu}\nvendor_id\t: {}\ncpu family\t: {}\nmodel\t\t: {}\nmodel name\t: emulated CPU\n\n",
            spec.identity.vendor, spec.identity.family, spec.identity.model
        ));
    }
    write_file(&node.path(CPUINFO), cpuinfo.as_bytes())?;

    let mut buf = Vec::new();
    for cpu in (0..spec.cpus).map(CpuId) {
        let path = node.cpu_node(cpu, "msr_safe");
        let dir = path.parent().unwrap_or(dir);
        fs::create_dir_all(dir).map_err(io(dir))?;
        let f = File::create(&path).map_err(io(&path))?;
        for e in spec.allowlist.entries() {
            buf.clear();
            buf.extend_from_slice(&plausible_value(cpu, e.addr).to_le_bytes());
            f.write_all_at(&buf, e.addr.emulated_offset())
                .map_err(io(&path))?;
        }
        let stock = node.cpu_node(cpu, "msr");
        fs::hard_link(&path, &stock).map_err(io(&stock))?;
    }
    Ok(node)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_is_the_documented_one() {
        let dir = tempfile::tempdir().unwrap();
        let al = Allowlist::parse(b"0x10 0\n0xC0000103 0xffffffff\n", "t").unwrap();
        let id = CpuIdentity {
            vendor: "GenuineIntel".into(),
            family: 6,
            model: 0x55,
        };
        let node = create(
            dir.path(),
            &EmulatedNodeSpec {
                cpus: 3,
                allowlist: &al,
                identity: id.clone(),
            },
        )
        .unwrap();
        assert_eq!(
            node.online_cpus().unwrap(),
            vec![CpuId(0), CpuId(1), CpuId(2)]
        );
        assert_eq!(node.cpu_identity().unwrap(), id);
        let v = plausible_value(CpuId(2), MsrAddr(0xC0000103));
        assert_eq!(peek(dir.path(), CpuId(2), MsrAddr(0xC0000103)).unwrap(), v);
        // msr and msr_safe are one register file.
        poke(dir.path(), CpuId(1), MsrAddr(0x10), 42).unwrap();
        let stock = File::open(node.cpu_node(CpuId(1), "msr")).unwrap();
        let mut buf = [0u8; 8];
        stock.read_exact_at(&mut buf, 0x10 * 8).unwrap();
        assert_eq!(u64::from_le_bytes(buf), 42);
        // A second create over it is refused.
        assert!(create(
            dir.path(),
            &EmulatedNodeSpec {
                cpus: 1,
                allowlist: &al,
                identity: id
            }
        )
        .is_err());
    }
}
