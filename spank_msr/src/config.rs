//! The plugin's arguments, as an admin writes them after the .so path in plugstack.conf:
//!
//! ```text
//! required /usr/lib/x86_64-linux-gnu/slurm-wlm/libspank_msr.so state_dir=/run/msr-restore on_drift=drain
//! ```
//!
//! The node-wide configuration file (`/etc/msr-restore/msr-restore.conf`, or the file named by
//! `config=`) is read first; arguments override it. Every argument is `key=value`. An unknown
//! key, a repeated key, a missing `=`, a relative path or a bad value is an error naming the
//! argument, so a typo shows in slurmd's log instead of silently falling back to a default.

use std::fmt;
use std::path::PathBuf;

use msr_backend::config::{absolute_path, yes_no, Config as NodeConfig, OnDrift, OptionParser};
use msr_backend::jobs::StateDir;

/// The keys the plugin takes: the shared ones a plugin has a use for, then its own.
pub const KEYS: [&str; 11] = [
    "config",
    "state_dir",
    "allowlist",
    "allowlist_dir",
    "backend",
    "root",
    "on_drift",
    "lock_timeout",
    "job_metrics",
    "drain",
    "scontrol",
];

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// The keys shared with msrsave and the PBS hook: backend, allowlist, allowlist_dir,
    /// state_dir, root, on_drift, lock_timeout.
    pub node: NodeConfig,
    /// `config=`: the configuration file read before the arguments, if not the default.
    pub config_file: Option<PathBuf>,
    /// `drain=`: on a failure, also drain the node through scontrol with a reason naming the
    /// cause and the registers (SLURM's own reason is only "Prolog error" / "Epilog error", and
    /// only with `required`).
    pub drain: bool,
    /// `scontrol=`: the scontrol used for `drain=yes` and to ask slurmd which jobs run here.
    pub scontrol: PathBuf,
}

impl Config {
    fn over(node: NodeConfig) -> Config {
        Config {
            node,
            config_file: None,
            drain: true,
            scontrol: PathBuf::from("scontrol"),
        }
    }

    pub fn state_dir(&self) -> StateDir {
        StateDir {
            path: self.node.state_dir.clone(),
            lock_timeout: self.node.lock_timeout,
        }
    }

    pub fn on_drift(&self) -> OnDrift {
        self.node.on_drift
    }
}

/// Why the plugin's configuration could not be used.
#[derive(Debug)]
pub enum ConfigError {
    /// A plugstack.conf argument.
    Arg { arg: String, problem: String },
    /// The configuration file (the message names the file and line).
    File(msr_backend::config::ConfigError),
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::Arg { arg, problem } => write!(
                f,
                "bad argument '{arg}' in plugstack.conf: {problem} (arguments: {}=)",
                KEYS.join("=, ")
            ),
            ConfigError::File(e) => {
                write!(f, "configuration file: {}", msr_backend::error::chain(e))
            }
        }
    }
}

impl std::error::Error for ConfigError {}

impl Config {
    /// Read the configuration file (`config=`, else `$MSR_RESTORE_CONFIG`, else
    /// /etc/msr-restore/msr-restore.conf if it exists), then apply the arguments.
    pub fn load<S: AsRef<str>>(args: &[S]) -> Result<Config, ConfigError> {
        let mut file = None;
        for raw in args {
            if let Some(v) = raw.as_ref().strip_prefix("config=") {
                file = Some(absolute_path(v).map_err(|problem| ConfigError::Arg {
                    arg: raw.as_ref().to_string(),
                    problem,
                })?);
            }
        }
        let node = match &file {
            Some(f) => NodeConfig::load(f),
            None => NodeConfig::load_default(),
        }
        .map_err(ConfigError::File)?;
        let mut cfg = Config::parse_over(node, args)?;
        cfg.config_file = file;
        Ok(cfg)
    }

