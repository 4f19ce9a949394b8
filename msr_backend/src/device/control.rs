//! msr-safe's control nodes, read and written by their real semantics (msr_allowlist.c and
//! msr_version.c of msr-safe 1.8.0, and the real module in a guest: see tests/msr_safe/):
//!
//! - `/dev/cpu/msr_allowlist` is not a file. One `write()` is one whole list (the kernel parses
//!   each write alone; 2 bytes or less clears the list). A `read()` returns **one record**: the
//!   first is the header line plus the first entry (60 bytes), each later one a single entry
//!   (30 bytes); a read whose buffer is smaller than the record fails with `E2BIG` (so a reader
//!   that probes with a small first read, as `read_to_end` does on a file of size 0, fails); a
//!   read past the last entry returns 0. [`read_records`] reads it one record at a time with a
//!   buffer larger than any record, and works on a regular file (an emulated node) too.
//! - `/dev/cpu/msr_safe_version` (mode 0400) returns the version with its NUL (`1.8.0\0`) in one
//!   read, then 0; `/sys/module/msr_safe/version` is the same text with a newline, readable by
//!   everyone, and exists since msr-safe 1.2.
//!
//! The version ([`crate::node::Node::msr_safe`], [`crate::types::MsrSafeVersion`]) matters for
//! the batch ioctl: the 2.x series (LLNL/msr-safe PR #174) changes `struct msr_batch_op` and
//! answers a 1.x struct with `ENOPROTOOPT`, so the batch backend checks it before anything is
//! sent.

use std::io::{ErrorKind, Read, Write};
use std::path::{Path, PathBuf};

use nix::errno::Errno;

use crate::allowlist::{MAX_ALLOWLIST_BYTES, READBACK_ENTRY_BYTES, READBACK_HEADER};
use crate::fsio::{self, Expect, InputError, Links};
use crate::node::Node;

/// The buffer each `read()` of the allowlist node gets: larger than any record (the kernel
/// formats a record into a 200-byte buffer).
pub const RECORD_BUFFER_BYTES: usize = 256;

/// The most entries a loaded list can have: the kernel takes at most 128 KiB of text and the
/// shortest entry is 4 bytes (`0 0\n`).
pub const MAX_LOADED_ENTRIES: usize = MAX_ALLOWLIST_BYTES / 4;

/// The most bytes a read-back of the allowlist node can hold; more is refused as not msr-safe's.
pub const MAX_READBACK_BYTES: u64 =
    (READBACK_HEADER.len() + MAX_LOADED_ENTRIES * READBACK_ENTRY_BYTES) as u64;

/// What went wrong with a control node. The message names the node.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error(transparent)]
    Input(#[from] InputError),
    #[error("reading {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} returned more than {limit} bytes, more than any list msr-safe can hold")]
    TooLarge { path: PathBuf, limit: u64 },
    #[error(
        "cannot open {path} for writing (needs root, or the group the site's udev rules give it)"
    )]
    OpenForWrite {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("msr-safe refused the list written to {path}: {errno:?} ({meaning})")]
    Refused {
        path: PathBuf,
        errno: Errno,
        meaning: &'static str,
    },
    #[error("{path}: short write ({written} of {len} bytes); msr-safe parses each write alone")]
    ShortWrite {
        path: PathBuf,
        written: usize,
        len: usize,
    },
}

/// Read a record node to its end: one `read()` per record, each with a buffer larger than any
/// record, until a read returns 0. At most `limit` bytes are accepted.
pub fn read_records(
    reader: &mut impl Read,
    limit: u64,
    path: &Path,
) -> Result<Vec<u8>, ControlError> {
    let mut out = Vec::new();
    let mut buf = [0u8; RECORD_BUFFER_BYTES];
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => return Ok(out),
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(source) => {
                return Err(ControlError::Read {
                    path: path.to_path_buf(),
                    source,
                })
            }
        };
        if (out.len() + n) as u64 > limit {
            return Err(ControlError::TooLarge {
                path: path.to_path_buf(),
                limit,
            });
        }
        out.extend_from_slice(&buf[..n]);
    }
}

/// The text of the list loaded in msr-safe, as the kernel reads it back (empty when no list is
/// loaded), and the node it came from.
pub fn read_loaded_allowlist(node: &Node) -> Result<(Vec<u8>, PathBuf), ControlError> {
    let path = node.allowlist_node();
    let mut f = fsio::open_input(&path, Expect::DeviceOrRegular, Links::Follow)?;
    let text = read_records(&mut f, MAX_READBACK_BYTES, &path)?;
    Ok((text, path))
}

