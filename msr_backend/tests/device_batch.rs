//! BatchDevice over the KernelBatch double: chunking, the pre-check retry, per-op errors, our
//! guard, E2BIG splitting and the write semantics.

use std::path::Path;
use std::sync::Arc;

use msr_backend::allowlist::Allowlist;
use msr_backend::device::batch::{msr_batch_op, BatchDevice, BatchIoctl, MAX_PRECHECK_ROUNDS};
use msr_backend::device::{
    execute, BackendKind, DeviceError, MsrDevice, MsrOp, OpError, Parallelism, BATCH_CHUNK_OPS,
};
use msr_backend::snapshot::Snapshot;
use msr_backend::testing::KernelBatch;
use msr_backend::{CpuId, MsrAddr, WriteMask};
use nix::errno::Errno;
use proptest::prelude::*;

mod common;
use common::{allowlist, op_mask};

/// A recognisable value for every register.
fn seed(cpu: u32, addr: u32) -> u64 {
    (u64::from(cpu) << 40) | (u64::from(addr) << 8) | 0x5a
}

/// `cpus` CPUs online, `msrs` MSRs (0x100..) allowlisted read-only in both lists, seeded.
fn machine(cpus: u32, msrs: u32) -> (KernelBatch, Arc<Allowlist>) {
    let list: Vec<(u32, u64)> = (0..msrs).map(|i| (0x100 + i, 0)).collect();
    let list = allowlist(&list);
    let k = KernelBatch::new(0..cpus);
    k.load_allowlist(&list);
    for c in 0..cpus {
        for e in list.entries() {
            k.set_register(CpuId(c), e.addr, seed(c, e.addr.0));
        }
    }
    (k, list)
}

fn all_cpus(n: u32) -> Vec<CpuId> {
    (0..n).map(CpuId).collect()
}

fn errno(e: Errno) -> Result<u64, OpError> {
    Err(OpError::Errno(e))
}

#[test]
fn device_reports_batch_kind_and_batched_parallelism() {
    let (k, list) = machine(1, 1);
    let dev = BatchDevice::new(k, list);
    assert_eq!(dev.kind(), BackendKind::Batch);
    assert_eq!(dev.parallelism(), Parallelism::Batched);
    assert_eq!(dev.chunk_ops(), BATCH_CHUNK_OPS);
    assert!(dev.describe().contains("msr_batch"), "{}", dev.describe());
}

#[test]
fn snapshot_of_n_cpus_by_m_msrs_is_one_ioctl_per_chunk() {
    let (k, list) = machine(8, 25);
    let dev = BatchDevice::new(k.clone(), list.clone()).with_chunk_ops(50);
    let snap = Snapshot::take(&dev, list.clone(), &all_cpus(8)).unwrap();
    assert_eq!(k.calls(), 8 * 25 / 50);
    let sizes: Vec<usize> = k.received().iter().map(Vec::len).collect();
    assert_eq!(sizes, vec![50; 4]);
    for (ci, c) in snap.cpus.iter().enumerate() {
        for (ei, e) in list.entries().iter().enumerate() {
            assert_eq!(snap.value(ci, ei), Ok(seed(c.0, e.addr.0)));
        }
    }
    // Every op was sent as a read of its own CPU and MSR, in CPU-major order.
    let sent: Vec<(u16, u32, u16)> = k
        .received()
        .concat()
        .iter()
        .map(|o| (o.cpu, o.msr, o.isrdmsr))
        .collect();
    let expected: Vec<(u16, u32, u16)> = (0..8u16)
        .flat_map(|c| (0..25u32).map(move |i| (c, 0x100 + i, 1)))
        .collect();
    assert_eq!(sent, expected);
}

