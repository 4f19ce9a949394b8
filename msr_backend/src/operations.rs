//! Whole operations on a node: the one place every caller goes through (the `msrsave` commands
//! and its demo, the job protocol under the SLURM plugin and the PBS hooks), so that a rule is
//! written once:
//!
//! - [`save`]: snapshot every allowlisted MSR on every online CPU and store it with its metadata;
//! - [`load_for_node`]: read a save file and check that it fits this node (one fit rule for
//!   every caller: another host is refused unless allowed, another CPU model always; LLNL
//!   msrsave's raw format only where its size fits the loaded allowlist and the online CPUs);
//! - [`restore`], [`check`]: put the write-masked bits back (one read pass, writes verified) or
//!   compare;
//! - [`Setup`] as [`NodeRegisters`]: the device side of the job protocol ([`crate::jobs`]).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::Config;
use crate::device::select::{open_backend, BackendRequest, OpenBackend};
use crate::error::Result;
use crate::finding::{Finding, Problem};
use crate::fsio::{self, StaleTemp};
use crate::jobs::{JobId, NodeRegisters, RestoreSummary, SnapshotSummary};
use crate::msrs::scope::Scope;
use crate::node::{hostname, Node};
use crate::plan::DriftBits;
use crate::plan::{first_disagreement, Inconsistency, Member};
use crate::restore::{self, CheckReport, RestoreReport};
use crate::savefile::{self, Loaded, Origin, SaveFile, SaveMeta};
use crate::savefile::{LockState, LOCK_DOMAINS_LISTED};
use crate::snapshot::Snapshot;
use crate::topology::{Layout, Where};
use crate::types::CpuId;

/// Where the node is and how to reach its registers.
#[derive(Clone, Debug, Default)]
pub struct Setup {
    pub node: Node,
    pub request: BackendRequest,
}

impl Setup {
    pub fn new(node: Node, request: BackendRequest) -> Self {
        Setup { node, request }
    }

    /// From the node-wide configuration (backend, allowlist, allowlist_dir, root).
    pub fn from_config(cfg: &Config) -> Self {
        Setup {
            node: cfg.root.as_ref().map(Node::new).unwrap_or_default(),
            request: BackendRequest {
                choice: cfg.backend,
                allowlist: cfg.allowlist.clone(),
                allowlist_dirs: cfg.allowlist_dirs.clone(),
                write: false,
                survey: false,
            },
        }
    }

    /// Open the backend, for reading only or for writing too.
    pub fn open(&self, write: bool) -> Result<OpenBackend> {
        let request = BackendRequest {
            write,
            ..self.request.clone()
        };
        Ok(open_backend(&self.node, &request)?)
    }
}

/// What [`save`] did.
#[derive(Debug)]
pub struct Saved {
    pub file: SaveFile,
    pub path: PathBuf,
    /// The node's topology as the scopes of the allowlist needed it (`2 packages, 224 CPUs`).
    pub topology: String,
    /// Shared registers that CPUs of one domain read differently: restored CPU by CPU.
    pub inconsistent: Vec<Finding>,
    /// The whole operation, and the reads alone.
    pub elapsed: Duration,
    pub read_elapsed: Duration,
    /// Temporary files of earlier writers that no longer run, removed.
    pub stale_temps: Vec<StaleTemp>,
}

/// Snapshot the node through `backend` and store it at `path` (atomically, mode 0600).
pub fn save(backend: &OpenBackend, path: &Path, job_id: Option<&str>) -> Result<Saved> {
    let start = Instant::now();
    let snapshot = Snapshot::take(
        backend.device.as_ref(),
        Arc::clone(&backend.allowlist),
        &backend.online,
    )?;
    let read_elapsed = start.elapsed();
    let node = &backend.node;
    let (cpu, microcode) = node.cpu_facts()?;
    let layout = Layout::read_for(node, &backend.online, &backend.allowlist, Some(cpu.clone()));
    let (locked, inconsistent) = shared_state(&snapshot, &layout);
    let mut meta = SaveMeta::now(
        hostname(),
        cpu,
        node.kernel_release(),
        backend.device.kind(),
    );
    meta.job_id = job_id.map(str::to_string);
    meta.msr_safe = node.msr_safe_version();
    meta.microcode = microcode;
    meta.locked = locked;
    let file = SaveFile { meta, snapshot };
    let stale_temps = fsio::remove_stale_temps(path);
    file.store(path)?;
    Ok(Saved {
        file,
        path: path.to_path_buf(),
        topology: layout.topology.summary(),
        inconsistent,
        elapsed: start.elapsed(),
        read_elapsed,
        stale_temps,
    })
}

