//! Taking a snapshot: read every allowlisted MSR on every online CPU, in parallel, each register
//! keeping its own outcome (an MSR the CPU does not support reads EIO and the rest goes on).
//!
//! A snapshot holds 8 bytes per register plus the few that could not be read: at 4096 CPUs x
//! 399 MSRs that is 13 MB, the same for the snapshot a restore loads and the one it reads now.

use std::sync::Arc;

use nix::errno::Errno;
use rayon::prelude::*;

use crate::allowlist::{Allowlist, AllowlistEntry};
use crate::device::{self, DeviceError, MsrDevice, MsrOp, OpError, Parallelism, BATCH_CHUNK_OPS};
use crate::types::CpuId;

/// Register values of some CPUs for the entries of an allowlist, CPU-major.
#[derive(Clone, Debug)]
pub struct Snapshot {
    pub allowlist: Arc<Allowlist>,
    pub cpus: Vec<CpuId>,
    /// `values[cpu_index * allowlist.len() + entry_index]`; 0 where the register is unreadable.
    values: Vec<u64>,
    /// The unreadable registers, by index into `values`, sorted.
    errors: Vec<(u32, OpError)>,
}

/// An op the device left without a result is a device bug; count it as unreadable.
const NO_RESULT: OpError = OpError::Errno(Errno::EIO);

impl Snapshot {
    /// A snapshot from one outcome per register, CPU-major.
    ///
    /// # Panics
    /// If `outcomes` does not hold exactly `cpus.len() * allowlist.len()` items (a caller's bug).
    pub fn from_outcomes(
        allowlist: Arc<Allowlist>,
        cpus: Vec<CpuId>,
        outcomes: impl IntoIterator<Item = Result<u64, OpError>>,
    ) -> Snapshot {
        let n = cpus.len() * allowlist.len();
        let mut values = Vec::with_capacity(n);
        let mut errors = Vec::new();
        for (i, o) in outcomes.into_iter().enumerate() {
            match o {
                Ok(v) => values.push(v),
                Err(e) => {
                    errors.push((index_u32(i), e));
                    values.push(0);
                }
            }
        }
        assert_eq!(values.len(), n, "one outcome per register");
        Snapshot {
            allowlist,
            cpus,
            values,
            errors,
        }
    }

    /// Read every entry of `allowlist` on every CPU of `cpus`.
    pub fn take(
        device: &dyn MsrDevice,
        allowlist: Arc<Allowlist>,
        cpus: &[CpuId],
    ) -> Result<Snapshot, DeviceError> {
        let mut snap = Snapshot {
            values: vec![0; cpus.len() * allowlist.len()],
            errors: Vec::new(),
            allowlist,
            cpus: cpus.to_vec(),
        };
        snap.read_all(device)?;
        Ok(snap)
    }

    fn read_all(&mut self, device: &dyn MsrDevice) -> Result<(), DeviceError> {
        let n = self.allowlist.len();
        if n == 0 || self.cpus.is_empty() {
            return Ok(());
        }
        let entries = self.allowlist.entries();
        let cpus = &self.cpus;
        if device.parallelism() == Parallelism::Batched {
            // One chunk of ops at a time (the kernel's array), written straight into the rows.
            let total = cpus.len() * n;
            let mut ops: Vec<MsrOp> = Vec::with_capacity(BATCH_CHUNK_OPS.min(total));
            let mut start = 0;
            while start < total {
                let end = (start + BATCH_CHUNK_OPS).min(total);
                ops.clear();
                ops.extend((start..end).map(|i| MsrOp::read(cpus[i / n], entries[i % n].addr)));
                device::execute(device, &mut ops)?;
                for (i, op) in (start..end).zip(&ops) {
                    match op.result.unwrap_or(Err(NO_RESULT)) {
                        Ok(v) => self.values[i] = v,
                        Err(e) => self.errors.push((index_u32(i), e)),
                    }
                }
                start = end;
            }
            return Ok(());
        }
        // Per-CPU devices: one worker per CPU builds, runs and stores only its own ops.
        let row_errors: Vec<Vec<(u32, OpError)>> = self
            .values
            .par_chunks_mut(n)
            .zip(cpus.par_iter())
            .enumerate()
            .map(|(ci, (row, &cpu))| {
                let mut ops: Vec<MsrOp> =
                    entries.iter().map(|e| MsrOp::read(cpu, e.addr)).collect();
                device::run_on_cpu(device, &mut ops)?;
                let mut errs = Vec::new();
                for (ei, (slot, op)) in row.iter_mut().zip(&ops).enumerate() {
                    match op.result.unwrap_or(Err(NO_RESULT)) {
                        Ok(v) => *slot = v,
                        Err(e) => errs.push((index_u32(ci * n + ei), e)),
                    }
                }
                Ok(errs)
            })
            .collect::<Result<_, DeviceError>>()?;
        self.errors = row_errors.into_iter().flatten().collect();
        Ok(())
    }

