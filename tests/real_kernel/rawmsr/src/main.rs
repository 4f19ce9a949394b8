//! rawmsr: the real-kernel suite's own access to /dev/cpu/N/msr, independent of msrsave.
//!
//! It plays the "job" that changes registers and the auditor that reads every register back.
//! One pread/pwrite of 8 bytes at offset = MSR address, exactly what the stock driver expects.
//!
//!   rawmsr read CPU MSR            print the value as 0x%016x
//!   rawmsr write CPU MSR VALUE     write VALUE (all 64 bits)
//!   rawmsr dump MSR...             one line "CPU MSR VALUE" (or "CPU MSR ERR:<errno name>") per
//!                                  online CPU and MSR, CPUs from /sys/devices/system/cpu/online
//!   rawmsr runas UID GID CMD ARG... run CMD as UID:GID with no supplementary groups and no
//!                                  capabilities (busybox's setpriv cannot change uid)
//!
//! Numbers take 0x (hex) or decimal. Errors print "rawmsr: ... : <errno name> ..." on stderr and
//! exit 1; usage errors exit 2.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::os::unix::process::CommandExt;
use std::process::ExitCode;

fn errno_name(e: &io::Error) -> String {
    let name = match e.raw_os_error() {
        Some(1) => "EPERM",
        Some(2) => "ENOENT",
        Some(5) => "EIO",
        Some(6) => "ENXIO",
        Some(13) => "EACCES",
        Some(16) => "EBUSY",
        Some(22) => "EINVAL",
        Some(30) => "EROFS",
        Some(n) => return format!("E{n}"),
        None => return e.to_string(),
    };
    name.to_string()
}

fn num(s: &str) -> Result<u64, String> {
    let r = match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(h) => u64::from_str_radix(h, 16),
        None => s.parse::<u64>(),
    };
    r.map_err(|_| format!("not a number: {s:?}"))
}

fn node(cpu: u64) -> String {
    format!("/dev/cpu/{cpu}/msr")
}

fn read_msr(f: &File, msr: u64) -> io::Result<u64> {
    let mut b = [0u8; 8];
    let n = f.read_at(&mut b, msr)?;
    if n != 8 {
        return Err(io::Error::new(io::ErrorKind::UnexpectedEof, format!("short read: {n} bytes")));
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

fn run(args: &[String]) -> Result<(), (u8, String)> {
    let usage = || (2u8, "usage: rawmsr read CPU MSR | write CPU MSR VALUE | dump MSR... | runas UID GID CMD...".to_string());
    let arg = |i: usize| -> Result<u64, (u8, String)> {
        num(args.get(i).ok_or_else(usage)?).map_err(|m| (2, m))
    };
    match args.first().map(String::as_str) {
        Some("read") if args.len() == 3 => {
            let (cpu, msr) = (arg(1)?, arg(2)?);
            let f = File::open(node(cpu)).map_err(|e| (1, format!("open {}: {}", node(cpu), errno_name(&e))))?;
            let v = read_msr(&f, msr)
                .map_err(|e| (1, format!("read cpu {cpu} msr {msr:#x}: {}", errno_name(&e))))?;
            println!("{v:#018x}");
            Ok(())
        }
        Some("write") if args.len() == 4 => {
            let (cpu, msr, val) = (arg(1)?, arg(2)?, arg(3)?);
            let f = OpenOptions::new()
                .write(true)
                .open(node(cpu))
                .map_err(|e| (1, format!("open {}: {}", node(cpu), errno_name(&e))))?;
            let n = f
                .write_at(&val.to_le_bytes(), msr)
                .map_err(|e| (1, format!("write cpu {cpu} msr {msr:#x}: {}", errno_name(&e))))?;
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
                    let r = f.as_ref().map_err(|e| errno_name(e)).and_then(|f| {
                        read_msr(f, msr).map_err(|e| errno_name(&e))
                    });
                    match r {
                        Ok(v) => println!("{cpu} {msr:#010x} {v:#018x}"),
                        Err(e) => println!("{cpu} {msr:#010x} ERR:{e}"),
                    }
                }
            }
            Ok(())
        }
        Some("runas") if args.len() >= 4 => {
            let (uid, gid) = (arg(1)?, arg(2)?);
            let (uid, gid) = (
                u32::try_from(uid).map_err(|_| (2, "uid out of range".to_string()))?,
                u32::try_from(gid).map_err(|_| (2, "gid out of range".to_string()))?,
            );
            // std drops supplementary groups (setgroups(0)) when root changes uid; a non-zero uid
            // after exec has no capabilities.
            let e = std::process::Command::new(&args[3]).args(&args[4..]).uid(uid).gid(gid).exec();
            Err((127, format!("exec {}: {e}", args[3])))
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