/// What a snapshot shows of its shared registers: the lock bits set (per MSR, the domains), and
/// the shared registers that CPUs of one domain read differently.
pub fn shared_state(s: &Snapshot, layout: &Layout) -> (Vec<LockState>, Vec<Finding>) {
    let mut locked = Vec::new();
    let mut inconsistent = Vec::new();
    // The domains of each scope, with each CPU's row in the snapshot: once per scope.
    type Rows = Vec<(CpuId, usize)>;
    let mut domains: std::collections::HashMap<Scope, Vec<(Where, Rows)>> =
        std::collections::HashMap::new();
    for (ei, e) in s.entries().iter().enumerate() {
        let scope = layout.scope(e.addr);
        let lock = layout.lock(e.addr);
        if scope == Scope::Thread && lock.is_none() {
            continue;
        }
        let mut lock_domains: Vec<String> = Vec::new();
        let mut lock_cpus: Vec<CpuId> = Vec::new();
        let split = domains.entry(scope).or_insert_with(|| {
            layout
                .topology
                .split(scope, &s.cpus)
                .into_iter()
                .map(|(at, cpus)| {
                    let rows = cpus
                        .into_iter()
                        .filter_map(|c| s.cpu_index(c).map(|ci| (c, ci)))
                        .collect();
                    (at, rows)
                })
                .collect()
        });
        for (at, rows) in split.iter() {
            let at = *at;
            let members: Vec<Member> = rows
                .iter()
                .map(|&(c, ci)| (c, s.value(ci, ei)))
                .map(|(cpu, v)| Member {
                    cpu,
                    saved: v,
                    current: v,
                })
                .collect();
            if let Some(d) = first_disagreement(e.mask, &members, |m| m.saved) {
                inconsistent.push(Finding {
                    cpu: d.a.0,
                    at,
                    msr: Some(e.addr),
                    name: e.display_name().map(str::to_string),
                    problem: Problem::Inconsistent(Inconsistency {
                        at_save: Some(d),
                        now: None,
                    }),
                });
            }
            let is_locked = |m: &Member| lock.is_some_and(|l| m.saved.is_ok_and(|v| l.is_set(v)));
            if members.first().is_some_and(is_locked) {
                if lock_domains.len() < LOCK_DOMAINS_LISTED {
                    lock_domains.push(at.to_string());
                }
                lock_cpus.extend(rows.iter().map(|r| r.0));
            }
        }
        lock_cpus.sort_unstable();
        if let (Some(l), false) = (lock, lock_cpus.is_empty()) {
            locked.push(LockState {
                msr: e.addr,
                lock_bit: l.bit,
                scope,
                domains: lock_domains,
                cpus: crate::types::format_cpu_list(&lock_cpus),
            });
        }
    }
    (locked, inconsistent)
}

/// How strictly a save file must fit the node.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Fit {
    /// Accept a file recorded on another host (its CPU model must still match).
    pub allow_foreign_host: bool,
}

/// A save file that fits this node.
#[derive(Clone, Debug)]
pub struct LoadedSnapshot {
    pub path: PathBuf,
    pub snapshot: Snapshot,
    /// `None` for LLNL msrsave's raw format, which records nothing but values.
    pub meta: Option<SaveMeta>,
}

