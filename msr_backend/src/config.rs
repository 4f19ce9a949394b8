//! The node-wide configuration file shared by msrsave, the SPANK plugin and the PBS hook
//! (`/etc/msr-restore/msr-restore.conf`): `key = value` lines and `#` comments. The plugin's
//! arguments and the hook's config override it with the same keys.

use std::path::{Path, PathBuf};

use crate::device::BackendKind;
use crate::error::{Error, Result};

pub const DEFAULT_CONFIG: &str = "/etc/msr-restore/msr-restore.conf";
/// Environment variable naming another configuration file.
pub const CONFIG_ENV: &str = "MSR_RESTORE_CONFIG";
pub const DEFAULT_STATE_DIR: &str = "/run/msr-restore";
pub const DEFAULT_ALLOWLIST_DIR: &str = "/usr/share/msr-restore/allowlists";
pub const DEFAULT_BASELINE: &str = "/var/lib/msr-restore/baseline.json";

/// What a health check does when it finds drift.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnDrift {
    /// Take the node out of service (the scheduler-specific caller does the draining).
    Drain,
    /// Only report.
    Log,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    pub backend: Option<BackendKind>,
    pub allowlist: Option<PathBuf>,
    pub allowlist_dirs: Vec<PathBuf>,
    pub state_dir: PathBuf,
    pub baseline: PathBuf,
    pub on_drift: OnDrift,
    pub root: Option<PathBuf>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            backend: None,
            allowlist: None,
            allowlist_dirs: vec![PathBuf::from(DEFAULT_ALLOWLIST_DIR)],
            state_dir: PathBuf::from(DEFAULT_STATE_DIR),
            baseline: PathBuf::from(DEFAULT_BASELINE),
            on_drift: OnDrift::Drain,
            root: None,
        }
    }
}

pub fn parse_backend(value: &str) -> std::result::Result<Option<BackendKind>, String> {
    match value {
        "auto" | "" => Ok(None),
        "batch" => Ok(Some(BackendKind::Batch)),
        "safe" | "msr_safe" => Ok(Some(BackendKind::Safe)),
        "msr" => Ok(Some(BackendKind::Msr)),
        other => Err(format!(
            "backend {other:?} is not one of auto, batch, safe, msr"
        )),
    }
}

impl Config {
    /// Apply one `key=value` setting (from the file, plugin arguments or hook config).
    pub fn set(&mut self, key: &str, value: &str) -> std::result::Result<(), String> {
        let path = |v: &str| (!v.is_empty()).then(|| PathBuf::from(v));
        match key {
            "backend" => self.backend = parse_backend(value)?,
            "allowlist" => self.allowlist = path(value),
            "allowlist_dir" => {
                self.allowlist_dirs = value.split(':').filter(|s| !s.is_empty()).map(PathBuf::from).collect()
            }
            "state_dir" => self.state_dir = path(value).ok_or("state_dir must not be empty")?,
            "baseline" => self.baseline = path(value).ok_or("baseline must not be empty")?,
            "root" => self.root = path(value),
            "on_drift" => {
                self.on_drift = match value {
                    "drain" => OnDrift::Drain,
                    "log" => OnDrift::Log,
                    other => return Err(format!("on_drift {other:?} is not drain or log")),
                }
            }
            other => {
                return Err(format!(
                    "unknown key {other:?} (known: backend, allowlist, allowlist_dir, state_dir, baseline, root, on_drift)"
                ))
            }
        }
        Ok(())
    }

    /// Parse configuration text; errors name the source and line.
    pub fn parse(text: &str, source: &str) -> Result<Config> {
        let mut c = Config::default();
        for (i, raw) in text.lines().enumerate() {
            let line = raw.split_once('#').map_or(raw, |(l, _)| l).trim();
            if line.is_empty() {
                continue;
            }
            let err = |reason: String| Error::Usage(format!("{source}:{}: {reason}", i + 1));
            let (k, v) = line
                .split_once('=')
                .ok_or_else(|| err(format!("{line:?} is not key = value")))?;
            c.set(k.trim(), v.trim()).map_err(err)?;
        }
        Ok(c)
    }

    /// The configuration in force: `$MSR_RESTORE_CONFIG`, else the default file if it exists,
    /// else built-in defaults.
    pub fn load_default() -> Result<Config> {
        match std::env::var_os(CONFIG_ENV) {
            Some(p) => Self::load(Path::new(&p)),
            None if Path::new(DEFAULT_CONFIG).exists() => Self::load(Path::new(DEFAULT_CONFIG)),
            None => Ok(Config::default()),
        }
    }

    pub fn load(path: &Path) -> Result<Config> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Self::parse(&text, &path.display().to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_names_bad_lines() {
        let c = Config::parse(
            "# c\nbackend = msr\nstate_dir=/tmp/s # here\non_drift = log\n",
            "f",
        )
        .unwrap();
        assert_eq!(c.backend, Some(BackendKind::Msr));
        assert_eq!(c.state_dir, PathBuf::from("/tmp/s"));
        assert_eq!(c.on_drift, OnDrift::Log);
        let e = Config::parse("backend = msr\nbogus = 1\n", "f.conf")
            .unwrap_err()
            .to_string();
        assert!(e.contains("f.conf:2") && e.contains("bogus"), "{e}");
        assert!(Config::parse("backend = fast\n", "f").is_err());
        assert!(Config::parse("just words\n", "f").is_err());
    }
}
