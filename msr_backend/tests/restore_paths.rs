//! Every way a restore or a check can fail, reached through the fake machine on both msr-safe
//! interfaces: a register unreadable now, a write refused, a read-back that fails, one that does
//! not hold (a firmware-locked bit), a CPU gone offline; and what a one-pass restore reports of
//! what the job had changed.

use std::sync::Arc;

use msr_backend::allowlist::Allowlist;
use msr_backend::device::batch::BatchDevice;
use msr_backend::device::percpu::PerCpuDevice;
use msr_backend::device::{BackendKind, MsrDevice, OpError};
use msr_backend::finding::{Problem, Stage};
use msr_backend::plan::DriftBits;
use msr_backend::restore::{check, restore};
use msr_backend::snapshot::Snapshot;
use msr_backend::testing::{allowlist_of, FakeMachine, Flavour};
use msr_backend::topology::Layout;
use msr_backend::{CpuId, MsrAddr};
use nix::errno::Errno;

const LIST: &[(u32, u64)] = &[(0x10, 0), (0x199, 0xffff), (0x610, u64::MAX)];

/// Every register per CPU: no topology, no CPU model.
fn flat(cpus: &[CpuId]) -> Layout {
    Layout::per_thread(cpus)
}

fn cpus(n: u32) -> Vec<CpuId> {
    (0..n).map(CpuId).collect()
}

/// A machine of `n` CPUs with LIST loaded and every register seeded.
fn machine(n: u32) -> (FakeMachine, Arc<Allowlist>) {
    let m = FakeMachine::new(0..n);
    let list = allowlist_of(LIST);
    m.load_allowlist(&list);
    for c in 0..n {
        for &(a, _) in LIST {
            m.set_register(CpuId(c), MsrAddr(a), 0x1000 * u64::from(c) + u64::from(a));
        }
    }
    (m, list)
}

/// Both msr-safe backends over the same machine.
fn devices(m: &FakeMachine, list: &Arc<Allowlist>) -> Vec<Box<dyn MsrDevice>> {
    vec![
        Box::new(BatchDevice::new(m.batch(), list.clone())),
        Box::new(PerCpuDevice::new(
            m.cpu_nodes(Flavour::MsrSafe),
            BackendKind::Safe,
            list.clone(),
        )),
    ]
}

/// The job changes every writable register.
fn job(m: &FakeMachine, n: u32) {
    for c in 0..n {
        for &(a, mask) in LIST {
            let v = m.register(CpuId(c), MsrAddr(a));
            m.set_register(CpuId(c), MsrAddr(a), v ^ (mask & 0xff));
        }
    }
}

#[test]
fn a_clean_restore_reports_what_the_job_changed_per_msr() {
    for kind in 0..2 {
        let (m, list) = machine(4);
        let dev = &devices(&m, &list)[kind];
        let saved = Snapshot::take(dev.as_ref(), list.clone(), &cpus(4)).unwrap();
        job(&m, 4);
        let r = restore(
            dev.as_ref(),
            &saved,
            &list,
            &cpus(4),
            &flat(&cpus(4)),
            false,
        )
        .unwrap();
        assert!(r.ok(), "{r:?}");
        assert_eq!((r.written, r.verified), (8, 8));
        let changed: Vec<_> = r
            .changed
            .iter()
            .map(|c| (c.msr, c.cpus, c.cpu_list.as_str(), c.bits.0))
            .collect();
        assert_eq!(
            changed,
            [
                (MsrAddr(0x199), 4, "0-3", 0xff),
                (MsrAddr(0x610), 4, "0-3", 0xff)
            ]
        );
        let c = check(
            dev.as_ref(),
            &saved,
            &list,
            &cpus(4),
            &flat(&cpus(4)),
            DriftBits::Writable,
        )
        .unwrap();
        assert!(c.clean(), "{c:?}");
    }
}

#[test]
fn a_refused_write_is_a_write_failure_and_still_drifted() {
    let (m, list) = machine(2);
    let nodes = m.cpu_nodes(Flavour::MsrSafe);
    let dev = PerCpuDevice::new(nodes.clone(), BackendKind::Safe, list.clone());
    let saved = Snapshot::take(&dev, list.clone(), &cpus(2)).unwrap();
    job(&m, 2);
    nodes.deny_writes(Some(Errno::EPERM));
    let r = restore(&dev, &saved, &list, &cpus(2), &flat(&cpus(2)), false).unwrap();
    assert_eq!((r.failed, r.written, r.verified), (4, 0, 0));
    assert!(r.failures.iter().all(|f| f.problem
        == Problem::Failed {
            stage: Stage::Write,
            error: OpError::Errno(Errno::EPERM)
        }));
    assert_eq!(r.still_drifted().count(), 4);
}

