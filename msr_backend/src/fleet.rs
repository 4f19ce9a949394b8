//! Nodes compared across a cluster. A node whose BIOS or microcode left a prefetcher off, turbo
//! disabled, a lower power limit or other vulnerability bits is slow or unsafe, and nobody
//! notices; the fields the site policy names say which registers must agree.
//!
//! - [`Fingerprint`]: a small per-node summary: for each field under a comparing policy
//!   (`fleet_equal`, `static`, `subset`, `superset`), its distinct values and the CPUs that hold
//!   them, with the node's CPU model, microcode revision, kernel and allowlist digest. A few KB
//!   whatever the CPU count: 256 CPUs with one value are one line.
//! - [`Comparison`]: fingerprints go in one at a time (from files, save files or a stream) and
//!   are reduced at once to a few numbers per node; groups (CPU model, and what the policy's
//!   `[fleet] group_by` names) count each field's values; [`Comparison::finish`] reports every
//!   node whose field breaks its policy, with the group's majority value and how many nodes agree.
//!   Memory grows with nodes x fields x 8 bytes, not with CPUs or input size.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::allowlist::Allowlist;
use crate::metrics::label;
use crate::msrs::models::ModelId;
use crate::policy::check::field_outcomes;
use crate::policy::{FieldPolicy, FieldRule, NodeAttr, Policy};
use crate::snapshot::Snapshot;
use crate::types::{format_cpu_list, CpuIdentity, MsrAddr};

/// The version of the fingerprint format.
pub const FINGERPRINT_VERSION: u32 = 1;

/// A field's value, shifted down, printed as `0x6`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FieldValue(pub u64);

impl fmt::Display for FieldValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#x}", self.0)
    }
}

impl Serialize for FieldValue {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for FieldValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        let hex = s.strip_prefix("0x").ok_or_else(|| {
            serde::de::Error::custom(format!("{s:?}: expected 0x and hex digits"))
        })?;
        u64::from_str_radix(hex, 16)
            .map(FieldValue)
            .map_err(|e| serde::de::Error::custom(format!("{s:?}: {e}")))
    }
}

impl schemars::JsonSchema for FieldValue {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "FieldValue".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({"type": "string", "description": "a field's value (shifted down to bit 0): 0x and hex digits", "pattern": "^0x[0-9a-f]+$"})
    }
}

/// One value of a field and the CPUs that hold it (or could not read it).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ValueCpus {
    /// The value; absent when the register could not be read on these CPUs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<FieldValue>,
    /// Why it could not be read (`EIO`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The CPUs, in the kernel's list syntax.
    pub cpus: String,
}

/// A field on one node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct FieldValues {
    /// `MSR.field` as the policy names it.
    pub field: String,
    pub msr: MsrAddr,
    /// `0-3`.
    pub bits: String,
    /// Distinct values, in value order (errors last). Empty when the MSR could not be read.
    pub values: Vec<ValueCpus>,
    /// Why there are no values (`not in the allowlist`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub missing: Option<String>,
}

impl ValueCpus {
    /// For people: `0x1 on CPUs 0-3`, `unreadable (EIO) on CPUs 4-7`.
    pub fn text(&self) -> String {
        let what = self.value.map_or_else(
            || format!("unreadable ({})", self.error.as_deref().unwrap_or("?")),
            |x| x.to_string(),
        );
        format!("{what} on CPUs {}", self.cpus)
    }

    /// Several, comma-separated.
    pub fn texts<'v>(values: impl IntoIterator<Item = &'v ValueCpus>) -> String {
        values
            .into_iter()
            .map(ValueCpus::text)
            .collect::<Vec<_>>()
            .join(", ")
    }
}

impl FieldValues {
    /// Its values for people: `0x1 on CPUs 0-3, unreadable (EIO) on CPUs 4-7`.
    pub fn values_text(&self) -> String {
        ValueCpus::texts(&self.values)
    }
}

