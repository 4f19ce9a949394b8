//! Registers have a scope: on a 2-socket Sapphire Rapids node of 224 CPUs (2 packages x 56 cores
//! x 2 threads), a restore after a job changed every writable register writes each package
//! register once per package and each core register once per core, from one CPU of it, and
//! verifies it on every CPU of it; reports name such a register once per domain; a set lock is
//! reported as locked and never written. Writes are counted where they reach the machine: the
//! fake kernel's record of writes (batch ioctl and per-CPU nodes), and the ops handed to the
//! device of an emulated node.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use msr_backend::allowlist::Allowlist;
use msr_backend::device::batch::BatchDevice;
use msr_backend::device::percpu::PerCpuDevice;
use msr_backend::device::select::{open_backend, BackendRequest};
use msr_backend::device::{BackendKind, DeviceError, MsrDevice, MsrOp, OpKind, Parallelism};
use msr_backend::emulate::{self, EmulatedNodeSpec, Shape};
use msr_backend::finding::Problem;
use msr_backend::msrs::lock::Lock;
use msr_backend::msrs::scope::{scope_of, Scope};
use msr_backend::operations::{self, LoadedSnapshot};
use msr_backend::plan::DriftBits;
use msr_backend::restore::{check, restore, restore_in_chunks};
use msr_backend::snapshot::Snapshot;
use msr_backend::testing::{FakeMachine, Flavour};
use msr_backend::topology::{Layout, Where};
use msr_backend::types::{CpuId, CpuIdentity, MsrAddr};

const SHAPE: Shape = Shape {
    packages: 2,
    cores_per_package: 56,
    threads_per_core: 2,
};

fn spr() -> CpuIdentity {
    CpuIdentity {
        vendor: "GenuineIntel".into(),
        family: 6,
        model: 0x8F,
    }
}

/// Our Sapphire Rapids list (allowlists/al_06_8F), plus two core registers of the SDM's table
/// for it with a write mask (the shipped list has none writable): MSR_PKG_CST_CONFIG_CONTROL's
/// package C-state limit and auto-demotion bits, IA32_THERM_INTERRUPT's enables.
fn list() -> Allowlist {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../allowlists/al_06_8F");
    let mut text = std::fs::read_to_string(path).expect("al_06_8F");
    text.push_str("0x000000E2 0x0000000006000007 # MSR_PKG_CST_CONFIG_CONTROL\n");
    text.push_str("0x0000019B 0x000000000000001F # IA32_THERM_INTERRUPT\n");
    Allowlist::parse(text.as_bytes(), "al_06_8F + core registers").expect("list")
}

fn all_cpus() -> Vec<CpuId> {
    (0..SHAPE.cpus()).map(CpuId).collect()
}

fn layout() -> Layout {
    Layout {
        topology: SHAPE.topology(),
        cpu: Some(spr()),
    }
}

/// What a correct restore writes, per scope of the list's writable registers: how many registers
/// and how many writes each.
fn expected_writes(list: &Allowlist) -> BTreeMap<Scope, (usize, usize)> {
    let mut out = BTreeMap::new();
    for e in list.entries().iter().filter(|e| e.mask.is_writable()) {
        let scope = scope_of(Some(&spr()), e.addr);
        let per = match scope {
            Scope::Thread => SHAPE.cpus(),
            Scope::Core => SHAPE.packages * SHAPE.cores_per_package,
            Scope::Die | Scope::Package => SHAPE.packages,
            Scope::Module => unreachable!("no module scope in the table"),
        } as usize;
        let slot = out.entry(scope).or_insert((0, per));
        slot.0 += 1;
    }
    out
}

/// A fake Sapphire Rapids machine: the list loaded, registers shared as the hardware shares
/// them, starting values as an emulated node has them.
fn machine(list: &Allowlist) -> FakeMachine {
    let m = FakeMachine::new(0..SHAPE.cpus());
    m.load_allowlist(list);
    m.share_as(list, &SHAPE.topology(), &spr());
    for &c in &all_cpus() {
        for e in list.entries() {
            m.set_register(c, e.addr, emulate::realistic_value(&SHAPE, c, e, &spr()));
        }
    }
    m
}

/// The job changes every writable bit of every writable register, through any CPU.
fn job(m: &FakeMachine, list: &Allowlist, saved: &Snapshot) {
    for (ci, &c) in saved.cpus.iter().enumerate() {
        for (ei, e) in list.entries().iter().enumerate() {
            let v = saved.value(ci, ei).expect("readable");
            m.set_register(c, e.addr, v ^ e.mask.0);
        }
    }
}

