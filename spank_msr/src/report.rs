//! Log lines and drain reasons for the outcomes of msr_backend::jobs: pure, so they are tested
//! without slurmd.

use msr_backend::finding::name_registers;
use msr_backend::jobs::{BeginOutcome, EndOutcome, Reaped, RestoreSummary, NAMED_REGISTERS};
use msr_backend::restore::name_msrs;

/// The longest drain reason the plugin sets (scontrol takes more, but `sinfo -R` readers and
/// log lines do not).
pub const MAX_REASON: usize = 400;

fn ms(d: std::time::Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

pub fn begin_line(job: &str, outcome: &BeginOutcome) -> String {
    match outcome {
        BeginOutcome::Snapshot(s) => format!(
            "job {job}: first job on the node: snapshot of {} CPUs x {} MSRs ({} unreadable) in {}",
            s.cpus,
            s.msrs,
            s.unreadable,
            ms(s.elapsed)
        ),
        BeginOutcome::Joined { others } => format!(
            "job {job}: joins job(s) {} on the node: the first job's snapshot stands",
            others.join(", ")
        ),
        BeginOutcome::ReusedSnapshot { .. } => format!(
            "job {job}: a snapshot left by an earlier failed restore is kept as the state to restore (the node's registers now are not trusted)"
        ),
        BeginOutcome::AlreadyRegistered => {
            format!("job {job}: already registered on the node (requeued or repeated prolog): nothing to do")
        }
    }
}

pub fn restored_line(job: &str, s: &RestoreSummary) -> String {
    format!(
        "job {job}: last job on the node: registers restored ({} written, {} verified, {} unchanged) in {}",
        s.written,
        s.verified,
        s.unchanged,
        ms(s.elapsed)
    )
}

pub fn drift_message(job: &str, s: &RestoreSummary) -> String {
    format!(
        "job {job}: {} register(s) differ from the snapshot after the restore: {}",
        s.drift.len(),
        name_registers(&s.drift, NAMED_REGISTERS)
    )
}

/// What the jobs on the node changed, for slurmd's log: one line, per
/// MSR (name, CPUs, bits), or `None` when nothing had changed.
pub fn changed_line(job: &str, s: &RestoreSummary) -> Option<String> {
    if s.changed.is_empty() {
        return None;
    }
    let list: Vec<String> = s.changed.iter().map(|c| c.to_string()).collect();
    Some(format!(
        "job {job}: the job(s) that held the node changed {} MSR(s) ({}): {}",
        s.changed.len(),
        name_msrs(&s.changed, NAMED_REGISTERS),
        list.join("; ")
    ))
}

/// What `scontrol listpids` says (exit status 1) when no job step runs on the node: an answer,
/// not a failure.
pub const NO_STEPS: &str = "No job steps exist on this node";

/// The job ids in `scontrol listpids` output (`PID JOBID STEPID LOCALID GLOBALID` rows).
pub fn listpids_jobs(out: &str) -> std::collections::BTreeSet<String> {
    out.lines()
        .skip_while(|l| !l.trim_start().starts_with("PID"))
        .skip(1)
        .filter_map(|l| l.split_whitespace().nth(1))
        .filter(|j| j.chars().all(|c| c.is_ascii_digit() || c == '_'))
        .map(str::to_string)
        .collect()
}

/// A job ended by reconciliation, for the log.
pub fn reaped_line(r: &Reaped) -> String {
    r.to_string()
}

pub fn end_line(job: &str, outcome: &EndOutcome) -> String {
    match outcome {
        EndOutcome::Restored(s) => restored_line(job, s),
        EndOutcome::OthersRemain { others } => format!(
            "job {job}: ended; job(s) {} still on the node: registers are restored when the last one ends",
            others.join(", ")
        ),
        EndOutcome::NotRegistered => format!(
            "job {job}: was not registered on the node (its prolog failed or never ran): nothing to restore"
        ),
    }
}

/// A drain reason on one line, cut to [`MAX_REASON`] bytes.
pub fn drain_reason(msg: &str) -> String {
    let mut r: String = format!("msr-restore: {msg}")
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if r.len() > MAX_REASON {
        let mut cut = MAX_REASON - 3;
        while !r.is_char_boundary(cut) {
            cut -= 1;
        }
        r.truncate(cut);
        r.push_str("...");
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use msr_backend::device::OpError;
    use msr_backend::finding::{Finding, Problem};
    use msr_backend::jobs::SnapshotSummary;
    use msr_backend::msrs::scope::Scope;
    use msr_backend::restore::MsrChange;
    use msr_backend::topology::Where;
    use msr_backend::{CpuId, Hex64, MsrAddr};

    #[test]
    fn lines_say_what_happened() {
        let b = begin_line(
            "7",
            &BeginOutcome::Snapshot(SnapshotSummary {
                cpus: 256,
                msrs: 399,
                unreadable: 0,
                elapsed: std::time::Duration::from_micros(12_345),
            }),
        );
        assert_eq!(
            b,
            "job 7: first job on the node: snapshot of 256 CPUs x 399 MSRs (0 unreadable) in 12.3 ms"
        );
        let e = end_line(
            "8",
            &EndOutcome::OthersRemain {
                others: vec!["7".into()],
            },
        );
        assert!(e.contains("job(s) 7 still on the node"), "{e}");
        assert!(end_line("9", &EndOutcome::NotRegistered).contains("prolog failed"));
    }

    #[test]
    fn drift_names_registers() {
        let s = RestoreSummary {
            drift: vec![Finding {
                cpu: CpuId(1),
                at: Where::Cpu(CpuId(1)),
                msr: Some(MsrAddr(0x199)),
                name: Some("IA32_PERF_CTL".into()),
                problem: Problem::Mismatch {
                    wrote: 0x1,
                    read: 0x2,
                    bits: 0x3,
                },
            }],
            ..Default::default()
        };
        let m = drift_message("5", &s);
        assert!(m.contains("CPU 1 MSR 0x00000199 (IA32_PERF_CTL)"), "{m}");
        let _ = OpError::NotAllowlisted;
    }

    /// A register a package shares is named once for the package, in the drain reason and in
    /// what the job changed.
    #[test]
    fn package_registers_are_named_once_per_package() {
        let pl = |package: u32, cpu: u32| Finding {
            cpu: CpuId(cpu),
            at: Where::Package(package),
            msr: Some(MsrAddr(0x610)),
            name: Some("MSR_PKG_POWER_LIMIT".into()),
            problem: Problem::Mismatch {
                wrote: 0x10,
                read: 0x20,
                bits: 0x30,
            },
        };
        let s = RestoreSummary {
            drift: vec![pl(1, 57)],
            changed: vec![MsrChange {
                msr: MsrAddr(0x610),
                name: Some("MSR_PKG_POWER_LIMIT".into()),
                cpus: 224,
                cpu_list: "0-223".into(),
                bits: Hex64(0xff),
                scope: Scope::Package,
                domains: 2,
                packages: "0-1".into(),
            }],
            ..Default::default()
        };
        let reason = drain_reason(&drift_message("9", &s));
        assert!(
            reason.contains(
                "1 register(s) differ from the snapshot after the restore: package 1 (CPU 57) MSR 0x00000610 (MSR_PKG_POWER_LIMIT): verify failed"
            ),
            "{reason}"
        );
        let changed = changed_line("9", &s).expect("a change");
        assert!(
            changed.ends_with(
                "MSR 0x00000610 MSR_PKG_POWER_LIMIT on packages 0-1 (224 CPUs), bits 0x00000000000000ff"
            ),
            "{changed}"
        );
    }

    #[test]
    fn listpids_gives_the_jobs_slurmd_runs() {
        let out = "PID      JOBID    STEPID   LOCALID GLOBALID\n\
                   1234     42       batch    0       0\n\
                   1240     42       0        0       0\n\
                   1300     43       extern   -       -\n";
        let jobs: Vec<_> = listpids_jobs(out).into_iter().collect();
        assert_eq!(jobs, ["42", "43"]);
        assert!(listpids_jobs("PID      JOBID    STEPID   LOCALID GLOBALID\n").is_empty());
    }

    #[test]
    fn reasons_are_one_short_line() {
        let r = drain_reason("a\nb");
        assert_eq!(r, "msr-restore: a b");
        let long = drain_reason(&"é".repeat(500));
        assert!(
            long.len() <= MAX_REASON && long.ends_with("..."),
            "{}",
            long.len()
        );
    }
}
