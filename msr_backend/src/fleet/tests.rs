use std::sync::Arc;

use super::*;
use crate::allowlist::AllowlistEntry;
use crate::types::{CpuId, WriteMask};

const POLICY: &str = r#"version = 1
[field.MSR_MISC_FEATURE_CONTROL.prefetchers]
policy = "fleet_equal"
[field.IA32_MISC_ENABLE.turbo_disable]
policy = "fleet_equal"
[field.MSR_PKG_POWER_LIMIT.pl1]
policy = "fleet_equal"
[field.MSR_PPIN.ppin]
policy = "host"
[field.IA32_ARCH_CAPABILITIES.rsba]
policy = "superset"
[field.IA32_ARCH_CAPABILITIES.mds_no]
policy = "subset"
[field.IA32_ENERGY_PERF_BIAS.hint]
policy = "static"
value = 6
[field.MSR_UNCORE_RATIO_LIMIT.max_ratio]
policy = "deny"
[fleet]
equal = ["microcode"]
"#;

fn policy() -> Policy {
    crate::policy::parse(POLICY.as_bytes(), "fleet.toml").unwrap()
}

const PREFETCH: u32 = 0x1A4;
const MISC: u32 = 0x1A0;
const PKG: u32 = 0x610;
const PPIN: u32 = 0x4F;
const ARCH: u32 = 0x10A;
const EPB: u32 = 0x1B0;
const UNCORE: u32 = 0x620;

/// A healthy register value.
fn good(addr: u32) -> u64 {
    match addr {
        PREFETCH => 0,
        MISC => 0x850089,
        PKG => 0x00DD_8320_0015_8460,
        ARCH => 0x2B, // RDCL_NO, IBRS_ALL, SKIP_L1DFL, MDS_NO; no RSBA
        EPB => 6,
        UNCORE => 0x0C18,
        _ => 0,
    }
}

fn skx() -> CpuIdentity {
    CpuIdentity {
        vendor: "GenuineIntel".into(),
        family: 6,
        model: 0x55,
    }
}

fn list(uncore_mask: u64) -> Allowlist {
    let e = |addr: u32, mask: u64| AllowlistEntry {
        addr: MsrAddr(addr),
        mask: WriteMask(mask),
        name: None,
    };
    Allowlist::from_entries(
        vec![
            e(PPIN, 0),
            e(ARCH, 0),
            e(MISC, 0),
            e(PREFETCH, 0xF),
            e(EPB, 0xF),
            e(PKG, 0x00FF_FFFF_00FF_FFFF),
            e(UNCORE, uncore_mask),
        ],
        "test",
    )
    .unwrap()
}

/// A node's fingerprint from a snapshot of `cpus` CPUs with `value(cpu, addr)`, through JSON
/// (as `fleet compare` reads it).
fn node(
    p: &Policy,
    name: &str,
    cpus: u32,
    microcode: &str,
    uncore_mask: u64,
    value: impl Fn(u32, u32) -> u64,
) -> Fingerprint {
    let al = Arc::new(list(uncore_mask));
    let mut outcomes = Vec::new();
    for cpu in 0..cpus {
        for e in al.entries() {
            outcomes.push(Ok(value(cpu, e.addr.0)));
        }
    }
    let snap = Snapshot::from_outcomes(Arc::clone(&al), (0..cpus).map(CpuId).collect(), outcomes);
    let fp = fingerprint(
        p,
        &skx(),
        &snap,
        &al,
        NodeFacts {
            node: name.to_string(),
            microcode: Some(microcode.to_string()),
            kernel: Some("6.1.0".into()),
            taken: "2025-01-01T00:00:00Z".into(),
            source: "node".into(),
            labels: BTreeMap::new(),
        },
    );
    Fingerprint::from_json(&fp.to_json_line()).expect("round trip")
}

fn healthy(p: &Policy, name: &str) -> Fingerprint {
    let ppin = name.bytes().map(u64::from).sum::<u64>();
    node(p, name, 8, "0x2007006", 0, move |_, a| {
        if a == PPIN {
            ppin
        } else {
            good(a)
        }
    })
}

fn found(r: &FleetReport) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = r
        .violations
        .iter()
        .map(|v| (v.node.clone(), v.field.clone()))
        .collect();
    v.sort();
    v
}

fn pair(n: &str, f: &str) -> (String, String) {
    (n.to_string(), f.to_string())
}