/// Which scope each write that reached the machine belongs to, and from which domain.
fn writes_by_register(m: &FakeMachine) -> BTreeMap<MsrAddr, Vec<CpuId>> {
    let mut out: BTreeMap<MsrAddr, Vec<CpuId>> = BTreeMap::new();
    for w in m.writes() {
        assert!(w.result.is_ok(), "{w:?}");
        out.entry(w.addr).or_default().push(w.cpu);
    }
    out
}

fn devices(m: &FakeMachine, list: &Arc<Allowlist>) -> Vec<(&'static str, Box<dyn MsrDevice>)> {
    vec![
        ("batch", Box::new(BatchDevice::new(m.batch(), list.clone()))),
        (
            "msr_safe nodes",
            Box::new(PerCpuDevice::new(
                m.cpu_nodes(Flavour::MsrSafe),
                BackendKind::Safe,
                list.clone(),
            )),
        ),
    ]
}

#[test]
fn a_restore_writes_each_shared_register_once_per_domain() {
    let list = Arc::new(list());
    let expected = expected_writes(&list);
    assert_eq!(expected[&Scope::Die], (6, 2), "{expected:?}");
    assert_eq!(expected[&Scope::Core], (2, 112), "{expected:?}");
    for kind in 0..2 {
        let m = machine(&list);
        let (name, dev) = devices(&m, &list).swap_remove(kind);
        let saved = Snapshot::take(dev.as_ref(), list.clone(), &all_cpus()).unwrap();
        job(&m, &list, &saved);

        // The drift report names a package register once per package, a core one once per core.
        let c = check(
            dev.as_ref(),
            &saved,
            &list,
            &all_cpus(),
            &layout(),
            DriftBits::Writable,
        )
        .unwrap();
        let registers: usize = expected.values().map(|(n, per)| n * per).sum();
        assert_eq!(c.drifted, registers, "{name}");
        assert_eq!(c.drifted_cpus, 224, "{name}");
        let mut seen = BTreeSet::new();
        for d in &c.drift {
            assert!(seen.insert((d.msr, d.at)), "{name}: {d} listed twice");
            let scope = scope_of(Some(&spr()), d.msr.unwrap());
            match scope {
                Scope::Die => assert!(matches!(d.at, Where::Package(_)), "{d}"),
                Scope::Core => assert!(matches!(d.at, Where::Core { .. }), "{d}"),
                _ => assert_eq!(d.at, Where::Cpu(d.cpu), "{d}"),
            }
        }
        let pl = c
            .changed
            .iter()
            .find(|x| x.msr == MsrAddr(0x610))
            .expect("0x610 changed");
        assert_eq!(
            (pl.scope, pl.domains, pl.packages.as_str(), pl.cpus),
            (Scope::Package, 2, "0-1", 224)
        );
        assert!(
            pl.to_string()
                .starts_with("MSR 0x00000610 MSR_PKG_POWER_LIMIT on packages 0-1 (224 CPUs)"),
            "{pl}"
        );

        // The restore: writes counted where they reach the "kernel".
        let before = m.writes().len();
        assert_eq!(before, 0);
        let r = restore(dev.as_ref(), &saved, &list, &all_cpus(), &layout(), false).unwrap();
        assert!(r.ok(), "{name}: {:?}", r.failures.first());
        assert!(r.inconsistent.is_empty() && r.locked.is_empty(), "{name}");
        let by_register = writes_by_register(&m);
        let topology = SHAPE.topology();
        for e in list.entries().iter().filter(|e| e.mask.is_writable()) {
            let scope = scope_of(Some(&spr()), e.addr);
            let cpus = &by_register[&e.addr];
            let domains: BTreeSet<Where> = cpus
                .iter()
                .map(|&c| topology.domain_of(c, scope).0)
                .collect();
            assert_eq!(
                (cpus.len(), domains.len()),
                (expected[&scope].1, expected[&scope].1),
                "{name}: {} ({scope}) written from {cpus:?}",
                e.addr
            );
        }
        let total: usize = expected.values().map(|(n, per)| n * per).sum();
        assert_eq!(m.writes().len(), total, "{name}");
        assert_eq!((r.written, r.verified), (total, total), "{name}");
        // Every CPU holds the saved value again.
        for (ci, &c) in saved.cpus.iter().enumerate() {
            for (ei, e) in list.entries().iter().enumerate() {
                assert_eq!(
                    m.register(c, e.addr),
                    saved.value(ci, ei).unwrap(),
                    "{name}: CPU {c} {}",
                    e.addr
                );
            }
        }
        // The global counter enable was written after the counters on every CPU.
        let order: Vec<(CpuId, MsrAddr)> = m.writes().iter().map(|w| (w.cpu, w.addr)).collect();
        for &c in &all_cpus() {
            let pos = |a: u32| order.iter().position(|&x| x == (c, MsrAddr(a))).unwrap();
            for counter in [0xC1, 0xC8, 0x186, 0x18D, 0x309, 0x30B, 0x38D] {
                assert!(pos(counter) < pos(0x38F), "{name}: CPU {c} {counter:#x}");
            }
        }
        let again = check(
            dev.as_ref(),
            &saved,
            &list,
            &all_cpus(),
            &layout(),
            DriftBits::Writable,
        )
        .unwrap();
        assert!(again.clean(), "{name}: {}", again.summary());
    }
}

