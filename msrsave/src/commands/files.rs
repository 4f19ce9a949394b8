//! `show` and `diff`: commands on save files alone (no device).

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Result;
use msr_backend::device::OpError;
use msr_backend::plan::display_name;
use msr_backend::savefile::{SaveFile, SaveMeta};
use msr_backend::types::format_cpu_list;
use msr_backend::{CpuId, Hex64, MsrAddr, WriteMask};
use schemars::JsonSchema;
use serde::Serialize;

use super::shown;
use crate::output::{line, ExitStatus, Report};

fn value_text(v: &Result<u64, OpError>) -> String {
    match v {
        Ok(x) => Hex64(*x).to_string(),
        Err(e) => e.code(),
    }
}

/// One MSR of a save file.
#[derive(Serialize, JsonSchema)]
pub struct ShowRow {
    pub msr: MsrAddr,
    pub mask: WriteMask,
    pub name: String,
    /// Each distinct value (or error code) and the CPUs that hold it.
    pub values: BTreeMap<String, Vec<CpuId>>,
}

/// `show`: a save file, readably.
#[derive(Serialize, JsonSchema)]
pub struct ShowReport {
    pub file: String,
    pub meta: SaveMeta,
    pub allowlist_source: String,
    pub allowlist_digest: String,
    pub cpu_list: String,
    pub unreadable: usize,
    pub msrs: Vec<ShowRow>,
}

impl Report for ShowReport {
    const COMMAND: &'static str = "show";
    fn status(&self) -> ExitStatus {
        ExitStatus::Ok
    }
    fn text(&self) -> String {
        let m = &self.meta;
        let mut h = String::new();
        line(&mut h, format!("save file {}", self.file));
        line(
            &mut h,
            format!(
                "  host {}  created {}  job {}",
                m.host,
                m.created,
                m.job_id.as_deref().unwrap_or("-")
            ),
        );
        line(
            &mut h,
            format!(
                "  CPU {}  microcode {}  kernel {}  backend {}  msr-safe {}",
                m.cpu,
                m.microcode.as_deref().unwrap_or("-"),
                m.kernel.as_deref().unwrap_or("?"),
                m.backend,
                m.msr_safe.as_deref().unwrap_or("-")
            ),
        );
        for l in &m.locked {
            line(
                &mut h,
                format!(
                    "  locked at save: MSR {} (bit {}) on {} (CPUs {})",
                    l.msr,
                    l.lock_bit,
                    l.domains.join(", "),
                    l.cpus
                ),
            );
        }
        let writable = self.msrs.iter().filter(|r| r.mask.is_writable()).count();
        line(
            &mut h,
            format!(
                "  allowlist {} ({} MSRs, {} writable, {})",
                self.allowlist_source,
                self.msrs.len(),
                writable,
                self.allowlist_digest
            ),
        );
        line(
            &mut h,
            format!(
                "  CPUs {}, {} unreadable registers",
                self.cpu_list, self.unreadable
            ),
        );
        line(&mut h, "");
        line(
            &mut h,
            format!("{:<10} {:<18} {:<28} values", "MSR", "write mask", "name"),
        );
        for r in &self.msrs {
            let values: Vec<String> = if r.values.len() == 1 {
                r.values.keys().map(|v| format!("{v} (all)")).collect()
            } else {
                r.values
                    .iter()
                    .map(|(v, cpus)| format!("{v} (CPUs {})", format_cpu_list(cpus)))
                    .collect()
            };
            line(
                &mut h,
                format!(
                    "{:<10} {:<18} {:<28} {}",
                    r.msr.to_string(),
                    r.mask.to_string(),
                    r.name,
                    values.join(", ")
                ),
            );
        }
        h
    }
}

pub fn show(file: &Path, only_cpu: Option<u32>) -> Result<ShowReport> {
    let save = SaveFile::load(file)?;
    let s = &save.snapshot;
    let cpu_indices: Vec<usize> = (0..s.cpus.len())
        .filter(|&ci| only_cpu.is_none_or(|c| s.cpus[ci] == CpuId(c)))
        .collect();
    let msrs = s
        .entries()
        .iter()
        .enumerate()
        .map(|(ei, e)| {
            // Group CPUs by value so a 256-CPU node stays readable.
            let mut values: BTreeMap<String, Vec<CpuId>> = BTreeMap::new();
            for &ci in &cpu_indices {
                values
                    .entry(value_text(&s.value(ci, ei)))
                    .or_default()
                    .push(s.cpus[ci]);
            }
            ShowRow {
                msr: e.addr,
                mask: e.mask,
                name: display_name(s, ei).unwrap_or_default(),
                values,
            }
        })
        .collect();
    Ok(ShowReport {
        file: shown(file),
        allowlist_source: s.allowlist.source().to_string(),
        allowlist_digest: s.allowlist.digest(),
        cpu_list: format_cpu_list(&s.cpus),
        unreadable: s.unreadable(),
        meta: save.meta,
        msrs,
    })
}

