//! What `allowlist lint` adds to the kernel-exact lint ([`crate::allowlist::lint`]) when it knows
//! the CPU model (and, optionally, the site policy): the same findings `allowlist compile`
//! reports, for a list written by hand or by someone else.

use std::collections::HashMap;

use super::compile::{compile, Finding, FindingKind, Severity};
use super::{FieldRule, Policy};
use crate::allowlist::kernel_parse;
use crate::msrs::models::{self, looks_like_counter, ModelId};
use crate::msrs::msr_name;
use crate::types::MsrAddr;

/// The model a list's file name is for (`al_06_55`, or msr-safe's old `al_0655`).
pub fn model_of_file_name(name: &str) -> Option<ModelId> {
    let rest = name.strip_prefix("al_")?;
    if rest.contains('_') {
        return rest.parse().ok();
    }
    if rest.len() == 4 && rest.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Some(ModelId {
            family: u32::from_str_radix(&rest[..2], 16).ok()?,
            model: u32::from_str_radix(&rest[2..], 16).ok()?,
        });
    }
    None
}

fn f(severity: Severity, kind: FindingKind, msr: u32, line: usize, message: String) -> Finding {
    Finding {
        severity,
        kind,
        msr: Some(MsrAddr(msr)),
        line,
        message,
    }
}

/// Findings for the entries of `text` on `model`, and against `policy` if given. A list the
/// kernel refuses gives none here (the kernel lint says why).
pub fn lint_for_model(text: &[u8], model: ModelId, policy: Option<&Policy>) -> Vec<Finding> {
    let Ok(entries) = kernel_parse(text) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    let table = models::model(model);
    if table.is_none() {
        out.push(Finding {
            severity: Severity::Warning,
            kind: FindingKind::UnknownModel,
            msr: None,
            line: 0,
            message: format!(
                "our tables know nothing of CPU model {model} (known: {}): its MSRs and writable bits are not checked",
                models::known_model_list()
            ),
        });
    }
    let compiled = policy.map(|p| compile(p, model));
    let allowed: HashMap<u32, u64> = compiled
        .iter()
        .flat_map(|c| c.entries.iter().map(|e| (e.msr.0, e.mask.0)))
        .collect();
    let mut listed = Vec::new();
    for e in &entries {
        let Ok(addr) = u32::try_from(e.msr) else {
            continue;
        };
        listed.push(addr);
        let known = table.and_then(|t| t.get(MsrAddr(addr)));
        let name = e
            .comment
            .clone()
            .or_else(|| known.map(|k| k.name.to_string()))
            .or_else(|| msr_name(MsrAddr(addr)).map(str::to_string))
            .unwrap_or_else(|| "?".to_string());
        if let Some(t) = table {
            match known {
                None => out.push(f(
                    Severity::Warning,
                    FindingKind::UnknownMsr,
                    addr,
                    e.line,
                    format!(
                        "MSR {addr:#x} ({name}) is not in our tables for {model} ({}): check that this CPU has it",
                        t.name
                    ),
                )),
                Some(k) => match k.writable {
                    Some(w) if e.mask & !w != 0 => out.push(f(
                        Severity::Warning,
                        FindingKind::UnknownWritableBits,
                        addr,
                        e.line,
                        format!(
                            "MSR {addr:#x} ({name}): write mask {:#x} makes bits {:#x} writable that our tables do not know as writable on {model} (they know {w:#x}, from {})",
                            e.mask,
                            e.mask & !w,
                            k.source
                        ),
                    )),
                    None if e.mask != 0 => out.push(f(
                        Severity::Warning,
                        FindingKind::UnknownWritableBits,
                        addr,
                        e.line,
                        format!(
                            "MSR {addr:#x} ({name}): write mask {:#x}, but our tables do not know which of its bits are writable on {model}",
                            e.mask
                        ),
                    )),
                    _ => {}
                },
            }
        }
        if e.mask == u64::MAX && looks_like_counter(&name) {
            out.push(f(
                Severity::Warning,
                FindingKind::WritableCounter,
                addr,
                e.line,
                format!(
                    "MSR {addr:#x} ({name}) looks like a counter and is writable in full: a restore writes back a stale count"
                ),
            ));
        }
        let Some(p) = policy else { continue };
        let denied = p.bits_where(model, addr, |r| r == FieldRule::Deny) & e.mask;
        if denied != 0 {
            let names: Vec<&str> = p
                .fields_on(model)
                .filter(|(fp, a)| *a == addr && fp.rule == FieldRule::Deny)
                .map(|(fp, _)| fp.name.as_str())
                .collect();
            out.push(f(
                Severity::Error,
                FindingKind::DenyField,
                addr,
                e.line,
                format!(
                    "MSR {addr:#x} ({name}): bits {denied:#x} are writable, but {} must never be writable (policy deny)",
                    names.join(", ")
                ),
            ));
        }
        match allowed.get(&addr) {
            None => out.push(f(
                Severity::Warning,
                FindingKind::PolicyMismatch,
                addr,
                e.line,
                format!("MSR {addr:#x} ({name}) is listed, but the policy does not give it"),
            )),
            Some(&m) if e.mask & !m != 0 => out.push(f(
                Severity::Warning,
                FindingKind::PolicyMismatch,
                addr,
                e.line,
                format!(
                    "MSR {addr:#x} ({name}): bits {:#x} are writable, but the policy allows only {m:#x}",
                    e.mask & !m
                ),
            )),
            _ => {}
        }
    }
    if let Some(c) = &compiled {
        listed.sort_unstable();
        for e in &c.entries {
            if listed.binary_search(&e.msr.0).is_err() {
                out.push(f(
                    Severity::Note,
                    FindingKind::PolicyMismatch,
                    e.msr.0,
                    0,
                    format!(
                        "MSR {:#x} ({}): the policy gives it (mask {:#x}) but the list does not have it",
                        e.msr.0, e.name, e.mask.0
                    ),
                ));
            }
        }
    }
    out.sort_by_key(|x| x.line);
    out
}
