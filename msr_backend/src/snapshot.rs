//! Taking a snapshot: read every allowlisted MSR on every online CPU, in parallel, each register
//! keeping its own outcome (an MSR the CPU does not support reads EIO and the rest goes on).

use std::sync::Arc;

use crate::allowlist::{Allowlist, AllowlistEntry};
use nix::errno::Errno;
use rayon::prelude::*;

use crate::device::{self, MsrDevice, MsrOp, OpError, Parallelism};
use crate::error::Result;
use crate::types::CpuId;

/// Register values of some CPUs for the entries of an allowlist, CPU-major.
#[derive(Clone, Debug)]
pub struct Snapshot {
    pub allowlist: Arc<Allowlist>,
    pub cpus: Vec<CpuId>,
    /// `values[cpu_index * allowlist.len() + entry_index]`.
    pub values: Vec<Result<u64, OpError>>,
}

impl Snapshot {
    /// Read every entry of `allowlist` on every CPU of `cpus`.
    pub fn take(
        device: &dyn MsrDevice,
        allowlist: Arc<Allowlist>,
        cpus: &[CpuId],
    ) -> Result<Snapshot> {
        let values = read_registers(device, allowlist.entries(), cpus)?;
        Ok(Snapshot {
            allowlist,
            cpus: cpus.to_vec(),
            values,
        })
    }

    pub fn entries(&self) -> &[AllowlistEntry] {
        self.allowlist.entries()
    }

    /// Where `cpu`'s row is. `cpus` is sorted: online lists are, and save files are refused
    /// otherwise.
    pub fn cpu_index(&self, cpu: CpuId) -> Option<usize> {
        self.cpus.binary_search(&cpu).ok()
    }

    /// The values of one CPU, in allowlist order.
    pub fn cpu_values(&self, cpu_index: usize) -> &[Result<u64, OpError>] {
        let n = self.allowlist.len();
        &self.values[cpu_index * n..(cpu_index + 1) * n]
    }

    pub fn value(&self, cpu_index: usize, entry_index: usize) -> Result<u64, OpError> {
        self.values[cpu_index * self.allowlist.len() + entry_index]
    }

    /// How many registers could not be read.
    pub fn unreadable(&self) -> usize {
        self.values.iter().filter(|v| v.is_err()).count()
    }
}

/// Read `entries` on each of `cpus`; the result is CPU-major, one outcome per register.
pub fn read_registers(
    device: &dyn MsrDevice,
    entries: &[AllowlistEntry],
    cpus: &[CpuId],
) -> Result<Vec<Result<u64, OpError>>> {
    // An op the device left without a result is a device bug; count it as unreadable.
    let outcome = |op: MsrOp| op.result.unwrap_or(Err(OpError::Errno(Errno::EIO)));
    if device.parallelism() == Parallelism::Batched {
        let mut ops: Vec<MsrOp> = Vec::with_capacity(entries.len() * cpus.len());
        for &cpu in cpus {
            ops.extend(entries.iter().map(|e| MsrOp::read(cpu, e.addr)));
        }
        device::execute(device, &mut ops)?;
        return Ok(ops.into_iter().map(outcome).collect());
    }
    // Per-CPU devices: one worker per CPU builds, runs and stores only its own ops, so memory
    // stays at one CPU's ops per worker.
    let n = entries.len();
    let mut values = vec![Err(OpError::Errno(Errno::EIO)); n * cpus.len()];
    if n == 0 {
        return Ok(values);
    }
    values
        .par_chunks_mut(n)
        .zip(cpus.par_iter())
        .try_for_each(|(out, &cpu)| {
            let mut ops: Vec<MsrOp> = entries.iter().map(|e| MsrOp::read(cpu, e.addr)).collect();
            device::run_on_cpu(device, &mut ops)?;
            for (slot, op) in out.iter_mut().zip(ops) {
                *slot = outcome(op);
            }
            Ok::<(), device::DeviceError>(())
        })?;
    Ok(values)
}
