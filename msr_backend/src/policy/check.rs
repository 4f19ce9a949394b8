//! The policy on one node, for the health check (`msrsave check`): fields with policy `static`
//! must hold their value on every CPU and fields with policy `deny` must not be writable in the
//! allowlist in effect, on every check; bits of `host` fields are never drift.

use std::sync::Arc;

use serde::Serialize;

use super::{FieldPolicy, FieldRule, Policy};
use crate::allowlist::{Allowlist, AllowlistEntry};
use crate::device::{DeviceError, MsrDevice, OpError};
use crate::msrs::models::ModelId;
use crate::operations::LoadedSnapshot;
use crate::snapshot::Snapshot;
use crate::types::{format_cpu_list, CpuId, MsrAddr, WriteMask};

/// What is wrong with one field on this node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ViolationKind {
    /// A `static` field holds another value.
    Value,
    /// A `deny` field is writable in the allowlist in effect.
    Writable,
    /// A `static` field cannot be read (not in the allowlist, or the read failed).
    Unreadable,
}

/// One field that breaks its policy on this node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, schemars::JsonSchema)]
pub struct PolicyViolation {
    /// `MSR.field`.
    pub field: String,
    pub msr: MsrAddr,
    /// `static = 0x0`, `deny`.
    pub policy: String,
    pub kind: ViolationKind,
    /// What the node has: the field's value(s), or the writable bits.
    pub found: String,
    /// The CPUs concerned (kernel list syntax).
    pub cpus: String,
    pub message: String,
}

/// The policy's verdict on a node.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, schemars::JsonSchema)]
pub struct PolicyCheck {
    /// The policy file.
    pub policy: String,
    pub digest: String,
    /// Fields checked (static and deny).
    pub checked: usize,
    /// `host` fields left out of the drift check, as `MSR.field`.
    pub host_fields: Vec<String>,
    pub violations: Vec<PolicyViolation>,
}

impl PolicyCheck {
    pub fn clean(&self) -> bool {
        self.violations.is_empty()
    }

    /// `policy: 2 violations (MSR_MISC_FEATURE_CONTROL.prefetchers 0xf on CPUs 0-3, ...)`.
    pub fn summary(&self) -> String {
        let shown: Vec<String> = self
            .violations
            .iter()
            .take(3)
            .map(|v| format!("{} {}", v.field, v.found))
            .collect();
        let more = self.violations.len().saturating_sub(shown.len());
        format!(
            "policy: {} violation(s) ({}{})",
            self.violations.len(),
            shown.join(", "),
            if more > 0 {
                format!(" and {more} more")
            } else {
                String::new()
            }
        )
    }
}

/// The distinct outcomes of a field on a node, each with the CPUs that gave it.
pub type FieldOutcomes = Vec<(Result<u64, OpError>, Vec<CpuId>)>;

/// The distinct outcomes of bits `lo..=hi` of `addr` on the CPUs of `snapshot`, each with its
/// CPUs; `None` when `addr` is not in the snapshot's allowlist.
pub fn field_outcomes(
    snapshot: &Snapshot,
    addr: MsrAddr,
    f: &FieldPolicy,
) -> Option<FieldOutcomes> {
    let ei = snapshot.allowlist.index_of(addr)?;
    let mut out: FieldOutcomes = Vec::new();
    for (ci, &cpu) in snapshot.cpus.iter().enumerate() {
        let v = snapshot.value(ci, ei).map(|r| f.extract(r));
        match out.iter_mut().find(|(o, _)| *o == v) {
            Some((_, cpus)) => cpus.push(cpu),
            None => out.push((v, vec![cpu])),
        }
    }
    Some(out)
}

/// The entries of `list` that fields of `policy` need on `model` (each MSR once, with its mask).
pub fn field_list(
    policy: &Policy,
    model: ModelId,
    list: &Allowlist,
    want: impl Fn(FieldRule) -> bool,
) -> Allowlist {
    let mut addrs: Vec<MsrAddr> = policy
        .fields_on(model)
        .filter(|(f, _)| want(f.rule))
        .map(|(_, a)| MsrAddr(a))
        .filter(|a| list.contains(*a))
        .collect();
    addrs.sort_unstable();
    addrs.dedup();
    let entries = addrs
        .into_iter()
        .filter_map(|a| list.get(a).cloned())
        .collect();
    Allowlist::from_entries(entries, list.source())
        .expect("a subset of a valid allowlist has no duplicates")
}