#[test]
fn execute_chunks_a_large_snapshot_at_the_default_size() {
    // 40 x 500 = 20000 ops: one full chunk of BATCH_CHUNK_OPS and the rest.
    let (k, list) = machine(40, 500);
    let dev = BatchDevice::new(k.clone(), list.clone());
    let snap = Snapshot::take(&dev, list, &all_cpus(40)).unwrap();
    assert_eq!(snap.unreadable(), 0);
    let sizes: Vec<usize> = k.received().iter().map(Vec::len).collect();
    assert_eq!(sizes, vec![BATCH_CHUNK_OPS, 20_000 - BATCH_CHUNK_OPS]);
}

#[test]
fn one_offline_cpu_fails_only_its_own_ops() {
    let (k, list) = machine(4, 10);
    k.set_online(CpuId(2), false);
    let dev = BatchDevice::new(k.clone(), list.clone());
    let snap = Snapshot::take(&dev, list.clone(), &all_cpus(4)).unwrap();
    for ci in 0..4 {
        for (ei, e) in list.entries().iter().enumerate() {
            let want = if ci == 2 {
                errno(Errno::ENXIO)
            } else {
                Ok(seed(ci as u32, e.addr.0))
            };
            assert_eq!(snap.value(ci, ei), want, "cpu {ci} msr {}", e.addr);
        }
    }
    // The refused ioctl, then the rest without CPU 2.
    let received = k.received();
    assert_eq!(received.len(), 2);
    assert_eq!(received[0].len(), 40);
    assert_eq!(received[1].len(), 30);
    assert!(received[1].iter().all(|o| o.cpu != 2 && o.err == 0));
}

#[test]
fn out_of_range_cpu_is_enxio_too() {
    let (k, list) = machine(2, 3);
    let dev = BatchDevice::new(k.clone(), list.clone());
    let snap = Snapshot::take(&dev, list, &[CpuId(0), CpuId(1), CpuId(9)]).unwrap();
    assert_eq!(snap.value(2, 0), errno(Errno::ENXIO));
    assert_eq!(snap.value(1, 2), Ok(seed(1, 0x102)));
    assert_eq!(k.calls(), 2);
}

#[test]
fn every_precheck_refusal_is_found_in_one_round() {
    // CPU 1 offline, one MSR dropped from the loaded list, one write to a loaded mask of 0.
    let list = allowlist(&[(0x10, 0), (0x11, 0xff), (0x12, 0xff)]);
    let k = KernelBatch::new(0..3)
        .allow(MsrAddr(0x10), WriteMask(0))
        .allow(MsrAddr(0x12), WriteMask(0));
    k.set_online(CpuId(1), false);
    k.set_register(CpuId(0), MsrAddr(0x10), 7);
    let dev = BatchDevice::new(k.clone(), list);
    let mut ops = vec![
        MsrOp::read(CpuId(0), MsrAddr(0x10)),
        MsrOp::read(CpuId(0), MsrAddr(0x11)),
        MsrOp::write(CpuId(0), MsrAddr(0x12), 1, WriteMask(1)),
        MsrOp::read(CpuId(1), MsrAddr(0x10)),
        MsrOp::read(CpuId(2), MsrAddr(0x10)),
    ];
    dev.run(&mut ops).unwrap();
    let results: Vec<_> = ops.iter().map(|o| o.result).collect();
    assert_eq!(
        results,
        vec![
            Some(Ok(7)),
            Some(errno(Errno::EACCES)),
            Some(errno(Errno::EROFS)),
            Some(errno(Errno::ENXIO)),
            Some(Ok(0)),
        ]
    );
    assert_eq!(k.calls(), 2);
    assert!(k.writes().is_empty());
}

