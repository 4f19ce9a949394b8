//! PerCpuDevice over the KernelCpuNodes double: the errno paths of msr_safe and the stock msr
//! driver, hotplug, and our guard (never a write outside the allowlist or outside the mask).

use std::sync::Arc;

use msr_backend::allowlist::Allowlist;
use msr_backend::device::percpu::PerCpuDevice;
use msr_backend::device::{execute, BackendKind, MsrDevice, MsrOp, OpError, OpKind, Parallelism};
use msr_backend::snapshot::Snapshot;
use msr_backend::testing::{Caller, Flavour, KernelCpuNodes, NodeMode};
use msr_backend::{CpuId, MsrAddr, WriteMask};
use nix::errno::Errno;
use proptest::prelude::*;

mod common;
use common::{allowlist, op_mask};

fn seed(cpu: u32, addr: u32) -> u64 {
    (u64::from(cpu) << 40) | (u64::from(addr) << 8) | 0xa5
}

const LIST: &[(u32, u64)] = &[
    (0x10, 0),
    (0x199, 0xffff),
    (0x1a0, 0x0040_0000),
    (0x620, 0x7f7f),
];

/// `cpus` CPUs, LIST loaded (msr_safe) and ours, registers seeded.
fn nodes(flavour: Flavour, cpus: u32) -> (KernelCpuNodes, Arc<Allowlist>) {
    let list = allowlist(LIST);
    let n = KernelCpuNodes::new(flavour, 0..cpus);
    n.load_allowlist(&list);
    for c in 0..cpus {
        for &(a, _) in LIST {
            n.set_register(CpuId(c), MsrAddr(a), seed(c, a));
        }
    }
    (n, list)
}

fn device(n: &KernelCpuNodes, list: &Arc<Allowlist>) -> PerCpuDevice<KernelCpuNodes> {
    let kind = BackendKind::Safe;
    PerCpuDevice::new(n.clone(), kind, list.clone())
}

fn cpus(n: u32) -> Vec<CpuId> {
    (0..n).map(CpuId).collect()
}

fn errno(e: Errno) -> Result<u64, OpError> {
    Err(OpError::Errno(e))
}

#[test]
fn snapshot_reads_every_cpu_in_parallel_groups() {
    let (n, list) = nodes(Flavour::MsrSafe, 4);
    let dev = device(&n, &list);
    assert_eq!(dev.parallelism(), Parallelism::PerCpu);
    let snap = Snapshot::take(&dev, list.clone(), &cpus(4)).unwrap();
    for c in 0..4u32 {
        for (i, &(a, _)) in LIST.iter().enumerate() {
            assert_eq!(snap.value(c as usize, i), Ok(seed(c, a)));
        }
    }
    // One read-only open per CPU, no write.
    let mut opens = n.opens();
    opens.sort();
    assert_eq!(opens, (0..4).map(|c| (CpuId(c), false)).collect::<Vec<_>>());
    assert!(n.writes().is_empty());
}

#[test]
fn unsupported_msr_is_eio_for_that_register_only() {
    let (n, list) = nodes(Flavour::MsrSafe, 3);
    let n = n.unsupported_on(CpuId(1), MsrAddr(0x620));
    let dev = device(&n, &list);
    let snap = Snapshot::take(&dev, list, &cpus(3)).unwrap();
    assert_eq!(snap.value(1, 3), errno(Errno::EIO));
    assert_eq!(snap.value(1, 2), Ok(seed(1, 0x1a0)));
    assert_eq!(snap.value(2, 3), Ok(seed(2, 0x620)));
    assert_eq!(snap.unreadable(), 1);
    // A write to it faults in the kernel's read-merge-write: EIO, nothing stored.
    let mut ops = vec![MsrOp::write(CpuId(1), MsrAddr(0x620), 1, WriteMask(1))];
    execute(&dev, &mut ops).unwrap();
    // PerCpuDevice reads first itself, so the EIO comes from its own read.
    assert_eq!(ops[0].result, Some(errno(Errno::EIO)));
    assert!(n.writes().is_empty());
}

