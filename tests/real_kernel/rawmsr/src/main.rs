//! rawmsr: the real-kernel suites' own access to MSR devices, independent of msrsave.
//!
//! It plays the "job" that changes registers and the auditor that reads every register back, and
//! it measures what msr-safe's nodes do with exactly the syscalls given (one read(), one write(),
//! one ioctl), which msrsave's own code would hide.
//!
//! The stock driver (/dev/cpu/N/msr), one pread/pwrite of 8 bytes at offset = MSR address:
//!   rawmsr read CPU MSR            print the value as 0x%016x
//!   rawmsr write CPU MSR VALUE     write VALUE (all 64 bits)
//!   rawmsr dump MSR...             one line "CPU MSR VALUE" (or "CPU MSR ERR:<errno name>") per
//!                                  online CPU and MSR, CPUs from /sys/devices/system/cpu/online
//! Any node, one syscall each:
//!   rawmsr pread PATH OFFSET [SIZE]          one pread of SIZE (default 8) bytes; prints the
//!                                            value (8 bytes) or the bytes read, escaped
//!   rawmsr pwrite PATH OFFSET VALUE [SIZE]   one pwrite of SIZE (default 8) bytes of VALUE (LE)
//!   rawmsr stale PATH OFFSET CMD ARG...      open PATH, run CMD, then pread and pwrite 8 bytes
//!                                            at OFFSET through the fd opened before CMD ran
//!   rawmsr reads PATH SIZE...                open PATH once, one read() per SIZE (a buffer of
//!                                            that many bytes); one line per read:
//!                                            "SIZE -> N \"escaped\"" or "SIZE -> ERRNO"
//!   rawmsr cat PATH [BUFSIZE]                read() with a BUFSIZE buffer (default 4096) until
//!                                            it returns 0; the bytes go to stdout
//!   rawmsr load PATH FILE                    FILE's whole content in ONE write() to PATH (opened
//!                                            write-only); prints "OK N" (N = write's return)
//!   rawmsr al-probe OUTDIR SENTINEL CASE...  for each CASE file: load SENTINEL, load CASE (one
//!                                            write each), read the allowlist back into
//!                                            OUTDIR/<case name>.rb; one line per case,
//!                                            "<case name> <read-back bytes> OK N" (N = write's
//!                                            return) or "<case name> <read-back bytes> ERRNO"
//!   rawmsr batch [--wronly] [--version V] [--repeat N] OP...
//!                                            one X86_IOC_MSR_BATCH ioctl on /dev/cpu/msr_batch
//!                                            (opened read-only, or write-only); OP is r:CPU:MSR
//!                                            or w:CPU:MSR:VALUE, the list repeated N times.
//!                                            Prints "ioctl OK|ERRNO" then per op "op I cpu=C
//!                                            msr=M isrdmsr=R err=E msrdata=D wmask=W" as copied
//!                                            back (more than 16 ops: "ops N: E xCOUNT, ..." per
//!                                            err value instead). Before the call err is 0x7777,
//!                                            msrdata of a read 0x5555555555555555 and wmask
//!                                            0xAAAAAAAAAAAAAAAA: what the kernel did not touch
//!                                            shows
//!   rawmsr u64le VALUE...                    each VALUE as 8 little-endian bytes on stdout (a
//!                                            negative decimal is taken as its two's complement)
//! Processes:
//!   rawmsr runas UID GID[,SUPP...] CMD ARG...  run CMD as UID:GID with exactly the supplementary
//!                                            groups SUPP (none if not given) and no
//!                                            capabilities (busybox's setpriv cannot change uid)
//!   rawmsr time CMD ARG...                   run CMD (stdout and stderr to /dev/null) and print
//!                                            "NANOSECONDS EXIT_STATUS"
//!
//! Numbers take 0x (hex) or decimal. Errors print "rawmsr: ... : <errno name> ..." on stderr and
//! exit 1; usage errors exit 2.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{ExitCode, Stdio};
use std::time::Instant;