#[test]
fn a_locked_package_register_is_reported_locked_and_never_written() {
    let list = Arc::new(list());
    let m = machine(&list);
    let pl = MsrAddr(0x610);
    m.lock_register(
        pl,
        Lock {
            bit: 63,
            locks: u64::MAX,
        },
    );
    // Firmware locked package 1's power limit.
    let p1 = CpuId(56);
    let locked = m.register(p1, pl) | 1 << 63;
    m.set_register(p1, pl, locked);
    let dev = BatchDevice::new(m.batch(), list.clone());
    let saved = Snapshot::take(&dev, list.clone(), &all_cpus()).unwrap();
    job(&m, &list, &saved);
    // The job's write did not take on package 1: its limit differs from the snapshot only
    // because firmware moved it (a reset with another setting, a BMC); make it so.
    m.set_register(p1, pl, locked ^ 0x7fff);
    let c = check(
        &dev,
        &saved,
        &list,
        &all_cpus(),
        &layout(),
        DriftBits::Writable,
    )
    .unwrap();
    assert_eq!(c.locked.len(), 1, "{:?}", c.locked);
    let l = &c.locked[0];
    assert_eq!((l.at, l.msr), (Where::Package(1), Some(pl)));
    assert!(matches!(
        l.problem,
        Problem::Locked {
            lock_bit: 63,
            at_save: true,
            bits: 0x7fff,
            ..
        }
    ));
    assert_eq!(l.code().to_string(), "LOCKED");
    assert!(l
        .to_string()
        .starts_with("package 1 MSR 0x00000610 (MSR_PKG_POWER_LIMIT): locked (bit 63 set)"));
    assert!(
        c.drift
            .iter()
            .all(|d| !(d.msr == Some(pl) && d.at == Where::Package(1))),
        "a locked difference is not drift"
    );
    let r = restore(&dev, &saved, &list, &all_cpus(), &layout(), false).unwrap();
    assert!(r.ok(), "locked is not a failure: {:?}", r.failures.first());
    assert_eq!(r.locked.len(), 1);
    let pl_writes: Vec<CpuId> = m
        .writes()
        .iter()
        .filter(|w| w.addr == pl)
        .map(|w| w.cpu)
        .collect();
    assert_eq!(pl_writes, [CpuId(0)], "package 0 once, package 1 never");
}

/// The backend's device, counting the write ops handed to it.
struct Counting {
    inner: Box<dyn MsrDevice>,
    writes: Arc<Mutex<Vec<(CpuId, MsrAddr)>>>,
    reads: Arc<AtomicUsize>,
}

