//! The node-wide configuration, one vocabulary for every part: `msrsave`, the SLURM plugin and
//! the PBS hook read the same keys with the same meaning, from `/etc/msr-restore/msr-restore.conf`
//! (or `$MSR_RESTORE_CONFIG`), and override them the same way (plugstack.conf arguments,
//! `msrsave --set KEY=VALUE`, which the PBS hook and the Torque scripts use).
//!
//! Every `key=value` surface goes through one parser, [`OptionParser`]: an unknown key, a repeated
//! key, a missing `=` or a bad value is an error that names where it came from (file and line,
//! or the argument), so a typo is never silently replaced by a default.

use std::fmt;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use serde::Serialize;

use crate::fsio::{self, Expect, InputError, Links};
use crate::types::BackendChoice;

pub const DEFAULT_CONFIG: &str = "/etc/msr-restore/msr-restore.conf";
/// Environment variable naming another configuration file.
pub const CONFIG_ENV: &str = "MSR_RESTORE_CONFIG";
pub const DEFAULT_STATE_DIR: &str = "/run/msr-restore";
pub const DEFAULT_ALLOWLIST_DIR: &str = "/usr/share/msr-restore/allowlists";
pub const DEFAULT_BASELINE: &str = "/var/lib/msr-restore/baseline.msr";
/// How long a job begin or end waits for the node-wide lock.
pub const DEFAULT_LOCK_TIMEOUT: Duration = Duration::from_secs(60);
/// The longest lock wait accepted (a prolog that waits longer is killed by the scheduler anyway).
pub const MAX_LOCK_TIMEOUT: Duration = Duration::from_secs(3600);
/// The largest configuration file read: far more than every key with a long comment each.
pub const MAX_CONFIG_BYTES: u64 = 64 * 1024;

/// One key of the shared vocabulary.
#[derive(Clone, Copy, Debug)]
pub struct Key {
    pub name: &'static str,
    pub default: &'static str,
    pub doc: &'static str,
}

/// The shared keys, in the order `msrsave config show` lists them.
pub const KEYS: &[Key] = &[
    Key {
        name: "backend",
        default: "auto",
        doc: "device backend: auto (batch, else safe, else msr), batch, safe or msr",
    },
    Key {
        name: "allowlist",
        default: "",
        doc:
            "an allowlist file to use instead of the one loaded in msr-safe (empty: the loaded one)",
    },
    Key {
        name: "allowlist_dir",
        default: DEFAULT_ALLOWLIST_DIR,
        doc: "where lists for a CPU are found (al_<FF>_<MM>), several separated by ':'",
    },
    Key {
        name: "state_dir",
        default: DEFAULT_STATE_DIR,
        doc: "node state for jobs: snapshot, one file per job, node lock",
    },
    Key {
        name: "baseline",
        default: DEFAULT_BASELINE,
        doc: "the boot-time snapshot that health checks compare the node with",
    },
    Key {
        name: "root",
        default: "",
        doc: "take device, sysfs and procfs paths under this directory (an emulated node)",
    },
    Key {
        name: "on_drift",
        default: "drain",
        doc: "registers that differ from the snapshot: drain (take the node out of service) or log",
    },
    Key {
        name: "job_metrics",
        default: "",
        doc: "a node_exporter textfile counting, per MSR, the job ends at which it differed from the snapshot (empty: none)",
    },
    Key {
        name: "policy",
        default: crate::policy::DEFAULT_POLICY,
        doc: "the site policy (docs/policy.md) the health check and fleet commands honour; the default file is used only if present (empty: none)",
    },
    Key {
        name: "lock_timeout",
        default: "60",
        doc: "seconds a job begin or end waits for the node lock (1 to 3600)",
    },
];

/// What a health check or a job end does when registers differ from the snapshot.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum OnDrift {
    /// Take the node out of service: SLURM drains it, PBS offlines its vnodes, NHC marks it
    /// offline.
    Drain,
    /// Only report.
    Log,
}

impl fmt::Display for OnDrift {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            OnDrift::Drain => "drain",
            OnDrift::Log => "log",
        })
    }
}