/// `_IOWR('c', 0xA2, struct msr_batch_array)` (16-byte argument).
const X86_IOC_MSR_BATCH: u64 = 0xC010_63A2;
const BATCH_NODE: &str = "/dev/cpu/msr_batch";
/// msr_batch_array.version for msr-safe 1.8.0.
const BATCH_VERSION: u32 = 0x0001_0800;
/// What an op holds before the ioctl, to see what the kernel copied back.
const POISON_ERR: i32 = 0x7777;
const POISON_DATA: u64 = 0x5555_5555_5555_5555;
const POISON_MASK: u64 = 0xAAAA_AAAA_AAAA_AAAA;

/// msr-safe's `struct msr_batch_op` (32 bytes).
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct BatchOp {
    cpu: u16,
    isrdmsr: u16,
    err: i32,
    msr: u32,
    _pad: u32,
    msrdata: u64,
    wmask: u64,
}

/// msr-safe's `struct msr_batch_array` (16 bytes).
#[repr(C)]
struct BatchArray {
    numops: u32,
    version: u32,
    ops: *mut BatchOp,
}

const _: () = assert!(std::mem::size_of::<BatchOp>() == 32);
const _: () = assert!(std::mem::size_of::<BatchArray>() == 16);

extern "C" {
    // From the C library std already links against.
    fn ioctl(fd: i32, request: u64, ...) -> i32;
    fn setgroups(size: usize, list: *const u32) -> i32;
    fn setgid(gid: u32) -> i32;
    fn setuid(uid: u32) -> i32;
}

fn errno_name(e: &io::Error) -> String {
    let name = match e.raw_os_error() {
        Some(1) => "EPERM",
        Some(2) => "ENOENT",
        Some(5) => "EIO",
        Some(6) => "ENXIO",
        Some(7) => "E2BIG",
        Some(9) => "EBADF",
        Some(11) => "EAGAIN",
        Some(12) => "ENOMEM",
        Some(13) => "EACCES",
        Some(14) => "EFAULT",
        Some(16) => "EBUSY",
        Some(19) => "ENODEV",
        Some(22) => "EINVAL",
        Some(25) => "ENOTTY",
        Some(30) => "EROFS",
        Some(34) => "ERANGE",
        Some(42) => "ENOMSG",
        Some(76) => "ENOTUNIQ",
        Some(84) => "EILSEQ",
        Some(n) => return format!("E{n}"),
        None => return e.to_string(),
    };
    name.to_string()
}

fn errno_of_code(code: i32) -> String {
    errno_name(&io::Error::from_raw_os_error(code))
}

fn num(s: &str) -> Result<u64, String> {
    let r = match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(h) => u64::from_str_radix(h, 16),
        None => s.parse::<u64>(),
    };
    r.map_err(|_| format!("not a number: {s:?}"))
}

fn small<T: TryFrom<u64>>(s: &str, what: &str) -> Result<T, (u8, String)> {
    let v = num(s).map_err(|m| (2, m))?;
    T::try_from(v).map_err(|_| (2, format!("{what} out of range: {s}")))
}

/// Bytes as C-like text: printable ASCII as is, `\n`, `\0`, `\\`, `\"`, others as `\xHH`.
fn escape(b: &[u8]) -> String {
    let mut s = String::new();
    for &c in b {
        match c {
            b'\n' => s.push_str("\\n"),
            0 => s.push_str("\\0"),
            b'\\' => s.push_str("\\\\"),
            b'"' => s.push_str("\\\""),
            0x20..=0x7e => s.push(c as char),
            _ => s.push_str(&format!("\\x{c:02x}")),
        }
    }
    s
}

fn node(cpu: u64) -> String {
    format!("/dev/cpu/{cpu}/msr")
}

fn read_msr(f: &File, msr: u64) -> io::Result<u64> {
    let mut b = [0u8; 8];
    let n = f.read_at(&mut b, msr)?;
    if n != 8 {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("short read: {n} bytes"),
        ));
    }
    Ok(u64::from_le_bytes(b))
}

