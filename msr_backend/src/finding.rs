//! What an operation found about a register or a CPU: one type for every problem a restore, a
//! check or a job end reports, rendered once for people (the CLI, the SPANK log, drain reasons)
//! and once for tools (JSON).

use std::fmt;

use serde::ser::SerializeStruct;
use serde::Serialize;

use crate::device::OpError;
use crate::msrs::scope::Scope;
use crate::plan::{Disagreement, Inconsistency};
use crate::topology::Where;
use crate::types::{CpuId, Hex64, MsrAddr};

/// Where in an operation a register failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    /// The CPU is no longer online.
    Offline,
    /// Reading the register's current value failed.
    Read,
    /// Writing the saved bits failed.
    Write,
    /// Reading back what was written failed, or it did not hold.
    Verify,
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Stage::Offline => "offline",
            Stage::Read => "read failed",
            Stage::Write => "write failed",
            Stage::Verify => "verify failed",
        })
    }
}

/// The problem itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Problem {
    /// The CPU is in the snapshot but not online now: its registers were skipped.
    Offline,
    /// An op failed.
    Failed { stage: Stage, error: OpError },
    /// A written register reads back other writable bits than were written.
    Mismatch { wrote: u64, read: u64, bits: u64 },
    /// The compared bits differ from the snapshot.
    Drift {
        expected: u64,
        actual: u64,
        bits: u64,
    },
    /// The register's lock bit is set: `bits` differ from the snapshot and ignore writes until
    /// reset. Not drift a job made, and nothing a restore can undo (no write is attempted).
    Locked {
        expected: u64,
        actual: u64,
        bits: u64,
        lock_bit: u8,
        /// Whether the snapshot has the lock bit set too.
        at_save: bool,
    },
    /// CPUs of one domain read a shared register differently (at save time, now, or both):
    /// it was handled CPU by CPU.
    Inconsistent(Inconsistency),
}

/// The code a tool matches on, one per kind of problem.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Code {
    Offline,
    /// An errno (`EIO`, `ENXIO`, ...) or our guard's refusal (`NOT_ALLOWLISTED`, `OUTSIDE_MASK`).
    Op(OpError),
    Mismatch,
    Drift,
    Locked,
    Inconsistent,
}

impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Code::Offline => f.write_str("OFFLINE"),
            Code::Op(e) => f.write_str(&e.code()),
            Code::Mismatch => f.write_str("MISMATCH"),
            Code::Drift => f.write_str("DRIFT"),
            Code::Locked => f.write_str("LOCKED"),
            Code::Inconsistent => f.write_str("INCONSISTENT"),
        }
    }
}

/// One register (or a whole CPU) and what is wrong with it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finding {
    /// The CPU the problem was seen on (for a shared register: the CPU written from or read).
    pub cpu: CpuId,
    /// Where the register sits: `cpu` itself, or the core, die or package that shares it.
    pub at: Where,
    /// `None`: the whole CPU.
    pub msr: Option<MsrAddr>,
    /// The register's name, when known (`IA32_PERF_CTL`).
    pub name: Option<String>,
    pub problem: Problem,
}

impl Finding {
    pub fn offline(cpu: CpuId) -> Finding {
        Finding {
            cpu,
            at: Where::Cpu(cpu),
            msr: None,
            name: None,
            problem: Problem::Offline,
        }
    }

    pub fn failed(
        cpu: CpuId,
        msr: MsrAddr,
        name: Option<String>,
        stage: Stage,
        error: OpError,
    ) -> Finding {
        Finding {
            cpu,
            at: Where::Cpu(cpu),
            msr: Some(msr),
            name,
            problem: Problem::Failed { stage, error },
        }
    }

    /// The same finding, about the register of domain `at`.
    pub fn within(self, at: Where) -> Finding {
        Finding { at, ..self }
    }

    pub fn stage(&self) -> Option<Stage> {
        match self.problem {
            Problem::Offline => Some(Stage::Offline),
            Problem::Failed { stage, .. } => Some(stage),
            Problem::Mismatch { .. } => Some(Stage::Verify),
            Problem::Drift { .. } | Problem::Locked { .. } | Problem::Inconsistent(_) => None,
        }
    }