/// A node's summary for comparison: one JSON object, one line.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Fingerprint {
    /// The format's version ([`FINGERPRINT_VERSION`]).
    pub fingerprint: u32,
    /// The node's name (`--node-name`, else its host name).
    pub node: String,
    pub cpu: CpuIdentity,
    /// `06_55`.
    pub cpu_model: String,
    /// The microcode revision (`/proc/cpuinfo`; a save file's, when it recorded one).
    pub microcode: Option<String>,
    pub kernel: Option<String>,
    /// `sha256:` digest of the allowlist in effect, in the kernel's read-back form.
    pub allowlist: Option<String>,
    /// `sha256:` digest of the policy file the fingerprint was made with.
    pub policy: String,
    /// When the registers were read (RFC 3339, UTC).
    pub taken: String,
    /// `node`, or the save file it was made from.
    pub source: String,
    pub cpus: usize,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    pub fields: Vec<FieldValues>,
    /// Fields with policy `deny` that the node's allowlist lets be written.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub writable_denied: Vec<String>,
}

/// What is known of a node besides its registers.
#[derive(Clone, Debug, Default)]
pub struct NodeFacts {
    pub node: String,
    pub microcode: Option<String>,
    pub kernel: Option<String>,
    pub taken: String,
    pub source: String,
    pub labels: BTreeMap<String, String>,
}

/// The fingerprint of a node from a snapshot of (at least) the MSRs of the policy's compared
/// fields. `allowlist` is the allowlist in effect when it was taken.
pub fn fingerprint(
    policy: &Policy,
    cpu: &CpuIdentity,
    snapshot: &Snapshot,
    allowlist: &Allowlist,
    facts: NodeFacts,
) -> Fingerprint {
    let model = ModelId::from(cpu);
    let mut fields = Vec::new();
    let mut writable_denied = Vec::new();
    for (f, addr) in policy.fields_on(model) {
        let addr = MsrAddr(addr);
        if f.rule == FieldRule::Deny {
            if allowlist.mask(addr).is_some_and(|m| m.0 & f.mask() != 0) {
                writable_denied.push(f.name.clone());
            }
            continue;
        }
        if !f.rule.is_compared() {
            continue;
        }
        let (values, missing) = match field_outcomes(snapshot, addr, f) {
            None => (Vec::new(), Some("not in the allowlist".to_string())),
            Some(outcomes) => {
                let mut v: Vec<ValueCpus> = outcomes
                    .into_iter()
                    .map(|(o, cpus)| ValueCpus {
                        value: o.ok().map(FieldValue),
                        error: o.err().map(|e| e.code()),
                        cpus: format_cpu_list(&cpus),
                    })
                    .collect();
                v.sort_by(|a, b| {
                    (a.value.is_none(), a.value, &a.error).cmp(&(
                        b.value.is_none(),
                        b.value,
                        &b.error,
                    ))
                });
                (v, None)
            }
        };
        fields.push(FieldValues {
            field: f.name.clone(),
            msr: addr,
            bits: f.bits(),
            values,
            missing,
        });
    }
    Fingerprint {
        fingerprint: FINGERPRINT_VERSION,
        node: facts.node,
        cpu: cpu.clone(),
        cpu_model: model.to_string(),
        microcode: facts.microcode,
        kernel: facts.kernel,
        allowlist: Some(allowlist.digest()),
        policy: policy.digest.clone(),
        taken: facts.taken,
        source: facts.source,
        cpus: snapshot.cpus.len(),
        labels: facts.labels,
        fields,
        writable_denied,
    }
}

impl Fingerprint {
    /// Parse one fingerprint: the JSON `fleet fingerprint` prints (with or without the `--format
    /// json` envelope; other keys are ignored, so newer nodes can add some).
    pub fn from_json(text: &str) -> Result<Fingerprint, String> {
        let fp: Fingerprint = serde_json::from_str(text).map_err(|e| e.to_string())?;
        if fp.fingerprint != FINGERPRINT_VERSION {
            return Err(format!(
                "fingerprint version {} (this msrsave reads {FINGERPRINT_VERSION})",
                fp.fingerprint
            ));
        }
        if fp.node.is_empty() {
            return Err("fingerprint with no node name".to_string());
        }
        Ok(fp)
    }