#[test]
fn eio_on_one_op_does_not_stop_the_others() {
    let (k, list) = machine(3, 4);
    let k = k
        .unsupported(MsrAddr(0x101))
        .unsupported_on(CpuId(2), MsrAddr(0x103));
    let dev = BatchDevice::new(k.clone(), list.clone());
    let snap = Snapshot::take(&dev, list, &all_cpus(3)).unwrap();
    assert_eq!(k.calls(), 1, "a run-phase error is not retried");
    for ci in 0..3u32 {
        for ei in 0..4u32 {
            let addr = 0x100 + ei;
            let want = if addr == 0x101 || (ci == 2 && addr == 0x103) {
                errno(Errno::EIO)
            } else {
                Ok(seed(ci, addr))
            };
            assert_eq!(snap.value(ci as usize, ei as usize), want);
        }
    }
    assert_eq!(snap.unreadable(), 4);
}

#[test]
fn precheck_then_run_phase_errors_in_one_call() {
    let (k, list) = machine(2, 2);
    let k = k.unsupported(MsrAddr(0x100));
    k.set_online(CpuId(0), false);
    let dev = BatchDevice::new(k.clone(), list.clone());
    let snap = Snapshot::take(&dev, list, &all_cpus(2)).unwrap();
    assert_eq!(
        snap.outcomes(),
        vec![
            errno(Errno::ENXIO),
            errno(Errno::ENXIO),
            errno(Errno::EIO),
            Ok(seed(1, 0x101)),
        ]
    );
    assert_eq!(k.calls(), 2);
}

#[test]
fn guard_never_sends_what_our_allowlist_forbids() {
    // The loaded list allows everything; ours does not.
    let ours = allowlist(&[(0x10, 0), (0x199, 0xffff), (0x1a0, 0xff00)]);
    let k = KernelBatch::new(0..2)
        .allow(MsrAddr(0x10), WriteMask::ALL)
        .allow(MsrAddr(0x199), WriteMask::ALL)
        .allow(MsrAddr(0x1a0), WriteMask::ALL)
        .allow(MsrAddr(0x6e0), WriteMask::ALL);
    for c in 0..2 {
        for a in [0x10, 0x199, 0x1a0, 0x6e0] {
            k.set_register(CpuId(c), MsrAddr(a), 0x1111);
        }
    }
    let dev = BatchDevice::new(k.clone(), ours);
    let mut ops = vec![
        MsrOp::read(CpuId(0), MsrAddr(0x6e0)),
        MsrOp::write(CpuId(0), MsrAddr(0x6e0), 0, WriteMask(1)),
        MsrOp::write(CpuId(0), MsrAddr(0x10), 5, WriteMask(1)),
        MsrOp::write(CpuId(0), MsrAddr(0x199), 0x2_2222, WriteMask(0x1_ffff)),
        MsrOp::write(CpuId(0), MsrAddr(0x199), 0x2222, WriteMask(0)),
        MsrOp::write(CpuId(1), MsrAddr(0x1a0), 0x2211, WriteMask(0xff00)),
        MsrOp::read(CpuId(1), MsrAddr(0x199)),
    ];
    dev.run(&mut ops).unwrap();
    let results: Vec<_> = ops.iter().map(|o| o.result).collect();
    assert_eq!(
        results,
        vec![
            Some(Err(OpError::NotAllowlisted)),
            Some(Err(OpError::NotAllowlisted)),
            Some(Err(OpError::OutsideMask { bits: 1 })),
            Some(Err(OpError::OutsideMask { bits: 0x1_0000 })),
            Some(Err(OpError::OutsideMask { bits: 0 })),
            Some(Ok(0x2211)),
            Some(Ok(0x1111)),
        ]
    );
    let sent: Vec<msr_batch_op> = k.received().concat();
    assert_eq!(sent.len(), 2);
    assert_eq!(
        (sent[0].cpu, sent[0].msr, sent[0].isrdmsr, sent[0].msrdata),
        (1, 0x1a0, 0, 0x2211)
    );
    assert_eq!((sent[1].cpu, sent[1].msr, sent[1].isrdmsr), (1, 0x199, 1));
    assert_eq!(k.writes().len(), 1);
    for a in [0x10, 0x199, 0x6e0] {
        assert_eq!(k.register(CpuId(0), MsrAddr(a)), 0x1111);
    }
    assert_eq!(k.register(CpuId(1), MsrAddr(0x1a0)), 0x2211);
}