    pub fn code(&self) -> Code {
        match self.problem {
            Problem::Offline => Code::Offline,
            Problem::Failed { error, .. } => Code::Op(error),
            Problem::Mismatch { .. } => Code::Mismatch,
            Problem::Drift { .. } => Code::Drift,
            Problem::Locked { .. } => Code::Locked,
            Problem::Inconsistent(_) => Code::Inconsistent,
        }
    }

    pub fn is_drift(&self) -> bool {
        matches!(self.problem, Problem::Drift { .. })
    }

    /// `CPU 3 MSR 0x00000199 (IA32_PERF_CTL)`, `CPU 3` for a whole CPU, `package 1 MSR
    /// 0x00000610 (MSR_PKG_POWER_LIMIT)` for a register a package shares, `package 1 (CPU 57)
    /// MSR ...` when one CPU of the package failed.
    pub fn register(&self) -> String {
        let mut s = match (self.at, self.problem) {
            (Where::Cpu(_), _) => format!("CPU {}", self.cpu),
            (at, Problem::Failed { .. } | Problem::Mismatch { .. }) => {
                format!("{at} (CPU {})", self.cpu)
            }
            (at, _) => at.to_string(),
        };
        if let Some(m) = self.msr {
            s.push_str(&format!(" MSR {m}"));
        }
        if let Some(n) = &self.name {
            s.push_str(&format!(" ({n})"));
        }
        s
    }

    /// What is wrong, without the register.
    pub fn detail(&self) -> String {
        match self.problem {
            Problem::Offline => {
                "offline: in the save file but not online now; its registers were skipped"
                    .to_string()
            }
            Problem::Failed { stage, error } => format!("{stage}: {error}"),
            Problem::Mismatch { wrote, read, bits } => format!(
                "verify failed: reads back {} after writing {}: writable bits {} differ",
                Hex64(read),
                Hex64(wrote),
                Hex64(bits)
            ),
            Problem::Drift {
                expected,
                actual,
                bits,
            } => format!(
                "expected {} found {} (bits {})",
                Hex64(expected),
                Hex64(actual),
                Hex64(bits)
            ),
            Problem::Locked {
                expected,
                actual,
                bits,
                lock_bit,
                at_save,
            } => format!(
                "locked (bit {lock_bit} set): expected {} found {} (bits {}), which ignore writes until reset; not restored{}",
                Hex64(expected),
                Hex64(actual),
                Hex64(bits),
                if at_save {
                    ""
                } else {
                    "; the snapshot has the lock bit clear"
                }
            ),
            Problem::Inconsistent(i) => {
                let of = match self.at.scope() {
                    Scope::Thread => "CPUs".to_string(),
                    scope => format!("the CPUs of one {scope}"),
                };
                let mut parts = Vec::new();
                if let Some(d) = i.at_save {
                    parts.push(format!("at save {}", disagreement(&d)));
                }
                if let Some(d) = i.now {
                    parts.push(format!("now {}", disagreement(&d)));
                }
                format!(
                    "{of} read it differently ({}): handled CPU by CPU",
                    parts.join("; ")
                )
            }
        }
    }
}

fn outcome(o: Result<u64, OpError>) -> String {
    match o {
        Ok(v) => Hex64(v).to_string(),
        Err(e) => e.code(),
    }
}

fn disagreement(d: &Disagreement) -> String {
    format!(
        "CPU {} {}, CPU {} {}",
        d.a.0,
        outcome(d.a.1),
        d.b.0,
        outcome(d.b.1)
    )
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.register(), self.detail())
    }
}

