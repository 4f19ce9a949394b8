//! A fake machine for tests, behind the `test-doubles` feature: one shared state (CPUs online,
//! registers, the allowlist loaded in msr-safe) seen through the kernel interfaces this library
//! uses, each following the documented kernel behaviour and what the real components were seen
//! to do (tests/msr_safe/ runs the same code against the real module):
//!
//! - [`KernelBatch`] implements [`BatchIoctl`]: msr-safe's `X86_IOC_MSR_BATCH` with its
//!   all-or-nothing pre-check, its run phase and its copy-back and return-value rules.
//! - [`KernelCpuNodes`] implements [`CpuNodes`]: `/dev/cpu/N/msr_safe` ([`Flavour::MsrSafe`]) or
//!   the stock `/dev/cpu/N/msr` ([`Flavour::StockMsr`]), with hotplug, node modes and injectable
//!   errors.
//! - [`AllowlistNode`] and [`VersionNode`]: msr-safe's control nodes, one record per read, with
//!   the permission check of their device node modes ([`NodeMode`], [`Caller`]).
//!
//! [`FakeMachine::batch`], [`FakeMachine::cpu_nodes`] and [`FakeMachine::allowlist_node`] are
//! views of the same machine: a list loaded through the allowlist node is the one the batch
//! ioctl and the per-CPU nodes enforce, a write through one is read back through the other. Each
//! view is a cheap handle: clone one into the device under test and keep the other to change the
//! machine between calls and to assert on what reached the "kernel".
//!
//! A register never set reads 0. An MSR marked unsupported faults on rdmsr (and so on every write
//! too, since msr-safe reads before it writes): `EIO`, nothing stored. Bits marked locked
//! ([`FakeMachine::lock_bits`]) ignore writes, as firmware-locked bits do: the write succeeds and
//! the bits keep their value. A register told shared ([`FakeMachine::share`],
//! [`FakeMachine::share_as`]) is one register for each group of CPUs, as a package or core
//! register is on the hardware: a write from one CPU of the group is what all of them read.

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use nix::errno::Errno;

use crate::allowlist::{Allowlist, AllowlistEntry};
use crate::device::batch::{msr_batch_op, op_errno, BatchIoctl, MSR_BATCH_ABI_VERSION};
use crate::device::percpu::{CpuNodes, RegisterAccess};
use crate::msrs::lock::Lock;
use crate::msrs::scope::{scope_of, Scope};
use crate::topology::Topology;
use crate::types::{CpuId, CpuIdentity, MsrAddr, WriteMask};

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn neg(e: Errno) -> i32 {
    -(e as i32)
}

/// One write that reached the machine's "kernel".
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WriteRecord {
    pub cpu: CpuId,
    pub addr: MsrAddr,
    /// The value handed to the kernel (`msrdata` of a batch op, the 8 bytes of a pwrite).
    pub value: u64,
    /// What the register held before, if it could be read.
    pub before: Option<u64>,
    /// What the register holds after (`Ok`), or the errno the write got.
    pub result: Result<u64, Errno>,
}

/// Who opens a node: a uid and its groups. Root passes every permission check
/// (CAP_DAC_OVERRIDE), as in the kernel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    pub uid: u32,
    pub gids: Vec<u32>,
}

impl Caller {
    pub const ROOT: Caller = Caller {
        uid: 0,
        gids: Vec::new(),
    };

    pub fn user(uid: u32, gids: &[u32]) -> Caller {
        Caller {
            uid,
            gids: gids.to_vec(),
        }
    }
}

/// A device node's owner, group and permission bits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NodeMode {
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
}

impl NodeMode {
    /// What devtmpfs gives msr-safe's nodes: 0600 root:root (0400 for the version node).
    pub const ROOT_ONLY: NodeMode = NodeMode {
        mode: 0o600,
        uid: 0,
        gid: 0,
    };

    /// The permission check of an open for reading and, with `write`, writing.
    pub fn permits(self, caller: &Caller, write: bool) -> Result<(), Errno> {
        if caller.uid == 0 {
            return Ok(());
        }
        let bits = if caller.uid == self.uid {
            self.mode >> 6
        } else if caller.gids.contains(&self.gid) {
            self.mode >> 3
        } else {
            self.mode
        } & 0o7;
        let need = if write { 0o6 } else { 0o4 };
        if bits & need == need {
            Ok(())
        } else {
            Err(Errno::EACCES)
        }
    }
}

/// Which driver per-CPU nodes belong to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flavour {
    /// `/dev/cpu/N/msr_safe`: the loaded allowlist applies (read not listed `EACCES`, write with
    /// mask 0 `EACCES`) and a write is read + `(value & mask) | (old & ~mask)` + write.
    MsrSafe,
    /// `/dev/cpu/N/msr`: no allowlist; a write stores the whole value.
    StockMsr,
}

/// The batch ioctl's knobs and records.
#[derive(Debug, Default)]
struct BatchState {
    max_ops: Option<usize>,
    /// msr-safe's major version: from 2, a 1.x array is refused with ENOPROTOOPT.
    abi_major: u32,
    fail_next: VecDeque<Errno>,
    calls: usize,
    received: Vec<Vec<msr_batch_op>>,
}

/// The per-CPU nodes' knobs and records.
#[derive(Debug)]
struct NodesState {
    offline_open_errno: Errno,
    open_error: Option<Errno>,
    writable_open_error: Option<Errno>,
    write_error: Option<Errno>,
    /// CPU -> ops left before it goes offline.
    offline_after: HashMap<CpuId, usize>,
    kernel_devices: bool,
    mode: NodeMode,
    caller: Caller,
    opens: Vec<(CpuId, bool)>,
    reads: Vec<(CpuId, MsrAddr)>,
}

#[derive(Debug)]
struct MachineState {
    /// CPUs numbered at or above this are out of range (`nr_cpu_ids`).
    possible: u32,
    online: BTreeSet<CpuId>,
    /// The list loaded in msr-safe, in file order, as the kernel keeps it (64-bit addresses).
    loaded: Vec<(u64, u64)>,
    /// The same, by address.
    masks: HashMap<MsrAddr, WriteMask>,
    allowlist_mode: NodeMode,
    values: HashMap<(CpuId, MsrAddr), u64>,
    /// Shared registers: per MSR, each CPU's group, named by the CPU whose slot holds it.
    shared: HashMap<MsrAddr, HashMap<CpuId, CpuId>>,
    /// `(None, addr)`: unsupported on every CPU; `(Some(cpu), addr)`: on that CPU only.
    unsupported: HashSet<(Option<CpuId>, MsrAddr)>,
    /// Bits that ignore writes, per MSR.
    locked: HashMap<MsrAddr, u64>,
    /// Lock bits: while set in a register, the bits they lock ignore writes.
    locks: HashMap<MsrAddr, Lock>,
    batch: BatchState,
    nodes: NodesState,
    writes: Vec<WriteRecord>,
}

