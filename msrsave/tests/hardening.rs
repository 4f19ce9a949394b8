//! msrsave against what the world can hand it: special files and unbounded sizes as input, a
//! state directory with planted files, writers killed in the middle of a save. Every refusal
//! exits 2, names the file and says what was wrong; nothing waits forever (each command runs
//! under a deadline here).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

const LIST: &str = "0x00000199 0x000000000000FFFF # IA32_PERF_CTL\n0x000001B0 0x000000000000000F\n";

/// Run msrsave, killing it if it runs longer than `deadline` (a hang is a failure, not a
/// stuck test).
fn run(args: &[&str], deadline: Duration) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_msrsave"))
        .args(args)
        .env_remove("MSR_RESTORE_CONFIG")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn msrsave");
    let start = Instant::now();
    while child.try_wait().expect("wait").is_none() {
        if start.elapsed() > deadline {
            let _ = child.kill();
            let o = child.wait_with_output().expect("output");
            panic!(
                "msrsave {args:?} still ran after {deadline:?} (hung): {}",
                String::from_utf8_lossy(&o.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    child.wait_with_output().expect("output")
}

fn refused(args: &[&str], names: &str, says: &str) {
    let o = run(args, Duration::from_secs(20));
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(2), "{args:?}: {out}");
    let j: Value = serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {out}"));
    let e = j["error"].as_str().unwrap_or_default();
    assert!(e.contains(names) && e.contains(says), "{args:?}: {e}");
}

fn emulated(cpus: u32) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let list = dir.path().join("list");
    std::fs::write(&list, LIST).expect("list");
    let root = dir.path().join("node");
    let o = run(
        &[
            "emulate",
            root.to_str().unwrap(),
            "--cpus",
            &cpus.to_string(),
            "--allowlist",
            list.to_str().unwrap(),
        ],
        Duration::from_secs(60),
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    (dir, root)
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

fn fifo(p: &Path) {
    nix::unistd::mkfifo(p, nix::sys::stat::Mode::from_bits_truncate(0o600)).expect("mkfifo");
}

#[test]
fn special_files_as_input_are_refused_at_once() {
    let (dir, root) = emulated(2);
    let f = dir.path().join("fifo");
    fifo(&f);
    let r = s(&root);
    refused(
        &[
            "--json",
            "--allowlist",
            s(&f),
            "--root",
            r,
            "save",
            "/tmp/never",
        ],
        s(&f),
        "a FIFO",
    );
    refused(&["--json", "--config", s(&f), "info"], s(&f), "a FIFO");
    refused(&["--json", "allowlist", "lint", s(&f)], s(&f), "a FIFO");
    refused(
        &["--json", "--root", r, "allowlist", "load", s(&f)],
        s(&f),
        "a FIFO",
    );
    refused(
        &["--json", "allowlist", "lint", "/dev/zero"],
        "/dev/zero",
        "not a regular file",
    );
    // The node's own files: a FIFO planted in an emulated sysfs is refused, not waited on.
    let online = root.join("sys/devices/system/cpu/online");
    std::fs::remove_file(&online).expect("rm");
    fifo(&online);
    refused(
        &["--json", "--root", r, "save", s(&dir.path().join("x"))],
        "online",
        "a FIFO",
    );
}

#[test]
fn sizes_from_outside_are_bounded_by_what_can_be_valid() {
    let (dir, root) = emulated(2);
    let online = root.join("sys/devices/system/cpu/online");
    for list in ["0-1000000000", "0-4294967295", "8192"] {
        std::fs::write(&online, format!("{list}\n")).expect("write");
        refused(
            &[
                "--json",
                "--root",
                s(&root),
                "save",
                s(&dir.path().join("x")),
            ],
            "online",
            "at most 8192",
        );
    }
    refused(
        &[
            "--json",
            "emulate",
            s(&dir.path().join("big")),
            "--cpus",
            "1000000000",
            "--allowlist",
            s(&dir.path().join("list")),
        ],
        "1000000000",
        "8192",
    );
    // An allowlist larger than msr-safe takes.
    let big = dir.path().join("big-list");
    std::fs::write(&big, "0x10 0\n".repeat(20000)).expect("write");
    refused(
        &["--json", "allowlist", "lint", s(&big)],
        s(&big),
        "131072 bytes",
    );
}

#[test]
fn planted_files_in_the_state_dir_are_refused_by_name() {
    let (dir, root) = emulated(2);
    let state = dir.path().join("state");
    let set = format!("state_dir={}", s(&state));
    let ok = run(
        &[
            "--json",
            "--root",
            s(&root),
            "--set",
            &set,
            "job",
            "begin",
            "1",
        ],
        Duration::from_secs(20),
    );
    assert!(ok.status.success());
    let ok = run(
        &[
            "--json",
            "--root",
            s(&root),
            "--set",
            &set,
            "job",
            "end",
            "1",
        ],
        Duration::from_secs(20),
    );
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stdout)
    );
    let elsewhere = dir.path().join("elsewhere");
    std::fs::write(&elsewhere, b"x").expect("write");
    std::os::unix::fs::symlink(&elsewhere, state.join("snapshot.msr")).expect("symlink");
    refused(
        &[
            "--json",
            "--root",
            s(&root),
            "--set",
            &set,
            "job",
            "begin",
            "2",
        ],
        "snapshot.msr",
        "symbolic link",
    );
    refused(
        &[
            "--json",
            "--root",
            s(&root),
            "--set",
            &set,
            "job",
            "end",
            "2",
        ],
        "snapshot.msr",
        "symbolic link",
    );
    std::fs::remove_file(state.join("snapshot.msr")).expect("rm");
    std::fs::write(state.join("README"), b"x").expect("write");
    refused(
        &["--json", "--root", s(&root), "--set", &set, "job", "status"],
        "README",
        "remove it",
    );
}

/// A writer killed between creating its temporary file and renaming it leaves the file; the
/// next save to the same target removes it and says so. The kill lands at a random moment, so
/// the test kills until one lands inside the window (it reports how many tries that took).
#[test]
fn a_save_killed_midway_leaves_a_temp_that_the_next_save_removes() {
    let (dir, root) = emulated(512);
    let target = dir.path().join("snap.msr");
    let temps = || -> Vec<PathBuf> {
        std::fs::read_dir(dir.path())
            .expect("read_dir")
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(".snap.msr.tmp."))
            })
            .collect()
    };
    let mut tries = 0;
    while temps().is_empty() {
        tries += 1;
        assert!(
            tries <= 200,
            "no kill landed between the temp file's creation and its rename"
        );
        let mut child: Child = Command::new(env!("CARGO_BIN_EXE_msrsave"))
            .args(["--root", s(&root), "save", s(&target)])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn");
        // Wait until the temp file appears (or the save ends), then kill -9.
        let start = Instant::now();
        while temps().is_empty()
            && child.try_wait().expect("wait").is_none()
            && start.elapsed() < Duration::from_secs(10)
        {
            std::hint::spin_loop();
        }
        let _ = child.kill();
        let _ = child.wait();
    }
    let left = temps();
    let o = run(
        &["--json", "--root", s(&root), "save", s(&target)],
        Duration::from_secs(60),
    );
    assert!(o.status.success());
    let j: Value = serde_json::from_slice(&o.stdout).expect("json");
    let notes = j["notes"].to_string();
    assert!(temps().is_empty(), "still there: {:?}", temps());
    assert!(
        notes.contains("no longer runs"),
        "{notes} (after {tries} kill(s), left {left:?})"
    );
}
