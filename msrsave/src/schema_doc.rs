//! The JSON section of docs/interfaces.md, generated from the report types themselves (their
//! JSON Schema, doc comments included), so the contract tools code against cannot drift from
//! what `msrsave --format json` prints. `msrsave-docs --interfaces docs/interfaces.md` rewrites
//! the section; a test fails when the committed file differs from what the types say.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use schemars::{JsonSchema, SchemaGenerator};
use serde_json::{Map, Value};

use crate::commands::{allowlist, config, demo, files, fleet, info, job, node_ops};
use crate::output::{Envelope, ErrorReport, Report, SCHEMA_VERSION};

/// The marker lines around the generated section.
pub const BEGIN: &str = "<!-- BEGIN GENERATED: msrsave-docs --interfaces (do not edit by hand) -->";
pub const END: &str = "<!-- END GENERATED -->";

struct Section {
    command: &'static str,
    schema: Value,
}

fn section<R: Report + JsonSchema>(g: &mut SchemaGenerator) -> Section {
    Section {
        command: R::COMMAND,
        schema: g.subschema_for::<Envelope<R>>().to_value(),
    }
}

/// `{"$ref": "#/$defs/X"}` -> `X`.
fn ref_name(v: &Value) -> Option<&str> {
    v.get("$ref")?.as_str()?.rsplit('/').next()
}

fn anchor(name: &str) -> String {
    name.to_lowercase()
}

/// A type in words, with links to the types section.
fn type_of(v: &Value) -> String {
    if let Some(name) = ref_name(v) {
        return format!("[{name}](#{})", anchor(name));
    }
    for key in ["anyOf", "oneOf"] {
        if let Some(alts) = v.get(key).and_then(Value::as_array) {
            let parts: Vec<String> = alts.iter().map(type_of).collect();
            return parts.join(" or ");
        }
    }
    if let Some(e) = v.get("enum").and_then(Value::as_array) {
        let vals: Vec<String> = e.iter().map(|x| format!("`{x}`")).collect();
        return vals.join(", ");
    }
    if let Some(c) = v.get("const") {
        return format!("`{c}`");
    }
    let ty: Vec<String> = match v.get("type") {
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(|x| x.as_str().map(String::from))
            .collect(),
        _ => vec!["any".to_string()],
    };
    ty.iter()
        .map(|t| match t.as_str() {
            "array" => format!(
                "array of {}",
                v.get("items").map_or("any".to_string(), type_of)
            ),
            "object" => match v.get("additionalProperties") {
                Some(a) if a.is_object() => format!("map to {}", type_of(a)),
                _ => "object".to_string(),
            },
            other => other.to_string(),
        })
        .collect::<Vec<_>>()
        .join(" or ")
}

fn description(v: &Value) -> String {
    v.get("description")
        .and_then(Value::as_str)
        .unwrap_or("")
        .replace('\n', " ")
        .replace('|', "\\|")
}

/// The properties of an object schema, with `allOf`/flattened parts merged in.
fn properties(v: &Value, defs: &Map<String, Value>) -> Vec<(String, Value, bool)> {
    let mut out = Vec::new();
    let resolved = ref_name(v).and_then(|n| defs.get(n)).unwrap_or(v);
    let required: Vec<&str> = resolved
        .get("required")
        .and_then(Value::as_array)
        .map(|r| r.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    if let Some(p) = resolved.get("properties").and_then(Value::as_object) {
        for (k, s) in p {
            out.push((k.clone(), s.clone(), required.contains(&k.as_str())));
        }
    }
    for part in resolved
        .get("allOf")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        out.extend(properties(part, defs));
    }
    out
}

fn table(out: &mut String, props: &[(String, Value, bool)]) {
    let _ = writeln!(out, "| field | type | meaning |\n|---|---|---|");
    for (k, s, required) in props {
        let opt = if *required { "" } else { " (may be absent)" };
        let _ = writeln!(out, "| `{k}` | {}{opt} | {} |", type_of(s), description(s));
    }
    out.push('\n');
}

