//! The site policy end to end: `allowlist compile` and `lint`, `check` honouring the policy, and
//! `fleet fingerprint` / `fleet compare` on emulated nodes, collected by the collection script
//! through stand-ins for srun, pdsh and clush.

use std::fs::File;
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::Value;

const LIST: &str = "\
0x00000010 0x0000000000000000 # IA32_TIME_STAMP_COUNTER
0x00000199 0x000000000000FFFF # IA32_PERF_CTL
0x000001B0 0x000000000000000F # IA32_ENERGY_PERF_BIAS
0x00000610 0x00FFFFFF00FFFFFF # MSR_PKG_POWER_LIMIT
0x00000620 0x0000000000007F7F # MSR_UNCORE_RATIO_LIMIT
";

const EPB: u32 = 0x1B0;
const PERF_CTL: u32 = 0x199;
const PKG: u32 = 0x610;
const UNCORE: u32 = 0x620;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace")
        .to_path_buf()
}

fn msrsave_cmd() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_msrsave"));
    c.env_remove("MSR_RESTORE_CONFIG");
    c
}

fn msrsave(args: &[&str]) -> Output {
    msrsave_cmd().args(args).output().expect("run msrsave")
}

fn assert_exit(o: &Output, code: i32) {
    assert_eq!(
        o.status.code(),
        Some(code),
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

fn json_of(o: &Output) -> Value {
    serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&o.stdout)))
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

struct Node {
    root: PathBuf,
    cpus: u32,
}

impl Node {
    fn new(dir: &Path, name: &str, cpus: u32) -> Node {
        let list = dir.join("list");
        if !list.exists() {
            std::fs::write(&list, LIST).unwrap();
        }
        let root = dir.join(name);
        let o = msrsave(&[
            "emulate",
            s(&root),
            "--cpus",
            &cpus.to_string(),
            "--allowlist",
            s(&list),
        ]);
        assert_exit(&o, 0);
        Node { root, cpus }
    }
    fn file(&self, cpu: u32) -> PathBuf {
        self.root.join(format!("dev/cpu/{cpu}/msr_safe"))
    }
    fn peek(&self, cpu: u32, addr: u32) -> u64 {
        let mut b = [0u8; 8];
        File::open(self.file(cpu))
            .unwrap()
            .read_exact_at(&mut b, addr as u64 * 8)
            .unwrap();
        u64::from_le_bytes(b)
    }
    fn poke(&self, cpu: u32, addr: u32, v: u64) {
        std::fs::OpenOptions::new()
            .write(true)
            .open(self.file(cpu))
            .unwrap()
            .write_all_at(&v.to_le_bytes(), addr as u64 * 8)
            .unwrap();
    }
    fn poke_all(&self, addr: u32, f: impl Fn(u64) -> u64) {
        for cpu in 0..self.cpus {
            self.poke(cpu, addr, f(self.peek(cpu, addr)));
        }
    }
    fn run(&self, args: &[&str]) -> Output {
        let mut a = vec!["--root", s(&self.root)];
        a.extend_from_slice(args);
        msrsave(&a)
    }
    /// A configuration file naming this node's root and `policy`.
    fn config(&self, policy: &Path) -> PathBuf {
        let c = self.root.with_extension("conf");
        std::fs::write(
            &c,
            format!("root = {}\npolicy = {}\n", s(&self.root), s(policy)),
        )
        .unwrap();
        c
    }
}

