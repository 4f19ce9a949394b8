//! Per-CPU device nodes: msr-safe's `/dev/cpu/N/msr_safe`, the stock `/dev/cpu/N/msr`, and
//! emulated register files at the same paths.
//!
//! The file type decides the addressing: a character device is the kernel's (offset = MSR
//! address), a regular file is an emulated register file (offset = 8 x address, since adjacent
//! addresses would overlap in a file). Both are read and written with pread/pwrite of 8 bytes.
//!
//! Our guard runs before every op on every flavour: an MSR outside the allowlist is never
//! touched, and a write only changes bits inside both the caller's mask and the allowlist's.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileTypeExt;
use std::sync::Arc;

use nix::errno::Errno;

use super::guard::{CheckedKind, Guard};
use super::{BackendKind, DeviceError, MsrDevice, MsrOp, OpError, OpKind, Parallelism};
use crate::allowlist::Allowlist;
use crate::emulate::Sharing;
use crate::node::Node;
use crate::types::{CpuId, MsrAddr};

/// Size of one register in every device and register file.
pub const REGISTER_BYTES: usize = 8;

/// One CPU's device node, opened.
pub trait RegisterAccess: Send {
    fn read(&mut self, addr: MsrAddr) -> Result<u64, Errno>;
    fn write(&mut self, addr: MsrAddr, value: u64) -> Result<(), Errno>;
}

/// Opens the device node of a CPU. The real one opens files under a node's root; test doubles
/// stand in for the kernel where files cannot (EIO, EACCES, ENXIO).
pub trait CpuNodes: Send + Sync {
    fn open(&self, cpu: CpuId, writable: bool) -> Result<Box<dyn RegisterAccess>, Errno>;
    /// True when the nodes are the kernel's (reads should run pinned to their CPU).
    fn kernel_devices(&self) -> bool;
    fn describe(&self) -> String;
}

/// How a node file maps an MSR address to a byte offset.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Addressing {
    /// A kernel character device: offset = address.
    Kernel,
    /// An emulated register file: offset = 8 x address.
    Emulated,
}

impl Addressing {
    pub fn offset(self, addr: MsrAddr) -> i64 {
        match self {
            Addressing::Kernel => addr.0 as i64,
            Addressing::Emulated => addr.emulated_offset() as i64,
        }
    }

    /// Tell the two apart by file type.
    pub fn of(file: &File) -> Result<Addressing, Errno> {
        let ft = file.metadata().map_err(io_errno)?.file_type();
        if ft.is_char_device() {
            Ok(Addressing::Kernel)
        } else if ft.is_file() {
            Ok(Addressing::Emulated)
        } else {
            Err(Errno::ENODEV)
        }
    }
}

fn io_errno(e: std::io::Error) -> Errno {
    e.raw_os_error().map_or(Errno::EIO, Errno::from_raw)
}

/// A per-CPU node file, kernel device or emulated.
pub struct NodeFile {
    file: File,
    addressing: Addressing,
}

impl NodeFile {
    pub fn open(path: &std::path::Path, writable: bool) -> Result<NodeFile, Errno> {
        let file = OpenOptions::new()
            .read(true)
            .write(writable)
            .open(path)
            .map_err(io_errno)?;
        let addressing = Addressing::of(&file)?;
        Ok(NodeFile { file, addressing })
    }
}

impl RegisterAccess for NodeFile {
    fn read(&mut self, addr: MsrAddr) -> Result<u64, Errno> {
        let mut buf = [0u8; REGISTER_BYTES];
        let n = nix::sys::uio::pread(&self.file, &mut buf, self.addressing.offset(addr))?;
        match (n, self.addressing) {
            (REGISTER_BYTES, _) => Ok(u64::from_le_bytes(buf)),
            // Past the end of a sparse register file: a register never written reads 0.
            (0, Addressing::Emulated) => Ok(0),
            _ => Err(Errno::EIO),
        }
    }

    fn write(&mut self, addr: MsrAddr, value: u64) -> Result<(), Errno> {
        self.write_shared(addr, value)
    }
}

impl NodeFile {
    /// A write through a shared handle (pwrite needs no exclusive access).
    fn write_shared(&self, addr: MsrAddr, value: u64) -> Result<(), Errno> {
        let n = nix::sys::uio::pwrite(
            &self.file,
            &value.to_le_bytes(),
            self.addressing.offset(addr),
        )?;
        if n == REGISTER_BYTES {
            Ok(())
        } else {
            Err(Errno::EIO)
        }
    }
}

/// The device nodes `/dev/cpu/N/<leaf>` of a node.
pub struct FsCpuNodes {
    node: Node,
    leaf: &'static str,
    kernel: bool,
    /// An emulated node's shared registers (see [`crate::emulate`]).
    sharing: Option<Arc<Siblings>>,
}

/// What a write to a shared register of an emulated node needs: which CPUs share it, and their
/// register files, opened once (a restore writes a package register to every file of the
/// package).
struct Siblings {
    sharing: Sharing,
    node: Node,
    leaf: &'static str,
    files: std::sync::Mutex<std::collections::HashMap<CpuId, Arc<NodeFile>>>,
}

