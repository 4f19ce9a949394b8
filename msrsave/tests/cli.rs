//! The msrsave binary end to end on emulated nodes: exit codes, JSON reports, what reaches the
//! register files and what never does.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

const LIST: &str = "\
0x00000010 0x0000000000000000 # IA32_TIME_STAMP_COUNTER
0x00000199 0x000000000000FFFF # IA32_PERF_CTL
0x000001B0 0x000000000000000F # IA32_ENERGY_PERF_BIAS
0x00000610 0x00FFFFFF00FFFFFF # MSR_PKG_POWER_LIMIT
0x00000620 0x0000000000007F7F # MSR_UNCORE_RATIO_LIMIT
0xC0000103 0x00000000FFFFFFFF # TSC_AUX
";
/// Registers that are in the register files but not in the allowlist.
const OUTSIDE: [u32; 3] = [0x1A4, 0x774, 0xC0010200];

struct Node {
    _dir: tempfile::TempDir,
    root: PathBuf,
    base: PathBuf,
}

fn msrsave(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_msrsave"))
        .args(args)
        .env_remove("MSR_RESTORE_CONFIG")
        .output()
        .expect("run msrsave")
}

/// Assert the exit status, showing the report when it is not the one expected.
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

fn node(cpus: u32) -> Node {
    node_with(cpus, &[])
}

/// An emulated node of `cpus` CPUs made with `msrsave emulate ... EMULATE_ARGS`.
fn node_with(cpus: u32, emulate_args: &[&str]) -> Node {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().to_path_buf();
    let list = base.join("list");
    std::fs::write(&list, LIST).unwrap();
    let root = base.join("node");
    let cpus_arg = cpus.to_string();
    let mut args = vec![
        "emulate",
        root.to_str().unwrap(),
        "--cpus",
        &cpus_arg,
        "--allowlist",
        list.to_str().unwrap(),
    ];
    args.extend_from_slice(emulate_args);
    let o = msrsave(&args);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let n = Node {
        _dir: dir,
        root,
        base,
    };
    for cpu in 0..cpus {
        for (i, a) in OUTSIDE.iter().enumerate() {
            n.poke(cpu, *a, 0x1111 * (i as u64 + 1));
        }
    }
    n
}

impl Node {
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
    fn run(&self, args: &[&str]) -> Output {
        let mut a = vec!["--root", self.root.to_str().unwrap()];
        a.extend_from_slice(args);
        msrsave(&a)
    }
    fn path(&self, name: &str) -> String {
        self.base.join(name).to_str().unwrap().to_string()
    }
}

fn addrs(list: &str) -> Vec<(u32, u64)> {
    list.lines()
        .map(|l| {
            let mut t = l.split_whitespace();
            let a = u32::from_str_radix(t.next().unwrap().trim_start_matches("0x"), 16).unwrap();
            let m = u64::from_str_radix(t.next().unwrap().trim_start_matches("0x"), 16).unwrap();
            (a, m)
        })
        .collect()
}

