//! msrsave: the admin's command line over msr_backend. Each subcommand lives in
//! [`commands`]; every one returns an [`commands::Outcome`] that is printed readably or as JSON.

pub mod cli;
pub mod commands;

use std::ffi::OsString;
use std::process::ExitCode;

use clap::Parser;

/// Exit status: done and clean.
pub const EXIT_OK: u8 = 0;
/// Exit status: drift found, or some registers not restored or verified.
pub const EXIT_FAILED: u8 = 1;
/// Exit status: usage or input error; nothing was done.
pub const EXIT_USAGE: u8 = 2;

/// Parse `args` and run the command; prints the report and returns the exit status.
pub fn run(args: Vec<OsString>) -> ExitCode {
    let args = cli::rewrite_llnl_forms(args);
    let wants_json = args.iter().any(|a| a == "--json");
    let cli = match cli::Cli::try_parse_from(args) {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { EXIT_USAGE } else { EXIT_OK };
            // With --json, a usage error is a JSON object too, so that tools get one shape.
            if code == EXIT_USAGE && wants_json {
                let text = e.render().to_string();
                let message = text.split("\n\nUsage:").next().unwrap_or("usage error");
                let first = message.split_whitespace().collect::<Vec<_>>().join(" ");
                let first = first
                    .trim_start_matches("error: ")
                    .trim_end_matches(" For more information, try '--help'.");
                println!(
                    "{}",
                    serde_json::json!({"command": null, "ok": false, "error": first})
                );
                eprint!("{text}");
            } else {
                let _ = e.print();
            }
            return ExitCode::from(code);
        }
    };
    let json = cli.global.json;
    let name = commands::name(&cli.command);
    match commands::dispatch(&cli) {
        Ok(outcome) => {
            outcome.print(json);
            ExitCode::from(outcome.code)
        }
        Err(e) => {
            let e = error_text(&e);
            if json {
                let v = serde_json::json!({"command": name, "ok": false, "error": e});
                println!("{v}");
            } else {
                eprintln!("msrsave {name}: error: {e}");
            }
            ExitCode::from(EXIT_USAGE)
        }
    }
}

/// The error and its causes on one line, each cause once: the library's messages already
/// include their source's text, so a cause that the previous message contains is skipped.
fn error_text(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if out.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}