    /// One line of JSON (what `fleet fingerprint --output` writes).
    pub fn to_json_line(&self) -> String {
        let mut s = serde_json::to_string(self).unwrap_or_default();
        s.push('\n');
        s
    }

    fn attr(&self, a: &NodeAttr) -> String {
        let or_unknown = |v: &Option<String>| v.clone().unwrap_or_else(|| "unknown".to_string());
        match a {
            NodeAttr::Microcode => or_unknown(&self.microcode),
            NodeAttr::Kernel => or_unknown(&self.kernel),
            NodeAttr::Allowlist => or_unknown(&self.allowlist),
            NodeAttr::Label(l) => self
                .labels
                .get(l)
                .cloned()
                .unwrap_or_else(|| "unset".to_string()),
        }
    }
}

/// A node's field as compared: its distinct values (errors and a missing MSR count as values).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Seen {
    Value(u64),
    Error(String),
    Missing(String),
}

type Signature = Vec<Seen>;

fn render(sig: &Signature) -> String {
    sig.iter()
        .map(|s| match s {
            Seen::Value(v) => format!("{v:#x}"),
            Seen::Error(e) => format!("unreadable ({e})"),
            Seen::Missing(m) => m.clone(),
        })
        .collect::<Vec<_>>()
        .join(" / ")
}

/// One thing a comparison found wrong with a node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, schemars::JsonSchema)]
pub struct Violation {
    pub node: String,
    /// The node's group (`06_55`, or `06_55 microcode=0x2007006`).
    pub group: String,
    /// The MSR, or none for a node fact (`microcode`, `kernel`, `allowlist`, labels).
    pub msr: Option<MsrAddr>,
    /// `MSR.field`, or the node fact.
    pub field: String,
    /// `fleet_equal`, `static = 0x0`, `subset`, `superset`, `deny`, `equal`.
    pub policy: String,
    /// The node's value(s), with the CPUs when they differ between its CPUs.
    pub value: String,
    /// What it should be: the group's majority value, the static value or the reference.
    pub expected: Option<String>,
    /// How many nodes of the group hold the expected value.
    pub agree: usize,
    /// How many nodes the group has.
    pub group_nodes: usize,
    pub message: String,
}

/// One group of nodes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, schemars::JsonSchema)]
pub struct GroupSummary {
    pub group: String,
    pub cpu_model: String,
    pub nodes: usize,
    /// Nodes with at least one violation.
    pub violating_nodes: usize,
}

/// An input that could not be compared.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, schemars::JsonSchema)]
pub struct InputProblem {
    /// The file, `file:line`, or `stdin:line`.
    pub source: String,
    pub message: String,
}

/// A node and its violations, for per-node metrics.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, schemars::JsonSchema)]
pub struct NodeCount {
    pub node: String,
    pub group: String,
    pub violations: usize,
}

/// What a comparison found.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, schemars::JsonSchema)]
pub struct FleetReport {
    pub policy: String,
    pub policy_digest: String,
    pub nodes: usize,
    pub groups: Vec<GroupSummary>,
    pub violating_nodes: usize,
    /// Every violation, by group, then node, then field.
    pub violations: Vec<Violation>,
    pub problems: Vec<InputProblem>,
    /// Things worth knowing that break no policy (fingerprints made with another policy, ...).
    pub notes: Vec<String>,
    /// Every node and how many violations it has (the Prometheus output; not in JSON).
    #[serde(skip)]
    pub per_node: Vec<NodeCount>,
}

impl FleetReport {
    pub fn clean(&self) -> bool {
        self.violations.is_empty() && self.problems.is_empty()
    }
}

