//! `info`: what msrsave sees on this node and which backend it would use, and why.

use anyhow::Result;
use msr_backend::allowlist::select_allowlist;
use msr_backend::device::select::Skipped;
use msr_backend::device::BackendKind;
use msr_backend::error::chain;
use msr_backend::msrs::scope::Scope;
use msr_backend::node::hostname;
use msr_backend::topology::Topology;
use msr_backend::types::{format_cpu_list, CpuIdentity};
use schemars::JsonSchema;
use serde::Serialize;

use super::slurm::{self, SlurmInfo};
use super::{shown, Context};
use crate::output::{line, ExitStatus, Report};

/// The backend `info` would use.
#[derive(Serialize, JsonSchema)]
pub struct BackendInfo {
    /// `null` when no backend is usable (then `error` says why).
    pub backend: Option<BackendKind>,
    pub device: Option<String>,
    /// Where the allowlist came from.
    pub allowlist: Option<String>,
    pub msrs: Option<usize>,
    pub writable: Option<usize>,
    pub digest: Option<String>,
    /// The other backends that would not work, and why.
    pub skipped: Vec<Skipped>,
    /// The other backends that would work too.
    pub also_usable: Vec<BackendKind>,
    pub warnings: Vec<String>,
    pub error: Option<String>,
}

/// One domain of the topology.
#[derive(Serialize, JsonSchema)]
pub struct DomainInfo {
    /// `package 0`, `package 1 core 3`, ...
    pub domain: String,
    /// Its CPUs (kernel list syntax).
    pub cpus: String,
}

/// Which CPUs share a package, a die and a core, as msrsave reads the node's sysfs: what a
/// restore writes a shared register once for.
#[derive(Serialize, JsonSchema)]
pub struct TopologyInfo {
    /// `2 packages, 112 cores, 224 CPUs`.
    pub summary: String,
    pub packages: Vec<DomainInfo>,
    /// Dies, where a package has several.
    pub dies: Vec<DomainInfo>,
    pub cores: Vec<DomainInfo>,
    /// Levels that could not be read (every CPU its own domain there), and why.
    pub notes: Vec<String>,
}

fn domains(t: &Topology, scope: Scope) -> Vec<DomainInfo> {
    t.domains(scope)
        .into_iter()
        .map(|(at, cpus)| DomainInfo {
            domain: at.to_string(),
            cpus: format_cpu_list(&cpus),
        })
        .collect()
}

/// `info`: the node as msrsave sees it.
#[derive(Serialize, JsonSchema)]
pub struct InfoReport {
    pub host: String,
    pub root: String,
    pub cpu: Option<CpuIdentity>,
    pub online_cpus: Option<String>,
    pub topology: Option<TopologyInfo>,
    pub kernel: Option<String>,
    pub msr_safe: Option<String>,
    pub lockdown: Option<String>,
    /// The shipped allowlist for this CPU, if there is one.
    pub shipped_allowlist: Option<String>,
    pub backend: BackendInfo,
    /// Whether this node's slurmd loads the SPANK plugin.
    pub slurm: SlurmInfo,
    #[serde(skip)]
    problems: Vec<String>,
}