impl MachineState {
    fn supported(&self, cpu: CpuId, addr: MsrAddr) -> bool {
        !self.unsupported.contains(&(None, addr)) && !self.unsupported.contains(&(Some(cpu), addr))
    }

    /// rdmsr_safe: EIO on a fault.
    fn rdmsr(&self, cpu: CpuId, addr: MsrAddr) -> Result<u64, Errno> {
        if self.supported(cpu, addr) {
            Ok(self.get(cpu, addr))
        } else {
            Err(Errno::EIO)
        }
    }

    /// The CPU whose slot holds `cpu`'s register `addr` (itself unless the register is shared).
    fn holder(&self, cpu: CpuId, addr: MsrAddr) -> CpuId {
        self.shared
            .get(&addr)
            .and_then(|g| g.get(&cpu))
            .copied()
            .unwrap_or(cpu)
    }

    fn get(&self, cpu: CpuId, addr: MsrAddr) -> u64 {
        let cpu = self.holder(cpu, addr);
        self.values.get(&(cpu, addr)).copied().unwrap_or(0)
    }

    fn set(&mut self, cpu: CpuId, addr: MsrAddr, value: u64) {
        let cpu = self.holder(cpu, addr);
        self.values.insert((cpu, addr), value);
    }

    /// wrmsr of `new` over `old`: locked bits keep their value.
    fn wrmsr(&mut self, cpu: CpuId, addr: MsrAddr, old: u64, new: u64) -> u64 {
        let locked = self.locked.get(&addr).copied().unwrap_or(0)
            | self.locks.get(&addr).map_or(0, |l| l.held(old));
        let stored = (new & !locked) | (old & locked);
        self.set(cpu, addr, stored);
        stored
    }

    fn set_loaded(&mut self, entries: Vec<(u64, u64)>) {
        self.masks = entries
            .iter()
            .filter_map(|&(a, m)| u32::try_from(a).ok().map(|a| (MsrAddr(a), WriteMask(m))))
            .collect();
        self.loaded = entries;
    }

    fn set_online(&mut self, cpu: CpuId, online: bool) {
        if online {
            self.online.insert(cpu);
        } else {
            self.online.remove(&cpu);
        }
    }

    // -------------------------------------------------------------------------- batch ioctl

    /// msrbatch_apply_allowlist: every op's `err` is cleared; an allowlisted op on an online CPU
    /// gets its `wmask` (0 for a read-only MSR, whose write is then EROFS); offline CPUs and
    /// MSRs not listed keep the `wmask` they were sent with.
    fn precheck(&self, op: &mut msr_batch_op) -> Result<(), Errno> {
        op.err = 0;
        let cpu = CpuId(u32::from(op.cpu));
        if cpu.0 >= self.possible || !self.online.contains(&cpu) {
            return Err(Errno::ENXIO);
        }
        let m = self.masks.get(&MsrAddr(op.msr)).ok_or(Errno::EACCES)?;
        op.wmask = m.0;
        if op.isrdmsr == 0 && !m.is_writable() {
            return Err(Errno::EROFS);
        }
        Ok(())
    }

    fn apply(&mut self, op: &mut msr_batch_op) {
        let cpu = CpuId(u32::from(op.cpu));
        let addr = MsrAddr(op.msr);
        let wmask = self.masks.get(&addr).copied().unwrap_or_default();
        op.wmask = wmask.0;
        let old = match self.rdmsr(cpu, addr) {
            Ok(v) => v,
            Err(e) => {
                op.err = neg(e);
                if op.isrdmsr == 0 {
                    self.writes.push(WriteRecord {
                        cpu,
                        addr,
                        value: op.msrdata,
                        before: None,
                        result: Err(e),
                    });
                }
                return;
            }
        };
        op.err = 0;
        if op.isrdmsr != 0 {
            op.msrdata = old;
        } else {
            let new = self.wrmsr(cpu, addr, old, (op.msrdata & wmask.0) | (old & !wmask.0));
            self.writes.push(WriteRecord {
                cpu,
                addr,
                value: op.msrdata,
                before: Some(old),
                result: Ok(new),
            });
        }
    }

    fn msr_batch(&mut self, ops: &mut [msr_batch_op]) -> Result<(), Errno> {
        self.batch.calls += 1;
        self.batch.received.push(ops.to_vec());
        if let Some(e) = self.batch.fail_next.pop_front() {
            return Err(e);
        }
        if self.batch.abi_major != MSR_BATCH_ABI_VERSION >> 16 {
            return Err(Errno::ENOPROTOOPT);
        }
        if ops.is_empty() {
            return Err(Errno::EINVAL);
        }
        if self.batch.max_ops.is_some_and(|max| ops.len() > max) {
            return Err(Errno::E2BIG);
        }
        let mut refused = None;
        for op in ops.iter_mut() {
            if let Err(e) = self.precheck(op) {
                op.err = neg(e);
                refused = Some(e);
            }
        }
        if let Some(e) = refused {
            return Err(e);
        }
        for op in ops.iter_mut() {
            self.apply(op);
        }
        match ops.iter().find(|o| o.err != 0) {
            Some(o) => Err(op_errno(o.err)),
            None => Ok(()),
        }
    }

    // -------------------------------------------------------------------------- per-CPU nodes

    /// Count one op on `cpu` towards a scheduled hotplug; then tell whether the CPU is online.
    fn tick_online(&mut self, cpu: CpuId) -> bool {
        if let Some(left) = self.nodes.offline_after.get_mut(&cpu) {
            if *left == 0 {
                self.nodes.offline_after.remove(&cpu);
                self.online.remove(&cpu);
            } else {
                *left -= 1;
            }
        }
        self.online.contains(&cpu)
    }