/// Hand a whole list to msr-safe in one `write()` (the kernel parses each write alone, so a list
/// split over several writes is refused or, worse, half loaded).
pub fn write_allowlist(
    writer: &mut impl Write,
    text: &[u8],
    path: &Path,
) -> Result<(), ControlError> {
    let written = loop {
        match writer.write(text) {
            Ok(n) => break n,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => {
                let errno = Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO));
                return Err(ControlError::Refused {
                    path: path.to_path_buf(),
                    errno,
                    meaning: refusal_meaning(errno),
                });
            }
        }
    };
    if written != text.len() {
        return Err(ControlError::ShortWrite {
            path: path.to_path_buf(),
            written,
            len: text.len(),
        });
    }
    Ok(())
}

/// Load `text` into the allowlist node of `node` (a kernel node, or an emulated node's file,
/// which is replaced as a whole).
pub fn load_allowlist(node: &Node, text: &[u8]) -> Result<PathBuf, ControlError> {
    let path = node.allowlist_node();
    let emulated = std::fs::symlink_metadata(&path).is_ok_and(|m| m.file_type().is_file());
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .truncate(emulated)
        .open(&path)
        .map_err(|source| ControlError::OpenForWrite {
            path: path.clone(),
            source,
        })?;
    write_allowlist(&mut f, text, &path)?;
    Ok(path)
}

/// What an errno from a write to the allowlist node means, in msr-safe's terms.
pub fn refusal_meaning(errno: Errno) -> &'static str {
    match errno {
        Errno::EINVAL => "a token is not a number",
        Errno::ERANGE => "a number does not fit in 64 bits",
        Errno::EILSEQ => "the text ends right after a token (no newline after the last mask)",
        Errno::ENOMSG => "no entries; the list loaded before is kept",
        Errno::ENOTUNIQ => "an MSR is listed twice; msr-safe is left with an EMPTY list",
        Errno::E2BIG => "larger than msr-safe's 128 KiB limit",
        Errno::ENOMEM => "the kernel could not allocate the list",
        Errno::EACCES | Errno::EPERM => "no permission to load a list",
        _ => errno.desc(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{AllowlistNode, Caller};

    #[test]
    fn the_loaded_list_reads_back_one_record_at_a_time() {
        let node = AllowlistNode::new();
        let text = b"0x10 0\n0x199 0xffff # IA32_PERF_CTL\n0x1a0 0x0\n";
        node.open(&Caller::ROOT, true)
            .unwrap()
            .write_all(text)
            .unwrap();
        let mut f = node.open(&Caller::ROOT, true).unwrap();
        let back = read_records(&mut f, MAX_READBACK_BYTES, Path::new("n")).unwrap();
        assert_eq!(
            String::from_utf8(back).unwrap(),
            "#MSR       Write mask        \n\
             0x00000010 0x0000000000000000\n\
             0x00000199 0x000000000000FFFF\n\
             0x000001A0 0x0000000000000000\n"
        );
        // What `std::fs::read` did before: read_to_end probes with a short buffer on a node whose
        // size is 0, and the kernel answers E2BIG.
        let mut f = node.open(&Caller::ROOT, true).unwrap();
        let mut all = Vec::new();
        let e = f.read_to_end(&mut all).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::E2BIG));
    }

    #[test]
    fn a_readback_larger_than_any_list_is_refused() {
        struct Endless;
        impl Read for Endless {
            fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
                let rec = b"0x00000010 0x0000000000000000\n";
                buf[..rec.len()].copy_from_slice(rec);
                Ok(rec.len())
            }
        }
        let e = read_records(
            &mut Endless,
            MAX_READBACK_BYTES,
            Path::new("/dev/cpu/msr_allowlist"),
        )
        .unwrap_err();
        assert!(matches!(e, ControlError::TooLarge { .. }), "{e}");
    }

    #[test]
    fn one_write_is_one_list_and_refusals_keep_their_errno() {
        let node = AllowlistNode::new();
        let p = Path::new("/dev/cpu/msr_allowlist");
        let mut f = node.open(&Caller::ROOT, true).unwrap();
        write_allowlist(&mut f, b"0x10 0\n", p).unwrap();
        assert_eq!(node.entries().len(), 1);
        match write_allowlist(&mut f, b"0x10 0\n0x10 0\n", p) {
            Err(ControlError::Refused { errno, .. }) => assert_eq!(errno, Errno::ENOTUNIQ),
            other => panic!("{other:?}"),
        }
        // A duplicate leaves the module with an EMPTY list.
        assert!(node.entries().is_empty());
        write_allowlist(&mut f, b"0x10 0\n", p).unwrap();
        match write_allowlist(&mut f, b"zz 0\n", p) {
            Err(ControlError::Refused { errno, .. }) => assert_eq!(errno, Errno::EINVAL),
            other => panic!("{other:?}"),
        }
        // A parse error keeps the old list.
        assert_eq!(node.entries().len(), 1);
    }
}