    /// Apply the arguments over `node` (no file is read), with the one parser of every
    /// key=value surface.
    pub fn parse_over<S: AsRef<str>>(node: NodeConfig, args: &[S]) -> Result<Config, ConfigError> {
        let mut cfg = Config::over(node);
        let mut parser = OptionParser::new(KEYS);
        for raw in args {
            let raw = raw.as_ref();
            let err = |problem: String| ConfigError::Arg {
                arg: raw.to_string(),
                problem,
            };
            let (key, value) = parser.split(raw).map_err(|p| err(p.to_string()))?;
            match key {
                "config" => {} // read by load()
                "drain" => cfg.drain = yes_no(value).map_err(err)?,
                "scontrol" => cfg.scontrol = absolute_path(value).map_err(err)?,
                // Paths in plugstack.conf must be given: an empty value is a typo here.
                "state_dir" | "allowlist" | "root" if value.is_empty() => {
                    return Err(err("empty path".to_string()))
                }
                shared => cfg
                    .node
                    .set(shared, value)
                    .map_err(|p| err(p.to_string()))?,
            }
        }
        Ok(cfg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use msr_backend::device::BackendKind;
    use msr_backend::types::BackendChoice;
    use std::time::Duration;

    fn parse(args: &[&str]) -> Result<Config, ConfigError> {
        Config::parse_over(NodeConfig::default(), args)
    }

    #[test]
    fn defaults_without_arguments() {
        let cfg = parse(&[]).expect("no arguments is fine");
        assert_eq!(cfg.node, NodeConfig::default());
        assert_eq!(cfg.node.state_dir, PathBuf::from("/run/msr-restore"));
        assert_eq!(cfg.on_drift(), OnDrift::Drain);
        assert_eq!(cfg.state_dir().lock_timeout, Duration::from_secs(60));
        assert!(cfg.drain);
    }

    #[test]
    fn every_key() {
        let cfg = parse(&[
            "state_dir=/var/run/x",
            "allowlist=/etc/msr/al",
            "allowlist_dir=/a:/b",
            "backend=safe",
            "root=/tmp/node",
            "on_drift=log",
            "lock_timeout=5",
            "drain=no",
            "scontrol=/usr/bin/scontrol",
        ])
        .expect("valid");
        assert_eq!(cfg.state_dir().path, PathBuf::from("/var/run/x"));
        assert_eq!(cfg.state_dir().lock_timeout, Duration::from_secs(5));
        assert_eq!(cfg.node.allowlist, Some(PathBuf::from("/etc/msr/al")));
        assert_eq!(
            cfg.node.allowlist_dirs,
            vec![PathBuf::from("/a"), PathBuf::from("/b")]
        );
        assert_eq!(cfg.node.backend, BackendChoice::Only(BackendKind::Safe));
        assert_eq!(cfg.node.root, Some(PathBuf::from("/tmp/node")));
        assert_eq!(cfg.on_drift(), OnDrift::Log);
        assert!(!cfg.drain);
        assert_eq!(cfg.scontrol, PathBuf::from("/usr/bin/scontrol"));
    }

    #[test]
    fn arguments_override_the_file() {
        let file = NodeConfig::parse("backend = msr\non_drift = log\n", std::path::Path::new("f"))
            .expect("file");
        let cfg = Config::parse_over(file, &["on_drift=drain"]).expect("valid");
        assert_eq!(cfg.node.backend, BackendChoice::Only(BackendKind::Msr));
        assert_eq!(cfg.on_drift(), OnDrift::Drain);
    }

    fn problem(arg: &str) -> String {
        match parse(&[arg]) {
            Err(e @ ConfigError::Arg { .. }) => e.to_string(),
            other => panic!("{arg}: {other:?}"),
        }
    }

    #[test]
    fn errors_name_the_argument_and_the_problem() {
        assert!(problem("state-dir=/x").contains("unknown key 'state-dir'"));
        assert!(problem("verbose").contains("expected key=value"));
        assert!(problem("backend=ioctl").contains("not one of auto, batch, safe, msr"));
        assert!(problem("state_dir=run/x").contains("absolute"));
        assert!(problem("state_dir=").contains("empty path"));
        assert!(problem("root=/a/../b").contains(".."));
        assert!(problem("allowlist_dir=/a:b").contains("absolute"));
        assert!(problem("on_drift=fail").contains("not drain or log"));
        assert!(problem("lock_timeout=0").contains("1 to 3600"));
        assert!(problem("lock_timeout=ten").contains("seconds"));
        assert!(problem("drain=maybe").contains("yes or no"));
        assert!(problem("baseline=/x").contains("unknown key 'baseline'"));
        let msg = problem("x=1");
        assert!(
            msg.starts_with("bad argument 'x=1' in plugstack.conf"),
            "{msg}"
        );
        assert!(msg.contains("state_dir="), "{msg}");
    }

    #[test]
    fn repeated_key_is_an_error() {
        let msg = parse(&["root=/a", "root=/b"])
            .expect_err("twice")
            .to_string();
        assert!(msg.contains("'root=/b'") && msg.contains("twice"), "{msg}");
    }

    #[test]
    fn config_file_errors_name_the_file() {
        let dir = std::env::temp_dir().join(format!("spank_msr_cfg_{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("mkdir");
        let f = dir.join("bad.conf");
        std::fs::write(&f, "backend = msr\nbogus = 1\n").expect("write");
        let arg = format!("config={}", f.display());
        let msg = Config::load(&[arg.as_str()])
            .expect_err("bad file")
            .to_string();
        assert!(msg.contains("bad.conf:2") && msg.contains("bogus"), "{msg}");
        std::fs::write(&f, "on_drift = log\n").expect("write");
        let cfg = Config::load(&[arg.as_str(), "backend=msr"]).expect("good file");
        assert_eq!(cfg.on_drift(), OnDrift::Log);
        assert_eq!(cfg.config_file, Some(f.clone()));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