    fn node_read(&mut self, flavour: Flavour, cpu: CpuId, addr: MsrAddr) -> Result<u64, Errno> {
        self.nodes.reads.push((cpu, addr));
        if !self.tick_online(cpu) {
            return Err(Errno::ENXIO);
        }
        if flavour == Flavour::MsrSafe && !self.masks.contains_key(&addr) {
            return Err(Errno::EACCES);
        }
        self.rdmsr(cpu, addr)
    }

    fn node_write(
        &mut self,
        flavour: Flavour,
        cpu: CpuId,
        addr: MsrAddr,
        value: u64,
    ) -> Result<(), Errno> {
        let before = self.rdmsr(cpu, addr).ok();
        let result = self.try_node_write(flavour, cpu, addr, value);
        self.writes.push(WriteRecord {
            cpu,
            addr,
            value,
            before,
            result,
        });
        result.map(drop)
    }

    fn try_node_write(
        &mut self,
        flavour: Flavour,
        cpu: CpuId,
        addr: MsrAddr,
        value: u64,
    ) -> Result<u64, Errno> {
        if !self.tick_online(cpu) {
            return Err(Errno::ENXIO);
        }
        if let Some(e) = self.nodes.write_error {
            return Err(e);
        }
        let mask = match flavour {
            Flavour::StockMsr => WriteMask::ALL,
            Flavour::MsrSafe => match self.masks.get(&addr) {
                Some(m) if m.is_writable() => *m,
                _ => return Err(Errno::EACCES),
            },
        };
        let old = self.rdmsr(cpu, addr)?;
        Ok(self.wrmsr(cpu, addr, old, mask.merge(old, value)))
    }
}

/// A machine: CPUs, registers, msr-safe's loaded list, and every interface to them.
#[derive(Clone, Debug)]
pub struct FakeMachine {
    state: Arc<Mutex<MachineState>>,
}

impl FakeMachine {
    /// These CPUs online (and `nr_cpu_ids` one above the highest), no list loaded, every
    /// register 0, msr-safe 1.x.
    pub fn new(online: impl IntoIterator<Item = u32>) -> FakeMachine {
        let online: BTreeSet<CpuId> = online.into_iter().map(CpuId).collect();
        let possible = online.iter().next_back().map_or(0, |c| c.0 + 1);
        FakeMachine {
            state: Arc::new(Mutex::new(MachineState {
                possible,
                online,
                loaded: Vec::new(),
                masks: HashMap::new(),
                allowlist_mode: NodeMode::ROOT_ONLY,
                values: HashMap::new(),
                shared: HashMap::new(),
                unsupported: HashSet::new(),
                locked: HashMap::new(),
                locks: HashMap::new(),
                batch: BatchState {
                    abi_major: 1,
                    ..BatchState::default()
                },
                nodes: NodesState {
                    offline_open_errno: Errno::ENXIO,
                    open_error: None,
                    writable_open_error: None,
                    write_error: None,
                    offline_after: HashMap::new(),
                    kernel_devices: false,
                    mode: NodeMode::ROOT_ONLY,
                    caller: Caller::ROOT,
                    opens: Vec::new(),
                    reads: Vec::new(),
                },
                writes: Vec::new(),
            })),
        }
    }

    fn with<T>(&self, f: impl FnOnce(&mut MachineState) -> T) -> T {
        f(&mut lock(&self.state))
    }

    /// msr-safe's batch ioctl on this machine.
    pub fn batch(&self) -> KernelBatch {
        KernelBatch {
            machine: self.clone(),
            path: PathBuf::from("/dev/cpu/msr_batch (test double)"),
        }
    }

    /// The per-CPU nodes of `flavour` on this machine.
    pub fn cpu_nodes(&self, flavour: Flavour) -> KernelCpuNodes {
        KernelCpuNodes {
            machine: self.clone(),
            flavour,
        }
    }

    /// msr-safe's `/dev/cpu/msr_allowlist` on this machine.
    pub fn allowlist_node(&self) -> AllowlistNode {
        AllowlistNode {
            machine: self.clone(),
        }
    }

    /// Load `list` into msr-safe (as a write of its read-back form would).
    pub fn load_allowlist(&self, list: &Allowlist) {
        let entries = list
            .entries()
            .iter()
            .map(|e| (u64::from(e.addr.0), e.mask.0))
            .collect();
        self.with(|s| s.set_loaded(entries));
    }

    /// Add one entry to the loaded list.
    pub fn allow(&self, addr: MsrAddr, mask: WriteMask) {
        self.with(|s| {
            let mut e = std::mem::take(&mut s.loaded);
            e.retain(|&(a, _)| a != u64::from(addr.0));
            e.push((u64::from(addr.0), mask.0));
            s.set_loaded(e);
        });
    }

    /// Drop one MSR from the loaded list.
    pub fn disallow(&self, addr: MsrAddr) {
        self.with(|s| {
            let mut e = std::mem::take(&mut s.loaded);
            e.retain(|&(a, _)| a != u64::from(addr.0));
            s.set_loaded(e);
        });
    }

    /// The loaded list as `(address, mask)`, in file order.
    pub fn loaded(&self) -> Vec<(u64, u64)> {
        self.with(|s| s.loaded.clone())
    }

    /// rdmsr of `addr` faults on `cpu` (every CPU with `None`).
    pub fn set_unsupported(&self, cpu: Option<CpuId>, addr: MsrAddr) {
        self.with(|s| s.unsupported.insert((cpu, addr)));
    }

    /// `bits` of `addr` ignore writes on every CPU (a firmware lock).
    pub fn lock_bits(&self, addr: MsrAddr, bits: u64) {
        self.with(|s| s.locked.insert(addr, bits));
    }

    /// `addr` has a lock bit: while a CPU's register has it set, the bits it locks ignore
    /// writes there ("all write attempts are ignored until next RESET"); the write succeeds.
    pub fn lock_register(&self, addr: MsrAddr, lock: Lock) {
        self.with(|s| s.locks.insert(addr, lock));
    }

    /// Set a register (of its whole group, if shared).
    pub fn set_register(&self, cpu: CpuId, addr: MsrAddr, value: u64) {
        self.with(|s| s.set(cpu, addr, value));
    }

    /// The register's value (0 if never set).
    pub fn register(&self, cpu: CpuId, addr: MsrAddr) -> u64 {
        self.with(|s| s.get(cpu, addr))
    }

