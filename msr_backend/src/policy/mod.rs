//! The site policy: one hand-edited TOML file for a whole fleet (docs/policy.md) that says
//!
//! - which MSRs the allowlists give and which bits they let be written: ordered range rules
//!   `{msrs, access read|write|read_write, action allow|deny}`, the first rule that matches an MSR
//!   and an access decides, a default decides the rest (the KVM MSR filter's model);
//!   [`compile`] turns them into msr-safe allowlists;
//! - what each named bit field is for: `restore` (the default), `fleet_equal`, `host`,
//!   `static = V`, `deny`, `subset` / `superset`; the health check ([`check`]) and the fleet
//!   comparison ([`crate::fleet`]) honour them;
//! - how nodes are grouped for the comparison.
//!
//! Names come from our tables ([`crate::msrs`], [`crate::msrs::models`],
//! [`crate::msrs::fields`]). Every problem names the file and line.

pub mod check;
pub mod compile;
pub mod lint;
mod parse;

use std::fmt;
use std::path::{Path, PathBuf};

use crate::fsio::{self, Expect, InputError, Links};
use crate::msrs::fields::format_bits;
use crate::msrs::models::{self, CpuModel, ModelId};
use crate::msrs::{self as msr_table};

pub use parse::parse;

/// The largest policy file read: thousands of rules and fields.
pub const MAX_POLICY_BYTES: u64 = 1024 * 1024;
/// The only version of the file format so far.
pub const POLICY_VERSION: u32 = 1;

/// What a rule or the default does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    Allow,
    Deny,
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Action::Allow => "allow",
            Action::Deny => "deny",
        })
    }
}

/// The accesses a rule covers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    Read,
    Write,
    ReadWrite,
}

impl Access {
    pub fn covers(self, kind: AccessKind) -> bool {
        matches!(
            (self, kind),
            (Access::ReadWrite, _)
                | (Access::Read, AccessKind::Read)
                | (Access::Write, AccessKind::Write)
        )
    }
}

impl fmt::Display for Access {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Access::Read => "read",
            Access::Write => "write",
            Access::ReadWrite => "read_write",
        })
    }
}

/// One access to decide: an MSR is listed when reading it is allowed, and its bits are writable
/// when writing is allowed too.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AccessKind {
    Read,
    Write,
}

/// An MSR as a policy names it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MsrRef {
    Addr(u32),
    Name(String),
}

impl fmt::Display for MsrRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MsrRef::Addr(a) => write!(f, "{a:#x}"),
            MsrRef::Name(n) => f.write_str(n),
        }
    }
}

impl MsrRef {
    /// The address on `model`: a number as it is; a name from the model's table, else from the
    /// architectural table (names can differ between models: 0x64F and 0x690 are both called
    /// MSR_CORE_PERF_LIMIT_REASONS in SDM tables of different CPUs).
    pub fn resolve(&self, model: Option<&CpuModel>) -> Option<u32> {
        match self {
            MsrRef::Addr(a) => Some(*a),
            MsrRef::Name(n) => model
                .and_then(|m| m.by_name(n))
                .map(|m| m.addr)
                .or_else(|| global_addr(n)),
        }
    }

    /// Whether any table knows the name (numbers always resolve).
    fn known_anywhere(&self) -> bool {
        match self {
            MsrRef::Addr(_) => true,
            MsrRef::Name(n) => {
                global_addr(n).is_some() || models::models().iter().any(|m| m.by_name(n).is_some())
            }
        }
    }
}

fn global_addr(name: &str) -> Option<u32> {
    msr_table::KNOWN_MSRS
        .iter()
        .find(|m| m.name == name)
        .map(|m| m.addr)
}

/// `first-last`, or one MSR.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MsrRange {
    pub first: MsrRef,
    pub last: MsrRef,
}

impl MsrRange {
    pub fn resolve(&self, model: Option<&CpuModel>) -> Option<(u32, u32)> {
        Some((self.first.resolve(model)?, self.last.resolve(model)?))
    }

    pub fn is_single(&self) -> bool {
        self.first == self.last
    }
}

impl fmt::Display for MsrRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_single() {
            write!(f, "{}", self.first)
        } else {
            write!(f, "{}-{}", self.first, self.last)
        }
    }
}

