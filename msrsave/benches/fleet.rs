//! `msrsave fleet compare` on a synthetic fleet: N nodes of 256 CPUs (2 packages, 2 threads a
//! core) fingerprinted under the shipped site policy (allowlists/policy.toml), with five planted
//! outliers: prefetchers off, turbo disabled on one CPU, a lower power limit, older microcode and
//! a vulnerability bit (RSBA) the group does not have. Every node also has its own PPIN (a host
//! field, never compared). The benchmark checks that exactly the planted outliers are reported,
//! then times whole `msrsave fleet compare` processes (median of ROUNDS) and reads their peak RSS.
//! Prints a table; asserts nothing about time.
//!
//!   cargo bench -p msrsave --bench fleet [-- ROUNDS [NODES ...]]     (default: 3 1000 50000)
//!
//! Up to 10,000 nodes the fingerprints are one file per node in a directory (as `--output`
//! beside each baseline leaves them, gathered) and one JSON-lines file (as the collection script
//! leaves them); beyond, the JSON-lines file only. Last, the same comparison straight from save
//! files (the boot baselines: Skylake-SP's 399-MSR list and the two MSRs it lacks that the
//! policy's fields read, on 256 CPUs) for SAVE_NODES nodes (1000;
//! env MSR_BENCH_SAVE_NODES), to show what the fingerprints save.

mod common;

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use common::{median, ms, msrsave, run_ok, smoke_run};
use msr_backend::allowlist::{Allowlist, AllowlistEntry};
use msr_backend::device::BackendKind;
use msr_backend::fleet::{fingerprint, Fingerprint, NodeFacts};
use msr_backend::msrs::models::ModelId;
use msr_backend::policy::{FieldRule, Policy};
use msr_backend::savefile::{SaveFile, SaveMeta};
use msr_backend::snapshot::Snapshot;
use msr_backend::types::{CpuId, CpuIdentity, MsrAddr, WriteMask};

const CPUS: u32 = 256;
const PREFETCH: u32 = 0x1A4;
const MISC: u32 = 0x1A0;
const PKG: u32 = 0x610;
const ARCH: u32 = 0x10A;
const PPIN: u32 = 0x4F;

fn skx() -> CpuIdentity {
    CpuIdentity {
        vendor: "GenuineIntel".into(),
        family: 6,
        model: 0x55,
    }
}

/// A healthy Skylake-SP register, per CPU (package-scoped registers per package).
fn good(addr: u32, cpu: u32) -> u64 {
    let package = u64::from(cpu / (CPUS / 2));
    match addr {
        PREFETCH => 0,
        MISC => 0x0085_0089,
        PKG => 0x00DD_8320_0015_8460,
        ARCH => 0x2B,
        0x1B0 => 6,
        0x1AD => 0x2020_2222_2424_2626,
        0x618 => 0x0000_0000_0018_8150,
        0x620 => 0x0C18,
        0xCE => 0x0000_0C08_1011_1500,
        PPIN => 0x1234_0000 + package,
        _ => 0,
    }
}

/// The planted outliers: node index -> (what, change).
fn outlier(node: usize, addr: u32, cpu: u32, v: u64) -> u64 {
    match (node, addr) {
        (17, PREFETCH) => 0xF,
        (230, MISC) if cpu == 200 => v | 1 << 38,
        (500, PKG) => (v & !0x7FFF) | 0x400,
        (901, ARCH) => v | 0x4,
        _ => v,
    }
}

fn expected() -> Vec<(String, String)> {
    let mut v = vec![
        (name(17), "MSR_MISC_FEATURE_CONTROL.prefetchers".to_string()),
        (name(230), "IA32_MISC_ENABLE.turbo_disable".to_string()),
        (name(500), "MSR_PKG_POWER_LIMIT.pl1".to_string()),
        (name(777), "microcode".to_string()),
        (name(901), "IA32_ARCH_CAPABILITIES.rsba".to_string()),
    ];
    v.sort();
    v
}

/// `msrsave --format json fleet compare INPUT --policy POLICY`.
fn compare(input: &Path, policy: &Path) -> Command {
    let mut c = Command::new(msrsave());
    c.args(["--format", "json", "fleet", "compare"])
        .arg(input)
        .arg("--policy")
        .arg(policy)
        .env_remove("MSR_RESTORE_CONFIG");
    c
}

