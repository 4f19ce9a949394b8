//! Which CPUs share a core, a module, a die and a package, from the kernel's sysfs topology files
//! (`/sys/devices/system/cpu/cpuN/topology/`, under the node's root), and the domains a register
//! of each [`Scope`] has on a node.
//!
//! Files read, per level, the newer name first (Linux 5.x renamed some):
//!
//! | level | CPUs sharing it | its number |
//! |---|---|---|
//! | core | `core_cpus_list`, else `thread_siblings_list` | `core_id` |
//! | module | `cluster_cpus_list` | `cluster_id` |
//! | die | `die_cpus_list` (a die is the package when absent: kernels before 5.2) | `die_id` |
//! | package | `package_cpus_list`, else `core_siblings_list` | `physical_package_id` |
//!
//! Safe by construction: a level whose files are missing or contradict each other (a CPU in two
//! domains, a core across two packages) makes every CPU its own domain at that level, which is
//! per-thread behaviour. Only the levels an operation needs are read, and each list file once per
//! domain (its members share it), so a restore of a package register on 256 CPUs reads a handful
//! of files.

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use crate::allowlist::Allowlist;
use crate::fsio::InputError;
use crate::msrs::lock::{lock_of, Lock};
use crate::msrs::scope::{scope_of, Scope};
use crate::node::{Node, NodeError};
use crate::types::{parse_cpu_list, CpuId, CpuIdentity, MsrAddr};

/// Where a register instance sits: one CPU, or a domain of CPUs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Where {
    Cpu(CpuId),
    Core {
        package: u32,
        core: u32,
    },
    Module {
        package: u32,
        module: u32,
    },
    /// A die of a package of several dies.
    Die {
        package: u32,
        die: u32,
    },
    /// A package (also a die-scoped register's domain on a package of one die).
    Package(u32),
}

impl Where {
    pub fn scope(self) -> Scope {
        match self {
            Where::Cpu(_) => Scope::Thread,
            Where::Core { .. } => Scope::Core,
            Where::Module { .. } => Scope::Module,
            Where::Die { .. } => Scope::Die,
            Where::Package(_) => Scope::Package,
        }
    }

    /// The package, when known.
    pub fn package(self) -> Option<u32> {
        match self {
            Where::Cpu(_) => None,
            Where::Core { package, .. }
            | Where::Module { package, .. }
            | Where::Die { package, .. }
            | Where::Package(package) => Some(package),
        }
    }
}

impl fmt::Display for Where {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Where::Cpu(c) => write!(f, "CPU {c}"),
            Where::Core { package, core } => write!(f, "package {package} core {core}"),
            Where::Module { package, module } => write!(f, "package {package} module {module}"),
            Where::Die { package, die } => write!(f, "package {package} die {die}"),
            Where::Package(p) => write!(f, "package {p}"),
        }
    }
}

/// The levels above a thread, in [`Topology::levels`] order.
const LEVELS: [Scope; 4] = [Scope::Core, Scope::Module, Scope::Die, Scope::Package];

fn level_index(scope: Scope) -> Option<usize> {
    LEVELS.iter().position(|s| *s == scope)
}

/// The domains of one level: for each CPU of the topology (by index), its domain.
#[derive(Clone, Debug)]
struct Level {
    of: Vec<u32>,
    domains: Vec<Domain>,
}

#[derive(Clone, Debug)]
struct Domain {
    at: Where,
    /// Its CPUs, sorted.
    cpus: Vec<CpuId>,
}

/// The node's CPUs and the domains they share.
#[derive(Clone, Debug, Default)]
pub struct Topology {
    /// Sorted.
    cpus: Vec<CpuId>,
    /// `None`: every CPU its own domain at that level.
    levels: [Option<Level>; 4],
    /// Why a level needed was left per thread (missing or contradictory files).
    pub notes: Vec<String>,
}

/// Where one CPU sits, as a caller that knows the layout gives it ([`Topology::from_places`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CpuPlace {
    pub cpu: CpuId,
    pub package: u32,
    pub die: u32,
    pub core: u32,
}

impl Topology {
    /// Every CPU its own core, die and package: per-thread behaviour.
    pub fn per_thread(cpus: &[CpuId]) -> Topology {
        let mut cpus = cpus.to_vec();
        cpus.sort_unstable();
        cpus.dedup();
        Topology {
            cpus,
            ..Topology::default()
        }
    }