/// JSON: `cpu`, `scope`, `domain`, `msr`, `name`, `code`, and `stage`, `error` (the detail in
/// words) for failures, `expected`, `actual`, `changed_bits` for drift and locks.
impl Serialize for Finding {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut st = s.serialize_struct("Finding", 11)?;
        st.serialize_field("cpu", &self.cpu)?;
        st.serialize_field("scope", &self.at.scope())?;
        st.serialize_field("domain", &self.at.to_string())?;
        st.serialize_field("msr", &self.msr)?;
        st.serialize_field("name", &self.name)?;
        st.serialize_field("code", &self.code().to_string())?;
        match self.problem {
            Problem::Drift {
                expected,
                actual,
                bits,
            } => {
                st.serialize_field("expected", &Hex64(expected))?;
                st.serialize_field("actual", &Hex64(actual))?;
                st.serialize_field("changed_bits", &Hex64(bits))?;
            }
            Problem::Locked {
                expected,
                actual,
                bits,
                lock_bit,
                at_save,
            } => {
                st.serialize_field("expected", &Hex64(expected))?;
                st.serialize_field("actual", &Hex64(actual))?;
                st.serialize_field("changed_bits", &Hex64(bits))?;
                st.serialize_field("lock_bit", &lock_bit)?;
                st.serialize_field("locked_at_save", &at_save)?;
                st.serialize_field("error", &self.detail())?;
            }
            Problem::Inconsistent(_) => st.serialize_field("error", &self.detail())?,
            _ => {
                st.serialize_field("stage", &self.stage())?;
                st.serialize_field("error", &self.detail())?;
            }
        }
        st.end()
    }
}

impl schemars::JsonSchema for Finding {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Finding".into()
    }
    fn json_schema(g: &mut schemars::SchemaGenerator) -> schemars::Schema {
        let cpu = g.subschema_for::<CpuId>();
        let msr = g.subschema_for::<Option<MsrAddr>>();
        let hex = g.subschema_for::<Hex64>();
        let stage = g.subschema_for::<Option<Stage>>();
        let scope = g.subschema_for::<Scope>();
        schemars::json_schema!({
            "type": "object",
            "description": "A register (msr null: a whole CPU) and what is wrong with it: a failure (stage, error), drift (expected, actual, changed_bits), a lock (LOCKED: also lock_bit, locked_at_save) or CPUs of one domain that disagree (INCONSISTENT). A register shared by a core, die or package is reported once for it (scope, domain).",
            "properties": {
                "cpu": cpu,
                "scope": scope,
                "domain": {"type": "string", "description": "where the register sits: CPU 3, package 1 core 5, package 0 die 1, package 1"},
                "msr": msr,
                "name": {"type": ["string", "null"], "description": "the register's name, when known"},
                "code": {"type": "string", "description": "errno name (EIO, ENXIO, ...), NOT_ALLOWLISTED, OUTSIDE_MASK, OFFLINE, MISMATCH, DRIFT, LOCKED or INCONSISTENT"},
                "stage": stage,
                "error": {"type": "string", "description": "what went wrong, in words (failures)"},
                "expected": hex,
                "actual": hex,
                "changed_bits": hex,
                "lock_bit": {"type": "integer", "description": "the lock bit that is set (LOCKED)"},
                "locked_at_save": {"type": "boolean", "description": "whether the snapshot has the lock bit set too (LOCKED)"}
            },
            "required": ["cpu", "scope", "domain", "msr", "name", "code"]
        })
    }
}

