//! `emulate` (make an emulated node) and `demo` (the whole cycle on one).

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};
use msr_backend::allowlist::Allowlist;
use msr_backend::device::select::BackendRequest;
use msr_backend::emulate::{self, EmulatedNodeSpec, Shape};
use msr_backend::finding::Finding;
use msr_backend::operations::{self, Fit, Setup};
use msr_backend::plan::DriftBits;
use msr_backend::restore::MsrChange;
use msr_backend::savefile::Origin;
use msr_backend::types::CpuIdentity;
use msr_backend::{CpuId, Hex64, MsrAddr};
use schemars::JsonSchema;
use serde::Serialize;

use super::shown;
use crate::cli::GlobalArgs;
use crate::output::{line, ms, ExitStatus, Report};

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

/// `emulate`: the node made.
#[derive(Serialize, JsonSchema)]
pub struct EmulateReport {
    pub dir: String,
    pub cpus: u32,
    pub packages: u32,
    pub threads_per_core: u32,
    pub cpu: CpuIdentity,
    pub msrs: usize,
    pub writable: usize,
    pub allowlist: String,
}

impl Report for EmulateReport {
    const COMMAND: &'static str = "emulate";
    fn status(&self) -> ExitStatus {
        ExitStatus::Ok
    }
    fn text(&self) -> String {
        format!(
            "emulated node in {}: {} CPUs, {}, {} MSRs ({} writable) from {}\nuse it with: msrsave --root {} ...\n",
            self.dir, self.cpus, self.cpu, self.msrs, self.writable, self.allowlist, self.dir
        )
    }
    fn shell(&self) -> Vec<(&'static str, String)> {
        vec![("dir", self.dir.clone())]
    }
}

pub fn emulate(
    global: &GlobalArgs,
    dir: &Path,
    cpus: u32,
    cpu_model: &str,
    vendor: &str,
    (packages, threads_per_core): (u32, u32),
) -> Result<EmulateReport> {
    let (family, model) = parse_cpu_model(cpu_model)?;
    anyhow::ensure!(
        packages >= 1 && threads_per_core >= 1 && cpus % (packages * threads_per_core) == 0,
        "--cpus {cpus} does not split into {packages} package(s) of whole cores with {threads_per_core} thread(s) each"
    );
    let shape = Shape {
        packages,
        cores_per_package: cpus / (packages * threads_per_core),
        threads_per_core,
    };
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
            shape: Some(shape),
        },
    )?;
    Ok(EmulateReport {
        dir: shown(dir),
        cpus,
        packages,
        threads_per_core,
        cpu: identity,
        msrs: list.len(),
        writable: list.writable_count(),
        allowlist: list.source().to_string(),
    })
}

/// What the pretend job does: (cpu, MSR, new value).
fn job_changes(cpus: u32) -> Vec<(CpuId, MsrAddr, u64)> {
    let last = CpuId(cpus.saturating_sub(1));
    vec![
        // A user raising the frequency request: writable bits only.
        (CpuId(0), MsrAddr(0x199), 0x0000_0000_0000_2700),
        // Energy/performance bias to "performance".
        (last, MsrAddr(0x1B0), 0x0),
        // A power limit, one register of the package: changing writable and read-only bits
        // alike (a kernel with msr-safe would only let the job change the writable ones; the
        // register file lets it do both), but not the lock bit 63, which only firmware sets.
        (CpuId(0), MsrAddr(0x610), 0x7F00_0000_FF00_0123),
    ]
}

/// One step of the demo.
#[derive(Serialize, JsonSchema)]
#[serde(tag = "step", rename_all = "snake_case")]
pub enum DemoStep {
    Save {
        registers: usize,
        file: String,
    },
    Check {
        clean: bool,
        drift: Vec<Finding>,
    },
    Restore {
        written: usize,
        verified: usize,
        failures: Vec<Finding>,
        /// What the job changed, per MSR, as the restore found it.
        changed: Vec<MsrChange>,
    },
}