#[test]
fn msr_safe_refuses_what_its_loaded_list_lacks_with_eacces() {
    // Ours lists 0x199 and 0x620 as writable; the loaded list dropped 0x620 and made 0x199
    // read-only.
    let (n, list) = nodes(Flavour::MsrSafe, 2);
    n.load_allowlist(&allowlist(&[(0x10, 0), (0x199, 0), (0x1a0, 0x0040_0000)]));
    let dev = device(&n, &list);
    let mut ops = vec![
        MsrOp::read(CpuId(0), MsrAddr(0x620)),
        MsrOp::write(CpuId(0), MsrAddr(0x199), 0x1, WriteMask(0xff)),
        MsrOp::read(CpuId(0), MsrAddr(0x199)),
    ];
    execute(&dev, &mut ops).unwrap();
    let results: Vec<_> = ops.iter().map(|o| o.result).collect();
    assert_eq!(
        results,
        vec![
            Some(errno(Errno::EACCES)),
            Some(errno(Errno::EACCES)),
            Some(Ok(seed(0, 0x199))),
        ]
    );
    assert_eq!(n.register(CpuId(0), MsrAddr(0x199)), seed(0, 0x199));
}

#[test]
fn permission_errors_on_open_fail_every_op_of_the_cpu() {
    let (n, list) = nodes(Flavour::MsrSafe, 2);
    n.deny_open(Some(Errno::EACCES));
    let dev = device(&n, &list);
    let snap = Snapshot::take(&dev, list.clone(), &cpus(2)).unwrap();
    assert!(snap.outcomes().iter().all(|v| *v == errno(Errno::EACCES)));
    n.deny_open(Some(Errno::EPERM));
    let snap = Snapshot::take(&dev, list, &cpus(2)).unwrap();
    assert!(snap.outcomes().iter().all(|v| *v == errno(Errno::EPERM)));
}

/// The nodes are 0600 root:root as devtmpfs makes them: a user outside the owner gets EACCES on
/// every op and nothing is written; with a site's 0660 group rule a member reads and writes.
#[test]
fn node_modes_decide_who_gets_in() {
    let (n, list) = nodes(Flavour::MsrSafe, 2);
    let dev = device(&n, &list);
    let msr_user = 4242;
    n.open_as(Caller::user(1000, &[msr_user]));
    let snap = Snapshot::take(&dev, list.clone(), &cpus(2)).unwrap();
    assert!(snap.outcomes().iter().all(|v| *v == errno(Errno::EACCES)));
    let mut w = vec![MsrOp::write(CpuId(0), MsrAddr(0x199), 1, WriteMask(0xff))];
    dev.run(&mut w).unwrap();
    assert_eq!(w[0].result, Some(errno(Errno::EACCES)));
    assert!(n.writes().is_empty());
    n.set_mode(NodeMode {
        mode: 0o660,
        uid: 0,
        gid: msr_user,
    });
    let snap = Snapshot::take(&dev, list.clone(), &cpus(2)).unwrap();
    assert_eq!(snap.unreadable(), 0);
    dev.run(&mut w).unwrap();
    assert!(matches!(w[0].result, Some(Ok(_))), "{w:?}");
    n.open_as(Caller::user(1001, &[]));
    assert_eq!(
        Snapshot::take(&dev, list, &cpus(2)).unwrap().unreadable(),
        2 * LIST.len()
    );
}

#[test]
fn stock_driver_write_refusal_is_eperm_and_reads_go_on() {
    let (n, list) = nodes(Flavour::StockMsr, 2);
    n.deny_writes(Some(Errno::EPERM));
    let dev = PerCpuDevice::new(n.clone(), BackendKind::Msr, list.clone());
    let mut ops = vec![
        MsrOp::read(CpuId(0), MsrAddr(0x199)),
        MsrOp::write(CpuId(0), MsrAddr(0x199), 0x1234, WriteMask(0xffff)),
        MsrOp::read(CpuId(0), MsrAddr(0x620)),
        MsrOp::write(CpuId(1), MsrAddr(0x620), 0x0101, WriteMask(0x7f7f)),
    ];
    execute(&dev, &mut ops).unwrap();
    let results: Vec<_> = ops.iter().map(|o| o.result).collect();
    assert_eq!(
        results,
        vec![
            Some(Ok(seed(0, 0x199))),
            Some(errno(Errno::EPERM)),
            Some(Ok(seed(0, 0x620))),
            Some(errno(Errno::EPERM)),
        ]
    );
    assert_eq!(n.register(CpuId(0), MsrAddr(0x199)), seed(0, 0x199));
    // A writable open refused (no CAP_SYS_RAWIO): the CPU's writes get EPERM.
    n.deny_writes(None);
    n.deny_writable_open(Some(Errno::EPERM));
    let mut ops = vec![MsrOp::write(CpuId(1), MsrAddr(0x620), 0, WriteMask(1))];
    execute(&dev, &mut ops).unwrap();
    assert_eq!(ops[0].result, Some(errno(Errno::EPERM)));
    assert_eq!(n.writes().len(), 2);
}

