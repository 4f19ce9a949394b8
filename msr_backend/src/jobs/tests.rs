//! The job protocol against nodes kept in memory.

use super::*;
use std::os::unix::fs::{MetadataExt, PermissionsExt};

use crate::device::OpError;
use crate::finding::Stage;
use crate::types::{CpuId, MsrAddr};
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::sync::{Arc, Barrier, Mutex};

/// A node of a few registers kept in memory; the snapshot file holds their values as text.
#[derive(Default)]
struct FakeNode {
    regs: RefCell<BTreeMap<u32, u64>>,
    fail_snapshot: bool,
    /// Registers whose restore "fails".
    stuck: Vec<u32>,
    snapshots: RefCell<usize>,
    restores: RefCell<usize>,
}

impl FakeNode {
    fn new() -> Self {
        let n = FakeNode::default();
        n.regs.borrow_mut().insert(0x199, 0x1000);
        n.regs.borrow_mut().insert(0x610, 0x2000);
        n
    }
    fn set(&self, msr: u32, v: u64) {
        self.regs.borrow_mut().insert(msr, v);
    }
    fn get(&self, msr: u32) -> u64 {
        self.regs.borrow()[&msr]
    }
}

impl NodeRegisters for FakeNode {
    fn snapshot(&self, file: &Path, _job: &JobId) -> crate::Result<SnapshotSummary> {
        if self.fail_snapshot {
            return Err(crate::Error::Usage("allowlist unreadable".into()));
        }
        *self.snapshots.borrow_mut() += 1;
        let text: String = self
            .regs
            .borrow()
            .iter()
            .map(|(k, v)| format!("{k} {v}\n"))
            .collect();
        fs::write(file, text).map_err(|e| crate::Error::io(file, e))?;
        Ok(SnapshotSummary {
            cpus: 1,
            msrs: self.regs.borrow().len(),
            ..Default::default()
        })
    }
    fn restore(&self, file: &Path) -> crate::Result<RestoreSummary> {
        *self.restores.borrow_mut() += 1;
        let text = fs::read_to_string(file).map_err(|e| crate::Error::io(file, e))?;
        let mut s = RestoreSummary::default();
        for line in text.lines() {
            let mut it = line.split(' ');
            let k: u32 = it.next().and_then(|x| x.parse().ok()).unwrap_or(0);
            let v: u64 = it.next().and_then(|x| x.parse().ok()).unwrap_or(0);
            if self.stuck.contains(&k) {
                s.failed += 1;
                s.failures.push(Finding::failed(
                    CpuId(0),
                    MsrAddr(k),
                    Some("IA32_PERF_CTL".into()),
                    Stage::Write,
                    OpError::Errno(nix::errno::Errno::EACCES),
                ));
            } else {
                self.set(k, v);
                s.written += 1;
            }
        }
        Ok(s)
    }
}

fn cfg() -> (tempfile::TempDir, StateDir) {
    let t = tempfile::tempdir().expect("tempdir");
    let c = StateDir {
        path: t.path().join("state"),
        lock_timeout: Duration::from_secs(5),
    };
    (t, c)
}

#[test]
fn one_job_snapshots_and_restores() {
    let (_t, c) = cfg();
    let node = FakeNode::new();
    let b = begin(&c, "17", &node).expect("begin");
    assert!(matches!(b, BeginOutcome::Snapshot(_)), "{b:?}");
    assert!(c.snapshot_path().exists());
    assert!(c.jobs_dir().join("17").exists());
    node.set(0x199, 0xdead);
    let e = end(&c, "17", &node).expect("end");
    assert!(matches!(e, EndOutcome::Restored(_)), "{e:?}");
    assert_eq!(node.get(0x199), 0x1000);
    assert!(!c.snapshot_path().exists());
    assert!(!c.jobs_dir().join("17").exists());
    let mode = fs::metadata(&c.path).expect("stat").mode() & 0o777;
    assert_eq!(mode, 0o700);
}

