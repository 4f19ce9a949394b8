//! `fleet fingerprint | compare`: nodes compared across a cluster against the site policy.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use anyhow::{Context as _, Result};
use msr_backend::fleet::{self, Comparison, Fingerprint, FleetReport, NodeFacts};
use msr_backend::fsio::{self, write_atomically, Expect, Links};
use msr_backend::metrics;
use msr_backend::msrs::models::ModelId;
use msr_backend::node::hostname;
use msr_backend::policy::check::field_list;
use msr_backend::policy::Policy;
use msr_backend::savefile::{self, Loaded, Origin, SaveFile};
use msr_backend::snapshot::Snapshot;
use schemars::JsonSchema;
use serde::Serialize;

use super::{shown, Context};
use crate::cli::FleetCommand;
use crate::output::{line, ms, ExitStatus, Outcome, Report};

/// Mode of the files written: node_exporter and collection scripts read them.
const SHARED_FILE_MODE: u32 = 0o644;
/// The longest fingerprint line read (a fingerprint is a few KB; 8192 CPUs that all differ on
/// every field stay far below this).
const MAX_LINE_BYTES: u64 = 16 * 1024 * 1024;
/// How many violations the readable report lists.
const SHOWN: usize = 200;

pub fn run(ctx: &Context, cmd: &FleetCommand) -> Result<Outcome> {
    match cmd {
        FleetCommand::Fingerprint {
            policy,
            from,
            output,
            node_name,
            labels,
        } => fingerprint(
            ctx,
            policy.as_deref(),
            from.as_deref(),
            output.as_deref(),
            node_name.as_deref(),
            labels,
        )
        .map(Outcome::of),
        FleetCommand::Compare {
            inputs,
            policy,
            prometheus,
        } => compare(ctx, inputs, policy.as_deref(), prometheus.as_deref()).map(Outcome::of),
    }
}

fn need_policy(ctx: &Context, explicit: Option<&Path>) -> Result<Policy> {
    ctx.policy(explicit)?.ok_or_else(|| {
        anyhow::anyhow!(
            "no site policy: pass --policy FILE or set `policy` in the configuration (the fields to compare come from it; see docs/policy.md)"
        )
    })
}

fn now_rfc3339() -> String {
    humantime::format_rfc3339_seconds(SystemTime::now()).to_string()
}

fn parse_labels(labels: &[String]) -> Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for l in labels {
        let (k, v) = l
            .split_once('=')
            .filter(|(k, _)| !k.is_empty())
            .ok_or_else(|| anyhow::anyhow!("--label {l:?}: expected NAME=VALUE"))?;
        anyhow::ensure!(
            out.insert(k.to_string(), v.to_string()).is_none(),
            "--label {k} given twice"
        );
    }
    Ok(out)
}

/// The fingerprint of a save file of ours.
fn of_save_file(policy: &Policy, file: &SaveFile, path: &Path) -> Fingerprint {
    let m = &file.meta;
    fleet::fingerprint(
        policy,
        &m.cpu,
        &file.snapshot,
        &file.snapshot.allowlist,
        NodeFacts {
            node: m.host.clone(),
            microcode: m.microcode.clone(),
            kernel: m.kernel.clone(),
            taken: m.created.clone(),
            source: format!("save file {}", shown(path)),
            labels: BTreeMap::new(),
        },
    )
}

/// `fleet fingerprint`: this node's summary.
#[derive(Serialize, JsonSchema)]
pub struct FleetFingerprint {
    #[serde(flatten)]
    pub fingerprint: Fingerprint,
    /// The file written with --output.
    pub output: Option<String>,
}