impl Siblings {
    /// The register files of `cpus`, opened for writing (once per device).
    fn files(&self, cpus: &[CpuId]) -> Result<Vec<Arc<NodeFile>>, Errno> {
        let mut files = self
            .files
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        cpus.iter()
            .map(|&cpu| {
                if let Some(f) = files.get(&cpu) {
                    return Ok(Arc::clone(f));
                }
                let f = Arc::new(NodeFile::open(&self.node.cpu_node(cpu, self.leaf), true)?);
                files.insert(cpu, Arc::clone(&f));
                Ok(f)
            })
            .collect()
    }
}

impl FsCpuNodes {
    /// `leaf` is `msr_safe` or `msr`. Whether the nodes are kernel devices is decided from the
    /// first CPU's node.
    pub fn new(node: Node, leaf: &'static str, probe_cpu: CpuId) -> FsCpuNodes {
        let kernel = crate::node::is_char_device(&node.cpu_node(probe_cpu, leaf));
        let sharing = if kernel {
            None
        } else {
            Sharing::load(&node).map(|sharing| {
                Arc::new(Siblings {
                    sharing,
                    node: node.clone(),
                    leaf,
                    files: Default::default(),
                })
            })
        };
        FsCpuNodes {
            node,
            leaf,
            kernel,
            sharing,
        }
    }
}

/// An emulated register file whose shared registers are written into the files of the CPUs
/// that share them too, as the hardware holds one register for them.
struct SharedFile {
    file: NodeFile,
    cpu: CpuId,
    siblings: Arc<Siblings>,
}

impl RegisterAccess for SharedFile {
    fn read(&mut self, addr: MsrAddr) -> Result<u64, Errno> {
        self.file.read(addr)
    }

    fn write(&mut self, addr: MsrAddr, value: u64) -> Result<(), Errno> {
        self.file.write(addr, value)?;
        let others = self.siblings.sharing.siblings(self.cpu, addr);
        if others.is_empty() {
            return Ok(());
        }
        for f in self.siblings.files(&others)? {
            f.write_shared(addr, value)?;
        }
        Ok(())
    }
}

impl CpuNodes for FsCpuNodes {
    fn open(&self, cpu: CpuId, writable: bool) -> Result<Box<dyn RegisterAccess>, Errno> {
        let file = NodeFile::open(&self.node.cpu_node(cpu, self.leaf), writable)?;
        Ok(match &self.sharing {
            Some(sharing) if writable && file.addressing == Addressing::Emulated => {
                Box::new(SharedFile {
                    file,
                    cpu,
                    siblings: Arc::clone(sharing),
                })
            }
            _ => Box::new(file),
        })
    }

    fn kernel_devices(&self) -> bool {
        self.kernel
    }

    fn describe(&self) -> String {
        let kind = if self.kernel {
            "kernel device nodes"
        } else {
            "emulated register files"
        };
        format!(
            "{} ({kind})",
            self.node
                .path(&format!("/dev/cpu/N/{}", self.leaf))
                .display()
        )
    }
}

/// A device over per-CPU nodes, with our allowlist guard in front of every op.
pub struct PerCpuDevice<N: CpuNodes> {
    nodes: N,
    kind: BackendKind,
    guard: Guard,
}

impl<N: CpuNodes> PerCpuDevice<N> {
    pub fn new(nodes: N, kind: BackendKind, allowlist: Arc<Allowlist>) -> Self {
        PerCpuDevice {
            nodes,
            kind,
            guard: Guard::new(allowlist),
        }
    }

    fn run_cpu(&self, cpu: CpuId, ops: &mut [MsrOp]) {
        let writable = ops.iter().any(|o| matches!(o.kind, OpKind::Write { .. }));
        let mut access = match self.nodes.open(cpu, writable) {
            Ok(a) => a,
            Err(e) => {
                for op in ops.iter_mut() {
                    op.result = Some(Err(OpError::Errno(e)));
                }
                return;
            }
        };
        for op in ops.iter_mut() {
            op.result = Some(self.run_op(access.as_mut(), op));
        }
    }

    fn run_op(&self, access: &mut dyn RegisterAccess, op: &MsrOp) -> Result<u64, OpError> {
        let op = self.guard.check(op)?;
        match op.kind() {
            CheckedKind::Read => access.read(op.addr()).map_err(OpError::Errno),
            CheckedKind::Write { value, mask } => {
                // msr_safe and the stock driver take a whole register: read, merge, write.
                let current = access.read(op.addr()).map_err(OpError::Errno)?;
                let merged = mask.merge(current, value);
                access.write(op.addr(), merged).map_err(OpError::Errno)?;
                Ok(merged)
            }
        }
    }
}

impl<N: CpuNodes> MsrDevice for PerCpuDevice<N> {
    fn kind(&self) -> BackendKind {
        self.kind
    }

    fn run(&self, ops: &mut [MsrOp]) -> Result<(), DeviceError> {
        for group in ops.chunk_by_mut(|a, b| a.cpu == b.cpu) {
            let cpu = group[0].cpu;
            self.run_cpu(cpu, group);
        }
        Ok(())
    }

    fn parallelism(&self) -> Parallelism {
        if self.nodes.kernel_devices() {
            Parallelism::PerCpuPinned
        } else {
            Parallelism::PerCpu
        }
    }

    fn describe(&self) -> String {
        self.nodes.describe()
    }
}
