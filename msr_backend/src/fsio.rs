//! Files in and out, and nothing more.
//!
//! In: every file this library reads is opened without blocking (a FIFO never hangs us), checked
//! to be the kind of file expected (a regular file, or the kernel's character device where one is
//! expected), optionally without following a final symbolic link (files that are ours: the state
//! directory, save targets), and read up to a documented limit derived from what a valid file can
//! hold.
//!
//! Out: [`write_atomically_with`] writes a file so that a reader sees the old one or the whole new
//! one, never part: a temporary file beside the target (created exclusively, mode as asked, an
//! unpredictable name `.NAME.tmp.PID.RANDOM`), fsync, rename, fsync of the directory. A writer
//! killed before the rename leaves its temporary file; [`remove_stale_temps`] removes those whose
//! writer no longer runs, and every writer calls it first.

use std::fs::{File, OpenOptions};
use std::hash::{BuildHasher, Hasher};
use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use nix::fcntl::{fcntl, FcntlArg, OFlag};

/// What kind of file a read expects.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expect {
    /// A regular file (save files, allowlist files, configuration).
    Regular,
    /// A kernel character device, or a regular file standing in for one on an emulated node.
    DeviceOrRegular,
}

/// Whether a final symbolic link in the path is followed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Links {
    /// Follow it: files an admin names (a link to a shared allowlist is fine).
    Follow,
    /// Refuse it: files that are ours (state directory, save targets), where a planted link
    /// would redirect us.
    Refuse,
}

/// Why a file could not be read. The message names the file and what was wrong; the cause, if
/// any, is the source.
#[derive(Debug, thiserror::Error)]
pub enum InputError {
    #[error("cannot open {path}")]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is a symbolic link; refusing to follow it (remove it)")]
    Symlink { path: PathBuf },
    #[error("{path} is {found}, not {expected}")]
    WrongKind {
        path: PathBuf,
        found: &'static str,
        expected: &'static str,
    },
    #[error("{path} is larger than {limit} bytes, more than any valid {what} can be")]
    TooLarge {
        path: PathBuf,
        limit: u64,
        what: &'static str,
    },
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl InputError {
    /// The path the error is about.
    pub fn path(&self) -> &Path {
        match self {
            InputError::Open { path, .. }
            | InputError::Symlink { path }
            | InputError::WrongKind { path, .. }
            | InputError::TooLarge { path, .. }
            | InputError::Read { path, .. } => path,
        }
    }

    /// The OS error behind it, if any (ENOENT, EACCES, ...).
    pub fn raw_os_error(&self) -> Option<i32> {
        match self {
            InputError::Open { source, .. } | InputError::Read { source, .. } => {
                source.raw_os_error()
            }
            _ => None,
        }
    }
}

/// A file kind in words, for messages.
fn kind_name(ft: std::fs::FileType) -> &'static str {
    if ft.is_file() {
        "a regular file"
    } else if ft.is_dir() {
        "a directory"
    } else if ft.is_fifo() {
        "a FIFO"
    } else if ft.is_socket() {
        "a socket"
    } else if ft.is_char_device() {
        "a character device"
    } else if ft.is_block_device() {
        "a block device"
    } else if ft.is_symlink() {
        "a symbolic link"
    } else {
        "a special file"
    }
}

/// Open `path` for reading as `expect` says, without blocking on a FIFO and, with
/// [`Links::Refuse`], without following a final symbolic link.
pub fn open_input(path: &Path, expect: Expect, links: Links) -> Result<File, InputError> {
    let mut flags = libc::O_NONBLOCK | libc::O_CLOEXEC;
    if links == Links::Refuse {
        flags |= libc::O_NOFOLLOW;
    }
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(flags)
        .open(path)
        .map_err(|source| {
            if links == Links::Refuse && source.raw_os_error() == Some(libc::ELOOP) {
                InputError::Symlink {
                    path: path.to_path_buf(),
                }
            } else {
                InputError::Open {
                    path: path.to_path_buf(),
                    source,
                }
            }
        })?;
    let ft = file
        .metadata()
        .map_err(|source| InputError::Read {
            path: path.to_path_buf(),
            source,
        })?
        .file_type();
    let fits = match expect {
        Expect::Regular => ft.is_file(),
        Expect::DeviceOrRegular => ft.is_file() || ft.is_char_device(),
    };
    if !fits {
        return Err(InputError::WrongKind {
            path: path.to_path_buf(),
            found: kind_name(ft),
            expected: match expect {
                Expect::Regular => "a regular file",
                Expect::DeviceOrRegular => "a character device or a regular file",
            },
        });
    }
    // Back to blocking reads: O_NONBLOCK was only for the open.
    fcntl(file.as_fd(), FcntlArg::F_SETFL(OFlag::empty())).map_err(|e| InputError::Read {
        path: path.to_path_buf(),
        source: e.into(),
    })?;
    Ok(file)
}

