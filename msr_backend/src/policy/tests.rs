use super::compile::{compile, verify, FindingKind, Severity};
use super::*;

fn policy(text: &str) -> Policy {
    parse(text.as_bytes(), "site.toml").unwrap_or_else(|e| panic!("{e}"))
}

fn error(text: &str) -> String {
    match parse(text.as_bytes(), "site.toml") {
        Ok(_) => panic!("accepted:\n{text}"),
        Err(e) => e.to_string(),
    }
}

fn skx() -> ModelId {
    "06_55".parse().unwrap()
}

fn decide(p: &Policy, addr: u32, kind: AccessKind) -> (Action, Option<usize>) {
    let d = p.decide(skx(), models::model(skx()), addr, kind);
    (d.action, d.rule.map(|i| p.rules[i].number))
}

const HEAD: &str = "version = 1\n";

#[test]
fn the_first_matching_rule_decides_each_access_and_the_default_the_rest() {
    let p = policy(&format!(
        "{HEAD}
[allowlist]
default = \"deny\"

[[rule]]
msrs = \"IA32_PERF_CTL\"
access = \"write\"
action = \"deny\"

[[rule]]
msrs = \"0x190-0x1AF\"
access = \"read_write\"
action = \"allow\"

[[rule]]
msrs = \"0x199\"
access = \"read_write\"
action = \"deny\"

[[rule]]
msrs = \"0x1B0\"
access = \"read\"
action = \"allow\"
models = [\"06_4F\"]
"
    ));
    // Rule 1 decides the write of 0x199; rule 2 its read (rule 3 never gets to decide).
    assert_eq!(
        decide(&p, 0x199, AccessKind::Write),
        (Action::Deny, Some(1))
    );
    assert_eq!(
        decide(&p, 0x199, AccessKind::Read),
        (Action::Allow, Some(2))
    );
    // Inside rule 2's range, both accesses.
    assert_eq!(
        decide(&p, 0x1A0, AccessKind::Write),
        (Action::Allow, Some(2))
    );
    assert_eq!(
        decide(&p, 0x1AF, AccessKind::Read),
        (Action::Allow, Some(2))
    );
    // Just outside it: the default.
    assert_eq!(decide(&p, 0x18F, AccessKind::Read), (Action::Deny, None));
    assert_eq!(decide(&p, 0x1B0, AccessKind::Read), (Action::Deny, None));
    // Rule 4 is for another model.
    let bdx: ModelId = "06_4F".parse().unwrap();
    let d = p.decide(bdx, models::model(bdx), 0x1B0, AccessKind::Read);
    assert_eq!((d.action, d.rule), (Action::Allow, Some(3)));
    // Default allow.
    let open = policy(&format!("{HEAD}[allowlist]\ndefault = \"allow\"\n"));
    assert_eq!(
        decide(&open, 0x10, AccessKind::Write),
        (Action::Allow, None)
    );
    // No [allowlist]: deny.
    assert_eq!(
        decide(&policy(HEAD), 0x10, AccessKind::Read),
        (Action::Deny, None)
    );
}

fn entry(c: &compile::Compiled, addr: u32) -> Option<u64> {
    c.entries
        .iter()
        .find(|e| e.msr == MsrAddr(addr))
        .map(|e| e.mask.0)
}

fn has(c: &compile::Compiled, kind: FindingKind, addr: Option<u32>) -> bool {
    c.findings
        .iter()
        .any(|f| f.kind == kind && (addr.is_none() || f.msr == addr.map(MsrAddr)))
}

use crate::types::MsrAddr;

#[test]
fn compile_lists_reads_masks_writes_from_facts_and_never_invents_a_mask() {
    let p = policy(&format!(
        "{HEAD}
[[rule]]
msrs = \"0x199\"
access = \"read_write\"
action = \"allow\"

[[rule]]
msrs = \"IA32_ENERGY_PERF_BIAS\"
access = \"read\"
action = \"allow\"

[[rule]]
msrs = \"MSR_MISC_FEATURE_CONTROL\"
access = \"read_write\"
action = \"allow\"

[[rule]]
msrs = \"MSR_UNCORE_RATIO_LIMIT\"
access = \"write\"
action = \"allow\"

[[rule]]
msrs = \"MSR_PKG_POWER_LIMIT\"
access = \"read_write\"
action = \"allow\"
mask = \"0x00FFFFFF00000000\"

[[rule]]
msrs = \"0x12345\"
access = \"read\"
action = \"allow\"

[[rule]]
msrs = \"IA32_PMC0\"
access = \"read_write\"
action = \"allow\"

[field.MSR_PKG_POWER_LIMIT.pl2]
policy = \"deny\"
"
    ));
    let c = compile(&p, skx());
    verify(&c).unwrap();
    // Writable bits from our tables (IA32_PERF_CTL: 0xffff on Skylake-SP).
    assert_eq!(entry(&c, 0x199), Some(0xffff));
    // Read only: listed with mask 0.
    assert_eq!(entry(&c, 0x1B0), Some(0));
    // Prefetcher control: nobody knows its writable bits on 06_55: left out, with a note.
    assert_eq!(entry(&c, 0x1A4), None);
    assert!(has(&c, FindingKind::NoWritableFact, Some(0x1A4)));
    // Write allowed, read denied: left out, with a warning.
    assert_eq!(entry(&c, 0x620), None);
    assert!(has(&c, FindingKind::WriteWithoutRead, Some(0x620)));
    // The rule's mask, minus the deny field (pl2, bits 32-46).
    assert_eq!(entry(&c, 0x610), Some(0x00FF_8000_0000_0000));
    assert!(has(&c, FindingKind::DenyField, Some(0x610)));
    // An MSR our tables do not know, named alone: listed, and warned about.
    assert_eq!(entry(&c, 0x12345), Some(0));
    assert!(has(&c, FindingKind::UnknownMsr, Some(0x12345)));
    // A writable full-mask counter is warned about.
    assert_eq!(entry(&c, 0xC1), Some(u64::MAX));
    assert!(has(&c, FindingKind::WritableCounter, Some(0xC1)));
    // Nothing else: the default denies the rest.
    assert_eq!(c.entries.len(), 5);
    // The same bytes every time.
    assert_eq!(compile(&p, skx()).text, c.text);
    assert!(c.text.contains("sha256:"), "the header names the policy");
}

#[test]
fn a_mask_beyond_the_facts_is_kept_and_warned_about() {
    let p = policy(&format!(
        "{HEAD}
[[rule]]
msrs = \"IA32_PERF_CTL\"
access = \"read_write\"
action = \"allow\"
mask = \"0x1FFFF\"

[[rule]]
msrs = \"MSR_MISC_FEATURE_CONTROL\"
access = \"read_write\"
action = \"allow\"
mask = 15
"
    ));
    let c = compile(&p, skx());
    assert_eq!(entry(&c, 0x199), Some(0x1FFFF));
    assert_eq!(entry(&c, 0x1A4), Some(0xF));
    let unknown: Vec<_> = c
        .findings
        .iter()
        .filter(|f| f.kind == FindingKind::UnknownWritableBits)
        .collect();
    assert_eq!(unknown.len(), 2, "{unknown:?}");
    assert!(unknown[0].message.contains("0x10000"), "{unknown:?}");
}

#[test]
fn an_unknown_model_or_an_empty_result_is_said() {
    let p = policy(&format!(
        "{HEAD}
[[rule]]
msrs = \"IA32_PERF_CTL\"
access = \"read_write\"
action = \"allow\"
mask = \"0xffff\"
"
    ));
    let c = compile(&p, "06_9A".parse().unwrap());
    assert!(has(&c, FindingKind::UnknownModel, None));
    assert_eq!(entry(&c, 0x199), Some(0xffff));
    let none = compile(&policy(HEAD), skx());
    assert!(none.is_empty() && none.text.is_empty());
    assert!(none
        .findings
        .iter()
        .any(|f| f.kind == FindingKind::Empty && f.severity == Severity::Error));
}

#[test]
fn a_policy_naming_an_msr_our_tables_do_not_know_for_the_model_warns() {
    // IA32_ARCH_CAPABILITIES is in our Sapphire Rapids table only.
    let p = policy(&format!(
        "{HEAD}
[[rule]]
msrs = \"IA32_ARCH_CAPABILITIES\"
access = \"read\"
action = \"allow\"

[field.IA32_ARCH_CAPABILITIES.rsba]
policy = \"superset\"
"
    ));
    let c = compile(&p, skx());
    let warned: Vec<_> = c
        .findings
        .iter()
        .filter(|f| f.kind == FindingKind::UnknownMsr && f.severity == Severity::Warning)
        .collect();
    assert_eq!(warned.len(), 2, "rule and field: {warned:#?}");
    assert!(warned.iter().any(|w| w.message.contains("rule 1 (line 3)")));
    assert!(warned
        .iter()
        .any(|w| w.message.contains("IA32_ARCH_CAPABILITIES.rsba")));
    let spr = compile(&p, "06_8F".parse().unwrap());
    assert!(
        !has(&spr, FindingKind::UnknownMsr, None),
        "{:#?}",
        spr.findings
    );
}

#[test]
fn errors_name_the_file_and_line() {
    let cases: &[(&str, &str, &str)] = &[
        ("version = 2\n", "site.toml:1:", "version 2"),
        (
            "version = 1\n\n[[rule]]\nmsrs = \"0x10\"\naccess = \"read\"\naction = \"allow\"\nbogus = 1\n",
            "site.toml:7:",
            "bogus",
        ),
        (
            "version = 1\n[[rule]]\nmsrs = \"0x10\"\naccess = \"readwrite\"\naction = \"allow\"\n",
            "site.toml:4:",
            "read_write",
        ),
        (
            "version = 1\n[[rule]]\nmsrs = \"IA32_NO_SUCH_MSR\"\naccess = \"read\"\naction = \"allow\"\n",
            "site.toml:3:",
            "unknown MSR name",
        ),
        (
            "version = 1\n[[rule]]\nmsrs = \"0x20-0x10\"\naccess = \"read\"\naction = \"allow\"\n",
            "site.toml:3:",
            "backwards",
        ),
        (
            "version = 1\n[[rule]]\nmsrs = \"0x10\"\naccess = \"read\"\naction = \"allow\"\nmask = 1\n",
            "site.toml:6:",
            "mask is for a rule that allows writing",
        ),
        (
            "version = 1\n\n[field.IA32_ENERGY_PERF_BIAS.nope]\npolicy = \"host\"\n",
            "site.toml:3:",
            "our tables know: hint",
        ),
        (
            "version = 1\n[field.IA32_ENERGY_PERF_BIAS.hint]\nbits = \"0-4\"\npolicy = \"host\"\n",
            "site.toml:3:",
            "is bits 0-3",
        ),
        (
            "version = 1\n[field.IA32_ENERGY_PERF_BIAS.hint]\npolicy = \"static\"\n",
            "site.toml:3:",
            "needs value",
        ),
        (
            "version = 1\n[field.IA32_ENERGY_PERF_BIAS.hint]\npolicy = \"static\"\nvalue = 16\n",
            "site.toml:4:",
            "does not fit",
        ),
        (
            "version = 1\n[field.IA32_ENERGY_PERF_BIAS.hint]\npolicy = \"host\"\nvalue = 1\n",
            "site.toml:4:",
            "value is for policy \"static\"",
        ),
        (
            "version = 1\n[field.MSR_MISC_FEATURE_CONTROL.prefetchers]\npolicy = \"fleet_equal\"\n\n[field.MSR_MISC_FEATURE_CONTROL.dcu_prefetcher_disable]\npolicy = \"host\"\n",
            "site.toml:5:",
            "one bit, one policy",
        ),
        (
            "version = 1\n[fleet]\ngroup_by = [\"rack\"]\n",
            "site.toml:3:",
            "label:NAME",
        ),
        ("version = 1\nx = [\n", "site.toml:2:", ""),
    ];
    for (text, at, needle) in cases {
        let e = error(text);
        assert!(e.starts_with(at) && e.contains(needle), "{text}\n=> {e}");
    }
}

#[test]
fn fields_resolve_warn_and_carry_their_policy() {
    let p = policy(
        "version = 1
[field.IA32_ENERGY_PERF_BIAS.hint]
policy = \"static\"
value = 6

[field.\"0x1A4\".prefetchers]
policy = \"fleet_equal\"

[field.MSR_MY_SITE_KNOB.all]
policy = \"host\"

[field.IA32_PERF_CTL.mine]
bits = \"32\"
policy = \"deny\"

[field.IA32_ARCH_CAPABILITIES.rsba]
policy = \"superset\"
reference = 0

[field.MSR_PKG_POWER_LIMIT.pl1]
policy = \"subset\"
models = [\"06_55\"]

[fleet]
group_by = [\"microcode\", \"label:partition\"]
equal = [\"allowlist\"]
"
        .replace("MSR_MY_SITE_KNOB", "MSR_PPIN")
        .as_str(),
    );
    let by = |n: &str| p.fields.iter().find(|f| f.name == n).unwrap();
    assert_eq!(by("IA32_ENERGY_PERF_BIAS.hint").rule, FieldRule::Static(6));
    assert_eq!(by("0x1A4.prefetchers").mask(), 0xF);
    assert_eq!(by("MSR_PPIN.all").mask(), u64::MAX);
    let mine = by("IA32_PERF_CTL.mine");
    assert!(!mine.known && mine.mask() == 1 << 32);
    assert_eq!(p.warnings.len(), 1, "{:?}", p.warnings);
    assert!(p.warnings[0].message.contains("IA32_PERF_CTL.mine"));
    assert_eq!(
        by("IA32_ARCH_CAPABILITIES.rsba").rule,
        FieldRule::Superset(Some(0))
    );
    assert!(by("MSR_PKG_POWER_LIMIT.pl1").addr_on(skx()).is_some());
    assert!(by("MSR_PKG_POWER_LIMIT.pl1")
        .addr_on("06_4F".parse().unwrap())
        .is_none());
    assert_eq!(
        p.fleet.group_by,
        [NodeAttr::Microcode, NodeAttr::Label("partition".into())]
    );
    assert_eq!(p.fleet.equal, [NodeAttr::Allowlist]);
    assert_eq!(
        p.bits_where(skx(), 0x199, |r| r == FieldRule::Deny),
        1 << 32
    );
    // Digest over the bytes.
    assert!(p.digest.starts_with("sha256:") && p.digest.len() == 7 + 64);
}

#[test]
fn the_default_policy_path_is_optional_any_other_is_not() {
    assert_eq!(configured(None), None);
    let default = PathBuf::from(DEFAULT_POLICY);
    if !default.exists() {
        assert_eq!(configured(Some(&default)), None);
    }
    let other = PathBuf::from("/nonexistent/policy.toml");
    assert_eq!(configured(Some(&other)), Some(other.clone()));
    assert!(Policy::load(&other).is_err());
}
