//! msrsave-docs: write msrsave's man pages and shell completions from its CLI definition
//! ([`msrsave::cli::Cli`]), so they never drift from `--help`. Used by packaging/build.sh and
//! the RPM spec; not installed.
//!
//! ```text
//! msrsave-docs OUT_DIR
//!   OUT_DIR/man/msrsave.1, msrsave-save.1, msrsave-allowlist-load.1, ...  (one per command)
//!   OUT_DIR/completions/msrsave.bash, _msrsave (zsh), msrsave.fish
//! msrsave-docs --interfaces docs/interfaces.md
//!   rewrites the file's JSON section from the report types (msrsave::schema_doc)
//! ```
//!
//! `SOURCE_DATE_EPOCH`, when set, dates the man pages (reproducible builds); otherwise they
//! carry no date.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::CommandFactory;
use clap_complete::Shell;

const MANUAL: &str = "msr-restore";

/// Extra sections for the top-level page: where things live and the pages next to it.
const TOP_EXTRA: &str = r#".SH FILES
.TP
\fI/etc/msr-restore/msr-restore.conf\fR
Defaults shared by msrsave, the SLURM SPANK plugin and the PBS hook (\fBMSR_RESTORE_CONFIG\fR names another file).
.TP
\fI/usr/share/msr-restore/allowlists/\fR
Allowlists picked for the CPU by \fBmsrsave allowlist select\fR and \fBmsrsave allowlist load \-\-auto\fR.
.TP
\fI/var/lib/msr-restore/baseline.msr\fR
The node's baseline, taken at boot by \fBmsr-restore-baseline.service\fR, compared by \fBmsrsave check\fR.
.TP
\fI/run/msr-restore/\fR
Job state (node snapshot, active jobs, lock) of \fBmsrsave job begin\fR and \fBmsrsave job end\fR.
.SH ENVIRONMENT
.TP
\fBMSR_RESTORE_CONFIG\fR
The configuration file to read instead of \fI/etc/msr-restore/msr-restore.conf\fR.
"#;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    if args.len() == 3 && args[1] == "--interfaces" {
        let path = Path::new(&args[2]);
        let doc = match fs::read_to_string(path) {
            Ok(d) => d,
            Err(e) => {
                eprintln!("msrsave-docs: {}: {e}", path.display());
                return ExitCode::from(1);
            }
        };
        let Some(new) = msrsave::schema_doc::splice(&doc) else {
            eprintln!(
                "msrsave-docs: {} has no generated section (the lines {:?} and {:?})",
                path.display(),
                msrsave::schema_doc::BEGIN,
                msrsave::schema_doc::END
            );
            return ExitCode::from(1);
        };
        if let Err(e) = fs::write(path, new) {
            eprintln!("msrsave-docs: {}: {e}", path.display());
            return ExitCode::from(1);
        }
        println!(
            "msrsave-docs: JSON section of {} regenerated",
            path.display()
        );
        return ExitCode::SUCCESS;
    }
    if args.len() != 2 || args[1].starts_with('-') {
        eprintln!(
            "usage: msrsave-docs OUT_DIR   (writes OUT_DIR/man/*.1 and OUT_DIR/completions/*)\n       msrsave-docs --interfaces docs/interfaces.md   (regenerates its JSON section)"
        );
        return ExitCode::from(2);
    }
    match write_all(Path::new(&args[1])) {
        Ok(n) => {
            println!(
                "msrsave-docs: {n} man pages and 3 completion scripts in {}",
                args[1]
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("msrsave-docs: {e}");
            ExitCode::from(1)
        }
    }
}

fn write_all(out: &Path) -> std::io::Result<usize> {
    let man_dir = out.join("man");
    let comp_dir = out.join("completions");
    fs::create_dir_all(&man_dir)?;
    fs::create_dir_all(&comp_dir)?;

    let mut cmd = msrsave::cli::Cli::command().disable_help_subcommand(true);
    cmd.build();
    let source = format!("msrsave {}", cmd.get_version().unwrap_or_default());
    let page = Page {
        dir: &man_dir,
        date: source_date(),
        source,
    };
    let mut written = Vec::new();
    write_man(&cmd, None, &page, &mut written)?;

    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        clap_complete::generate_to(
            shell,
            &mut msrsave::cli::Cli::command(),
            "msrsave",
            &comp_dir,
        )?;
    }
    Ok(written.len())
}

