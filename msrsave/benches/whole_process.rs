//! Whole processes, side by side on one emulated node (256 CPUs, 2 packages, 2 threads a core,
//! msr-safe v1.7.0's Skylake-SP list of 399 MSRs by default), interleaved so that the machine's
//! noise falls on every command alike. Prints medians and the ratios the project's goals are
//! stated in; asserts nothing about time.
//!
//!   cargo bench -p msrsave --bench whole_process [-- CPUS ROUNDS]
//!
//! - `msrsave save` against LLNL msrsave's access pattern (a C loop: one CPU after another, one
//!   pread per MSR, raw array written);
//! - `msrsave job begin` and `job end` (nothing to change) against one parallel read pass of the
//!   same registers in a process of its own (this binary with `--read-pass`: open the backend,
//!   read every register, exit); with the state directory on a tmpfs, as the default
//!   `/run/msr-restore` is on every systemd node (here /dev/shm), and on the disk beside the node;
//! - the save file's size, compact against the version-1 JSON of the same snapshot.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{build_llnl_loop, emulate, median, ms, msrsave, run_ok, smoke_run};

/// `--read-pass ROOT`: one parallel read pass of every allowlisted register of the node.
fn read_pass(root: &Path) {
    use msr_backend::device::select::BackendRequest;
    use msr_backend::node::Node;
    use msr_backend::operations::Setup;
    use msr_backend::snapshot::Snapshot;
    let backend = Setup::new(Node::new(root), BackendRequest::default())
        .open(false)
        .expect("backend");
    let s = Snapshot::take(
        backend.device.as_ref(),
        backend.allowlist.clone(),
        &backend.online,
    )
    .expect("read pass");
    std::hint::black_box(s);
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let Some(i) = args.iter().position(|a| a == "--read-pass") {
        read_pass(Path::new(&args[i + 1]));
        return;
    }
    let nums: Vec<u32> = args.iter().filter_map(|a| a.parse().ok()).collect();
    let smoke = smoke_run("msrsave", "whole_process");
    let cpus = nums.first().copied().unwrap_or(if smoke { 8 } else { 256 });
    let rounds = nums.get(1).copied().unwrap_or(if smoke { 1 } else { 15 }) as usize;
    let list = std::env::var_os("MSR_BENCH_ALLOWLIST").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../allowlists/al_06_55"),
        PathBuf::from,
    );
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    let root = dir.join("node");
    emulate(&root, cpus, &list, "06_55", "GenuineIntel");
    let readback = root.join("dev/cpu/msr_allowlist");
    let conf = dir.join("msr-restore.conf");
    std::fs::write(
        &conf,
        format!("state_dir = {}\n", dir.join("state").display()),
    )
    .expect("config");
    // The state directory where production has it: /run is a tmpfs (here /dev/shm, if any).
    let shm = Path::new("/dev/shm");
    let tmpfs = shm
        .is_dir()
        .then(|| tempfile::tempdir_in(shm).ok())
        .flatten();
    let conf_tmpfs = dir.join("msr-restore-tmpfs.conf");
    if let Some(t) = &tmpfs {
        std::fs::write(
            &conf_tmpfs,
            format!("state_dir = {}\n", t.path().join("state").display()),
        )
        .expect("config");
    }
    let me = std::env::current_exe().expect("this benchmark");
    let c_loop = build_llnl_loop(dir);

    let ms_in = |conf: &Path, args: &[&str]| {
        let mut c = Command::new(msrsave());
        c.arg("--config")
            .arg(conf)
            .arg("--root")
            .arg(&root)
            .args(args);
        c
    };
    let ms_cmd = |args: &[&str]| ms_in(&conf, args);
    let snap = dir.join("snap.msr");
    let snap_s = snap.display().to_string();
    let mut save = Vec::new();
    let mut loop_c = Vec::new();
    let mut pass = Vec::new();
    let mut begin = Vec::new();
    let mut end = Vec::new();
    let mut check = Vec::new();
    let mut begin_tmpfs = Vec::new();
    let mut end_tmpfs = Vec::new();
    // Warm the page cache and every code path once.
    run_ok(&mut ms_cmd(&["save", &snap_s]), 0);
    for round in 0..rounds {
        // Rotate the order so no command always runs first after the others.
        for k in 0..5 {
            match (k + round) % 5 {
                0 => save.push(run_ok(&mut ms_cmd(&["save", &snap_s]), 0).wall),
                1 => {
                    if let Some(bin) = &c_loop {
                        let mut c = Command::new(bin);
                        c.arg(&root)
                            .arg(cpus.to_string())
                            .arg(&readback)
                            .arg(dir.join("llnl.dat"));
                        loop_c.push(run_ok(&mut c, 0).wall);
                    }
                }
                2 => {
                    let mut c = Command::new(&me);
                    c.arg("--read-pass").arg(&root);
                    pass.push(run_ok(&mut c, 0).wall);
                }
                3 => {
                    let job = format!("{round}");
                    begin.push(run_ok(&mut ms_cmd(&["job", "begin", &job]), 0).wall);
                    end.push(run_ok(&mut ms_cmd(&["job", "end", &job]), 0).wall);
                    if tmpfs.is_some() {
                        let c = &conf_tmpfs;
                        begin_tmpfs.push(run_ok(&mut ms_in(c, &["job", "begin", &job]), 0).wall);
                        end_tmpfs.push(run_ok(&mut ms_in(c, &["job", "end", &job]), 0).wall);
                    }
                }
                _ => check.push(run_ok(&mut ms_cmd(&["check", &snap_s]), 0).wall),
            }
        }
    }
    let size = std::fs::metadata(&snap).map(|m| m.len()).unwrap_or(0);
    let file = msr_backend::savefile::SaveFile::load(&snap).expect("load");
    let v1 = msr_backend::savefile::json::document_text(&file).len() as u64;
    let registers = file.snapshot.len();
    let n = file.snapshot.allowlist.len();
    let med = |v: &Vec<Duration>| {
        if v.is_empty() {
            None
        } else {
            Some(median(v.clone()))
        }
    };
    let (save, loop_c, pass, begin, end, check) = (
        med(&save),
        med(&loop_c),
        med(&pass),
        med(&begin),
        med(&end),
        med(&check),
    );
    let (begin_tmpfs, end_tmpfs) = (med(&begin_tmpfs), med(&end_tmpfs));
    println!(
        "emulated node: {cpus} CPUs x {n} MSRs = {registers} registers ({}); whole processes, median of {rounds}, interleaved",
        list.display()
    );
    let row = |what: &str, d: Option<Duration>| match d {
        Some(d) => println!("{what:<52} {:>9.2} ms", ms(d)),
        None => println!("{what:<52} {:>12}", "NOT RUN"),
    };
    row("msrsave save", save);
    row("C loop, one pread per MSR per CPU (LLNL msrsave)", loop_c);
    row("one parallel read pass (own process)", pass);
    row(
        "msrsave job begin, state dir on tmpfs (as /run)",
        begin_tmpfs,
    );
    row("msrsave job end, state dir on tmpfs (as /run)", end_tmpfs);
    row("msrsave job begin, state dir on disk", begin);
    row("msrsave job end, state dir on disk", end);
    row("msrsave check", check);
    let ratio = |what: &str, a: Option<Duration>, b: Option<Duration>, goal: &str| {
        if let (Some(a), Some(b)) = (a, b) {
            println!(
                "{what:<52} {:>9.2}x   (goal {goal})",
                a.as_secs_f64() / b.as_secs_f64()
            );
        }
    };
    ratio("save / C loop", save, loop_c, "<= 1.0");
    ratio("job begin (tmpfs) / read pass", begin_tmpfs, pass, "<= 1.2");
    ratio("job end (tmpfs) / read pass", end_tmpfs, pass, "<= 1.3");
    ratio("job begin (disk) / read pass", begin, pass, "-");
    ratio("job end (disk) / read pass", end, pass, "-");
    ratio("check / read pass", check, pass, "-");
    println!(
        "save file: {size} bytes compact, {v1} bytes as version-1 JSON: {:.1}x smaller",
        v1 as f64 / size.max(1) as f64
    );
}
