//! The lists in `allowlists/` are what `msrsave allowlist compile allowlists/policy.toml --all`
//! makes from the checked-in site policy and our tables, byte for byte, and nothing else is there.

use std::collections::BTreeSet;

use msr_backend::msrs::models;
use msr_backend::policy::compile::{compile, verify, FindingKind, Severity};
use msr_backend::policy::Policy;

mod common;
use common::lists::{al_files, read, shipped_dir};

#[test]
fn every_shipped_list_is_the_compiled_site_policy() {
    let dir = shipped_dir();
    let policy = Policy::load(&dir.join("policy.toml")).unwrap_or_else(|e| panic!("{e}"));
    assert!(policy.warnings.is_empty(), "{:?}", policy.warnings);
    let mut made = BTreeSet::new();
    for m in models::models() {
        let c = compile(&policy, m.id);
        if c.is_empty() {
            continue;
        }
        verify(&c).unwrap_or_else(|e| panic!("{}: {e}", c.file_name));
        let committed = read(&dir.join(&c.file_name));
        assert!(
            committed == c.text.as_bytes(),
            "allowlists/{} is not what the policy compiles to; run: msrsave allowlist compile allowlists/policy.toml --all --out-dir allowlists",
            c.file_name
        );
        // What the compile says about the shipped policy: only what we know and accept.
        for f in &c.findings {
            let expected = match f.kind {
                // Our tables lack an MSR the policy names (IA32_FIXED_CTR3 on Ice Lake-SP, ...).
                FindingKind::UnknownMsr => f.severity == Severity::Warning,
                // msr-safe's lists make the PMCs and fixed counters writable in full.
                FindingKind::WritableCounter => {
                    matches!(f.msr, Some(m) if (0xC1..=0xC8).contains(&m.0) || (0x309..=0x30B).contains(&m.0))
                }
                // Template-only MSRs: no write-mask fact, left out.
                FindingKind::NoWritableFact => f.severity == Severity::Note,
                _ => false,
            };
            assert!(expected, "{}: unexpected finding {f:?}", c.file_name);
        }
        made.insert(c.file_name.clone());
    }
    let shipped: BTreeSet<String> = al_files(&dir)
        .iter()
        .filter_map(|p| p.file_name()?.to_str().map(String::from))
        .collect();
    assert_eq!(
        shipped, made,
        "allowlists/ holds exactly the compiled lists"
    );
}