/// One `[[rule]]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    /// 1-based, in file order.
    pub number: usize,
    pub line: usize,
    pub msrs: MsrRange,
    pub access: Access,
    pub action: Action,
    /// Only these CPU models (`None`: every model).
    pub models: Option<Vec<ModelId>>,
    /// For a rule that allows writing: the bits it allows (our tables' writable bits otherwise).
    pub mask: Option<u64>,
    pub why: Option<String>,
}

impl Rule {
    pub fn applies_to(&self, model: ModelId) -> bool {
        self.models.as_ref().is_none_or(|m| m.contains(&model))
    }

    /// `rule 3 (line 40)`.
    pub fn label(&self) -> String {
        format!("rule {} (line {})", self.number, self.line)
    }
}

/// What a named field is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FieldRule {
    /// Put back at job end (every writable bit is, unless a rule says otherwise).
    Restore,
    /// Must be equal on every node of a group.
    FleetEqual,
    /// Node-specific: never compared across nodes, never drift.
    Host,
    /// Must hold this value (shifted down: the field's own value).
    Static(u64),
    /// Must never be writable.
    Deny,
    /// The reference's bits must be a subset of each node's (features: a node may have more,
    /// never fewer). The reference is this value, or the group's majority.
    Subset(Option<u64>),
    /// The reference's bits must be a superset of each node's (vulnerabilities: a node may have
    /// fewer, never more).
    Superset(Option<u64>),
}

impl FieldRule {
    pub fn name(self) -> &'static str {
        match self {
            FieldRule::Restore => "restore",
            FieldRule::FleetEqual => "fleet_equal",
            FieldRule::Host => "host",
            FieldRule::Static(_) => "static",
            FieldRule::Deny => "deny",
            FieldRule::Subset(_) => "subset",
            FieldRule::Superset(_) => "superset",
        }
    }

    /// Compared across the nodes of a fleet (and so in a fingerprint).
    pub fn is_compared(self) -> bool {
        matches!(
            self,
            FieldRule::FleetEqual
                | FieldRule::Static(_)
                | FieldRule::Subset(_)
                | FieldRule::Superset(_)
        )
    }
}

impl fmt::Display for FieldRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FieldRule::Static(v) => write!(f, "static = {v:#x}"),
            FieldRule::Subset(Some(v)) => write!(f, "subset of {v:#x}"),
            FieldRule::Superset(Some(v)) => write!(f, "superset of {v:#x}"),
            other => f.write_str(other.name()),
        }
    }
}

/// One `[field.MSR.NAME]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldPolicy {
    /// `MSR.field` as the file spells it.
    pub name: String,
    pub msr: MsrRef,
    pub field: String,
    pub lo: u8,
    pub hi: u8,
    pub rule: FieldRule,
    pub models: Option<Vec<ModelId>>,
    pub line: usize,
    /// False when our field table does not know it (the file gave its bits).
    pub known: bool,
    pub why: Option<String>,
}

impl FieldPolicy {
    pub fn mask(&self) -> u64 {
        crate::msrs::fields::bits_mask(self.lo, self.hi)
    }

    pub fn extract(&self, register: u64) -> u64 {
        (register & self.mask()) >> self.lo
    }

    pub fn applies_to(&self, model: ModelId) -> bool {
        self.models.as_ref().is_none_or(|m| m.contains(&model))
    }

    /// The MSR on `model`, if the field applies there and its MSR resolves.
    pub fn addr_on(&self, model: ModelId) -> Option<u32> {
        if !self.applies_to(model) {
            return None;
        }
        self.msr.resolve(models::model(model))
    }

    /// `bits 0-3`.
    pub fn bits(&self) -> String {
        format_bits(self.lo, self.hi)
    }
}

/// What else than the CPU model groups nodes, or must be equal across a group.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum NodeAttr {
    Microcode,
    Kernel,
    /// The digest of the allowlist in effect.
    Allowlist,
    /// A label given to `fleet fingerprint --label NAME=VALUE`.
    Label(String),
}

impl fmt::Display for NodeAttr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NodeAttr::Microcode => f.write_str("microcode"),
            NodeAttr::Kernel => f.write_str("kernel"),
            NodeAttr::Allowlist => f.write_str("allowlist"),
            NodeAttr::Label(l) => write!(f, "label:{l}"),
        }
    }
}

/// `[fleet]`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FleetSettings {
    /// Besides the CPU model, always a grouping key.
    pub group_by: Vec<NodeAttr>,
    /// Node facts that must be equal across a group.
    pub equal: Vec<NodeAttr>,
}

