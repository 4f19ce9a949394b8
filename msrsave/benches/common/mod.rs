//! What the whole-process benchmarks share: running a command and measuring its wall time and
//! peak memory, medians, emulated nodes, and LLNL msrsave's access pattern as a C loop.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The msrsave binary cargo built for this benchmark (release profile).
pub fn msrsave() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_msrsave"))
}

/// One run of a command: wall time and the peak resident memory of that process alone.
#[derive(Clone, Copy, Debug)]
pub struct Run {
    pub wall: Duration,
    pub max_rss_kib: i64,
    pub code: i32,
}

/// Run `cmd` with its output discarded; time it and read its own peak RSS from wait4.
pub fn run(cmd: &mut Command) -> Run {
    cmd.stdout(Stdio::null()).stderr(Stdio::null());
    let start = Instant::now();
    let child = cmd.spawn().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: an all-zero rusage is a valid value of this plain C struct.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `pid` is our own child, not yet waited for (`child` is dropped without a wait);
    // `status` and `usage` are valid, exclusively borrowed out-parameters for this call.
    let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    let wall = start.elapsed();
    assert_eq!(r, pid, "wait4 of {cmd:?}");
    drop(child);
    Run {
        wall,
        max_rss_kib: usage.ru_maxrss,
        code: if libc::WIFEXITED(status) {
            libc::WEXITSTATUS(status)
        } else {
            -1
        },
    }
}

/// Like [`run`], and the command must exit with `want`.
pub fn run_ok(cmd: &mut Command, want: i32) -> Run {
    let r = run(cmd);
    assert_eq!(r.code, want, "{cmd:?} exited {}", r.code);
    r
}

pub fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Make an emulated node of `cpus` CPUs (2 packages and 2 threads a core when it divides).
pub fn emulate(dir: &Path, cpus: u32, list: &Path, model: &str, vendor: &str) {
    let mut cmd = Command::new(msrsave());
    cmd.arg("emulate")
        .arg(dir)
        .args(["--cpus", &cpus.to_string()]);
    if cpus % 4 == 0 {
        cmd.args(["--packages", "2", "--threads-per-core", "2"]);
    }
    cmd.arg("--allowlist").arg(list);
    cmd.args(["--cpu-model", model, "--vendor", vendor]);
    run_ok(&mut cmd, 0);
}

/// LLNL msrsave's access pattern on an emulated node, as C: for each CPU in turn, open its
/// register file and pread every allowlisted MSR, one after another, then fwrite the raw u64
/// array (msrsave.c reads at offset = address on the kernel's node; an emulated register file
/// keeps MSR a at offset 8 x a).
pub const LLNL_LOOP_C: &str = r#"
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
int main(int argc, char **argv) {
    if (argc != 5) { fprintf(stderr, "usage: loop ROOT NCPU LIST OUT\n"); return 2; }
    int ncpu = atoi(argv[2]);
    FILE *l = fopen(argv[3], "r");
    if (!l) { perror(argv[3]); return 1; }
    uint64_t *msr = malloc(65536 * sizeof *msr); size_t n = 0; char line[256];
    while (fgets(line, sizeof line, l)) {
        unsigned long long a, m;
        if (line[0] != '#' && sscanf(line, "%llx %llx", &a, &m) == 2) msr[n++] = a;
    }
    fclose(l);
    uint64_t *buf = malloc((size_t)ncpu * n * sizeof *buf);
    char path[4096];
    for (int c = 0; c < ncpu; c++) {
        snprintf(path, sizeof path, "%s/dev/cpu/%d/msr_safe", argv[1], c);
        int fd = open(path, O_RDWR);
        if (fd < 0) { perror(path); return 1; }
        for (size_t j = 0; j < n; j++)
            if (pread(fd, &buf[c * n + j], 8, (off_t)(msr[j] * 8)) != 8) buf[c * n + j] = ~0ULL;
        close(fd);
    }
    FILE *o = fopen(argv[4], "w");
    if (!o || fwrite(buf, sizeof *buf, (size_t)ncpu * n, o) != (size_t)ncpu * n) { perror(argv[4]); return 1; }
    fclose(o);
    return 0;
}
"#;

/// Compile [`LLNL_LOOP_C`] into `dir`; `None` (and a NOT RUN line) without a C compiler.
pub fn build_llnl_loop(dir: &Path) -> Option<PathBuf> {
    let src = dir.join("llnl_loop.c");
    let bin = dir.join("llnl_loop");
    std::fs::write(&src, LLNL_LOOP_C).ok()?;
    let ok = Command::new("cc")
        .args(["-O2", "-o"])
        .arg(&bin)
        .arg(&src)
        .status()
        .is_ok_and(|s| s.success());
    if ok {
        Some(bin)
    } else {
        println!("NOT RUN: the C loop (no working `cc`)");
        None
    }
}

/// `cargo test --all-targets` runs a bench without `--bench`: then it is a smoke run (a small
/// node, one round) that keeps the bench working without costing the test suite minutes.
pub fn smoke_run(package: &str, bench: &str) -> bool {
    let smoke = !std::env::args().any(|a| a == "--bench");
    if smoke {
        println!(
            "smoke run (no --bench): figures come from `cargo bench -p {package} --bench {bench}`"
        );
    }
    smoke
}