impl Report for InfoReport {
    const COMMAND: &'static str = "info";
    fn status(&self) -> ExitStatus {
        if self.backend.backend.is_some() {
            ExitStatus::Ok
        } else {
            ExitStatus::Usage
        }
    }
    fn text(&self) -> String {
        let mut h = String::new();
        let or = |v: &Option<String>, d: &str| v.clone().unwrap_or_else(|| d.to_string());
        line(&mut h, format!("host            {}", self.host));
        line(&mut h, format!("root            {}", self.root));
        match &self.cpu {
            Some(id) => line(&mut h, format!("cpu             {id}")),
            None => line(&mut h, "cpu             unknown"),
        }
        line(
            &mut h,
            format!("online cpus     {}", or(&self.online_cpus, "unknown")),
        );
        if let Some(t) = &self.topology {
            line(&mut h, format!("topology        {}", t.summary));
            for p in &t.packages {
                line(
                    &mut h,
                    format!("                {}: CPUs {}", p.domain, p.cpus),
                );
            }
            for n in &t.notes {
                line(&mut h, format!("                note: {n}"));
            }
        }
        line(&mut h, format!("kernel          {}", or(&self.kernel, "?")));
        line(
            &mut h,
            format!("msr-safe        {}", or(&self.msr_safe, "not loaded")),
        );
        line(
            &mut h,
            format!("lockdown        {}", or(&self.lockdown, "none")),
        );
        line(
            &mut h,
            format!("shipped list    {}", or(&self.shipped_allowlist, "none")),
        );
        for p in &self.problems {
            line(&mut h, format!("problem         {p}"));
        }
        let b = &self.backend;
        match (&b.backend, &b.error) {
            (Some(k), _) => {
                line(
                    &mut h,
                    format!("backend         {k} ({})", or(&b.device, "")),
                );
                line(
                    &mut h,
                    format!(
                        "allowlist       {} ({} MSRs, {} writable, {})",
                        or(&b.allowlist, "?"),
                        b.msrs.unwrap_or(0),
                        b.writable.unwrap_or(0),
                        or(&b.digest, "?")
                    ),
                );
            }
            (None, e) => line(&mut h, format!("backend         none: {}", or(e, "?"))),
        }
        for s in &b.skipped {
            line(&mut h, format!("skipped         {s}"));
        }
        for k in &b.also_usable {
            let first = b.backend.map(|c| c.to_string()).unwrap_or_default();
            line(
                &mut h,
                format!(
                    "not used        {k}: usable too; {first} comes first (--backend {k} picks it)"
                ),
            );
        }
        for w in &b.warnings {
            line(&mut h, format!("warning         {w}"));
        }
        line(&mut h, format!("slurm plugin    {}", self.slurm.note));
        h
    }
    fn shell(&self) -> Vec<(&'static str, String)> {
        vec![
            (
                "backend",
                self.backend
                    .backend
                    .map(|k| k.to_string())
                    .unwrap_or_default(),
            ),
            ("msr_safe", self.msr_safe.clone().unwrap_or_default()),
            (
                "topology",
                self.topology
                    .as_ref()
                    .map(|t| t.summary.clone())
                    .unwrap_or_default(),
            ),
            (
                "packages",
                self.topology
                    .as_ref()
                    .map(|t| {
                        t.packages
                            .iter()
                            .map(|p| {
                                format!("{}:{}", p.domain.trim_start_matches("package "), p.cpus)
                            })
                            .collect::<Vec<_>>()
                            .join(" ")
                    })
                    .unwrap_or_default(),
            ),
            (
                "slurm_plugin_series",
                self.slurm.plugin_series.clone().unwrap_or_default(),
            ),
            ("slurmd", self.slurm.slurmd.clone().unwrap_or_default()),
            (
                "slurmd_version",
                self.slurm.slurmd_version.clone().unwrap_or_default(),
            ),
            (
                "slurm_compatible",
                self.slurm
                    .compatible
                    .map_or(String::new(), |c| u8::from(c).to_string()),
            ),
            ("slurm_note", self.slurm.note.clone()),
        ]
    }
}

pub fn info(
    ctx: &Context,
    slurm_series_file: &std::path::Path,
    slurmd: Option<&std::path::Path>,
) -> Result<InfoReport> {
    let node = &ctx.node;
    let mut problems = Vec::new();
    let cpu = node
        .cpu_identity()
        .map_err(|e| problems.push(chain(&e)))
        .ok();
    let online = node
        .online_cpus()
        .map_err(|e| problems.push(chain(&e)))
        .ok();
    let topology = online.as_ref().map(|cpus| {
        let t = Topology::read(node, cpus, &[Scope::Core, Scope::Die, Scope::Package]);
        TopologyInfo {
            summary: t.summary(),
            packages: domains(&t, Scope::Package),
            dies: domains(&t, Scope::Die)
                .into_iter()
                .filter(|d| d.domain.contains(" die "))
                .collect(),
            cores: domains(&t, Scope::Core),
            notes: t.notes.clone(),
        }
    });
    let shipped = cpu.as_ref().and_then(|id| {
        select_allowlist(id, &ctx.config.allowlist_dirs)
            .map(|p| shown(&p))
            .ok()
    });
    let mut setup = ctx.setup();
    setup.request.survey = true;
    let backend = match setup.open(false) {
        Ok(b) => BackendInfo {
            backend: Some(b.device.kind()),
            device: Some(b.device.describe()),
            allowlist: Some(b.allowlist_origin.clone()),
            msrs: Some(b.allowlist.len()),
            writable: Some(b.allowlist.writable_count()),
            digest: Some(b.allowlist.digest()),
            skipped: b.skipped,
            also_usable: b.also_usable,
            warnings: b.warnings,
            error: None,
        },
        Err(e) => {
            let error = Some(chain(&e));
            let skipped = match e {
                msr_backend::Error::Open(msr_backend::device::select::OpenError::NoBackend(n)) => {
                    n.skipped
                }
                _ => Vec::new(),
            };
            BackendInfo {
                backend: None,
                device: None,
                allowlist: None,
                msrs: None,
                writable: None,
                digest: None,
                skipped,
                also_usable: Vec::new(),
                warnings: Vec::new(),
                error,
            }
        }
    };
    Ok(InfoReport {
        host: hostname(),
        root: shown(node.root()),
        cpu,
        online_cpus: online.as_ref().map(|c| format_cpu_list(c)),
        topology,
        kernel: node.kernel_release(),
        msr_safe: node.msr_safe_version(),
        lockdown: node.lockdown(),
        shipped_allowlist: shipped,
        backend,
        slurm: slurm::check(slurm_series_file, slurmd),
        problems,
    })
}
