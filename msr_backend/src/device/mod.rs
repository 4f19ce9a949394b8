//! The device boundary: one interface, "run these reads and writes and give each op its own
//! result", over the three ways a node exposes MSRs (msr-safe's batch ioctl, msr-safe's per-CPU
//! nodes, the stock msr driver) and over emulated register files.
//!
//! Every backend enforces the allowlist and the write masks itself before anything reaches a
//! register, so that a restore can never touch a bit outside the mask or an MSR outside the
//! allowlist, whatever the kernel module below would allow.

pub mod batch;
pub mod control;
pub mod guard;
pub mod percpu;
pub mod select;

use std::fmt;

use nix::errno::Errno;

pub use crate::types::BackendKind;
use crate::types::{CpuId, MsrAddr, WriteMask};

/// What one op asks of a register.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpKind {
    Read,
    /// Write `value` under `mask`: the caller passes the full merged value it wants
    /// (`mask.merge(current, wanted)` from a fresh read, as restore does) and `mask` says which
    /// bits may change. Per-CPU devices re-read and merge under `mask` themselves; the batch
    /// device hands `value` to the kernel, which merges under its own (wider or equal) mask, so
    /// bits in the kernel's mask but not in `mask` come from `value`. The device refuses the op
    /// if `mask` is not within the allowlist's write mask for that MSR.
    Write {
        value: u64,
        mask: WriteMask,
    },
}

/// Why one op failed. Kernel errors keep their errno; refusals by our own guard say so.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpError {
    /// The kernel (or an emulated register file) returned this errno for the op.
    Errno(Errno),
    /// Our guard: the MSR is not in the allowlist in effect.
    NotAllowlisted,
    /// Our guard: the write would change bits outside the allowlist's write mask.
    OutsideMask { bits: u64 },
}

impl OpError {
    /// The errno a caller should treat this as (our refusals map to what msr-safe returns).
    pub fn errno(self) -> Errno {
        match self {
            OpError::Errno(e) => e,
            OpError::NotAllowlisted => Errno::EACCES,
            OpError::OutsideMask { .. } => Errno::EACCES,
        }
    }

    /// Short machine-readable name: the errno symbol (`EIO`, `ENXIO`, ...) or our refusal.
    pub fn code(self) -> String {
        match self {
            OpError::Errno(e) => format!("{e:?}"),
            OpError::NotAllowlisted => "NOT_ALLOWLISTED".to_string(),
            OpError::OutsideMask { .. } => "OUTSIDE_MASK".to_string(),
        }
    }

    /// Parse a code written by [`OpError::code`] back (save files record unreadable registers
    /// by code).
    pub fn from_code(code: &str) -> Option<OpError> {
        match code {
            "NOT_ALLOWLISTED" => Some(OpError::NotAllowlisted),
            "OUTSIDE_MASK" => Some(OpError::OutsideMask { bits: 0 }),
            _ => errno_from_name(code).map(OpError::Errno),
        }
    }
}

impl fmt::Display for OpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OpError::Errno(e) => write!(f, "{e:?}: {}", errno_meaning(*e)),
            OpError::NotAllowlisted => f.write_str("refused: MSR is not in the allowlist"),
            OpError::OutsideMask { bits } => write!(
                f,
                "refused: write would change bits {:#018x} outside the allowlist's write mask",
                bits
            ),
        }
    }
}

/// What an errno means for an MSR op, in the words of msr-safe and the msr driver.
pub fn errno_meaning(e: Errno) -> &'static str {
    match e {
        Errno::EIO => "the CPU does not support this MSR (rdmsr/wrmsr faulted)",
        Errno::ENXIO => "the CPU is offline or does not exist",
        Errno::EACCES => "denied by the msr-safe allowlist, or no permission on the device node",
        Errno::EROFS => "write to an MSR whose write mask is 0",
        Errno::EPERM => {
            "operation not permitted (needs root or CAP_SYS_RAWIO; stock driver writes off or kernel lockdown)"
        }
        Errno::ENOENT => "device node missing (CPU offline or driver not loaded)",
        Errno::EINVAL => "invalid request",
        Errno::E2BIG => "batch too large for the kernel to allocate",
        Errno::ENOPROTOOPT => {
            "msr-safe refused the batch's ABI version: the module speaks another struct msr_batch_op (2.x); use --backend safe"
        }
        _ => e.desc(),
    }
}

fn errno_from_name(name: &str) -> Option<Errno> {
    // The errnos an MSR op can produce, by the name `{:?}` gives them.
    const KNOWN: &[Errno] = &[
        Errno::EIO,
        Errno::ENXIO,
        Errno::EACCES,
        Errno::EROFS,
        Errno::EPERM,
        Errno::ENOENT,
        Errno::EINVAL,
        Errno::E2BIG,
        Errno::ENOPROTOOPT,
        Errno::EFAULT,
        Errno::ENODEV,
        Errno::EBUSY,
        Errno::EAGAIN,
        Errno::ENOMEM,
        Errno::ENOTTY,
        Errno::EBADF,
    ];
    KNOWN.iter().copied().find(|e| format!("{e:?}") == name)
}