/// Check the `static` and `deny` fields of `policy` on the node behind `device`.
pub fn check_node(
    policy: &Policy,
    model: ModelId,
    device: &dyn MsrDevice,
    list: &Allowlist,
    online: &[CpuId],
) -> Result<PolicyCheck, DeviceError> {
    let mut out = PolicyCheck {
        policy: policy.source.clone(),
        digest: policy.digest.clone(),
        host_fields: policy
            .fields_on(model)
            .filter(|(f, _)| f.rule == FieldRule::Host)
            .map(|(f, _)| f.name.clone())
            .collect(),
        ..PolicyCheck::default()
    };
    let statics = field_list(policy, model, list, |r| matches!(r, FieldRule::Static(_)));
    let snapshot = Snapshot::take(device, Arc::new(statics), online)?;
    let all_cpus = format_cpu_list(online);
    for (f, addr) in policy.fields_on(model) {
        let addr = MsrAddr(addr);
        match f.rule {
            FieldRule::Static(want) => {
                out.checked += 1;
                let Some(outcomes) = field_outcomes(&snapshot, addr, f) else {
                    out.violations.push(PolicyViolation {
                        field: f.name.clone(),
                        msr: addr,
                        policy: f.rule.to_string(),
                        kind: ViolationKind::Unreadable,
                        found: "not in the allowlist".to_string(),
                        cpus: all_cpus.clone(),
                        message: format!(
                            "{} (MSR {addr}) must be {want:#x}, but the allowlist in effect does not list the MSR, so it cannot be checked",
                            f.name
                        ),
                    });
                    continue;
                };
                for (v, cpus) in outcomes {
                    let cpus = format_cpu_list(&cpus);
                    match v {
                        Ok(v) if v == want => {}
                        Ok(v) => out.violations.push(PolicyViolation {
                            field: f.name.clone(),
                            msr: addr,
                            policy: f.rule.to_string(),
                            kind: ViolationKind::Value,
                            found: format!("{v:#x}"),
                            message: format!(
                                "{} (MSR {addr} bits {}) is {v:#x} on CPUs {cpus}, must be {want:#x}",
                                f.name,
                                f.bits()
                            ),
                            cpus,
                        }),
                        Err(e) => out.violations.push(PolicyViolation {
                            field: f.name.clone(),
                            msr: addr,
                            policy: f.rule.to_string(),
                            kind: ViolationKind::Unreadable,
                            found: e.code(),
                            message: format!(
                                "{} (MSR {addr}) cannot be read on CPUs {cpus} ({}), so it cannot be checked",
                                f.name,
                                e.code()
                            ),
                            cpus,
                        }),
                    }
                }
            }
            FieldRule::Deny => {
                out.checked += 1;
                let writable = list.mask(addr).map_or(0, |m| m.0) & f.mask();
                if writable != 0 {
                    out.violations.push(PolicyViolation {
                        field: f.name.clone(),
                        msr: addr,
                        policy: f.rule.to_string(),
                        kind: ViolationKind::Writable,
                        found: format!("writable bits {writable:#x}"),
                        cpus: all_cpus.clone(),
                        message: format!(
                            "{} (MSR {addr} bits {}) must never be writable, but the allowlist in effect ({}) lets bits {writable:#x} be written",
                            f.name,
                            f.bits(),
                            list.source()
                        ),
                    });
                }
            }
            _ => {}
        }
    }
    Ok(out)
}

/// `list` with the bits of `host` fields taken out of every mask: what the drift check may
/// compare.
pub fn without_host_bits(policy: &Policy, model: ModelId, list: &Allowlist) -> Allowlist {
    let entries: Vec<AllowlistEntry> = list
        .entries()
        .iter()
        .map(|e| AllowlistEntry {
            mask: WriteMask(
                e.mask.0 & !policy.bits_where(model, e.addr.0, |r| r == FieldRule::Host),
            ),
            ..e.clone()
        })
        .collect();
    Allowlist::from_entries(entries, list.source())
        .expect("the same addresses as a valid allowlist")
}

/// Make the drift check blind to `host` fields: take their bits out of the masks of both the
/// allowlist in effect and the saved snapshot (so that the saved and current masks still agree
/// and no mask change is reported). Returns the host fields concerned.
pub fn hide_host_bits(
    policy: &Policy,
    model: ModelId,
    current: &mut Arc<Allowlist>,
    saved: &mut LoadedSnapshot,
) -> Vec<String> {
    let host: Vec<String> = policy
        .fields_on(model)
        .filter(|(f, _)| f.rule == FieldRule::Host)
        .map(|(f, _)| f.name.clone())
        .collect();
    if host.is_empty() {
        return host;
    }
    *current = Arc::new(without_host_bits(policy, model, current));
    let s = &saved.snapshot;
    let list = Arc::new(without_host_bits(policy, model, &s.allowlist));
    saved.snapshot = Snapshot::from_parts(
        list,
        s.cpus.clone(),
        s.raw_values().to_vec(),
        s.errors().to_vec(),
    );
    host
}
