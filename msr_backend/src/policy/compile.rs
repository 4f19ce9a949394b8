//! `allowlist compile`: a policy and our tables for one CPU model make that model's msr-safe
//! allowlist, in the kernel's read-back form (`0x%08X 0x%016X`, with the MSR's name as a comment)
//! under a header that says what produced it. The same policy gives the same bytes on every run.
//!
//! For each MSR our tables know for the model (and each MSR a rule names on its own):
//!
//! 1. reading it is decided by the first rule that matches it with `read` or `read_write`, else
//!    the default; writing it likewise with `write` or `read_write`;
//! 2. it is listed when reading is allowed (msr-safe cannot allow a write without a read: an MSR
//!    whose write is allowed and read denied is left out, with a warning);
//! 3. its write mask, when writing is allowed, is the rule's `mask` if it gives one, else the
//!    writable bits our tables know. When nobody knows them the MSR is **left out** (a note says
//!    which): listing it read-only would hide that it is never restored, and we never invent a
//!    mask. To list such an MSR read-only, allow reading it and deny writing it;
//! 4. bits of fields with policy `deny` are taken out of the mask.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use super::{AccessKind, Action, FieldRule, MsrRef, Policy};
use crate::allowlist::{kernel_parse, lint, Severity as LintSeverity};
use crate::msrs::models::{self, looks_like_counter, CpuModel, ModelId};
use crate::msrs::msr_name;
use crate::types::{MsrAddr, WriteMask};

/// How much a finding matters.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    /// A consequence of the policy worth knowing.
    Note,
    /// Probably not what was meant, or something our tables cannot vouch for.
    Warning,
    /// The list cannot be used (lint), or cannot be made (compile).
    Error,
}

impl std::fmt::Display for Severity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Severity::Note => "note",
            Severity::Warning => "warning",
            Severity::Error => "error",
        })
    }
}

/// What a finding is about, for tools.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum FindingKind {
    /// Our tables know nothing of the CPU model.
    UnknownModel,
    /// The MSR is not in our tables for this model.
    UnknownMsr,
    /// Writable bits our tables do not know as writable for this model.
    UnknownWritableBits,
    /// Writing is allowed, but nobody knows which bits: the MSR is left out.
    NoWritableFact,
    /// Writing is allowed and reading denied: msr-safe cannot do that, the MSR is left out.
    WriteWithoutRead,
    /// A writable full-mask entry that looks like a counter.
    WritableCounter,
    /// Bits of a `deny` field taken out of a mask (compile), or writable (lint).
    DenyField,
    /// The list and the policy disagree (lint with a policy).
    PolicyMismatch,
    /// A rule whose range runs backwards on this model, or a load-time warning.
    Policy,
    /// The kernel would refuse the list, or accepts it with a surprise (lint).
    Kernel,
    /// The policy allows nothing on this model.
    Empty,
}

/// One thing compile or lint found.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, schemars::JsonSchema)]
pub struct Finding {
    pub severity: Severity,
    pub kind: FindingKind,
    pub msr: Option<MsrAddr>,
    /// A line of the list (lint) or of the policy (compile); 0 for none.
    pub line: usize,
    pub message: String,
}

/// One entry of a compiled list.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, schemars::JsonSchema)]
pub struct CompiledEntry {
    pub msr: MsrAddr,
    pub mask: WriteMask,
    pub name: String,
    /// The rule that allowed reading (its number), or none for the default.
    pub read_rule: Option<usize>,
    /// The rule that decided writing, or none for the default.
    pub write_rule: Option<usize>,
}

/// A compiled allowlist.
#[derive(Clone, Debug)]
pub struct Compiled {
    pub model: ModelId,
    /// `al_06_55`.
    pub file_name: String,
    pub entries: Vec<CompiledEntry>,
    pub findings: Vec<Finding>,
    /// The list: header and entries. Empty when the policy allows nothing (see `findings`).
    pub text: String,
}

