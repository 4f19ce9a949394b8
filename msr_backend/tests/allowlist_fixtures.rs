//! Our allowlist parser and lint on our edge-case fixtures (each a case where the kernel's
//! grammar surprises), and the lists we ship in `allowlists/`: everything here is in this
//! repository. The comparison with msr-safe's own lists is `allowlist_reference.rs`.

use std::collections::BTreeSet;

use msr_backend::allowlist::{
    kernel_parse, lint, select_allowlist, Allowlist, AllowlistError, Severity,
};
use nix::errno::Errno;

mod common;
use common::lists::{
    al_files, cpu_of_file_name, fixture, read, shipped_dir, HEAD_COMMIT, V170_COMMIT,
};

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
        // Selection finds it for its CPU.
        let id = cpu_of_file_name(name);
        let got =
            select_allowlist(&id, std::slice::from_ref(&dir)).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(&got, p, "{name}");
        // Read-back form round-trips.
        let back = Allowlist::parse(a.to_kernel_text().as_bytes(), "readback").expect("readback");
        assert_eq!(back.digest(), a.digest(), "{name}");
    }
}