/// One read or write of one MSR on one CPU, with its outcome once run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MsrOp {
    pub cpu: CpuId,
    pub addr: MsrAddr,
    pub kind: OpKind,
    /// `None` until run. For a read, the value read; for a write, the value the register held
    /// after the write as far as the device knows (the merged value).
    pub result: Option<Result<u64, OpError>>,
}

impl MsrOp {
    pub fn read(cpu: CpuId, addr: MsrAddr) -> Self {
        MsrOp {
            cpu,
            addr,
            kind: OpKind::Read,
            result: None,
        }
    }

    pub fn write(cpu: CpuId, addr: MsrAddr, value: u64, mask: WriteMask) -> Self {
        MsrOp {
            cpu,
            addr,
            kind: OpKind::Write { value, mask },
            result: None,
        }
    }
}

/// How callers should spread work over the device for speed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Parallelism {
    /// One call per CPU, run in parallel, each worker pinned to the CPU it touches (real per-CPU
    /// kernel nodes: a read from another CPU costs an IPI).
    PerCpuPinned,
    /// One call per CPU, run in parallel, no pinning (emulated register files).
    PerCpu,
    /// Hand all ops to one call; the device fans out itself (the batch ioctl: one IPI per CPU).
    Batched,
}

/// An error that stops a whole call (as opposed to one op).
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error("{path}: {source}")]
    Open {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("batch ioctl on {path} failed before running any op: {errno:?} ({meaning}); first refused op: {detail}")]
    BatchPrecheck {
        path: std::path::PathBuf,
        errno: Errno,
        meaning: &'static str,
        detail: String,
    },
    #[error("batch ioctl on {path}: {errno:?} ({meaning})")]
    Batch {
        path: std::path::PathBuf,
        errno: Errno,
        meaning: &'static str,
    },
}

/// A way to run MSR ops on a node.
pub trait MsrDevice: Send + Sync {
    fn kind(&self) -> BackendKind;

    /// Run `ops` in order and fill in each op's `result`. An error from one op never stops the
    /// others; `Err` means the call as a whole could not run (and then results may be unset).
    fn run(&self, ops: &mut [MsrOp]) -> Result<(), DeviceError>;

    fn parallelism(&self) -> Parallelism;

    /// A short description for logs and `msrsave info` (paths, emulated or not).
    fn describe(&self) -> String;
}

/// Ops per batch ioctl. The kernel kmallocs the whole op array (32 bytes an op); 16384 ops is
/// 512 KiB, well under the ~4 MiB where allocations start failing with E2BIG.
pub const BATCH_CHUNK_OPS: usize = 16384;

/// Run `ops` on `device` as fast as it allows: per-CPU devices get one parallel worker per CPU
/// (pinned to that CPU on real kernel nodes), the batch device gets chunked ioctls.
///
/// `ops` should be grouped by CPU (all ops of a CPU adjacent); order within a CPU is kept.
pub fn execute(device: &dyn MsrDevice, ops: &mut [MsrOp]) -> Result<(), DeviceError> {
    use rayon::prelude::*;
    match device.parallelism() {
        Parallelism::Batched => {
            for chunk in ops.chunks_mut(BATCH_CHUNK_OPS) {
                device.run(chunk)?;
            }
            Ok(())
        }
        _ => {
            let groups: Vec<&mut [MsrOp]> = ops.chunk_by_mut(|a, b| a.cpu == b.cpu).collect();
            groups
                .into_par_iter()
                .try_for_each(|group| run_on_cpu(device, group))
        }
    }
}

/// Run ops that all address one CPU, from a thread pinned to that CPU when the device is a real
/// per-CPU kernel node.
pub fn run_on_cpu(device: &dyn MsrDevice, ops: &mut [MsrOp]) -> Result<(), DeviceError> {
    let Some(first) = ops.first() else {
        return Ok(());
    };
    let _pin =
        (device.parallelism() == Parallelism::PerCpuPinned).then(|| pin::PinGuard::to(first.cpu));
    device.run(ops)
}

mod pin {
    //! Pin the calling thread to one CPU for the duration of a guard: a read of
    //! `/dev/cpu/N/msr` from CPU N is a local rdmsr, from any other CPU an IPI.
    use nix::sched::{sched_getaffinity, sched_setaffinity, CpuSet};
    use nix::unistd::Pid;

    use crate::types::CpuId;

    pub struct PinGuard {
        previous: Option<CpuSet>,
    }

    impl PinGuard {
        /// Pin to `cpu` if allowed (a cpuset may forbid it; then reads still work, remotely).
        pub fn to(cpu: CpuId) -> PinGuard {
            let this = Pid::from_raw(0);
            let previous = sched_getaffinity(this).ok();
            let mut set = CpuSet::new();
            let pinned = set.set(cpu.0 as usize).is_ok() && sched_setaffinity(this, &set).is_ok();
            PinGuard {
                previous: if pinned { previous } else { None },
            }
        }
    }

    impl Drop for PinGuard {
        fn drop(&mut self) {
            if let Some(prev) = &self.previous {
                // Best effort: a rayon worker left pinned only costs speed, never correctness.
                let _ = sched_setaffinity(Pid::from_raw(0), prev);
            }
        }
    }
}