    /// A topology from known places (emulated shapes, tests). Cores are numbered within their
    /// die, dies within their package; there are no modules.
    pub fn from_places(places: &[CpuPlace]) -> Topology {
        let mut t = Topology::per_thread(&places.iter().map(|p| p.cpu).collect::<Vec<_>>());
        let by_cpu: HashMap<CpuId, CpuPlace> = places.iter().map(|p| (p.cpu, *p)).collect();
        let dies_of = |pkg: u32| {
            let mut d: Vec<u32> = places
                .iter()
                .filter(|p| p.package == pkg)
                .map(|p| p.die)
                .collect();
            d.sort_unstable();
            d.dedup();
            d.len()
        };
        let key = |scope: Scope, p: &CpuPlace| -> Where {
            match scope {
                Scope::Core => Where::Core {
                    package: p.package,
                    core: p.core,
                },
                Scope::Die if dies_of(p.package) > 1 => Where::Die {
                    package: p.package,
                    die: p.die,
                },
                _ => Where::Package(p.package),
            }
        };
        for scope in [Scope::Core, Scope::Die, Scope::Package] {
            let mut groups: BTreeMap<(Where, u32), Vec<CpuId>> = BTreeMap::new();
            for &c in &t.cpus {
                let p = by_cpu[&c];
                // A core is within a die: the die disambiguates core numbers.
                let die = if scope == Scope::Core { p.die } else { 0 };
                groups.entry((key(scope, &p), die)).or_default().push(c);
            }
            let domains: Vec<(Where, Vec<CpuId>)> = groups
                .into_iter()
                .map(|((at, _), cpus)| (at, cpus))
                .collect();
            t.set_level(scope, domains);
        }
        t
    }

    /// Read the levels `needed` from the node's sysfs (the package level too, whenever any
    /// level above a thread is needed: it names the others). Never fails: what cannot be read
    /// is left per thread, with a note.
    pub fn read(node: &Node, online: &[CpuId], needed: &[Scope]) -> Topology {
        let mut t = Topology::per_thread(online);
        let wants = |s: Scope| needed.contains(&s);
        if !LEVELS.iter().any(|&s| wants(s)) {
            return t;
        }
        let all = t.cpus.clone();
        let reader = Reader { node, cpus: &all };
        let packages = match reader.level(&["package_cpus_list", "core_siblings_list"]) {
            Ok(p) => p,
            Err(why) => {
                t.notes.push(format!(
                    "package topology not read ({why}): every CPU is taken as its own package"
                ));
                return t;
            }
        };
        let package_id: HashMap<CpuId, u32> = packages
            .iter()
            .enumerate()
            .flat_map(|(i, g)| {
                let id = reader
                    .number(g[0], "physical_package_id")
                    .unwrap_or(i as u32);
                g.iter().map(move |&c| (c, id))
            })
            .collect();
        let pkg = |c: CpuId| package_id.get(&c).copied().unwrap_or(0);
        // Dies: absent on kernels before 5.2, where a die is the package.
        let dies = if wants(Scope::Die) {
            match reader.level(&["die_cpus_list"]) {
                Ok(d) => Some(d),
                Err(Missing::Absent) => Some(packages.clone()),
                Err(why) => {
                    t.notes.push(format!(
                        "die topology not read ({why}): die-scoped registers are handled per CPU"
                    ));
                    None
                }
            }
        } else {
            None
        };
        if let Some(dies) = dies {
            let mut per_package: HashMap<u32, usize> = HashMap::new();
            for g in &dies {
                *per_package.entry(pkg(g[0])).or_default() += 1;
            }
            let domains = dies
                .into_iter()
                .map(|g| {
                    let p = pkg(g[0]);
                    let at = if per_package[&p] > 1 {
                        Where::Die {
                            package: p,
                            die: reader.number(g[0], "die_id").unwrap_or(0),
                        }
                    } else {
                        Where::Package(p)
                    };
                    (at, g)
                })
                .collect();
            t.set_level(Scope::Die, domains);
        }
        for (scope, lists, id) in [
            (
                Scope::Core,
                &["core_cpus_list", "thread_siblings_list"][..],
                "core_id",
            ),
            (Scope::Module, &["cluster_cpus_list"][..], "cluster_id"),
        ] {
            if !wants(scope) {
                continue;
            }
            match reader.level(lists) {
                Ok(groups) => {
                    let domains = groups
                        .into_iter()
                        .map(|g| {
                            let package = pkg(g[0]);
                            let n = reader.number(g[0], id).unwrap_or(g[0].0);
                            let at = match scope {
                                Scope::Core => Where::Core { package, core: n },
                                _ => Where::Module { package, module: n },
                            };
                            (at, g)
                        })
                        .collect();
                    t.set_level(scope, domains);
                }
                Err(why) => t.notes.push(format!(
                    "{scope} topology not read ({why}): {scope}-scoped registers are handled per CPU"
                )),
            }
        }
        {
            let domains = packages
                .into_iter()
                .map(|g| (Where::Package(pkg(g[0])), g))
                .collect();
            t.set_level(Scope::Package, domains);
        }
        t.check_nesting();
        t
    }