/// Read the save file at `path` and check that it fits the node behind `backend`, before any
/// register is touched.
pub fn load_for_node(
    path: &Path,
    origin: Origin,
    backend: &OpenBackend,
    fit: Fit,
) -> Result<LoadedSnapshot> {
    match savefile::load(path, origin)? {
        Loaded::Ours(file) => {
            let file = *file;
            if !fit.allow_foreign_host {
                file.check_host(path, &hostname())?;
            }
            file.check_cpu(path, &backend.node.cpu_identity()?)?;
            Ok(LoadedSnapshot {
                path: path.to_path_buf(),
                snapshot: file.snapshot,
                meta: Some(file.meta),
            })
        }
        Loaded::LlnlRaw(raw) => {
            let snapshot = raw.fit(Arc::clone(&backend.allowlist), &backend.online)?;
            Ok(LoadedSnapshot {
                path: path.to_path_buf(),
                snapshot,
                meta: None,
            })
        }
    }
}

/// Put back the write-masked bits of `saved` (see [`restore::restore`]).
pub fn restore(
    backend: &OpenBackend,
    saved: &LoadedSnapshot,
    dry_run: bool,
) -> Result<RestoreReport> {
    let layout = Layout::read(&backend.node, &backend.online, &backend.allowlist);
    Ok(restore::restore(
        backend.device.as_ref(),
        &saved.snapshot,
        &backend.allowlist,
        &backend.online,
        &layout,
        dry_run,
    )?)
}

/// Compare the node with `saved` (see [`restore::check`]).
pub fn check(
    backend: &OpenBackend,
    saved: &LoadedSnapshot,
    bits: DriftBits,
) -> Result<CheckReport> {
    let layout = Layout::read(&backend.node, &backend.online, &backend.allowlist);
    Ok(restore::check(
        backend.device.as_ref(),
        &saved.snapshot,
        &backend.allowlist,
        &backend.online,
        &layout,
        bits,
    )?)
}

/// How many locked or inconsistent registers the notes of a restore name one by one.
const NOTED: usize = 10;

/// Notes an admin should read after a restore that did not stop it.
pub fn restore_notes(r: &RestoreReport) -> Vec<String> {
    let mut notes: Vec<String> = r
        .mask_changes
        .iter()
        .map(|m| match m.current_mask {
            Some(cur) => format!(
                "MSR {} write mask changed since the snapshot: {} then, {} now; restored bits {}",
                m.msr, m.saved_mask, cur, m.effective_mask
            ),
            None => format!("MSR {} is no longer in the allowlist: left alone", m.msr),
        })
        .collect();
    if !r.new_cpus.is_empty() {
        notes.push(format!(
            "CPUs online now but not in the snapshot, left alone: {}",
            crate::types::format_cpu_list(&r.new_cpus)
        ));
    }
    // Locked and inconsistent registers are named, not failures: a lock set by firmware is no
    // job's doing, and a register handled CPU by CPU was still restored.
    for list in [&r.locked, &r.inconsistent] {
        notes.extend(list.iter().take(NOTED).map(|f| f.to_string()));
        if list.len() > NOTED {
            notes.push(format!("and {} more like it", list.len() - NOTED));
        }
    }
    notes
}

/// The restore at a job's end as the job protocol reports it.
pub fn restore_summary(r: RestoreReport, elapsed: Duration) -> RestoreSummary {
    RestoreSummary {
        written: r.written,
        unchanged: r.unchanged,
        verified: r.verified,
        failed: r.failed,
        drift: r.still_drifted().cloned().collect(),
        notes: restore_notes(&r),
        changed: r.changed,
        failures: r.failures,
        elapsed,
    }
}

impl NodeRegisters for Setup {
    fn snapshot(&self, file: &Path, job: &JobId) -> Result<SnapshotSummary> {
        let backend = self.open(false)?;
        let saved = save(&backend, file, Some(job.as_str()))?;
        let s = &saved.file.snapshot;
        Ok(SnapshotSummary {
            cpus: s.cpus.len(),
            msrs: s.allowlist.len(),
            unreadable: s.unreadable(),
            elapsed: saved.elapsed,
        })
    }