#[test]
fn a_read_back_that_fails_is_a_verify_failure() {
    let (m, list) = machine(2);
    let nodes = m.cpu_nodes(Flavour::MsrSafe);
    let dev = PerCpuDevice::new(nodes.clone(), BackendKind::Safe, list.clone());
    let saved = Snapshot::take(&dev, list.clone(), &cpus(2)).unwrap();
    job(&m, 2);
    // CPU 1 goes offline after the reads of its 2 writable MSRs and their 2 writes (msr_safe
    // reads before each write: 2 node ops a write), before the read-back.
    nodes.offline_after(CpuId(1), 2 + 2 * 2);
    let r = restore(&dev, &saved, &list, &cpus(2), &flat(&cpus(2)), false).unwrap();
    let verify: Vec<_> = r
        .failures
        .iter()
        .filter(|f| f.stage() == Some(Stage::Verify))
        .map(|f| (f.cpu, f.code().to_string()))
        .collect();
    assert_eq!(
        verify,
        [
            (CpuId(1), "ENXIO".to_string()),
            (CpuId(1), "ENXIO".to_string())
        ]
    );
    assert_eq!(r.verified, 2, "CPU 0 is whole");
}

#[test]
fn a_locked_bit_that_does_not_hold_is_a_mismatch() {
    for kind in 0..2 {
        let (m, list) = machine(1);
        let dev = &devices(&m, &list)[kind];
        let saved = Snapshot::take(dev.as_ref(), list.clone(), &cpus(1)).unwrap();
        job(&m, 1);
        m.lock_bits(MsrAddr(0x610), 0x1);
        let r = restore(
            dev.as_ref(),
            &saved,
            &list,
            &cpus(1),
            &flat(&cpus(1)),
            false,
        )
        .unwrap();
        assert_eq!(r.failed, 1, "{r:?}");
        match r.failures[0].problem {
            Problem::Mismatch { bits, .. } => assert_eq!(bits, 0x1),
            other => panic!("{other:?}"),
        }
        assert_eq!(r.failures[0].msr, Some(MsrAddr(0x610)));
        assert_eq!(r.still_drifted().count(), 1);
    }
}

#[test]
fn unreadable_now_offline_and_unreadable_at_save_are_told_apart() {
    for kind in 0..2 {
        let (m, list) = machine(3);
        m.set_unsupported(Some(CpuId(0)), MsrAddr(0x610));
        let dev = &devices(&m, &list)[kind];
        let saved = Snapshot::take(dev.as_ref(), list.clone(), &cpus(3)).unwrap();
        assert_eq!(saved.unreadable(), 1);
        job(&m, 3);
        m.set_unsupported(Some(CpuId(1)), MsrAddr(0x199));
        m.set_online(CpuId(2), false);
        let online = cpus(2);
        let r = restore(dev.as_ref(), &saved, &list, &online, &flat(&online), false).unwrap();
        assert_eq!(r.unreadable_at_save, 1);
        assert_eq!(r.offline_cpus, [CpuId(2)]);
        let codes: Vec<_> = r
            .failures
            .iter()
            .map(|f| (f.cpu, f.stage(), f.code().to_string()))
            .collect();
        assert_eq!(
            codes,
            [
                (CpuId(2), Some(Stage::Offline), "OFFLINE".to_string()),
                (CpuId(1), Some(Stage::Read), "EIO".to_string())
            ]
        );
        let c = check(
            dev.as_ref(),
            &saved,
            &list,
            &online,
            &flat(&online),
            DriftBits::Writable,
        )
        .unwrap();
        assert_eq!(c.failed, 2, "{c:?}");
    }
}

#[test]
fn reports_list_a_bounded_number_of_registers_but_count_them_all() {
    use msr_backend::restore::LISTED;
    let n = 600;
    let (m, list) = machine(n);
    let dev = BatchDevice::new(m.batch(), list.clone());
    let saved = Snapshot::take(&dev, list.clone(), &cpus(n)).unwrap();
    job(&m, n);
    let c = check(
        &dev,
        &saved,
        &list,
        &cpus(n),
        &flat(&cpus(n)),
        DriftBits::Writable,
    )
    .unwrap();
    assert_eq!(c.drifted, 2 * n as usize);
    assert_eq!(c.drift.len(), LISTED);
    assert_eq!(c.drifted_cpus, n as usize);
    let r = restore(&dev, &saved, &list, &cpus(n), &flat(&cpus(n)), false).unwrap();
    assert_eq!(r.written, 2 * n as usize);
    assert_eq!(r.writes.len(), LISTED);
    assert!(r.ok());
}