/// Up to `shown` findings, then "and N more" (for one-line messages).
pub fn name_registers(findings: &[Finding], shown: usize) -> String {
    let mut parts: Vec<String> = findings.iter().take(shown).map(|f| f.to_string()).collect();
    if findings.len() > shown {
        parts.push(format!("and {} more", findings.len() - shown));
    }
    parts.join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::errno::Errno;

    #[test]
    fn one_rendering_for_people_and_one_for_tools() {
        let f = Finding::failed(
            CpuId(3),
            MsrAddr(0x199),
            Some("IA32_PERF_CTL".into()),
            Stage::Write,
            OpError::Errno(Errno::EIO),
        );
        assert_eq!(f.code().to_string(), "EIO");
        assert!(f
            .to_string()
            .starts_with("CPU 3 MSR 0x00000199 (IA32_PERF_CTL): write failed: EIO"));
        let j = serde_json::to_value(&f).unwrap();
        assert_eq!(j["msr"], "0x00000199");
        assert_eq!(j["stage"], "write");
        assert_eq!(j["code"], "EIO");
        let d = Finding {
            cpu: CpuId(1),
            at: Where::Cpu(CpuId(1)),
            msr: Some(MsrAddr(0x1a0)),
            name: None,
            problem: Problem::Drift {
                expected: 1,
                actual: 3,
                bits: 2,
            },
        };
        let j = serde_json::to_value(&d).unwrap();
        assert_eq!(j["changed_bits"], "0x0000000000000002");
        assert_eq!(j["code"], "DRIFT");
        assert_eq!(
            Finding::offline(CpuId(7)).to_string(),
            "CPU 7: offline: in the save file but not online now; its registers were skipped"
        );
        assert_eq!(j["scope"], "thread");
        assert_eq!(j["domain"], "CPU 1");
        let two = "CPU 1 MSR 0x000001a0: expected 0x0000000000000001 found 0x0000000000000003 (bits 0x0000000000000002)";
        assert_eq!(
            name_registers(&[d.clone(), d.clone(), d], 2),
            format!("{two}; {two}; and 1 more")
        );
    }

    #[test]
    fn a_shared_register_is_named_once_for_its_domain() {
        let pl = |problem| Finding {
            cpu: CpuId(56),
            at: Where::Package(1),
            msr: Some(MsrAddr(0x610)),
            name: Some("MSR_PKG_POWER_LIMIT".into()),
            problem,
        };
        let drift = pl(Problem::Drift {
            expected: 1,
            actual: 3,
            bits: 2,
        });
        assert!(drift
            .to_string()
            .starts_with("package 1 MSR 0x00000610 (MSR_PKG_POWER_LIMIT): expected"));
        let j = serde_json::to_value(&drift).unwrap();
        assert_eq!(
            (j["scope"].as_str(), j["domain"].as_str()),
            (Some("package"), Some("package 1"))
        );
        assert_eq!(j["cpu"], 56);
        // One CPU of the package failed: named with the package.
        let f = pl(Problem::Failed {
            stage: Stage::Verify,
            error: OpError::Errno(Errno::ENXIO),
        });
        assert!(
            f.to_string()
                .starts_with("package 1 (CPU 56) MSR 0x00000610"),
            "{f}"
        );
        let locked = pl(Problem::Locked {
            expected: 0x10,
            actual: 1 << 63 | 0x20,
            bits: 0x30,
            lock_bit: 63,
            at_save: false,
        });
        assert_eq!(locked.code().to_string(), "LOCKED");
        assert!(
            locked.to_string().contains("locked (bit 63 set)"),
            "{locked}"
        );
        assert!(
            locked
                .to_string()
                .ends_with("the snapshot has the lock bit clear"),
            "{locked}"
        );
        let j = serde_json::to_value(&locked).unwrap();
        assert_eq!(
            (j["lock_bit"].as_u64(), j["locked_at_save"].as_bool()),
            (Some(63), Some(false))
        );
        let odd = pl(Problem::Inconsistent(Inconsistency {
            at_save: None,
            now: Some(Disagreement {
                a: (CpuId(56), Ok(5)),
                b: (CpuId(57), Err(OpError::Errno(Errno::EIO))),
            }),
        }));
        assert_eq!(
            odd.to_string(),
            "package 1 MSR 0x00000610 (MSR_PKG_POWER_LIMIT): the CPUs of one package read it differently (now CPU 56 0x0000000000000005, CPU 57 EIO): handled CPU by CPU"
        );
        // The schema names every field the JSON has, whatever the problem.
        let schema = serde_json::to_value(schemars::schema_for!(Finding)).unwrap();
        for f in [&locked, &odd] {
            let j = serde_json::to_value(f).unwrap();
            for key in j.as_object().expect("an object").keys() {
                assert!(schema["properties"].get(key).is_some(), "{key}");
            }
        }
    }
}