    fn restore(&self, file: &Path) -> Result<RestoreSummary> {
        let start = Instant::now();
        let backend = self.open(true)?;
        let saved = load_for_node(file, Origin::Ours, &backend, Fit::default())?;
        let report = restore(&backend, &saved, false)?;
        Ok(restore_summary(report, start.elapsed()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::emulate::{peek, poke, EmulatedNodeSpec};
    use crate::jobs::{begin, end, BeginOutcome, EndOutcome, StateDir};
    use crate::types::{CpuId, CpuIdentity, MsrAddr};

    const LIST: &[u8] = b"0x199 0xFFFF # IA32_PERF_CTL\n0x1A0 0x0\n0x610 0x00FFFFFFFFFFFFFF\n";

    fn skylake() -> CpuIdentity {
        CpuIdentity {
            vendor: "GenuineIntel".into(),
            family: 6,
            model: 0x55,
        }
    }

    fn emulated_node(dir: &Path, cpus: u32, identity: CpuIdentity) -> Node {
        emulated_node_of(dir, cpus, identity, None)
    }

    fn emulated_node_of(
        dir: &Path,
        cpus: u32,
        identity: CpuIdentity,
        shape: Option<crate::emulate::Shape>,
    ) -> Node {
        let list = crate::allowlist::Allowlist::parse(LIST, "test").expect("allowlist");
        crate::emulate::create(
            dir,
            &EmulatedNodeSpec {
                cpus,
                allowlist: &list,
                identity,
                shape,
            },
        )
        .expect("emulated node")
    }

    fn state(t: &tempfile::TempDir) -> StateDir {
        StateDir {
            path: t.path().join("state"),
            lock_timeout: Duration::from_secs(5),
        }
    }

    #[test]
    fn the_job_cycle_on_an_emulated_node() {
        let t = tempfile::tempdir().expect("tempdir");
        let c = state(&t);
        let root = t.path().join("node");
        let regs = Setup::new(
            emulated_node(&root, 4, skylake()),
            BackendRequest::default(),
        );
        let before = peek(&root, CpuId(2), MsrAddr(0x199)).expect("peek");
        match begin(&c, "100", &regs).expect("begin") {
            BeginOutcome::Snapshot(s) => assert_eq!((s.cpus, s.msrs, s.unreadable), (4, 3, 0)),
            other => panic!("{other:?}"),
        }
        let changed = (before & !0xFFFF) | ((before + 1) & 0xFFFF);
        poke(&root, CpuId(2), MsrAddr(0x199), changed).expect("poke");
        match end(&c, "100", &regs).expect("end") {
            EndOutcome::Restored(s) => {
                assert_eq!((s.written, s.verified), (1, 1), "{s:?}");
                assert!(s.failures.is_empty() && s.drift.is_empty(), "{s:?}");
                // What the job changed, per MSR, from the one read pass.
                assert_eq!(s.changed.len(), 1);
                assert_eq!(s.changed[0].msr, MsrAddr(0x199));
                assert_eq!(s.changed[0].cpu_list, "2");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(peek(&root, CpuId(2), MsrAddr(0x199)).expect("peek"), before);
        assert!(!c.snapshot_path().exists());
    }

    #[test]
    fn a_snapshot_error_names_the_cause() {
        let t = tempfile::tempdir().expect("tempdir");
        let c = state(&t);
        let root = t.path().join("node");
        let regs = Setup::new(
            emulated_node(&root, 1, skylake()),
            BackendRequest {
                allowlist: Some(t.path().join("no-such-allowlist")),
                ..Default::default()
            },
        );
        let err = begin(&c, "5", &regs).expect_err("no allowlist");
        let msg = crate::error::chain(&err);
        assert!(msg.contains("cannot snapshot"), "{msg}");
        assert!(msg.contains("no-such-allowlist"), "{msg}");
    }

    /// One fit rule for every caller: the job path refuses another CPU model's snapshot as the
    /// CLI does.
    #[test]
    fn the_job_path_refuses_another_cpu_models_snapshot() {
        let t = tempfile::tempdir().expect("tempdir");
        let c = state(&t);
        let a = Setup::new(
            emulated_node(&t.path().join("a"), 2, skylake()),
            BackendRequest::default(),
        );
        begin(&c, "1", &a).expect("begin");
        let icelake = CpuIdentity {
            model: 0x6A,
            ..skylake()
        };
        let b = Setup::new(
            emulated_node(&t.path().join("b"), 2, icelake),
            BackendRequest::default(),
        );
        let err = end(&c, "1", &b).expect_err("other CPU model");
        let msg = crate::error::chain(&err);
        assert!(
            msg.contains("another CPU model") && msg.contains("model 0x6a"),
            "{msg}"
        );
        assert!(c.snapshot_path().exists(), "the snapshot is kept");
    }

    /// A file LLNL msrsave wrote (raw u64, CPU-major, masked, bad reads as ~mask) is restored
    /// when it fits the loaded list and the online CPUs.
    #[test]
    fn an_llnl_save_file_is_restored() {
        let t = tempfile::tempdir().expect("tempdir");
        let root = t.path().join("node");
        // Two packages of one CPU: MSR_PKG_POWER_LIMIT is each CPU's own, so that one CPU's can
        // stay unrestored (on one package the restore of CPU 0's is CPU 1's too).
        let two_sockets = crate::emulate::Shape {
            packages: 2,
            cores_per_package: 1,
            threads_per_core: 1,
        };
        let setup = Setup::new(
            emulated_node_of(&root, 2, skylake(), Some(two_sockets)),
            BackendRequest::default(),
        );
        let backend = setup.open(true).expect("open");
        // What LLNL's msrsave would have saved: value & mask per slot; CPU 1's 0x610 unreadable.
        let mut raw = Vec::new();
        let mut expected = Vec::new();
        for cpu in 0..2u32 {
            for e in backend.allowlist.entries() {
                let v = peek(&root, CpuId(cpu), e.addr).expect("peek");
                let slot = if cpu == 1 && e.addr == MsrAddr(0x610) {
                    !e.mask.0
                } else {
                    v & e.mask.0
                };
                raw.extend_from_slice(&slot.to_ne_bytes());
                expected.push((cpu, e.addr, v));
            }
        }
        let file = t.path().join("llnl.dat");
        std::fs::write(&file, &raw).expect("write");
        // The job changes writable bits everywhere.
        for &(cpu, addr, v) in &expected {
            poke(&root, CpuId(cpu), addr, v ^ 0xff).expect("poke");
        }
        let loaded = load_for_node(&file, Origin::Named, &backend, Fit::default()).expect("fits");
        assert!(loaded.meta.is_none());
        let r = restore(&backend, &loaded, false).expect("restore");
        assert!(r.ok(), "{r:?}");
        assert_eq!(r.unreadable_at_save, 1);
        for &(cpu, addr, v) in &expected {
            let now = peek(&root, CpuId(cpu), addr).expect("peek");
            let mask = backend.allowlist.mask(addr).expect("listed").0;
            if cpu == 1 && addr == MsrAddr(0x610) {
                assert_eq!(now, v ^ 0xff, "a bad read is not restored");
            } else {
                assert_eq!(now & mask, v & mask, "CPU {cpu} MSR {addr}");
                assert_eq!(
                    now & !mask,
                    (v ^ 0xff) & !mask,
                    "bits outside the mask stay"
                );
            }
        }
        // One value short: refused, saying it looks like LLNL's format and why it does not fit.
        std::fs::write(&file, &raw[8..]).expect("write");
        let e = load_for_node(&file, Origin::Named, &backend, Fit::default()).expect_err("short");
        let msg = crate::error::chain(&e);
        assert!(
            msg.contains("looks like LLNL msrsave's raw format")
                && msg.contains("3 MSRs and 2 CPUs"),
            "{msg}"
        );
    }
}
