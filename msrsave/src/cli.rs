//! The command-line definition (clap). Man pages and shell completions are generated from it.

use std::ffi::OsString;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use msr_backend::types::BackendChoice;

use crate::output::Format;

#[derive(Parser, Debug)]
#[command(
    name = "msrsave",
    version,
    about = "Save, restore and check x86 MSRs on HPC nodes through msr-safe or the stock msr driver",
    long_about = "Save, restore and check x86 model-specific registers (MSRs) so that every job starts \
                  on a node as it was. Reads every allowlisted MSR on every online CPU in parallel, \
                  restores only the write-masked bits, and reports drift.\n\n\
                  LLNL msrsave's forms still work: `msrsave FILE` saves, `msrsave -r FILE` restores.",
    after_help = "Exit status: 0 done and clean; 1 drift found (check) or some registers not restored or \
                  verified (restore, job end); 2 usage or input error, nothing was done."
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Args, Debug, Clone)]
pub struct GlobalArgs {
    /// Take every device, sysfs and procfs path under DIR instead of / (an emulated node, or a
    /// container's view of the host). Files named on the command line are taken as given.
    #[arg(long, global = true, value_name = "DIR")]
    pub root: Option<PathBuf>,

    /// Device backend: auto (batch, else safe, else msr), batch, safe or msr [default: auto, or
    /// `backend` in the configuration file]
    #[arg(long, global = true, value_name = "BACKEND", value_parser = parse_backend)]
    pub backend: Option<BackendChoice>,

    /// Use this allowlist instead of the one loaded in msr-safe
    #[arg(long, global = true, value_name = "FILE")]
    pub allowlist: Option<PathBuf>,

    /// Directory of allowlists to pick from for this CPU (repeatable)
    /// [default: /usr/share/msr-restore/allowlists]
    #[arg(long = "allowlist-dir", global = true, value_name = "DIR")]
    pub allowlist_dirs: Vec<PathBuf>,

    /// Configuration file [default: $MSR_RESTORE_CONFIG or /etc/msr-restore/msr-restore.conf]
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Override a configuration key (repeatable), as the file would set it: `--set on_drift=log`
    #[arg(long = "set", global = true, value_name = "KEY=VALUE")]
    pub settings: Vec<String>,

    /// Output: text, json (one JSON object) or shell (one line of key='value' pairs to eval)
    #[arg(long, global = true, value_enum, default_value_t = Format::Text)]
    pub format: Format,

    /// The same as --format json
    #[arg(long, global = true)]
    pub json: bool,
}

impl GlobalArgs {
    /// The output format asked for.
    pub fn output(&self) -> Format {
        if self.json {
            Format::Json
        } else {
            self.format
        }
    }
}

fn parse_backend(s: &str) -> Result<BackendChoice, String> {
    s.parse()
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Snapshot every allowlisted MSR on every online CPU into FILE
    Save {
        /// The save file to write (atomically, mode 0600)
        file: PathBuf,
        /// Record this job id in the file
        #[arg(long)]
        job_id: Option<String>,
    },
    /// Put back the write-masked bits recorded in FILE, then read back and verify
    Restore {
        file: PathBuf,
        /// Show what would be written, write nothing
        #[arg(long)]
        dry_run: bool,
        /// Accept a file recorded on another host
        #[arg(long)]
        allow_foreign_host: bool,
    },
    /// Compare the node now with FILE (a job's snapshot or a baseline); exit 1 on drift
    Check {
        file: PathBuf,
        /// Compare every bit, not only the writable ones (counters and status bits will differ)
        #[arg(long)]
        all_bits: bool,
        /// Also write node_exporter textfile metrics to this file
        #[arg(long, value_name = "PROM_FILE")]
        prometheus: Option<PathBuf>,
        /// Accept a file recorded on another host
        #[arg(long)]
        allow_foreign_host: bool,
    },
    /// Compare two save files
    Diff {
        a: PathBuf,
        b: PathBuf,
        /// Compare only bits writable in both files
        #[arg(long)]
        writable_only: bool,
    },
    /// Print a save file readably
    Show {
        file: PathBuf,
        /// Only this CPU
        #[arg(long)]
        cpu: Option<u32>,
    },
    /// Show, pick, load or lint allowlists
    #[command(subcommand)]
    Allowlist(AllowlistCommand),
    /// CPU, backend chosen and why, msr-safe version, allowlist state (exit 2 when no
    /// backend is usable); whether this node's slurmd loads the SPANK plugin
    Info {
        /// The Slurm series the installed SPANK plugin was built for (written by the packages)
        #[arg(long, value_name = "FILE", default_value = crate::commands::slurm::SERIES_FILE)]
        slurm_series_file: PathBuf,
        /// The slurmd to ask (`slurmd -V`) [default: slurmd on PATH, else /usr/sbin]
        #[arg(long, value_name = "PATH")]
        slurmd: Option<PathBuf>,
    },
    /// Make an emulated node under DIR (regular files standing in for the devices)
    Emulate {
        dir: PathBuf,
        /// Number of online CPUs
        #[arg(long, default_value_t = 4)]
        cpus: u32,
        /// CPU family and model as FF_MM in hex (e.g. 06_55 for Skylake-SP)
        #[arg(long = "cpu-model", value_name = "FF_MM", default_value = "06_55")]
        cpu_model: String,
        /// vendor_id in /proc/cpuinfo
        #[arg(long, default_value = "GenuineIntel")]
        vendor: String,
        /// Packages (sockets); the CPUs are split evenly into packages, cores and threads
        #[arg(long, default_value_t = 1)]
        packages: u32,
        /// Threads per core (2 with hyper-threading)
        #[arg(long, default_value_t = 1)]
        threads_per_core: u32,
    },
    /// Jobs on a shared node: the first job snapshots, the last one restores (SLURM plugin and
    /// PBS hooks use this)
    #[command(subcommand)]
    Job(JobCommand),
    /// The configuration in effect (file, $MSR_RESTORE_CONFIG, --set): for scripts and admins
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Compare nodes across a cluster: per-node fingerprints of the fields the site policy
    /// names, and a comparison that reports every node whose field breaks its policy
    #[command(subcommand)]
    Fleet(FleetCommand),
    /// Run the whole cycle on a temporary emulated node and print what happened
    Demo {
        /// CPUs of the emulated node
        #[arg(long, default_value_t = 4)]
        cpus: u32,
        /// Keep the emulated node in this directory instead of a temporary one
        #[arg(long, value_name = "DIR")]
        keep: Option<PathBuf>,
    },
}