/// A register that differs between two save files.
#[derive(Serialize, JsonSchema)]
pub struct Difference {
    pub cpu: CpuId,
    pub msr: MsrAddr,
    pub name: Option<String>,
    /// The value (or error code) in the first file and in the second.
    pub a: String,
    pub b: String,
}

/// `diff`: registers that differ between two save files.
#[derive(Serialize, JsonSchema)]
pub struct DiffReport {
    pub a: String,
    pub b: String,
    pub differences: Vec<Difference>,
    /// Host, CPU model, allowlist or CPU list differences.
    pub notes: Vec<String>,
}

impl Report for DiffReport {
    const COMMAND: &'static str = "diff";
    fn status(&self) -> ExitStatus {
        ExitStatus::ok_if(self.differences.is_empty())
    }
    fn text(&self) -> String {
        let mut h = String::new();
        for d in self.differences.iter().take(100) {
            line(
                &mut h,
                format!(
                    "CPU {} MSR {} {}: {} -> {}",
                    d.cpu,
                    d.msr,
                    d.name.as_deref().unwrap_or_default(),
                    d.a,
                    d.b
                ),
            );
        }
        for n in &self.notes {
            line(&mut h, format!("note: {n}"));
        }
        line(
            &mut h,
            format!(
                "{} registers differ between {} and {}",
                self.differences.len(),
                self.a,
                self.b
            ),
        );
        h
    }
    fn shell(&self) -> Vec<(&'static str, String)> {
        vec![("differences", self.differences.len().to_string())]
    }
}

pub fn diff(a: &Path, b: &Path, writable_only: bool) -> Result<DiffReport> {
    let fa = SaveFile::load(a)?;
    let fb = SaveFile::load(b)?;
    let (sa, sb) = (&fa.snapshot, &fb.snapshot);
    let mut notes = Vec::new();
    if fa.meta.host != fb.meta.host {
        notes.push(format!(
            "hosts differ: {} vs {}",
            fa.meta.host, fb.meta.host
        ));
    }
    if fa.meta.cpu != fb.meta.cpu {
        notes.push(format!(
            "CPU models differ: {} vs {}",
            fa.meta.cpu, fb.meta.cpu
        ));
    }
    if let (Some(ma), Some(mb)) = (&fa.meta.microcode, &fb.meta.microcode) {
        // A BIOS or microcode update between the two files explains some differences.
        if ma != mb {
            notes.push(format!("microcode revisions differ: {ma} vs {mb}"));
        }
    }
    if sa.allowlist.digest() != sb.allowlist.digest() {
        notes.push(format!(
            "allowlists differ: {} vs {}",
            sa.allowlist.digest(),
            sb.allowlist.digest()
        ));
    }
    if sa.cpus != sb.cpus {
        notes.push(format!(
            "CPU lists differ: {} vs {}",
            format_cpu_list(&sa.cpus),
            format_cpu_list(&sb.cpus)
        ));
    }
    let mut differences = Vec::new();
    for (ai, &cpu) in sa.cpus.iter().enumerate() {
        let Some(bi) = sb.cpu_index(cpu) else {
            continue;
        };
        for (ei, e) in sa.entries().iter().enumerate() {
            let Some(bj) = sb.allowlist.index_of(e.addr) else {
                continue;
            };
            let mask = if writable_only {
                e.mask.0 & sb.entries()[bj].mask.0
            } else {
                u64::MAX
            };
            let (va, vb) = (sa.value(ai, ei), sb.value(bi, bj));
            let differs = match (va, vb) {
                (Ok(x), Ok(y)) => (x ^ y) & mask != 0,
                (x, y) => x != y,
            };
            if differs {
                differences.push(Difference {
                    cpu,
                    msr: e.addr,
                    name: display_name(sa, ei),
                    a: value_text(&va),
                    b: value_text(&vb),
                });
            }
        }
    }
    Ok(DiffReport {
        a: shown(a),
        b: shown(b),
        differences,
        notes,
    })
}
