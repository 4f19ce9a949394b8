//! What jobs changed, counted for Prometheus: at the end of the last job on a node, every MSR
//! found changed (before the restore) adds one to its counter in a node_exporter textfile
//! (config key `job_metrics`), so a site sees which registers its users' jobs touch. The
//! counters live in the file itself: each job end reads it, adds, and writes it back atomically
//! (the job end holds the node lock, so two updates never race).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use crate::fsio::{self, Expect, InputError, Links, WriteError};
use crate::restore::MsrChange;
use crate::types::MsrAddr;

/// Jobs at whose end the MSR differed from the snapshot.
pub const JOBS_METRIC: &str = "msr_restore_job_changed_total";
/// CPUs on which it differed, summed over those jobs.
pub const CPUS_METRIC: &str = "msr_restore_job_changed_cpus_total";
/// Mode of the textfile: node_exporter runs as its own user.
pub const FILE_MODE: u32 = 0o644;
/// The largest metrics file read back (two lines per MSR of a 32,768-entry list fit).
pub const MAX_BYTES: u64 = 8 << 20;

#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("job metrics")]
    Read(#[source] InputError),
    #[error("job metrics")]
    Write(#[source] WriteError),
}

/// One MSR's counters.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Counts {
    name: String,
    jobs: u64,
    cpus: u64,
}

/// The time now as node_exporter textfiles give it (seconds since the epoch).
pub fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// Escape a Prometheus label value.
pub fn label(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The value of `key="..."` in a label set.
fn label_value<'a>(labels: &'a str, key: &str) -> Option<&'a str> {
    let start = labels.find(&format!("{key}=\""))? + key.len() + 2;
    let end = labels[start..].find('"')? + start;
    Some(&labels[start..end])
}

/// The counters in an earlier file; lines that are not ours are dropped.
fn parse(text: &str) -> BTreeMap<MsrAddr, Counts> {
    let mut out: BTreeMap<MsrAddr, Counts> = BTreeMap::new();
    for line in text.lines() {
        let Some((metric, rest)) = line.split_once('{') else {
            continue;
        };
        let Some((labels, value)) = rest.rsplit_once('}') else {
            continue;
        };
        let (Some(msr), Ok(v)) = (
            label_value(labels, "msr").and_then(|m| m.parse::<MsrAddr>().ok()),
            value.trim().parse::<u64>(),
        ) else {
            continue;
        };
        let c = out.entry(msr).or_default();
        if let Some(n) = label_value(labels, "msr_name") {
            c.name = n.to_string();
        }
        match metric {
            JOBS_METRIC => c.jobs = v,
            CPUS_METRIC => c.cpus = v,
            _ => {}
        }
    }
    out
}

fn render(counts: &BTreeMap<MsrAddr, Counts>) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "# HELP {JOBS_METRIC} Job ends at which the MSR differed from the node's snapshot (what the jobs changed).\n# TYPE {JOBS_METRIC} counter"
    );
    for (msr, c) in counts {
        let _ = writeln!(
            s,
            "{JOBS_METRIC}{{msr=\"{msr}\",msr_name=\"{}\"}} {}",
            label(&c.name),
            c.jobs
        );
    }
    let _ = writeln!(
        s,
        "# HELP {CPUS_METRIC} CPUs on which the MSR differed, summed over those job ends.\n# TYPE {CPUS_METRIC} counter"
    );
    for (msr, c) in counts {
        let _ = writeln!(
            s,
            "{CPUS_METRIC}{{msr=\"{msr}\",msr_name=\"{}\"}} {}",
            label(&c.name),
            c.cpus
        );
    }
    s
}

/// Add one job end's changes to the counters in `path` (created if missing).
pub fn record_job_changes(path: &Path, changed: &[MsrChange]) -> Result<(), MetricsError> {
    let text = match fsio::read_file(
        path,
        Expect::Regular,
        Links::Refuse,
        MAX_BYTES,
        "metrics file",
    ) {
        Ok(b) => String::from_utf8_lossy(&b).into_owned(),
        Err(InputError::Open { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            String::new()
        }
        Err(e) => return Err(MetricsError::Read(e)),
    };
    let mut counts = parse(&text);
    for ch in changed {
        let c = counts.entry(ch.msr).or_default();
        if let Some(n) = &ch.name {
            c.name = n.clone();
        }
        c.jobs += 1;
        c.cpus += ch.cpus as u64;
    }
    fsio::write_atomically(path, render(&counts).as_bytes(), FILE_MODE).map_err(MetricsError::Write)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::Hex64;

    fn change(msr: u32, name: Option<&str>, cpus: usize) -> MsrChange {
        MsrChange {
            msr: MsrAddr(msr),
            name: name.map(str::to_string),
            cpus,
            cpu_list: String::new(),
            bits: Hex64(1),
            scope: crate::msrs::scope::Scope::Thread,
            domains: cpus,
            packages: String::new(),
        }
    }

    #[test]
    fn counters_add_up_across_job_ends() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("jobs.prom");
        record_job_changes(&p, &[change(0x199, Some("IA32_PERF_CTL"), 4)]).unwrap();
        record_job_changes(
            &p,
            &[
                change(0x199, Some("IA32_PERF_CTL"), 2),
                change(0x1b0, None, 1),
            ],
        )
        .unwrap();
        let text = std::fs::read_to_string(&p).unwrap();
        assert!(
            text.contains(
                "msr_restore_job_changed_total{msr=\"0x00000199\",msr_name=\"IA32_PERF_CTL\"} 2"
            ),
            "{text}"
        );
        assert!(text.contains("msr_restore_job_changed_cpus_total{msr=\"0x00000199\",msr_name=\"IA32_PERF_CTL\"} 6"), "{text}");
        assert!(
            text.contains("msr_restore_job_changed_total{msr=\"0x000001b0\",msr_name=\"\"} 1"),
            "{text}"
        );
        assert!(text.contains("# TYPE msr_restore_job_changed_total counter"));
    }
}
