//! Emulated nodes: a directory that stands in for `/`, with regular sparse files where the
//! kernel has device nodes. Tests, `msrsave demo` and admins' dry runs share one fixed layout:
//!
//! ```text
//! DIR/dev/cpu/<N>/msr_safe          register file: MSR a = 8 little-endian bytes at offset 8*a
//! DIR/dev/cpu/<N>/msr               the same file (a hard link), for the stock-driver backend
//! DIR/dev/cpu/msr_allowlist         the loaded allowlist, in the kernel's read-back form
//! DIR/sys/devices/system/cpu/online CPU list, e.g. 0-63
//! DIR/sys/devices/system/cpu/cpu<N>/topology/   physical_package_id, die_id, core_id,
//!                                   thread_siblings_list, core_cpus_list, die_cpus_list,
//!                                   package_cpus_list (as the kernel writes them)
//! DIR/sys/module/msr_safe/version   msr-safe's version
//! DIR/proc/cpuinfo                  vendor_id, cpu family, model per processor
//! DIR/proc/sys/kernel/osrelease     kernel release
//! DIR/emulated/shared_registers     the registers a domain shares, `0x00000610 die` per line
//! ```
//!
//! Registers are shared as the hardware shares them: the MSR table gives each register's scope
//! for the emulated CPU model ([`crate::msrs::scope`]), `create` lists the shared ones in
//! `emulated/shared_registers`, their starting values are one per domain, and a write through
//! the emulated device nodes to one CPU lands in the register file of every CPU of its domain
//! ([`Sharing`]). [`poke`] writes one CPU's file alone (as a broken register would read);
//! [`poke_shared`] writes as a job would on the hardware.

use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use std::collections::HashMap;

use crate::allowlist::{Allowlist, AllowlistEntry};
use crate::error::{Error, Result};
use crate::msrs::lock::lock_of;
use crate::msrs::scope::{scope_of, Scope};
use crate::node::{Node, ALLOWLIST_NODE, CPUINFO, MSR_SAFE_VERSION, ONLINE_CPUS, OSRELEASE};
use crate::topology::{CpuPlace, Topology};
use crate::types::{CpuId, CpuIdentity, MsrAddr};

/// The microcode revision an emulated node's /proc/cpuinfo reports.
pub const EMULATED_MICROCODE: &str = "0x2007006";
/// The msr-safe version an emulated node claims.
pub const EMULATED_MSR_SAFE_VERSION: &str = "1.8.0";
pub const EMULATED_KERNEL_RELEASE: &str = "emulated";

pub struct EmulatedNodeSpec<'a> {
    pub cpus: u32,
    pub allowlist: &'a Allowlist,
    pub identity: CpuIdentity,
    /// How the CPUs are laid out; `None`: one package of `cpus` single-thread cores.
    pub shape: Option<Shape>,
}

/// The layout of an emulated node: packages (sockets), cores per package, threads per core.
/// CPUs are numbered as Linux numbers them on most Intel servers: the first thread of every
/// core of package 0, then of package 1, ..., then the second threads in the same order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shape {
    pub packages: u32,
    pub cores_per_package: u32,
    pub threads_per_core: u32,
}

/// Where one CPU sits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Place {
    pub package: u32,
    pub core: u32,
    pub thread: u32,
}

impl Shape {
    pub fn flat(cpus: u32) -> Shape {
        Shape {
            packages: 1,
            cores_per_package: cpus,
            threads_per_core: 1,
        }
    }

    pub fn cpus(&self) -> u32 {
        self.packages
            .saturating_mul(self.cores_per_package)
            .saturating_mul(self.threads_per_core)
    }

    pub fn place(&self, cpu: CpuId) -> Place {
        let per_thread = self.packages * self.cores_per_package;
        let thread = cpu.0 / per_thread;
        let rest = cpu.0 % per_thread;
        Place {
            package: rest / self.cores_per_package,
            core: rest % self.cores_per_package,
            thread,
        }
    }

    /// The topology of this shape (one die per package).
    pub fn topology(&self) -> Topology {
        let places: Vec<CpuPlace> = (0..self.cpus())
            .map(|c| {
                let p = self.place(CpuId(c));
                CpuPlace {
                    cpu: CpuId(c),
                    package: p.package,
                    die: 0,
                    core: p.core,
                }
            })
            .collect();
        Topology::from_places(&places)
    }

    /// The CPUs for which `same` holds with `cpu`'s place.
    fn cpus_where(&self, cpu: CpuId, same: impl Fn(Place, Place) -> bool) -> Vec<CpuId> {
        let me = self.place(cpu);
        (0..self.cpus())
            .map(CpuId)
            .filter(|&c| same(self.place(c), me))
            .collect()
    }
}

/// How a register's value varies on a real node, as the emulated node lays it out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Variation {
    /// Per-thread counters, clocks and status registers: every CPU its own.
    PerCpu,
    /// Registers a core shares: one value per core.
    PerCore,
    /// Registers a die or package shares (RAPL, uncore, package thermal): one value per
    /// package.
    PerPackage,
    /// Other controls: one value on the whole node, as firmware and the OS set them.
    Node,
}

