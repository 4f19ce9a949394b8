//! Our allowlist parser, lint and selection against msr-safe's own allowlists (the reference
//! copy in `shared/reference/msr-safe-allowlists`, beside the repository), our edge-case
//! fixtures, and the lists we ship in `allowlists/`.
//!
//! The reference directory is found through `MSR_REFERENCE_ALLOWLISTS`, else at
//! `<repo>/../shared/reference/msr-safe-allowlists`. If it is missing these tests FAIL: they must
//! not pass by checking nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use msr_backend::allowlist::{
    allowlist_file_names, kernel_parse, lint, select_allowlist, template_entry_count, Allowlist,
    AllowlistError, Severity,
};
use msr_backend::node::CpuIdentity;
use nix::errno::Errno;

const HEAD_COMMIT: &str = "cdafa357731939741074157c1c23cb308364eb8c";
const V170_COMMIT: &str = "d33e8bfdc95a7fc8c1da8abe2726531d79b73ea4";

fn reference_dir() -> PathBuf {
    let dir = match std::env::var_os("MSR_REFERENCE_ALLOWLISTS") {
        Some(d) => PathBuf::from(d),
        None => {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/reference/msr-safe-allowlists")
        }
    };
    assert!(
        dir.join("README.md").is_file() && dir.join("v1.7.0").is_dir(),
        "msr-safe reference allowlists not found at {}: put shared/ beside the repository or set \
         MSR_REFERENCE_ALLOWLISTS to the folder (these tests fail rather than skip)",
        dir.display()
    );
    dir
}

fn shipped_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../allowlists")
}