#[test]
fn nothing_to_send_means_no_ioctl() {
    let (k, list) = machine(2, 2);
    let dev = BatchDevice::new(k.clone(), list);
    dev.run(&mut []).unwrap();
    let mut ops = vec![MsrOp::read(CpuId(0), MsrAddr(0x999))];
    dev.run(&mut ops).unwrap();
    assert_eq!(ops[0].result, Some(Err(OpError::NotAllowlisted)));
    // Every op refused by the pre-check: no empty retry follows.
    k.set_online(CpuId(0), false);
    let mut ops = vec![MsrOp::read(CpuId(0), MsrAddr(0x100))];
    dev.run(&mut ops).unwrap();
    assert_eq!(ops[0].result, Some(errno(Errno::ENXIO)));
    assert_eq!(k.calls(), 1);
    assert!(k.received().iter().all(|ops| !ops.is_empty()));
}

#[test]
fn e2big_splits_the_chunk_in_half_until_it_fits() {
    let (k, list) = machine(4, 25);
    let k = k.max_ops(30);
    let dev = BatchDevice::new(k.clone(), list.clone());
    let snap = Snapshot::take(&dev, list, &all_cpus(4)).unwrap();
    assert_eq!(snap.unreadable(), 0);
    assert_eq!(snap.value(3, 24), Ok(seed(3, 0x118)));
    let sizes: Vec<usize> = k.received().iter().map(Vec::len).collect();
    assert_eq!(sizes, vec![100, 50, 25, 25, 50, 25, 25]);
}

#[test]
fn e2big_on_a_single_op_fails_the_call() {
    let (k, list) = machine(1, 2);
    let dev = BatchDevice::new(k.clone().max_ops(0), list);
    let mut ops = vec![MsrOp::read(CpuId(0), MsrAddr(0x100))];
    match dev.run(&mut ops) {
        Err(DeviceError::Batch { errno, .. }) => assert_eq!(errno, Errno::E2BIG),
        other => panic!("{other:?}"),
    }
}

/// msr-safe 2.x changed the op struct and refuses a 1.x array with ENOPROTOOPT: the whole call
/// fails, naming the ABI, and no op gets a result it did not have.
#[test]
fn a_2x_module_refuses_our_abi_as_a_whole_call() {
    let (k, list) = machine(2, 2);
    let dev = BatchDevice::new(k.clone().module_major(2), list.clone());
    let err = Snapshot::take(&dev, list, &all_cpus(2)).unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("ENOPROTOOPT") && text.contains("2.x"),
        "{text}"
    );
    assert!(k.writes().is_empty());
}

#[test]
fn an_error_the_ops_do_not_explain_fails_the_call() {
    let (k, list) = machine(2, 2);
    k.fail_next_call(Errno::EFAULT);
    let dev = BatchDevice::new(k.clone(), list.clone());
    let err = Snapshot::take(&dev, list.clone(), &all_cpus(2)).unwrap_err();
    assert!(err.to_string().contains("EFAULT"), "{err}");
    // The next call works again.
    assert_eq!(
        Snapshot::take(&dev, list, &all_cpus(2))
            .unwrap()
            .unreadable(),
        0
    );
}