/// Read all of `reader` into memory, refusing more than `limit` bytes.
pub fn read_limited(
    reader: &mut impl Read,
    limit: u64,
    path: &Path,
    what: &'static str,
) -> Result<Vec<u8>, InputError> {
    let mut buf = Vec::new();
    reader
        .take(limit.saturating_add(1))
        .read_to_end(&mut buf)
        .map_err(|source| InputError::Read {
            path: path.to_path_buf(),
            source,
        })?;
    if buf.len() as u64 > limit {
        return Err(InputError::TooLarge {
            path: path.to_path_buf(),
            limit,
            what,
        });
    }
    Ok(buf)
}

/// Open and read a whole file, as [`open_input`] and [`read_limited`] say.
pub fn read_file(
    path: &Path,
    expect: Expect,
    links: Links,
    limit: u64,
    what: &'static str,
) -> Result<Vec<u8>, InputError> {
    let mut f = open_input(path, expect, links)?;
    read_limited(&mut f, limit, path, what)
}

/// Why a file could not be written. Nothing was replaced.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("refusing to write {path}: it is a symbolic link")]
    Symlink { path: PathBuf },
    #[error("writing {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl WriteError {
    fn io(path: &Path) -> impl FnOnce(std::io::Error) -> WriteError + '_ {
        move |source| WriteError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// The marker between a target's name and the writer's pid in a temporary file's name.
const TEMP_MARK: &str = ".tmp.";

/// A temporary name for `file_name`: `.NAME.tmp.PID.RANDOM` (the pid lets a later writer tell
/// whether the one that left it still runs; the random part makes it unpredictable).
fn temp_name(file_name: &str) -> String {
    // RandomState's keys come from the OS's random source.
    let r = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    format!(".{file_name}{TEMP_MARK}{}.{r:016x}", std::process::id())
}

/// The pid in a temporary file name made for `file_name`, if `name` is one.
fn temp_writer(name: &str, file_name: &str) -> Option<i32> {
    let rest = name
        .strip_prefix('.')?
        .strip_prefix(file_name)?
        .strip_prefix(TEMP_MARK)?;
    // `.NAME.tmp.PID.RANDOM`, or `.NAME.tmp.PID` as written before the random part was added.
    let pid = rest.split('.').next()?;
    pid.parse::<i32>().ok().filter(|p| *p > 0)
}

fn process_runs(pid: i32) -> bool {
    // Signal 0 checks existence only; EPERM means it runs under another user.
    !matches!(
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None),
        Err(nix::errno::Errno::ESRCH)
    )
}

/// A temporary file removed because its writer no longer runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StaleTemp {
    pub path: PathBuf,
    pub pid: i32,
}

impl std::fmt::Display for StaleTemp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "removed {}, left by writer pid {} which no longer runs (killed during a write?)",
            self.path.display(),
            self.pid
        )
    }
}

/// Remove the temporary files of `target` whose writer no longer runs. Best effort: a file that
/// cannot be removed is left for the next writer.
pub fn remove_stale_temps(target: &Path) -> Vec<StaleTemp> {
    let (dir, file_name) = split_target(target);
    let Ok(rd) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    let mut removed = Vec::new();
    for entry in rd.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|n| temp_writer(n, &file_name)) else {
            continue;
        };
        let is_file = entry.file_type().is_ok_and(|t| t.is_file());
        if is_file && !process_runs(pid) && std::fs::remove_file(entry.path()).is_ok() {
            removed.push(StaleTemp {
                path: entry.path(),
                pid,
            });
        }
    }
    removed
}

fn split_target(path: &Path) -> (PathBuf, String) {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    (dir, file_name)
}

/// Write `bytes` to `path` atomically (see the module documentation).
pub fn write_atomically(path: &Path, bytes: &[u8], mode: u32) -> Result<(), WriteError> {
    write_atomically_with(path, mode, |w| w.write_all(bytes))
}

