//! Save files: a snapshot with everything needed to judge whether it fits a node (host, CPU
//! model, kernel, backend, msr-safe version, the allowlist and its digest, the CPU list), sealed
//! with a checksum, written atomically and durably (mode 0600, never through a symbolic link):
//! a save file is complete or absent.
//!
//! Three formats are read, told apart by their first bytes:
//!
//! | format | written | read |
//! |---|---|---|
//! | [`compact`], version 2: a JSON header and a binary table, each value stored once per distinct value with the CPUs that hold it; the sha256 covers the exact bytes written | yes | yes |
//! | [`json`], version 1: one JSON document, every value a hex string | no (before this version) | yes |
//! | [`llnl`]: LLNL msrsave's raw array of u64, no header | no | yes (only where its size fits the node: see [`llnl`]) |
//!
//! Every read is bounded by what a valid file can hold and refuses a FIFO, a device or a
//! directory; a truncated, corrupted, newer-version file, or one with fields we do not know, is
//! refused with an error that names the file, before anything touches a register.
//! `docs/save-format.md` documents the formats.

pub mod compact;
pub mod json;
pub mod llnl;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::allowlist::{Allowlist, AllowlistEntry};
use crate::device::BackendKind;
use crate::fsio::{self, Expect, InputError, Links, WriteError};
use crate::snapshot::Snapshot;
use crate::types::{CpuIdentity, MsrAddr, WriteMask};

/// What the `format` key of our save files says.
pub const FORMAT_NAME: &str = "msr-restore-snapshot";
/// The format version this build writes; it reads this one and every older one.
pub const FORMAT_VERSION: u32 = compact::VERSION;
/// Permissions of a save file: register values can reveal what a job ran.
pub const SAVE_FILE_MODE: u32 = 0o600;

#[derive(Debug, thiserror::Error)]
pub enum SaveFileError {
    #[error("save file")]
    Input(#[source] InputError),
    #[error("save file {path}: {reason}. Nothing was written to any register")]
    Invalid { path: PathBuf, reason: String },
    #[error("save file {path}: checksum mismatch (recorded {recorded}, content {actual}): the file was changed or corrupted after it was written. Nothing was written to any register")]
    Checksum {
        path: PathBuf,
        recorded: String,
        actual: String,
    },
    #[error("save file {path} was written on host {recorded:?}, this is {actual:?}; refusing to use another node's registers (--allow-foreign-host overrides)")]
    ForeignHost {
        path: PathBuf,
        recorded: String,
        actual: String,
    },
    #[error("save file {path} was taken on a {recorded}, this node is a {actual}; refusing to restore another CPU model's registers. Nothing was written to any register")]
    OtherCpuModel {
        path: PathBuf,
        recorded: CpuIdentity,
        actual: CpuIdentity,
    },
    #[error("save file")]
    Write(#[source] WriteError),
}

impl SaveFileError {
    pub(crate) fn invalid(path: &Path, reason: impl Into<String>) -> SaveFileError {
        SaveFileError::Invalid {
            path: path.to_path_buf(),
            reason: reason.into(),
        }
    }
}

/// Metadata recorded with a snapshot.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SaveMeta {
    pub host: String,
    /// RFC 3339, UTC.
    pub created: String,
    pub job_id: Option<String>,
    pub cpu: CpuIdentity,
    pub kernel: Option<String>,
    pub backend: BackendKind,
    /// msr-safe's version, if it was loaded.
    pub msr_safe: Option<String>,
    /// The microcode revision the kernel reported (`/proc/cpuinfo`, `0x2007006`); absent from
    /// files written before it was recorded and where the kernel shows none (virtual machines).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub microcode: Option<String>,
    /// Registers whose lock bit was set when the snapshot was taken, per MSR (absent from
    /// files written before locks were known, and when none was set).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub locked: Vec<LockState>,
}

/// An MSR whose lock bit was set at save time, and where.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LockState {
    pub msr: MsrAddr,
    pub lock_bit: u8,
    /// The register's scope: one lock per CPU, core, die or package.
    pub scope: crate::msrs::scope::Scope,
    /// The domains whose lock bit was set (`package 0`, `package 1`, or `CPU 0`...), the first
    /// 64 of them; `cpus` covers them all.
    pub domains: Vec<String>,
    /// The CPUs of those domains (kernel list syntax).
    pub cpus: String,
}

