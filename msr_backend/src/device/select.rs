//! Choosing a backend: `auto` tries the batch ioctl, then msr-safe's per-CPU nodes, then the
//! stock msr driver, and keeps the reason each one was skipped (missing module, permissions,
//! CAP_SYS_RAWIO, msr-safe's version, the allowlist) so that `msrsave info` and every error can
//! say why.

use std::fmt;
use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Serialize;

use super::control::{self, ControlError};
use super::percpu::{FsCpuNodes, PerCpuDevice};
use super::{BackendKind, DeviceError, MsrDevice};
use crate::allowlist::{select_allowlist, Allowlist, AllowlistError};
use crate::node::{is_char_device, Node, NodeError, BATCH_NODE};
use crate::types::{BackendChoice, BatchAbi, CpuId, MsrSafeVersion};

/// Linux capability number of CAP_SYS_RAWIO (include/uapi/linux/capability.h).
const CAP_SYS_RAWIO: u32 = 17;

/// What the caller asks for.
#[derive(Clone, Debug, Default)]
pub struct BackendRequest {
    pub choice: BackendChoice,
    /// Use this allowlist instead of the one loaded in msr-safe.
    pub allowlist: Option<PathBuf>,
    /// Where to look for a list for this CPU when the stock driver is used and nothing is loaded.
    pub allowlist_dirs: Vec<PathBuf>,
    /// Whether registers will be written (a read-only caller needs only read access to the
    /// device nodes).
    pub write: bool,
    /// Try every backend, also those after the one chosen (`msrsave info`: say why each other
    /// one would or would not do).
    pub survey: bool,
}

/// Why a backend was not used.
#[derive(Debug, thiserror::Error)]
pub enum SkipReason {
    #[error("{path} does not exist ({hint})")]
    Missing { path: PathBuf, hint: &'static str },
    #[error("{path} is not a character device (an emulated node has no batch ioctl)")]
    NotADevice { path: PathBuf },
    #[error("{path}: permission denied (run as root, or see the udev rules in packaging/ for group access)")]
    Permission { path: PathBuf },
    #[error("{path}: the stock msr driver needs root or CAP_SYS_RAWIO, which this process does not have")]
    NoRawio { path: PathBuf },
    #[error("{path}")]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("msr-safe {version} is loaded: its batch ioctl takes another struct msr_batch_op than the 1.x one this msrsave speaks (2.x changed it), so no batch is sent; the per-CPU nodes (--backend safe) work")]
    BatchAbi { version: MsrSafeVersion },
    #[error("cannot tell msr-safe's batch ABI: {0}")]
    UnknownVersion(String),
    #[error("msr-safe has no allowlist loaded ({path} is empty): load one with `msrsave allowlist load --auto` or pass --allowlist FILE")]
    NoLoadedList { path: PathBuf },
    #[error("cannot read the loaded allowlist")]
    LoadedList(#[source] Box<ControlError>),
    #[error(transparent)]
    Allowlist(#[from] AllowlistError),
    #[error(transparent)]
    Device(#[from] DeviceError),
    #[error(transparent)]
    Node(#[from] NodeError),
}

/// A backend skipped, and why.
#[derive(Debug)]
pub struct Skipped {
    pub backend: BackendKind,
    pub reason: SkipReason,
}

impl Serialize for Skipped {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut st = s.serialize_struct("Skipped", 2)?;
        st.serialize_field("backend", &self.backend)?;
        st.serialize_field("reason", &crate::cause::chain(&self.reason))?;
        st.end()
    }
}

impl schemars::JsonSchema for Skipped {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Skipped".into()
    }
    fn json_schema(g: &mut schemars::SchemaGenerator) -> schemars::Schema {
        let backend = g.subschema_for::<BackendKind>();
        schemars::json_schema!({
            "type": "object",
            "description": "A backend not used, and why.",
            "properties": {"backend": backend, "reason": {"type": "string"}},
            "required": ["backend", "reason"]
        })
    }
}

impl fmt::Display for Skipped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.backend, crate::cause::chain(&self.reason))
    }
}

