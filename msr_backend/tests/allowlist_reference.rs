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

mod common;
use common::lists::{al_files, cpu, cpu_of_file_name, read, shipped_dir};
use nix::errno::Errno;

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

/// Selection finds each shipped list for its CPU ahead of msr-safe's own folders (the rest of
/// what a shipped list must be is in `allowlist_fixtures.rs`).
#[test]
fn shipped_lists_are_selected_ahead_of_msr_safes() {
    let dir = shipped_dir();
    let reference = reference_dir();
    for p in al_files(&dir) {
        let name = p.file_name().and_then(|n| n.to_str()).expect("name");
        let id = cpu_of_file_name(name);
        let got = select_allowlist(
            &id,
            &[dir.clone(), reference.clone(), reference.join("v1.7.0")],
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(got, p, "{name}");
    }
}

/// The shipped lists hold exactly what allowlists/README.md says they were derived from.
#[test]
fn shipped_lists_are_derived_from_the_reference_facts() {
    let reference = reference_dir();
    let shipped = shipped_dir();
    // Compiled lists are in address order; msr-safe's are in their own order.
    let sorted = |mut v: Vec<(u64, u64)>| {
        v.sort_unstable();
        v
    };
    let ours = |n: &str| sorted(pairs(&read(&shipped.join(n))));
    let theirs = |n: &str| sorted(pairs(&read(&reference.join(n))));
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

/// The per-model tables (msr_backend/src/msrs/models_data.rs, made by allowlists/gen_models.py)
/// hold what the reference says: every MSR of the model's template(s) and active lists, and as
/// writable bits exactly the masks of the lists allowlists/README.md names.
#[test]
fn model_tables_hold_the_reference_facts() {
    use msr_backend::msrs::models::model;
    let reference = reference_dir();
    let theirs =
        |n: &str| -> BTreeMap<u64, u64> { pairs(&read(&reference.join(n))).into_iter().collect() };
    let template = |n: &str| template_addresses(&read(&reference.join(n)));
    let table = |id: &str| -> BTreeMap<u64, Option<u64>> {
        model(id.parse().unwrap())
            .unwrap_or_else(|| panic!("no table for {id}"))
            .msrs
            .iter()
            .map(|m| (u64::from(m.addr), m.writable))
            .collect()
    };
    // Skylake-SP, Broadwell-X: template MSRs (writable unknown) and the v1.7.0 lists' masks.
    for (id, tmpl, v170) in [
        ("06_55", "al_06_55", "v1.7.0/al_0655"),
        ("06_4F", "al_06_4F", "v1.7.0/al_064f"),
    ] {
        let t = table(id);
        let facts = theirs(v170);
        let addrs: BTreeSet<u64> = template(tmpl)
            .into_keys()
            .chain(facts.keys().copied())
            .collect();
        assert_eq!(t.keys().copied().collect::<BTreeSet<_>>(), addrs, "{id}");
        for (a, w) in &t {
            assert_eq!(*w, facts.get(a).copied(), "{id} {a:#x}");
        }
    }
    // AMD.
    let zen3 = theirs("al_19_21");
    assert_eq!(
        table("19_21"),
        zen3.iter().map(|(a, m)| (*a, Some(*m))).collect()
    );
    let milan = table("19_1");
    assert_eq!(
        milan.keys().copied().collect::<BTreeSet<_>>(),
        template("al_19_1").into_keys().collect()
    );
    for (a, w) in &milan {
        assert_eq!(*w, zen3.get(a).copied(), "19_1 {a:#x}");
    }
    // Ice Lake-SP and Sapphire Rapids: template MSRs; every known mask is a v1.7.0 fact.
    for (id, tmpls, sources) in [
        (
            "06_6A",
            &["al_06_6A"][..],
            &["v1.7.0/al_066a", "v1.7.0/al_0655", "v1.7.0/al_064f"][..],
        ),
        (
            "06_8F",
            &["al_06_8F", "contribs/riken/al_06_8F"][..],
            &["v1.7.0/al_0655", "v1.7.0/al_064f"][..],
        ),
    ] {
        let t = table(id);
        let addrs: BTreeSet<u64> = tmpls.iter().flat_map(|n| template(n).into_keys()).collect();
        assert_eq!(t.keys().copied().collect::<BTreeSet<_>>(), addrs, "{id}");
        let facts: Vec<BTreeMap<u64, u64>> = sources.iter().map(|s| theirs(s)).collect();
        for (a, w) in &t {
            if let Some(w) = w {
                assert_eq!(facts.iter().find_map(|f| f.get(a)), Some(w), "{id} {a:#x}");
            }
        }
    }
}