/// How many domains a [`LockState`] names one by one.
pub const LOCK_DOMAINS_LISTED: usize = 64;

impl SaveMeta {
    pub fn now(
        host: String,
        cpu: CpuIdentity,
        kernel: Option<String>,
        backend: BackendKind,
    ) -> SaveMeta {
        SaveMeta {
            host,
            created: humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
            job_id: None,
            cpu,
            kernel,
            backend,
            msr_safe: None,
            microcode: None,
            locked: Vec::new(),
        }
    }
}

/// One allowlist entry as save files record it.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct EntryRecord {
    pub msr: MsrAddr,
    pub mask: WriteMask,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// The allowlist as save files record it: its source, digest and entries.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct AllowlistRecord {
    pub source: String,
    pub digest: String,
    pub entries: Vec<EntryRecord>,
}

impl AllowlistRecord {
    pub fn of(list: &Allowlist) -> AllowlistRecord {
        AllowlistRecord {
            source: list.source().to_string(),
            digest: list.digest(),
            entries: list
                .entries()
                .iter()
                .map(|e| EntryRecord {
                    msr: e.addr,
                    mask: e.mask,
                    name: e.name.clone(),
                })
                .collect(),
        }
    }

    /// The allowlist, checked against its digest.
    pub fn into_allowlist(self, path: &Path) -> Result<Allowlist, SaveFileError> {
        let entries: Vec<AllowlistEntry> = self
            .entries
            .into_iter()
            .map(|e| AllowlistEntry {
                addr: e.msr,
                mask: e.mask,
                name: e.name,
            })
            .collect();
        let list = Allowlist::from_entries(entries, &self.source)
            .map_err(|e| SaveFileError::invalid(path, crate::cause::chain(&e)))?;
        if list.digest() != self.digest {
            return Err(SaveFileError::invalid(
                path,
                format!(
                    "allowlist digest {} does not match its entries ({})",
                    self.digest,
                    list.digest()
                ),
            ));
        }
        Ok(list)
    }
}

/// A save file's content: a snapshot with its metadata.
#[derive(Clone, Debug)]
pub struct SaveFile {
    pub meta: SaveMeta,
    pub snapshot: Snapshot,
}

/// What a file on disk turned out to be.
#[derive(Clone, Debug)]
pub enum Loaded {
    /// One of our formats: complete, checked against its checksum.
    Ours(Box<SaveFile>),
    /// Not ours, and its size is a whole number of 64-bit values: maybe LLNL msrsave's raw
    /// format, which only the node's loaded allowlist and online CPUs can interpret
    /// ([`llnl::RawFile::fit`]).
    LlnlRaw(llnl::RawFile),
}

/// Which format a file's first bytes say it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Detected {
    Compact,
    Json,
    Other,
}

fn detect(head: &[u8]) -> Detected {
    if head.starts_with(compact::MAGIC) {
        Detected::Compact
    } else if head
        .iter()
        .find(|b| !b.is_ascii_whitespace())
        .is_some_and(|&b| b == b'{')
    {
        Detected::Json
    } else {
        Detected::Other
    }
}

/// How a save file's path is trusted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// Named by an admin: a symbolic link is followed.
    Named,
    /// Ours (the state directory): a symbolic link is refused.
    Ours,
}

impl SaveFile {
    /// Read and validate a save file of ours (a file in LLNL's raw format is refused here: see
    /// [`load`]).
    pub fn load(path: &Path) -> Result<SaveFile, SaveFileError> {
        match load(path, Origin::Named)? {
            Loaded::Ours(f) => Ok(*f),
            Loaded::LlnlRaw(raw) => Err(raw.not_ours_error()),
        }
    }

    /// Write atomically and durably in the current format.
    pub fn store(&self, path: &Path) -> Result<(), SaveFileError> {
        compact::store(self, path)
    }

