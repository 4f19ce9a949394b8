//! How the cost grows with the node: whole `msrsave` processes on emulated nodes of 64, 256,
//! 1024 and 4096 CPUs (2 packages, 2 threads a core) with lists of about 50, 400 and 1000 MSRs.
//! For each: save, check, restore with nothing to change and with every writable register
//! changed, job begin and job end, the save file's size, and the peak RSS of each process.
//! Prints a table (medians of ROUNDS); asserts nothing about time.
//!
//!   cargo bench -p msrsave --bench scaling [-- ROUNDS [MAX_CPUS]]
//!
//! The lists: AMD family 19h model 21h's (51 MSRs), msr-safe v1.7.0's Skylake-SP list (399), and
//! that list with 601 more uncore-style entries (half counters, half controls) for 1000.

mod common;

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{emulate, median, ms, msrsave, run_ok, smoke_run, Run};

/// The 1000-MSR list: Skylake-SP's 399 and 601 more in an unused range.
fn thousand(dir: &Path, base: &Path) -> PathBuf {
    let mut text = std::fs::read_to_string(base).expect("base list");
    for i in 0..601u32 {
        let addr = 0x3000 + i;
        let (mask, name) = if i % 2 == 0 {
            (0u64, format!("SYN_PMON_CTR{i}"))
        } else {
            (0xFFFF_FFFFu64, format!("SYN_PMON_CTL{i}"))
        };
        text.push_str(&format!("0x{addr:08X} 0x{mask:016X} # {name}\n"));
    }
    let p = dir.join("al_1000");
    std::fs::write(&p, text).expect("list");
    p
}

/// Flip the low bit of every writable register on every CPU (a job that changed them all).
fn change_all(root: &Path, cpus: u32, writable: &[u32]) {
    for cpu in 0..cpus {
        let p = root.join(format!("dev/cpu/{cpu}/msr_safe"));
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&p)
            .expect("register file");
        let mut b = [0u8; 8];
        for &a in writable {
            let off = u64::from(a) * 8;
            f.read_exact_at(&mut b, off).expect("read");
            let v = u64::from_le_bytes(b) ^ 1;
            f.write_all_at(&v.to_le_bytes(), off).expect("write");
        }
    }
}

fn writable(list: &Path) -> Vec<u32> {
    let l = msr_backend::allowlist::Allowlist::from_file(list).expect("list");
    l.entries()
        .iter()
        .filter(|e| e.mask.0 & 1 != 0)
        .map(|e| e.addr.0)
        .collect()
}

struct Row {
    cpus: u32,
    msrs: usize,
    cells: Vec<(Duration, i64)>,
    bytes: u64,
}

fn main() {
    let nums: Vec<u32> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let smoke = smoke_run("msrsave", "scaling");
    let rounds = nums.first().copied().unwrap_or(if smoke { 1 } else { 3 }) as usize;
    let max_cpus = nums
        .get(1)
        .copied()
        .unwrap_or(if smoke { 64 } else { 4096 });
    let tmp = tempfile::tempdir().expect("tempdir");
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let amd = repo.join("allowlists/al_19_21");
    let skx = repo.join("allowlists/al_06_55");
    let k = thousand(tmp.path(), &skx);
    let lists: [(&Path, &str, &str); 3] = [
        (&amd, "19_21", "AuthenticAMD"),
        (&skx, "06_55", "GenuineIntel"),
        (&k, "06_55", "GenuineIntel"),
    ];
    let columns = [
        "save",
        "check",
        "restore clean",
        "restore all",
        "job begin",
        "job end",
    ];
    let mut rows = Vec::new();
    for cpus in [64u32, 256, 1024, 4096]
        .into_iter()
        .filter(|&c| c <= max_cpus)
    {
        for &(list, model, vendor) in &lists {
            let dir = tmp.path().join(format!(
                "n{cpus}-{model}-{}",
                list.file_name().and_then(|n| n.to_str()).unwrap_or("l")
            ));
            std::fs::create_dir_all(&dir).expect("dir");
            let root = dir.join("node");
            emulate(&root, cpus, list, model, vendor);
            let conf = dir.join("c.conf");
            std::fs::write(
                &conf,
                format!("state_dir = {}\n", dir.join("state").display()),
            )
            .expect("conf");
            let cmd = |args: &[&str]| {
                let mut c = Command::new(msrsave());
                c.arg("--config")
                    .arg(&conf)
                    .arg("--root")
                    .arg(&root)
                    .args(args);
                c
            };
            let snap = dir.join("snap.msr");
            let snap_s = snap.display().to_string();
            let w = writable(list);
            let mut samples: Vec<Vec<Run>> = vec![Vec::new(); columns.len()];
            for round in 0..rounds {
                samples[0].push(run_ok(&mut cmd(&["save", &snap_s]), 0));
                samples[1].push(run_ok(&mut cmd(&["check", &snap_s]), 0));
                samples[2].push(run_ok(&mut cmd(&["restore", &snap_s]), 0));
                change_all(&root, cpus, &w);
                samples[3].push(run_ok(&mut cmd(&["restore", &snap_s]), 0));
                let job = format!("{round}");
                samples[4].push(run_ok(&mut cmd(&["job", "begin", &job]), 0));
                samples[5].push(run_ok(&mut cmd(&["job", "end", &job]), 0));
            }
            let cells = samples
                .into_iter()
                .map(|runs| {
                    let rss = runs.iter().map(|r| r.max_rss_kib).max().unwrap_or(0);
                    (median(runs.iter().map(|r| r.wall).collect()), rss)
                })
                .collect();
            let msrs = msr_backend::allowlist::Allowlist::from_file(list)
                .expect("list")
                .len();
            rows.push(Row {
                cpus,
                msrs,
                cells,
                bytes: std::fs::metadata(&snap).map(|m| m.len()).unwrap_or(0),
            });
            let _ = std::fs::remove_dir_all(&dir);
        }
    }
    println!(
        "whole msrsave processes on emulated nodes, median of {rounds} (ms) and peak RSS (MiB)"
    );
    print!("{:>5} {:>5} {:>9}", "CPUs", "MSRs", "file KB");
    for c in columns {
        print!(" | {c:>13}");
    }
    println!();
    for r in &rows {
        print!(
            "{:>5} {:>5} {:>9.0}",
            r.cpus,
            r.msrs,
            r.bytes as f64 / 1000.0
        );
        for (d, rss) in &r.cells {
            print!(" | {:>6.1} {:>5.1}M", ms(*d), *rss as f64 / 1024.0);
        }
        println!();
    }
    // The goals: linear growth (ms per register), and a restore's memory within 3x a save's.
    for r in &rows {
        let regs = (r.cpus as usize * r.msrs) as f64;
        let (save, save_rss) = r.cells[0];
        let (_, restore_rss) = r.cells[3];
        println!(
            "{:>5} CPUs x {:>4} MSRs: save {:.3} us/register; restore-all peak RSS / save peak RSS = {:.2}",
            r.cpus,
            r.msrs,
            save.as_secs_f64() * 1e6 / regs,
            restore_rss as f64 / save_rss.max(1) as f64
        );
    }
}