    fn set_level(&mut self, scope: Scope, domains: Vec<(Where, Vec<CpuId>)>) {
        let Some(li) = level_index(scope) else {
            return;
        };
        let mut of = vec![u32::MAX; self.cpus.len()];
        let mut out = Vec::with_capacity(domains.len());
        for (at, cpus) in domains {
            let d = out.len() as u32;
            for c in &cpus {
                if let Ok(i) = self.cpus.binary_search(c) {
                    of[i] = d;
                }
            }
            out.push(Domain { at, cpus });
        }
        // A CPU no domain covered (it should not happen: every list was read from a CPU of the
        // topology) stays its own.
        for (i, slot) in of.iter_mut().enumerate() {
            if *slot == u32::MAX {
                *slot = out.len() as u32;
                out.push(Domain {
                    at: Where::Cpu(self.cpus[i]),
                    cpus: vec![self.cpus[i]],
                });
            }
        }
        self.levels[li] = Some(Level { of, domains: out });
    }

    /// Cores within modules within dies within packages: a level that crosses the one above it
    /// is dropped (per thread), as contradictory files would make it.
    fn check_nesting(&mut self) {
        for (lower, scope) in LEVELS.iter().enumerate() {
            let Some(low) = &self.levels[lower] else {
                continue;
            };
            let crosses = self.levels[lower + 1..].iter().flatten().any(|high| {
                low.domains.iter().any(|d| {
                    let first = self.cpus.binary_search(&d.cpus[0]).ok();
                    d.cpus.iter().any(|c| {
                        self.cpus.binary_search(c).ok().map(|i| high.of[i])
                            != first.map(|i| high.of[i])
                    })
                })
            });
            if crosses {
                self.notes.push(format!(
                    "the {scope} domains cross a larger domain: {scope}-scoped registers are handled per CPU"
                ));
                self.levels[lower] = None;
            }
        }
    }

    /// The online CPUs this topology covers.
    pub fn cpus(&self) -> &[CpuId] {
        &self.cpus
    }

    /// True when no level is known (every register is handled per CPU).
    pub fn is_per_thread(&self) -> bool {
        self.levels.iter().all(Option::is_none)
    }

    /// The domain of `cpu` for a register of `scope`, and its CPUs.
    pub fn domain_of(&self, cpu: CpuId, scope: Scope) -> (Where, Vec<CpuId>) {
        let found = level_index(scope)
            .and_then(|li| self.levels[li].as_ref())
            .zip(self.cpus.binary_search(&cpu).ok())
            .map(|(level, i)| &level.domains[level.of[i] as usize]);
        match found {
            Some(d) => (d.at, d.cpus.clone()),
            None => (Where::Cpu(cpu), vec![cpu]),
        }
    }

    /// `cpus` (sorted) split into the domains of `scope`: each domain with its CPUs among
    /// `cpus`, in the order of their first CPU. CPUs outside the topology are their own domain.
    pub fn split(&self, scope: Scope, cpus: &[CpuId]) -> Vec<(Where, Vec<CpuId>)> {
        let level = level_index(scope).and_then(|li| self.levels[li].as_ref());
        let Some(level) = level else {
            return cpus.iter().map(|&c| (Where::Cpu(c), vec![c])).collect();
        };
        let mut slot_of: HashMap<u32, usize> = HashMap::new();
        let mut out: Vec<(Where, Vec<CpuId>)> = Vec::new();
        for &c in cpus {
            match self.cpus.binary_search(&c) {
                Ok(i) => {
                    let d = level.of[i];
                    let slot = *slot_of.entry(d).or_insert_with(|| {
                        out.push((level.domains[d as usize].at, Vec::new()));
                        out.len() - 1
                    });
                    out[slot].1.push(c);
                }
                Err(_) => out.push((Where::Cpu(c), vec![c])),
            }
        }
        out
    }