#[test]
fn planted_outliers_are_found_and_nothing_else() {
    let p = policy();
    let mut c = Comparison::new(&p);
    for i in 0..20 {
        let name = format!("n{i:02}");
        let fp = match i {
            // BIOS left the prefetchers off.
            3 => node(&p, &name, 8, "0x2007006", 0, |_, a| {
                if a == PREFETCH {
                    0xF
                } else {
                    good(a)
                }
            }),
            // Turbo disabled, on one CPU only.
            7 => node(&p, &name, 8, "0x2007006", 0, |cpu, a| {
                if a == MISC && cpu == 5 {
                    good(a) | 1 << 38
                } else {
                    good(a)
                }
            }),
            // A lower package power limit.
            11 => node(&p, &name, 8, "0x2007006", 0, |_, a| {
                if a == PKG {
                    (good(a) & !0x7FFF) | 0x400
                } else {
                    good(a)
                }
            }),
            // Older microcode.
            13 => node(&p, &name, 8, "0x2006e05", 0, |_, a| good(a)),
            _ => healthy(&p, &name),
        };
        c.add(fp, &name);
    }
    let r = c.finish();
    assert_eq!(r.nodes, 20);
    assert_eq!(
        found(&r),
        [
            pair("n03", "MSR_MISC_FEATURE_CONTROL.prefetchers"),
            pair("n07", "IA32_MISC_ENABLE.turbo_disable"),
            pair("n11", "MSR_PKG_POWER_LIMIT.pl1"),
            pair("n13", "microcode"),
        ],
        "{:#?}",
        r.violations
    );
    let v = |n: &str| r.violations.iter().find(|v| v.node == n).unwrap();
    let pf = v("n03");
    assert_eq!(
        (
            pf.value.as_str(),
            pf.expected.as_deref(),
            pf.agree,
            pf.group_nodes
        ),
        ("0xf", Some("0x0"), 19, 20)
    );
    assert_eq!(pf.msr, Some(MsrAddr(PREFETCH)));
    assert_eq!(pf.group, "06_55");
    assert_eq!(
        v("n07").value,
        "0x0 on CPUs 0-4,6-7, 0x1 on CPUs 5",
        "the CPUs that differ are named"
    );
    assert_eq!(v("n11").value, "0x400");
    assert_eq!(v("n11").expected.as_deref(), Some("0x460"));
    assert_eq!(v("n13").expected.as_deref(), Some("0x2007006"));
    assert!(r.problems.is_empty() && r.notes.is_empty(), "{r:#?}");
    assert_eq!(r.violating_nodes, 4);
    assert_eq!(r.per_node.len(), 20);
    assert_eq!(r.per_node.iter().map(|n| n.violations).sum::<usize>(), 4);
}

#[test]
fn host_fields_are_never_compared() {
    let p = policy();
    // Every node has its own PPIN.
    let fps: Vec<Fingerprint> = (0..5).map(|i| healthy(&p, &format!("h{i}"))).collect();
    assert!(fps[0].fields.iter().all(|f| f.field != "MSR_PPIN.ppin"));
    let mut c = Comparison::new(&p);
    for fp in fps {
        c.add(fp, "t");
    }
    let r = c.finish();
    assert!(r.clean(), "{r:#?}");
}

#[test]
fn subset_and_superset_on_vulnerability_bits() {
    let p = policy();
    let mut c = Comparison::new(&p);
    for i in 0..6 {
        c.add(healthy(&p, &format!("v{i}")), "t");
    }
    // RSBA set: a weakness its group lacks (superset broken).
    c.add(
        node(&p, "rsba", 8, "0x2007006", 0, |_, a| {
            if a == ARCH {
                good(a) | 0x4
            } else {
                good(a)
            }
        }),
        "t",
    );
    // MDS_NO clear: affected where the group is not (subset broken).
    c.add(
        node(&p, "mds", 8, "0x2007006", 0, |_, a| {
            if a == ARCH {
                good(a) & !0x20
            } else {
                good(a)
            }
        }),
        "t",
    );
    let r = c.finish();
    assert_eq!(
        found(&r),
        [
            pair("mds", "IA32_ARCH_CAPABILITIES.mds_no"),
            pair("rsba", "IA32_ARCH_CAPABILITIES.rsba"),
        ],
        "{:#?}",
        r.violations
    );
    assert!(r.violations[0].message.contains("lacks bits 0x1"), "{r:#?}");
    assert!(r.violations[1].message.contains("has bits 0x1"), "{r:#?}");

    // With an explicit reference, and the opposite directions are fine.
    let p = crate::policy::parse(
        b"version = 1
[field.IA32_ARCH_CAPABILITIES.rsba]
policy = \"superset\"
reference = 1
[field.IA32_ARCH_CAPABILITIES.mds_no]
policy = \"subset\"
reference = 0
",
        "ref.toml",
    )
    .unwrap();
    let mut c = Comparison::new(&p);
    c.add(healthy(&p, "clean"), "t");
    c.add(
        node(&p, "both", 8, "0x2007006", 0, |_, a| {
            if a == ARCH {
                (good(a) | 0x4) & !0x20
            } else {
                good(a)
            }
        }),
        "t",
    );
    let r = c.finish();
    assert!(r.clean(), "{r:#?}");
}