#[test]
fn compile_prints_the_shipped_list_and_writes_every_model() {
    let policy = repo().join("allowlists/policy.toml");
    let o = msrsave(&["allowlist", "compile", s(&policy), "--cpu", "06_55"]);
    assert_exit(&o, 0);
    let shipped = std::fs::read(repo().join("allowlists/al_06_55")).unwrap();
    assert!(o.stdout == shipped, "stdout is not allowlists/al_06_55");
    let o = msrsave(&[
        "--format",
        "json",
        "allowlist",
        "compile",
        s(&policy),
        "--cpu",
        "6_6a",
    ]);
    assert_exit(&o, 0);
    let j = json_of(&o);
    assert_eq!(j["lists"][0]["cpu"], "06_6A");
    assert_eq!(j["lists"][0]["msrs"], 42);
    let kinds: Vec<&str> = j["lists"][0]["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["kind"].as_str().unwrap())
        .collect();
    assert!(kinds.contains(&"unknown_msr") && kinds.contains(&"no_writable_fact"));

    let t = tempfile::tempdir().unwrap();
    let o = msrsave(&[
        "allowlist",
        "compile",
        s(&policy),
        "--all",
        "--out-dir",
        s(t.path()),
    ]);
    assert_exit(&o, 0);
    let mut n = 0;
    for e in std::fs::read_dir(t.path()).unwrap() {
        let p = e.unwrap().path();
        let name = p.file_name().unwrap().to_str().unwrap().to_string();
        let shipped = std::fs::read(repo().join("allowlists").join(&name)).unwrap();
        assert!(std::fs::read(&p).unwrap() == shipped, "{name}");
        n += 1;
    }
    assert_eq!(n, 6);
    // A model our tables do not know, with nothing named alone: no list, exit 1.
    let o = msrsave(&["allowlist", "compile", s(&policy), "--cpu", "06_9A"]);
    assert_exit(&o, 1);
    assert!(String::from_utf8_lossy(&o.stdout).contains("ENOMSG"));
    // A broken policy names its line.
    let bad = t.path().join("bad.toml");
    std::fs::write(
        &bad,
        "version = 1\n[[rule]]\nmsrs = \"0x10\"\naccess = \"sometimes\"\naction = \"allow\"\n",
    )
    .unwrap();
    let o = msrsave(&["allowlist", "compile", s(&bad), "--cpu", "06_55"]);
    assert_exit(&o, 2);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("bad.toml:4:") && err.contains("sometimes"),
        "{err}"
    );
}