/// The state directory and lock wait of the job commands, over the configuration's.
#[derive(Args, Debug, Clone, Default)]
pub struct JobArgs {
    /// Seconds to wait for the node lock held by another job's begin or end [default:
    /// lock_timeout in the configuration, 60]
    #[arg(long, value_name = "SECS")]
    pub lock_timeout: Option<u64>,
    /// State directory [default: state_dir in the configuration, /run/msr-restore]
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// The jobs the scheduler runs on this node now (comma-separated ids, as the jobs were
    /// registered), asked of the scheduler on the node: registered jobs not among them are ended
    /// first, so that the last real job restores the node
    #[arg(long, value_name = "IDS", num_args = 0..=1, default_missing_value = "")]
    pub running_jobs: Option<String>,
}

#[derive(Subcommand, Debug)]
pub enum JobCommand {
    /// Record a job; the first job on an idle node takes the node snapshot. Idempotent.
    Begin {
        job_id: String,
        #[command(flatten)]
        args: JobArgs,
    },
    /// Forget a job; the last one restores the snapshot, verifies it and clears the state.
    End {
        job_id: String,
        #[command(flatten)]
        args: JobArgs,
    },
    /// Which jobs hold the node, and whether a snapshot is kept
    Status {
        #[command(flatten)]
        args: JobArgs,
    },
    /// End the registered jobs the scheduler no longer runs here (--running-jobs), and restore
    /// the node if they were the last
    Reconcile {
        #[command(flatten)]
        args: JobArgs,
    },
}

#[derive(Subcommand, Debug)]
pub enum FleetCommand {
    /// This node's fingerprint: for each field under a comparing policy (fleet_equal, static,
    /// subset, superset), its values and the CPUs that hold them, with the CPU model, microcode,
    /// kernel and allowlist digest. One JSON line with --format json (what fleet compare reads)
    Fingerprint {
        /// The site policy [default: `policy` in the configuration]
        #[arg(long, value_name = "POLICY")]
        policy: Option<PathBuf>,
        /// Fingerprint this save file (e.g. the boot baseline) instead of the node's registers
        #[arg(long, value_name = "SAVE_FILE")]
        from: Option<PathBuf>,
        /// Also write the fingerprint (one JSON line) to FILE, atomically
        #[arg(long, value_name = "FILE")]
        output: Option<PathBuf>,
        /// The node's name in the comparison [default: the host name, or the save file's]
        #[arg(long, value_name = "NAME")]
        node_name: Option<String>,
        /// A label for grouping (`[fleet] group_by = ["label:NAME"]`), repeatable
        #[arg(long = "label", value_name = "NAME=VALUE")]
        labels: Vec<String>,
    },
    /// Compare fingerprints (or save files): group nodes by CPU model (and what the policy's
    /// [fleet] group_by names) and report every node whose field breaks its policy, with the
    /// group's majority value and how many nodes agree; exit 1 on a violation
    Compare {
        /// Fingerprint files (one JSON object per line; `host: ` prefixes as pdsh and clush
        /// print them are accepted), save files, directories of them, or - for standard input
        #[arg(required = true, value_name = "INPUT")]
        inputs: Vec<PathBuf>,
        /// The site policy [default: `policy` in the configuration]
        #[arg(long, value_name = "POLICY")]
        policy: Option<PathBuf>,
        /// Also write node_exporter textfile metrics (violations per node) to this file
        #[arg(long, value_name = "PROM_FILE")]
        prometheus: Option<PathBuf>,
    },
}