#[test]
fn offline_cpu_is_enxio_and_a_vanished_node_enoent() {
    let (n, list) = nodes(Flavour::MsrSafe, 4);
    let dev = device(&n, &list);
    assert_eq!(
        Snapshot::take(&dev, list.clone(), &cpus(4))
            .unwrap()
            .unreadable(),
        0
    );
    // Hotplug between calls.
    n.set_online(CpuId(3), false);
    let snap = Snapshot::take(&dev, list.clone(), &cpus(4)).unwrap();
    assert!(snap.cpu_values(3).all(|v| v == errno(Errno::ENXIO)));
    assert!(snap.cpu_values(2).all(|v| v.is_ok()));

    let n2 = KernelCpuNodes::new(Flavour::MsrSafe, 0..2).offline_open_errno(Errno::ENOENT);
    n2.load_allowlist(&list);
    n2.set_online(CpuId(1), false);
    let snap = Snapshot::take(&device(&n2, &list), list, &cpus(2)).unwrap();
    assert!(snap.cpu_values(1).all(|v| v == errno(Errno::ENOENT)));
    assert!(snap.cpu_values(0).all(|v| v.is_ok()));
}

#[test]
fn cpu_going_offline_during_a_call_fails_the_rest_of_its_ops() {
    let (n, list) = nodes(Flavour::MsrSafe, 2);
    n.offline_after(CpuId(0), 2);
    let dev = device(&n, &list);
    let snap = Snapshot::take(&dev, list, &cpus(2)).unwrap();
    assert_eq!(
        snap.cpu_values(0).collect::<Vec<_>>(),
        [
            Ok(seed(0, 0x10)),
            Ok(seed(0, 0x199)),
            errno(Errno::ENXIO),
            errno(Errno::ENXIO)
        ]
    );
    assert!(snap.cpu_values(1).all(|v| v.is_ok()));
}