/// No backend could be used: each one tried, and why it was skipped.
#[derive(Debug, thiserror::Error)]
#[error("no usable MSR backend: {}", skipped.iter().map(|s| s.to_string()).collect::<Vec<_>>().join("; "))]
pub struct NoBackend {
    pub skipped: Vec<Skipped>,
}

/// Why no backend could be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error(transparent)]
    Node(#[from] NodeError),
    #[error(transparent)]
    NoBackend(#[from] NoBackend),
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
    /// With [`BackendRequest::survey`]: the backends after the chosen one that would work too.
    pub also_usable: Vec<BackendKind>,
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

/// Try to open `path` with the access the caller needs.
fn probe_open(path: &Path, write: bool, hint: &'static str) -> Result<(), SkipReason> {
    match OpenOptions::new().read(true).write(write).open(path) {
        Ok(_) => Ok(()),
        Err(e) => Err(match e.raw_os_error() {
            Some(libc::ENOENT) => SkipReason::Missing {
                path: path.to_path_buf(),
                hint,
            },
            Some(libc::EACCES) => SkipReason::Permission {
                path: path.to_path_buf(),
            },
            Some(libc::EPERM) => SkipReason::NoRawio {
                path: path.to_path_buf(),
            },
            _ => SkipReason::Open {
                path: path.to_path_buf(),
                source: e,
            },
        }),
    }
}

/// The allowlist loaded in msr-safe, as the kernel reads it back (one record per read: see
/// [`super::control`]).
pub fn loaded_allowlist(node: &Node) -> Result<Allowlist, SkipReason> {
    let (text, path) =
        control::read_loaded_allowlist(node).map_err(|e| SkipReason::LoadedList(Box::new(e)))?;
    if text.iter().all(|b| b.is_ascii_whitespace()) {
        return Err(SkipReason::NoLoadedList { path });
    }
    Ok(Allowlist::parse_readback(
        &text,
        &path.display().to_string(),
    )?)
}

struct Chosen {
    allowlist: Arc<Allowlist>,
    origin: String,
}

fn allowlist_from_file(path: &Path) -> Result<Chosen, SkipReason> {
    let list = Allowlist::from_file(path)?;
    Ok(Chosen {
        allowlist: Arc::new(list),
        origin: format!("{} (--allowlist)", path.display()),
    })
}

fn loaded(node: &Node) -> Result<Chosen, SkipReason> {
    let list = loaded_allowlist(node)?;
    let origin = format!("{} (loaded in msr-safe)", list.source());
    Ok(Chosen {
        allowlist: Arc::new(list),
        origin,
    })
}

/// The list msr-safe enforces: the loaded one, unless the caller named a file.
fn safe_allowlist(node: &Node, req: &BackendRequest) -> Result<Chosen, SkipReason> {
    match &req.allowlist {
        Some(p) => allowlist_from_file(p),
        None => loaded(node),
    }
}

/// The list our guard enforces on the stock driver: a named file, else msr-safe's loaded list if
/// the module is there too, else the list shipped for this CPU.
fn stock_allowlist(node: &Node, req: &BackendRequest) -> Result<Chosen, SkipReason> {
    if let Some(p) = &req.allowlist {
        return allowlist_from_file(p);
    }
    if node.allowlist_node().exists() {
        if let Ok(c) = loaded(node) {
            return Ok(c);
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

/// Whether the loaded msr-safe speaks the batch ABI of our bindings (1.x). A module too old to
/// report its version (before 1.2) speaks 1.x.
fn batch_abi_fits(node: &Node) -> Result<(), SkipReason> {
    match node.msr_safe() {
        Some(Ok(version)) if version.batch_abi() == BatchAbi::Unsupported => {
            Err(SkipReason::BatchAbi { version })
        }
        Some(Err(e)) => Err(SkipReason::UnknownVersion(e)),
        Some(Ok(_)) | None => Ok(()),
    }
}

type Attempt = Result<(Box<dyn MsrDevice>, Chosen), SkipReason>;

fn try_batch(node: &Node, req: &BackendRequest) -> Attempt {
    let path = node.path(BATCH_NODE);
    if !path.exists() {
        let loaded = node.msr_safe().is_some() || node.allowlist_node().exists();
        return Err(SkipReason::Missing {
            path,
            hint: if loaded {
                "msr-safe is loaded but has no batch node"
            } else {
                "msr-safe is not loaded"
            },
        });
    }
    if !is_char_device(&path) {
        return Err(SkipReason::NotADevice { path });
    }
    batch_abi_fits(node)?;
    // The batch node is opened read-only for writes too (the kernel allows it).
    probe_open(&path, false, "msr-safe is not loaded")?;
    let chosen = safe_allowlist(node, req)?;
    let device = super::batch::BatchDevice::open(&path, chosen.allowlist.clone())?;
    Ok((Box::new(device), chosen))
}

fn try_safe(node: &Node, req: &BackendRequest, probe: CpuId) -> Attempt {
    let path = node.cpu_node(probe, "msr_safe");
    probe_open(&path, req.write, "msr-safe is not loaded")?;
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

fn try_msr(node: &Node, req: &BackendRequest, probe: CpuId) -> Attempt {
    let path = node.cpu_node(probe, "msr");
    if is_char_device(&path) && !has_cap_sys_rawio() {
        return Err(SkipReason::NoRawio { path });
    }
    probe_open(
        &path,
        req.write,
        "load the stock driver with `modprobe msr`",
    )?;
    let chosen = stock_allowlist(node, req)?;
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

/// What an admin should know about writing through the stock driver on this node.
fn stock_driver_warnings(node: &Node) -> Vec<String> {
    let mut warnings = Vec::new();
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
    warnings
}

/// Open the requested backend, or the best available one for `auto`.
pub fn open_backend(node: &Node, req: &BackendRequest) -> Result<OpenBackend, OpenError> {
    let online = node.online_cpus()?;
    let probe = online[0];
    let order: Vec<BackendKind> = match req.choice.kind() {
        Some(k) => vec![k],
        None => BackendKind::ALL.to_vec(),
    };
    let mut skipped = Vec::new();
    let mut chosen: Option<OpenBackend> = None;
    for kind in order {
        let attempt = match kind {
            BackendKind::Batch => try_batch(node, req),
            BackendKind::Safe => try_safe(node, req, probe),
            BackendKind::Msr => try_msr(node, req, probe),
        };
        match (attempt, &mut chosen) {
            (Ok(_), Some(open)) => open.also_usable.push(kind),
            (Ok((device, c)), None) => {
                let warnings = if kind == BackendKind::Msr {
                    stock_driver_warnings(node)
                } else {
                    Vec::new()
                };
                chosen = Some(OpenBackend {
                    node: node.clone(),
                    device,
                    allowlist: c.allowlist,
                    allowlist_origin: c.origin,
                    online: online.clone(),
                    skipped: std::mem::take(&mut skipped),
                    also_usable: Vec::new(),
                    warnings,
                });
                if !req.survey {
                    break;
                }
            }
            (Err(reason), Some(open)) => open.skipped.push(Skipped {
                backend: kind,
                reason,
            }),
            (Err(reason), None) => skipped.push(Skipped {
                backend: kind,
                reason,
            }),
        }
    }
    chosen.ok_or_else(|| NoBackend { skipped }.into())
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
        let why = batch_abi_fits(&n).unwrap_err().to_string();
        assert!(
            why.contains("msr-safe 2.0.4") && why.contains("--backend safe"),
            "{why}"
        );
        for ok in [Some("1.8.0\n"), Some("1.7\n"), None] {
            let (_d, n) = node_with_version(ok);
            assert!(batch_abi_fits(&n).is_ok(), "{ok:?}");
        }
        let (_d, n) = node_with_version(Some("garbage\n"));
        assert!(batch_abi_fits(&n)
            .unwrap_err()
            .to_string()
            .contains("garbage"));
    }
}