    /// `addr` is one register per group of `groups` (each group's first CPU's value stands):
    /// a write from any CPU of a group is read by all of them.
    pub fn share(&self, addr: MsrAddr, groups: &[Vec<CpuId>]) {
        self.with(|s| {
            let map = s.shared.entry(addr).or_default();
            for g in groups {
                if let Some(&first) = g.first() {
                    for &c in g {
                        map.insert(c, first);
                    }
                }
            }
        });
    }

    /// Share every register of `list` that the MSR table gives a scope larger than a thread on
    /// a CPU of `cpu`'s model, per the domains of `topology`: the machine then behaves as such a
    /// node's hardware does.
    pub fn share_as(&self, list: &Allowlist, topology: &Topology, cpu: &CpuIdentity) {
        for e in list.entries() {
            let scope = scope_of(Some(cpu), e.addr);
            if scope == Scope::Thread {
                continue;
            }
            let groups: Vec<Vec<CpuId>> = topology
                .split(scope, topology.cpus())
                .into_iter()
                .map(|(_, cpus)| cpus)
                .collect();
            self.share(e.addr, &groups);
        }
    }

    /// Hotplug between calls.
    pub fn set_online(&self, cpu: CpuId, online: bool) {
        self.with(|s| s.set_online(cpu, online));
    }

    /// Every write that reached the machine, through any interface, in order.
    pub fn writes(&self) -> Vec<WriteRecord> {
        self.with(|s| s.writes.clone())
    }
}

// ---------------------------------------------------------------------------------------------
// The batch ioctl
// ---------------------------------------------------------------------------------------------

/// msr-safe's batch ioctl as documented (module 1.8.0) and as the real module answered:
///
/// - a 2.x module ([`KernelBatch::module_major`]) refuses our 1.x array with `ENOPROTOOPT`.
/// - `numops == 0`: `EINVAL`. More ops than the configured ceiling ([`KernelBatch::max_ops`],
///   standing in for kmalloc failing): `E2BIG`. Neither copies anything back.
/// - Pre-check over every op: offline or out-of-range CPU `ENXIO`, MSR not in the loaded
///   allowlist `EACCES`, write to an MSR whose mask is 0 `EROFS`; every op's `err` is cleared
///   first and an allowlisted op on an online CPU gets its `wmask` (as the real module does). If
///   any op fails, no op runs, the ops are copied back with `err` set on the failing ones and
///   the ioctl returns the last failing op's errno.
/// - Run phase, in array order (the order within each CPU is the kernel's; across CPUs it does
///   not matter): every op gets `wmask` and `err`; rdmsr first (fault: `-EIO`, no write); a read
///   stores the value in `msrdata`; a write stores `(msrdata & wmask) | (old & ~wmask)` and
///   leaves `msrdata` as given. The ioctl returns the first op's non-zero `err`.
///
/// Every call is counted, and every op array is recorded as received.
#[derive(Clone, Debug)]
pub struct KernelBatch {
    machine: FakeMachine,
    path: PathBuf,
}

impl KernelBatch {
    /// A new machine with these CPUs online, seen through its batch ioctl.
    pub fn new(online: impl IntoIterator<Item = u32>) -> KernelBatch {
        FakeMachine::new(online).batch()
    }

    pub fn machine(&self) -> &FakeMachine {
        &self.machine
    }

    /// CPUs `0..n` exist (online or not); at or above `n` is out of range.
    pub fn possible_cpus(self, n: u32) -> Self {
        self.machine.with(|s| s.possible = n);
        self
    }

    /// Add one entry to the loaded allowlist.
    pub fn allow(self, addr: MsrAddr, mask: WriteMask) -> Self {
        self.machine.allow(addr, mask);
        self
    }

    /// Replace the loaded allowlist with `list`.
    pub fn load_allowlist(&self, list: &Allowlist) {
        self.machine.load_allowlist(list);
    }

    /// Drop one MSR from the loaded allowlist.
    pub fn disallow(&self, addr: MsrAddr) {
        self.machine.disallow(addr);
    }

    /// rdmsr of `addr` faults on every CPU.
    pub fn unsupported(self, addr: MsrAddr) -> Self {
        self.machine.set_unsupported(None, addr);
        self
    }

    /// rdmsr of `addr` faults on `cpu`.
    pub fn unsupported_on(self, cpu: CpuId, addr: MsrAddr) -> Self {
        self.machine.set_unsupported(Some(cpu), addr);
        self
    }

    /// The module is msr-safe `major`.x: from 2 on, an array of the 1.x version (ours) is
    /// refused with `ENOPROTOOPT` before anything is looked at (LLNL/msr-safe PR #174).
    pub fn module_major(self, major: u32) -> Self {
        self.machine.with(|s| s.batch.abi_major = major);
        self
    }

    /// Calls with more than `n` ops fail with `E2BIG`.
    pub fn max_ops(self, n: usize) -> Self {
        self.machine.with(|s| s.batch.max_ops = Some(n));
        self
    }

    pub fn set_register(&self, cpu: CpuId, addr: MsrAddr, value: u64) {
        self.machine.set_register(cpu, addr, value);
    }

    /// The register's value (0 if never set).
    pub fn register(&self, cpu: CpuId, addr: MsrAddr) -> u64 {
        self.machine.register(cpu, addr)
    }

    /// Hotplug: take a CPU off- or online.
    pub fn set_online(&self, cpu: CpuId, online: bool) {
        self.machine.set_online(cpu, online);
    }

    /// The next call fails with `errno` before looking at the ops (nothing copied back), as
    /// `EFAULT` or `ENOMEM` would.
    pub fn fail_next_call(&self, errno: Errno) {
        self.machine.with(|s| s.batch.fail_next.push_back(errno));
    }

    /// How many ioctls were made.
    pub fn calls(&self) -> usize {
        self.machine.with(|s| s.batch.calls)
    }

    /// Every op array as the kernel received it, one entry per call.
    pub fn received(&self) -> Vec<Vec<msr_batch_op>> {
        self.machine.with(|s| s.batch.received.clone())
    }

    /// Every write the machine saw, in order.
    pub fn writes(&self) -> Vec<WriteRecord> {
        self.machine.writes()
    }
}

impl BatchIoctl for KernelBatch {
    fn msr_batch(&self, ops: &mut [msr_batch_op]) -> Result<(), Errno> {
        self.machine.with(|s| s.msr_batch(ops))
    }

    fn path(&self) -> &Path {
        &self.path
    }
}

// ---------------------------------------------------------------------------------------------
// Per-CPU nodes
// ---------------------------------------------------------------------------------------------

