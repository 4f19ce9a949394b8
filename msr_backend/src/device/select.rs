//! Choosing a backend: `auto` tries the batch ioctl, then msr-safe's per-CPU nodes, then the
//! stock msr driver, and keeps the reason each one was skipped (missing module, permissions,
//! CAP_SYS_RAWIO, lockdown) so that `msrsave info` and every error can say why.

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Serialize;

use super::control::BatchAbi;
use super::percpu::{FsCpuNodes, PerCpuDevice};
use super::{BackendKind, MsrDevice};
use crate::allowlist::{select_allowlist, Allowlist};
use crate::error::{Error, Result};
use crate::node::{is_char_device, Node, BATCH_NODE};
use crate::types::CpuId;

/// Linux capability number of CAP_SYS_RAWIO (include/uapi/linux/capability.h).
const CAP_SYS_RAWIO: u32 = 17;

/// What the caller asks for.
#[derive(Clone, Debug, Default)]
pub struct BackendRequest {
    /// `None` = auto.
    pub kind: Option<BackendKind>,
    /// Use this allowlist instead of the one loaded in msr-safe.
    pub allowlist: Option<PathBuf>,
    /// Where to look for a list for this CPU when the stock driver is used and nothing is loaded.
    pub allowlist_dirs: Vec<PathBuf>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Skipped {
    pub backend: BackendKind,
    pub reason: String,
}

/// A backend ready to use, with everything learnt while choosing it.
pub struct OpenBackend {
    pub node: Node,
    pub device: Box<dyn MsrDevice>,
    pub allowlist: Arc<Allowlist>,
    /// Where the allowlist came from (a file, the loaded list, a list picked for the CPU).
    pub allowlist_origin: String,
    pub online: Vec<CpuId>,
    pub skipped: Vec<Skipped>,
    /// Caveats of the chosen backend (e.g. lockdown will refuse writes).
    pub warnings: Vec<String>,
}

fn has_cap_sys_rawio() -> bool {
    // CapEff in /proc/self/status is a hex bit set.
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|h| u64::from_str_radix(h.trim(), 16).ok())
        })
        .is_some_and(|caps| caps & (1 << CAP_SYS_RAWIO) != 0)
}

/// Try to open `path` for reading and writing, for a reason in words if we cannot.
fn probe_open(path: &Path, what: &str) -> std::result::Result<(), String> {
    match OpenOptions::new().read(true).write(true).open(path) {
        Ok(_) => Ok(()),
        Err(e) => match e.raw_os_error() {
            Some(libc::ENOENT) => Err(format!("{} does not exist ({what})", path.display())),
            Some(libc::EACCES) => Err(format!(
                "{}: permission denied (run as root, or see the udev rules in packaging/ for group access)",
                path.display()
            )),
            Some(libc::EPERM) => Err(format!(
                "{}: operation not permitted (needs root or CAP_SYS_RAWIO)",
                path.display()
            )),
            _ => Err(format!("{}: {e}", path.display())),
        },
    }
}

/// The allowlist loaded in msr-safe, as the kernel reads it back (one record per read: see
/// [`super::control`]).
pub fn loaded_allowlist(node: &Node) -> std::result::Result<Allowlist, String> {
    let (text, path) = super::control::read_loaded_allowlist(node).map_err(|e| {
        format!(
            "cannot read the loaded allowlist: {}",
            crate::error::chain(&e)
        )
    })?;
    if text.iter().all(|b| b.is_ascii_whitespace()) {
        return Err(format!(
            "msr-safe has no allowlist loaded ({} is empty): load one with `msrsave allowlist load --auto` or pass --allowlist FILE",
            path.display()
        ));
    }
    Allowlist::parse(&text, &path.display().to_string()).map_err(|e| e.to_string())
}

struct Chosen {
    allowlist: Arc<Allowlist>,
    origin: String,
}

