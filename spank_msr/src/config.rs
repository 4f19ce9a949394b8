//! The plugin's arguments, as an admin writes them after the .so path in plugstack.conf:
//!
//! ```text
//! required /usr/lib/x86_64-linux-gnu/slurm-wlm/libspank_msr.so state_dir=/run/msr-restore on_drift=fail
//! ```
//!
//! Every argument is `key=value`; every key has a default. An unknown key, a repeated key, a
//! missing `=` or a bad value is an error naming the argument, so a typo shows in slurmd's log
//! instead of silently falling back to a default.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Where the node's snapshot and the list of jobs on the node are kept unless `state_dir=` says
/// otherwise. Under /run: a reboot resets the registers and empties this directory together.
pub const DEFAULT_STATE_DIR: &str = "/run/msr-restore";
/// How long a prolog or epilog waits for the node-wide lock by default.
pub const DEFAULT_LOCK_TIMEOUT: Duration = Duration::from_secs(60);
const MAX_LOCK_TIMEOUT_S: u64 = 3600;

/// The device backends msrsave knows (`--backend`).
pub const BACKENDS: [&str; 4] = ["auto", "batch", "safe", "msr"];

/// What the epilog does when, after the restore, the node still differs from the snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnDrift {
    /// Return an error: with `required` in plugstack.conf SLURM drains the node.
    Fail,
    /// Log the drift in slurmd's log and let the node go on.
    Warn,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// `state_dir=`: the node-wide state (snapshot, job list, lock).
    pub state_dir: PathBuf,
    /// `allowlist=`: use this allowlist file instead of the one loaded in msr-safe.
    pub allowlist: Option<PathBuf>,
    /// `backend=`: auto, batch, safe or msr.
    pub backend: String,
    /// `root=`: take every device, sysfs and procfs path under this directory (an emulated node).
    pub root: Option<PathBuf>,
    /// `on_drift=`: fail (default) or warn.
    pub on_drift: OnDrift,
    /// `lock_timeout=`: seconds to wait for the node-wide lock.
    pub lock_timeout: Duration,
    /// `drain=`: on a failure, also drain the node through scontrol with a reason that names
    /// the cause and the registers (SLURM's own reason is only "Prolog error"/"Epilog error").
    pub drain: bool,
    /// `scontrol=`: the scontrol used for `drain=yes`.
    pub scontrol: PathBuf,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            state_dir: PathBuf::from(DEFAULT_STATE_DIR),
            allowlist: None,
            backend: "auto".to_string(),
            root: None,
            on_drift: OnDrift::Fail,
            lock_timeout: DEFAULT_LOCK_TIMEOUT,
            drain: true,
            scontrol: PathBuf::from("scontrol"),
        }
    }
}

/// A plugstack.conf argument that could not be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArgError {
    pub arg: String,
    pub problem: String,
}

impl fmt::Display for ArgError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "bad argument '{}' in plugstack.conf: {} (arguments: {})",
            self.arg,
            self.problem,
            KEYS.join("=, ") + "="
        )
    }
}

impl std::error::Error for ArgError {}

const KEYS: [&str; 8] = [
    "state_dir",
    "allowlist",
    "backend",
    "root",
    "on_drift",
    "lock_timeout",
    "drain",
    "scontrol",
];