/// What a compared field is, as the comparison keeps it.
struct Compared<'p> {
    policy: &'p FieldPolicy,
    /// Interned signatures of this field, and their numbers.
    ids: HashMap<Signature, u32>,
    sigs: Vec<Signature>,
}

impl Compared<'_> {
    fn intern(&mut self, sig: Signature) -> u32 {
        if let Some(&i) = self.ids.get(&sig) {
            return i;
        }
        let i = self.sigs.len() as u32;
        self.sigs.push(sig.clone());
        self.ids.insert(sig, i);
        i
    }
}

/// A node once reduced: a few numbers per field.
struct NodeRec {
    node: String,
    group: u32,
    /// (compared field index, signature id); fields the node lacks are absent.
    fields: Vec<(u32, u32)>,
    /// (equal-attribute index, interned value id).
    attrs: Vec<(u32, u32)>,
    /// For fields whose value differs between the node's CPUs: the values with their CPUs.
    detail: Vec<(u32, Box<str>)>,
}

struct GroupAcc {
    key: String,
    cpu_model: String,
    nodes: usize,
    /// Per compared field: signature id -> nodes.
    counts: Vec<HashMap<u32, u32>>,
    /// Per equal-attribute: value id -> nodes.
    attr_counts: Vec<HashMap<u32, u32>>,
}

/// A comparison in progress.
pub struct Comparison<'p> {
    policy: &'p Policy,
    compared: Vec<Compared<'p>>,
    by_name: HashMap<&'p str, usize>,
    groups: Vec<GroupAcc>,
    group_ids: HashMap<String, u32>,
    attr_values: Vec<HashMap<String, u32>>,
    attr_names: Vec<Vec<String>>,
    nodes: Vec<NodeRec>,
    seen: HashSet<String>,
    violations: Vec<Violation>,
    problems: Vec<InputProblem>,
    other_policy: usize,
}

impl<'p> Comparison<'p> {
    pub fn new(policy: &'p Policy) -> Self {
        let compared: Vec<Compared<'p>> = policy
            .fields
            .iter()
            .filter(|f| f.rule.is_compared())
            .map(|f| Compared {
                policy: f,
                ids: HashMap::new(),
                sigs: Vec::new(),
            })
            .collect();
        let by_name = compared
            .iter()
            .enumerate()
            .map(|(i, c)| (c.policy.name.as_str(), i))
            .collect();
        let n_attrs = policy.fleet.equal.len();
        Comparison {
            policy,
            compared,
            by_name,
            groups: Vec::new(),
            group_ids: HashMap::new(),
            attr_values: vec![HashMap::new(); n_attrs],
            attr_names: vec![Vec::new(); n_attrs],
            nodes: Vec::new(),
            seen: HashSet::new(),
            violations: Vec::new(),
            problems: Vec::new(),
            other_policy: 0,
        }
    }

    /// An input that could not be read or parsed.
    pub fn problem(&mut self, source: impl Into<String>, message: impl Into<String>) {
        self.problems.push(InputProblem {
            source: source.into(),
            message: message.into(),
        });
    }

    fn group_of(&mut self, fp: &Fingerprint) -> u32 {
        let mut key = fp.cpu_model.clone();
        for a in &self.policy.fleet.group_by {
            key.push_str(&format!(" {a}={}", fp.attr(a)));
        }
        if let Some(&g) = self.group_ids.get(&key) {
            return g;
        }
        let g = self.groups.len() as u32;
        self.groups.push(GroupAcc {
            key: key.clone(),
            cpu_model: fp.cpu_model.clone(),
            nodes: 0,
            counts: vec![HashMap::new(); self.compared.len()],
            attr_counts: vec![HashMap::new(); self.policy.fleet.equal.len()],
        });
        self.group_ids.insert(key, g);
        g
    }