fn allowlist_from_file(path: &Path) -> Result<Chosen> {
    let list = Allowlist::from_file(path)?;
    Ok(Chosen {
        allowlist: Arc::new(list),
        origin: format!("{} (--allowlist)", path.display()),
    })
}

/// The list msr-safe enforces: the loaded one, unless the caller named a file.
fn safe_allowlist(node: &Node, req: &BackendRequest) -> std::result::Result<Chosen, String> {
    if let Some(p) = &req.allowlist {
        return allowlist_from_file(p).map_err(|e| e.to_string());
    }
    let list = loaded_allowlist(node)?;
    let origin = format!("{} (loaded in msr-safe)", list.source());
    Ok(Chosen {
        allowlist: Arc::new(list),
        origin,
    })
}

/// The list our guard enforces on the stock driver: a named file, else msr-safe's loaded list if
/// the module is there too, else the list shipped for this CPU.
fn stock_allowlist(node: &Node, req: &BackendRequest) -> Result<Chosen> {
    if let Some(p) = &req.allowlist {
        return allowlist_from_file(p);
    }
    if node.allowlist_node().exists() {
        if let Ok(list) = loaded_allowlist(node) {
            let origin = format!("{} (loaded in msr-safe)", list.source());
            return Ok(Chosen {
                allowlist: Arc::new(list),
                origin,
            });
        }
    }
    let id = node.cpu_identity()?;
    let path = select_allowlist(&id, &req.allowlist_dirs)?;
    let list = Allowlist::from_file(&path)?;
    Ok(Chosen {
        allowlist: Arc::new(list),
        origin: format!("{} (picked for {id})", path.display()),
    })
}

/// Whether the loaded msr-safe speaks the batch ABI of our bindings (1.x), for a reason in words
/// if not. A module too old to report its version (before 1.2) speaks 1.x.
fn batch_abi_fits(node: &Node) -> std::result::Result<(), String> {
    match super::control::read_version(node) {
        Some(Ok(v)) if v.batch_abi() == BatchAbi::Unsupported => Err(format!(
            "msr-safe {v} is loaded: its batch ioctl takes another struct msr_batch_op than the \
             1.x one this msrsave speaks (2.x changed it), so no batch is sent; the per-CPU nodes \
             (--backend safe) work"
        )),
        Some(Err(e)) => Err(format!("cannot tell msr-safe's batch ABI: {e}")),
        Some(Ok(_)) | None => Ok(()),
    }
}

fn try_batch(
    node: &Node,
    req: &BackendRequest,
) -> std::result::Result<(Box<dyn MsrDevice>, Chosen), String> {
    let path = node.path(BATCH_NODE);
    if !path.exists() {
        return Err(format!(
            "{} does not exist (msr-safe is not loaded)",
            path.display()
        ));
    }
    if !is_char_device(&path) {
        return Err(format!(
            "{} is not a character device (an emulated node has no batch ioctl)",
            path.display()
        ));
    }
    batch_abi_fits(node)?;
    let chosen = safe_allowlist(node, req)?;
    let device = super::batch::BatchDevice::open(&path, chosen.allowlist.clone())
        .map_err(|e| e.to_string())?;
    Ok((Box::new(device), chosen))
}

fn try_safe(
    node: &Node,
    req: &BackendRequest,
    probe: CpuId,
) -> std::result::Result<(Box<dyn MsrDevice>, Chosen), String> {
    let path = node.cpu_node(probe, "msr_safe");
    probe_open(&path, "msr-safe is not loaded")?;
    let chosen = safe_allowlist(node, req)?;
    let nodes = FsCpuNodes::new(node.clone(), "msr_safe", probe);
    Ok((
        Box::new(PerCpuDevice::new(
            nodes,
            BackendKind::Safe,
            chosen.allowlist.clone(),
        )),
        chosen,
    ))
}

