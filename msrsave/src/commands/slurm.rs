//! Will this node's slurmd load msr-restore's SPANK plugin? slurmd loads a plugin only when the
//! Slurm major.minor it was built for is slurmd's own; otherwise, with `optional` in
//! plugstack.conf, every job runs with no snapshot and no restore, and only log lines say so.
//! `msrsave info` reports it (and the packages' post-install asks it, through
//! msr-restore-slurm-check).

use std::path::{Path, PathBuf};
use std::process::Command;

use schemars::JsonSchema;
use serde::Serialize;

/// Where the packages record the Slurm series the plugin was built for (`24.11`).
pub const SERIES_FILE: &str = "/usr/share/msr-restore/slurm-series";
/// Where slurmd is looked for after PATH.
const SBIN: [&str; 3] = ["/usr/sbin", "/usr/local/sbin", "/sbin"];

/// The plugin's Slurm series against this node's slurmd.
#[derive(Clone, Debug, Serialize, JsonSchema)]
pub struct SlurmInfo {
    /// The series the installed plugin was built for (`null`: no plugin installed).
    pub plugin_series: Option<String>,
    /// The slurmd found, and its release (`24.11.5`).
    pub slurmd: Option<String>,
    pub slurmd_version: Option<String>,
    /// Whether slurmd loads the plugin (`null` when there is no plugin or no slurmd).
    pub compatible: Option<bool>,
    /// What it means, in words.
    pub note: String,
}

/// The release in `slurmd -V` output: `slurm 24.11.5` (upstream) or `slurm-wlm 24.11.5` (Debian).
pub fn parse_release(out: &str) -> Option<String> {
    let line = out.lines().next()?;
    let (name, rest) = line.split_once(' ')?;
    if !name.starts_with("slurm") {
        return None;
    }
    let release = rest.split_whitespace().next()?;
    let parts: Vec<&str> = release.split('.').collect();
    (parts.len() == 3
        && parts
            .iter()
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit())))
    .then(|| release.to_string())
}

fn find_slurmd() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(SBIN.iter().map(PathBuf::from))
        .map(|d| d.join("slurmd"))
        .find(|p| p.is_file())
}

/// Compare the series in `series_file` with `slurmd -V` (`slurmd`, else found on PATH and sbin).
pub fn check(series_file: &Path, slurmd: Option<&Path>) -> SlurmInfo {
    let plugin_series = std::fs::read_to_string(series_file).ok().and_then(|t| {
        t.lines()
            .map(str::trim)
            .find(|l| {
                l.split_once('.').is_some_and(|(a, b)| {
                    !a.is_empty()
                        && !b.is_empty()
                        && (a.to_owned() + b).bytes().all(|c| c.is_ascii_digit())
                })
            })
            .map(str::to_string)
    });
    let slurmd = slurmd.map(Path::to_path_buf).or_else(find_slurmd);
    let release = slurmd.as_ref().and_then(|s| {
        Command::new(s)
            .arg("-V")
            .output()
            .ok()
            .and_then(|o| parse_release(&String::from_utf8_lossy(&o.stdout)))
    });
    let shown = slurmd.as_ref().map(|p| p.display().to_string());
    let (compatible, note) = match (&plugin_series, &shown, &release) {
        (None, _, _) => (None, format!("no SPANK plugin installed ({series_file:?} absent)", series_file = series_file.display())),
        (Some(p), None, _) => (None, format!("the SPANK plugin is built for Slurm {p}; no slurmd on this node")),
        (Some(p), Some(s), None) => (
            Some(false),
            format!("the SPANK plugin is built for Slurm {p}; cannot read the Slurm version of {s} (slurmd -V)"),
        ),
        (Some(p), Some(s), Some(r)) if r.rsplit_once('.').map(|x| x.0) == Some(p.as_str()) => {
            (Some(true), format!("the SPANK plugin is built for Slurm {p}, as {s} ({r}) needs: slurmd loads it"))
        }
        (Some(p), Some(s), Some(r)) => (
            Some(false),
            format!(
                "slurmd WILL NOT load the SPANK plugin: spank_msr.so is built for Slurm {p}; {s} is Slurm {r}. \
                 With `required` in plugstack.conf slurmd will not start; with `optional` every job runs \
                 WITHOUT MSR snapshot and restore. Install the msr-restore package built for Slurm {}",
                r.rsplit_once('.').map_or(r.as_str(), |x| x.0)
            ),
        ),
    };
    SlurmInfo {
        plugin_series,
        slurmd: shown,
        slurmd_version: release,
        compatible,
        note,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn releases_as_both_builds_print_them() {
        assert_eq!(parse_release("slurm 24.11.5\n").as_deref(), Some("24.11.5"));
        assert_eq!(
            parse_release("slurm-wlm 22.05.8\n").as_deref(),
            Some("22.05.8")
        );
        assert_eq!(parse_release("slurmd: error: x\n"), None);
        assert_eq!(parse_release("bash 5.2.15\n"), None);
    }

    #[test]
    fn a_plugin_of_another_series_is_said_loudly() {
        let dir = tempfile::tempdir().unwrap();
        let series = dir.path().join("slurm-series");
        std::fs::write(&series, "22.05\n").unwrap();
        let slurmd = dir.path().join("slurmd");
        std::fs::write(&slurmd, "#!/bin/sh\necho 'slurm-wlm 24.11.5'\n").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&slurmd, std::fs::Permissions::from_mode(0o755)).unwrap();
        let i = check(&series, Some(&slurmd));
        assert_eq!(i.compatible, Some(false));
        assert!(
            i.note.contains("WILL NOT load") && i.note.contains("24.11"),
            "{}",
            i.note
        );
        std::fs::write(&series, "24.11\n").unwrap();
        assert_eq!(check(&series, Some(&slurmd)).compatible, Some(true));
        let none = check(&dir.path().join("absent"), Some(&slurmd));
        assert_eq!((none.plugin_series, none.compatible), (None, None));
    }
}