    /// Every domain of `scope`, with its CPUs, in the order of their first CPU.
    pub fn domains(&self, scope: Scope) -> Vec<(Where, Vec<CpuId>)> {
        self.split(scope, &self.cpus)
    }

    /// `2 packages, 112 cores, 224 CPUs` for reports (levels not read are not counted).
    pub fn summary(&self) -> String {
        let count = |s: Scope| {
            level_index(s)
                .and_then(|li| self.levels[li].as_ref())
                .map(|l| l.domains.len())
        };
        let mut parts = Vec::new();
        if let Some(p) = count(Scope::Package) {
            parts.push(format!("{p} package{}", if p == 1 { "" } else { "s" }));
        }
        if let Some(d) = count(Scope::Die).filter(|&d| Some(d) != count(Scope::Package)) {
            parts.push(format!("{d} dies"));
        }
        if let Some(c) = count(Scope::Core) {
            parts.push(format!("{c} core{}", if c == 1 { "" } else { "s" }));
        }
        parts.push(format!("{} CPUs", self.cpus.len()));
        parts.join(", ")
    }
}

/// What a restore or check needs to know about the node beyond its registers: which CPUs share
/// which register (topology and the CPU model's scopes), locks and order (the model's tables).
#[derive(Clone, Debug, Default)]
pub struct Layout {
    pub topology: Topology,
    /// The CPU model; `None`: no table applies (every register per thread, no lock, no order).
    pub cpu: Option<CpuIdentity>,
}

impl Layout {
    /// Every register per thread, no lock or order known: what tests of per-CPU behaviour and
    /// callers without a node use.
    pub fn per_thread(cpus: &[CpuId]) -> Layout {
        Layout {
            topology: Topology::per_thread(cpus),
            cpu: None,
        }
    }

    /// The node's CPU model and the topology levels the scopes of `list` need.
    pub fn read(node: &Node, online: &[CpuId], list: &Allowlist) -> Layout {
        Layout::read_for(node, online, list, node.cpu_identity().ok())
    }

    /// As [`Layout::read`], for a CPU model the caller has already read.
    pub fn read_for(
        node: &Node,
        online: &[CpuId],
        list: &Allowlist,
        cpu: Option<CpuIdentity>,
    ) -> Layout {
        let mut needed: Vec<Scope> = list
            .entries()
            .iter()
            .map(|e| scope_of(cpu.as_ref(), e.addr))
            .filter(|s| *s != Scope::Thread)
            .collect();
        needed.sort_unstable();
        needed.dedup();
        Layout {
            topology: Topology::read(node, online, &needed),
            cpu,
        }
    }

    pub fn scope(&self, addr: MsrAddr) -> Scope {
        scope_of(self.cpu.as_ref(), addr)
    }

    pub fn lock(&self, addr: MsrAddr) -> Option<Lock> {
        lock_of(self.cpu.as_ref(), addr)
    }
}

/// Why a level could not be read.
#[derive(Debug)]
enum Missing {
    /// No CPU has the file: the kernel does not provide the level.
    Absent,
    /// A file that could not be read or parsed, or lists that contradict each other.
    Bad(String),
}

impl fmt::Display for Missing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Missing::Absent => f.write_str("the kernel provides no such files"),
            Missing::Bad(why) => f.write_str(why),
        }
    }
}

struct Reader<'a> {
    node: &'a Node,
    cpus: &'a [CpuId],
}

