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
    let cli = match cli::Cli::try_parse_from(args) {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { EXIT_USAGE } else { EXIT_OK };
            let _ = e.print();
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