/// The generated section, markers included.
pub fn render() -> String {
    let mut g = schemars::generate::SchemaSettings::draft2020_12().into_generator();
    let sections = vec![
        section::<node_ops::SaveReport>(&mut g),
        section::<node_ops::RestoreOutput>(&mut g),
        section::<node_ops::CheckOutput>(&mut g),
        section::<files::DiffReport>(&mut g),
        section::<files::ShowReport>(&mut g),
        section::<allowlist::AllowlistShow>(&mut g),
        section::<allowlist::AllowlistSelect>(&mut g),
        section::<allowlist::AllowlistLoad>(&mut g),
        section::<allowlist::AllowlistLint>(&mut g),
        section::<allowlist::AllowlistCompile>(&mut g),
        section::<fleet::FleetFingerprint>(&mut g),
        section::<fleet::FleetCompare>(&mut g),
        section::<info::InfoReport>(&mut g),
        section::<demo::EmulateReport>(&mut g),
        section::<demo::DemoReport>(&mut g),
        section::<job::JobBegin>(&mut g),
        section::<job::JobEnd>(&mut g),
        section::<job::JobStatus>(&mut g),
        section::<job::JobReconcile>(&mut g),
        section::<config::ConfigShow>(&mut g),
        section::<config::ConfigGet>(&mut g),
    ];
    let error = g.subschema_for::<Envelope<ErrorReport>>().to_value();
    let defs: BTreeMap<String, Value> = g.take_definitions(true).into_iter().collect();
    let defs_map: Map<String, Value> = defs.clone().into_iter().collect();
    let mut out = String::new();
    let _ = writeln!(out, "{BEGIN}\n");
    let _ = writeln!(
        out,
        "Every object has `schema` ({SCHEMA_VERSION} now: it changes when a field changes meaning or goes away; fields may be added), \
         `command` and `ok` (true when the exit status is 0). MSR addresses are `0x` and 8 hex digits, values and masks `0x` and 16 \
         hex digits, CPU numbers decimal. A command that stops with an error (exit status 2) prints the envelope and `error`; a \
         usage error clap finds before any command is known has `\"command\": null`.\n"
    );
    for s in &sections {
        let _ = writeln!(out, "### `msrsave {} --format json`\n", s.command);
        table(&mut out, &properties(&s.schema, &defs_map));
    }
    let _ = writeln!(out, "### errors\n");
    table(&mut out, &properties(&error, &defs_map));
    let _ = writeln!(out, "### Types\n");
    for (name, def) in &defs {
        if name.starts_with("Envelope") {
            continue;
        }
        let _ = writeln!(out, "#### {name}\n");
        let d = description(def);
        if !d.is_empty() {
            let _ = writeln!(out, "{d}\n");
        }
        let props = properties(def, &defs_map);
        if !props.is_empty() {
            table(&mut out, &props);
        } else if let Some(alts) = def
            .get("oneOf")
            .or(def.get("anyOf"))
            .and_then(Value::as_array)
        {
            for a in alts {
                let props = properties(a, &defs_map);
                let what = description(a);
                if props.is_empty() {
                    let _ = writeln!(
                        out,
                        "- {}{}",
                        type_of(a),
                        if what.is_empty() {
                            String::new()
                        } else {
                            format!(": {what}")
                        }
                    );
                } else {
                    let _ = writeln!(out, "One of:\n");
                    table(&mut out, &props);
                }
            }
            out.push('\n');
        } else {
            let _ = writeln!(out, "{}\n", type_of(def));
        }
    }
    let _ = writeln!(out, "{END}");
    out
}

/// `doc` with its generated section replaced by [`render`]'s; `None` if it has no markers.
pub fn splice(doc: &str) -> Option<String> {
    let start = doc.find(BEGIN)?;
    let end = doc[start..].find(END)? + start + END.len();
    let mut out = String::with_capacity(doc.len());
    out.push_str(&doc[..start]);
    out.push_str(render().trim_end());
    out.push_str(&doc[end..]);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_report_field_is_documented_with_its_type() {
        let text = render();
        for needle in [
            "### `msrsave save --format json`",
            "### `msrsave job end --format json`",
            "| `schema` | integer |",
            "| `changed_bits` |",
            "#### MsrAddr",
        ] {
            assert!(text.contains(needle), "{needle} missing");
        }
    }

    /// docs/interfaces.md holds exactly what the types say (regenerate with
    /// `cargo run -p msrsave --bin msrsave-docs -- --interfaces docs/interfaces.md`).
    #[test]
    fn the_committed_contract_is_the_generated_one() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/interfaces.md");
        let doc = std::fs::read_to_string(&path).expect("docs/interfaces.md");
        let want = splice(&doc).expect("docs/interfaces.md has the generated section's markers");
        assert!(
            doc == want,
            "docs/interfaces.md is out of date: run `cargo run -p msrsave --bin msrsave-docs -- --interfaces docs/interfaces.md`"
        );
    }
}