#[derive(Subcommand, Debug)]
pub enum ConfigCommand {
    /// Every key and its value in effect
    Show,
    /// One key's value, alone on a line (empty if unset)
    Get { key: String },
}

#[derive(Subcommand, Debug)]
pub enum AllowlistCommand {
    /// Print an allowlist (default: the one in effect) in the kernel's read-back form
    Show { file: Option<PathBuf> },
    /// Print which shipped allowlist fits this node's CPU
    Select,
    /// Load an allowlist into msr-safe (/dev/cpu/msr_allowlist)
    Load {
        /// The list to load
        #[arg(required_unless_present = "auto", conflicts_with = "auto")]
        file: Option<PathBuf>,
        /// Pick the list for this CPU from the allowlist directories
        #[arg(long)]
        auto: bool,
    },
    /// Check allowlist files as the kernel would parse them, and warn about surprises; with the
    /// CPU model (from --cpu, or a file named al_FF_MM), also about MSRs and writable bits our
    /// tables do not know for it, and with --policy about what the site policy does not allow
    Lint {
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// The CPU model the lists are for, as FF_MM in hex (default: from each file's name)
        #[arg(long, value_name = "FF_MM")]
        cpu: Option<String>,
        /// Also check the lists against this site policy
        #[arg(long, value_name = "POLICY")]
        policy: Option<PathBuf>,
    },
    /// Make the msr-safe allowlist of a CPU model from a site policy (docs/policy.md), in the
    /// kernel's read-back form under a header that says what produced it; the same policy gives
    /// the same bytes on every run
    Compile {
        /// The site policy (TOML)
        policy: PathBuf,
        /// The CPU model, as FF_MM in hex (e.g. 06_55) [default: this node's]
        #[arg(long, value_name = "FF_MM", conflicts_with = "all")]
        cpu: Option<String>,
        /// Every model our tables know (one file each in --out-dir)
        #[arg(long, requires = "out_dir")]
        all: bool,
        /// Write the list to FILE instead of stdout
        #[arg(long, value_name = "FILE", conflicts_with_all = ["all", "out_dir"])]
        output: Option<PathBuf>,
        /// Write each list to DIR/al_FF_MM
        #[arg(long, value_name = "DIR")]
        out_dir: Option<PathBuf>,
    },
}

/// Keep LLNL msrsave's forms working: `msrsave FILE` is `save FILE`, `msrsave -r FILE` is
/// `restore FILE`.
pub fn rewrite_llnl_forms(args: Vec<OsString>) -> Vec<OsString> {
    use clap::CommandFactory;
    // Taken from the definition, so a new subcommand or global option needs no list here.
    let command = Cli::command();
    let subcommands: Vec<String> = command
        .get_subcommands()
        .map(|c| c.get_name().to_string())
        .chain(["help".to_string()])
        .collect();
    let value_options: Vec<String> = command
        .get_arguments()
        .filter(|a| a.is_global_set() && a.get_action().takes_values())
        .filter_map(|a| a.get_long().map(|l| format!("--{l}")))
        .collect();
    let mut out = args.clone();
    let mut i = 1;
    while i < args.len() {
        let a = args[i].to_string_lossy();
        if value_options.iter().any(|o| *o == a) {
            i += 2;
            continue;
        }
        if subcommands.iter().any(|c| *c == a) {
            return out;
        }
        if a == "-r" {
            out[i] = OsString::from("restore");
        } else if !a.starts_with('-') {
            out.insert(i, OsString::from("save"));
        } else if a.starts_with('-') && !matches!(a.as_ref(), "--json") && !a.contains('=') {
            // --help, --version and unknown options are clap's to answer.
            return out;
        } else {
            i += 1;
            continue;
        }
        return out;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rw(a: &[&str]) -> Vec<String> {
        rewrite_llnl_forms(a.iter().map(OsString::from).collect())
            .into_iter()
            .map(|s| s.into_string().unwrap())
            .collect()
    }

    #[test]
    fn llnl_forms() {
        assert_eq!(rw(&["msrsave", "f.json"]), ["msrsave", "save", "f.json"]);
        assert_eq!(
            rw(&["msrsave", "-r", "f.json"]),
            ["msrsave", "restore", "f.json"]
        );
        assert_eq!(
            rw(&["msrsave", "--root", "/x", "f"]),
            ["msrsave", "--root", "/x", "save", "f"]
        );
        assert_eq!(rw(&["msrsave", "check", "f"]), ["msrsave", "check", "f"]);
        assert_eq!(rw(&["msrsave", "--version"]), ["msrsave", "--version"]);
    }

    #[test]
    fn definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
