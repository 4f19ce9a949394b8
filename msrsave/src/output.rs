//! The output contract: every command returns a typed report ([`Report`]) that prints three
//! ways, from the same data:
//!
//! - text for people (the default);
//! - `--format json` (or `--json`): one JSON object, `{"schema": 1, "command": ..., "ok": ...}`
//!   and the report's own fields (docs/interfaces.md lists them, generated from these types);
//! - `--format shell`: one line of `key='value'` pairs, quoted for the shell, for scripts to
//!   `eval` (the packaging's boot, check and health-check scripts and the Torque scripts do).
//!
//! The exit status is an [`ExitStatus`], the same for every format.

use std::fmt::Write as _;

use schemars::JsonSchema;
use serde::Serialize;
use serde_json::Value;

/// The version of the JSON objects `--format json` prints; it changes when a field changes
/// meaning or goes away (new fields may be added without a change).
pub const SCHEMA_VERSION: u32 = 1;

/// How a command ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ExitStatus {
    /// Done and clean.
    Ok = 0,
    /// Drift found, or some registers not restored or not verified.
    Failed = 1,
    /// A usage or input error: nothing was done.
    Usage = 2,
}

impl ExitStatus {
    pub fn code(self) -> u8 {
        self as u8
    }

    /// Ok when the work came out clean, else Failed.
    pub fn ok_if(clean: bool) -> Self {
        if clean {
            ExitStatus::Ok
        } else {
            ExitStatus::Failed
        }
    }
}

/// How to print.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// A readable report
    #[default]
    Text,
    /// One JSON object on stdout
    Json,
    /// One line of key='value' pairs for a shell to eval
    Shell,
}

/// What a command reports.
pub trait Report: Serialize {
    /// The command's name as JSON and messages give it (`save`, `job end`, ...).
    const COMMAND: &'static str;

    fn status(&self) -> ExitStatus;

    /// The readable report.
    fn text(&self) -> String;

    /// The fields `--format shell` prints besides `ok` and `status`.
    fn shell(&self) -> Vec<(&'static str, String)> {
        Vec::new()
    }
}

/// The JSON object of a report: the envelope every command shares, then the report's fields.
#[derive(Serialize, JsonSchema)]
pub struct Envelope<R> {
    /// The version of this object's shape (see docs/interfaces.md).
    pub schema: u32,
    /// The command, as `msrsave COMMAND` spells it.
    pub command: String,
    /// True when the exit status is 0.
    pub ok: bool,
    #[serde(flatten)]
    pub report: R,
}

/// An error that stopped a command (exit status 2).
#[derive(Serialize, JsonSchema)]
pub struct ErrorReport {
    /// The error and its causes, naming the file, line, CPU or MSR.
    pub error: String,
}

/// A report ready to print.
pub struct Outcome {
    pub status: ExitStatus,
    pub json: Value,
    pub text: String,
    pub shell: String,
}

/// Quote `s` for a POSIX shell: `'...'` with every `'` written as `'\''`.
pub fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

fn shell_line(ok: bool, status: ExitStatus, fields: &[(&'static str, String)]) -> String {
    let mut line = format!("ok={} status={}", u8::from(ok), status.code());
    for (k, v) in fields {
        let _ = write!(line, " {k}={}", shell_quote(v));
    }
    line
}

impl Outcome {
    pub fn of<R: Report>(report: R) -> Outcome {
        let status = report.status();
        let ok = status == ExitStatus::Ok;
        let text = report.text();
        let shell = shell_line(ok, status, &report.shell());
        let json = serde_json::to_value(Envelope {
            schema: SCHEMA_VERSION,
            command: R::COMMAND.to_string(),
            ok,
            report,
        })
        .unwrap_or_else(|e| serde_json::json!({"error": e.to_string()}));
        Outcome {
            status,
            json,
            text,
            shell,
        }
    }

    /// A command that stopped with `error` (exit status 2, or `status` if given).
    pub fn error(command: Option<&str>, error: String, status: ExitStatus) -> Outcome {
        let json = serde_json::to_value(Envelope {
            schema: SCHEMA_VERSION,
            command: command.unwrap_or_default().to_string(),
            ok: false,
            report: ErrorReport {
                error: error.clone(),
            },
        })
        .unwrap_or_default();
        let mut json = json;
        if command.is_none() {
            // A usage error clap found before any command was known.
            json["command"] = Value::Null;
        }
        Outcome {
            status,
            shell: shell_line(false, status, &[("error", error.clone())]),
            text: match command {
                Some(c) => format!("msrsave {c}: error: {error}\n"),
                None => format!("msrsave: error: {error}\n"),
            },
            json,
        }
    }

    pub fn print(&self, format: Format) {
        match format {
            Format::Json => println!("{}", self.json),
            Format::Shell => println!("{}", self.shell),
            Format::Text => {
                if self.status == ExitStatus::Usage {
                    eprint!("{}", self.text);
                } else {
                    print!("{}", self.text);
                    if !self.text.ends_with('\n') && !self.text.is_empty() {
                        println!();
                    }
                }
            }
        }
    }
}

/// Milliseconds, for reports.
pub fn ms(d: std::time::Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

/// Append a line to a report.
pub fn line(out: &mut String, text: impl AsRef<str>) {
    let _ = writeln!(out, "{}", text.as_ref());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shell_quoting_keeps_every_message_whole() {
        assert_eq!(shell_quote("plain"), "'plain'");
        assert_eq!(
            shell_quote(r#"format is "other", it's bad"#),
            r#"'format is "other", it'\''s bad'"#
        );
        let o = Outcome::error(
            Some("check"),
            r#"save file bad.json: format is "other""#.into(),
            ExitStatus::Usage,
        );
        assert_eq!(
            o.shell,
            r#"ok=0 status=2 error='save file bad.json: format is "other"'"#
        );
        assert_eq!(o.json["error"], r#"save file bad.json: format is "other""#);
        assert_eq!(o.json["schema"], SCHEMA_VERSION);
    }
}