    /// Add one node. `source` names where it came from, for messages.
    pub fn add(&mut self, fp: Fingerprint, source: &str) {
        if !self.seen.insert(fp.node.clone()) {
            self.problem(
                source,
                format!("node {} was given already: this one is ignored", fp.node),
            );
            return;
        }
        if fp.policy != self.policy.digest {
            self.other_policy += 1;
        }
        let model: Option<ModelId> = fp.cpu_model.parse().ok();
        let g = self.group_of(&fp);
        let group_key = self.groups[g as usize].key.clone();
        let mut rec = NodeRec {
            node: fp.node.clone(),
            group: g,
            fields: Vec::new(),
            attrs: Vec::new(),
            detail: Vec::new(),
        };
        for fv in &fp.fields {
            let Some(&ci) = self.by_name.get(fv.field.as_str()) else {
                continue;
            };
            let fpol = self.compared[ci].policy;
            if model.is_some_and(|m| !fpol.applies_to(m)) {
                continue;
            }
            let mut sig: Signature = fv
                .values
                .iter()
                .map(|v| match (&v.value, &v.error) {
                    (Some(x), _) => Seen::Value(x.0),
                    (None, e) => Seen::Error(e.clone().unwrap_or_else(|| "?".to_string())),
                })
                .collect();
            if let Some(m) = &fv.missing {
                sig.push(Seen::Missing(m.clone()));
            }
            if sig.is_empty() {
                sig.push(Seen::Missing("no value".to_string()));
            }
            if fv.values.len() > 1 {
                let d = fv.values_text();
                rec.detail.push((ci as u32, d.into_boxed_str()));
            }
            // Static: decided by the node alone.
            if let FieldRule::Static(want) = fpol.rule {
                let bad: Vec<&ValueCpus> = fv
                    .values
                    .iter()
                    .filter(|v| v.value != Some(FieldValue(want)))
                    .collect();
                if !bad.is_empty() || fv.values.is_empty() {
                    let value = if fv.values.is_empty() {
                        fv.missing.clone().unwrap_or_else(|| "no value".to_string())
                    } else {
                        ValueCpus::texts(bad.iter().copied())
                    };
                    self.violations.push(Violation {
                        node: fp.node.clone(),
                        group: group_key.clone(),
                        msr: Some(fv.msr),
                        field: fv.field.clone(),
                        policy: fpol.rule.to_string(),
                        message: format!("{} is {value}, must be {want:#x}", fv.field),
                        value,
                        expected: Some(format!("{want:#x}")),
                        agree: 0,
                        group_nodes: 0,
                    });
                }
            }
            let id = self.compared[ci].intern(sig);
            rec.fields.push((ci as u32, id));
        }
        for name in &fp.writable_denied {
            let msr = self
                .policy
                .fields
                .iter()
                .find(|f| &f.name == name)
                .and_then(|f| model.and_then(|m| f.addr_on(m)))
                .map(MsrAddr);
            self.violations.push(Violation {
                node: fp.node.clone(),
                group: group_key.clone(),
                msr,
                field: name.clone(),
                policy: "deny".to_string(),
                value: "writable".to_string(),
                expected: Some("not writable".to_string()),
                agree: 0,
                group_nodes: 0,
                message: format!(
                    "{name} must never be writable, but the node's allowlist lets it be written"
                ),
            });
        }
        for (ai, a) in self.policy.fleet.equal.iter().enumerate() {
            let v = fp.attr(a);
            let ids = &mut self.attr_values[ai];
            let next = ids.len() as u32;
            let id = *ids.entry(v.clone()).or_insert_with(|| {
                self.attr_names[ai].push(v);
                next
            });
            rec.attrs.push((ai as u32, id));
        }
        let group = &mut self.groups[g as usize];
        group.nodes += 1;
        for &(ci, id) in &rec.fields {
            *group.counts[ci as usize].entry(id).or_insert(0) += 1;
        }
        for &(ai, id) in &rec.attrs {
            *group.attr_counts[ai as usize].entry(id).or_insert(0) += 1;
        }
        self.nodes.push(rec);
    }