/// Per-CPU MSR nodes as the kernel serves them:
///
/// - open: the permission check of the nodes' mode for the caller ([`KernelCpuNodes::set_mode`],
///   [`KernelCpuNodes::open_as`]; 0600 root:root and root by default), `EACCES` when it fails;
///   an injected open error ([`KernelCpuNodes::deny_open`], [`KernelCpuNodes::deny_writable_open`]:
///   `EPERM` without `CAP_SYS_RAWIO`) comes first; an offline CPU: `ENXIO` by default
///   ([`KernelCpuNodes::offline_open_errno`] makes it `ENOENT`, as a fresh open after the node
///   vanished with hotplug gets).
/// - read or write on a node whose CPU has gone offline since the open: `ENXIO`; a write
///   through a node opened read-only: `EBADF`.
/// - unsupported MSR: `EIO` (reads and writes).
/// - msr_safe: read of an MSR not in the loaded allowlist `EACCES`, write to one not listed or
///   with mask 0 `EACCES`, partial mask merged with the current value. Stock: no allowlist;
///   [`KernelCpuNodes::deny_writes`] gives every write `EPERM` (lockdown, `allow_writes=off`).
///
/// Every open, read and write is recorded.
#[derive(Clone, Debug)]
pub struct KernelCpuNodes {
    machine: FakeMachine,
    flavour: Flavour,
}

impl KernelCpuNodes {
    /// A new machine with these CPUs online, seen through its per-CPU nodes.
    pub fn new(flavour: Flavour, online: impl IntoIterator<Item = u32>) -> KernelCpuNodes {
        FakeMachine::new(online).cpu_nodes(flavour)
    }

    pub fn machine(&self) -> &FakeMachine {
        &self.machine
    }

    /// Add one entry to msr_safe's loaded allowlist (ignored by the stock flavour).
    pub fn allow(self, addr: MsrAddr, mask: WriteMask) -> Self {
        self.machine.allow(addr, mask);
        self
    }

    /// Replace msr_safe's loaded allowlist with `list`.
    pub fn load_allowlist(&self, list: &Allowlist) {
        self.machine.load_allowlist(list);
    }

    pub fn unsupported(self, addr: MsrAddr) -> Self {
        self.machine.set_unsupported(None, addr);
        self
    }

    pub fn unsupported_on(self, cpu: CpuId, addr: MsrAddr) -> Self {
        self.machine.set_unsupported(Some(cpu), addr);
        self
    }

    /// The errno of an open of an offline CPU (`ENXIO`, or `ENOENT` once the node is gone).
    pub fn offline_open_errno(self, errno: Errno) -> Self {
        self.machine.with(|s| s.nodes.offline_open_errno = errno);
        self
    }

    /// The nodes' owner and mode (devtmpfs: 0600 root:root; site udev rules: 0660 a group).
    pub fn set_mode(&self, mode: NodeMode) {
        self.machine.with(|s| s.nodes.mode = mode);
    }

    /// Who opens the nodes from now on (root by default).
    pub fn open_as(&self, caller: Caller) {
        self.machine.with(|s| s.nodes.caller = caller);
    }

    /// Every open fails with `errno`.
    pub fn deny_open(&self, errno: Option<Errno>) {
        self.machine.with(|s| s.nodes.open_error = errno);
    }

    /// Every open for writing fails with `errno`.
    pub fn deny_writable_open(&self, errno: Option<Errno>) {
        self.machine.with(|s| s.nodes.writable_open_error = errno);
    }

    /// Every write (on an online CPU) fails with `errno`.
    pub fn deny_writes(&self, errno: Option<Errno>) {
        self.machine.with(|s| s.nodes.write_error = errno);
    }

    /// Report the nodes as kernel devices (the device then runs pinned to each CPU).
    pub fn kernel_devices(self, yes: bool) -> Self {
        self.machine.with(|s| s.nodes.kernel_devices = yes);
        self
    }

    pub fn set_register(&self, cpu: CpuId, addr: MsrAddr, value: u64) {
        self.machine.set_register(cpu, addr, value);
    }

    pub fn register(&self, cpu: CpuId, addr: MsrAddr) -> u64 {
        self.machine.register(cpu, addr)
    }

    /// Hotplug between calls.
    pub fn set_online(&self, cpu: CpuId, online: bool) {
        self.machine.set_online(cpu, online);
    }

    /// Hotplug during a call: `cpu` goes offline after `ops` more reads or writes on it.
    pub fn offline_after(&self, cpu: CpuId, ops: usize) {
        self.machine
            .with(|s| s.nodes.offline_after.insert(cpu, ops));
    }

    /// Every open, as `(cpu, writable)`, including refused ones.
    pub fn opens(&self) -> Vec<(CpuId, bool)> {
        self.machine.with(|s| s.nodes.opens.clone())
    }

    /// Every read that reached a node.
    pub fn reads(&self) -> Vec<(CpuId, MsrAddr)> {
        self.machine.with(|s| s.nodes.reads.clone())
    }

    /// Every write that reached the machine, in order.
    pub fn writes(&self) -> Vec<WriteRecord> {
        self.machine.writes()
    }
}

/// An open node of [`KernelCpuNodes`].
struct DoubleNode {
    machine: FakeMachine,
    flavour: Flavour,
    cpu: CpuId,
    writable: bool,
}

impl RegisterAccess for DoubleNode {
    fn read(&mut self, addr: MsrAddr) -> Result<u64, Errno> {
        let (flavour, cpu) = (self.flavour, self.cpu);
        self.machine.with(|s| s.node_read(flavour, cpu, addr))
    }

    fn write(&mut self, addr: MsrAddr, value: u64) -> Result<(), Errno> {
        if !self.writable {
            return Err(Errno::EBADF);
        }
        let (flavour, cpu) = (self.flavour, self.cpu);
        self.machine
            .with(|s| s.node_write(flavour, cpu, addr, value))
    }
}

impl CpuNodes for KernelCpuNodes {
    fn open(&self, cpu: CpuId, writable: bool) -> Result<Box<dyn RegisterAccess>, Errno> {
        self.machine.with(|s| {
            s.nodes.opens.push((cpu, writable));
            if let Some(e) = s.nodes.open_error {
                return Err(e);
            }
            if let Some(e) = s.nodes.writable_open_error.filter(|_| writable) {
                return Err(e);
            }
            s.nodes.mode.permits(&s.nodes.caller, writable)?;
            if !s.online.contains(&cpu) {
                return Err(s.nodes.offline_open_errno);
            }
            Ok(())
        })?;
        Ok(Box::new(DoubleNode {
            machine: self.machine.clone(),
            flavour: self.flavour,
            cpu,
            writable,
        }))
    }