#[test]
fn lint_knows_the_model_and_the_policy() {
    let t = tempfile::tempdir().unwrap();
    let list = t.path().join("al_06_55");
    std::fs::write(
        &list,
        "0x199 0x1FFFF # IA32_PERF_CTL\n0x12345 0 # a site register\n0xC1 0xFFFFFFFFFFFFFFFF # IA32_PMC0\n0x1B0 0xF\n",
    )
    .unwrap();
    let policy = t.path().join("p.toml");
    std::fs::write(
        &policy,
        "version = 1\n[allowlist]\ndefault = \"allow\"\n[field.IA32_ENERGY_PERF_BIAS.hint]\npolicy = \"deny\"\n",
    )
    .unwrap();
    let o = msrsave(&["--format", "json", "allowlist", "lint", s(&list)]);
    assert_exit(&o, 0);
    let j = json_of(&o);
    let kinds = |j: &Value| -> Vec<(u64, String, String)> {
        j["files"][0]["findings"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|f| !f["kind"].is_null())
            .map(|f| {
                (
                    f["line"].as_u64().unwrap(),
                    f["kind"].as_str().unwrap().to_string(),
                    f["severity"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    };
    let k = kinds(&j);
    assert_eq!(
        j["files"][0]["cpu"], "06_55",
        "the model comes from the name"
    );
    for want in [
        (1, "unknown_writable_bits", "warning"),
        (2, "unknown_msr", "warning"),
        (3, "writable_counter", "warning"),
    ] {
        assert!(
            k.contains(&(want.0, want.1.to_string(), want.2.to_string())),
            "{want:?} in {k:?}"
        );
    }
    // With the policy: the deny field is writable (an error), and the policy's mask for 0x199
    // is only the known bits.
    let o = msrsave(&[
        "--format",
        "json",
        "allowlist",
        "lint",
        s(&list),
        "--policy",
        s(&policy),
    ]);
    assert_exit(&o, 1);
    let k = kinds(&json_of(&o));
    assert!(
        k.contains(&(4, "deny_field".into(), "error".into())),
        "{k:?}"
    );
    assert!(
        k.contains(&(1, "policy_mismatch".into(), "warning".into())),
        "{k:?}"
    );
}

#[test]
fn check_honours_static_deny_and_host_fields() {
    let t = tempfile::tempdir().unwrap();
    let n = Node::new(t.path(), "node", 4);
    let base = t.path().join("base");
    assert_exit(&n.run(&["save", s(&base)]), 0);
    let uncore_max = n.peek(0, UNCORE) & 0x7F;
    let policy = t.path().join("policy.toml");
    std::fs::write(
        &policy,
        format!(
            "version = 1
[field.IA32_PERF_CTL.target]
policy = \"host\"
[field.MSR_UNCORE_RATIO_LIMIT.max_ratio]
policy = \"static\"
value = {uncore_max}
"
        ),
    )
    .unwrap();
    let conf = n.config(&policy);
    let check = || {
        let o = msrsave_cmd()
            .args(["--config", s(&conf), "--format", "json", "check", s(&base)])
            .output()
            .unwrap();
        (o.status.code(), json_of(&o))
    };
    let (rc, j) = check();
    assert_eq!(rc, Some(0), "{j}");
    assert_eq!(j["policy"]["checked"], 1);
    assert_eq!(j["policy"]["host_fields"][0], "IA32_PERF_CTL.target");

    // A host field changes: not drift. Without the policy it is.
    n.poke_all(PERF_CTL, |v| v ^ 0x0300);
    let (rc, j) = check();
    assert_eq!((rc, &j["drifted"]), (Some(0), &Value::from(0)), "{j}");
    let o = n.run(&["--format", "json", "check", s(&base)]);
    assert_exit(&o, 1);
    assert_eq!(json_of(&o)["drifted"], 4);
    n.poke_all(PERF_CTL, |v| v ^ 0x0300);

    // A static field holds another value on one CPU: a violation naming it, every check.
    n.poke(
        2,
        UNCORE,
        (n.peek(2, UNCORE) & !0x7F) | ((uncore_max + 1) & 0x7F),
    );
    let (rc, j) = check();
    assert_eq!(rc, Some(1), "{j}");
    let v = &j["policy"]["violations"][0];
    assert_eq!(
        (v["kind"].as_str(), v["cpus"].as_str()),
        (Some("value"), Some("2"))
    );
    assert!(
        j["summary"]
            .as_str()
            .unwrap()
            .contains("policy: 1 violation"),
        "{j}"
    );

    // A deny field the allowlist lets be written.
    std::fs::write(
        &policy,
        "version = 1\n[field.IA32_ENERGY_PERF_BIAS.hint]\npolicy = \"deny\"\n",
    )
    .unwrap();
    let (rc, j) = check();
    assert_eq!(rc, Some(1), "{j}");
    assert_eq!(j["policy"]["violations"][0]["kind"], "writable");
    // Prometheus: clean 0, violations counted.
    let prom = t.path().join("check.prom");
    let o = msrsave_cmd()
        .args([
            "--config",
            s(&conf),
            "check",
            s(&base),
            "--prometheus",
            s(&prom),
        ])
        .output()
        .unwrap();
    assert_exit(&o, 1);
    let text = std::fs::read_to_string(&prom).unwrap();
    assert!(text.contains("msr_restore_policy_violations{"), "{text}");
    assert!(
        text.lines()
            .any(|l| l.starts_with("msr_restore_check_clean{") && l.ends_with(" 0")),
        "{text}"
    );
}

const FLEET_POLICY: &str = "version = 1
[field.IA32_ENERGY_PERF_BIAS.hint]
policy = \"fleet_equal\"
[field.MSR_PKG_POWER_LIMIT.pl1]
policy = \"fleet_equal\"
[field.IA32_PERF_CTL.target]
policy = \"host\"
[fleet]
equal = [\"microcode\"]
";

/// Five emulated nodes, one with a lower power limit and one with another energy bias; every
/// node's PERF_CTL differs (a host field).
fn fleet(dir: &Path) -> (Vec<Node>, PathBuf) {
    let policy = dir.join("policy.toml");
    std::fs::write(&policy, FLEET_POLICY).unwrap();
    let nodes: Vec<Node> = (0..5)
        .map(|i| Node::new(dir, &format!("n{i}"), 4))
        .collect();
    for (i, n) in nodes.iter().enumerate() {
        n.poke_all(PERF_CTL, |v| (v & !0xFF00) | ((i as u64 + 10) << 8));
    }
    nodes[1].poke_all(PKG, |v| (v & !0x7FFF) | 0x100);
    nodes[3].poke(
        3,
        EPB,
        (nodes[3].peek(3, EPB) & !0xF) | ((nodes[3].peek(3, EPB) + 1) & 0xF),
    );
    (nodes, policy)
}

fn planted(j: &Value) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = j["violations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            (
                v["node"].as_str().unwrap().to_string(),
                v["field"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    v.sort();
    v
}

fn want() -> Vec<(String, String)> {
    vec![
        ("n1".into(), "MSR_PKG_POWER_LIMIT.pl1".into()),
        ("n3".into(), "IA32_ENERGY_PERF_BIAS.hint".into()),
    ]
}

#[test]
fn fleet_finds_the_planted_outliers_from_files_stdin_and_save_files() {
    let t = tempfile::tempdir().unwrap();
    let (nodes, policy) = fleet(t.path());
    let fps = t.path().join("fps");
    std::fs::create_dir(&fps).unwrap();
    let mut stdin_text = String::new();
    for (i, n) in nodes.iter().enumerate() {
        let name = format!("n{i}");
        let out = fps.join(format!("{name}.json"));
        let o = n.run(&[
            "--format",
            "json",
            "fleet",
            "fingerprint",
            "--policy",
            s(&policy),
            "--node-name",
            &name,
            "--output",
            s(&out),
        ]);
        assert_exit(&o, 0);
        let j = json_of(&o);
        assert_eq!(
            (j["node"].as_str(), j["microcode"].as_str()),
            (Some(name.as_str()), Some("0x2007006"))
        );
        // What pdsh prints: `host: line`.
        stdin_text.push_str(&format!("{name}: {}", String::from_utf8_lossy(&o.stdout)));
    }
    // A directory of fingerprint files.
    let prom = t.path().join("fleet.prom");
    let o = msrsave(&[
        "--format",
        "json",
        "fleet",
        "compare",
        s(&fps),
        "--policy",
        s(&policy),
        "--prometheus",
        s(&prom),
    ]);
    assert_exit(&o, 1);
    let j = json_of(&o);
    assert_eq!(planted(&j), want(), "{j:#}");
    assert_eq!(j["nodes"], 5);
    let v = &j["violations"][1];
    assert_eq!(
        (v["agree"].as_u64(), v["group_nodes"].as_u64()),
        (Some(4), Some(5))
    );
    assert!(v["value"].as_str().unwrap().contains("on CPUs 3"), "{v}");
    let text = std::fs::read_to_string(&prom).unwrap();
    assert!(text.contains("msr_restore_fleet_node_violations{node=\"n1\",group=\"06_55\"} 1\n"));
    assert!(text.contains("msr_restore_fleet_node_violations{node=\"n0\",group=\"06_55\"} 0\n"));
    if let Ok(o) = Command::new("python3")
        .arg(repo().join("packaging/tests/promcheck.py"))
        .arg(&prom)
        .output()
    {
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stdout));
    }

    // Standard input with pdsh's prefixes, and a line from a node whose msrsave failed.
    stdin_text.push_str("n9: {\"schema\":1,\"command\":\"fleet fingerprint\",\"ok\":false,\"error\":\"no site policy\"}\n");
    let mut child = msrsave_cmd()
        .args([
            "--format",
            "json",
            "fleet",
            "compare",
            "-",
            "--policy",
            s(&policy),
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write as _;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin_text.as_bytes())
        .unwrap();
    let o = child.wait_with_output().unwrap();
    assert_exit(&o, 1);
    let j = json_of(&o);
    assert_eq!(planted(&j), want());
    assert_eq!(
        j["problems"][0]["message"],
        "n9 reported an error: no site policy"
    );

    // Save files: the baselines the boot unit keeps. Fingerprints of them name the node.
    let saves = t.path().join("saves");
    std::fs::create_dir(&saves).unwrap();
    for (i, n) in nodes.iter().enumerate() {
        let f = saves.join(format!("n{i}.save"));
        assert_exit(&n.run(&["save", s(&f)]), 0);
        if i > 0 {
            let o = msrsave(&[
                "fleet",
                "fingerprint",
                "--policy",
                s(&policy),
                "--from",
                s(&f),
                "--node-name",
                &format!("n{i}"),
                "--output",
                s(&saves.join(format!("n{i}.json"))),
            ]);
            assert_exit(&o, 0);
            std::fs::remove_file(&f).unwrap();
        }
    }
    // A save file records the node's microcode revision, and its fingerprint carries it.
    let fp: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(saves.join("n1.json")).unwrap()).unwrap();
    assert_eq!(fp["microcode"], "0x2007006", "{fp:#}");
    let shown = nodes[0].run(&["show", s(&saves.join("n0.save"))]);
    assert_exit(&shown, 0);
    assert!(
        String::from_utf8_lossy(&shown.stdout).contains("microcode 0x2007006"),
        "{shown:?}"
    );
    // n0 stays a save file (named by its host), the others are fingerprints of save files.
    let o = msrsave(&[
        "--format",
        "json",
        "fleet",
        "compare",
        s(&saves),
        "--policy",
        s(&policy),
    ]);
    assert_exit(&o, 1);
    let j = json_of(&o);
    assert_eq!(planted(&j), want(), "{j:#}");
    assert_eq!(j["nodes"], 5, "the save file counts as a node: {j:#}");
    assert!(j["problems"].as_array().unwrap().is_empty(), "{j:#}");

    // Clean when the outliers are fixed; nothing at all to read is an error.
    nodes[1].poke_all(PKG, |_| nodes[0].peek(0, PKG));
    nodes[3].poke(3, EPB, nodes[3].peek(0, EPB));
    let clean = t.path().join("clean");
    std::fs::create_dir(&clean).unwrap();
    for (i, n) in nodes.iter().enumerate() {
        let o = n.run(&[
            "fleet",
            "fingerprint",
            "--policy",
            s(&policy),
            "--node-name",
            &format!("n{i}"),
            "--output",
            s(&clean.join(format!("n{i}"))),
        ]);
        assert_exit(&o, 0);
    }
    let o = msrsave(&["fleet", "compare", s(&clean), "--policy", s(&policy)]);
    assert_exit(&o, 0);
    let empty = t.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    assert_exit(
        &msrsave(&["fleet", "compare", s(&empty), "--policy", s(&policy)]),
        2,
    );
    // No policy at all: refused, saying how to give one.
    let o = msrsave(&["--set", "policy=", "fleet", "compare", s(&clean)]);
    assert_exit(&o, 2);
    assert!(String::from_utf8_lossy(&o.stderr).contains("--policy"));
}

/// Write an executable script.
fn script(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// Stand-ins for srun, pdsh and clush that run the remote command once per emulated node
/// (named in $STUB_NODES), with the node's configuration, Slurm's node name variable (srun) or a
/// `hostname` that answers the node's name (pdsh, clush), and the tool's `host: ` prefixes.
/// Observed on the real tools (pdsh 2.34 and clustershell 1.9.1, Debian 12, with their exec
/// workers: `pdsh -R exec -w n1,n2 ...`, `clush -R exec -w n1,n2 ...`): each output line is
/// `host: line`, hosts in any order. The real srun is `tests/slurm/fleet.sh`'s.
fn stubs(dir: &Path) -> PathBuf {
    let bin = dir.join("stub-bin");
    std::fs::create_dir_all(&bin).unwrap();
    script(&bin.join("hostname"), "#!/bin/sh\necho \"$STUB_NODE\"\n");
    script(
        &bin.join("srun"),
        r#"#!/usr/bin/env bash
# srun stand-in: skip options, run the command once per node with SLURMD_NODENAME set.
set -euo pipefail
echo "srun $*" >> "$STUB_LOG"
while [ "$#" -gt 0 ]; do
    case $1 in
        -w|-N|-n) shift 2 ;;
        --*) shift ;;
        *) break ;;
    esac
done
for n in $STUB_NODES; do
    SLURMD_NODENAME=$n MSR_RESTORE_CONFIG=$STUB_DIR/$n.conf "$@"
done
"#,
    );
    let prefixed = |tool: &str| {
        format!(
            r#"#!/usr/bin/env bash
# {tool} stand-in: -w LIST, then a command line for a remote shell; `host: ` before each line.
set -euo pipefail
echo "{tool} $*" >> "$STUB_LOG"
[ "$1" = -w ] || {{ echo "{tool}: expected -w" >&2; exit 2; }}
shift 2
for n in $STUB_NODES; do
    STUB_NODE=$n MSR_RESTORE_CONFIG=$STUB_DIR/$n.conf sh -c "$*" | sed "s/^/$n: /"
done
"#
        )
    };
    script(&bin.join("pdsh"), &prefixed("pdsh"));
    script(&bin.join("clush"), &prefixed("clush"));
    bin
}

#[test]
fn the_collection_script_gathers_with_srun_pdsh_and_clush() {
    let t = tempfile::tempdir().unwrap();
    let (nodes, policy) = fleet(t.path());
    for (i, n) in nodes.iter().enumerate() {
        let conf = n.config(&policy);
        std::fs::rename(&conf, t.path().join(format!("n{i}.conf"))).unwrap();
    }
    let bin = stubs(t.path());
    let log = t.path().join("stub.log");
    let exe = Path::new(env!("CARGO_BIN_EXE_msrsave"));
    let path = format!("{}:{}", s(&bin), std::env::var("PATH").unwrap_or_default());
    for (via, nodes_arg) in [
        ("srun", None),
        ("pdsh", Some("n[0-4]")),
        ("clush", Some("n[0-4]")),
    ] {
        let out = t.path().join(format!("{via}.jsonl"));
        let mut c = Command::new(repo().join("packaging/files/msr-restore-fleet"));
        c.args(["--via", via, "--out", s(&out), "--policy", s(&policy)]);
        if let Some(n) = nodes_arg {
            c.args(["--nodes", n]);
        }
        c.args(["--", "--format", "json"]);
        let o = c
            .env("PATH", &path)
            .env("MSRSAVE", exe)
            .env("STUB_NODES", "n0 n1 n2 n3 n4")
            .env("STUB_DIR", t.path())
            .env("STUB_LOG", &log)
            .env("SLURM_JOB_ID", "1")
            .env("SLURM_JOB_NUM_NODES", "5")
            .env_remove("MSR_RESTORE_CONFIG")
            .output()
            .unwrap();
        assert_exit(&o, 1);
        let j = json_of(&o);
        assert_eq!(planted(&j), want(), "{via}: {j:#}");
        assert_eq!(j["nodes"], 5, "{via}");
        assert!(
            String::from_utf8_lossy(&o.stderr).contains("5 fingerprint line(s)"),
            "{via}"
        );
        let lines = std::fs::read_to_string(&out).unwrap();
        assert_eq!(lines.lines().count(), 5, "{via}: {lines}");
        if via != "srun" {
            assert!(lines.starts_with("n0: {"), "{via} prefixes: {lines}");
        }
    }
    let log = std::fs::read_to_string(&log).unwrap();
    assert!(
        log.contains("srun --ntasks-per-node=1 --kill-on-bad-exit=0 -N 5 sh -c"),
        "{log}"
    );
    assert!(log.contains("pdsh -w n[0-4] "), "{log}");
    // No tool: a clear refusal.
    let o = Command::new(repo().join("packaging/files/msr-restore-fleet"))
        .args(["--via", "pdsh"])
        .env("PATH", &path)
        .output()
        .unwrap();
    assert_exit(&o, 2);
    assert!(String::from_utf8_lossy(&o.stderr).contains("--nodes"));
}

#[test]
fn the_boot_unit_writes_a_fingerprint_beside_the_baseline() {
    let t = tempfile::tempdir().unwrap();
    let n = Node::new(t.path(), "node", 4);
    let policy = t.path().join("policy.toml");
    std::fs::write(&policy, FLEET_POLICY).unwrap();
    let baseline = t.path().join("var/baseline.msr");
    let conf = t.path().join("msr-restore.conf");
    let boot = |policy_line: &str| {
        std::fs::write(
            &conf,
            format!(
                "allowlist_dir = {}\nbaseline = {}\n{policy_line}\n",
                s(&repo().join("allowlists")),
                s(&baseline)
            ),
        )
        .unwrap();
        Command::new(repo().join("packaging/files/msr-restore-boot"))
            .env("MSR_RESTORE_CONFIG", &conf)
            .env("MSR_RESTORE_ROOT", &n.root)
            .env("MSRSAVE", env!("CARGO_BIN_EXE_msrsave"))
            .output()
            .unwrap()
    };
    let fp = t.path().join("var/baseline.fingerprint.json");
    let o = boot(&format!("policy = {}", s(&policy)));
    assert_exit(&o, 0);
    assert!(String::from_utf8_lossy(&o.stdout).contains("fingerprint written to"));
    let j: Value = serde_json::from_str(&std::fs::read_to_string(&fp).unwrap()).unwrap();
    assert_eq!(
        (j["fingerprint"].as_u64(), j["cpu_model"].as_str()),
        (Some(1), Some("06_55"))
    );
    // Without a policy: a baseline and no fingerprint, and the unit still succeeds.
    std::fs::remove_file(&fp).unwrap();
    let o = boot("policy =");
    assert_exit(&o, 0);
    assert!(baseline.exists() && !fp.exists());
}
