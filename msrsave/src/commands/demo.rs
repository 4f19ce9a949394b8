//! `emulate` (make an emulated node) and `demo` (the whole cycle on one).

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};
use msr_backend::allowlist::Allowlist;
use msr_backend::device::select::{open_backend, BackendRequest};
use msr_backend::emulate::{self, EmulatedNodeSpec};
use msr_backend::node::{hostname, CpuIdentity};
use msr_backend::plan::DriftBits;
use msr_backend::restore;
use msr_backend::savefile::{SaveFile, SaveMeta};
use msr_backend::snapshot::Snapshot;
use msr_backend::{CpuId, Hex64, MsrAddr};
use serde_json::json;

use super::{line, shown, Outcome};
use crate::cli::GlobalArgs;
use crate::{EXIT_FAILED, EXIT_OK};

/// The demo's allowlist: a few Skylake-SP MSRs with the write masks msr-safe v1.7.0 gives them.
const DEMO_ALLOWLIST: &str = "\
# msrsave demo list: addresses and masks as in msr-safe v1.7.0 al_0655 (Skylake-SP)
0x00000010 0x0000000000000000 # IA32_TIME_STAMP_COUNTER
0x000000C1 0xFFFFFFFFFFFFFFFF # IA32_PMC0
0x000000CE 0x0000000000000000 # MSR_PLATFORM_INFO
0x00000186 0x00000000FFFFFFFF # IA32_PERFEVTSEL0
0x00000199 0x000000000000FFFF # IA32_PERF_CTL
0x000001B0 0x000000000000000F # IA32_ENERGY_PERF_BIAS
0x0000038F 0x0000000700000003 # IA32_PERF_GLOBAL_CTRL
0x00000610 0x00FFFFFF00FFFFFF # MSR_PKG_POWER_LIMIT
0x00000620 0x0000000000007F7F # MSR_UNCORE_RATIO_LIMIT
";

fn parse_cpu_model(s: &str) -> Result<(u32, u32)> {
    let (f, m) = s
        .split_once('_')
        .with_context(|| format!("--cpu-model {s:?}: expected FF_MM in hex, e.g. 06_55"))?;
    let hex = |t: &str| {
        u32::from_str_radix(t, 16).with_context(|| format!("--cpu-model {s:?}: {t:?} is not hex"))
    };
    Ok((hex(f)?, hex(m)?))
}

pub fn emulate(
    global: &GlobalArgs,
    dir: &Path,
    cpus: u32,
    cpu_model: &str,
    vendor: &str,
) -> Result<Outcome> {
    let (family, model) = parse_cpu_model(cpu_model)?;
    let list = match &global.allowlist {
        Some(p) => Allowlist::from_file(p)?,
        None => anyhow::bail!(
            "emulate needs --allowlist FILE: the list the emulated msr-safe has loaded"
        ),
    };
    let identity = CpuIdentity {
        vendor: vendor.to_string(),
        family,
        model,
    };
    emulate::create(
        dir,
        &EmulatedNodeSpec {
            cpus,
            allowlist: &list,
            identity: identity.clone(),
        },
    )?;
    Ok(Outcome::new(
        EXIT_OK,
        json!({"command": "emulate", "ok": true, "dir": shown(dir), "cpus": cpus, "cpu": identity,
               "msrs": list.len(), "writable": list.writable_count(), "allowlist": list.source()}),
        format!(
            "emulated node in {}: {cpus} CPUs, {identity}, {} MSRs ({} writable) from {}\nuse it with: msrsave --root {} ...\n",
            shown(dir),
            list.len(),
            list.writable_count(),
            list.source(),
            shown(dir)
        ),
    ))
}

/// What the pretend job does: (cpu, MSR, new value).
fn job_changes(cpus: u32) -> Vec<(CpuId, MsrAddr, u64)> {
    let last = CpuId(cpus.saturating_sub(1));
    vec![
        // A user raising the frequency request: writable bits only.
        (CpuId(0), MsrAddr(0x199), 0x0000_0000_0000_2700),
        // Energy/performance bias to "performance".
        (last, MsrAddr(0x1B0), 0x0),
        // A power limit, changing writable and read-only bits alike (a kernel with msr-safe
        // would only let the job change the writable ones; the register file lets it do both).
        (CpuId(0), MsrAddr(0x610), 0xFF00_0000_FF00_0123),
    ]
}

