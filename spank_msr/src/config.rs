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
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use msr_backend::config::{parse_backend, Config as NodeConfig, OnDrift};
use msr_backend::jobs::{JobsConfig, DEFAULT_LOCK_TIMEOUT};

const MAX_LOCK_TIMEOUT_S: u64 = 3600;

/// The keys the plugin takes, for messages.
pub const KEYS: [&str; 10] = [
    "config",
    "state_dir",
    "allowlist",
    "allowlist_dir",
    "backend",
    "root",
    "on_drift",
    "lock_timeout",
    "drain",
    "scontrol",
];

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// The keys shared with msrsave and the PBS hook: backend, allowlist, allowlist_dir,
    /// state_dir, root, on_drift.
    pub node: NodeConfig,
    /// `config=`: the configuration file read before the arguments, if not the default.
    pub config_file: Option<PathBuf>,
    /// `lock_timeout=`: seconds a prolog or epilog waits for the node-wide lock.
    pub lock_timeout: Duration,
    /// `drain=`: on a failure, also drain the node through scontrol with a reason naming the
    /// cause and the registers (SLURM's own reason is only "Prolog error" / "Epilog error", and
    /// only with `required`).
    pub drain: bool,
    /// `scontrol=`: the scontrol used for `drain=yes`.
    pub scontrol: PathBuf,
}

impl Config {
    fn over(node: NodeConfig) -> Config {
        Config {
            node,
            config_file: None,
            lock_timeout: DEFAULT_LOCK_TIMEOUT,
            drain: true,
            scontrol: PathBuf::from("scontrol"),
        }
    }

    pub fn jobs(&self) -> JobsConfig {
        JobsConfig {
            state_dir: self.node.state_dir.clone(),
            lock_timeout: self.lock_timeout,
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
    File(msr_backend::Error),
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::Arg { arg, problem } => write!(
                f,
                "bad argument '{arg}' in plugstack.conf: {problem} (arguments: {}=)",
                KEYS.join("=, ")
            ),
            ConfigError::File(e) => write!(f, "configuration file: {e}"),
        }
    }
}

impl std::error::Error for ConfigError {}

fn absolute_path(value: &str) -> Result<PathBuf, String> {
    if value.is_empty() {
        return Err("empty path".to_string());
    }
    let p = Path::new(value);
    if !p.is_absolute() {
        return Err("the path must be absolute".to_string());
    }
    if p.components().any(|c| c == Component::ParentDir) {
        return Err("the path must not contain '..'".to_string());
    }
    Ok(p.to_path_buf())
}

fn yes_no(value: &str) -> Result<bool, String> {
    match value {
        "yes" | "true" | "1" | "on" => Ok(true),
        "no" | "false" | "0" | "off" => Ok(false),
        _ => Err("expected yes or no".to_string()),
    }
}

fn split(raw: &str) -> Result<(&'static str, &str), ConfigError> {
    let err = |problem: String| ConfigError::Arg {
        arg: raw.to_string(),
        problem,
    };
    let (key, value) = raw
        .split_once('=')
        .ok_or_else(|| err("expected key=value".to_string()))?;
    let key = KEYS
        .iter()
        .copied()
        .find(|k| *k == key)
        .ok_or_else(|| err(format!("unknown key '{key}'")))?;
    Ok((key, value))
}

impl Config {
    /// Read the configuration file (`config=`, else `$MSR_RESTORE_CONFIG`, else
    /// /etc/msr-restore/msr-restore.conf if it exists), then apply the arguments.
    pub fn load<S: AsRef<str>>(args: &[S]) -> Result<Config, ConfigError> {
        let mut file = None;
        for raw in args {
            let (key, value) = split(raw.as_ref())?;
            if key == "config" {
                file = Some(absolute_path(value).map_err(|problem| ConfigError::Arg {
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

    /// Apply the arguments over `node` (no file is read).
    pub fn parse_over<S: AsRef<str>>(node: NodeConfig, args: &[S]) -> Result<Config, ConfigError> {
        let mut cfg = Config::over(node);
        let mut seen: Vec<&'static str> = Vec::new();
        for raw in args {
            let raw = raw.as_ref();
            let err = |problem: String| ConfigError::Arg {
                arg: raw.to_string(),
                problem,
            };
            let (key, value) = split(raw)?;
            if seen.contains(&key) {
                return Err(err(format!("'{key}' given twice")));
            }
            seen.push(key);
            match key {
                "config" => {} // read by load()
                "state_dir" | "allowlist" | "root" => {
                    absolute_path(value).map_err(err)?;
                    cfg.node.set(key, value).map_err(err)?;
                }
                "allowlist_dir" => {
                    for dir in value.split(':') {
                        absolute_path(dir).map_err(err)?;
                    }
                    cfg.node.set(key, value).map_err(err)?;
                }
                "backend" => {
                    parse_backend(value).map_err(err)?;
                    cfg.node.set(key, value).map_err(err)?;
                }
                "on_drift" => cfg.node.set(key, value).map_err(err)?,
                "scontrol" => cfg.scontrol = absolute_path(value).map_err(err)?,
                "lock_timeout" => {
                    let s: u64 = value
                        .parse()
                        .map_err(|_| err("expected a number of seconds".to_string()))?;
                    if s == 0 || s > MAX_LOCK_TIMEOUT_S {
                        return Err(err(format!("expected 1 to {MAX_LOCK_TIMEOUT_S} seconds")));
                    }
                    cfg.lock_timeout = Duration::from_secs(s);
                }
                "drain" => cfg.drain = yes_no(value).map_err(err)?,
                _ => return Err(err(format!("unknown key '{key}'"))),
            }
        }
        Ok(cfg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use msr_backend::device::BackendKind;

    fn parse(args: &[&str]) -> Result<Config, ConfigError> {
        Config::parse_over(NodeConfig::default(), args)
    }

    #[test]
    fn defaults_without_arguments() {
        let cfg = parse(&[]).expect("no arguments is fine");
        assert_eq!(cfg.node, NodeConfig::default());
        assert_eq!(cfg.node.state_dir, PathBuf::from("/run/msr-restore"));
        assert_eq!(cfg.on_drift(), OnDrift::Drain);
        assert_eq!(cfg.lock_timeout, Duration::from_secs(60));
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
        assert_eq!(cfg.jobs().state_dir, PathBuf::from("/var/run/x"));
        assert_eq!(cfg.jobs().lock_timeout, Duration::from_secs(5));
        assert_eq!(cfg.node.allowlist, Some(PathBuf::from("/etc/msr/al")));
        assert_eq!(
            cfg.node.allowlist_dirs,
            vec![PathBuf::from("/a"), PathBuf::from("/b")]
        );
        assert_eq!(cfg.node.backend, Some(BackendKind::Safe));
        assert_eq!(cfg.node.root, Some(PathBuf::from("/tmp/node")));
        assert_eq!(cfg.on_drift(), OnDrift::Log);
        assert!(!cfg.drain);
        assert_eq!(cfg.scontrol, PathBuf::from("/usr/bin/scontrol"));
    }

    #[test]
    fn arguments_override_the_file() {
        let file = NodeConfig::parse("backend = msr\non_drift = log\n", "f").expect("file");
        let cfg = Config::parse_over(file, &["on_drift=drain"]).expect("valid");
        assert_eq!(cfg.node.backend, Some(BackendKind::Msr));
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