#[test]
fn last_job_restores_to_the_state_before_the_first() {
    let (_t, c) = cfg();
    let node = FakeNode::new();
    begin(&c, "1", &node).expect("begin 1");
    node.set(0x199, 0x1111);
    let b2 = begin(&c, "2", &node).expect("begin 2");
    assert_eq!(
        b2,
        BeginOutcome::Joined {
            others: vec!["1".into()]
        }
    );
    node.set(0x610, 0x2222);
    let e1 = end(&c, "1", &node).expect("end 1");
    assert_eq!(
        e1,
        EndOutcome::OthersRemain {
            others: vec!["2".into()]
        }
    );
    assert_eq!(node.get(0x199), 0x1111, "no restore while job 2 runs");
    let e2 = end(&c, "2", &node).expect("end 2");
    assert!(matches!(e2, EndOutcome::Restored(_)));
    assert_eq!(node.get(0x199), 0x1000);
    assert_eq!(node.get(0x610), 0x2000);
    assert_eq!(*node.snapshots.borrow(), 1);
    assert_eq!(*node.restores.borrow(), 1);
}

#[test]
fn repeated_begin_is_idempotent() {
    let (_t, c) = cfg();
    let node = FakeNode::new();
    begin(&c, "5", &node).expect("begin");
    node.set(0x199, 0x5555);
    assert_eq!(
        begin(&c, "5", &node).expect("again"),
        BeginOutcome::AlreadyRegistered
    );
    assert_eq!(*node.snapshots.borrow(), 1);
    end(&c, "5", &node).expect("end");
    assert_eq!(node.get(0x199), 0x1000);
}

#[test]
fn requeued_job_gets_a_fresh_cycle() {
    let (_t, c) = cfg();
    let node = FakeNode::new();
    begin(&c, "9", &node).expect("begin");
    end(&c, "9", &node).expect("end");
    node.set(0x199, 0x7777); // an admin changed it between the runs
    assert!(matches!(
        begin(&c, "9", &node).expect("begin again"),
        BeginOutcome::Snapshot(_)
    ));
    node.set(0x199, 0x8888);
    end(&c, "9", &node).expect("end again");
    assert_eq!(node.get(0x199), 0x7777);
}

#[test]
fn end_without_begin_does_nothing() {
    let (_t, c) = cfg();
    let node = FakeNode::new();
    assert_eq!(end(&c, "3", &node).expect("end"), EndOutcome::NotRegistered);
    assert_eq!(*node.restores.borrow(), 0);
    // ... also while another job holds the node
    begin(&c, "4", &node).expect("begin");
    assert_eq!(end(&c, "3", &node).expect("end"), EndOutcome::NotRegistered);
    assert!(c.snapshot_path().exists());
}

#[test]
fn failed_snapshot_registers_nothing() {
    let (_t, c) = cfg();
    let node = FakeNode {
        fail_snapshot: true,
        ..FakeNode::new()
    };
    let err = begin(&c, "6", &node).expect_err("snapshot fails");
    let msg = crate::error::chain(&err);
    assert!(msg.contains("cannot snapshot"), "{msg}");
    assert!(msg.contains("allowlist unreadable"), "{msg}");
    assert!(!c.snapshot_path().exists());
    assert!(!c.jobs_dir().join("6").exists());
    assert_eq!(
        end(&c, "6", &node).expect("epilog after a failed prolog"),
        EndOutcome::NotRegistered
    );
}

#[test]
fn failed_restore_keeps_the_snapshot_and_names_the_registers() {
    let (_t, c) = cfg();
    let node = FakeNode {
        stuck: vec![0x199],
        ..FakeNode::new()
    };
    begin(&c, "7", &node).expect("begin");
    node.set(0x199, 0x1234);
    let err = end(&c, "7", &node).expect_err("restore fails");
    let msg = err.to_string();
    assert!(
        msg.contains("CPU 0 MSR 0x00000199 (IA32_PERF_CTL): write failed: EACCES"),
        "{msg}"
    );
    assert!(msg.contains("snapshot kept"), "{msg}");
    assert!(c.snapshot_path().exists());
    assert!(!c.jobs_dir().join("7").exists());
    // The next job reuses the kept snapshot instead of trusting the node...
    let b = begin(&c, "8", &node).expect("begin 8");
    assert!(matches!(b, BeginOutcome::ReusedSnapshot { .. }), "{b:?}");
    assert_eq!(*node.snapshots.borrow(), 1);
}