fn absolute_path(value: &str) -> Result<PathBuf, String> {
    if value.is_empty() {
        return Err("empty path".to_string());
    }
    let p = Path::new(value);
    if !p.is_absolute() {
        return Err("the path must be absolute (slurmd's working directory is not yours)".into());
    }
    if p.components().any(|c| c == std::path::Component::ParentDir) {
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

impl Config {
    /// Parse the arguments that follow the .so path in plugstack.conf.
    pub fn parse<S: AsRef<str>>(args: &[S]) -> Result<Config, ArgError> {
        let mut cfg = Config::default();
        let mut seen: Vec<&'static str> = Vec::new();
        for raw in args {
            let raw = raw.as_ref();
            let err = |problem: String| ArgError {
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
            if seen.contains(&key) {
                return Err(err(format!("'{key}' given twice")));
            }
            seen.push(key);
            match key {
                "state_dir" => cfg.state_dir = absolute_path(value).map_err(err)?,
                "allowlist" => cfg.allowlist = Some(absolute_path(value).map_err(err)?),
                "root" => cfg.root = Some(absolute_path(value).map_err(err)?),
                "scontrol" => cfg.scontrol = absolute_path(value).map_err(err)?,
                "backend" => {
                    if !BACKENDS.contains(&value) {
                        return Err(err(format!("expected one of {}", BACKENDS.join(", "))));
                    }
                    cfg.backend = value.to_string();
                }
                "on_drift" => {
                    cfg.on_drift = match value {
                        "fail" => OnDrift::Fail,
                        "warn" => OnDrift::Warn,
                        _ => return Err(err("expected fail or warn".to_string())),
                    }
                }
                "lock_timeout" => {
                    let s: u64 = value
                        .parse()
                        .map_err(|_| err("expected a number of seconds".to_string()))?;
                    if s == 0 || s > MAX_LOCK_TIMEOUT_S {
                        return Err(err(format!(
                            "expected 1 to {MAX_LOCK_TIMEOUT_S} seconds"
                        )));
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

    #[test]
    fn defaults_without_arguments() {
        let cfg = Config::parse::<&str>(&[]).expect("no arguments is fine");
        assert_eq!(cfg, Config::default());
        assert_eq!(cfg.state_dir, PathBuf::from("/run/msr-restore"));
        assert_eq!(cfg.on_drift, OnDrift::Fail);
        assert!(cfg.drain);
    }

    #[test]
    fn every_key() {
        let cfg = Config::parse(&[
            "state_dir=/var/run/x",
            "allowlist=/etc/msr/al",
            "backend=safe",
            "root=/tmp/node",
            "on_drift=warn",
            "lock_timeout=5",
            "drain=no",
            "scontrol=/usr/bin/scontrol",
        ])
        .expect("valid");
        assert_eq!(cfg.state_dir, PathBuf::from("/var/run/x"));
        assert_eq!(cfg.allowlist, Some(PathBuf::from("/etc/msr/al")));
        assert_eq!(cfg.backend, "safe");
        assert_eq!(cfg.root, Some(PathBuf::from("/tmp/node")));
        assert_eq!(cfg.on_drift, OnDrift::Warn);
        assert_eq!(cfg.lock_timeout, Duration::from_secs(5));
        assert!(!cfg.drain);
        assert_eq!(cfg.scontrol, PathBuf::from("/usr/bin/scontrol"));
    }

    fn problem(arg: &str) -> String {
        let e = Config::parse(&[arg]).expect_err(arg);
        assert_eq!(e.arg, arg);
        e.to_string()
    }

    #[test]
    fn errors_name_the_argument_and_the_problem() {
        assert!(problem("state-dir=/x").contains("unknown key 'state-dir'"));
        assert!(problem("verbose").contains("expected key=value"));
        assert!(problem("backend=ioctl").contains("expected one of auto, batch, safe, msr"));
        assert!(problem("state_dir=run/x").contains("absolute"));
        assert!(problem("state_dir=").contains("empty path"));
        assert!(problem("root=/a/../b").contains(".."));
        assert!(problem("on_drift=drain").contains("fail or warn"));
        assert!(problem("lock_timeout=0").contains("1 to 3600"));
        assert!(problem("lock_timeout=ten").contains("seconds"));
        assert!(problem("drain=maybe").contains("yes or no"));
        let msg = problem("x=1");
        assert!(msg.starts_with("bad argument 'x=1' in plugstack.conf"), "{msg}");
        assert!(msg.contains("state_dir="), "{msg}");
    }

    #[test]
    fn repeated_key_is_an_error() {
        let e = Config::parse(&["root=/a", "root=/b"]).expect_err("twice");
        assert_eq!(e.arg, "root=/b");
        assert!(e.problem.contains("twice"));
    }
}