fn online_cpus() -> Result<Vec<u64>, String> {
    let p = "/sys/devices/system/cpu/online";
    let text = std::fs::read_to_string(p).map_err(|e| format!("{p}: {e}"))?;
    let mut cpus = Vec::new();
    for part in text.trim().split(',').filter(|s| !s.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b) = (num(a)?, num(b)?);
                cpus.extend(a..=b);
            }
            None => cpus.push(num(part)?),
        }
    }
    Ok(cpus)
}

fn open_err(path: &str) -> impl Fn(io::Error) -> (u8, String) + '_ {
    move |e| (1, format!("open {path}: {}", errno_name(&e)))
}

/// One read() into a buffer of exactly `size` bytes.
fn read_once(f: &mut File, size: usize) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; size];
    let n = f.read(&mut buf)?;
    buf.truncate(n);
    Ok(buf)
}

/// read() with a `bufsize` buffer until it returns 0.
fn read_all(path: &str, bufsize: usize) -> Result<Vec<u8>, (u8, String)> {
    let mut f = File::open(path).map_err(open_err(path))?;
    let mut out = Vec::new();
    loop {
        let chunk = read_once(&mut f, bufsize).map_err(|e| {
            (
                1,
                format!("read {path} (buffer {bufsize}): {}", errno_name(&e)),
            )
        })?;
        if chunk.is_empty() {
            return Ok(out);
        }
        out.extend_from_slice(&chunk);
    }
}

/// `data` in one write() to `path`: the count write returned, or its errno.
fn load_once(path: &str, data: &[u8]) -> Result<Result<usize, io::Error>, (u8, String)> {
    let mut f = OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(open_err(path))?;
    Ok(f.write(data))
}

fn parse_op(s: &str) -> Result<BatchOp, (u8, String)> {
    let bad = || (2, format!("bad op {s:?}: r:CPU:MSR or w:CPU:MSR:VALUE"));
    let parts: Vec<&str> = s.split(':').collect();
    let mut op = BatchOp {
        err: POISON_ERR,
        wmask: POISON_MASK,
        ..Default::default()
    };
    match parts.as_slice() {
        ["r", cpu, msr] => {
            op.isrdmsr = 1;
            op.cpu = small(cpu, "cpu")?;
            op.msr = small(msr, "msr")?;
            op.msrdata = POISON_DATA;
        }
        ["w", cpu, msr, val] => {
            op.cpu = small(cpu, "cpu")?;
            op.msr = small(msr, "msr")?;
            op.msrdata = num(val).map_err(|m| (2, m))?;
        }
        _ => return Err(bad()),
    }
    Ok(op)
}

/// An op's err as copied back: 0, -ERRNO, or anything else in hex (0x7777: not touched).
fn op_err(err: i32) -> String {
    if err == 0 {
        "0".to_string()
    } else if err < 0 {
        format!("-{}", errno_of_code(-err))
    } else {
        format!("{err:#x}")
    }
}