#[test]
fn kernel_stores_under_its_own_mask_and_leaves_msrdata() {
    // Ours allows 0xff00, the loaded list 0xffff: bits 0x00ff come from `value`.
    let ours = allowlist(&[(0x199, 0xff00)]);
    let k = KernelBatch::new([0]).allow(MsrAddr(0x199), WriteMask(0xffff));
    k.set_register(CpuId(0), MsrAddr(0x199), 0xdead_1234);
    let dev = BatchDevice::new(k.clone(), ours);
    // A merged value (as restore computes it from a fresh read) keeps the bits outside our mask.
    let current = 0xdead_1234u64;
    let merged = WriteMask(0xff00).merge(current, 0xab00);
    let mut ops = vec![MsrOp::write(
        CpuId(0),
        MsrAddr(0x199),
        merged,
        WriteMask(0xff00),
    )];
    dev.run(&mut ops).unwrap();
    assert_eq!(ops[0].result, Some(Ok(merged)));
    assert_eq!(k.register(CpuId(0), MsrAddr(0x199)), 0xdead_ab34);
    // An unmerged value: the kernel takes bits 0x00ff from it (documented).
    let mut ops = vec![MsrOp::write(
        CpuId(0),
        MsrAddr(0x199),
        0xcd00,
        WriteMask(0xff00),
    )];
    dev.run(&mut ops).unwrap();
    assert_eq!(k.register(CpuId(0), MsrAddr(0x199)), 0xdead_cd00);
    let w = k.writes();
    assert_eq!(w[1].before, Some(0xdead_ab34));
    assert_eq!(w[1].result, Ok(0xdead_cd00));
    // What we sent: the value as given, wmask and err zero.
    let sent = k.received().concat();
    assert_eq!(
        (sent[1].msrdata, sent[1].wmask, sent[1].err),
        (0xcd00, 0, 0)
    );
}

/// Takes the next CPU offline before every call: the pre-check never settles.
struct Flapping {
    inner: KernelBatch,
    next: std::sync::atomic::AtomicU32,
}

impl BatchIoctl for Flapping {
    fn msr_batch(&self, ops: &mut [msr_batch_op]) -> Result<(), Errno> {
        let cpu = self.next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.inner.set_online(CpuId(cpu), false);
        self.inner.msr_batch(ops)
    }

    fn path(&self) -> &Path {
        self.inner.path()
    }
}