#[test]
fn kept_snapshot_is_retried_by_the_next_end() {
    let (_t, c) = cfg();
    let mut node = FakeNode {
        stuck: vec![0x199],
        ..FakeNode::new()
    };
    begin(&c, "7", &node).expect("begin");
    node.set(0x199, 0x1234);
    end(&c, "7", &node).expect_err("restore fails");
    node.stuck.clear();
    assert_eq!(
        end(&c, "7", &node).expect("retry"),
        EndOutcome::Restored(RestoreSummary {
            written: 2,
            ..Default::default()
        })
    );
    assert_eq!(node.get(0x199), 0x1000);
    assert!(!c.snapshot_path().exists());
}

#[test]
fn registered_job_without_snapshot_is_an_error() {
    let (_t, c) = cfg();
    let node = FakeNode::new();
    begin(&c, "10", &node).expect("begin");
    fs::remove_file(c.snapshot_path()).expect("rm");
    let err = begin(&c, "11", &node).expect_err("no snapshot for running jobs");
    assert!(err.to_string().contains("job(s) 10"), "{err}");
    let err = end(&c, "10", &node).expect_err("missing snapshot");
    assert!(err.to_string().contains("is missing"), "{err}");
}

#[test]
fn job_ids_are_checked() {
    for ok in ["1", "123_4", "123[4].pbs-server", "42.sched@host", "a-b+c"] {
        validate_job_id(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
    }
    for bad in ["", "../x", "a/b", ".hidden", "a b", "x\n", &"9".repeat(129)] {
        assert!(validate_job_id(bad).is_err(), "{bad:?} accepted");
    }
    let (_t, c) = cfg();
    assert!(begin(&c, "../../etc/passwd", &FakeNode::new()).is_err());
}

#[test]
fn state_dir_writable_by_others_is_refused() {
    let (_t, c) = cfg();
    fs::create_dir_all(&c.path).expect("mkdir");
    fs::set_permissions(&c.path, fs::Permissions::from_mode(0o777)).expect("chmod");
    let err = begin(&c, "1", &FakeNode::new()).expect_err("refused");
    assert!(
        err.to_string().contains("writable by group or others"),
        "{err}"
    );
}

#[test]
fn state_dir_symlink_is_refused() {
    let (t, c) = cfg();
    let real = t.path().join("real");
    fs::create_dir(&real).expect("mkdir");
    std::os::unix::fs::symlink(&real, &c.path).expect("symlink");
    let err = begin(&c, "1", &FakeNode::new()).expect_err("refused");
    assert!(err.to_string().contains("symbolic link"), "{err}");
}

#[test]
fn lock_timeout_names_the_holder() {
    let (_t, mut c) = cfg();
    c.prepare().expect("prepare");
    let _held = NodeLock::acquire(&c, "job 1 begin").expect("lock");
    c.lock_timeout = Duration::from_millis(100);
    let err = match NodeLock::acquire(&c, "job 2 end") {
        Ok(_) => panic!("second lock taken"),
        Err(e) => e,
    };
    let msg = err.to_string();
    assert!(msg.contains("still held"), "{msg}");
    assert!(msg.contains("job 1 begin"), "{msg}");
}

/// Register values shared between threads, for the concurrency test.
struct SharedNode(Arc<Mutex<u64>>);

impl NodeRegisters for SharedNode {
    fn snapshot(&self, file: &Path, _job: &JobId) -> crate::Result<SnapshotSummary> {
        let v = *self
            .0
            .lock()
            .map_err(|_| crate::Error::Usage("poison".into()))?;
        std::thread::sleep(Duration::from_millis(20));
        fs::write(file, v.to_string()).map_err(|e| crate::Error::io(file, e))?;
        Ok(SnapshotSummary::default())
    }
    fn restore(&self, file: &Path) -> crate::Result<RestoreSummary> {
        let text = fs::read_to_string(file).map_err(|e| crate::Error::io(file, e))?;
        let v: u64 = text
            .parse()
            .map_err(|_| crate::Error::Usage("bad fake snapshot".into()))?;
        std::thread::sleep(Duration::from_millis(20));
        *self
            .0
            .lock()
            .map_err(|_| crate::Error::Usage("poison".into()))? = v;
        Ok(RestoreSummary::default())
    }
}

#[test]
fn concurrent_jobs_snapshot_once_and_restore_once() {
    let (_t, c) = cfg();
    let value = Arc::new(Mutex::new(100u64));
    let n = 6;
    let barrier = Arc::new(Barrier::new(n));
    let handles: Vec<_> = (0..n)
        .map(|i| {
            let c = c.clone();
            let value = Arc::clone(&value);
            let barrier = Arc::clone(&barrier);
            std::thread::spawn(move || {
                let node = SharedNode(Arc::clone(&value));
                barrier.wait();
                let b = begin(&c, &format!("{i}"), &node).expect("begin");
                if let Ok(mut v) = value.lock() {
                    *v += 1; // the job changes a register
                }
                barrier.wait(); // every job has begun before any ends
                let e = end(&c, &format!("{i}"), &node).expect("end");
                (b, e)
            })
        })
        .collect();
    let results: Vec<_> = handles
        .into_iter()
        .map(|h| h.join().expect("thread"))
        .collect();
    let snapshots = results
        .iter()
        .filter(|(b, _)| matches!(b, BeginOutcome::Snapshot(_)))
        .count();
    let restores = results
        .iter()
        .filter(|(_, e)| matches!(e, EndOutcome::Restored(_)))
        .count();
    assert_eq!(snapshots, 1);
    assert_eq!(restores, 1);
    assert_eq!(*value.lock().expect("lock"), 100);
    assert!(!c.snapshot_path().exists());
    assert!(registry::list(&c).expect("list").is_empty());
}

#[test]
fn status_lists_jobs() {
    let (_t, c) = cfg();
    assert_eq!(
        status(&c).expect("status of nothing"),
        NodeStatus {
            jobs: vec![],
            snapshot: None
        }
    );
    let node = FakeNode::new();
    begin(&c, "2", &node).expect("begin");
    begin(&c, "1", &node).expect("begin");
    let s = status(&c).expect("status");
    assert_eq!(s.jobs, vec!["1".to_string(), "2".to_string()]);
    assert_eq!(s.snapshot, Some(c.snapshot_path()));
}

#[test]
fn long_lists_are_cut() {
    let p: Vec<_> = (0..8)
        .map(|i| {
            Finding::failed(
                CpuId(i),
                MsrAddr(0x199),
                None,
                Stage::Write,
                OpError::Errno(nix::errno::Errno::EIO),
            )
        })
        .collect();
    let s = name_registers(&p, NAMED_REGISTERS);
    assert!(s.contains("CPU 4 MSR"), "{s}");
    assert!(!s.contains("CPU 5 MSR"), "{s}");
    assert!(s.ends_with("and 3 more"), "{s}");
}

/// A link planted at the snapshot's name is refused, never taken as a kept snapshot nor read
/// through.
#[test]
fn a_planted_link_in_the_state_dir_is_refused_by_name() {
    let (t, c) = cfg();
    let node = FakeNode::new();
    c.prepare().expect("prepare");
    let elsewhere = t.path().join("elsewhere");
    fs::write(&elsewhere, "0x199 1\n").expect("write");
    std::os::unix::fs::symlink(&elsewhere, c.snapshot_path()).expect("symlink");
    let err = begin(&c, "1", &node).expect_err("refused");
    let msg = err.to_string();
    assert!(
        msg.contains("snapshot.msr is a symbolic link") && msg.contains("remove it"),
        "{msg}"
    );
    assert_eq!(*node.snapshots.borrow(), 0);
    let err = end(&c, "1", &node).expect_err("refused");
    assert!(err.to_string().contains("symbolic link"), "{err}");
    assert_eq!(*node.restores.borrow(), 0);
    // The lock and a job file are checked the same way.
    fs::remove_file(c.snapshot_path()).expect("rm");
    std::os::unix::fs::symlink(&elsewhere, c.jobs_dir().join("5")).expect("symlink");
    let err = begin(&c, "6", &node).expect_err("refused");
    assert!(
        err.to_string().contains("jobs/5 is a symbolic link"),
        "{err}"
    );
    fs::remove_file(c.jobs_dir().join("5")).expect("rm");
    fs::remove_file(c.lock_path()).expect("rm");
    std::os::unix::fs::symlink(&elsewhere, c.lock_path()).expect("symlink");
    let err = begin(&c, "6", &node).expect_err("refused");
    assert!(err.to_string().contains("lock is a symbolic link"), "{err}");
}

#[test]
fn anything_else_in_the_state_dir_is_refused_with_what_to_remove() {
    let (_t, c) = cfg();
    let node = FakeNode::new();
    c.prepare().expect("prepare");
    fs::write(c.path.join("notes.txt"), "x").expect("write");
    let err = begin(&c, "1", &node).expect_err("refused");
    assert!(
        err.to_string()
            .contains("notes.txt, which msr-restore did not put there; remove it"),
        "{err}"
    );
    fs::remove_file(c.path.join("notes.txt")).expect("rm");
    fs::write(c.jobs_dir().join("not a job"), "x").expect("write");
    let err = begin(&c, "1", &node).expect_err("refused");
    assert!(err.to_string().contains("not a job file"), "{err}");
}

#[test]
fn a_dead_writers_temp_in_the_state_dir_is_removed_and_said() {
    let (_t, c) = cfg();
    c.prepare().expect("prepare");
    let dead = c.path.join(".snapshot.msr.tmp.99999999.0011223344556677");
    fs::write(&dead, vec![0u8; 4096]).expect("write");
    let r = reconcile(
        &c,
        &FakeNode::new(),
        &SchedulerView::Unknown { why: "test".into() },
        None,
    )
    .expect("reconcile");
    assert_eq!(r.stale_temps.len(), 1, "{r:?}");
    assert!(r.stale_temps[0]
        .to_string()
        .contains("99999999 which no longer runs"));
    assert!(!dead.exists());
}

fn running(jobs: &[&str]) -> SchedulerView {
    SchedulerView::Running {
        jobs: jobs.iter().map(|j| j.to_string()).collect(),
        source: "the test scheduler".into(),
    }
}

/// Age a registration past the grace period.
fn age(c: &StateDir, job: &str) {
    let old = std::time::SystemTime::now() - RECONCILE_GRACE - Duration::from_secs(5);
    let f = fs::File::options()
        .write(true)
        .open(c.jobs_dir().join(job))
        .expect("open");
    f.set_modified(old).expect("mtime");
}

#[test]
fn a_job_the_scheduler_forgot_is_reaped_and_the_last_real_job_restores() {
    let (_t, c) = cfg();
    let node = FakeNode::new();
    begin(&c, "1", &node).expect("begin 1");
    begin(&c, "2", &node).expect("begin 2");
    node.set(0x199, 0xbad);
    // Job 1's epilog never ran (slurmd died); job 2 ends normally.
    age(&c, "1");
    let r = reconcile(&c, &node, &running(&["2"]), Some("2")).expect("reconcile");
    assert_eq!(r.reaped.len(), 1);
    assert_eq!(r.reaped[0].job.as_str(), "1");
    assert!(
        r.reaped[0]
            .why
            .contains("the test scheduler does not list it"),
        "{r:?}"
    );
    assert!(r.restored.is_none(), "job 2 still holds the node");
    assert!(matches!(
        end(&c, "2", &node).expect("end 2"),
        EndOutcome::Restored(_)
    ));
    assert_eq!(node.get(0x199), 0x1000);
}

#[test]
fn reconciliation_never_reaps_a_listed_a_young_or_its_own_job_nor_on_an_unknown_answer() {
    let (_t, c) = cfg();
    let node = FakeNode::new();
    for j in ["1", "2", "3"] {
        begin(&c, j, &node).expect("begin");
    }
    age(&c, "1");
    age(&c, "3");
    // 1 is listed; 2 is young; 3 is the caller's own.
    let r = reconcile(&c, &node, &running(&["1"]), Some("3")).expect("reconcile");
    assert!(r.reaped.is_empty(), "{r:?}");
    age(&c, "2");
    let r = reconcile(
        &c,
        &node,
        &SchedulerView::Unknown {
            why: "scontrol failed".into(),
        },
        None,
    )
    .expect("reconcile");
    assert!(r.reaped.is_empty() && r.unknown.as_deref() == Some("scontrol failed"));
    assert_eq!(status(&c).expect("status").jobs.len(), 3);
    // Every job gone: the node is restored by the reconciliation itself.
    node.set(0x610, 0xbad);
    let r = reconcile(&c, &node, &running(&[]), None).expect("reconcile");
    assert_eq!(r.reaped.len(), 3);
    assert!(r.restored.is_some());
    assert_eq!(node.get(0x610), 0x2000);
    assert!(!c.snapshot_path().exists());
}