/// Where a setting came from, for messages.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Origin {
    /// A line of a configuration file.
    File { path: PathBuf, line: usize },
    /// An argument (plugstack.conf, `--set`): named by what `what` says.
    Argument { what: &'static str, text: String },
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::File { path, line } => write!(f, "{}:{line}", path.display()),
            Origin::Argument { what, text } => write!(f, "bad argument '{text}' in {what}"),
        }
    }
}

/// What is wrong with one setting.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SettingProblem {
    #[error("expected key=value, got {0:?}")]
    NotKeyValue(String),
    #[error("unknown key '{key}' (known: {known})")]
    UnknownKey { key: String, known: String },
    #[error("'{0}' given twice")]
    Repeated(String),
    #[error("{key}: {reason}")]
    BadValue { key: &'static str, reason: String },
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{origin}: {problem}")]
    Setting {
        origin: Origin,
        problem: SettingProblem,
    },
    #[error("configuration file")]
    Read(#[source] InputError),
}

/// The parser of every `key=value` surface: splits a setting at its first `=` (spaces around
/// key and value are dropped), checks the key against the surface's keys and refuses a key given
/// twice.
#[derive(Debug)]
pub struct OptionParser {
    known: Vec<&'static str>,
    seen: Vec<&'static str>,
}

impl OptionParser {
    pub fn new(known: impl IntoIterator<Item = &'static str>) -> OptionParser {
        OptionParser {
            known: known.into_iter().collect(),
            seen: Vec::new(),
        }
    }

    /// The shared keys only.
    pub fn shared() -> OptionParser {
        Self::new(KEYS.iter().map(|k| k.name))
    }

    /// `key` and `value` of one setting.
    pub fn split<'t>(&mut self, text: &'t str) -> Result<(&'static str, &'t str), SettingProblem> {
        let (k, v) = text
            .split_once('=')
            .ok_or_else(|| SettingProblem::NotKeyValue(text.to_string()))?;
        let k = k.trim();
        let key = self
            .known
            .iter()
            .copied()
            .find(|known| *known == k)
            .ok_or_else(|| SettingProblem::UnknownKey {
                key: k.to_string(),
                known: self.known.join(", "),
            })?;
        if self.seen.contains(&key) {
            return Err(SettingProblem::Repeated(key.to_string()));
        }
        self.seen.push(key);
        Ok((key, v.trim()))
    }
}

/// The effective configuration.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, schemars::JsonSchema)]
pub struct Config {
    pub backend: BackendChoice,
    pub allowlist: Option<PathBuf>,
    pub allowlist_dirs: Vec<PathBuf>,
    pub state_dir: PathBuf,
    pub baseline: PathBuf,
    pub root: Option<PathBuf>,
    pub on_drift: OnDrift,
    /// Where the per-MSR counters of what jobs changed go (node_exporter textfile).
    pub job_metrics: Option<PathBuf>,
    /// The site policy file (the default path counts only if the file exists: see
    /// [`crate::policy::configured`]).
    pub policy: Option<PathBuf>,
    /// Seconds.
    #[serde(serialize_with = "seconds")]
    #[schemars(with = "u64")]
    pub lock_timeout: Duration,
}

fn seconds<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(d.as_secs())
}

impl Default for Config {
    fn default() -> Self {
        Config {
            backend: BackendChoice::Auto,
            allowlist: None,
            allowlist_dirs: vec![PathBuf::from(DEFAULT_ALLOWLIST_DIR)],
            state_dir: PathBuf::from(DEFAULT_STATE_DIR),
            baseline: PathBuf::from(DEFAULT_BASELINE),
            root: None,
            on_drift: OnDrift::Drain,
            job_metrics: None,
            policy: Some(PathBuf::from(crate::policy::DEFAULT_POLICY)),
            lock_timeout: DEFAULT_LOCK_TIMEOUT,
        }
    }
}

