//! Allowlist fixtures shared by the allowlist tests: our edge-case files, the lists we ship in
//! `allowlists/`, and CPU identities named the way msr-safe names its files.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use msr_backend::types::CpuIdentity;

/// The msr-safe commits the shipped lists were derived from (HEAD, and the v1.7.0 tag).
pub const HEAD_COMMIT: &str = "cdafa357731939741074157c1c23cb308364eb8c";
pub const V170_COMMIT: &str = "d33e8bfdc95a7fc8c1da8abe2726531d79b73ea4";

pub fn shipped_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../allowlists")
}

pub fn fixture(name: &str) -> Vec<u8> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

pub fn al_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("directory entry").path())
        .filter(|p| {
            p.is_file()
                && p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("al_"))
        })
        .collect();
    v.sort();
    v
}

pub fn read(p: &Path) -> Vec<u8> {
    std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

pub fn cpu(family: u32, model: u32) -> CpuIdentity {
    CpuIdentity {
        vendor: if family >= 0x17 {
            "AuthenticAMD"
        } else {
            "GenuineIntel"
        }
        .to_string(),
        family,
        model,
    }
}

/// `al_06_55` -> family 6, model 0x55.
pub fn cpu_of_file_name(name: &str) -> CpuIdentity {
    let rest = name.strip_prefix("al_").expect("al_ name");
    let (f, m) = rest.split_once('_').expect("new-style name");
    cpu(
        u32::from_str_radix(f, 16).expect("family"),
        u32::from_str_radix(m, 16).expect("model"),
    )
}