impl Report for FleetFingerprint {
    const COMMAND: &'static str = "fleet fingerprint";
    fn status(&self) -> ExitStatus {
        ExitStatus::Ok
    }
    fn text(&self) -> String {
        let f = &self.fingerprint;
        let mut h = String::new();
        line(
            &mut h,
            format!(
                "node {}: {} ({}), microcode {}, kernel {}, {} CPUs ({})",
                f.node,
                f.cpu,
                f.cpu_model,
                f.microcode.as_deref().unwrap_or("unknown"),
                f.kernel.as_deref().unwrap_or("unknown"),
                f.cpus,
                f.source
            ),
        );
        line(
            &mut h,
            format!(
                "allowlist {}, policy {}",
                f.allowlist.as_deref().unwrap_or("unknown"),
                f.policy
            ),
        );
        for l in &f.labels {
            line(&mut h, format!("label {}={}", l.0, l.1));
        }
        for fv in &f.fields {
            let values = if fv.values.is_empty() {
                fv.missing.clone().unwrap_or_default()
            } else {
                fv.values_text()
            };
            line(
                &mut h,
                format!("  {} ({} bits {}): {values}", fv.field, fv.msr, fv.bits),
            );
        }
        for d in &f.writable_denied {
            line(
                &mut h,
                format!("  {d}: WRITABLE in the allowlist, but the policy says deny"),
            );
        }
        if f.fields.is_empty() {
            line(
                &mut h,
                format!(
                    "  (the policy names no field to compare on {}: fleet_equal, static, subset, superset)",
                    f.cpu_model
                ),
            );
        }
        if let Some(o) = &self.output {
            line(&mut h, format!("wrote {o}"));
        }
        h
    }
    fn shell(&self) -> Vec<(&'static str, String)> {
        vec![
            ("node", self.fingerprint.node.clone()),
            ("cpu_model", self.fingerprint.cpu_model.clone()),
            (
                "microcode",
                self.fingerprint.microcode.clone().unwrap_or_default(),
            ),
            ("fields", self.fingerprint.fields.len().to_string()),
            ("output", self.output.clone().unwrap_or_default()),
        ]
    }
}

fn fingerprint(
    ctx: &Context,
    policy: Option<&Path>,
    from: Option<&Path>,
    output: Option<&Path>,
    node_name: Option<&str>,
    labels: &[String],
) -> Result<FleetFingerprint> {
    let policy = need_policy(ctx, policy)?;
    let labels = parse_labels(labels)?;
    let mut fp = match from {
        Some(path) => {
            let file = SaveFile::load(path)?;
            of_save_file(&policy, &file, path)
        }
        None => {
            let backend = ctx.open(false)?;
            let (cpu, microcode) = backend.node.cpu_facts()?;
            let model = ModelId::from(&cpu);
            let fields = field_list(&policy, model, &backend.allowlist, |r| r.is_compared());
            let snapshot =
                Snapshot::take(backend.device.as_ref(), Arc::new(fields), &backend.online)
                    .context("cannot read the fields' registers")?;
            fleet::fingerprint(
                &policy,
                &cpu,
                &snapshot,
                &backend.allowlist,
                NodeFacts {
                    node: hostname(),
                    microcode,
                    kernel: backend.node.kernel_release(),
                    taken: now_rfc3339(),
                    source: "node".to_string(),
                    labels: BTreeMap::new(),
                },
            )
        }
    };
    if let Some(n) = node_name {
        anyhow::ensure!(!n.is_empty(), "--node-name: empty name");
        fp.node = n.to_string();
    }
    fp.labels.extend(labels);
    let output = match output {
        Some(o) => {
            write_atomically(o, fp.to_json_line().as_bytes(), SHARED_FILE_MODE)
                .with_context(|| format!("cannot write {}", shown(o)))?;
            Some(shown(o))
        }
        None => None,
    };
    Ok(FleetFingerprint {
        fingerprint: fp,
        output,
    })
}

/// `fleet compare`: every node whose field breaks its policy.
#[derive(Serialize, JsonSchema)]
pub struct FleetCompare {
    #[serde(flatten)]
    pub report: FleetReport,
    /// The Prometheus textfile written, if any.
    pub prometheus: Option<String>,
    pub elapsed_ms: f64,
}

