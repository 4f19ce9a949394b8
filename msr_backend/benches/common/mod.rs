//! What the msr_backend benches share: their command line, medians, smoke runs.

use std::path::PathBuf;
use std::time::Duration;

use msr_backend::allowlist::Allowlist;

pub fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// A bench's node size and rounds (`-- CPUS ROUNDS`) and allowlist ($MSR_BENCH_ALLOWLIST, else
/// our allowlists/`default_list`). `cargo test --all-targets` runs a bench without `--bench`:
/// then it is a smoke run (8 CPUs, one round) that keeps the bench working without costing the
/// test suite minutes.
pub struct BenchArgs {
    pub cpus: u32,
    pub rounds: usize,
    pub list_path: PathBuf,
    pub list: Allowlist,
}

impl BenchArgs {
    pub fn parse(bench: &str, default_rounds: usize, default_list: &str) -> BenchArgs {
        let smoke = !std::env::args().any(|a| a == "--bench");
        if smoke {
            println!("smoke run (no --bench): figures come from `cargo bench -p msr_backend --bench {bench}`");
        }
        let args: Vec<String> = std::env::args()
            .skip(1)
            .filter(|a| !a.starts_with("--"))
            .collect();
        let cpus = args
            .first()
            .and_then(|a| a.parse().ok())
            .unwrap_or(if smoke { 8 } else { 256 });
        let rounds = args
            .get(1)
            .and_then(|a| a.parse().ok())
            .unwrap_or(if smoke { 1 } else { default_rounds });
        let list_path = std::env::var_os("MSR_BENCH_ALLOWLIST")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                    .join("../allowlists")
                    .join(default_list)
            });
        let list = Allowlist::from_file(&list_path).expect("benchmark allowlist");
        BenchArgs {
            cpus,
            rounds,
            list_path,
            list,
        }
    }
}
