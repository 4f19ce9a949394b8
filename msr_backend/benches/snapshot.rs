//! Snapshot, save and restore on an emulated node of 256 CPUs with msr-safe v1.7.0's Skylake-SP
//! allowlist (399 MSRs), side by side with the raw reads alone (the floor on this storage) and a
//! sequential one-pread-per-MSR baseline like LLNL msrsave. Prints medians; asserts nothing.
//!
//!   cargo bench -p msr_backend --bench snapshot [-- CPUS ROUNDS]
//!
//! The allowlist is taken from $MSR_BENCH_ALLOWLIST, else our allowlists/al_06_55, which is
//! msr-safe v1.7.0's al_0655 entry for entry.

mod common;

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{median, BenchArgs};
use msr_backend::device::select::{open_backend, BackendRequest};
use msr_backend::emulate::{self, EmulatedNodeSpec};
use msr_backend::restore;
use msr_backend::savefile::{SaveFile, SaveMeta};
use msr_backend::snapshot::Snapshot;
use msr_backend::topology::Layout;
use msr_backend::types::CpuIdentity;
use rayon::prelude::*;

fn time<F: FnMut()>(rounds: usize, mut f: F) -> Duration {
    f(); // warm the page cache and the thread pool
    median(
        (0..rounds)
            .map(|_| {
                let t = Instant::now();
                f();
                t.elapsed()
            })
            .collect(),
    )
}

/// Peak resident memory of this process (VmHWM; getrusage's ru_maxrss would include the
/// parent's peak inherited across fork and exec).
fn max_rss_kib() -> i64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(-1)
}

fn main() {
    let BenchArgs {
        cpus,
        rounds,
        list_path,
        list,
    } = BenchArgs::parse("snapshot", 15, "al_06_55");
    let dir = tempfile::tempdir().expect("temp dir");
    let identity = CpuIdentity {
        vendor: "GenuineIntel".into(),
        family: 6,
        model: 0x55,
    };
    let node = emulate::create(
        dir.path(),
        &EmulatedNodeSpec {
            cpus,
            allowlist: &list,
            identity,
            shape: None,
        },
    )
    .expect("emulate");
    let backend = open_backend(&node, &BackendRequest::default()).expect("backend");
    let device = backend.device.as_ref();
    let online = backend.online.clone();
    let addrs: Vec<u64> = list
        .entries()
        .iter()
        .map(|e| e.addr.emulated_offset())
        .collect();
    let files: Vec<PathBuf> = online
        .iter()
        .map(|&c| node.cpu_node(c, "msr_safe"))
        .collect();
    let threads = rayon::current_num_threads();
    println!(
        "emulated node: {cpus} CPUs x {} MSRs ({} writable) = {} registers, {} from {}; {threads} worker threads, median of {rounds}",
        list.len(),
        list.writable_count(),
        list.len() * cpus as usize,
        backend.device.kind(),
        list_path.display()
    );

    // The floor: the same preads, in parallel, with nothing else.
    let raw_parallel = time(rounds, || {
        files.par_iter().for_each(|p| {
            let f = File::open(p).expect("open");
            let mut buf = [0u8; 8];
            for &off in &addrs {
                f.read_exact_at(&mut buf, off).expect("pread");
                std::hint::black_box(&buf);
            }
        })
    });
    // LLNL msrsave: one CPU after another, one pread per MSR, raw u64 array.
    let sequential = time(rounds, || {
        let mut out: Vec<u64> = Vec::with_capacity(files.len() * addrs.len());
        for p in &files {
            let f = File::open(p).expect("open");
            let mut buf = [0u8; 8];
            for &off in &addrs {
                f.read_exact_at(&mut buf, off).expect("pread");
                out.push(u64::from_le_bytes(buf));
            }
        }
        std::hint::black_box(out);
    });
    let allow = Arc::new(list.clone());
    let snapshot = time(rounds, || {
        std::hint::black_box(Snapshot::take(device, allow.clone(), &online).expect("snapshot"));
    });
    let snap = Snapshot::take(device, allow.clone(), &online).expect("snapshot");
    let meta = SaveMeta::now(
        "bench".into(),
        node.cpu_identity().expect("cpuinfo"),
        None,
        device.kind(),
    );
    let save_file = SaveFile {
        meta,
        snapshot: snap.clone(),
    };
    let save_path = dir.path().join("snap.json");
    let save = time(rounds, || save_file.store(&save_path).expect("store"));
    let load = time(rounds, || {
        std::hint::black_box(SaveFile::load(&save_path).expect("load"));
    });
    let layout = Layout::read(&node, &online, &list);
    let restore_clean = time(rounds, || {
        let r = restore::restore(device, &snap, &list, &online, &layout, false).expect("restore");
        assert_eq!(r.written, 0);
    });
    // A job that changed every writable register on every CPU: restore writes them all back.
    let writable: Vec<_> = list
        .entries()
        .iter()
        .filter(|e| e.mask.is_writable())
        .map(|e| e.addr)
        .collect();
    let mut restore_all = Vec::new();
    for _ in 0..rounds.min(5) {
        for &c in &online {
            for &a in &writable {
                let v = emulate::peek(dir.path(), c, a).expect("peek");
                emulate::poke(dir.path(), c, a, !v).expect("poke");
            }
        }
        let t = Instant::now();
        let r = restore::restore(device, &snap, &list, &online, &layout, false).expect("restore");
        restore_all.push(t.elapsed());
        assert!(r.ok() && r.written > 0);
    }
    let restore_all = median(restore_all);
    let size = std::fs::metadata(&save_path).map(|m| m.len()).unwrap_or(0);
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!("{:<44} {:>10}", "measurement", "median ms");
    println!(
        "{:<44} {:>10.2}",
        "raw preads, parallel (floor)",
        ms(raw_parallel)
    );
    println!(
        "{:<44} {:>10.2}",
        "sequential one pread per MSR (LLNL-like)",
        ms(sequential)
    );
    println!("{:<44} {:>10.2}", "snapshot (Snapshot::take)", ms(snapshot));
    println!(
        "{:<44} {:>10.2}",
        format!("save (JSON, fsync, rename; {} KiB)", size / 1024),
        ms(save)
    );
    println!("{:<44} {:>10.2}", "load and validate save file", ms(load));
    println!(
        "{:<44} {:>10.2}",
        "restore, nothing to change",
        ms(restore_clean)
    );
    println!(
        "{:<44} {:>10.2}",
        format!("restore, all {} writable x {cpus} changed", writable.len()),
        ms(restore_all)
    );
    println!(
        "snapshot / floor           = {:.2}x",
        snapshot.as_secs_f64() / raw_parallel.as_secs_f64()
    );
    println!(
        "sequential / snapshot      = {:.2}x (threads: {threads})",
        sequential.as_secs_f64() / snapshot.as_secs_f64()
    );
    println!(
        "restore(clean) / snapshot  = {:.2}x",
        restore_clean.as_secs_f64() / snapshot.as_secs_f64()
    );
    println!(
        "peak RSS                   = {:.1} MiB",
        max_rss_kib() as f64 / 1024.0
    );
}
