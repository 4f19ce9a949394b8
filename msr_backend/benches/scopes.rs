//! Writes and time of a restore after a job changed every writable register, on an emulated
//! node of 2 packages x N cores x 2 threads with the Sapphire Rapids list (allowlists/al_06_8F).
//! Writes are counted at the device boundary (a wrapper around the backend's device counts the
//! write ops handed to it), restore times are medians. Prints figures; asserts nothing about
//! time.
//!
//!   cargo bench -p msr_backend --bench scopes [-- CPUS ROUNDS]
//!
//! The allowlist is taken from $MSR_BENCH_ALLOWLIST, else our allowlists/al_06_8F.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{median, BenchArgs};
use msr_backend::device::select::{open_backend, BackendRequest};
use msr_backend::device::{BackendKind, DeviceError, MsrDevice, MsrOp, OpKind, Parallelism};
use msr_backend::emulate::{self, EmulatedNodeSpec, Shape};
use msr_backend::operations::{self, LoadedSnapshot};
use msr_backend::types::{CpuIdentity, MsrAddr};

/// The backend's device, counting the writes and reads handed to it.
struct Counting {
    inner: Box<dyn MsrDevice>,
    writes: Arc<AtomicUsize>,
    reads: Arc<AtomicUsize>,
}

impl MsrDevice for Counting {
    fn kind(&self) -> BackendKind {
        self.inner.kind()
    }
    fn run(&self, ops: &mut [MsrOp]) -> Result<(), DeviceError> {
        let w = ops
            .iter()
            .filter(|o| matches!(o.kind, OpKind::Write { .. }))
            .count();
        self.writes.fetch_add(w, Ordering::Relaxed);
        self.reads.fetch_add(ops.len() - w, Ordering::Relaxed);
        self.inner.run(ops)
    }
    fn parallelism(&self) -> Parallelism {
        self.inner.parallelism()
    }
    fn describe(&self) -> String {
        self.inner.describe()
    }
}

fn main() {
    let BenchArgs {
        cpus,
        rounds,
        list_path,
        list,
    } = BenchArgs::parse("scopes", 9, "al_06_8F");
    assert!(
        cpus % 4 == 0,
        "CPUS must split into 2 packages of 2-thread cores"
    );
    let shape = Shape {
        packages: 2,
        cores_per_package: cpus / 4,
        threads_per_core: 2,
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let root = dir.path().join("node");
    let node = emulate::create(
        &root,
        &EmulatedNodeSpec {
            cpus,
            allowlist: &list,
            identity: CpuIdentity {
                vendor: "GenuineIntel".into(),
                family: 6,
                model: 0x8F,
            },
            shape: Some(shape),
        },
    )
    .expect("emulate");
    let writes = Arc::new(AtomicUsize::new(0));
    let reads = Arc::new(AtomicUsize::new(0));
    let mut backend = open_backend(
        &node,
        &BackendRequest {
            write: true,
            ..BackendRequest::default()
        },
    )
    .expect("backend");
    let inner = std::mem::replace(
        &mut backend.device,
        Box::new(Counting {
            inner: Box::new(NoDevice),
            writes: writes.clone(),
            reads: reads.clone(),
        }),
    );
    backend.device = Box::new(Counting {
        inner,
        writes: writes.clone(),
        reads: reads.clone(),
    });
    let online = backend.online.clone();
    let path = dir.path().join("snap.msr");
    let saved = operations::save(&backend, &path, None).expect("save");
    let loaded = LoadedSnapshot {
        path: path.clone(),
        snapshot: saved.file.snapshot.clone(),
        meta: Some(saved.file.meta.clone()),
    };
    let writable: Vec<(MsrAddr, u64)> = list
        .entries()
        .iter()
        .filter(|e| e.mask.is_writable())
        .map(|e| (e.addr, e.mask.0))
        .collect();
    println!(
        "emulated node: {} packages x {} cores x {} threads = {cpus} CPUs, {} MSRs ({} writable) from {}, backend {}; median of {rounds}",
        shape.packages,
        shape.cores_per_package,
        shape.threads_per_core,
        list.len(),
        writable.len(),
        list_path.display(),
        backend.device.kind()
    );

    let mut clean = Vec::new();
    let mut changed = Vec::new();
    let mut counts = Vec::new();
    for _ in 0..rounds {
        // A restore with nothing to do.
        writes.store(0, Ordering::Relaxed);
        reads.store(0, Ordering::Relaxed);
        let t = Instant::now();
        let r = operations::restore(&backend, &loaded, false).expect("restore");
        clean.push(t.elapsed());
        assert!(r.ok() && r.written == 0, "{r:?}");
        let clean_reads = reads.load(Ordering::Relaxed);
        // A job that changed every writable bit of every writable register on every CPU, as
        // msr-safe lets it (the same new value on every CPU of a package, as a package register
        // holds; lock bits are outside the masks).
        for &c in &online {
            for &(a, mask) in &writable {
                let v = emulate::peek(&root, c, a).expect("peek");
                emulate::poke(&root, c, a, v ^ mask).expect("poke");
            }
        }
        writes.store(0, Ordering::Relaxed);
        reads.store(0, Ordering::Relaxed);
        let t = Instant::now();
        let r = operations::restore(&backend, &loaded, false).expect("restore");
        changed.push(t.elapsed());
        assert!(r.ok(), "{:?}", r.failures.first());
        counts.push((
            r.written,
            writes.load(Ordering::Relaxed),
            reads.load(Ordering::Relaxed),
            clean_reads,
        ));
    }
    let (reported, device_writes, device_reads, clean_reads) = counts[0];
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!("{:<52} {:>10}", "measurement", "value");
    println!(
        "{:<52} {:>10}",
        "writes at the device (job changed everything)", device_writes
    );
    println!("{:<52} {:>10}", "writes reported (written)", reported);
    println!(
        "{:<52} {:>10}",
        "reads at the device (read pass + verify)", device_reads
    );
    println!(
        "{:<52} {:>10}",
        "reads at the device, nothing to change", clean_reads
    );
    println!(
        "{:<52} {:>10.2}",
        "restore ms, job changed everything (median)",
        ms(median(changed))
    );
    println!(
        "{:<52} {:>10.2}",
        "restore ms, nothing to change (median)",
        ms(median(clean))
    );
}

/// A placeholder while the real device is moved into the counting wrapper.
struct NoDevice;

impl MsrDevice for NoDevice {
    fn kind(&self) -> BackendKind {
        BackendKind::Safe
    }
    fn run(&self, _: &mut [MsrOp]) -> Result<(), DeviceError> {
        Ok(())
    }
    fn parallelism(&self) -> Parallelism {
        Parallelism::PerCpu
    }
    fn describe(&self) -> String {
        String::new()
    }
}