    /// The file's bytes in the current format (the checksum included).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        // Writing into a Vec cannot fail.
        let _ = compact::write(self, &mut out);
        out
    }

    /// Parse save-file bytes of ours; `path` is only used in messages.
    pub fn from_bytes(bytes: &[u8], path: &Path) -> Result<SaveFile, SaveFileError> {
        match parse(bytes, path)? {
            Loaded::Ours(f) => Ok(*f),
            Loaded::LlnlRaw(raw) => Err(raw.not_ours_error()),
        }
    }

    /// Refuse a file recorded on another host.
    pub fn check_host(&self, path: &Path, host: &str) -> Result<(), SaveFileError> {
        if self.meta.host == host {
            Ok(())
        } else {
            Err(SaveFileError::ForeignHost {
                path: path.to_path_buf(),
                recorded: self.meta.host.clone(),
                actual: host.to_string(),
            })
        }
    }

    /// Refuse a file recorded on another CPU model.
    pub fn check_cpu(&self, path: &Path, cpu: &CpuIdentity) -> Result<(), SaveFileError> {
        if &self.meta.cpu == cpu {
            Ok(())
        } else {
            Err(SaveFileError::OtherCpuModel {
                path: path.to_path_buf(),
                recorded: self.meta.cpu.clone(),
                actual: cpu.clone(),
            })
        }
    }
}

/// Read a save file in any format we know (see the module documentation), bounded by what a
/// valid file of its format can hold.
pub fn load(path: &Path, origin: Origin) -> Result<Loaded, SaveFileError> {
    let links = match origin {
        Origin::Named => Links::Follow,
        Origin::Ours => Links::Refuse,
    };
    let mut f = fsio::open_input(path, Expect::Regular, links).map_err(SaveFileError::Input)?;
    let size = f
        .metadata()
        .map_err(|source| {
            SaveFileError::Input(InputError::Read {
                path: path.to_path_buf(),
                source,
            })
        })?
        .len();
    let mut head = [0u8; compact::MAGIC.len()];
    let got = read_up_to(&mut f, &mut head, path)?;
    let mut bytes = head[..got].to_vec();
    let limit = match detect(&bytes) {
        Detected::Compact => {
            // The header says how many CPUs and MSRs: the file can be no larger than that.
            let mut prefix = [0u8; compact::PREFIX_BYTES - compact::MAGIC.len()];
            let n = read_up_to(&mut f, &mut prefix, path)?;
            bytes.extend_from_slice(&prefix[..n]);
            let header_len = compact::header_len(&bytes)
                .filter(|l| *l <= compact::MAX_HEADER_BYTES)
                .unwrap_or(0);
            let header = fsio::read_limited(
                &mut (&mut f).take(u64::from(header_len)),
                u64::from(header_len),
                path,
                "save file",
            )
            .map_err(SaveFileError::Input)?;
            bytes.extend_from_slice(&header);
            compact::size_bound(&bytes, path).unwrap_or(compact::MAX_FILE_BYTES)
        }
        Detected::Json => json::MAX_FILE_BYTES,
        Detected::Other => llnl::MAX_FILE_BYTES,
    };
    if size > limit {
        return Err(SaveFileError::Input(InputError::TooLarge {
            path: path.to_path_buf(),
            limit,
            what: "save file",
        }));
    }
    bytes.reserve(size as usize - bytes.len().min(size as usize));
    let rest = fsio::read_limited(&mut f, limit - bytes.len() as u64, path, "save file")
        .map_err(SaveFileError::Input)?;
    bytes.extend_from_slice(&rest);
    parse(&bytes, path)
}

fn read_up_to(f: &mut impl Read, buf: &mut [u8], path: &Path) -> Result<usize, SaveFileError> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(source) => {
                return Err(SaveFileError::Input(InputError::Read {
                    path: path.to_path_buf(),
                    source,
                }))
            }
        }
    }
    Ok(n)
}