#[test]
fn precheck_retries_are_bounded() {
    let (k, list) = machine(32, 1);
    let dev = BatchDevice::new(
        Flapping {
            inner: k.clone(),
            next: 0.into(),
        },
        list.clone(),
    );
    let mut ops: Vec<MsrOp> = (0..32)
        .map(|c| MsrOp::read(CpuId(c), MsrAddr(0x100)))
        .collect();
    match execute(&dev, &mut ops) {
        Err(DeviceError::BatchPrecheck { errno, detail, .. }) => {
            assert_eq!(errno, Errno::ENXIO);
            assert!(detail.contains("CPU"), "{detail}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(k.calls(), MAX_PRECHECK_ROUNDS);
    // The refused ops have their errno; the rest never ran.
    assert_eq!(ops[0].result, Some(errno(Errno::ENXIO)));
    assert_eq!(
        ops[MAX_PRECHECK_ROUNDS - 1].result,
        Some(errno(Errno::ENXIO))
    );
    assert_eq!(ops[MAX_PRECHECK_ROUNDS].result, None);
}

#[test]
fn precheck_settles_after_a_few_hotplugs() {
    // Three CPUs go away during the call: four ioctls, everyone else read.
    struct GoAway {
        inner: KernelBatch,
        calls: std::sync::atomic::AtomicU32,
    }
    impl BatchIoctl for GoAway {
        fn msr_batch(&self, ops: &mut [msr_batch_op]) -> Result<(), Errno> {
            let n = self.calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            if n < 3 {
                self.inner.set_online(CpuId(n * 2), false);
            }
            self.inner.msr_batch(ops)
        }
        fn path(&self) -> &Path {
            self.inner.path()
        }
    }
    let (k, list) = machine(8, 2);
    let dev = BatchDevice::new(
        GoAway {
            inner: k.clone(),
            calls: 0.into(),
        },
        list.clone(),
    );
    let snap = Snapshot::take(&dev, list, &all_cpus(8)).unwrap();
    assert_eq!(k.calls(), 4);
    for ci in 0..8u32 {
        let want = if ci < 6 && ci % 2 == 0 {
            errno(Errno::ENXIO)
        } else {
            Ok(seed(ci, 0x101))
        };
        assert_eq!(snap.value(ci as usize, 1), want, "cpu {ci}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// Whatever the lists, masks and values: only allowlisted MSRs reach the kernel, a write only
    /// when its mask is non-zero and inside our allowlist's, and with a merged value (as restore
    /// sends) a register changes only in the bits of the op's mask.
    #[test]
    fn batch_writes_stay_inside_the_masks(
        ours in proptest::collection::vec(any::<u64>(), 1..6),
        loaded_extra in any::<u64>(),
        initial in proptest::collection::vec(any::<u64>(), 8),
        ops in proptest::collection::vec((0u32..2, 0u32..8, any::<u64>(), any::<u64>(), 0u8..4), 1..24),
    ) {
        // MSRs 0..ours.len() are ours; the kernel's list has every MSR 0..8, masks wider by
        // loaded_extra for MSR 0 only (so our guard, not the kernel, must stop bad writes).
        let list = allowlist(&ours.iter().enumerate().map(|(i, &m)| (i as u32, m)).collect::<Vec<_>>());
        let mut k = KernelBatch::new(0..2);
        for a in 0..8u32 {
            let m = ours.get(a as usize).copied().unwrap_or(u64::MAX);
            let m = if a == 0 { m | loaded_extra } else { m };
            k = k.allow(MsrAddr(a), WriteMask(m));
        }
        for c in 0..2 {
            for a in 0..8u32 {
                k.set_register(CpuId(c), MsrAddr(a), initial[a as usize].rotate_left(c));
            }
        }
        let dev = BatchDevice::new(k.clone(), list.clone());
        let mut msr_ops = Vec::new();
        for &(cpu, addr, wanted, bits, how) in &ops {
            msr_ops.push(match op_mask(&list, addr, bits, how) {
                None => MsrOp::read(CpuId(cpu), MsrAddr(addr)),
                Some(mask) => MsrOp::write(CpuId(cpu), MsrAddr(addr), wanted, mask),
            });
        }
        // One op at a time, each write's value merged from a fresh read (as restore does).
        for op in msr_ops.iter_mut() {
            if let msr_backend::device::OpKind::Write { value, mask } = &mut op.kind {
                *value = mask.merge(k.register(op.cpu, op.addr), *value);
            }
            let before = k.register(op.cpu, op.addr);
            dev.run(std::slice::from_mut(op)).unwrap();
            let after = k.register(op.cpu, op.addr);
            let allowed = list.mask(op.addr);
            match (op.kind, allowed) {
                (_, None) => prop_assert_eq!(op.result, Some(Err(OpError::NotAllowlisted))),
                (msr_backend::device::OpKind::Write { mask, .. }, Some(a))
                    if mask.0 & !a.0 != 0 || mask.0 == 0 || a.0 == 0 =>
                {
                    let refused = matches!(op.result, Some(Err(OpError::OutsideMask { .. })));
                    prop_assert!(refused, "{:?}", op.result);
                }
                (msr_backend::device::OpKind::Write { mask, .. }, Some(_)) => {
                    prop_assert!(op.result.unwrap().is_ok());
                    prop_assert_eq!((before ^ after) & !mask.0, 0);
                }
                (msr_backend::device::OpKind::Read, Some(_)) => {
                    prop_assert_eq!(op.result, Some(Ok(before)));
                }
            }
            if !matches!(op.result, Some(Ok(_))) || op.kind == msr_backend::device::OpKind::Read {
                prop_assert_eq!(before, after);
            }
        }
        for sent in k.received().concat() {
            let allowed = list.mask(MsrAddr(sent.msr));
            prop_assert!(allowed.is_some());
            if sent.isrdmsr == 0 {
                prop_assert!(allowed.unwrap().is_writable());
            }
        }
    }
}
