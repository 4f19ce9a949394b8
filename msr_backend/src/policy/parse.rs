//! Reading the policy file: TOML through the `toml` crate (whose spans give every error a line),
//! then the checks TOML cannot express, each naming its line.

use std::collections::BTreeMap;
use std::ops::Range;
use std::str::FromStr;

use serde::Deserialize;
use sha2::{Digest, Sha256};
use toml::Spanned;

use super::{
    Access, Action, FieldPolicy, FieldRule, FleetSettings, MsrRange, MsrRef, NodeAttr, Policy,
    PolicyError, PolicyWarning, Rule, POLICY_VERSION,
};
use crate::msrs::fields::{self, parse_bits};
use crate::msrs::models::{self, is_identifier, ModelId};
use crate::types::{Hex64, MsrAddr};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileToml {
    version: Spanned<i64>,
    #[serde(default)]
    allowlist: Option<AllowlistToml>,
    #[serde(default)]
    rule: Vec<Spanned<RuleToml>>,
    #[serde(default)]
    field: BTreeMap<Spanned<String>, BTreeMap<Spanned<String>, Spanned<FieldToml>>>,
    #[serde(default)]
    fleet: Option<FleetToml>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AllowlistToml {
    default: Spanned<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleToml {
    msrs: Spanned<String>,
    access: Spanned<String>,
    action: Spanned<String>,
    #[serde(default)]
    models: Option<Spanned<Vec<String>>>,
    #[serde(default)]
    mask: Option<Spanned<Number>>,
    #[serde(default)]
    why: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FieldToml {
    policy: Spanned<String>,
    #[serde(default)]
    bits: Option<Spanned<String>>,
    #[serde(default)]
    value: Option<Spanned<Number>>,
    #[serde(default)]
    reference: Option<Spanned<Number>>,
    #[serde(default)]
    models: Option<Spanned<Vec<String>>>,
    #[serde(default)]
    why: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FleetToml {
    #[serde(default)]
    group_by: Vec<Spanned<String>>,
    #[serde(default)]
    equal: Vec<Spanned<String>>,
}

/// A number as TOML gives it (integers stop at 2^63) or as a string (`"0xFFFFFFFFFFFFFFFF"`).
#[derive(Deserialize)]
#[serde(untagged)]
enum Number {
    Int(i64),
    Text(String),
}

impl Number {
    fn value(&self) -> Result<u64, String> {
        match self {
            Number::Int(i) => u64::try_from(*i)
                .map_err(|_| format!("{i} is negative: write masks and values are unsigned")),
            Number::Text(t) => Hex64::from_str(t).map(|h| h.0),
        }
    }
}

/// Where in the text a span starts, as a 1-based line.
struct Lines<'t> {
    text: &'t str,
    file: String,
}

impl Lines<'_> {
    fn line(&self, span: Range<usize>) -> usize {
        let end = span.start.min(self.text.len());
        1 + self.text.as_bytes()[..end]
            .iter()
            .filter(|&&b| b == b'\n')
            .count()
    }

    fn error(&self, span: Range<usize>, message: impl Into<String>) -> PolicyError {
        PolicyError::Invalid {
            file: self.file.clone(),
            line: self.line(span),
            message: message.into(),
        }
    }
}

fn parse_msr_ref(text: &str) -> Result<MsrRef, String> {
    let t = text.trim();
    if t.starts_with(|c: char| c.is_ascii_digit()) {
        return MsrAddr::from_str(t).map(|a| MsrRef::Addr(a.0));
    }
    if !is_identifier(t) {
        return Err(format!(
            "{t:?} is neither an MSR number (0x1B0) nor an MSR name (IA32_ENERGY_PERF_BIAS)"
        ));
    }
    let r = MsrRef::Name(t.to_string());
    if !r.known_anywhere() {
        return Err(format!(
            "unknown MSR name {t:?}: our tables do not know it for any CPU; use its number (0x...)"
        ));
    }
    Ok(r)
}

fn parse_range(text: &str) -> Result<MsrRange, String> {
    let (first, last) = match text.split_once('-') {
        Some((a, b)) => (parse_msr_ref(a)?, parse_msr_ref(b)?),
        None => {
            let one = parse_msr_ref(text)?;
            (one.clone(), one)
        }
    };
    if let (MsrRef::Addr(a), MsrRef::Addr(b)) = (&first, &last) {
        if a > b {
            return Err(format!(
                "range {text:?} runs backwards ({a:#x} is above {b:#x})"
            ));
        }
    }
    Ok(MsrRange { first, last })
}

fn parse_models(
    lines: &Lines,
    models: &Option<Spanned<Vec<String>>>,
    warnings: &mut Vec<PolicyWarning>,
) -> Result<Option<Vec<ModelId>>, PolicyError> {
    let Some(m) = models else {
        return Ok(None);
    };
    if m.get_ref().is_empty() {
        return Err(lines.error(
            m.span(),
            "models = [] matches no CPU: leave the key out to mean every model",
        ));
    }
    let mut out = Vec::new();
    for text in m.get_ref() {
        let id = ModelId::from_str(text).map_err(|e| lines.error(m.span(), e))?;
        if models::model(id).is_none() {
            warnings.push(PolicyWarning {
                line: lines.line(m.span()),
                message: format!(
                    "CPU model {id} is not in our tables (known: {}): only MSRs named one by one apply there",
                    models::known_model_list()
                ),
            });
        }
        out.push(id);
    }
    Ok(Some(out))
}

fn parse_attr(text: &str) -> Result<NodeAttr, String> {
    match text {
        "microcode" => Ok(NodeAttr::Microcode),
        "kernel" => Ok(NodeAttr::Kernel),
        "allowlist" => Ok(NodeAttr::Allowlist),
        t => match t.strip_prefix("label:") {
            Some(l) if !l.is_empty() => Ok(NodeAttr::Label(l.to_string())),
            _ => Err(format!(
                "{t:?} is not microcode, kernel, allowlist or label:NAME"
            )),
        },
    }
}

/// Parse and check policy text; `source` names it in messages.
pub fn parse(bytes: &[u8], source: &str) -> Result<Policy, PolicyError> {
    let text = std::str::from_utf8(bytes).map_err(|e| {
        let line = 1 + bytes[..e.valid_up_to()]
            .iter()
            .filter(|&&b| b == b'\n')
            .count();
        PolicyError::Invalid {
            file: source.to_string(),
            line,
            message: "not UTF-8 text (TOML files are UTF-8)".to_string(),
        }
    })?;
    let lines = Lines {
        text,
        file: source.to_string(),
    };
    let file: FileToml = toml::from_str(text).map_err(|e| {
        let line = e.span().map_or(1, |s| lines.line(s));
        PolicyError::Invalid {
            file: source.to_string(),
            line,
            message: e.message().trim().to_string(),
        }
    })?;
    if *file.version.get_ref() != i64::from(POLICY_VERSION) {
        return Err(lines.error(
            file.version.span(),
            format!(
                "version {} is not one this msrsave reads (version = {POLICY_VERSION})",
                file.version.get_ref()
            ),
        ));
    }
    let mut warnings = Vec::new();

    let default = match &file.allowlist {
        None => Action::Deny,
        Some(a) => match a.default.get_ref().as_str() {
            "allow" => Action::Allow,
            "deny" => Action::Deny,
            other => {
                return Err(lines.error(
                    a.default.span(),
                    format!("default = {other:?}: expected \"allow\" or \"deny\""),
                ))
            }
        },
    };

    let mut rules = Vec::new();
    for (i, r) in file.rule.iter().enumerate() {
        let line = lines.line(r.span());
        let t = r.get_ref();
        let msrs = parse_range(t.msrs.get_ref()).map_err(|e| lines.error(t.msrs.span(), e))?;
        let access = match t.access.get_ref().as_str() {
            "read" => Access::Read,
            "write" => Access::Write,
            "read_write" => Access::ReadWrite,
            other => {
                return Err(lines.error(
                    t.access.span(),
                    format!("access = {other:?}: expected \"read\", \"write\" or \"read_write\""),
                ))
            }
        };
        let action = match t.action.get_ref().as_str() {
            "allow" => Action::Allow,
            "deny" => Action::Deny,
            other => {
                return Err(lines.error(
                    t.action.span(),
                    format!("action = {other:?}: expected \"allow\" or \"deny\""),
                ))
            }
        };
        let mask = match &t.mask {
            None => None,
            Some(m) => {
                if action != Action::Allow || access == Access::Read {
                    return Err(lines.error(
                        m.span(),
                        "mask is for a rule that allows writing (action = \"allow\", access \"write\" or \"read_write\")",
                    ));
                }
                Some(m.get_ref().value().map_err(|e| lines.error(m.span(), e))?)
            }
        };
        let models = parse_models(&lines, &t.models, &mut warnings)?;
        rules.push(Rule {
            number: i + 1,
            line,
            msrs,
            access,
            action,
            models,
            mask,
            why: t.why.clone(),
        });
    }

    let mut fields_out: Vec<FieldPolicy> = Vec::new();
    for (msr_key, by_name) in &file.field {
        let msr = parse_msr_ref(msr_key.get_ref()).map_err(|e| lines.error(msr_key.span(), e))?;
        for (name_key, spec) in by_name {
            let line = lines.line(name_key.span());
            let name = name_key.get_ref();
            let full = format!("{}.{name}", msr_key.get_ref());
            let t = spec.get_ref();
            // The bits: from our table, or from the file (checked against the table).
            let known = known_field(&msr, name);
            let (lo, hi, is_known) = match (&t.bits, known) {
                (None, Some((lo, hi))) => (lo, hi, true),
                (Some(b), Some((lo, hi))) => {
                    let given = parse_bits(b.get_ref()).map_err(|e| lines.error(b.span(), e))?;
                    if given != (lo, hi) {
                        return Err(lines.error(
                            b.span(),
                            format!(
                                "{full} is bits {} in our tables, not {}: leave bits out, or name the field differently",
                                fields::format_bits(lo, hi),
                                b.get_ref()
                            ),
                        ));
                    }
                    (lo, hi, true)
                }
                (Some(b), None) => {
                    let (lo, hi) = parse_bits(b.get_ref()).map_err(|e| lines.error(b.span(), e))?;
                    warnings.push(PolicyWarning {
                        line,
                        message: format!(
                            "field {full} is not in our tables: bits {} as given here",
                            b.get_ref()
                        ),
                    });
                    (lo, hi, false)
                }
                (None, None) => {
                    return Err(lines.error(
                        name_key.span(),
                        format!(
                            "unknown field {full}{}; give its bits (bits = \"0-3\") to define it",
                            known_names(&msr)
                        ),
                    ))
                }
            };
            let width_max = fields::bits_mask(0, hi - lo);
            let number = |n: &Option<Spanned<Number>>,
                          what: &str|
             -> Result<Option<u64>, PolicyError> {
                let Some(n) = n else { return Ok(None) };
                let v = n.get_ref().value().map_err(|e| lines.error(n.span(), e))?;
                if v & !width_max != 0 {
                    return Err(lines.error(
                        n.span(),
                        format!(
                            "{what} {v:#x} does not fit in {full} (bits {}: at most {width_max:#x}); give the field's own value, not the register's",
                            fields::format_bits(lo, hi)
                        ),
                    ));
                }
                Ok(Some(v))
            };
            let value = number(&t.value, "value")?;
            let reference = number(&t.reference, "reference")?;
            let p = t.policy.get_ref().as_str();
            let rule = match p {
                "restore" => FieldRule::Restore,
                "fleet_equal" => FieldRule::FleetEqual,
                "host" => FieldRule::Host,
                "deny" => FieldRule::Deny,
                "static" => FieldRule::Static(value.ok_or_else(|| {
                    lines.error(
                        t.policy.span(),
                        format!("{full}: policy \"static\" needs value = V"),
                    )
                })?),
                "subset" => FieldRule::Subset(reference),
                "superset" => FieldRule::Superset(reference),
                other => {
                    return Err(lines.error(
                        t.policy.span(),
                        format!(
                            "policy = {other:?}: expected restore, fleet_equal, host, static, deny, subset or superset"
                        ),
                    ))
                }
            };
            if value.is_some() && p != "static" {
                let span = t.value.as_ref().map(|v| v.span()).unwrap_or(0..0);
                return Err(lines.error(span, "value is for policy \"static\""));
            }
            if reference.is_some() && !matches!(p, "subset" | "superset") {
                let span = t.reference.as_ref().map(|v| v.span()).unwrap_or(0..0);
                return Err(lines.error(span, "reference is for policy \"subset\" or \"superset\""));
            }
            let models = parse_models(&lines, &t.models, &mut warnings)?;
            fields_out.push(FieldPolicy {
                name: full,
                msr: msr.clone(),
                field: name.clone(),
                lo,
                hi,
                rule,
                models,
                line,
                known: is_known,
                why: t.why.clone(),
            });
        }
    }
    fields_out.sort_by_key(|f| f.line);
    check_overlaps(&lines, &fields_out)?;

    let mut fleet = FleetSettings::default();
    if let Some(f) = &file.fleet {
        for (list, out) in [
            (&f.group_by, &mut fleet.group_by),
            (&f.equal, &mut fleet.equal),
        ] {
            for a in list {
                let attr = parse_attr(a.get_ref()).map_err(|e| lines.error(a.span(), e))?;
                if out.contains(&attr) {
                    return Err(lines.error(a.span(), format!("{attr} is named twice")));
                }
                out.push(attr);
            }
        }
    }

    let digest = format!("sha256:{}", crate::types::hex_bytes(&Sha256::digest(bytes)));
    Ok(Policy {
        source: source.to_string(),
        digest,
        default,
        rules,
        fields: fields_out,
        fleet,
        warnings,
    })
}

/// The bits of `msr.name` in our field table, on whichever model the name resolves.
fn known_field(msr: &MsrRef, name: &str) -> Option<(u8, u8)> {
    let addrs: Vec<u32> = match msr {
        MsrRef::Addr(a) => vec![*a],
        MsrRef::Name(_) => {
            let mut v: Vec<u32> = models::models()
                .iter()
                .filter_map(|m| msr.resolve(Some(m)))
                .chain(msr.resolve(None))
                .collect();
            v.sort_unstable();
            v.dedup();
            v
        }
    };
    addrs
        .into_iter()
        .find_map(|a| fields::field(MsrAddr(a), name).map(|f| (f.lo, f.hi)))
}

fn known_names(msr: &MsrRef) -> String {
    let addr = msr
        .resolve(None)
        .or_else(|| models::models().iter().find_map(|m| msr.resolve(Some(m))));
    let Some(addr) = addr else {
        return String::new();
    };
    let names: Vec<&str> = fields::fields_of(MsrAddr(addr))
        .iter()
        .map(|f| f.name)
        .chain([fields::ALL])
        .collect();
    format!(" (our tables know: {})", names.join(", "))
}

/// Two fields of one MSR that share bits must agree on what the bits are for.
fn check_overlaps(lines: &Lines, fields: &[FieldPolicy]) -> Result<(), PolicyError> {
    for (i, a) in fields.iter().enumerate() {
        for b in &fields[i + 1..] {
            let same_msr = match (&a.msr, &b.msr) {
                (MsrRef::Addr(x), MsrRef::Addr(y)) => x == y,
                (x, y) => {
                    x == y || (x.resolve(None).is_some() && x.resolve(None) == y.resolve(None))
                }
            };
            let models_meet = match (&a.models, &b.models) {
                (Some(x), Some(y)) => x.iter().any(|m| y.contains(m)),
                _ => true,
            };
            if same_msr && models_meet && a.mask() & b.mask() != 0 && a.rule != b.rule {
                return Err(PolicyError::Invalid {
                    file: lines.file.clone(),
                    line: b.line,
                    message: format!(
                        "{} ({}) shares bits {:#x} with {} (line {}, {}): one bit, one policy",
                        b.name,
                        b.rule,
                        a.mask() & b.mask(),
                        a.name,
                        a.line,
                        a.rule
                    ),
                });
            }
        }
    }
    Ok(())
}