/// Parse the bytes of a save file in any format we know.
pub fn parse(bytes: &[u8], path: &Path) -> Result<Loaded, SaveFileError> {
    if bytes.is_empty() {
        return Err(SaveFileError::invalid(
            path,
            "the file is empty (a save that never finished?)",
        ));
    }
    match detect(bytes) {
        Detected::Compact => compact::parse(bytes, path).map(|f| Loaded::Ours(Box::new(f))),
        Detected::Json => json::parse(bytes, path).map(|f| Loaded::Ours(Box::new(f))),
        Detected::Other => llnl::RawFile::from_bytes(bytes, path).map(Loaded::LlnlRaw),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::types::CpuId;
    use nix::errno::Errno;

    use crate::device::OpError;

    /// Two CPUs (0 and 2) of a two-entry list, one register unreadable.
    pub fn sample() -> SaveFile {
        let al = Allowlist::parse(b"0x10 0\n0x199 0xffff # PERF_CTL\n", "test").unwrap();
        let snapshot = Snapshot::from_outcomes(
            std::sync::Arc::new(al),
            vec![CpuId(0), CpuId(2)],
            [
                Ok(1),
                Ok(0x1234),
                Err(OpError::Errno(Errno::EIO)),
                Ok(u64::MAX),
            ],
        );
        SaveFile {
            meta: meta(),
            snapshot,
        }
    }

    fn meta() -> SaveMeta {
        SaveMeta::now(
            "node1".into(),
            CpuIdentity {
                vendor: "GenuineIntel".into(),
                family: 6,
                model: 85,
            },
            Some("6.1.0".into()),
            BackendKind::Safe,
        )
    }

    /// `cpus` CPUs of a five-entry list, each outcome from `f(cpu, entry)`.
    pub fn sample_of(cpus: u32, f: impl Fn(u32, usize) -> Result<u64, OpError>) -> SaveFile {
        let al = Allowlist::parse(
            b"0x10 0\n0x199 0xffff\n0x1a0 0x400000\n0x610 0xffffff\n0x620 0x7f7f\n",
            "test",
        )
        .unwrap();
        let n = al.len();
        let outcomes: Vec<_> = (0..cpus)
            .flat_map(|c| (0..n).map(move |e| (c, e)))
            .map(|(c, e)| f(c, e))
            .collect();
        SaveFile {
            meta: meta(),
            snapshot: Snapshot::from_outcomes(
                std::sync::Arc::new(al),
                (0..cpus).map(CpuId).collect(),
                outcomes,
            ),
        }
    }

    #[test]
    fn every_format_is_told_by_its_first_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let f = sample();
        let compact = dir.path().join("c.msr");
        f.store(&compact).unwrap();
        let v1 = dir.path().join("v1.json");
        std::fs::write(&v1, json::document_text(&f)).unwrap();
        let raw = dir.path().join("llnl.dat");
        std::fs::write(&raw, [0u8; 32]).unwrap();
        for p in [&compact, &v1] {
            match load(p, Origin::Named).unwrap() {
                Loaded::Ours(g) => assert_eq!(g.snapshot.outcomes(), f.snapshot.outcomes()),
                Loaded::LlnlRaw(_) => panic!("{}", p.display()),
            }
        }
        assert!(
            matches!(load(&raw, Origin::Named).unwrap(), Loaded::LlnlRaw(r) if r.values.len() == 4)
        );
        let e = SaveFile::load(&raw).unwrap_err().to_string();
        assert!(e.contains("LLNL msrsave's raw format"), "{e}");
    }

    #[test]
    fn special_files_and_links_are_refused_as_save_files() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        for p in [
            fifo.as_path(),
            Path::new("/dev/zero"),
            Path::new("/dev/urandom"),
            dir.path(),
        ] {
            let e = load(p, Origin::Named).unwrap_err();
            assert!(
                matches!(e, SaveFileError::Input(InputError::WrongKind { .. })),
                "{}: {e:?}",
                p.display()
            );
        }
        let real = dir.path().join("s.msr");
        sample().store(&real).unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        assert!(load(&link, Origin::Named).is_ok());
        assert!(matches!(
            load(&link, Origin::Ours),
            Err(SaveFileError::Input(InputError::Symlink { .. }))
        ));
    }

    #[test]
    fn a_compact_file_larger_than_its_header_allows_is_refused_before_reading() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s.msr");
        let mut b = sample().to_bytes();
        b.resize(b.len() + (1 << 20), 0);
        std::fs::write(&p, &b).unwrap();
        let e = load(&p, Origin::Named).unwrap_err();
        assert!(
            matches!(e, SaveFileError::Input(InputError::TooLarge { .. })),
            "{e:?}"
        );
    }
}