    fn kernel_devices(&self) -> bool {
        self.machine.with(|s| s.nodes.kernel_devices)
    }

    fn describe(&self) -> String {
        let leaf = match self.flavour {
            Flavour::MsrSafe => "msr_safe",
            Flavour::StockMsr => "msr",
        };
        format!("/dev/cpu/N/{leaf} (test double)")
    }
}

// ---------------------------------------------------------------------------------------------
// Control nodes: /dev/cpu/msr_allowlist and /dev/cpu/msr_safe_version
// ---------------------------------------------------------------------------------------------

/// msr-safe's `/dev/cpu/msr_allowlist` as msr_allowlist.c (1.8.0) serves it, and as the real
/// module in a guest showed:
///
/// - open: mode 0600 root:root unless changed ([`AllowlistNode::set_mode`], as udev rules do).
/// - `read()`: one record per call at the file position (an entry index): the header line plus
///   the first entry at index 0, one entry after; `E2BIG` if the buffer is smaller than the
///   record (a zero-byte read included), and the position stays; 0 past the last entry, and the
///   position goes back to 0, so the next read starts the list over.
/// - `write()`: 2 bytes or less clears the list and succeeds; more than 128 KiB is `E2BIG`;
///   otherwise the text is parsed as the kernel does ([`crate::allowlist::kernel_parse`]): a
///   pass-1 error or no entries keeps the old list, a duplicate (`ENOTUNIQ`) leaves it empty.
#[derive(Clone, Debug)]
pub struct AllowlistNode {
    machine: FakeMachine,
}

impl Default for AllowlistNode {
    fn default() -> Self {
        Self::new()
    }
}

impl AllowlistNode {
    /// The node of a new one-CPU machine with no list loaded, 0600 root:root.
    pub fn new() -> AllowlistNode {
        FakeMachine::new([0]).allowlist_node()
    }

    pub fn set_mode(&self, mode: NodeMode) {
        self.machine.with(|s| s.allowlist_mode = mode);
    }

    /// The loaded entries as `(address, mask)`.
    pub fn entries(&self) -> Vec<(u64, u64)> {
        self.machine.loaded()
    }

    /// Open the node for reading and, with `write`, writing.
    pub fn open(&self, caller: &Caller, write: bool) -> Result<OpenAllowlistNode, Errno> {
        self.machine
            .with(|s| s.allowlist_mode.permits(caller, write))?;
        Ok(OpenAllowlistNode {
            machine: self.machine.clone(),
            pos: 0,
            write,
        })
    }
}

/// An open [`AllowlistNode`].
pub struct OpenAllowlistNode {
    machine: FakeMachine,
    /// `*ppos`: the index of the next entry.
    pos: usize,
    write: bool,
}

impl std::io::Read for OpenAllowlistNode {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let idx = self.pos;
        let Some((msr, mask)) = self.machine.with(|s| s.loaded.get(idx).copied()) else {
            // Past the last record: 0, and the next read starts the list over.
            self.pos = 0;
            return Ok(0);
        };
        let mut record = String::new();
        if idx == 0 {
            record.push_str(crate::allowlist::READBACK_HEADER);
        }
        record.push_str(&format!("0x{msr:08X} 0x{mask:016X}\n"));
        if record.len() > buf.len() {
            // read() stores the position only on success: a retry gets the same record.
            return Err(std::io::Error::from_raw_os_error(libc::E2BIG));
        }
        buf[..record.len()].copy_from_slice(record.as_bytes());
        self.pos = idx + 1;
        Ok(record.len())
    }
}

impl std::io::Write for OpenAllowlistNode {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        use crate::allowlist::{kernel_parse, CLEARING_WRITE_MAX, MAX_ALLOWLIST_BYTES};
        if !self.write {
            return Err(std::io::Error::from_raw_os_error(libc::EBADF));
        }
        if buf.len() <= CLEARING_WRITE_MAX {
            self.machine.with(|s| s.set_loaded(Vec::new()));
            return Ok(buf.len());
        }
        if buf.len() > MAX_ALLOWLIST_BYTES {
            return Err(std::io::Error::from_raw_os_error(libc::E2BIG));
        }
        match kernel_parse(buf) {
            Ok(entries) => {
                let e = entries.into_iter().map(|e| (e.msr, e.mask)).collect();
                self.machine.with(|s| s.set_loaded(e));
                Ok(buf.len())
            }
            Err(e) => {
                if e.errno == Errno::ENOTUNIQ {
                    self.machine.with(|s| s.set_loaded(Vec::new()));
                }
                Err(std::io::Error::from_raw_os_error(e.errno as i32))
            }
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// msr-safe's `/dev/cpu/msr_safe_version` (msr_version.c): mode 0400 root:root; the first
/// `read()` returns the version and its NUL (cut to the buffer's size, without an error, if the
/// buffer is shorter), every later read 0.
#[derive(Clone, Debug)]
pub struct VersionNode {
    version: String,
    mode: NodeMode,
}

impl VersionNode {
    pub fn new(version: &str) -> VersionNode {
        VersionNode {
            version: version.to_string(),
            mode: NodeMode {
                mode: 0o400,
                ..NodeMode::ROOT_ONLY
            },
        }
    }

    pub fn open(&self, caller: &Caller) -> Result<OpenVersionNode, Errno> {
        self.mode.permits(caller, false)?;
        let mut text = self.version.clone().into_bytes();
        text.push(0);
        Ok(OpenVersionNode { text, read: false })
    }
}

/// An open [`VersionNode`].
pub struct OpenVersionNode {
    text: Vec<u8>,
    read: bool,
}

impl std::io::Read for OpenVersionNode {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.read {
            return Ok(0);
        }
        let n = self.text.len().min(buf.len());
        buf[..n].copy_from_slice(&self.text[..n]);
        self.read = true;
        Ok(n)
    }
}

/// An allowlist of `(address, mask)` pairs, unnamed: the fixture the tests of the plan, the
/// devices and the doubles all build from.
///
/// # Panics
/// On a duplicate address (a test's own mistake).
pub fn allowlist_of(entries: &[(u32, u64)]) -> Arc<Allowlist> {
    let entries = entries
        .iter()
        .map(|&(a, m)| AllowlistEntry {
            addr: MsrAddr(a),
            mask: WriteMask(m),
            name: None,
        })
        .collect();
    Arc::new(Allowlist::from_entries(entries, "test").expect("test allowlist without duplicates"))
}

#[cfg(test)]
mod tests {
    //! The doubles themselves against the documented kernel behaviour.
    use super::*;