/// What every page shares: where it goes and its footer.
struct Page<'a> {
    dir: &'a Path,
    date: String,
    source: String,
}

/// One page for `cmd` and, recursively, one for each visible subcommand.
fn write_man(
    cmd: &clap::Command,
    parent: Option<&clap::Command>,
    page: &Page,
    written: &mut Vec<PathBuf>,
) -> std::io::Result<()> {
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        write_man(sub, Some(cmd), page, written)?;
    }
    let man = clap_mangen::Man::new(cmd.clone())
        .manual(MANUAL)
        .date(page.date.clone())
        .source(page.source.clone());
    let mut text = Vec::new();
    man.render(&mut text)?;
    if parent.is_none() {
        text.extend_from_slice(TOP_EXTRA.as_bytes());
    }
    text.extend_from_slice(see_also(cmd, parent).as_bytes());
    let path = page.dir.join(man.get_filename());
    let mut f = fs::File::create(&path)?;
    f.write_all(&text)?;
    written.push(path);
    Ok(())
}

/// SEE ALSO: the parent command's page (the top page also for deeper ones), then the pages
/// of the subcommands.
fn see_also(cmd: &clap::Command, parent: Option<&clap::Command>) -> String {
    let page_ref = |c: &clap::Command| {
        let name = c
            .get_display_name()
            .unwrap_or_else(|| c.get_name())
            .to_string();
        format!("\\fB{}\\fR(1)", name.replace('-', "\\-"))
    };
    let mut refs: Vec<String> = Vec::new();
    if let Some(p) = parent {
        if p.get_display_name().is_some_and(|n| n.contains('-')) {
            refs.push("\\fBmsrsave\\fR(1)".to_string());
        }
        refs.push(page_ref(p));
    }
    refs.extend(
        cmd.get_subcommands()
            .filter(|s| !s.is_hide_set())
            .map(page_ref),
    );
    if refs.is_empty() {
        return String::new();
    }
    format!(".SH \"SEE ALSO\"\n{}\n", refs.join(",\n"))
}

/// `SOURCE_DATE_EPOCH` as YYYY-MM-DD (UTC), or empty.
fn source_date() -> String {
    std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|s| s.trim().parse::<i64>().ok())
        .map_or_else(String::new, civil_date)
}

/// Seconds since the epoch to YYYY-MM-DD (UTC).
fn civil_date(secs: i64) -> String {
    // Days since 1970-01-01 to a civil date (Howard Hinnant's algorithm).
    let z = secs.div_euclid(86_400) + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_dates() {
        for (secs, want) in [
            (0, "1970-01-01"),
            (951_782_400, "2000-02-29"),
            (1_767_225_599, "2025-12-31"),
        ] {
            assert_eq!(civil_date(secs), want);
        }
    }

    #[test]
    fn writes_pages_and_completions() {
        let dir = std::env::temp_dir().join(format!("msrsave-docs-test-{}", std::process::id()));
        let n = write_all(&dir).unwrap();
        assert!(n >= 2, "{n} pages");
        let top = fs::read_to_string(dir.join("man/msrsave.1")).unwrap();
        assert!(
            top.starts_with(".ie") || top.contains(".TH msrsave 1"),
            "{top}"
        );
        assert!(top.contains("SEE ALSO") && top.contains("msr\\-restore.conf"));
        assert!(dir.join("man/msrsave-save.1").exists());
        for f in ["msrsave.bash", "_msrsave", "msrsave.fish"] {
            assert!(
                fs::metadata(dir.join("completions").join(f)).unwrap().len() > 0,
                "{f}"
            );
        }
        fs::remove_dir_all(&dir).unwrap();
    }
}