pub fn demo(cpus: u32, keep: Option<&Path>) -> Result<Outcome> {
    anyhow::ensure!(cpus >= 1, "--cpus must be at least 1");
    let tmp;
    let dir: PathBuf = match keep {
        Some(d) => d.to_path_buf(),
        None => {
            tmp = TempDir::new()?;
            tmp.0.clone()
        }
    };
    let mut h = String::new();
    let mut steps = Vec::new();
    let list = Allowlist::parse(
        DEMO_ALLOWLIST.as_bytes(),
        "built-in demo list (Skylake-SP masks)",
    )?;
    let identity = CpuIdentity {
        vendor: "GenuineIntel".into(),
        family: 6,
        model: 0x55,
    };
    let node_dir = dir.join("node");
    let node = emulate::create(
        &node_dir,
        &EmulatedNodeSpec {
            cpus,
            allowlist: &list,
            identity,
        },
    )?;
    line(
        &mut h,
        format!(
            "1. Emulated node in {}: {cpus} CPUs, Skylake-SP, {} MSRs allowlisted ({} writable)",
            shown(&node_dir),
            list.len(),
            list.writable_count()
        ),
    );

    let backend = open_backend(&node, &BackendRequest::default())?;
    let start = std::time::Instant::now();
    let snapshot = Snapshot::take(
        backend.device.as_ref(),
        backend.allowlist.clone(),
        &backend.online,
    )?;
    let meta = SaveMeta::now(
        hostname(),
        node.cpu_identity()?,
        node.kernel_release(),
        backend.device.kind(),
    );
    let save_path = dir.join("snapshot.json");
    let save = SaveFile { meta, snapshot };
    save.store(&save_path)?;
    line(
        &mut h,
        format!(
            "2. Job prolog: snapshot of {} registers via backend {} saved to {} in {:.2} ms",
            save.snapshot.values.len(),
            backend.device.kind(),
            shown(&save_path),
            super::ms(start.elapsed())
        ),
    );
    steps.push(
        json!({"step": "save", "registers": save.snapshot.values.len(), "file": shown(&save_path)}),
    );

    let changes = job_changes(cpus);
    line(
        &mut h,
        "3. The job changes registers (as a user could through msr-safe):",
    );
    let mut before = Vec::new();
    for &(cpu, addr, value) in &changes {
        let old = emulate::peek(&node_dir, cpu, addr)?;
        before.push(old);
        emulate::poke(&node_dir, cpu, addr, value)?;
        line(
            &mut h,
            format!(
                "     CPU {cpu} MSR {addr}: {} -> {}",
                Hex64(old),
                Hex64(value)
            ),
        );
    }

    let check = || {
        restore::check(
            backend.device.as_ref(),
            &save.snapshot,
            &backend.allowlist,
            &backend.online,
            DriftBits::Writable,
        )
    };
    let drift = check()?;
    line(
        &mut h,
        format!("4. Check after the job: {}", drift.summary()),
    );
    for d in &drift.drift {
        line(
            &mut h,
            format!(
                "     {}: expected {} actual {} (bits {})",
                label(d.cpu, d.msr, &d.name),
                d.expected,
                d.actual,
                d.changed_bits
            ),
        );
    }
    steps.push(json!({"step": "check", "clean": drift.clean(), "drift": drift.drift}));

    let report = restore::restore(
        backend.device.as_ref(),
        &save.snapshot,
        &backend.allowlist,
        &backend.online,
        false,
    )?;
    line(
        &mut h,
        format!(
            "5. Job epilog: restore wrote {} registers, {} verified, {} failures",
            report.written,
            report.verified,
            report.failures.len()
        ),
    );
    for w in &report.writes {
        line(
            &mut h,
            format!(
                "     {}: {} -> {} (mask {})",
                label(w.cpu, w.msr, &w.name),
                w.before,
                w.after,
                w.mask
            ),
        );
    }
    steps.push(json!({"step": "restore", "written": report.written, "verified": report.verified, "failures": report.failures}));

    let after = check()?;
    line(
        &mut h,
        format!("6. Check after restore: {}", after.summary()),
    );
    steps.push(json!({"step": "check", "clean": after.clean(), "drift": after.drift}));

    // The bits outside the write mask stay as the job left them: a restore never writes them.
    let mut unmasked_kept = true;
    for (&(cpu, addr, value), &old) in changes.iter().zip(&before) {
        let mask = backend.allowlist.mask(addr).map_or(0, |m| m.0);
        let now = emulate::peek(&node_dir, cpu, addr)?;
        unmasked_kept &= now & !mask == value & !mask && now & mask == old & mask;
    }
    line(
        &mut h,
        format!(
            "7. Bits outside the write masks were left as the job left them: {}",
            if unmasked_kept {
                "yes (a restore never writes outside the mask)"
            } else {
                "NO"
            }
        ),
    );
    let ok = !drift.clean() && after.clean() && report.ok() && unmasked_kept;
    line(
        &mut h,
        if ok {
            "Demo complete: the node is back as it was."
        } else {
            "Demo FAILED: see above."
        },
    );
    if keep.is_some() {
        line(
            &mut h,
            format!(
                "The node is kept in {} (try: msrsave --root {} show {})",
                shown(&dir),
                shown(&node_dir),
                shown(&save_path)
            ),
        );
    }
    Ok(Outcome::new(
        if ok { EXIT_OK } else { EXIT_FAILED },
        json!({"command": "demo", "ok": ok, "dir": shown(&dir), "steps": steps, "unmasked_bits_kept": unmasked_kept}),
        h,
    ))
}

fn label(cpu: CpuId, msr: MsrAddr, name: &Option<String>) -> String {
    match name {
        Some(n) => format!("CPU {cpu} MSR {msr} {n}"),
        None => format!("CPU {cpu} MSR {msr}"),
    }
}

/// A temporary directory removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Result<TempDir> {
        let template = std::env::temp_dir().join("msrsave-demo.XXXXXX");
        let p = nix::unistd::mkdtemp(&template).context("cannot create a temporary directory")?;
        Ok(TempDir(p))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