#[test]
fn demo_runs_the_whole_cycle() {
    let o = msrsave(&["demo"]);
    assert!(
        o.status.success(),
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(String::from_utf8_lossy(&o.stdout).contains("the node is back as it was"));
}

#[test]
fn save_check_restore_check() {
    let n = node(4);
    let snap = n.path("snap.json");
    let o = n.run(&["--json", "save", &snap]);
    assert!(o.status.success());
    let j = json_of(&o);
    assert_eq!(
        (
            j["cpus"].as_u64(),
            j["msrs"].as_u64(),
            j["backend"].as_str()
        ),
        (Some(4), Some(6), Some("safe"))
    );

    let perf_ctl_before = n.peek(2, 0x199);
    n.poke(2, 0x199, 0x2700);
    n.poke(1, 0x610, 0);
    let o = n.run(&["--json", "check", &snap]);
    assert_eq!(o.status.code(), Some(1));
    let j = json_of(&o);
    let drifted: Vec<(u64, String)> = j["drift"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                d["cpu"].as_u64().unwrap(),
                d["msr"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        drifted,
        vec![(1, "0x00000610".to_string()), (2, "0x00000199".to_string())]
    );

    let o = n.run(&["--json", "restore", &snap]);
    assert_exit(&o, 0);
    let j = json_of(&o);
    assert_eq!(
        (j["written"].as_u64(), j["verified"].as_u64()),
        (Some(2), Some(2))
    );
    assert_eq!(n.peek(2, 0x199) & 0xffff, perf_ctl_before & 0xffff);
    // Bits outside the mask stay as the job left them.
    assert_eq!(n.peek(2, 0x199) & !0xffff, 0x2700 & !0xffff);
    assert_eq!(n.run(&["check", &snap]).status.code(), Some(0));
    // Twice is harmless: nothing left to write.
    let j = json_of(&n.run(&["--json", "restore", &snap]));
    assert_eq!(j["written"].as_u64(), Some(0));
}

#[test]
fn restore_never_touches_bits_outside_the_mask_or_msrs_outside_the_allowlist() {
    let n = node(3);
    // Restore under a narrower list than the one saved: only bits writable under both count.
    let narrow = n.path("narrow");
    std::fs::write(
        &narrow,
        "0x00000199 0x00000000000000F0\n0x000001B0 0x000000000000000F\n",
    )
    .unwrap();
    let snap = n.path("snap.json");
    assert!(n.run(&["save", &snap]).status.success());
    let saved: Vec<Vec<u64>> = (0..3)
        .map(|c| addrs(LIST).iter().map(|&(a, _)| n.peek(c, a)).collect())
        .collect();
    // The job flips every bit of every register, allowlisted or not.
    for c in 0..3 {
        for &(a, _) in &addrs(LIST) {
            n.poke(c, a, !n.peek(c, a));
        }
        for a in OUTSIDE {
            n.poke(c, a, !n.peek(c, a));
        }
    }
    let job: Vec<Vec<u64>> = (0..3)
        .map(|c| addrs(LIST).iter().map(|&(a, _)| n.peek(c, a)).collect())
        .collect();
    let outside_job: Vec<Vec<u64>> = (0..3)
        .map(|c| OUTSIDE.iter().map(|&a| n.peek(c, a)).collect())
        .collect();
    let o = n.run(&["--allowlist", &narrow, "--json", "restore", &snap]);
    assert_exit(&o, 0);
    assert!(!json_of(&o)["mask_changes"].as_array().unwrap().is_empty());
    let narrow_masks: Vec<u64> = addrs(LIST)
        .iter()
        .map(|&(a, m)| match a {
            0x199 => m & 0xF0,
            0x1B0 => m & 0xF,
            _ => 0,
        })
        .collect();
    for c in 0..3u32 {
        for (i, &(a, _)) in addrs(LIST).iter().enumerate() {
            let now = n.peek(c, a);
            let m = narrow_masks[i];
            assert_eq!(
                now & m,
                saved[c as usize][i] & m,
                "CPU {c} MSR {a:#x}: masked bits not restored"
            );
            assert_eq!(
                now & !m,
                job[c as usize][i] & !m,
                "CPU {c} MSR {a:#x}: bits outside the mask changed"
            );
        }
        for (i, &a) in OUTSIDE.iter().enumerate() {
            assert_eq!(
                n.peek(c, a),
                outside_job[c as usize][i],
                "CPU {c} MSR {a:#x} outside the allowlist changed"
            );
        }
    }
}

fn files_of(n: &Node, cpus: u32) -> Vec<Vec<u64>> {
    (0..cpus)
        .map(|c| addrs(LIST).iter().map(|&(a, _)| n.peek(c, a)).collect())
        .collect()
}

#[test]
fn bad_save_files_are_refused_and_nothing_is_written() {
    use msr_backend::savefile::{json::document_text, SaveFile};
    let n = node(2);
    let snap = n.path("snap.msr");
    assert!(n.run(&["save", &snap]).status.success());
    n.poke(0, 0x199, 0x1234);
    let before = files_of(&n, 2);
    let bytes = std::fs::read(&snap).unwrap();
    let file = SaveFile::from_bytes(&bytes, Path::new(&snap)).unwrap();
    let mut foreign = file.clone();
    foreign.meta.host = format!("elsewhere-{}", foreign.meta.host);
    let mut other_model = file.clone();
    other_model.meta.cpu.model = 0x6A;
    // The version-1 JSON that earlier versions wrote is still read: its forgeries too.
    let v1 = document_text(&file);
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("truncated", bytes[..bytes.len() / 2].to_vec()),
        ("corrupted", {
            let mut b = bytes.clone();
            let i = b.len() - 40;
            b[i] ^= 0x10;
            b
        }),
        ("newer", {
            let mut b = bytes.clone();
            b[8] = 9;
            b
        }),
        ("foreign host", foreign.to_bytes()),
        ("other CPU model", other_model.to_bytes()),
        ("empty", Vec::new()),
        ("v1 truncated", v1.as_bytes()[..v1.len() / 2].to_vec()),
        (
            "v1 edited",
            v1.replacen(
                "\"values\": [\n    [\n      \"0x",
                "\"values\": [\n    [\n      \"0x1",
                1,
            )
            .into_bytes(),
        ),
        (
            "v1 newer",
            v1.replacen("\"version\": 1", "\"version\": 9", 1)
                .into_bytes(),
        ),
        (
            "v1 extra key",
            v1.replacen("{\n", "{\n  \"planted\": 1,\n", 1).into_bytes(),
        ),
        ("llnl-sized wrong", vec![0u8; 24]),
        ("not a save file", b"hello world\n".to_vec()),
    ];
    for (what, content) in cases {
        let p = n.path(&format!("{}.msr", what.replace(' ', "_")));
        std::fs::write(&p, content).unwrap();
        let o = n.run(&["--json", "restore", &p]);
        assert_eq!(
            o.status.code(),
            Some(2),
            "{what}: {}",
            String::from_utf8_lossy(&o.stdout)
        );
        let j = json_of(&o);
        assert_eq!(j["ok"], Value::Bool(false));
        assert!(
            j["error"].as_str().unwrap().contains(&p),
            "{what}: error does not name the file: {j}"
        );
        assert_eq!(files_of(&n, 2), before, "{what}: a register changed");
    }
    // A FIFO or a device is refused at once, never waited on or read without end.
    let fifo = n.path("fifo.msr");
    nix::unistd::mkfifo(
        Path::new(&fifo),
        nix::sys::stat::Mode::from_bits_truncate(0o600),
    )
    .unwrap();
    for p in [fifo.as_str(), "/dev/zero", "/dev/urandom"] {
        for cmd in ["restore", "check", "show"] {
            let o = n.run(&["--json", cmd, p]);
            assert_eq!(o.status.code(), Some(2), "{cmd} {p}");
            let e = json_of(&o)["error"].as_str().unwrap().to_string();
            assert!(
                e.contains(p) && e.contains("not a regular file"),
                "{cmd} {p}: {e}"
            );
        }
    }
    assert_eq!(files_of(&n, 2), before);
}

#[test]
fn llnl_forms_save_and_restore() {
    let n = node(2);
    let snap = n.path("llnl.json");
    assert!(n.run(&[&snap]).status.success());
    let before = n.peek(1, 0x1B0);
    n.poke(1, 0x1B0, before ^ 0x5);
    assert!(n.run(&["-r", &snap]).status.success());
    assert_eq!(n.peek(1, 0x1B0), before);
    assert!(msrsave(&["--version"]).status.success());
}

#[test]
fn offline_cpu_is_reported_and_the_rest_restored() {
    let n = node(4);
    let snap = n.path("snap.json");
    assert!(n.run(&["save", &snap]).status.success());
    let v = n.peek(0, 0x199);
    n.poke(0, 0x199, v ^ 0xff);
    std::fs::write(n.root.join("sys/devices/system/cpu/online"), "0-2\n").unwrap();
    let o = n.run(&["--json", "restore", &snap]);
    assert_eq!(o.status.code(), Some(1));
    let j = json_of(&o);
    assert_eq!(j["offline_cpus"], serde_json::json!([3]));
    assert_eq!(n.peek(0, 0x199), v);
    // A save with CPU 3 offline records CPUs 0-2 only.
    let j = json_of(&n.run(&["--json", "save", &n.path("three.json")]));
    assert_eq!(j["cpu_list"].as_str(), Some("0-2"));
}

#[test]
fn a_failed_save_leaves_no_file() {
    let n = node(1);
    let target = Path::new(&n.path("missing-dir")).join("snap.json");
    let o = n.run(&["save", target.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    assert!(!target.exists());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("missing-dir"), "{err}");
}

#[test]
fn usage_errors_are_json_with_json() {
    let o = msrsave(&["--json", "restore"]);
    assert_eq!(o.status.code(), Some(2));
    let j = json_of(&o);
    assert_eq!(j["ok"], false);
    assert!(j["error"].as_str().unwrap().contains("<FILE>"), "{j}");
    // info without a usable backend says why, and exits 2.
    let n = node(1);
    std::fs::remove_file(n.root.join("dev/cpu/0/msr_safe")).unwrap();
    std::fs::remove_file(n.root.join("dev/cpu/0/msr")).unwrap();
    let o = n.run(&["--json", "info"]);
    assert_eq!(o.status.code(), Some(2));
    let j = json_of(&o);
    assert!(
        j["backend"]["error"].as_str().unwrap().contains("msr_safe"),
        "{j}"
    );
}

#[test]
fn usage_errors_exit_2() {
    assert_eq!(msrsave(&["restore"]).status.code(), Some(2));
    assert_eq!(
        msrsave(&["--backend", "fast", "info"]).status.code(),
        Some(2)
    );
    let o = msrsave(&["--root", "/nonexistent-root", "save", "/tmp/x.json"]);
    assert_eq!(o.status.code(), Some(2));
}

#[test]
fn shared_node_restores_when_the_last_job_ends() {
    let n = node(2);
    let state = n.path("state");
    let before = n.peek(1, 0x199);
    let begin = |id: &str| json_of(&n.run(&["--json", "job", "begin", id, "--state-dir", &state]));
    let end = |id: &str| n.run(&["--json", "job", "end", id, "--state-dir", &state]);
    assert_eq!(begin("10")["snapshot"], "taken");
    n.poke(1, 0x199, before ^ 0xff);
    assert_eq!(begin("11")["snapshot"], "shared");
    assert_eq!(
        begin("11")["snapshot"],
        "registered",
        "a requeued job is recorded once"
    );
    let o = end("10");
    assert_eq!(o.status.code(), Some(0));
    assert_eq!(json_of(&o)["last_job"], false);
    assert_eq!(
        n.peek(1, 0x199),
        before ^ 0xff,
        "restored while a job still runs"
    );
    let o = end("11");
    assert_exit(&o, 0);
    assert_eq!(json_of(&o)["restore"]["written"], 1);
    assert_eq!(n.peek(1, 0x199), before);
    // A job whose begin never ran ends cleanly.
    let o = end("12");
    assert_eq!(o.status.code(), Some(0));
    assert!(json_of(&o)["note"]
        .as_str()
        .unwrap()
        .contains("not registered"));
}

#[test]
fn allowlist_load_refuses_what_the_kernel_would_and_auto_picks_the_cpu_list() {
    let n = node(1);
    let loaded = n.root.join("dev/cpu/msr_allowlist");
    let before = std::fs::read(&loaded).unwrap();
    // A duplicate would leave msr-safe with an EMPTY list: refused before anything is written.
    let dup = n.path("dup");
    std::fs::write(&dup, "0x199 0xffff\n0x199 0xff\n").unwrap();
    let o = n.run(&["--json", "allowlist", "load", &dup]);
    assert_eq!(o.status.code(), Some(2));
    let e = json_of(&o)["error"].as_str().unwrap().to_string();
    assert!(e.contains("ENOTUNIQ") && e.contains("line 2"), "{e}");
    assert_eq!(std::fs::read(&loaded).unwrap(), before);
    // --auto picks al_06_55 for the emulated Skylake-SP from the repository's allowlists.
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../allowlists");
    let o = n.run(&[
        "--json",
        "--allowlist-dir",
        dir,
        "allowlist",
        "load",
        "--auto",
    ]);
    assert_exit(&o, 0);
    let j = json_of(&o);
    assert!(j["file"].as_str().unwrap().ends_with("al_06_55"), "{j}");
    assert_eq!(j["msrs"], 399);
    let shown = json_of(&n.run(&["--json", "allowlist", "show"]));
    assert_eq!(shown["msrs"], 399);
    assert_eq!(shown["digest"], j["digest"]);
    // An unknown CPU gets a clear refusal, not an empty list.
    std::fs::write(
        n.root.join("proc/cpuinfo"),
        "vendor_id : GenuineIntel\ncpu family : 6\nmodel : 1\n",
    )
    .unwrap();
    let o = n.run(&[
        "--json",
        "--allowlist-dir",
        dir,
        "allowlist",
        "load",
        "--auto",
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(json_of(&o)["error"].as_str().unwrap().contains("al_06_1"));
}

/// The textfile for node_exporter: every gauge on a clean node, and the per-MSR family only
/// when it has samples (one per drifted MSR, counting its CPUs).
#[test]
fn check_prometheus_textfile_clean_and_drifted() {
    let n = node(4);
    let snap = n.path("snap.msr");
    assert_exit(&n.run(&["save", &snap]), 0);
    let prom = n.path("check.prom");
    assert_exit(&n.run(&["check", &snap, "--prometheus", &prom]), 0);
    let text = std::fs::read_to_string(&prom).unwrap();
    assert!(text.contains("msr_restore_check_clean{"), "{text}");
    assert!(text.contains("msr_restore_drift_registers{"), "{text}");
    assert!(!text.contains("msr_restore_drift_msr_cpus"), "{text}");
    assert!(!text.contains("msr_restore_drift_msr_domains"), "{text}");

    n.poke(1, 0x199, n.peek(1, 0x199) ^ 0xff);
    n.poke(3, 0x199, n.peek(3, 0x199) ^ 0xff);
    assert_exit(&n.run(&["check", &snap, "--prometheus", &prom]), 1);
    let text = std::fs::read_to_string(&prom).unwrap();
    let per_msr: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("msr_restore_drift_msr_cpus{"))
        .collect();
    assert_eq!(per_msr.len(), 1, "{text}");
    assert!(
        per_msr[0].contains("msr=\"0x00000199\"") && per_msr[0].ends_with(" 2"),
        "{text}"
    );
    assert!(
        text.contains("# TYPE msr_restore_drift_msr_cpus gauge"),
        "{text}"
    );
}

/// On a 2-socket node (2 packages x 2 cores x 2 threads, Sapphire Rapids) a package register is
/// one register per package: `check` lists it once per package (JSON and Prometheus) and
/// `restore` writes it once per package, and every CPU of the package holds it again.
#[test]
fn package_registers_are_checked_and_restored_once_per_package() {
    let n = node_with(
        8,
        &[
            "--packages",
            "2",
            "--threads-per-core",
            "2",
            "--cpu-model",
            "06_8F",
        ],
    );
    let snap = n.path("snap.msr");
    let j = json_of(&n.run(&["--json", "save", &snap]));
    assert_eq!(j["topology"].as_str(), Some("2 packages, 8 CPUs"), "{j}");
    let saved = files_of(&n, 8);
    // The job lowers the power limit: one register per package, so every CPU of each package
    // reads the new value; and changes IA32_PERF_CTL on CPU 2 alone.
    for c in 0..8 {
        let v = n.peek(c, 0x610);
        n.poke(c, 0x610, v ^ 0xff);
    }
    n.poke(2, 0x199, n.peek(2, 0x199) ^ 0xff);
    let prom = n.path("msr.prom");
    let o = n.run(&["--json", "check", &snap, "--prometheus", &prom]);
    assert_exit(&o, 1);
    let j = json_of(&o);
    let drift: Vec<(String, String, u64)> = j["drift"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                d["msr"].as_str().unwrap().to_string(),
                d["domain"].as_str().unwrap().to_string(),
                d["cpu"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        drift,
        [
            ("0x00000610".to_string(), "package 0".to_string(), 0),
            ("0x00000199".to_string(), "CPU 2".to_string(), 2),
            ("0x00000610".to_string(), "package 1".to_string(), 2),
        ],
        "in (CPU, MSR) order, a package register at the CPU it was read from"
    );
    assert_eq!(j["drift"][0]["scope"], "package");
    assert_eq!(
        (j["drifted"].as_u64(), j["drifted_cpus"].as_u64()),
        (Some(3), Some(8))
    );
    let metrics = std::fs::read_to_string(&prom).unwrap();
    assert!(
        metrics.contains("msr_restore_drift_msr_domains{snapshot=")
            && metrics.contains(
                "msr=\"0x00000610\",msr_name=\"MSR_PKG_POWER_LIMIT\",scope=\"package\"} 2\n"
            ),
        "{metrics}"
    );
    assert!(
        metrics.contains("msr=\"0x00000610\",msr_name=\"MSR_PKG_POWER_LIMIT\"} 8\n"),
        "CPUs per MSR stay: {metrics}"
    );
    assert!(
        metrics.contains("msr_restore_drift_registers{"),
        "{metrics}"
    );
    let text = String::from_utf8_lossy(&n.run(&["check", &snap]).stdout).into_owned();
    assert!(
        text.contains("DRIFT package 1 MSR 0x00000610 (MSR_PKG_POWER_LIMIT): expected"),
        "{text}"
    );

    let o = n.run(&["--json", "restore", &snap]);
    assert_exit(&o, 0);
    let j = json_of(&o);
    assert_eq!(
        (j["written"].as_u64(), j["verified"].as_u64()),
        (Some(3), Some(3))
    );
    let writes: Vec<(String, String)> = j["writes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| {
            (
                w["msr"].as_str().unwrap().to_string(),
                w["domain"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        writes,
        [
            ("0x00000610".to_string(), "package 0".to_string()),
            ("0x00000199".to_string(), "CPU 2".to_string()),
            ("0x00000610".to_string(), "package 1".to_string()),
        ]
    );
    assert_eq!(files_of(&n, 8), saved, "every register file is back");
}

#[test]
fn a_save_file_records_the_microcode_and_diff_says_when_it_changed() {
    let n = node(2);
    let (a, b) = (n.path("a.msr"), n.path("b.msr"));
    assert_exit(&n.run(&["save", &a]), 0);
    // A microcode update between two baselines, as /proc/cpuinfo shows it.
    let cpuinfo = n.root.join("proc/cpuinfo");
    let text = std::fs::read_to_string(&cpuinfo).unwrap();
    assert!(text.contains("microcode\t: 0x2007006"), "{text}");
    std::fs::write(&cpuinfo, text.replace("0x2007006", "0x2007108")).unwrap();
    assert_exit(&n.run(&["save", &b]), 0);
    let o = n.run(&["--json", "show", &b]);
    assert_exit(&o, 0);
    let shown = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(shown.contains("\"microcode\":\"0x2007108\""), "{shown}");
    let o = n.run(&["diff", &a, &b]);
    assert!(
        String::from_utf8_lossy(&o.stdout)
            .contains("microcode revisions differ: 0x2007006 vs 0x2007108"),
        "{o:?}"
    );
}