/// The (node, field) pairs of a compare's violations, sorted.
fn violations(j: &serde_json::Value) -> Vec<(String, String)> {
    let mut found: Vec<(String, String)> = j["violations"]
        .as_array()
        .expect("violations")
        .iter()
        .map(|v| {
            (
                v["node"].as_str().unwrap_or_default().to_string(),
                v["field"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    found.sort();
    found
}

fn name(i: usize) -> String {
    format!("node{i:05}")
}

fn node_fingerprint(policy: &Policy, list: &Arc<Allowlist>, i: usize) -> Fingerprint {
    let mut outcomes = Vec::with_capacity(CPUS as usize * list.len());
    for cpu in 0..CPUS {
        for e in list.entries() {
            let mut v = good(e.addr.0, cpu);
            if e.addr.0 == PPIN {
                v += (i as u64) << 8;
            }
            outcomes.push(Ok(outlier(i, e.addr.0, cpu, v)));
        }
    }
    let snap = Snapshot::from_outcomes(Arc::clone(list), (0..CPUS).map(CpuId).collect(), outcomes);
    fingerprint(
        policy,
        &skx(),
        &snap,
        list,
        NodeFacts {
            node: name(i),
            microcode: Some(if i == 777 { "0x2006e05" } else { "0x2007006" }.into()),
            kernel: Some("6.1.0-28-amd64".into()),
            taken: "2025-06-01T03:00:00Z".into(),
            source: "node".into(),
            labels: BTreeMap::new(),
        },
    )
}

fn main() {
    let nums: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let smoke = smoke_run("msrsave", "fleet");
    let rounds = nums.first().copied().unwrap_or(if smoke { 1 } else { 3 });
    let sizes: Vec<usize> = if nums.len() > 1 {
        nums[1..].to_vec()
    } else if smoke {
        vec![1000]
    } else {
        vec![1000, 50_000]
    };
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let policy_path = repo.join("allowlists/policy.toml");
    let policy = Policy::load(&policy_path).expect("the shipped policy");
    let model = ModelId::from(&skx());
    // The allowlist: the MSRs of every field the policy names on Skylake-SP (read-only).
    let mut addrs: Vec<u32> = policy.fields_on(model).map(|(_, a)| a).collect();
    addrs.sort_unstable();
    addrs.dedup();
    let list = Arc::new(
        Allowlist::from_entries(
            addrs
                .iter()
                .map(|&a| AllowlistEntry {
                    addr: MsrAddr(a),
                    mask: WriteMask(0),
                    name: None,
                })
                .collect(),
            "bench",
        )
        .expect("list"),
    );
    let compared = policy
        .fields_on(model)
        .filter(|(f, _)| f.rule.is_compared())
        .count();
    let host = policy
        .fields_on(model)
        .filter(|(f, _)| f.rule == FieldRule::Host)
        .count();
    println!(
        "fleet compare: synthetic fleets of {CPUS}-CPU Skylake-SP nodes, policy {} ({compared} compared fields, {host} host field), 5 planted outliers; median of {rounds} runs",
        policy_path.display()
    );
    println!(
        "{:>7}  {:<26} {:>10} {:>11} {:>10} {:>13} {:>10}",
        "nodes", "input", "input MiB", "bytes/node", "wall ms", "peak RSS MiB", "violations"
    );
    let tmp = tempfile::tempdir().expect("tempdir");
    let measure = |what: &str, n: usize, input: &Path, bytes: usize| {
        let cmd = || compare(input, &policy_path);
        // Right first: exactly the planted outliers.
        let o = cmd().output().expect("run");
        assert_eq!(o.status.code(), Some(1));
        let j: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
        let found = violations(&j);
        assert_eq!(found, expected(), "the planted outliers and nothing else");
        assert_eq!(j["nodes"].as_u64(), Some(n as u64));
        let runs: Vec<_> = (0..rounds).map(|_| run_ok(&mut cmd(), 1)).collect();
        let wall = median(runs.iter().map(|r| r.wall).collect());
        let rss = runs.iter().map(|r| r.max_rss_kib).max().unwrap_or(0);
        println!(
            "{n:>7}  {what:<26} {:>10.1} {:>11} {:>10.0} {:>13.1} {:>10}",
            bytes as f64 / 1048576.0,
            bytes / n,
            ms(wall),
            rss as f64 / 1024.0,
            found.len()
        );
    };
    for &n in &sizes {
        assert!(
            n > 901,
            "at least 902 nodes (the outliers are nodes 17 to 901)"
        );
        let dir = tmp.path().join(format!("fps-{n}"));
        let files = n <= 10_000;
        if files {
            std::fs::create_dir(&dir).expect("dir");
        }
        let jsonl = tmp.path().join(format!("fleet-{n}.jsonl"));
        let mut all = std::io::BufWriter::new(std::fs::File::create(&jsonl).expect("jsonl"));
        let mut bytes = 0usize;
        for i in 0..n {
            let line = node_fingerprint(&policy, &list, i).to_json_line();
            bytes += line.len();
            all.write_all(line.as_bytes()).expect("write");
            if files {
                std::fs::write(dir.join(format!("{}.json", name(i))), &line).expect("write");
            }
        }
        all.flush().expect("flush");
        drop(all);
        if files {
            measure(&format!("{n} files in a directory"), n, &dir, bytes);
        }
        measure("one JSON-lines file", n, &jsonl, bytes);
        std::fs::remove_file(&jsonl).ok();
        std::fs::remove_dir_all(&dir).ok();
    }

    // Straight from save files: every node's whole baseline (399 MSRs x 256 CPUs).
    let save_nodes: usize = std::env::var("MSR_BENCH_SAVE_NODES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    if save_nodes > 901 {
        // The shipped list, plus the two MSRs it lacks that the policy's fields read (what a
        // site's read rules for MSR_MISC_FEATURE_CONTROL and IA32_ARCH_CAPABILITIES add).
        let shipped = Allowlist::from_file(&repo.join("allowlists/al_06_55")).expect("al_06_55");
        let mut entries = shipped.entries().to_vec();
        for a in [PREFETCH, ARCH] {
            entries.push(AllowlistEntry {
                addr: MsrAddr(a),
                mask: WriteMask(0),
                name: None,
            });
        }
        let full = Arc::new(Allowlist::from_entries(entries, "al_06_55 + 2").expect("list"));
        let dir = tmp.path().join("saves");
        std::fs::create_dir(&dir).expect("dir");
        let mut bytes = 0usize;
        for i in 0..save_nodes {
            let mut outcomes = Vec::with_capacity(CPUS as usize * full.len());
            for cpu in 0..CPUS {
                for e in full.entries() {
                    let mut v = good(e.addr.0, cpu);
                    if e.addr.0 == PPIN {
                        v += (i as u64) << 8;
                    }
                    outcomes.push(Ok(outlier(i, e.addr.0, cpu, v)));
                }
            }
            let snapshot = Snapshot::from_outcomes(
                Arc::clone(&full),
                (0..CPUS).map(CpuId).collect(),
                outcomes,
            );
            let mut meta = SaveMeta::now(name(i), skx(), Some("6.1.0".into()), BackendKind::Safe);
            meta.created = "2025-06-01T03:00:00Z".into();
            meta.microcode = Some(if i == 777 { "0x2006e05" } else { "0x2007006" }.into());
            let path = dir.join(format!("{}.save", name(i)));
            SaveFile { meta, snapshot }.store(&path).expect("store");
            bytes += std::fs::metadata(&path)
                .map(|m| m.len() as usize)
                .unwrap_or(0);
        }
        let cmd = || compare(&dir, &policy_path);
        let o = cmd().output().expect("run");
        let j: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
        let found = violations(&j);
        // Save files record the microcode too: every outlier is found there as well.
        assert_eq!(found, expected(), "the planted outliers and nothing else");
        let runs: Vec<_> = (0..rounds).map(|_| run_ok(&mut cmd(), 1)).collect();
        let wall = median(runs.iter().map(|r| r.wall).collect());
        let rss = runs.iter().map(|r| r.max_rss_kib).max().unwrap_or(0);
        println!(
            "{save_nodes:>7}  {:<26} {:>10.1} {:>11} {:>10.0} {:>13.1} {:>10}",
            format!("{save_nodes} save files"),
            bytes as f64 / 1048576.0,
            bytes / save_nodes,
            ms(wall),
            rss as f64 / 1024.0,
            found.len()
        );
    }
}
