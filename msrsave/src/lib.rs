//! msrsave: the admin's command line over msr_backend. Each subcommand lives in [`commands`] and
//! returns a typed report ([`output::Report`]) printed as text, JSON or a shell line.

pub mod cli;
pub mod commands;
pub mod output;
pub mod schema_doc;

use std::ffi::OsString;
use std::process::ExitCode;

use clap::Parser;

use crate::output::{ExitStatus, Format, Outcome};

/// Parse `args` and run the command; prints the report and returns the exit status.
pub fn run(args: Vec<OsString>) -> ExitCode {
    let args = cli::rewrite_llnl_forms(args);
    let cli = match cli::Cli::try_parse_from(&args) {
        Ok(c) => c,
        Err(e) => return usage_error(&args, e),
    };
    let format = cli.global.output();
    let name = commands::name(&cli.command);
    let outcome = match commands::dispatch(&cli) {
        Ok(outcome) => outcome,
        Err(e) => Outcome::error(Some(&name), error_text(&e), ExitStatus::Usage),
    };
    outcome.print(format);
    ExitCode::from(outcome.status.code())
}

/// A usage error clap found. With `--json` (or `--format json|shell`), it is an object (a line)
/// too, so that tools get one shape; `--help` and `--version` are not errors.
fn usage_error(args: &[OsString], e: clap::Error) -> ExitCode {
    if !e.use_stderr() {
        let _ = e.print();
        return ExitCode::SUCCESS;
    }
    let wants = |f: &str| {
        args.windows(2).any(|w| w[0] == "--format" && w[1] == f)
            || args.iter().any(|a| a == &*format!("--format={f}"))
    };
    let format = if args.iter().any(|a| a == "--json") || wants("json") {
        Format::Json
    } else if wants("shell") {
        Format::Shell
    } else {
        Format::Text
    };
    if format == Format::Text {
        let _ = e.print();
    } else {
        let text = e.render().to_string();
        let message = text.split("\n\nUsage:").next().unwrap_or("usage error");
        let first = message.split_whitespace().collect::<Vec<_>>().join(" ");
        let first = first
            .trim_start_matches("error: ")
            .trim_end_matches(" For more information, try '--help'.");
        Outcome::error(None, first.to_string(), ExitStatus::Usage).print(format);
        eprint!("{text}");
    }
    ExitCode::from(ExitStatus::Usage.code())
}

/// The error and its causes on one line, each cause once.
fn error_text(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        // A transparent wrapper repeats its inner message.
        if out.ends_with(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}