#[test]
fn guard_keeps_writes_inside_the_allowlist_and_the_mask() {
    // The stock driver would write anything: only our guard stands in the way.
    let (n, list) = nodes(Flavour::StockMsr, 1);
    n.set_register(CpuId(0), MsrAddr(0x6e0), 0x42);
    let dev = PerCpuDevice::new(n.clone(), BackendKind::Msr, list);
    let mut ops = vec![
        MsrOp::read(CpuId(0), MsrAddr(0x6e0)),
        MsrOp::write(CpuId(0), MsrAddr(0x6e0), 0, WriteMask::ALL),
        MsrOp::write(CpuId(0), MsrAddr(0x10), 0, WriteMask(1)),
        MsrOp::write(CpuId(0), MsrAddr(0x199), 0, WriteMask(0x1_ffff)),
        MsrOp::write(
            CpuId(0),
            MsrAddr(0x199),
            0xabcd_0000_5678,
            WriteMask(0x00ff),
        ),
    ];
    execute(&dev, &mut ops).unwrap();
    let results: Vec<_> = ops.iter().map(|o| o.result).collect();
    let merged = (seed(0, 0x199) & !0xff) | 0x78;
    assert_eq!(
        results,
        vec![
            Some(Err(OpError::NotAllowlisted)),
            Some(Err(OpError::NotAllowlisted)),
            Some(Err(OpError::OutsideMask { bits: 1 })),
            Some(Err(OpError::OutsideMask { bits: 0x1_0000 })),
            Some(Ok(merged)),
        ]
    );
    let w = n.writes();
    assert_eq!(w.len(), 1);
    assert_eq!(
        (w[0].cpu, w[0].addr, w[0].value),
        (CpuId(0), MsrAddr(0x199), merged)
    );
    assert!(n.reads().iter().all(|&(_, a)| a != MsrAddr(0x6e0)));
    assert_eq!(n.register(CpuId(0), MsrAddr(0x6e0)), 0x42);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// Random lists, masks, values and register contents, on both flavours: every write that
    /// reaches a node is to an MSR of our allowlist with a non-zero mask, and changes only bits
    /// inside both the op's mask and the allowlist's; refused ops write nothing.
    #[test]
    fn percpu_writes_never_leave_the_masks(
        ours in proptest::collection::vec(any::<u64>(), 1..6),
        initial in proptest::collection::vec(any::<u64>(), 8),
        stock in any::<bool>(),
        ops in proptest::collection::vec((0u32..2, 0u32..8, any::<u64>(), any::<u64>(), 0u8..4), 1..24),
    ) {
        let list = allowlist(&ours.iter().enumerate().map(|(i, &m)| (i as u32, m)).collect::<Vec<_>>());
        let (flavour, kind) = if stock {
            (Flavour::StockMsr, BackendKind::Msr)
        } else {
            (Flavour::MsrSafe, BackendKind::Safe)
        };
        // msr_safe's loaded list: ours, plus full masks for the MSRs ours lacks.
        let mut n = KernelCpuNodes::new(flavour, 0..2);
        for a in 0..8u32 {
            let m = ours.get(a as usize).copied().unwrap_or(u64::MAX);
            n = n.allow(MsrAddr(a), WriteMask(m));
        }
        for c in 0..2 {
            for a in 0..8u32 {
                n.set_register(CpuId(c), MsrAddr(a), initial[a as usize] ^ u64::from(c));
            }
        }
        let dev = PerCpuDevice::new(n.clone(), kind, list.clone());
        let mut msr_ops: Vec<MsrOp> = ops
            .iter()
            .map(|&(cpu, addr, value, bits, how)| match op_mask(&list, addr, bits, how) {
                None => MsrOp::read(CpuId(cpu), MsrAddr(addr)),
                Some(mask) => MsrOp::write(CpuId(cpu), MsrAddr(addr), value, mask),
            })
            .collect();
        msr_ops.sort_by_key(|o| o.cpu);
        execute(&dev, &mut msr_ops).unwrap();

        // CPUs run in parallel: match each CPU's ops, in order, with that CPU's writes.
        let writes = n.writes();
        for c in 0..2u32 {
            let mut seen = writes.iter().filter(|w| w.cpu == CpuId(c));
            for op in msr_ops.iter().filter(|o| o.cpu == CpuId(c)) {
                let allowed = list.mask(op.addr);
                match (op.kind, allowed) {
                    (_, None) => prop_assert_eq!(op.result, Some(Err(OpError::NotAllowlisted))),
                    (OpKind::Write { mask, .. }, Some(a)) if mask.0 & !a.0 != 0 || a.0 == 0 => {
                        let refused = matches!(op.result, Some(Err(OpError::OutsideMask { .. })));
                        prop_assert!(refused, "{:?}", op.result);
                    }
                    (OpKind::Write { mask, value }, Some(_)) => {
                        let w = seen.next().expect("an accepted write reached the node");
                        prop_assert_eq!(w.addr, op.addr);
                        let before = w.before.expect("register readable");
                        prop_assert_eq!(w.value, mask.merge(before, value));
                        prop_assert_eq!((w.value ^ before) & !mask.0, 0);
                        prop_assert_eq!(op.result, Some(Ok(w.value)));
                    }
                    (OpKind::Read, Some(_)) => prop_assert!(matches!(op.result, Some(Ok(_)))),
                }
            }
            prop_assert!(seen.next().is_none(), "a write the ops do not account for");
        }
        // Registers of MSRs outside our list, or never written, are untouched.
        for c in 0..2u32 {
            for a in 0..8u32 {
                let now = n.register(CpuId(c), MsrAddr(a));
                let was = initial[a as usize] ^ u64::from(c);
                let touched = writes.iter().any(|w| w.cpu == CpuId(c) && w.addr == MsrAddr(a));
                if !touched {
                    prop_assert_eq!(now, was);
                }
                if list.mask(MsrAddr(a)).is_none() {
                    prop_assert!(!touched);
                }
            }
        }
    }
}
