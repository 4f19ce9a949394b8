//! `show` and `diff`: commands on save files alone (no device).

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Result;
use msr_backend::device::OpError;
use msr_backend::node::format_cpu_list;
use msr_backend::plan::display_name;
use msr_backend::savefile::SaveFile;
use msr_backend::{CpuId, Hex64};
use serde_json::json;

use super::{line, shown, Outcome};
use crate::{EXIT_FAILED, EXIT_OK};

fn value_text(v: &Result<u64, OpError>) -> String {
    match v {
        Ok(x) => Hex64(*x).to_string(),
        Err(e) => e.code(),
    }
}

pub fn show(file: &Path, only_cpu: Option<u32>) -> Result<Outcome> {
    let save = SaveFile::load(file)?;
    let s = &save.snapshot;
    let m = &save.meta;
    let mut h = String::new();
    line(&mut h, format!("save file {}", shown(file)));
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
            "  CPU {}  kernel {}  backend {}  msr-safe {}",
            m.cpu,
            m.kernel.as_deref().unwrap_or("?"),
            m.backend,
            m.msr_safe.as_deref().unwrap_or("-")
        ),
    );
    line(
        &mut h,
        format!(
            "  allowlist {} ({} MSRs, {} writable, {})",
            s.allowlist.source(),
            s.allowlist.len(),
            s.allowlist.writable_count(),
            s.allowlist.digest()
        ),
    );
    line(
        &mut h,
        format!(
            "  CPUs {} ({}), {} unreadable registers",
            format_cpu_list(&s.cpus),
            s.cpus.len(),
            s.unreadable()
        ),
    );
    line(&mut h, "");
    line(
        &mut h,
        format!("{:<10} {:<18} {:<28} values", "MSR", "write mask", "name"),
    );
    let cpu_indices: Vec<usize> = (0..s.cpus.len())
        .filter(|&ci| only_cpu.is_none_or(|c| s.cpus[ci] == CpuId(c)))
        .collect();
    let mut rows = Vec::new();
    for (ei, e) in s.entries().iter().enumerate() {
        // Group CPUs by value so a 256-CPU node stays readable.
        let mut by_value: BTreeMap<String, Vec<CpuId>> = BTreeMap::new();
        for &ci in &cpu_indices {
            by_value
                .entry(value_text(&s.value(ci, ei)))
                .or_default()
                .push(s.cpus[ci]);
        }
        let values: Vec<String> = if by_value.len() == 1 {
            by_value.keys().map(|v| format!("{v} (all)")).collect()
        } else {
            by_value
                .iter()
                .map(|(v, cpus)| format!("{v} (CPUs {})", format_cpu_list(cpus)))
                .collect()
        };
        let name = display_name(s, ei).unwrap_or_default();
        line(
            &mut h,
            format!(
                "{:<10} {:<18} {:<28} {}",
                e.addr.to_string(),
                e.mask.to_string(),
                name,
                values.join(", ")
            ),
        );
        rows.push(json!({"msr": e.addr, "mask": e.mask, "name": name, "values": by_value}));
    }
    Ok(Outcome::new(
        EXIT_OK,
        json!({"command": "show", "ok": true, "file": shown(file), "meta": m, "allowlist_digest": s.allowlist.digest(),
               "cpu_list": format_cpu_list(&s.cpus), "msrs": rows}),
        h,
    ))
}

pub fn diff(a: &Path, b: &Path, writable_only: bool) -> Result<Outcome> {
    let fa = SaveFile::load(a)?;
    let fb = SaveFile::load(b)?;
    let (sa, sb) = (&fa.snapshot, &fb.snapshot);
    let mut h = String::new();
    let mut diffs = Vec::new();
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
                let name = display_name(sa, ei);
                diffs.push(json!({"cpu": cpu, "msr": e.addr, "name": name, "a": value_text(&va), "b": value_text(&vb)}));
                if diffs.len() <= 100 {
                    line(
                        &mut h,
                        format!(
                            "CPU {cpu} MSR {} {}: {} -> {}",
                            e.addr,
                            name.unwrap_or_default(),
                            value_text(&va),
                            value_text(&vb)
                        ),
                    );
                }
            }
        }
    }
    for n in &notes {
        line(&mut h, format!("note: {n}"));
    }
    line(
        &mut h,
        format!(
            "{} registers differ between {} and {}",
            diffs.len(),
            shown(a),
            shown(b)
        ),
    );
    let same = diffs.is_empty();
    Ok(Outcome::new(
        if same { EXIT_OK } else { EXIT_FAILED },
        json!({"command": "diff", "ok": same, "a": shown(a), "b": shown(b), "differences": diffs, "notes": notes}),
        h,
    ))
}