    /// Every violation, once all nodes are in.
    pub fn finish(mut self) -> FleetReport {
        // The majority of each group, per field and per node fact: (id, nodes), or None on a tie.
        let majority = |counts: &HashMap<u32, u32>| -> Option<(u32, u32)> {
            let mut best: Option<(u32, u32)> = None;
            let mut tie = false;
            for (&id, &n) in counts {
                match best {
                    Some((_, b)) if n < b => {}
                    Some((_, b)) if n == b => tie = true,
                    _ => {
                        best = Some((id, n));
                        tie = false;
                    }
                }
            }
            if tie {
                None
            } else {
                best
            }
        };
        let maj: Vec<Vec<Option<(u32, u32)>>> = self
            .groups
            .iter()
            .map(|g| g.counts.iter().map(majority).collect())
            .collect();
        let attr_maj: Vec<Vec<Option<(u32, u32)>>> = self
            .groups
            .iter()
            .map(|g| g.attr_counts.iter().map(majority).collect())
            .collect();
        let mut notes = Vec::new();
        let mut tie_noted: HashSet<(u32, u32)> = HashSet::new();
        // Fields most of a group cannot read are not really compared there: say so.
        for (gi, g) in self.groups.iter().enumerate() {
            for (ci, c) in self.compared.iter().enumerate() {
                if let Some((mid, n)) = maj[gi][ci] {
                    if let [Seen::Missing(why)] = c.sigs[mid as usize].as_slice() {
                        notes.push(format!(
                            "group {}: {} is {why} on {n} of {} nodes: add its MSR to the allowlist (a read rule in the policy) to compare it",
                            g.key, c.policy.name, g.nodes
                        ));
                        if matches!(
                            c.policy.rule,
                            FieldRule::Subset(None) | FieldRule::Superset(None)
                        ) {
                            tie_noted.insert((gi as u32, ci as u32));
                        }
                    }
                }
            }
        }
        for rec in &self.nodes {
            let group = &self.groups[rec.group as usize];
            for &(ci, id) in &rec.fields {
                let c = &self.compared[ci as usize];
                let sig = &c.sigs[id as usize];
                let value = rec
                    .detail
                    .iter()
                    .find(|(i, _)| *i == ci)
                    .map_or_else(|| render(sig), |(_, d)| d.to_string());
                let m = maj[rec.group as usize][ci as usize];
                let agree_with =
                    |mid: u32| group.counts[ci as usize].get(&mid).copied().unwrap_or(0) as usize;
                let base = |expected: Option<String>, agree: usize, message: String| Violation {
                    node: rec.node.clone(),
                    group: group.key.clone(),
                    msr: field_msr(c.policy, &group.cpu_model),
                    field: c.policy.name.clone(),
                    policy: c.policy.rule.to_string(),
                    value: value.clone(),
                    expected,
                    agree,
                    group_nodes: group.nodes,
                    message,
                };
                match c.policy.rule {
                    FieldRule::FleetEqual => match m {
                        Some((mid, n)) if mid != id => {
                            let expected = render(&c.sigs[mid as usize]);
                            self.violations.push(base(
                                Some(expected.clone()),
                                n as usize,
                                format!(
                                    "{} is {value}; {n} of {} nodes in group {} have {expected}",
                                    c.policy.name, group.nodes, group.key
                                ),
                            ));
                        }
                        None => {
                            if tie_noted.insert((rec.group, ci)) {
                                notes.push(format!(
                                    "group {}: {} has no majority value ({} values tie); every node is reported",
                                    group.key,
                                    c.policy.name,
                                    group.counts[ci as usize].len()
                                ));
                            }
                            self.violations.push(base(
                                None,
                                agree_with(id),
                                format!(
                                    "{} is {value}; no value holds a majority in group {}",
                                    c.policy.name, group.key
                                ),
                            ));
                        }
                        _ => {}
                    },
                    FieldRule::Subset(reference) | FieldRule::Superset(reference) => {
                        let superset = matches!(c.policy.rule, FieldRule::Superset(_));
                        let (reference, what, agree) = match reference {
                            Some(r) => (Some(r), format!("{r:#x} (the policy's reference)"), 0),
                            None => match m.map(|(mid, n)| (&c.sigs[mid as usize], n)) {
                                Some((s, n)) if s.len() == 1 => match s[0] {
                                    Seen::Value(v) => (
                                        Some(v),
                                        format!("{v:#x} (the group's majority)"),
                                        n as usize,
                                    ),
                                    _ => (None, String::new(), 0),
                                },
                                _ => (None, String::new(), 0),
                            },
                        };
                        let Some(r) = reference else {
                            if tie_noted.insert((rec.group, ci)) {
                                let why = match m {
                                    Some((mid, _)) => {
                                        format!("most nodes have {}", render(&c.sigs[mid as usize]))
                                    }
                                    None => "no value holds a majority".to_string(),
                                };
                                notes.push(format!(
                                    "group {}: {} not compared: no reference in the policy and no single value to take from the group ({why})",
                                    group.key, c.policy.name
                                ));
                            }
                            continue;
                        };
                        let mut problems = Vec::new();
                        for s in sig {
                            match s {
                                Seen::Value(v) => {
                                    let extra = v & !r;
                                    let lacking = r & !v;
                                    if superset && extra != 0 {
                                        problems.push(format!(
                                            "has bits {extra:#x} the reference lacks"
                                        ));
                                    } else if !superset && lacking != 0 {
                                        problems.push(format!(
                                            "lacks bits {lacking:#x} the reference has"
                                        ));
                                    }
                                }
                                other => problems.push(render(&vec![other.clone()])),
                            }
                        }
                        if !problems.is_empty() {
                            self.violations.push(base(
                                Some(format!("{r:#x}")),
                                agree,
                                format!(
                                    "{} is {value}: {}; it must be a {} of {what}",
                                    c.policy.name,
                                    problems.join(", "),
                                    if superset { "subset" } else { "superset" }
                                ),
                            ));
                        }
                    }
                    _ => {}
                }
            }
            for &(ai, id) in &rec.attrs {
                let a = &self.policy.fleet.equal[ai as usize];
                let names = &self.attr_names[ai as usize];
                match attr_maj[rec.group as usize][ai as usize] {
                    Some((mid, n)) if mid != id => self.violations.push(Violation {
                        node: rec.node.clone(),
                        group: group.key.clone(),
                        msr: None,
                        field: a.to_string(),
                        policy: "equal".to_string(),
                        value: names[id as usize].clone(),
                        expected: Some(names[mid as usize].clone()),
                        agree: n as usize,
                        group_nodes: group.nodes,
                        message: format!(
                            "{a} is {}; {n} of {} nodes in group {} have {}",
                            names[id as usize], group.nodes, group.key, names[mid as usize]
                        ),
                    }),
                    None if tie_noted.insert((rec.group, u32::MAX - ai)) => notes.push(format!(
                        "group {}: {a} has no majority value; not compared",
                        group.key
                    )),
                    _ => {}
                }
            }
        }
        if self.other_policy > 0 {
            notes.push(format!(
                "{} fingerprint(s) were made with another policy than {} ({}): fields it does not name are ignored, fields missing from them are not compared",
                self.other_policy, self.policy.source, self.policy.digest
            ));
        }
        // Group, node, field order.
        let group_index: HashMap<&str, usize> = {
            let mut keys: Vec<&str> = self.groups.iter().map(|g| g.key.as_str()).collect();
            keys.sort_unstable();
            keys.into_iter().enumerate().map(|(i, k)| (k, i)).collect()
        };
        self.violations.sort_by(|a, b| {
            (group_index.get(a.group.as_str()), &a.node, &a.field).cmp(&(
                group_index.get(b.group.as_str()),
                &b.node,
                &b.field,
            ))
        });
        let mut per_node_count: HashMap<&str, usize> = HashMap::new();
        for v in &self.violations {
            *per_node_count.entry(v.node.as_str()).or_insert(0) += 1;
        }
        let mut per_node: Vec<NodeCount> = self
            .nodes
            .iter()
            .map(|r| NodeCount {
                node: r.node.clone(),
                group: self.groups[r.group as usize].key.clone(),
                violations: per_node_count.get(r.node.as_str()).copied().unwrap_or(0),
            })
            .collect();
        per_node.sort_by(|a, b| a.node.cmp(&b.node));
        let mut violating_by_group: HashMap<&str, usize> = HashMap::new();
        for n in per_node.iter().filter(|n| n.violations > 0) {
            *violating_by_group.entry(n.group.as_str()).or_insert(0) += 1;
        }
        let mut groups: Vec<GroupSummary> = self
            .groups
            .iter()
            .map(|g| GroupSummary {
                group: g.key.clone(),
                cpu_model: g.cpu_model.clone(),
                nodes: g.nodes,
                violating_nodes: violating_by_group.get(g.key.as_str()).copied().unwrap_or(0),
            })
            .collect();
        groups.sort_by(|a, b| a.group.cmp(&b.group));
        FleetReport {
            policy: self.policy.source.clone(),
            policy_digest: self.policy.digest.clone(),
            nodes: self.nodes.len(),
            violating_nodes: per_node.iter().filter(|n| n.violations > 0).count(),
            groups,
            violations: self.violations,
            problems: self.problems,
            notes,
            per_node,
        }
    }
}