/// An absolute path without `..` (configuration paths are root's, and must not depend on the
/// directory a hook or plugin runs in).
pub fn absolute_path(value: &str) -> Result<PathBuf, String> {
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

/// `yes`/`no` (and `true`/`false`, `on`/`off`, `1`/`0`).
pub fn yes_no(value: &str) -> Result<bool, String> {
    match value {
        "yes" | "true" | "1" | "on" => Ok(true),
        "no" | "false" | "0" | "off" => Ok(false),
        _ => Err("expected yes or no".to_string()),
    }
}

impl Config {
    /// Apply one shared setting; `key` comes from [`OptionParser::split`].
    pub fn set(&mut self, key: &'static str, value: &str) -> Result<(), SettingProblem> {
        let bad = |reason: String| SettingProblem::BadValue { key, reason };
        let optional_path = |v: &str| -> Result<Option<PathBuf>, SettingProblem> {
            if v.is_empty() {
                Ok(None)
            } else {
                absolute_path(v).map(Some).map_err(bad)
            }
        };
        match key {
            "backend" => self.backend = value.parse().map_err(bad)?,
            "allowlist" => self.allowlist = optional_path(value)?,
            "allowlist_dir" => {
                self.allowlist_dirs = value
                    .split(':')
                    .filter(|s| !s.is_empty())
                    .map(|d| absolute_path(d).map_err(bad))
                    .collect::<Result<_, _>>()?
            }
            "state_dir" => self.state_dir = absolute_path(value).map_err(bad)?,
            "baseline" => self.baseline = absolute_path(value).map_err(bad)?,
            "root" => self.root = optional_path(value)?,
            "job_metrics" => self.job_metrics = optional_path(value)?,
            "policy" => self.policy = optional_path(value)?,
            "on_drift" => {
                self.on_drift = match value {
                    "drain" => OnDrift::Drain,
                    "log" => OnDrift::Log,
                    other => return Err(bad(format!("{other:?} is not drain or log"))),
                }
            }
            "lock_timeout" => {
                let s: u64 = value
                    .parse()
                    .map_err(|_| bad("expected a number of seconds".to_string()))?;
                let d = Duration::from_secs(s);
                if s == 0 || d > MAX_LOCK_TIMEOUT {
                    return Err(bad(format!(
                        "expected 1 to {} seconds",
                        MAX_LOCK_TIMEOUT.as_secs()
                    )));
                }
                self.lock_timeout = d;
            }
            other => {
                return Err(SettingProblem::UnknownKey {
                    key: other.to_string(),
                    known: KEYS.iter().map(|k| k.name).collect::<Vec<_>>().join(", "),
                })
            }
        }
        Ok(())
    }

    /// A key's value as `config get` prints it and the file spells it.
    pub fn get(&self, key: &str) -> Option<String> {
        let path = |p: &Option<PathBuf>| {
            p.as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_default()
        };
        Some(match key {
            "backend" => self.backend.to_string(),
            "allowlist" => path(&self.allowlist),
            "allowlist_dir" => self
                .allowlist_dirs
                .iter()
                .map(|d| d.display().to_string())
                .collect::<Vec<_>>()
                .join(":"),
            "state_dir" => self.state_dir.display().to_string(),
            "baseline" => self.baseline.display().to_string(),
            "root" => path(&self.root),
            "job_metrics" => path(&self.job_metrics),
            "policy" => path(&self.policy),
            "on_drift" => self.on_drift.to_string(),
            "lock_timeout" => self.lock_timeout.as_secs().to_string(),
            _ => return None,
        })
    }

    /// Apply the lines of a configuration file over `self`: `key = value` lines, `#` comments.
    pub fn apply_text(&mut self, text: &str, path: &Path) -> Result<(), ConfigError> {
        let mut parser = OptionParser::shared();
        for (i, raw) in text.lines().enumerate() {
            let line = raw.split_once('#').map_or(raw, |(l, _)| l).trim();
            if line.is_empty() {
                continue;
            }
            self.apply_setting(&mut parser, line, || Origin::File {
                path: path.to_path_buf(),
                line: i + 1,
            })?;
        }
        Ok(())
    }

    /// One `key=value` setting through the shared parser; a problem is named by `origin`.
    fn apply_setting(
        &mut self,
        parser: &mut OptionParser,
        text: &str,
        origin: impl Fn() -> Origin,
    ) -> Result<(), ConfigError> {
        let (k, v) = parser.split(text).map_err(|problem| ConfigError::Setting {
            origin: origin(),
            problem,
        })?;
        self.set(k, v).map_err(|problem| ConfigError::Setting {
            origin: origin(),
            problem,
        })
    }

    /// Parse configuration text over the defaults.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let mut c = Config::default();
        c.apply_text(text, path)?;
        Ok(c)
    }

    /// Read a configuration file (a regular file, at most [`MAX_CONFIG_BYTES`]).
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let bytes = fsio::read_file(
            path,
            Expect::Regular,
            Links::Follow,
            MAX_CONFIG_BYTES,
            "configuration file",
        )
        .map_err(ConfigError::Read)?;
        Self::parse(&String::from_utf8_lossy(&bytes), path)
    }

    /// The file in force: `$MSR_RESTORE_CONFIG`, else the default file if it exists.
    pub fn default_file() -> Option<PathBuf> {
        match std::env::var_os(CONFIG_ENV) {
            Some(p) => Some(PathBuf::from(p)),
            None => Some(PathBuf::from(DEFAULT_CONFIG)).filter(|p| p.exists()),
        }
    }

    /// The configuration in force: [`Config::default_file`] if there is one, else the defaults.
    pub fn load_default() -> Result<Config, ConfigError> {
        match Self::default_file() {
            Some(p) => Self::load(&p),
            None => Ok(Config::default()),
        }
    }

    /// Apply `key=value` overrides (`msrsave --set`, the hook's settings) over `self`.
    pub fn apply_overrides<S: AsRef<str>>(
        &mut self,
        settings: &[S],
        what: &'static str,
    ) -> Result<(), ConfigError> {
        let mut parser = OptionParser::shared();
        for s in settings {
            let text = s.as_ref();
            self.apply_setting(&mut parser, text, || Origin::Argument {
                what,
                text: text.to_string(),
            })?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::BackendKind;

    #[test]
    fn parses_and_names_bad_lines() {
        let f = Path::new("f");
        let c = Config::parse(
            "# c\nbackend = msr\nstate_dir=/tmp/s # here\non_drift = log\nlock_timeout = 5\n",
            f,
        )
        .unwrap();
        assert_eq!(c.backend, BackendChoice::Only(BackendKind::Msr));
        assert_eq!(c.state_dir, PathBuf::from("/tmp/s"));
        assert_eq!(c.on_drift, OnDrift::Log);
        assert_eq!(c.lock_timeout, Duration::from_secs(5));
        let e = Config::parse("backend = msr\nbogus = 1\n", Path::new("f.conf"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("f.conf:2") && e.contains("bogus"), "{e}");
        assert!(Config::parse("backend = fast\n", f).is_err());
        assert!(Config::parse("just words\n", f).is_err());
        let e = Config::parse("root = /a\nroot = /b\n", f)
            .unwrap_err()
            .to_string();
        assert!(e.contains("f:2") && e.contains("twice"), "{e}");
        let e = Config::parse("state_dir = run/x\n", f)
            .unwrap_err()
            .to_string();
        assert!(e.contains("absolute"), "{e}");
    }

    #[test]
    fn every_key_round_trips_through_get() {
        let mut c = Config::default();
        for k in KEYS {
            let v = c.get(k.name).unwrap();
            assert_eq!(v, k.default, "{}", k.name);
            c.set(k.name, &v).unwrap();
        }
        assert_eq!(c, Config::default());
        assert_eq!(c.get("nope"), None);
    }

    #[test]
    fn overrides_name_the_argument() {
        let mut c = Config::default();
        c.apply_overrides(&["on_drift=log", "root=/tmp/n"], "--set")
            .unwrap();
        assert_eq!(
            (c.on_drift, c.root.clone()),
            (OnDrift::Log, Some("/tmp/n".into()))
        );
        let e = c
            .apply_overrides(&["on_drift=offline"], "--set")
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "bad argument 'on_drift=offline' in --set: on_drift: \"offline\" is not drain or log"
        );
    }

    #[test]
    fn a_fifo_as_config_is_refused_not_waited_on() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("conf");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let e = Config::load(&fifo).unwrap_err();
        assert!(crate::cause::chain(&e).contains("a FIFO"), "{e}");
    }
}