    fn read(cpu: u16, msr: u32) -> msr_batch_op {
        msr_batch_op {
            cpu,
            isrdmsr: 1,
            msr,
            ..msr_batch_op::default()
        }
    }

    fn write(cpu: u16, msr: u32, msrdata: u64) -> msr_batch_op {
        msr_batch_op {
            cpu,
            msr,
            msrdata,
            ..msr_batch_op::default()
        }
    }

    fn batch() -> KernelBatch {
        let k = KernelBatch::new(0..4)
            .allow(MsrAddr(0x10), WriteMask(0))
            .allow(MsrAddr(0x199), WriteMask(0xffff))
            .unsupported(MsrAddr(0x10));
        k.set_register(CpuId(1), MsrAddr(0x199), 0xaaaa_bbbb);
        k
    }

    #[test]
    fn empty_and_oversized_arrays_are_refused_without_copy_back() {
        let k = batch().max_ops(2);
        assert_eq!(k.msr_batch(&mut []), Err(Errno::EINVAL));
        let mut ops = [read(0, 0x199), read(0, 0x199), read(0, 0x199)];
        let before = ops;
        assert_eq!(k.msr_batch(&mut ops), Err(Errno::E2BIG));
        assert_eq!(ops, before);
        assert_eq!(k.calls(), 2);
    }

    #[test]
    fn precheck_is_all_or_nothing_and_returns_the_last_refusal() {
        let k = batch();
        k.set_online(CpuId(2), false);
        let mut ops = [
            write(1, 0x199, 0x1234),
            read(2, 0x199),
            read(0, 0x11),
            write(0, 0x10, 1),
            read(9, 0x199),
        ];
        assert_eq!(k.msr_batch(&mut ops), Err(Errno::ENXIO));
        let errs: Vec<i32> = ops.iter().map(|o| o.err).collect();
        assert_eq!(errs, vec![0, -6, -13, -30, -6]);
        // Nothing ran.
        assert_eq!(k.register(CpuId(1), MsrAddr(0x199)), 0xaaaa_bbbb);
        assert!(k.writes().is_empty());
        // As the real module (tests/msr_safe): an allowlisted op on an online CPU gets its
        // wmask even when the batch is refused (0 for the read-only MSR); the others keep theirs.
        let masks: Vec<u64> = ops.iter().map(|o| o.wmask).collect();
        assert_eq!(masks, vec![0xffff, 0, 0, 0, 0]);
        ops[4] = read(0, 0x11);
        assert_eq!(k.msr_batch(&mut ops), Err(Errno::EACCES));
    }

    #[test]
    fn run_phase_reads_then_merges_and_returns_the_first_error() {
        let k = batch();
        let mut ops = [
            read(1, 0x199),
            write(1, 0x199, 0x1234_5678),
            read(1, 0x199),
            read(3, 0x10),
            write(0, 0x199, 7),
        ];
        assert_eq!(k.msr_batch(&mut ops), Err(Errno::EIO));
        assert_eq!((ops[0].err, ops[0].msrdata), (0, 0xaaaa_bbbb));
        // The write leaves msrdata as given; the register gets the kernel's merge.
        assert_eq!((ops[1].err, ops[1].msrdata), (0, 0x1234_5678));
        assert_eq!(ops[2].msrdata, 0xaaaa_5678);
        assert_eq!(ops[3].err, -5);
        assert_eq!(k.register(CpuId(0), MsrAddr(0x199)), 7);
        // wmask is copied out on every op, failed ones included.
        let masks: Vec<u64> = ops.iter().map(|o| o.wmask).collect();
        assert_eq!(masks, vec![0xffff, 0xffff, 0xffff, 0, 0xffff]);
        assert_eq!(k.writes().len(), 2);
        let mut ok = [read(0, 0x199)];
        assert_eq!(k.msr_batch(&mut ok), Ok(()));
    }

    #[test]
    fn an_unsupported_msr_faults_a_write_too() {
        let k = KernelBatch::new([0])
            .allow(MsrAddr(0x20), WriteMask::ALL)
            .unsupported_on(CpuId(0), MsrAddr(0x20));
        let mut ops = [write(0, 0x20, 1)];
        assert_eq!(k.msr_batch(&mut ops), Err(Errno::EIO));
        assert_eq!(k.writes()[0].result, Err(Errno::EIO));
        assert_eq!(k.register(CpuId(0), MsrAddr(0x20)), 0);
    }

    fn open(n: &KernelCpuNodes, cpu: u32, w: bool) -> Result<Box<dyn RegisterAccess>, Errno> {
        n.open(CpuId(cpu), w)
    }

    #[test]
    fn msr_safe_nodes_enforce_the_loaded_list() {
        let n = KernelCpuNodes::new(Flavour::MsrSafe, 0..2)
            .allow(MsrAddr(0x10), WriteMask(0))
            .allow(MsrAddr(0x199), WriteMask(0xff))
            .unsupported(MsrAddr(0x1a0))
            .allow(MsrAddr(0x1a0), WriteMask::ALL);
        n.set_register(CpuId(0), MsrAddr(0x199), 0x1234);
        let mut f = open(&n, 0, true).unwrap();
        assert_eq!(f.read(MsrAddr(0x11)), Err(Errno::EACCES));
        assert_eq!(f.read(MsrAddr(0x1a0)), Err(Errno::EIO));
        assert_eq!(f.write(MsrAddr(0x1a0), 1), Err(Errno::EIO));
        assert_eq!(f.write(MsrAddr(0x10), 1), Err(Errno::EACCES));
        assert_eq!(f.write(MsrAddr(0x11), 1), Err(Errno::EACCES));
        assert_eq!(f.write(MsrAddr(0x199), 0xabcd), Ok(()));
        assert_eq!(f.read(MsrAddr(0x199)), Ok(0x12cd));
        let mut ro = open(&n, 1, false).unwrap();
        assert_eq!(ro.write(MsrAddr(0x199), 1), Err(Errno::EBADF));
        let w = n.writes();
        assert_eq!(w.len(), 4, "{w:?}");
        assert_eq!(w[3].before, Some(0x1234));
        assert_eq!(w[3].result, Ok(0x12cd));
    }