fn batch(args: &[String]) -> Result<(), (u8, String)> {
    let mut wronly = false;
    let mut version = BATCH_VERSION;
    let mut repeat = 1usize;
    let mut i = 0;
    while let Some(a) = args.get(i) {
        match a.as_str() {
            "--wronly" => wronly = true,
            "--repeat" => {
                i += 1;
                repeat = small(
                    args.get(i)
                        .ok_or((2, "--repeat needs a value".to_string()))?,
                    "repeat",
                )?;
            }
            "--version" => {
                i += 1;
                version = small(
                    args.get(i)
                        .ok_or((2, "--version needs a value".to_string()))?,
                    "version",
                )?;
            }
            _ => break,
        }
        i += 1;
    }
    let one = args[i..]
        .iter()
        .map(|s| parse_op(s))
        .collect::<Result<Vec<_>, _>>()?;
    let mut ops = one.repeat(repeat);
    let f = if wronly {
        OpenOptions::new().write(true).open(BATCH_NODE)
    } else {
        File::open(BATCH_NODE)
    }
    .map_err(open_err(BATCH_NODE))?;
    let mut arr = BatchArray {
        numops: u32::try_from(ops.len()).map_err(|_| (2, "too many ops".to_string()))?,
        version,
        ops: ops.as_mut_ptr(),
    };
    // SAFETY: `arr` points at `ops`, which holds `numops` initialised 32-byte ops laid out as the
    // kernel's struct msr_batch_op; both outlive the call, and the kernel writes back at most
    // `numops` ops into that array. With no ops the pointer is dangling but never dereferenced
    // (the kernel refuses numops == 0 before copying).
    let rc = unsafe {
        ioctl(
            f.as_raw_fd(),
            X86_IOC_MSR_BATCH,
            &mut arr as *mut BatchArray,
        )
    };
    if rc == 0 {
        println!("ioctl OK");
    } else if rc < 0 {
        println!("ioctl {}", errno_name(&io::Error::last_os_error()));
    } else {
        println!("ioctl returned {rc}");
    }
    if ops.len() > 16 {
        let mut counts: Vec<(i32, usize)> = Vec::new();
        for op in &ops {
            match counts.iter_mut().find(|(e, _)| *e == op.err) {
                Some((_, n)) => *n += 1,
                None => counts.push((op.err, 1)),
            }
        }
        let parts: Vec<String> = counts
            .iter()
            .map(|(e, n)| format!("{} x{n}", op_err(*e)))
            .collect();
        println!("ops {}: {}", ops.len(), parts.join(", "));
        return Ok(());
    }
    for (n, op) in ops.iter().enumerate() {
        let err = op_err(op.err);
        println!(
            "op {n} cpu={} msr={:#x} isrdmsr={} err={err} msrdata={:#018x} wmask={:#018x}",
            op.cpu, op.msr, op.isrdmsr, op.msrdata, op.wmask
        );
    }
    Ok(())
}

fn al_probe(args: &[String]) -> Result<(), (u8, String)> {
    let (outdir, sentinel, cases) = match args {
        [o, s, c @ ..] => (o, s, c),
        _ => return Err((2, "usage: al-probe OUTDIR SENTINEL CASE...".to_string())),
    };
    let node = "/dev/cpu/msr_allowlist";
    let sentinel_text = std::fs::read(sentinel).map_err(|e| (1, format!("{sentinel}: {e}")))?;
    for case in cases {
        let text = std::fs::read(case).map_err(|e| (1, format!("{case}: {e}")))?;
        let name = Path::new(case)
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| case.clone());
        match load_once(node, &sentinel_text)? {
            Ok(n) if n == sentinel_text.len() => {}
            Ok(n) => return Err((1, format!("sentinel: short write {n}"))),
            Err(e) => return Err((1, format!("sentinel: {}", errno_name(&e)))),
        }
        let verdict = match load_once(node, &text)? {
            Ok(n) => format!("OK {n}"),
            Err(e) => errno_name(&e),
        };
        let back = read_all(node, 4096)?;
        let out = Path::new(outdir).join(format!("{name}.rb"));
        std::fs::write(&out, &back).map_err(|e| (1, format!("{}: {e}", out.display())))?;
        println!("{name} {} {verdict}", back.len());
    }
    Ok(())
}