fn fixture(name: &str) -> Vec<u8> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn al_files(dir: &Path) -> Vec<PathBuf> {
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

/// Every msr-safe list in the reference: the templates at the top level, contribs/riken and the
/// v1.7.0 lists, as (path relative to the reference dir, path).
fn reference_files() -> Vec<(String, PathBuf)> {
    let dir = reference_dir();
    let mut out = Vec::new();
    for sub in ["", "contribs/riken", "v1.7.0"] {
        for p in al_files(&dir.join(sub)) {
            let rel = p
                .strip_prefix(&dir)
                .expect("under the reference dir")
                .to_string_lossy()
                .into_owned();
            out.push((rel, p));
        }
    }
    // 30 Intel templates + al_19_1 + al_19_21, the RIKEN template, 12 v1.7.0 lists.
    assert_eq!(out.len(), 45, "unexpected reference files: {out:?}");
    out
}

fn read(p: &Path) -> Vec<u8> {
    std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// An independent, deliberately simple reading of msr-safe's own list format: an entry is a line
/// whose first whitespace-separated token starts with a digit; its first two tokens are hex
/// (`0x...`) or decimal. Enough for msr-safe's files (one entry per line); it knows nothing of
/// the kernel's token rules.
fn simple_entries(text: &[u8]) -> Vec<(u64, u64)> {
    let text = String::from_utf8_lossy(text);
    let num = |t: &str| match t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
        Some(h) => u64::from_str_radix(h, 16).expect("hex number"),
        None => t.parse::<u64>().expect("decimal number"),
    };
    text.lines()
        .filter_map(|l| {
            let mut toks = l.split_whitespace();
            let first = toks.next()?;
            first
                .starts_with(|c: char| c.is_ascii_digit())
                .then(|| (num(first), num(toks.next().expect("a mask after the MSR"))))
        })
        .collect()
}

/// The addresses of a template's commented-out entries (`# 0x... 0x...`), with their names.
fn template_addresses(text: &[u8]) -> BTreeMap<u64, String> {
    let text = String::from_utf8_lossy(text);
    let mut out = BTreeMap::new();
    for l in text.lines() {
        let Some(rest) = l.trim_start().strip_prefix('#') else {
            continue;
        };
        let mut toks = rest.split_whitespace();
        let (Some(a), Some(m)) = (toks.next(), toks.next()) else {
            continue;
        };
        let hex = |t: &str| {
            t.strip_prefix("0x")
                .and_then(|h| u64::from_str_radix(h, 16).ok())
        };
        if let (Some(a), Some(_)) = (hex(a), hex(m)) {
            out.entry(a).or_insert_with(|| rest.to_string());
        }
    }
    out
}

fn pairs(text: &[u8]) -> Vec<(u64, u64)> {
    kernel_parse(text)
        .unwrap_or_else(|e| panic!("{e}"))
        .into_iter()
        .map(|e| (e.msr, e.mask))
        .collect()
}

fn writable(p: &[(u64, u64)]) -> usize {
    p.iter().filter(|(_, m)| *m != 0).count()
}

fn cpu(family: u32, model: u32) -> CpuIdentity {
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
fn cpu_of_file_name(name: &str) -> CpuIdentity {
    let rest = name.strip_prefix("al_").expect("al_ name");
    let (f, m) = rest.split_once('_').expect("new-style name");
    cpu(
        u32::from_str_radix(f, 16).expect("family"),
        u32::from_str_radix(m, 16).expect("model"),
    )
}

#[test]
fn every_reference_file_parses_to_exactly_the_kernel_entries() {
    for (rel, p) in reference_files() {
        let text = read(&p);
        let simple = simple_entries(&text);
        match kernel_parse(&text) {
            Ok(entries) => {
                let got: Vec<(u64, u64)> = entries.iter().map(|e| (e.msr, e.mask)).collect();
                assert_eq!(got, simple, "{rel}: entries differ from the simple reading");
                assert!(
                    entries.iter().all(|e| e.comment.is_some()),
                    "{rel}: an entry lost its name comment"
                );
                // Our validated type takes every one of them (all addresses are 32-bit).
                let a = Allowlist::parse(&text, &rel).unwrap_or_else(|e| panic!("{e}"));
                assert_eq!(a.len(), simple.len(), "{rel}");
                assert_eq!(a.writable_count(), writable(&simple), "{rel}");
            }
            Err(e) => {
                assert!(simple.is_empty(), "{rel}: refused ({e}) but has entries");
                assert_eq!(e.errno, Errno::ENOMSG, "{rel}: {e}");
                assert!(!e.is_clearing_write(), "{rel}");
                assert!(template_entry_count(&text) > 0, "{rel}: not a template");
                assert!(matches!(
                    Allowlist::parse(&text, &rel),
                    Err(AllowlistError::Parse { .. })
                ));
            }
        }
    }
}

#[test]
fn reference_counts_match_the_notes() {
    let dir = reference_dir();
    let expected: &[(&str, usize, usize)] = &[
        ("al_19_21", 51, 32),
        ("v1.7.0/al_1921", 51, 32),
        ("v1.7.0/al_0655", 399, 266),
        ("v1.7.0/al_064f", 323, 206),
        ("v1.7.0/al_0657", 499, 324),
        ("v1.7.0/al_066a", 9, 3),
    ];
    for &(rel, n, w) in expected {
        let p = pairs(&read(&dir.join(rel)));
        assert_eq!((p.len(), writable(&p)), (n, w), "{rel}");
    }
    // Every other top-level list, and RIKEN's, is a template: ENOMSG, no entries.
    let mut templates = 0;
    for (rel, p) in reference_files() {
        if rel.starts_with("v1.7.0/") || rel == "al_19_21" {
            continue;
        }
        let e = kernel_parse(&read(&p)).expect_err(&rel);
        assert_eq!(e.errno, Errno::ENOMSG, "{rel}");
        templates += 1;
    }
    assert_eq!(
        templates, 32,
        "30 Intel templates, al_19_1 and contribs/riken/al_06_8F"
    );
}

#[test]
fn lint_of_reference_files_agrees_with_the_kernel() {
    for (rel, p) in reference_files() {
        let text = read(&p);
        let findings = lint(&text);
        let errors: Vec<_> = findings
            .iter()
            .filter(|f| f.severity == Severity::Error)
            .collect();
        match kernel_parse(&text) {
            Ok(_) => assert!(errors.is_empty(), "{rel}: {errors:?}"),
            Err(e) => {
                assert_eq!(errors.len(), 1, "{rel}: {errors:?}");
                assert_eq!(errors[0].kernel_error.as_ref(), Some(&e), "{rel}");
                assert_eq!(errors[0].line, e.line, "{rel}");
                assert!(errors[0].message.contains("template"), "{rel}");
            }
        }
        // al_19_1 and the RIKEN list end without a newline after a comment: a warning only.
        let no_newline = findings
            .iter()
            .any(|f| f.severity == Severity::Warning && f.message.contains("no newline"));
        assert_eq!(no_newline, !text.ends_with(b"\n"), "{rel}");
    }
}

#[test]
fn selection_in_the_reference_dirs() {
    let dir = reference_dir();
    let top = dir.clone();
    let v170 = dir.join("v1.7.0");

    // New name first, in the first directory that has it.
    assert_eq!(
        select_allowlist(&cpu(0x19, 0x21), &[top.clone(), v170.clone()]).expect("al_19_21"),
        top.join("al_19_21")
    );
    assert_eq!(
        select_allowlist(&cpu(0x19, 0x21), &[v170.clone(), top.clone()]).expect("al_1921"),
        v170.join("al_1921")
    );
    // The old naming (v1.7.0).
    assert_eq!(
        select_allowlist(&cpu(6, 0x55), std::slice::from_ref(&v170)).expect("al_0655"),
        v170.join("al_0655")
    );
    // A template is skipped in favour of an active list further on...
    assert_eq!(
        select_allowlist(&cpu(6, 0x55), &[top.clone(), v170.clone()]).expect("skip template"),
        v170.join("al_0655")
    );
    // ...and when there is only a template, the error says so (msr-safe issue #185).
    let e = select_allowlist(&cpu(6, 0x8F), &[top.clone(), v170.clone()]).expect_err("template");
    let msg = e.to_string();
    assert!(matches!(e, AllowlistError::TemplateOnly { .. }), "{msg}");
    assert!(
        msg.contains("al_06_8F") && msg.contains("template(s) with no active entries"),
        "{msg}"
    );
    assert!(msg.contains("ENOMSG") && msg.contains("al_068f"), "{msg}");
    let e = select_allowlist(&cpu(0x19, 0x01), &[top.clone(), v170.clone()]).expect_err("al_19_1");
    assert!(matches!(e, AllowlistError::TemplateOnly { .. }), "{e}");
    // Nothing at all: the CPU, the dirs and the names are in the message.
    let e = select_allowlist(&cpu(6, 0xAD), &[top.clone(), v170.clone()]).expect_err("none");
    let msg = e.to_string();
    assert!(matches!(e, AllowlistError::NoListForCpu { .. }), "{msg}");
    for needle in [
        "GenuineIntel family 0x06 model 0xad",
        "al_06_AD",
        "al_06ad",
        &top.display().to_string(),
        &v170.display().to_string(),
    ] {
        assert!(msg.contains(needle), "{needle:?} not in {msg}");
    }
}

#[test]
fn file_names_follow_msr_safe() {
    assert_eq!(allowlist_file_names(&cpu(6, 0x55)), ["al_06_55", "al_0655"]);
    assert_eq!(
        allowlist_file_names(&cpu(0x19, 0x1)),
        ["al_19_1", "al_1901"]
    );
    assert_eq!(allowlist_file_names(&cpu(6, 0xBF)), ["al_06_BF", "al_06bf"]);
    // Every file msr-safe ships is named so that its CPU finds it.
    for (rel, p) in reference_files() {
        let name = p.file_name().and_then(|n| n.to_str()).expect("name");
        let id = if rel.starts_with("v1.7.0/") {
            let hex = name.strip_prefix("al_").expect("al_");
            cpu(
                u32::from_str_radix(&hex[..2], 16).expect("ff"),
                u32::from_str_radix(&hex[2..], 16).expect("mm"),
            )
        } else {
            cpu_of_file_name(name)
        };
        assert!(allowlist_file_names(&id).iter().any(|n| n == name), "{rel}");
    }
}

#[test]
fn fixtures_parse_and_lint_as_the_kernel_would() {
    // (fixture, kernel result: Ok(entries) or Err((errno, line, token)))
    type Want = Result<Vec<(u64, u64)>, (Errno, usize, &'static str)>;
    let cases: &[(&str, Want)] = &[
        (
            "comment_at_eof_no_newline",
            Ok(vec![(0x10, 0), (0x199, 0xffff)]),
        ),
        ("entry_at_eof_no_newline", Err((Errno::EILSEQ, 3, "0xffff"))),
        (
            "third_token",
            Ok(vec![(0x10, 0), (0x199, 0xffff), (0x1B0, 0xf)]),
        ),
        ("duplicate", Err((Errno::ENOTUNIQ, 4, "0x00000010"))),
        ("template", Err((Errno::ENOMSG, 5, ""))),
        ("nul_byte", Ok(vec![(0x10, 0)])),
        (
            "bases_and_crlf",
            Ok(vec![
                (0x10, 0),
                (0x199, 0xffff),
                (0o610, 0x00ff_ffff_00ff_ffff),
            ]),
        ),
        ("above_32_bits", Ok(vec![(0x1_0000_0010, 0), (0x10, 0)])),
        (
            "mask_on_read_only",
            Ok(vec![(0x10, u64::MAX), (0xE8, 1), (0x199, 0xffff)]),
        ),
        ("nbsp", Err((Errno::EINVAL, 3, "0x199\u{fffd}"))),
        ("comment_between", Err((Errno::EINVAL, 3, "#"))),
    ];
    for (name, want) in cases {
        let text = fixture(name);
        let got = kernel_parse(&text)
            .map(|v| v.into_iter().map(|e| (e.msr, e.mask)).collect::<Vec<_>>())
            .map_err(|e| (e.errno, e.line, e.token.clone()));
        let want = want
            .clone()
            .map_err(|(errno, line, tok)| (errno, line, tok.to_string()));
        assert_eq!(got, want, "{name}");
        // The lint reports the kernel's error first, with its line and token.
        let findings = lint(&text);
        if let Err(e) = kernel_parse(&text) {
            let f = findings
                .iter()
                .find(|f| f.kernel_error.is_some())
                .unwrap_or_else(|| panic!("{name}: no kernel error in {findings:?}"));
            assert_eq!(f.kernel_error.as_ref(), Some(&e), "{name}");
            assert_eq!((f.line, f.severity), (e.line, Severity::Error), "{name}");
        }
    }

    let has = |name: &str, line: usize, sev: Severity, needle: &str| {
        let findings = lint(&fixture(name));
        assert!(
            findings
                .iter()
                .any(|f| f.line == line && f.severity == sev && f.message.contains(needle)),
            "{name}: no {sev} on line {line} containing {needle:?} in {findings:#?}"
        );
    };
    has(
        "comment_at_eof_no_newline",
        4,
        Severity::Warning,
        "no newline",
    );
    has("third_token", 2, Severity::Warning, "more than two numbers");
    has("duplicate", 4, Severity::Error, "ENOTUNIQ");
    has("duplicate", 5, Severity::Error, "listed again");
    has("template", 5, Severity::Error, "template: its 2 entries");
    has(
        "nul_byte",
        3,
        Severity::Warning,
        "1 line(s) that look like entries",
    );
    has("bases_and_crlf", 4, Severity::Warning, "octal (0x188)");
    has("above_32_bits", 2, Severity::Error, "above 32 bits");
    has(
        "above_32_bits",
        0,
        Severity::Warning,
        "none of the 2 entries",
    );
    has(
        "mask_on_read_only",
        2,
        Severity::Warning,
        "IA32_TIME_STAMP_COUNTER",
    );
    has("mask_on_read_only", 3, Severity::Warning, "IA32_APERF");
    has("nbsp", 2, Severity::Warning, "non-ASCII");
    // Entries our devices cannot address are refused by our loader, not silently dropped.
    assert!(matches!(
        Allowlist::parse(&fixture("above_32_bits"), "above_32_bits"),
        Err(AllowlistError::Invalid { .. })
    ));
}

#[test]
fn shipped_lists_load_lint_clean_and_are_selected() {
    let dir = shipped_dir();
    let files = al_files(&dir);
    let names: BTreeSet<String> = files
        .iter()
        .filter_map(|p| p.file_name()?.to_str().map(String::from))
        .collect();
    for want in [
        "al_06_55", "al_06_4F", "al_06_6A", "al_06_8F", "al_19_1", "al_19_21",
    ] {
        assert!(names.contains(want), "allowlists/{want} missing");
    }
    let reference = reference_dir();
    for p in &files {
        let name = p.file_name().and_then(|n| n.to_str()).expect("name");
        let text = read(p);
        assert!(text.len() < 128 * 1024, "{name}");
        assert!(text.ends_with(b"\n"), "{name}");
        let findings = lint(&text);
        let errors: Vec<_> = findings
            .iter()
            .filter(|f| f.severity == Severity::Error)
            .collect();
        assert!(errors.is_empty(), "{name}: {errors:#?}");
        let a = Allowlist::from_file(p).unwrap_or_else(|e| panic!("{e}"));
        assert!(a.writable_count() > 0, "{name}");
        assert!(
            a.entries().iter().all(|e| e.name.is_some()),
            "{name}: every entry needs a name comment"
        );
        let s = String::from_utf8_lossy(&text);
        assert!(
            s.contains("SPDX-License-Identifier: GPL-2.0-only"),
            "{name}"
        );
        assert!(s.contains("LLNL") && s.contains("msr-safe"), "{name}");
        assert!(s.contains(HEAD_COMMIT) || s.contains(V170_COMMIT), "{name}");
        // Selection finds it for its CPU, ahead of msr-safe's own folders.
        let id = cpu_of_file_name(name);
        let got = select_allowlist(
            &id,
            &[dir.clone(), reference.clone(), reference.join("v1.7.0")],
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(&got, p, "{name}");
        // Read-back form round-trips.
        let back = Allowlist::parse(a.to_kernel_text().as_bytes(), "readback").expect("readback");
        assert_eq!(back.digest(), a.digest(), "{name}");
    }
}

/// The shipped lists hold exactly what allowlists/README.md says they were derived from.
#[test]
fn shipped_lists_are_derived_from_the_reference_facts() {
    let reference = reference_dir();
    let shipped = shipped_dir();
    let ours = |n: &str| pairs(&read(&shipped.join(n)));
    let theirs = |n: &str| pairs(&read(&reference.join(n)));
    let template = |n: &str| template_addresses(&read(&reference.join(n)));

    // Skylake-SP and Broadwell-X: the v1.7.0 lists, entry for entry.
    assert_eq!(ours("al_06_55"), theirs("v1.7.0/al_0655"));
    assert_eq!(ours("al_06_4F"), theirs("v1.7.0/al_064f"));
    // AMD: al_19_21's active entries; for Milan, those its template lists (all of them).
    assert_eq!(ours("al_19_21"), theirs("al_19_21"));
    let milan = template("al_19_1");
    let want: Vec<_> = theirs("al_19_21")
        .into_iter()
        .filter(|(m, _)| milan.contains_key(m))
        .collect();
    assert_eq!(ours("al_19_1"), want);

    // Ice Lake-SP and Sapphire Rapids: addresses from the CPU's templates, masks from the first
    // v1.7.0 list (in the stated order) that has the MSR active.
    let check = |name: &str, templates: &[&str], sources: &[&str]| {
        let addrs: BTreeSet<u64> = templates
            .iter()
            .flat_map(|t| template(t).into_keys())
            .collect();
        let facts: Vec<BTreeMap<u64, u64>> = sources
            .iter()
            .map(|s| theirs(&format!("v1.7.0/{s}")).into_iter().collect())
            .collect();
        let entries = ours(name);
        assert!(
            entries.len() >= 30,
            "{name}: only {} entries",
            entries.len()
        );
        for (m, mask) in entries {
            assert!(addrs.contains(&m), "{name}: {m:#x} is not in its template");
            let fact = facts.iter().find_map(|f| f.get(&m).copied());
            assert_eq!(
                fact,
                Some(mask),
                "{name}: {m:#x} mask is not the v1.7.0 fact"
            );
        }
    };
    check(
        "al_06_6A",
        &["al_06_6A"],
        &["al_066a", "al_0655", "al_064f"],
    );
    check(
        "al_06_8F",
        &["al_06_8F", "contribs/riken/al_06_8F"],
        &["al_0655", "al_064f"],
    );
    // The registers a job tunes are there with a write mask.
    let spr: BTreeMap<u64, u64> = ours("al_06_8F").into_iter().collect();
    for (m, mask) in [
        (0xC1, u64::MAX),
        (0x186, 0xffff_ffff),
        (0x309, u64::MAX),
        (0x38D, 0xbbb),
        (0x199, 0xffff),
        (0x1B0, 0xf),
        (0x610, 0x00ff_ffff_00ff_ffff),
        (0x618, 0x00ff_ffff),
        (0x620, 0x7f7f),
    ] {
        assert_eq!(spr.get(&m), Some(&mask), "al_06_8F {m:#x}");
    }
    let icx: BTreeMap<u64, u64> = ours("al_06_6A").into_iter().collect();
    assert_eq!(icx.get(&0x610), Some(&0x00ff_ffff_00ff_ffff));
    assert_eq!(icx.get(&0x65C), Some(&0x0001_ffff_00ff_ffff));
    // Not in Ice Lake-SP's template, so not in our list.
    assert_eq!(icx.get(&0x620), None);
}