    #[test]
    fn stock_nodes_have_no_list_and_can_refuse_writes() {
        let n = KernelCpuNodes::new(Flavour::StockMsr, [0]);
        let mut f = open(&n, 0, true).unwrap();
        assert_eq!(f.write(MsrAddr(0x777), u64::MAX), Ok(()));
        assert_eq!(f.read(MsrAddr(0x777)), Ok(u64::MAX));
        n.deny_writes(Some(Errno::EPERM));
        assert_eq!(f.write(MsrAddr(0x777), 0), Err(Errno::EPERM));
        assert_eq!(f.read(MsrAddr(0x777)), Ok(u64::MAX));
    }

    #[test]
    fn views_of_one_machine_share_its_state() {
        let m = FakeMachine::new(0..2);
        let node = m.allowlist_node();
        use std::io::Write as _;
        node.open(&Caller::ROOT, true)
            .unwrap()
            .write_all(b"0x199 0xff\n")
            .unwrap();
        let nodes = m.cpu_nodes(Flavour::MsrSafe);
        let mut f = nodes.open(CpuId(1), true).unwrap();
        f.write(MsrAddr(0x199), 0x1234).unwrap();
        let mut ops = [read(1, 0x199)];
        assert_eq!(m.batch().msr_batch(&mut ops), Ok(()));
        assert_eq!(ops[0].msrdata, 0x34);
        assert_eq!(m.writes().len(), 1);
    }

    #[test]
    fn the_allowlist_node_keeps_its_place_on_e2big_and_starts_over_after_the_end() {
        use std::io::Read as _;
        let m = FakeMachine::new([0]);
        m.allow(MsrAddr(0x10), WriteMask(0));
        m.allow(MsrAddr(0x199), WriteMask(0xff));
        let mut f = m.allowlist_node().open(&Caller::ROOT, false).unwrap();
        let mut big = [0u8; 256];
        assert_eq!(f.read(&mut big).unwrap(), 60);
        let mut small = [0u8; 10];
        assert_eq!(
            f.read(&mut small).unwrap_err().raw_os_error(),
            Some(libc::E2BIG)
        );
        assert_eq!(
            f.read(&mut []).unwrap_err().raw_os_error(),
            Some(libc::E2BIG)
        );
        assert_eq!(f.read(&mut big).unwrap(), 30, "the same record after E2BIG");
        assert_eq!(&big[..11], b"0x00000199 ");
        assert_eq!(f.read(&mut big).unwrap(), 0);
        assert_eq!(
            f.read(&mut big).unwrap(),
            60,
            "the list again after the end"
        );
    }

    #[test]
    fn locked_bits_ignore_writes() {
        let m = FakeMachine::new([0]);
        m.allow(MsrAddr(0x610), WriteMask::ALL);
        m.lock_bits(MsrAddr(0x610), 1 << 63);
        m.set_register(CpuId(0), MsrAddr(0x610), 1 << 63);
        let mut ops = [write(0, 0x610, 0x1234)];
        assert_eq!(m.batch().msr_batch(&mut ops), Ok(()));
        assert_eq!(m.register(CpuId(0), MsrAddr(0x610)), (1 << 63) | 0x1234);
        // A lock bit holds its register only while it is set.
        let m = FakeMachine::new([0, 1]);
        m.allow(MsrAddr(0x610), WriteMask::ALL);
        m.lock_register(
            MsrAddr(0x610),
            Lock {
                bit: 63,
                locks: u64::MAX,
            },
        );
        m.set_register(CpuId(0), MsrAddr(0x610), 1 << 63 | 5);
        let mut ops = [write(0, 0x610, 7), write(1, 0x610, 7)];
        assert_eq!(m.batch().msr_batch(&mut ops), Ok(()));
        assert_eq!(m.register(CpuId(0), MsrAddr(0x610)), 1 << 63 | 5);
        assert_eq!(m.register(CpuId(1), MsrAddr(0x610)), 7);
    }

    #[test]
    fn a_shared_register_is_one_register_for_its_cpus() {
        let m = FakeMachine::new(0..4);
        m.allow(MsrAddr(0x610), WriteMask::ALL);
        m.share(
            MsrAddr(0x610),
            &[vec![CpuId(0), CpuId(2)], vec![CpuId(1), CpuId(3)]],
        );
        let mut ops = [write(2, 0x610, 0x1234)];
        assert_eq!(m.batch().msr_batch(&mut ops), Ok(()));
        assert_eq!(m.register(CpuId(0), MsrAddr(0x610)), 0x1234);
        assert_eq!(m.register(CpuId(1), MsrAddr(0x610)), 0);
        let mut f = m.cpu_nodes(Flavour::MsrSafe).open(CpuId(3), true).unwrap();
        f.write(MsrAddr(0x610), 0x99).unwrap();
        assert_eq!(m.register(CpuId(1), MsrAddr(0x610)), 0x99);
        assert_eq!(m.register(CpuId(2), MsrAddr(0x610)), 0x1234);
    }

    #[test]
    fn hotplug_and_open_errors() {
        let n = KernelCpuNodes::new(Flavour::StockMsr, 0..3).offline_open_errno(Errno::ENOENT);
        let mut f = open(&n, 1, false).unwrap();
        n.set_online(CpuId(1), false);
        assert_eq!(f.read(MsrAddr(0)), Err(Errno::ENXIO));
        assert_eq!(open(&n, 1, false).err(), Some(Errno::ENOENT));
        n.set_online(CpuId(1), true);
        assert_eq!(f.read(MsrAddr(0)), Ok(0));
        n.offline_after(CpuId(2), 1);
        let mut g = open(&n, 2, false).unwrap();
        assert_eq!(g.read(MsrAddr(0)), Ok(0));
        assert_eq!(g.read(MsrAddr(0)), Err(Errno::ENXIO));
        n.deny_writable_open(Some(Errno::EPERM));
        assert_eq!(open(&n, 0, true).err(), Some(Errno::EPERM));
        assert!(open(&n, 0, false).is_ok());
        n.deny_open(Some(Errno::EACCES));
        assert_eq!(open(&n, 0, false).err(), Some(Errno::EACCES));
        assert_eq!(n.opens().len(), 6);
    }
}