/// `demo`: the whole cycle on an emulated node.
#[derive(Serialize, JsonSchema)]
pub struct DemoReport {
    pub dir: String,
    pub steps: Vec<DemoStep>,
    /// Whether the bits outside the write masks were left as the job left them.
    pub unmasked_bits_kept: bool,
    #[serde(skip)]
    ok: bool,
    #[serde(skip)]
    text: String,
}

impl Report for DemoReport {
    const COMMAND: &'static str = "demo";
    fn status(&self) -> ExitStatus {
        ExitStatus::ok_if(self.ok)
    }
    fn text(&self) -> String {
        self.text.clone()
    }
}

pub fn demo(cpus: u32, keep: Option<&Path>) -> Result<DemoReport> {
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
            shape: None,
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

    let backend = Setup::new(node, BackendRequest::default()).open(true)?;
    let save_path = dir.join("snapshot.msr");
    let saved = operations::save(&backend, &save_path, None)?;
    line(
        &mut h,
        format!(
            "2. Job prolog: snapshot of {} registers via backend {} saved to {} in {:.2} ms",
            saved.file.snapshot.len(),
            backend.device.kind(),
            shown(&save_path),
            ms(saved.elapsed)
        ),
    );
    steps.push(DemoStep::Save {
        registers: saved.file.snapshot.len(),
        file: shown(&save_path),
    });

    let changes = job_changes(cpus);
    line(
        &mut h,
        "3. The job changes registers (as a user could through msr-safe):",
    );
    let mut before = Vec::new();
    for &(cpu, addr, value) in &changes {
        let old = emulate::peek(&node_dir, cpu, addr)?;
        before.push(old);
        // As the hardware would take it: a package register changes for every CPU of the
        // package.
        emulate::poke_shared(&node_dir, cpu, addr, value)?;
        line(
            &mut h,
            format!(
                "     CPU {cpu} MSR {addr}: {} -> {}",
                Hex64(old),
                Hex64(value)
            ),
        );
    }

    let loaded = operations::load_for_node(&save_path, Origin::Named, &backend, Fit::default())?;
    let drift = operations::check(&backend, &loaded, DriftBits::Writable)?;
    line(
        &mut h,
        format!("4. Check after the job: {}", drift.summary()),
    );
    for d in &drift.drift {
        line(&mut h, format!("     {d}"));
    }
    steps.push(DemoStep::Check {
        clean: drift.clean(),
        drift: drift.drift.clone(),
    });

    let report = operations::restore(&backend, &loaded, false)?;
    line(
        &mut h,
        format!(
            "5. Job epilog: restore wrote {} registers, {} verified, {} failures",
            report.written, report.verified, report.failed
        ),
    );
    for w in &report.writes {
        line(
            &mut h,
            format!(
                "     {} MSR {}{}: {} -> {} (mask {})",
                if w.scope == msr_backend::msrs::scope::Scope::Thread {
                    format!("CPU {}", w.cpu)
                } else {
                    format!("{} (CPU {})", w.domain, w.cpu)
                },
                w.msr,
                w.name.as_ref().map(|n| format!(" {n}")).unwrap_or_default(),
                w.before,
                w.after,
                w.mask
            ),
        );
    }
    steps.push(DemoStep::Restore {
        written: report.written,
        verified: report.verified,
        failures: report.failures.clone(),
        changed: report.changed.clone(),
    });

    let after = operations::check(&backend, &loaded, DriftBits::Writable)?;
    line(
        &mut h,
        format!("6. Check after restore: {}", after.summary()),
    );
    steps.push(DemoStep::Check {
        clean: after.clean(),
        drift: after.drift.clone(),
    });

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
    Ok(DemoReport {
        dir: shown(&dir),
        steps,
        unmasked_bits_kept: unmasked_kept,
        ok,
        text: h,
    })
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