/// The MSR of a field on a model given as text (`06_55`).
fn field_msr(f: &FieldPolicy, model: &str) -> Option<MsrAddr> {
    let m: ModelId = model.parse().ok()?;
    f.addr_on(m).map(MsrAddr)
}

/// node_exporter textfile metrics of a comparison: violations per node (every node, 0 included),
/// nodes per group, violations per group and field.
pub fn prometheus(report: &FleetReport, now_seconds: f64) -> String {
    let mut t = String::new();
    let gauge = |t: &mut String, name: &str, help: &str| {
        t.push_str(&format!("# HELP {name} {help}\n# TYPE {name} gauge\n"));
    };
    gauge(
        &mut t,
        "msr_restore_fleet_node_violations",
        "Fields and node facts of a node that break the site policy (last fleet compare).",
    );
    for n in &report.per_node {
        t.push_str(&format!(
            "msr_restore_fleet_node_violations{{node=\"{}\",group=\"{}\"}} {}\n",
            label(&n.node),
            label(&n.group),
            n.violations
        ));
    }
    gauge(
        &mut t,
        "msr_restore_fleet_group_nodes",
        "Nodes compared, per group.",
    );
    for g in &report.groups {
        t.push_str(&format!(
            "msr_restore_fleet_group_nodes{{group=\"{}\"}} {}\n",
            label(&g.group),
            g.nodes
        ));
    }
    gauge(
        &mut t,
        "msr_restore_fleet_field_violations",
        "Nodes whose field breaks its policy, per group and field.",
    );
    let mut per_field: BTreeMap<(&str, &str), usize> = BTreeMap::new();
    for v in &report.violations {
        *per_field.entry((&v.group, &v.field)).or_insert(0) += 1;
    }
    for ((g, f), n) in per_field {
        t.push_str(&format!(
            "msr_restore_fleet_field_violations{{group=\"{}\",field=\"{}\"}} {n}\n",
            label(g),
            label(f)
        ));
    }
    gauge(
        &mut t,
        "msr_restore_fleet_input_problems",
        "Inputs (files, lines) that could not be compared.",
    );
    t.push_str(&format!(
        "msr_restore_fleet_input_problems {}\n",
        report.problems.len()
    ));
    gauge(
        &mut t,
        "msr_restore_fleet_compare_timestamp_seconds",
        "Unix time of the last fleet compare.",
    );
    t.push_str(&format!(
        "msr_restore_fleet_compare_timestamp_seconds {now_seconds}\n"
    ));
    t
}

#[cfg(test)]
mod tests;