impl Reader<'_> {
    fn path(cpu: CpuId, file: &str) -> String {
        format!("/sys/devices/system/cpu/cpu{}/topology/{file}", cpu.0)
    }

    /// The first of `names` that `cpu` has, parsed as a CPU list.
    fn list(&self, cpu: CpuId, names: &[&str]) -> Result<Vec<CpuId>, Missing> {
        for name in names {
            let abs = Self::path(cpu, name);
            let text = match self.node.read_text(&abs) {
                Ok(text) => text,
                Err(NodeError::Input(InputError::Open { source, .. }))
                    if source.kind() == std::io::ErrorKind::NotFound =>
                {
                    continue;
                }
                Err(e) => return Err(Missing::Bad(crate::cause::chain(&e))),
            };
            return parse_cpu_list(&text)
                .map_err(|e| Missing::Bad(format!("{}: {e}", self.node.path(&abs).display())));
        }
        Err(Missing::Absent)
    }

    /// A number file (`core_id`, `physical_package_id`); `None` if absent, negative or bad.
    fn number(&self, cpu: CpuId, name: &str) -> Option<u32> {
        let text = self.node.read_text(&Self::path(cpu, name)).ok()?;
        text.trim().parse::<u32>().ok()
    }

    /// The groups of one level: each CPU's list read once per group (its members share it),
    /// restricted to the CPUs of the topology.
    fn level(&self, names: &[&str]) -> Result<Vec<Vec<CpuId>>, Missing> {
        let mut assigned: HashMap<CpuId, usize> = HashMap::new();
        let mut groups: Vec<Vec<CpuId>> = Vec::new();
        for &cpu in self.cpus {
            if assigned.contains_key(&cpu) {
                continue;
            }
            let listed = match self.list(cpu, names) {
                Ok(l) => l,
                // A CPU without the file while others have it contradicts them.
                Err(Missing::Absent) if !groups.is_empty() => {
                    return Err(Missing::Bad(format!(
                        "CPU {cpu} has no {} while others have",
                        names.join(" or ")
                    )))
                }
                Err(e) => return Err(e),
            };
            if listed.binary_search(&cpu).is_err() {
                return Err(Missing::Bad(format!(
                    "CPU {cpu}'s {} does not list CPU {cpu}",
                    names[0]
                )));
            }
            let members: Vec<CpuId> = listed
                .into_iter()
                .filter(|c| self.cpus.binary_search(c).is_ok())
                .collect();
            if let Some(c) = members.iter().find(|c| assigned.contains_key(c)) {
                return Err(Missing::Bad(format!(
                    "CPU {c} is listed with CPU {cpu} and in another group"
                )));
            }
            for &c in &members {
                assigned.insert(c, groups.len());
            }
            groups.push(members);
        }
        Ok(groups)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(root: &std::path::Path, cpu: u32, file: &str, text: &str) {
        let p = root.join(format!("sys/devices/system/cpu/cpu{cpu}/topology/{file}"));
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, format!("{text}\n")).unwrap();
    }

    /// 2 packages x 2 cores x 2 threads, numbered as QEMU and many laptops do (siblings
    /// adjacent): CPU 0,1 = package 0 core 0.
    fn adjacent(root: &std::path::Path, old_names: bool) {
        for cpu in 0..8u32 {
            let (pkg, core) = (cpu / 4, (cpu / 2) % 2);
            let first_core = cpu - cpu % 2;
            let first_pkg = cpu - cpu % 4;
            let (core_list, pkg_list) = if old_names {
                ("thread_siblings_list", "core_siblings_list")
            } else {
                ("core_cpus_list", "package_cpus_list")
            };
            write(
                root,
                cpu,
                core_list,
                &format!("{first_core}-{}", first_core + 1),
            );
            write(
                root,
                cpu,
                pkg_list,
                &format!("{first_pkg}-{}", first_pkg + 3),
            );
            write(root, cpu, "physical_package_id", &pkg.to_string());
            write(root, cpu, "core_id", &core.to_string());
        }
    }

    fn cpus(r: std::ops::Range<u32>) -> Vec<CpuId> {
        r.map(CpuId).collect()
    }

    #[test]
    fn reads_packages_and_cores_under_either_name() {
        for old in [false, true] {
            let dir = tempfile::tempdir().unwrap();
            adjacent(dir.path(), old);
            let node = Node::new(dir.path());
            let t = Topology::read(&node, &cpus(0..8), &[Scope::Core, Scope::Die]);
            assert!(t.notes.is_empty(), "{:?}", t.notes);
            assert_eq!(
                t.domain_of(CpuId(5), Scope::Die),
                (Where::Package(1), cpus(4..8)),
                "no die files: a die is the package"
            );
            assert_eq!(
                t.domain_of(CpuId(5), Scope::Core),
                (
                    Where::Core {
                        package: 1,
                        core: 0
                    },
                    cpus(4..6)
                )
            );
            let split = t.split(Scope::Die, &[CpuId(1), CpuId(2), CpuId(6)]);
            assert_eq!(
                split,
                [
                    (Where::Package(0), vec![CpuId(1), CpuId(2)]),
                    (Where::Package(1), vec![CpuId(6)])
                ]
            );
            // Not read: per thread.
            assert_eq!(t.domain_of(CpuId(5), Scope::Module).0, Where::Cpu(CpuId(5)));
            assert_eq!(t.summary(), "2 packages, 4 cores, 8 CPUs");
        }
    }

    #[test]
    fn offline_cpus_are_left_out_and_each_list_is_read_once_per_domain() {
        let dir = tempfile::tempdir().unwrap();
        adjacent(dir.path(), false);
        let node = Node::new(dir.path());
        // CPU 5 offline: its package still holds 4, 6, 7.
        let online = [0, 1, 2, 3, 4, 6, 7].map(CpuId);
        // The other CPUs of a package are not read: breaking their files changes nothing.
        write(dir.path(), 7, "package_cpus_list", "garbage");
        let t = Topology::read(&node, &online, &[Scope::Package]);
        assert!(t.notes.is_empty(), "{:?}", t.notes);
        assert_eq!(
            t.domain_of(CpuId(6), Scope::Package).1,
            [4, 6, 7].map(CpuId)
        );
    }

    #[test]
    fn missing_or_contradictory_files_mean_per_thread() {
        let dir = tempfile::tempdir().unwrap();
        let node = Node::new(dir.path());
        // An emulated node from before topology files: every CPU its own package.
        let t = Topology::read(&node, &cpus(0..4), &[Scope::Die, Scope::Core]);
        assert_eq!(
            t.domain_of(CpuId(2), Scope::Die),
            (Where::Cpu(CpuId(2)), vec![CpuId(2)])
        );
        assert!(t.is_per_thread());
        assert_eq!(t.notes.len(), 1, "{:?}", t.notes);
        // CPU 4 claims CPUs 4-7, CPU 6 claims 2-7: contradictory lists.
        adjacent(dir.path(), false);
        write(dir.path(), 6, "package_cpus_list", "2-7");
        write(dir.path(), 4, "package_cpus_list", "4-5");
        let t = Topology::read(&node, &cpus(0..8), &[Scope::Package]);
        assert!(t.is_per_thread(), "{t:?}");
        assert!(t.notes[0].contains("another group"), "{:?}", t.notes);
        // A core that crosses packages is dropped, the packages stay.
        let dir = tempfile::tempdir().unwrap();
        adjacent(dir.path(), false);
        write(dir.path(), 2, "core_cpus_list", "2-4");
        let t = Topology::read(&Node::new(dir.path()), &cpus(0..8), &[Scope::Core]);
        assert_eq!(t.domain_of(CpuId(2), Scope::Core).0, Where::Cpu(CpuId(2)));
        assert_eq!(t.domain_of(CpuId(2), Scope::Package).0, Where::Package(0));
    }

    #[test]
    fn places_name_dies_only_on_packages_of_several() {
        let place = |cpu, package, die, core| CpuPlace {
            cpu: CpuId(cpu),
            package,
            die,
            core,
        };
        let t = Topology::from_places(&[
            place(0, 0, 0, 0),
            place(1, 0, 1, 0),
            place(2, 1, 0, 0),
            place(3, 1, 0, 1),
        ]);
        assert_eq!(
            t.domain_of(CpuId(1), Scope::Die).0,
            Where::Die { package: 0, die: 1 }
        );
        assert_eq!(
            t.domain_of(CpuId(3), Scope::Die),
            (Where::Package(1), cpus(2..4))
        );
        // Core 0 of die 0 and core 0 of die 1 are two cores.
        assert_eq!(t.domain_of(CpuId(1), Scope::Core).1, [CpuId(1)]);
        assert_eq!(
            Where::Core {
                package: 1,
                core: 3
            }
            .to_string(),
            "package 1 core 3"
        );
    }
}