impl Compiled {
    pub fn writable(&self) -> usize {
        self.entries.iter().filter(|e| e.mask.is_writable()).count()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// What the header says produced the list.
pub const PRODUCER: &str = "msrsave allowlist compile";
/// The width the header wraps at.
const WRAP: usize = 96;
/// A finding about more MSRs than this lists them in JSON only; the header gives the count.
const NAMED_IN_HEADER: usize = 24;

fn finding(
    severity: Severity,
    kind: FindingKind,
    msr: Option<u32>,
    line: usize,
    message: String,
) -> Finding {
    Finding {
        severity,
        kind,
        msr: msr.map(MsrAddr),
        line,
        message,
    }
}

/// The name an entry's comment carries: the model table's, else the architectural table's.
fn entry_name(table: Option<&CpuModel>, addr: u32) -> String {
    let name = table
        .and_then(|t| t.get(MsrAddr(addr)))
        .map(|m| m.name)
        .or_else(|| msr_name(MsrAddr(addr)))
        .unwrap_or("?");
    // A comment runs to the end of its line: keep it on one line and ASCII.
    name.chars()
        .map(|c| {
            if c.is_ascii_graphic() || c == ' ' {
                c
            } else {
                '?'
            }
        })
        .collect()
}

/// The MSRs to decide on `model`: every MSR of its table, and every MSR a rule names alone.
fn candidates(policy: &Policy, model: ModelId, table: Option<&CpuModel>) -> Vec<u32> {
    let mut addrs: Vec<u32> = table
        .map(|t| t.msrs.iter().map(|m| m.addr).collect())
        .unwrap_or_default();
    for r in &policy.rules {
        if r.msrs.is_single() && r.applies_to(model) && r.action == Action::Allow {
            if let Some((a, _)) = r.msrs.resolve(table) {
                addrs.push(a);
            }
        }
    }
    addrs.sort_unstable();
    addrs.dedup();
    addrs
}

/// Compile the allowlist of `model`.
pub fn compile(policy: &Policy, model: ModelId) -> Compiled {
    let table = models::model(model);
    let rules = policy.rules_for(model, table);
    let mut findings: Vec<Finding> = policy
        .warnings
        .iter()
        .map(|w| {
            finding(
                Severity::Warning,
                FindingKind::Policy,
                None,
                w.line,
                w.message.clone(),
            )
        })
        .collect();
    if table.is_none() {
        findings.push(finding(
            Severity::Warning,
            FindingKind::UnknownModel,
            None,
            0,
            format!(
                "our tables know nothing of CPU model {model} (known: {}): only MSRs a rule names one by one are listed, and writable only with the rule's mask",
                models::known_model_list()
            ),
        ));
    }
    for r in &policy.rules {
        if let Some((a, b)) = r.msrs.resolve(table) {
            if a > b && r.applies_to(model) {
                findings.push(finding(
                    Severity::Warning,
                    FindingKind::Policy,
                    None,
                    r.line,
                    format!(
                        "{}: {} runs backwards on {model} ({a:#x} to {b:#x}): it matches nothing",
                        r.label(),
                        r.msrs
                    ),
                ));
            }
        }
    }

    // MSRs the policy names that our tables do not know here: rule endpoints (when that rule is
    // the one deciding them on this model) and fields.
    for (i, r) in policy.rules.iter().enumerate() {
        if !r.applies_to(model) {
            continue;
        }
        // A number at the end of a range is a boundary, not an MSR the rule means.
        let named: Vec<&MsrRef> = if r.msrs.is_single() {
            vec![&r.msrs.first]
        } else {
            [&r.msrs.first, &r.msrs.last]
                .into_iter()
                .filter(|m| matches!(m, MsrRef::Name(_)))
                .collect()
        };
        for m in named {
            let Some(addr) = m.resolve(table) else {
                continue;
            };
            if table.is_some_and(|t| t.get(MsrAddr(addr)).is_some()) {
                continue;
            }
            let decides = [AccessKind::Read, AccessKind::Write]
                .into_iter()
                .any(|k| rules.decide(addr, k).rule == Some(i));
            if decides && table.is_some() {
                findings.push(finding(
                    Severity::Warning,
                    FindingKind::UnknownMsr,
                    Some(addr),
                    r.line,
                    format!(
                        "{} names MSR {addr:#x} ({}), which our tables do not know for {model}: check that this CPU has it (reading an MSR a CPU lacks fails with EIO)",
                        r.label(),
                        entry_name(table, addr)
                    ),
                ));
            }
        }
    }
    if let Some(t) = table {
        let unknown_fields: Vec<String> = policy
            .fields_on(model)
            .filter(|(_, a)| t.get(MsrAddr(*a)).is_none())
            .map(|(f, a)| format!("{} ({a:#x}, line {})", f.name, f.line))
            .collect();
        if !unknown_fields.is_empty() {
            findings.push(finding(
                Severity::Warning,
                FindingKind::UnknownMsr,
                None,
                0,
                format!(
                    "fields on MSRs our tables do not know for {model} (give them models = [...] if they are not meant for it): {}",
                    unknown_fields.join(", ")
                ),
            ));
        }
    }

    let mut entries = Vec::new();
    let mut no_fact: Vec<(u32, usize)> = Vec::new();
    for addr in candidates(policy, model, table) {
        let read = rules.decide(addr, AccessKind::Read);
        let write = rules.decide(addr, AccessKind::Write);
        let known = table.and_then(|t| t.get(MsrAddr(addr)));
        // An MSR our tables do not know is listed only when a rule naming it alone decides it.
        if known.is_none() && !read.rule.is_some_and(|i| policy.rules[i].msrs.is_single()) {
            continue;
        }
        let name = entry_name(table, addr);
        if read.action == Action::Deny {
            if write.action == Action::Allow {
                // Only worth saying when a rule allowed the write on purpose.
                if let Some(r) = write.rule {
                    let rule = &policy.rules[r];
                    findings.push(finding(
                        Severity::Warning,
                        FindingKind::WriteWithoutRead,
                        Some(addr),
                        rule.line,
                        format!(
                            "MSR {addr:#x} ({name}): {} allows writing it but reading is denied ({}); msr-safe cannot allow a write without a read, so it is left out",
                            rule.label(),
                            read.rule.map_or("the default".to_string(), |i| policy.rules[i].label())
                        ),
                    ));
                }
            }
            continue;
        }
        let mut mask = 0u64;
        if write.action == Action::Allow {
            let rule_mask = write.rule.and_then(|i| policy.rules[i].mask);
            let fact = known.and_then(|k| k.writable);
            let rule_line = write.rule.map_or(0, |i| policy.rules[i].line);
            mask = match (fact, rule_mask) {
                (Some(f), None) => f,
                (fact, Some(m)) => {
                    let unknown = m & !fact.unwrap_or(0);
                    if unknown != 0 {
                        findings.push(finding(
                            Severity::Warning,
                            FindingKind::UnknownWritableBits,
                            Some(addr),
                            rule_line,
                            match fact {
                                Some(f) => format!(
                                    "MSR {addr:#x} ({name}): the rule's mask {m:#x} makes bits {unknown:#x} writable that our tables do not know as writable on {model} (they know {f:#x})"
                                ),
                                None => format!(
                                    "MSR {addr:#x} ({name}): writable bits {m:#x} come from the rule alone; our tables do not know which bits are writable on {model}"
                                ),
                            },
                        ));
                    }
                    m
                }
                (None, None) => {
                    no_fact.push((addr, rule_line));
                    continue;
                }
            };
            let denied = policy.bits_where(model, addr, |r| r == FieldRule::Deny);
            if mask & denied != 0 {
                let fields: Vec<&str> = policy
                    .fields_on(model)
                    .filter(|(f, a)| *a == addr && f.rule == FieldRule::Deny)
                    .map(|(f, _)| f.name.as_str())
                    .collect();
                findings.push(finding(
                    Severity::Note,
                    FindingKind::DenyField,
                    Some(addr),
                    0,
                    format!(
                        "MSR {addr:#x} ({name}): bits {:#x} of {} (policy deny) taken out of the write mask",
                        mask & denied,
                        fields.join(", ")
                    ),
                ));
                mask &= !denied;
            }
        }
        entries.push(CompiledEntry {
            msr: MsrAddr(addr),
            mask: WriteMask(mask),
            name,
            read_rule: read.rule.map(|i| policy.rules[i].number),
            write_rule: write.rule.map(|i| policy.rules[i].number),
        });
    }
    {
        for (a, line) in &no_fact {
            findings.push(finding(
                Severity::Note,
                FindingKind::NoWritableFact,
                Some(*a),
                *line,
                format!(
                    "MSR {a:#x} ({}) is left out: writing it is allowed but our tables do not know its writable bits on {model} (give mask = ... in a rule to make it writable, or deny writing it to list it read-only)",
                    entry_name(table, *a)
                ),
            ));
        }
    }
    let counters: Vec<&CompiledEntry> = entries
        .iter()
        .filter(|e| e.mask == WriteMask::ALL && looks_like_counter(&e.name))
        .collect();
    for e in &counters {
        findings.push(finding(
            Severity::Warning,
            FindingKind::WritableCounter,
            Some(e.msr.0),
            0,
            format!(
                "MSR {:#x} ({}) looks like a counter and is writable in full: a restore writes back a stale count (deny writing it if no tool here needs to reset it)",
                e.msr.0, e.name
            ),
        ));
    }
    let text = if entries.is_empty() {
        findings.push(finding(
            Severity::Error,
            FindingKind::Empty,
            None,
            0,
            format!(
                "the policy allows no MSR on {model}: msr-safe refuses an empty list (ENOMSG) and keeps its old one, so none is made"
            ),
        ));
        String::new()
    } else {
        render(policy, model, table, &entries, &findings)
    };
    Compiled {
        model,
        file_name: model.allowlist_file_name(),
        entries,
        findings,
        text,
    }
}

/// Wrap `text` into `# ` comment lines of at most [`WRAP`] columns, continuation lines indented
/// by `indent` more spaces.
fn comment(out: &mut String, text: &str, indent: usize) {
    let lead = " ".repeat(text.len() - text.trim_start().len());
    let mut line = String::new();
    let mut first = true;
    for word in text.split_whitespace() {
        let prefix_len = if first {
            lead.len()
        } else {
            lead.len() + indent
        };
        if !line.is_empty() && 2 + prefix_len + line.len() + 1 + word.len() > WRAP {
            let pad = " ".repeat(prefix_len);
            let _ = writeln!(out, "# {pad}{line}");
            line.clear();
            first = false;
        }
        if !line.is_empty() {
            line.push(' ');
        }
        line.push_str(word);
    }
    let pad = " ".repeat(if first {
        lead.len()
    } else {
        lead.len() + indent
    });
    if line.is_empty() {
        out.push_str("#\n");
    } else {
        let _ = writeln!(out, "# {pad}{line}");
    }
}

fn render(
    policy: &Policy,
    model: ModelId,
    table: Option<&CpuModel>,
    entries: &[CompiledEntry],
    findings: &[Finding],
) -> String {
    let mut h = String::new();
    let file = model.allowlist_file_name();
    let cpu = table.map_or_else(|| format!("CPU model {model}"), |t| t.name.to_string());
    comment(&mut h, &format!("msr-restore allowlist for {cpu}."), 2);
    comment(
        &mut h,
        "Named as msr-safe names lists (al_<family>_<model>). Load it in one write:",
        2,
    );
    comment(&mut h, &format!("  cat {file} > /dev/cpu/msr_allowlist"), 2);
    h.push_str("#\n");
    comment(
        &mut h,
        &format!(
            "Made by `{PRODUCER} {} --cpu {model}` from the site policy {} ({}) and msr-restore's tables for this CPU. Change the policy and compile again; do not edit this file.",
            policy.file_name(),
            policy.file_name(),
            policy.digest
        ),
        2,
    );
    if let Some(t) = table {
        h.push_str("#\n");
        for line in [
            "Derived from LLNL msr-safe (https://github.com/LLNL/msr-safe), LLNL-CODE-807679,",
            "Copyright Lawrence Livermore National Security, LLC and other msr-safe Project Developers",
            "(see the COPYRIGHT, LICENSE and NOTICE files of msr-safe, which also carry the LLNL/US DOE",
            "disclaimer). The addresses and write masks below come from msr-safe's allowlists; like them,",
            "this file is licensed under the GNU General Public License version 2 only, without warranty.",
            "SPDX-License-Identifier: GPL-2.0-only",
        ] {
            let _ = writeln!(h, "# {line}");
        }
        h.push_str("#\n");
        comment(
            &mut h,
            "Facts (msr_backend/src/msrs/models.rs, made by allowlists/gen_models.py):",
            2,
        );
        for f in t.facts {
            comment(&mut h, &format!("  {}", f.trim_start()), 2);
        }
    }
    h.push_str("#\n");
    comment(&mut h, "Policy:", 2);
    // Which rules decided which entries.
    let mut by_rule: BTreeMap<Option<usize>, (usize, usize)> = BTreeMap::new();
    for e in entries {
        by_rule.entry(e.read_rule).or_default().0 += 1;
        if e.mask.is_writable() {
            by_rule.entry(e.write_rule).or_default().1 += 1;
        }
    }
    for (rule, (read, written)) in &by_rule {
        let what = match rule {
            None => format!("the default ({})", policy.default),
            Some(n) => {
                let r = &policy.rules[n - 1];
                let why = r
                    .why
                    .as_deref()
                    .map(|w| format!(": {w}"))
                    .unwrap_or_default();
                format!("{} {} {} {}{why}", r.label(), r.action, r.access, r.msrs)
            }
        };
        comment(
            &mut h,
            &format!("  {what} -> {read} listed, {written} writable"),
            2,
        );
    }
    // Findings, grouped by kind: counts and the MSRs when few.
    let mut grouped: Vec<(FindingKind, Severity, Vec<&Finding>)> = Vec::new();
    for f in findings {
        match grouped
            .iter_mut()
            .find(|g| g.0 == f.kind && g.1 == f.severity)
        {
            Some(g) => g.2.push(f),
            None => grouped.push((f.kind, f.severity, vec![f])),
        }
    }
    for (kind, severity, list) in grouped {
        let summary = match kind {
            FindingKind::NoWritableFact => format!(
                "{severity}: {} MSRs our tables know here are left out: a rule allows writing them but no fact gives their writable bits",
                list.len()
            ),
            FindingKind::WritableCounter => format!(
                "{severity}: {} entries look like counters and are writable in full (a restore writes back a stale count)",
                list.len()
            ),
            _ => {
                for f in &list {
                    comment(&mut h, &format!("  {severity}: {}", f.message), 4);
                }
                continue;
            }
        };
        comment(&mut h, &format!("  {summary}:"), 4);
        let names: Vec<String> = list
            .iter()
            .filter_map(|f| f.msr)
            .map(|m| format!("{:#x}", m.0))
            .collect();
        if names.len() <= NAMED_IN_HEADER {
            comment(&mut h, &format!("    {}", names.join(" ")), 2);
        } else {
            comment(
                &mut h,
                &format!(
                    "    {} ... and {} more (msrsave --format json allowlist compile lists them)",
                    names[..NAMED_IN_HEADER].join(" "),
                    names.len() - NAMED_IN_HEADER
                ),
                2,
            );
        }
    }
    h.push_str("#\n");
    let writable = entries.iter().filter(|e| e.mask.is_writable()).count();
    comment(
        &mut h,
        &format!("{} entries, {writable} with a write mask.", entries.len()),
        2,
    );
    h.push_str("#\n");
    h.push_str("# MSR     write mask         name\n");
    for e in entries {
        let _ = writeln!(h, "0x{:08X} 0x{:016X} # {}", e.msr.0, e.mask.0, e.name);
    }
    h
}

/// Check that compiled text is a list the kernel takes, entry for entry (a bug in the renderer
/// must never reach a node).
pub fn verify(c: &Compiled) -> Result<(), String> {
    if c.entries.is_empty() {
        return Ok(());
    }
    let parsed = kernel_parse(c.text.as_bytes()).map_err(|e| e.to_string())?;
    let got: Vec<(u64, u64)> = parsed.iter().map(|e| (e.msr, e.mask)).collect();
    let want: Vec<(u64, u64)> = c
        .entries
        .iter()
        .map(|e| (u64::from(e.msr.0), e.mask.0))
        .collect();
    if got != want {
        return Err("the compiled text does not parse to its entries".to_string());
    }
    if let Some(e) = lint(c.text.as_bytes())
        .into_iter()
        .find(|f| f.severity == LintSeverity::Error)
    {
        return Err(e.to_string());
    }
    Ok(())
}