    pub fn entries(&self) -> &[AllowlistEntry] {
        self.allowlist.entries()
    }

    /// How many registers (CPUs x MSRs).
    pub fn len(&self) -> usize {
        self.values.len()
    }

    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// Where `cpu`'s row is. `cpus` is sorted: online lists are, and save files are refused
    /// otherwise.
    pub fn cpu_index(&self, cpu: CpuId) -> Option<usize> {
        self.cpus.binary_search(&cpu).ok()
    }

    /// The outcome of one register.
    pub fn value(&self, cpu_index: usize, entry_index: usize) -> Result<u64, OpError> {
        let i = cpu_index * self.allowlist.len() + entry_index;
        self.outcome_at(i)
    }

    fn outcome_at(&self, i: usize) -> Result<u64, OpError> {
        if !self.errors.is_empty() {
            if let Ok(k) = self.errors.binary_search_by_key(&index_u32(i), |e| e.0) {
                return Err(self.errors[k].1);
            }
        }
        Ok(self.values[i])
    }

    /// The outcomes of one CPU, in allowlist order.
    pub fn cpu_values(&self, cpu_index: usize) -> impl Iterator<Item = Result<u64, OpError>> + '_ {
        let n = self.allowlist.len();
        (cpu_index * n..(cpu_index + 1) * n).map(move |i| self.outcome_at(i))
    }

    /// Every outcome, CPU-major.
    pub fn outcomes(&self) -> Vec<Result<u64, OpError>> {
        (0..self.values.len()).map(|i| self.outcome_at(i)).collect()
    }

    /// The raw values, CPU-major (0 where unreadable: see [`Snapshot::errors`]).
    pub fn raw_values(&self) -> &[u64] {
        &self.values
    }

    /// The unreadable registers, as (index into the CPU-major values, error), sorted.
    pub fn errors(&self) -> &[(u32, OpError)] {
        &self.errors
    }

    /// How many registers could not be read.
    pub fn unreadable(&self) -> usize {
        self.errors.len()
    }

    /// A snapshot from raw parts (save-file loaders).
    ///
    /// # Panics
    /// If the sizes do not match or `errors` is not sorted and in range (a loader's bug: loaders
    /// check their input first).
    pub(crate) fn from_parts(
        allowlist: Arc<Allowlist>,
        cpus: Vec<CpuId>,
        values: Vec<u64>,
        errors: Vec<(u32, OpError)>,
    ) -> Snapshot {
        assert_eq!(values.len(), cpus.len() * allowlist.len());
        assert!(errors.windows(2).all(|w| w[0].0 < w[1].0));
        assert!(errors.last().is_none_or(|e| (e.0 as usize) < values.len()));
        Snapshot {
            allowlist,
            cpus,
            values,
            errors,
        }
    }
}

/// Register indexes fit in u32: at most `MAX_CPUS` (8192) x 32768 allowlist entries = 2^28.
fn index_u32(i: usize) -> u32 {
    u32::try_from(i).unwrap_or(u32::MAX)
}