/// Like [`write_atomically`], with the content streamed by `fill`. Refuses a target that is a
/// symbolic link.
pub fn write_atomically_with(
    path: &Path,
    mode: u32,
    fill: impl FnOnce(&mut std::io::BufWriter<File>) -> std::io::Result<()>,
) -> Result<(), WriteError> {
    if std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink()) {
        return Err(WriteError::Symlink {
            path: path.to_path_buf(),
        });
    }
    let (dir, file_name) = split_target(path);
    remove_stale_temps(path);
    let tmp = dir.join(temp_name(&file_name));
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&tmp)
        .map_err(WriteError::io(&tmp))?;
    let result = (|| {
        let mut w = std::io::BufWriter::with_capacity(1 << 16, file);
        fill(&mut w).map_err(WriteError::io(&tmp))?;
        let file = w
            .into_inner()
            .map_err(|e| WriteError::io(&tmp)(e.into_error()))?;
        file.sync_all().map_err(WriteError::io(&tmp))?;
        drop(file);
        std::fs::rename(&tmp, path).map_err(WriteError::io(path))?;
        File::open(&dir)
            .and_then(|d| d.sync_all())
            .map_err(WriteError::io(&dir))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temp_names_are_unpredictable_and_carry_the_writer() {
        let a = temp_name("snap.msr");
        let b = temp_name("snap.msr");
        assert_ne!(a, b);
        assert_eq!(temp_writer(&a, "snap.msr"), Some(std::process::id() as i32));
        assert_eq!(temp_writer(".snap.msr.tmp.12", "snap.msr"), Some(12));
        assert_eq!(temp_writer(".other.tmp.12", "snap.msr"), None);
        assert_eq!(temp_writer("snap.msr", "snap.msr"), None);
    }

    #[test]
    fn a_dead_writers_temp_is_removed_and_a_live_ones_kept() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("snap.msr");
        // A pid that cannot run: above the kernel's pid_max limit (4194304).
        let dead = dir.path().join(".snap.msr.tmp.99999999.0123456789abcdef");
        let live = dir
            .path()
            .join(format!(".snap.msr.tmp.{}.00", std::process::id()));
        let other = dir.path().join(".other.tmp.99999999.00");
        for p in [&dead, &live, &other] {
            std::fs::write(p, b"partial").unwrap();
        }
        write_atomically(&target, b"whole", 0o600).unwrap();
        assert!(!dead.exists() && live.exists() && other.exists());
        assert_eq!(std::fs::read(&target).unwrap(), b"whole");
        // Only the target and the two files that are not a dead writer's remain.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 3);
    }

    #[test]
    fn a_planted_temp_name_does_not_stop_a_write_and_links_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("f");
        // The name the old scheme would have used.
        std::fs::write(
            dir.path().join(format!(".f.tmp.{}", std::process::id())),
            b"x",
        )
        .unwrap();
        write_atomically(&target, b"1", 0o600).unwrap();
        let link = dir.path().join("l");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        assert!(matches!(
            write_atomically(&link, b"2", 0o600),
            Err(WriteError::Symlink { .. })
        ));
        assert_eq!(std::fs::read(&target).unwrap(), b"1");
    }

    #[test]
    fn a_fifo_is_refused_without_waiting_for_a_writer() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let e = read_file(&fifo, Expect::Regular, Links::Follow, 10, "test file").unwrap_err();
        assert!(
            matches!(
                e,
                InputError::WrongKind {
                    found: "a FIFO",
                    ..
                }
            ),
            "{e}"
        );
        assert!(e.to_string().contains("fifo"), "{e}");
    }

    #[test]
    fn a_device_that_never_ends_is_cut_at_the_limit() {
        let e = read_file(
            Path::new("/dev/zero"),
            Expect::DeviceOrRegular,
            Links::Follow,
            4096,
            "test file",
        )
        .unwrap_err();
        assert!(matches!(e, InputError::TooLarge { limit: 4096, .. }), "{e}");
        let e = read_file(
            Path::new("/dev/zero"),
            Expect::Regular,
            Links::Follow,
            4096,
            "save file",
        )
        .unwrap_err();
        assert!(
            e.to_string()
                .contains("/dev/zero is a character device, not a regular file"),
            "{e}"
        );
    }

    #[test]
    fn links_are_refused_only_when_asked() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("t");
        std::fs::write(&target, b"abc").unwrap();
        let link = dir.path().join("l");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        assert_eq!(
            read_file(&link, Expect::Regular, Links::Follow, 3, "f").unwrap(),
            b"abc"
        );
        assert!(matches!(
            read_file(&link, Expect::Regular, Links::Refuse, 3, "f"),
            Err(InputError::Symlink { .. })
        ));
        assert!(matches!(
            read_file(&target, Expect::Regular, Links::Refuse, 2, "f"),
            Err(InputError::TooLarge { .. })
        ));
        assert!(matches!(
            read_file(dir.path(), Expect::Regular, Links::Follow, 2, "f"),
            Err(InputError::WrongKind {
                found: "a directory",
                ..
            })
        ));
    }
}