fn try_msr(
    node: &Node,
    req: &BackendRequest,
    probe: CpuId,
) -> std::result::Result<(Box<dyn MsrDevice>, Chosen), String> {
    let path = node.cpu_node(probe, "msr");
    if is_char_device(&path) && !has_cap_sys_rawio() {
        return Err(format!(
            "{}: the stock msr driver needs root or CAP_SYS_RAWIO, which this process does not have",
            path.display()
        ));
    }
    probe_open(&path, "load the stock driver with `modprobe msr`")?;
    let chosen = stock_allowlist(node, req).map_err(|e| e.to_string())?;
    let nodes = FsCpuNodes::new(node.clone(), "msr", probe);
    Ok((
        Box::new(PerCpuDevice::new(
            nodes,
            BackendKind::Msr,
            chosen.allowlist.clone(),
        )),
        chosen,
    ))
}

/// Open the requested backend, or the best available one for `auto`.
pub fn open_backend(node: &Node, req: &BackendRequest) -> Result<OpenBackend> {
    let online = node.online_cpus()?;
    let probe = *online.first().ok_or_else(|| Error::Node {
        path: node.path(crate::node::ONLINE_CPUS),
        reason: "no CPU is online".to_string(),
    })?;
    let order: Vec<BackendKind> = match req.kind {
        Some(k) => vec![k],
        None => BackendKind::ALL.to_vec(),
    };
    let mut skipped = Vec::new();
    for kind in order {
        let attempt = match kind {
            BackendKind::Batch => try_batch(node, req),
            BackendKind::Safe => try_safe(node, req, probe),
            BackendKind::Msr => try_msr(node, req, probe),
        };
        match attempt {
            Ok((device, chosen)) => {
                let mut warnings = Vec::new();
                if kind == BackendKind::Msr {
                    if let Some(mode) = node.lockdown().filter(|m| m != "none") {
                        warnings.push(format!(
                            "kernel lockdown is '{mode}': the stock msr driver refuses writes (EPERM); restores will fail"
                        ));
                    }
                    match node.msr_allow_writes().as_deref() {
                        Some("off") => warnings.push(
                            "the msr module is loaded with allow_writes=off: every write fails with EPERM; \
                             boot with msr.allow_writes=on (or reload the module) to restore"
                                .to_string(),
                        ),
                        Some(_) => warnings.push(
                            "every write through the stock msr driver taints the kernel (flag S) and, with \
                             allow_writes=default, logs \"Write to unrecognized MSR\"; msr-safe does neither"
                                .to_string(),
                        ),
                        None => {}
                    }
                }
                return Ok(OpenBackend {
                    node: node.clone(),
                    device,
                    allowlist: chosen.allowlist,
                    allowlist_origin: chosen.origin,
                    online,
                    skipped,
                    warnings,
                });
            }
            Err(reason) => skipped.push(Skipped {
                backend: kind,
                reason,
            }),
        }
    }
    let reasons: Vec<String> = skipped
        .iter()
        .map(|s| format!("{}: {}", s.backend, s.reason))
        .collect();
    Err(Error::NoBackend(reasons.join("; ")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node_with_version(version: Option<&str>) -> (tempfile::TempDir, Node) {
        let dir = tempfile::tempdir().unwrap();
        let node = Node::new(dir.path());
        if let Some(v) = version {
            let p = node.path(crate::node::MSR_SAFE_VERSION);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(&p, v).unwrap();
        }
        (dir, node)
    }

    #[test]
    fn batch_is_refused_on_a_2x_module_by_name() {
        let (_d, n) = node_with_version(Some("2.0.4\n"));
        let why = batch_abi_fits(&n).unwrap_err();
        assert!(
            why.contains("msr-safe 2.0.4") && why.contains("--backend safe"),
            "{why}"
        );
        for ok in [Some("1.8.0\n"), Some("1.7\n"), None] {
            let (_d, n) = node_with_version(ok);
            assert_eq!(batch_abi_fits(&n), Ok(()), "{ok:?}");
        }
        let (_d, n) = node_with_version(Some("garbage\n"));
        assert!(batch_abi_fits(&n).unwrap_err().contains("garbage"));
    }
}