#[test]
fn static_and_deny_are_decided_by_the_node_alone() {
    let p = policy();
    let mut c = Comparison::new(&p);
    c.add(
        node(&p, "epb", 8, "0x2007006", 0, |cpu, a| {
            if a == EPB && cpu >= 6 {
                0
            } else {
                good(a)
            }
        }),
        "t",
    );
    c.add(node(&p, "deny", 8, "0x2007006", 0x7F, |_, a| good(a)), "t");
    let r = c.finish();
    assert_eq!(
        found(&r),
        [
            pair("deny", "MSR_UNCORE_RATIO_LIMIT.max_ratio"),
            pair("epb", "IA32_ENERGY_PERF_BIAS.hint"),
        ]
    );
    let epb = &r.violations[1];
    assert_eq!(epb.value, "0x0 on CPUs 6-7");
    assert_eq!(epb.expected.as_deref(), Some("0x6"));
    assert_eq!(r.violations[0].msr, Some(MsrAddr(UNCORE)));
}

#[test]
fn a_tie_has_no_majority_and_groups_do_not_mix() {
    let p = policy();
    let mut c = Comparison::new(&p);
    c.add(healthy(&p, "a"), "t");
    c.add(
        node(&p, "b", 8, "0x2007006", 0, |_, a| {
            if a == PREFETCH {
                1
            } else {
                good(a)
            }
        }),
        "t",
    );
    // Another model, with the prefetchers off everywhere: its own group, its own majority.
    let mut other = node(&p, "icx1", 8, "0x2007006", 0, |_, a| {
        if a == PREFETCH {
            0xF
        } else {
            good(a)
        }
    });
    other.cpu_model = "06_6A".into();
    c.add(other.clone(), "t");
    other.node = "icx2".into();
    c.add(other, "t");
    // The same node twice.
    c.add(healthy(&p, "a"), "again");
    let r = c.finish();
    assert_eq!(
        found(&r),
        [
            pair("a", "MSR_MISC_FEATURE_CONTROL.prefetchers"),
            pair("b", "MSR_MISC_FEATURE_CONTROL.prefetchers"),
        ]
    );
    assert!(r.violations.iter().all(|v| v.expected.is_none()));
    assert_eq!(r.notes.len(), 1, "{:?}", r.notes);
    assert!(r.notes[0].contains("no majority"));
    assert_eq!(r.groups.len(), 2);
    assert_eq!(r.problems.len(), 1);
    assert!(r.problems[0].message.contains("given already"));
    let prom = prometheus(&r, 1.0);
    assert!(prom.contains("msr_restore_fleet_node_violations{node=\"a\",group=\"06_55\"} 1\n"));
    assert!(prom.contains("msr_restore_fleet_node_violations{node=\"icx1\",group=\"06_6A\"} 0\n"));
    assert!(prom.contains("msr_restore_fleet_group_nodes{group=\"06_6A\"} 2\n"));
}

#[test]
fn fingerprints_are_small_and_read_back() {
    let p = policy();
    let fp = node(&p, "big", 256, "0x2007006", 0, |_, a| good(a));
    let line = fp.to_json_line();
    assert!(line.len() < 4096, "{} bytes", line.len());
    // The envelope of `--format json` and unknown keys are accepted; a wrong version is not.
    let mut v: serde_json::Value = serde_json::from_str(&line).unwrap();
    v["schema"] = 1.into();
    v["command"] = "fleet fingerprint".into();
    v["from_the_future"] = true.into();
    assert_eq!(Fingerprint::from_json(&v.to_string()).unwrap(), fp);
    v["fingerprint"] = 2.into();
    assert!(Fingerprint::from_json(&v.to_string())
        .unwrap_err()
        .contains("version 2"));
    // 256 CPUs with one value are one entry.
    let f = fp
        .fields
        .iter()
        .find(|f| f.field == "IA32_ARCH_CAPABILITIES.rsba")
        .unwrap();
    assert_eq!(f.values.len(), 1);
    assert_eq!(f.values[0].cpus, "0-255");
}