/// Counters, clocks and status registers, by name (`IA32_PMC0`, `C0_MSR_PMON_CTR1`,
/// `MSR_PKG_ENERGY_STATUS`, `IA32_APERF`, ...): they differ on every CPU.
fn counts_or_reports(name: &str) -> bool {
    name.split('_').any(|tok| {
        let digits_after = |p: &str| {
            tok.strip_prefix(p)
                .is_some_and(|r| r.bytes().all(|b| b.is_ascii_digit()))
        };
        digits_after("CTR")
            || digits_after("PMC")
            || matches!(
                tok,
                "STATUS" | "COUNTER" | "APERF" | "MPERF" | "PPERF" | "STAMP"
            )
    })
}

/// How `entry` varies across CPUs on an emulated node of `cpu`'s model: by its scope in the
/// MSR table first (a shared register holds one value per domain, counters included), then, for
/// per-thread registers, by its name (the allowlist's comment, else the table's).
pub fn variation(entry: &AllowlistEntry, cpu: &CpuIdentity) -> Variation {
    match scope_of(Some(cpu), entry.addr) {
        Scope::Package | Scope::Die => return Variation::PerPackage,
        Scope::Core | Scope::Module => return Variation::PerCore,
        Scope::Thread => {}
    }
    let read_only = crate::msrs::is_read_only(entry.addr);
    if read_only || entry.display_name().is_some_and(counts_or_reports) {
        Variation::PerCpu
    } else {
        Variation::Node
    }
}

/// The value an emulated register starts with: stable, different across addresses, varying
/// across CPUs as [`variation`] says, and with its lock bit clear (firmware left it unlocked).
pub fn realistic_value(
    shape: &Shape,
    cpu: CpuId,
    entry: &AllowlistEntry,
    model: &CpuIdentity,
) -> u64 {
    let addr = entry.addr;
    let place = shape.place(cpu);
    let seed = match variation(entry, model) {
        Variation::PerCpu => u64::from(cpu.0) + 1,
        Variation::PerCore => {
            (u64::from(place.package) << 32 | u64::from(place.core) << 8) ^ 0x5A5A_0000
        }
        Variation::PerPackage => u64::from(place.package) << 32,
        Variation::Node => 0,
    };
    let lock = lock_of(Some(model), addr).map_or(0, |l| 1u64 << l.bit);
    splitmix(u64::from(addr.0) ^ seed.rotate_left(17)) & !lock
}

/// Where an emulated node lists its shared registers.
pub const SHARED_REGISTERS: &str = "/emulated/shared_registers";

/// The registers an emulated node shares, and its topology: what makes a write to one CPU's
/// register file land in the files of every CPU of the register's domain, as on the hardware.
#[derive(Debug)]
pub struct Sharing {
    scopes: HashMap<MsrAddr, Scope>,
    topology: Topology,
}

impl Sharing {
    /// The sharing of the emulated node at `node`; `None` when it lists no shared register (a
    /// node made before registers had a scope: every register its CPU's own).
    pub fn load(node: &Node) -> Option<Sharing> {
        let text = node.read_text(SHARED_REGISTERS).ok()?;
        let mut scopes = HashMap::new();
        for line in text.lines() {
            let mut words = line.split_whitespace();
            let (Some(addr), Some(scope)) = (words.next(), words.next()) else {
                continue;
            };
            let Ok(addr) = addr.parse::<MsrAddr>() else {
                continue;
            };
            let Some(scope) = Scope::ALL.into_iter().find(|s| s.name() == scope) else {
                continue;
            };
            scopes.insert(addr, scope);
        }
        if scopes.is_empty() {
            return None;
        }
        let online = node.online_cpus().ok()?;
        let mut needed: Vec<Scope> = scopes.values().copied().collect();
        needed.sort_unstable();
        needed.dedup();
        Some(Sharing {
            topology: Topology::read(node, &online, &needed),
            scopes,
        })
    }

    /// The other CPUs whose register `addr` is `cpu`'s.
    pub fn siblings(&self, cpu: CpuId, addr: MsrAddr) -> Vec<CpuId> {
        let Some(&scope) = self.scopes.get(&addr) else {
            return Vec::new();
        };
        let mut cpus = self.topology.domain_of(cpu, scope).1;
        cpus.retain(|&c| c != cpu);
        cpus
    }
}

/// Write `value` into a register of an emulated node as a job would on the hardware: into the
/// register file of `cpu` and of every CPU that shares the register with it.
pub fn poke_shared(root: &Path, cpu: CpuId, addr: MsrAddr, value: u64) -> Result<()> {
    poke(root, cpu, addr, value)?;
    if let Some(sharing) = Sharing::load(&Node::new(root)) {
        for c in sharing.siblings(cpu, addr) {
            poke(root, c, addr, value)?;
        }
    }
    Ok(())
}