impl MsrDevice for Counting {
    fn kind(&self) -> BackendKind {
        self.inner.kind()
    }
    fn run(&self, ops: &mut [MsrOp]) -> Result<(), DeviceError> {
        let mut w = self.writes.lock().unwrap();
        for o in ops.iter() {
            match o.kind {
                OpKind::Write { .. } => w.push((o.cpu, o.addr)),
                OpKind::Read => {
                    self.reads.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        drop(w);
        self.inner.run(ops)
    }
    fn parallelism(&self) -> Parallelism {
        self.inner.parallelism()
    }
    fn describe(&self) -> String {
        self.inner.describe()
    }
}

fn emulated(dir: &Path, list: &Allowlist) -> msr_backend::node::Node {
    emulate::create(
        dir,
        &EmulatedNodeSpec {
            cpus: SHAPE.cpus(),
            allowlist: list,
            identity: spr(),
            shape: Some(SHAPE),
        },
    )
    .expect("emulated node")
}

/// The same on an emulated node, through the operations msrsave runs: the topology comes from
/// the node's sysfs files, the CPU model from its cpuinfo.
#[test]
fn an_emulated_2_socket_node_is_restored_with_one_write_per_domain() {
    let list = list();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("node");
    let node = emulated(&root, &list);
    let mut backend = open_backend(
        &node,
        &BackendRequest {
            write: true,
            ..BackendRequest::default()
        },
    )
    .unwrap();
    let writes = Arc::new(Mutex::new(Vec::new()));
    let reads = Arc::new(AtomicUsize::new(0));
    let inner = std::mem::replace(
        &mut backend.device,
        Box::new(BatchDevice::new(
            FakeMachine::new([0]).batch(),
            backend.allowlist.clone(),
        )),
    );
    backend.device = Box::new(Counting {
        inner,
        writes: writes.clone(),
        reads: reads.clone(),
    });
    let path = dir.path().join("snap.msr");
    let saved = operations::save(&backend, &path, None).unwrap();
    let loaded = LoadedSnapshot {
        path,
        snapshot: saved.file.snapshot.clone(),
        meta: Some(saved.file.meta.clone()),
    };
    for &c in &all_cpus() {
        for e in list.entries() {
            let v = emulate::peek(&root, c, e.addr).unwrap();
            emulate::poke(&root, c, e.addr, v ^ e.mask.0).unwrap();
        }
    }
    let c = operations::check(&backend, &loaded, DriftBits::Writable).unwrap();
    let mut seen = BTreeSet::new();
    for d in &c.drift {
        if d.at.scope() != Scope::Thread {
            assert!(seen.insert((d.msr, d.at)), "{d} listed twice");
        }
    }
    writes.lock().unwrap().clear();
    let r = operations::restore(&backend, &loaded, false).unwrap();
    assert!(r.ok(), "{:?}", r.failures.first());
    let expected = expected_writes(&list);
    let total: usize = expected.values().map(|(n, per)| n * per).sum();
    let w = writes.lock().unwrap().clone();
    assert_eq!(w.len(), total);
    for e in list.entries().iter().filter(|e| e.mask.is_writable()) {
        let scope = scope_of(Some(&spr()), e.addr);
        let n = w.iter().filter(|x| x.1 == e.addr).count();
        assert_eq!(n, expected[&scope].1, "{} ({scope})", e.addr);
    }
    // Every register file holds the saved bits: the one write reached every CPU of the domain.
    for (ci, &c) in loaded.snapshot.cpus.iter().enumerate() {
        for (ei, e) in list.entries().iter().enumerate() {
            assert_eq!(
                emulate::peek(&root, c, e.addr).unwrap(),
                loaded.snapshot.value(ci, ei).unwrap(),
                "CPU {c} {}",
                e.addr
            );
        }
    }
}

/// A restore runs its writes a chunk at a time (memory bounded by the snapshot): whatever the
/// chunk, the same writes reach the machine in the same order on every CPU, and the report is
/// the same. 6060 writes in chunks of 7 cross every boundary there is (waves of the order
/// rules, domains, CPUs).
#[test]
fn chunked_writes_are_the_same_writes_in_the_same_order() {
    let list = Arc::new(list());
    let per_cpu = |m: &FakeMachine| {
        let mut out: BTreeMap<CpuId, Vec<(MsrAddr, u64)>> = BTreeMap::new();
        for w in m.writes() {
            assert!(w.result.is_ok(), "{w:?}");
            out.entry(w.cpu).or_default().push((w.addr, w.value));
        }
        out
    };
    for kind in 0..2 {
        let mut runs = Vec::new();
        for chunk in [msr_backend::restore::WRITE_CHUNK, 7] {
            let m = machine(&list);
            let (name, dev) = devices(&m, &list).swap_remove(kind);
            let saved = Snapshot::take(dev.as_ref(), list.clone(), &all_cpus()).unwrap();
            job(&m, &list, &saved);
            let r = restore_in_chunks(
                dev.as_ref(),
                &saved,
                &list,
                &all_cpus(),
                &layout(),
                false,
                chunk,
            )
            .unwrap();
            assert!(r.ok(), "{name}, chunk {chunk}: {:?}", r.failures.first());
            assert_eq!(r.written, 6060, "{name}, chunk {chunk}");
            assert_eq!(r.verified, r.written, "{name}, chunk {chunk}");
            let after = Snapshot::take(dev.as_ref(), list.clone(), &all_cpus()).unwrap();
            for ci in 0..saved.cpus.len() {
                for (ei, e) in list.entries().iter().enumerate() {
                    let (s, a) = (saved.value(ci, ei).unwrap(), after.value(ci, ei).unwrap());
                    assert_eq!(
                        s & e.mask.0,
                        a & e.mask.0,
                        "{name}, chunk {chunk}: {}",
                        e.addr
                    );
                }
            }
            runs.push((per_cpu(&m), r));
        }
        let (big, small) = (&runs[0], &runs[1]);
        assert_eq!(big.0, small.0, "writes per CPU, in order");
        assert_eq!(
            (big.1.written, big.1.verified, &big.1.writes, &big.1.changed),
            (
                small.1.written,
                small.1.verified,
                &small.1.writes,
                &small.1.changed
            )
        );
    }
}