impl Report for FleetCompare {
    const COMMAND: &'static str = "fleet compare";
    fn status(&self) -> ExitStatus {
        ExitStatus::ok_if(self.report.clean())
    }
    fn text(&self) -> String {
        let r = &self.report;
        let mut h = String::new();
        line(
            &mut h,
            format!(
                "fleet compare: {} nodes in {} group(s); {} violation(s) on {} node(s); {} input problem(s) (policy {})",
                r.nodes,
                r.groups.len(),
                r.violations.len(),
                r.violating_nodes,
                r.problems.len(),
                r.policy
            ),
        );
        for g in &r.groups {
            line(
                &mut h,
                format!(
                    "  group {}: {} nodes, {} with violations",
                    g.group, g.nodes, g.violating_nodes
                ),
            );
        }
        for v in r.violations.iter().take(SHOWN) {
            let msr = v.msr.map(|m| format!(" ({m})")).unwrap_or_default();
            let expected = match &v.expected {
                Some(e) if v.group_nodes > 0 => format!(
                    "; group's value {e}, {} of {} nodes agree",
                    v.agree, v.group_nodes
                ),
                Some(e) => format!("; must be {e}"),
                None => format!("; no majority in a group of {}", v.group_nodes),
            };
            line(
                &mut h,
                format!(
                    "  VIOLATION node {}: {}{msr} [{}] is {}{expected}",
                    v.node, v.field, v.policy, v.value
                ),
            );
        }
        if r.violations.len() > SHOWN {
            line(
                &mut h,
                format!(
                    "  ... and {} more (see --format json)",
                    r.violations.len() - SHOWN
                ),
            );
        }
        for p in &r.problems {
            line(&mut h, format!("  PROBLEM {}: {}", p.source, p.message));
        }
        for n in &r.notes {
            line(&mut h, format!("note: {n}"));
        }
        h
    }
    fn shell(&self) -> Vec<(&'static str, String)> {
        let r = &self.report;
        vec![
            ("nodes", r.nodes.to_string()),
            ("violations", r.violations.len().to_string()),
            ("violating_nodes", r.violating_nodes.to_string()),
            ("problems", r.problems.len().to_string()),
        ]
    }
}

/// Read one line of at most [`MAX_LINE_BYTES`]; `Ok(false)` at the end.
fn next_line(r: &mut impl BufRead, buf: &mut Vec<u8>) -> std::io::Result<bool> {
    buf.clear();
    let n = r.take(MAX_LINE_BYTES).read_until(b'\n', buf)?;
    Ok(n > 0)
}

/// Fingerprint lines from `reader`: one JSON object per line, with anything before the first
/// `{` dropped (pdsh and clush print `host: ` before each line).
fn read_lines(cmp: &mut Comparison, reader: &mut impl BufRead, name: &str) {
    let mut buf = Vec::new();
    let mut n = 0usize;
    loop {
        n += 1;
        match next_line(reader, &mut buf) {
            Ok(false) => return,
            Ok(true) => {}
            Err(e) => {
                cmp.problem(format!("{name}:{n}"), format!("cannot read: {e}"));
                return;
            }
        }
        if buf.len() as u64 >= MAX_LINE_BYTES && buf.last() != Some(&b'\n') {
            cmp.problem(
                format!("{name}:{n}"),
                format!(
                    "a line longer than {MAX_LINE_BYTES} bytes: not a fingerprint; stopped reading"
                ),
            );
            return;
        }
        let text = String::from_utf8_lossy(&buf);
        let t = text.trim();
        if t.is_empty() {
            continue;
        }
        let Some(start) = t.find('{') else {
            cmp.problem(
                format!("{name}:{n}"),
                format!(
                    "not a fingerprint: {:?}",
                    t.chars().take(80).collect::<String>()
                ),
            );
            continue;
        };
        match Fingerprint::from_json(&t[start..]) {
            Ok(fp) => cmp.add(fp, &format!("{name}:{n}")),
            Err(e) => {
                // A node whose msrsave failed prints its error as JSON: say what it said.
                let prefix = t[..start].trim().trim_end_matches(':');
                let reported = serde_json::from_str::<serde_json::Value>(&t[start..])
                    .ok()
                    .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(String::from));
                let message = match (reported, prefix.is_empty()) {
                    (Some(err), true) => format!("a node reported an error: {err}"),
                    (Some(err), false) => format!("{prefix} reported an error: {err}"),
                    (None, _) => format!("not a fingerprint: {e}"),
                };
                cmp.problem(format!("{name}:{n}"), message);
            }
        }
    }
}