/// Something the file says that works but may not be what was meant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyWarning {
    pub line: usize,
    pub message: String,
}

/// A policy file that cannot be used, with where.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("policy file")]
    Read(#[source] InputError),
    #[error("{file}:{line}: {message}")]
    Invalid {
        file: String,
        line: usize,
        message: String,
    },
}

/// A parsed, checked policy.
#[derive(Clone, Debug)]
pub struct Policy {
    /// The file as named to us, for messages.
    pub source: String,
    /// `sha256:<hex>` of the file's bytes.
    pub digest: String,
    pub default: Action,
    pub rules: Vec<Rule>,
    pub fields: Vec<FieldPolicy>,
    pub fleet: FleetSettings,
    pub warnings: Vec<PolicyWarning>,
}

/// The decision for one MSR and access, and which rule made it (`None`: the default).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decision {
    pub action: Action,
    pub rule: Option<usize>,
}

impl Policy {
    /// Read and check a policy file (a regular file of at most [`MAX_POLICY_BYTES`]).
    pub fn load(path: &Path) -> Result<Policy, PolicyError> {
        let bytes = fsio::read_file(
            path,
            Expect::Regular,
            Links::Follow,
            MAX_POLICY_BYTES,
            "policy file",
        )
        .map_err(PolicyError::Read)?;
        parse(&bytes, &path.display().to_string())
    }

    /// The first rule that matches `addr` and `kind` on `model` decides; else the default.
    /// `table` is the model's table (for names), if we know the model. To decide many MSRs,
    /// [`Policy::rules_for`] resolves the names once.
    pub fn decide(
        &self,
        model: ModelId,
        table: Option<&CpuModel>,
        addr: u32,
        kind: AccessKind,
    ) -> Decision {
        self.rules_for(model, table).decide(addr, kind)
    }

    /// The rules as they apply on `model`, with their MSR names resolved there.
    pub fn rules_for(&self, model: ModelId, table: Option<&CpuModel>) -> ModelRules<'_> {
        ModelRules {
            policy: self,
            ranges: self
                .rules
                .iter()
                .map(|r| r.applies_to(model).then(|| r.msrs.resolve(table)).flatten())
                .collect(),
        }
    }

    /// The fields that apply on `model` and whose MSR resolves there, with that address.
    pub fn fields_on(&self, model: ModelId) -> impl Iterator<Item = (&FieldPolicy, u32)> + '_ {
        self.fields
            .iter()
            .filter_map(move |f| f.addr_on(model).map(|a| (f, a)))
    }

    /// The bits of `addr` under fields with `pred` on `model`.
    pub fn bits_where(&self, model: ModelId, addr: u32, pred: impl Fn(FieldRule) -> bool) -> u64 {
        self.fields_on(model)
            .filter(|(f, a)| *a == addr && pred(f.rule))
            .fold(0, |m, (f, _)| m | f.mask())
    }

    /// The file name alone (for headers that must not depend on where the file was read from).
    pub fn file_name(&self) -> String {
        Path::new(&self.source)
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| self.source.clone())
    }
}

/// A policy's rules on one model, names resolved ([`Policy::rules_for`]).
pub struct ModelRules<'p> {
    policy: &'p Policy,
    /// Per rule: its range on the model, or `None` when it does not apply there.
    ranges: Vec<Option<(u32, u32)>>,
}

impl ModelRules<'_> {
    /// The first rule that matches `addr` and `kind` decides; else the default.
    pub fn decide(&self, addr: u32, kind: AccessKind) -> Decision {
        for (i, (r, range)) in self.policy.rules.iter().zip(&self.ranges).enumerate() {
            let Some((first, last)) = *range else {
                continue;
            };
            if r.access.covers(kind) && first <= addr && addr <= last {
                return Decision {
                    action: r.action,
                    rule: Some(i),
                };
            }
        }
        Decision {
            action: self.policy.default,
            rule: None,
        }
    }
}

/// Where a setting names the policy file: the default path is used only if it exists.
pub const DEFAULT_POLICY: &str = "/etc/msr-restore/policy.toml";

/// The policy the configuration names: `None` for none (empty setting, or the default path with
/// no file there).
pub fn configured(setting: Option<&PathBuf>) -> Option<PathBuf> {
    let p = setting?;
    if p.as_os_str() == DEFAULT_POLICY && !p.exists() {
        return None;
    }
    Some(p.clone())
}

#[cfg(test)]
mod tests;