fn run(args: &[String]) -> Result<(), (u8, String)> {
    let usage = || {
        (2u8, "usage: rawmsr read|write|dump|pread|pwrite|stale|reads|cat|load|al-probe|batch|u64le|runas|time ... (see the source)".to_string())
    };
    let arg = |i: usize| -> Result<u64, (u8, String)> {
        num(args.get(i).ok_or_else(usage)?).map_err(|m| (2, m))
    };
    let size_arg = |i: usize| -> Result<usize, (u8, String)> {
        match args.get(i) {
            None => Ok(8),
            Some(s) => small(s, "size"),
        }
    };
    match args.first().map(String::as_str) {
        Some("read") if args.len() == 3 => {
            let (cpu, msr) = (arg(1)?, arg(2)?);
            let f = File::open(node(cpu))
                .map_err(|e| (1, format!("open {}: {}", node(cpu), errno_name(&e))))?;
            let v = read_msr(&f, msr).map_err(|e| {
                (
                    1,
                    format!("read cpu {cpu} msr {msr:#x}: {}", errno_name(&e)),
                )
            })?;
            println!("{v:#018x}");
            Ok(())
        }
        Some("write") if args.len() == 4 => {
            let (cpu, msr, val) = (arg(1)?, arg(2)?, arg(3)?);
            let f = OpenOptions::new()
                .write(true)
                .open(node(cpu))
                .map_err(|e| (1, format!("open {}: {}", node(cpu), errno_name(&e))))?;
            let n = f.write_at(&val.to_le_bytes(), msr).map_err(|e| {
                (
                    1,
                    format!("write cpu {cpu} msr {msr:#x}: {}", errno_name(&e)),
                )
            })?;
            if n != 8 {
                return Err((1, format!("write cpu {cpu} msr {msr:#x}: short write {n}")));
            }
            Ok(())
        }
        Some("dump") if args.len() >= 2 => {
            let msrs = (1..args.len()).map(arg).collect::<Result<Vec<_>, _>>()?;
            for cpu in online_cpus().map_err(|m| (1, m))? {
                let f = File::open(node(cpu));
                for &msr in &msrs {
                    let r = f
                        .as_ref()
                        .map_err(errno_name)
                        .and_then(|f| read_msr(f, msr).map_err(|e| errno_name(&e)));
                    match r {
                        Ok(v) => println!("{cpu} {msr:#010x} {v:#018x}"),
                        Err(e) => println!("{cpu} {msr:#010x} ERR:{e}"),
                    }
                }
            }
            Ok(())
        }
        Some("pread") if (3..=4).contains(&args.len()) => {
            let (path, off, size) = (&args[1], arg(2)?, size_arg(3)?);
            let f = File::open(path).map_err(open_err(path))?;
            let mut b = vec![0u8; size];
            let n = f.read_at(&mut b, off).map_err(|e| {
                (
                    1,
                    format!("pread {path} at {off:#x} size {size}: {}", errno_name(&e)),
                )
            })?;
            match <[u8; 8]>::try_from(&b[..n]) {
                Ok(v) => println!("{:#018x}", u64::from_le_bytes(v)),
                Err(_) => println!("{n} \"{}\"", escape(&b[..n])),
            }
            Ok(())
        }
        Some("pwrite") if (4..=5).contains(&args.len()) => {
            let (path, off, val, size) = (&args[1], arg(2)?, arg(3)?, size_arg(4)?);
            let f = OpenOptions::new()
                .write(true)
                .open(path)
                .map_err(open_err(path))?;
            let mut b = val.to_le_bytes().to_vec();
            b.resize(size, 0);
            let n = f.write_at(&b, off).map_err(|e| {
                (
                    1,
                    format!("pwrite {path} at {off:#x} size {size}: {}", errno_name(&e)),
                )
            })?;
            if n != size {
                return Err((1, format!("pwrite {path} at {off:#x}: short write {n}")));
            }
            Ok(())
        }
        Some("stale") if args.len() >= 4 => {
            let (path, off) = (&args[1], arg(2)?);
            let f = OpenOptions::new()
                .read(true)
                .write(true)
                .open(path)
                .map_err(open_err(path))?;
            let st = std::process::Command::new(&args[3])
                .args(&args[4..])
                .status()
                .map_err(|e| (1, format!("run {}: {e}", args[3])))?;
            println!("cmd exit {}", st.code().unwrap_or(-1));
            match read_msr(&f, off) {
                Ok(v) => println!("read {v:#018x}"),
                Err(e) => println!("read {}", errno_name(&e)),
            }
            match f.write_at(&0u64.to_le_bytes(), off) {
                Ok(n) => println!("write OK {n}"),
                Err(e) => println!("write {}", errno_name(&e)),
            }
            Ok(())
        }
        Some("reads") if args.len() >= 3 => {
            let path = &args[1];
            let sizes = (2..args.len())
                .map(|i| small::<usize>(&args[i], "size"))
                .collect::<Result<Vec<_>, _>>()?;
            let mut f = File::open(path).map_err(open_err(path))?;
            for size in sizes {
                match read_once(&mut f, size) {
                    Ok(b) => println!("{size} -> {} \"{}\"", b.len(), escape(&b)),
                    Err(e) => println!("{size} -> {}", errno_name(&e)),
                }
            }
            Ok(())
        }
        Some("cat") if (2..=3).contains(&args.len()) => {
            let bufsize = match args.get(2) {
                None => 4096,
                Some(s) => small(s, "buffer size")?,
            };
            let data = read_all(&args[1], bufsize)?;
            io::stdout()
                .write_all(&data)
                .map_err(|e| (1, format!("stdout: {e}")))?;
            Ok(())
        }
        Some("load") if args.len() == 3 => {
            let (path, file) = (&args[1], &args[2]);
            let data = std::fs::read(file).map_err(|e| (1, format!("{file}: {e}")))?;
            match load_once(path, &data)? {
                Ok(n) => {
                    println!("OK {n}");
                    Ok(())
                }
                Err(e) => Err((
                    1,
                    format!(
                        "write {path} ({} bytes of {file}): {}",
                        data.len(),
                        errno_name(&e)
                    ),
                )),
            }
        }
        Some("u64le") => {
            let mut out = Vec::with_capacity(8 * args.len());
            for a in &args[1..] {
                // Shell arithmetic prints values with bit 63 set as negative decimals.
                let v = match num(a) {
                    Ok(v) => v,
                    Err(m) => a.parse::<i64>().map_err(|_| (2, m))? as u64,
                };
                out.extend_from_slice(&v.to_le_bytes());
            }
            io::stdout()
                .write_all(&out)
                .map_err(|e| (1, format!("stdout: {e}")))?;
            Ok(())
        }
        Some("al-probe") => al_probe(&args[1..]),
        Some("batch") => batch(&args[1..]),
        Some("runas") if args.len() >= 4 => {
            let uid: u32 = small(&args[1], "uid")?;
            let mut ids = args[2].split(',');
            let gid: u32 = small(ids.next().unwrap_or(""), "gid")?;
            let supp = ids
                .map(|g| small::<u32>(g, "gid"))
                .collect::<Result<Vec<_>, _>>()?;
            let mut cmd = std::process::Command::new(&args[3]);
            cmd.args(&args[4..]);
            // SAFETY: the closure runs in the forked child before exec and only makes three
            // async-signal-safe system calls on data captured by value; it allocates nothing.
            unsafe {
                cmd.pre_exec(move || {
                    // Groups and gid first: after setuid a non-root process may change neither.
                    // A non-zero uid after exec has no capabilities.
                    if setgroups(supp.len(), supp.as_ptr()) != 0
                        || setgid(gid) != 0
                        || setuid(uid) != 0
                    {
                        return Err(io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
            let e = cmd.exec();
            Err((127, format!("exec {}: {e}", args[3])))
        }
        Some("time") if args.len() >= 2 => {
            let start = Instant::now();
            let st = std::process::Command::new(&args[1])
                .args(&args[2..])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .map_err(|e| (1, format!("run {}: {e}", args[1])))?;
            println!("{} {}", start.elapsed().as_nanos(), st.code().unwrap_or(-1));
            Ok(())
        }
        _ => Err(usage()),
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err((code, msg)) => {
            eprintln!("rawmsr: {msg}");
            ExitCode::from(code)
        }
    }
}
