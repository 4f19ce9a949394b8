//! Reading what comes from outside, and nothing more: every file this library reads is opened
//! without blocking (a FIFO never hangs us), checked to be the kind of file expected (a regular
//! file, or the kernel's character device where one is expected), optionally without following a
//! final symbolic link (files that are ours: the state directory, save targets), and read up to a
//! documented limit derived from what a valid file can hold.

use std::fs::File;
use std::io::Read;
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

#[cfg(test)]
mod tests {
    use super::*;

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