fn splitmix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
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
    let shape = spec.shape.unwrap_or(Shape::flat(spec.cpus));
    if shape.cpus() != spec.cpus {
        return Err(Error::Usage(format!(
            "{} packages x {} cores x {} threads is {} CPUs, not {}",
            shape.packages,
            shape.cores_per_package,
            shape.threads_per_core,
            shape.cpus(),
            spec.cpus
        )));
    }
    write_file(
        &node.path(ONLINE_CPUS),
        format!("0-{}\n", spec.cpus - 1).as_bytes(),
    )?;
    for cpu in (0..spec.cpus).map(CpuId) {
        let p = shape.place(cpu);
        let list = |same: fn(Place, Place) -> bool| {
            format!(
                "{}\n",
                crate::types::format_cpu_list(&shape.cpus_where(cpu, same))
            )
        };
        let files = [
            ("physical_package_id", format!("{}\n", p.package)),
            ("die_id", format!("{}\n", p.package)),
            ("core_id", format!("{}\n", p.core)),
            (
                "thread_siblings_list",
                list(|a, b| a.package == b.package && a.core == b.core),
            ),
            (
                "core_cpus_list",
                list(|a, b| a.package == b.package && a.core == b.core),
            ),
            ("die_cpus_list", list(|a, b| a.package == b.package)),
            ("package_cpus_list", list(|a, b| a.package == b.package)),
            ("core_siblings_list", list(|a, b| a.package == b.package)),
        ];
        for (name, text) in files {
            write_file(
                &node.path(&format!(
                    "/sys/devices/system/cpu/cpu{}/topology/{name}",
                    cpu.0
                )),
                text.as_bytes(),
            )?;
        }
    }
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
            "processor\t: {cpu}\nvendor_id\t: {}\ncpu family\t: {}\nmodel\t\t: {}\nmodel name\t: emulated CPU\nmicrocode\t: {EMULATED_MICROCODE}\n\n",
            spec.identity.vendor, spec.identity.family, spec.identity.model
        ));
    }
    write_file(&node.path(CPUINFO), cpuinfo.as_bytes())?;

    let mut shared = String::new();
    for e in spec.allowlist.entries() {
        let scope = scope_of(Some(&spec.identity), e.addr);
        if scope != Scope::Thread {
            shared.push_str(&format!("{} {scope}\n", e.addr));
        }
    }
    write_file(&node.path(SHARED_REGISTERS), shared.as_bytes())?;

    let mut buf = Vec::new();
    for cpu in (0..spec.cpus).map(CpuId) {
        let path = node.cpu_node(cpu, "msr_safe");
        let dir = path.parent().unwrap_or(dir);
        fs::create_dir_all(dir).map_err(io(dir))?;
        let f = File::create(&path).map_err(io(&path))?;
        for e in spec.allowlist.entries() {
            buf.clear();
            buf.extend_from_slice(&realistic_value(&shape, cpu, e, &spec.identity).to_le_bytes());
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
    fn shapes_number_cpus_as_linux_does() {
        let s = Shape {
            packages: 2,
            cores_per_package: 4,
            threads_per_core: 2,
        };
        assert_eq!(s.cpus(), 16);
        assert_eq!(
            s.place(CpuId(0)),
            Place {
                package: 0,
                core: 0,
                thread: 0
            }
        );
        assert_eq!(
            s.place(CpuId(5)),
            Place {
                package: 1,
                core: 1,
                thread: 0
            }
        );
        assert_eq!(
            s.place(CpuId(13)),
            Place {
                package: 1,
                core: 1,
                thread: 1
            }
        );
        // Controls hold one value per package (or node), counters one per CPU.
        let al = Allowlist::parse(
            b"0x610 0xff # MSR_PKG_POWER_LIMIT\n0xC1 0 # IA32_PMC0\n0x1B0 0xf\n0xE01 0 # C0_MSR_PMON_CTR1\n0x38F 0 # IA32_PERF_GLOBAL_CTRL\n",
            "t",
        )
        .unwrap();
        let [pl, pmc, bias, cha, ctrl] = [0, 1, 2, 3, 4].map(|i| &al.entries()[i]);
        let skx = CpuIdentity {
            vendor: "GenuineIntel".into(),
            family: 6,
            model: 0x55,
        };
        let v = |cpu, e| realistic_value(&s, CpuId(cpu), e, &skx);
        assert_eq!(v(0, pl), v(11, pl));
        assert_ne!(v(0, pl), v(5, pl));
        assert_ne!(v(0, pmc), v(8, pmc));
        assert_ne!(v(0, cha), v(1, cha));
        assert_eq!(v(0, bias), v(15, bias));
        assert_eq!(v(0, ctrl), v(15, ctrl), "a _CTRL is not a counter");
    }

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
                shape: None,
            },
        )
        .unwrap();
        assert_eq!(
            node.online_cpus().unwrap(),
            vec![CpuId(0), CpuId(1), CpuId(2)]
        );
        assert_eq!(node.cpu_identity().unwrap(), id);
        let v = realistic_value(&Shape::flat(3), CpuId(2), &al.entries()[1], &id);
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
                identity: id,
                shape: None,
            }
        )
        .is_err());
    }
}