/// Does the file hold fingerprints (its first non-blank line parses as one)? Reads the file
/// from where it is and leaves it at its start again.
fn holds_fingerprints(f: &mut std::fs::File) -> std::io::Result<bool> {
    use std::io::{Seek, SeekFrom};
    let found = first_line_is_fingerprint(&mut BufReader::new(&*f));
    f.seek(SeekFrom::Start(0))?;
    found
}

fn first_line_is_fingerprint(r: &mut impl BufRead) -> std::io::Result<bool> {
    let mut buf = Vec::new();
    while next_line(r, &mut buf)? {
        let text = String::from_utf8_lossy(&buf);
        let t = text.trim();
        if t.is_empty() {
            continue;
        }
        return Ok(t
            .find('{')
            .is_some_and(|s| Fingerprint::from_json(&t[s..]).is_ok()));
    }
    Ok(false)
}

fn read_file(cmp: &mut Comparison, policy: &Policy, path: &Path) {
    let name = shown(path);
    let mut f = match fsio::open_input(path, Expect::Regular, Links::Follow) {
        Ok(f) => f,
        Err(e) => {
            cmp.problem(&name, msr_backend::error::chain(&e));
            return;
        }
    };
    match holds_fingerprints(&mut f) {
        Ok(true) => {
            read_lines(cmp, &mut BufReader::new(f), &name);
            return;
        }
        Ok(false) => {}
        Err(e) => {
            cmp.problem(&name, format!("cannot read: {e}"));
            return;
        }
    }
    drop(f);
    match savefile::load(path, Origin::Named) {
        Ok(Loaded::Ours(file)) => cmp.add(of_save_file(policy, &file, path), &name),
        Ok(Loaded::LlnlRaw(_)) => cmp.problem(
            &name,
            "neither a fingerprint nor a save file of ours (LLNL msrsave's raw format records no host or CPU model)",
        ),
        Err(e) => cmp.problem(
            &name,
            format!(
                "neither a fingerprint nor a readable save file: {}",
                msr_backend::error::chain(&e)
            ),
        ),
    }
}

fn read_input(cmp: &mut Comparison, policy: &Policy, input: &Path) {
    if input.as_os_str() == "-" {
        let stdin = std::io::stdin();
        read_lines(cmp, &mut stdin.lock(), "stdin");
        return;
    }
    if input.is_dir() {
        let mut files: Vec<PathBuf> = match std::fs::read_dir(input) {
            Ok(d) => d
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    p.is_file()
                        && !p
                            .file_name()
                            .and_then(|n| n.to_str())
                            .is_some_and(|n| n.starts_with('.'))
                })
                .collect(),
            Err(e) => {
                cmp.problem(shown(input), format!("cannot list: {e}"));
                return;
            }
        };
        files.sort();
        for f in files {
            read_file(cmp, policy, &f);
        }
        return;
    }
    read_file(cmp, policy, input);
}

fn compare(
    ctx: &Context,
    inputs: &[PathBuf],
    policy: Option<&Path>,
    prometheus: Option<&Path>,
) -> Result<FleetCompare> {
    let start = Instant::now();
    let policy = need_policy(ctx, policy)?;
    let mut cmp = Comparison::new(&policy);
    for i in inputs {
        read_input(&mut cmp, &policy, i);
    }
    let report = cmp.finish();
    if report.nodes == 0 {
        let why = report
            .problems
            .iter()
            .take(3)
            .map(|p| format!("{}: {}", p.source, p.message))
            .collect::<Vec<_>>()
            .join("; ");
        anyhow::bail!(
            "no node to compare in {}{}",
            inputs
                .iter()
                .map(|p| shown(p))
                .collect::<Vec<_>>()
                .join(", "),
            if why.is_empty() {
                String::new()
            } else {
                format!(" ({why})")
            }
        );
    }
    let written = match prometheus {
        Some(p) => {
            write_atomically(
                p,
                fleet::prometheus(&report, metrics::unix_now()).as_bytes(),
                metrics::FILE_MODE,
            )
            .with_context(|| format!("cannot write {}", shown(p)))?;
            Some(shown(p))
        }
        None => None,
    };
    Ok(FleetCompare {
        report,
        prometheus: written,
        elapsed_ms: ms(start.elapsed()),
    })
}
