//! The save file: a versioned JSON document with everything needed to judge whether it fits the
//! node (host, CPU model, kernel, backend, allowlist and its digest, CPU list) and every value as
//! a hex string (or the errno name where it could not be read), sealed with a checksum.
//!
//! Written atomically and durably (temporary file, fsync, rename, fsync of the directory) with
//! mode 0600 and never through a symbolic link: a save file is complete or absent. Loading
//! refuses a truncated, corrupted or newer-format file before anything touches a register.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::allowlist::{hex, Allowlist, AllowlistEntry};
use crate::device::{BackendKind, OpError};
use crate::node::{format_cpu_list, CpuIdentity};
use crate::snapshot::Snapshot;
use crate::types::{CpuId, Hex64, MsrAddr, WriteMask};

/// What the `format` key of every save file says.
pub const FORMAT_NAME: &str = "msr-restore-snapshot";
/// The format version this build writes and the newest it reads.
pub const FORMAT_VERSION: u32 = 1;
/// Permissions of a save file: register values can reveal what a job ran.
pub const SAVE_FILE_MODE: u32 = 0o600;

#[derive(Debug, thiserror::Error)]
pub enum SaveFileError {
    #[error("save file {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("save file {path}: not a complete JSON document ({detail}); it may be truncated. Nothing was written to any register")]
    Malformed { path: PathBuf, detail: String },
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
    #[error("refusing to write {path}: it is a symbolic link")]
    Symlink { path: PathBuf },
}

/// Metadata recorded with a snapshot.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
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
}

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
        }
    }
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct EntryRecord {
    msr: MsrAddr,
    mask: WriteMask,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    name: Option<String>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct AllowlistRecord {
    source: String,
    digest: String,
    entries: Vec<EntryRecord>,
}

/// A register's recorded outcome: hex value, or the error name (`EIO`, ...). Parsed straight
/// from the string, so loading a 100k-register file allocates no string per value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct SavedValue(Result<u64, OpError>);

impl Serialize for SavedValue {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            Ok(v) => s.collect_str(&Hex64(v)),
            Err(e) => s.collect_str(&e.code()),
        }
    }
}

impl<'de> Deserialize<'de> for SavedValue {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = SavedValue;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a hex register value or an errno name")
            }
            fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<SavedValue, E> {
                let v = if text.starts_with("0x") {
                    text.parse::<Hex64>().map(|h| Ok(h.0)).ok()
                } else {
                    OpError::from_code(text).map(Err)
                };
                v.map(SavedValue).ok_or_else(|| {
                    E::custom(format!("{text:?} is neither a hex value nor an error name"))
                })
            }
        }
        d.deserialize_str(V)
    }
}

/// The document as it is on disk. The checksum is sha256 over the compact JSON of the same
/// document with no checksum: independent of whitespace, sensitive to any value.
#[derive(Serialize, Deserialize)]
struct Document {
    format: String,
    version: u32,
    host: String,
    created: String,
    job_id: Option<String>,
    cpu: CpuIdentity,
    kernel: Option<String>,
    backend: BackendKind,
    msr_safe: Option<String>,
    allowlist: AllowlistRecord,
    /// The CPUs in kernel list syntax, for people; `cpus` is authoritative.
    cpu_list: String,
    cpus: Vec<CpuId>,
    /// One row per CPU of `cpus`, one value per allowlist entry.
    values: Vec<Vec<SavedValue>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    checksum: Option<String>,
}

/// Just enough of a document to refuse a foreign or newer file before parsing the rest.
#[derive(Deserialize)]
struct Header {
    format: Option<String>,
    version: Option<u64>,
}

/// A save file's content: a snapshot with its metadata.
#[derive(Clone, Debug)]
pub struct SaveFile {
    pub meta: SaveMeta,
    pub snapshot: Snapshot,
}

/// Feeds serialised bytes into a digest without buffering them.
struct HashWriter(Sha256);

impl Write for HashWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn checksum_of(doc: &Document) -> String {
    debug_assert!(doc.checksum.is_none());
    let mut h = HashWriter(Sha256::new());
    // Serialising plain strings, numbers and lists into a digest cannot fail.
    let _ = serde_json::to_writer(&mut h, doc);
    format!("sha256:{}", hex(&h.0.finalize()))
}

impl SaveFile {
    fn document(&self) -> Document {
        let s = &self.snapshot;
        let m = self.meta.clone();
        let mut doc = Document {
            format: FORMAT_NAME.to_string(),
            version: FORMAT_VERSION,
            host: m.host,
            created: m.created,
            job_id: m.job_id,
            cpu: m.cpu,
            kernel: m.kernel,
            backend: m.backend,
            msr_safe: m.msr_safe,
            allowlist: AllowlistRecord {
                source: s.allowlist.source().to_string(),
                digest: s.allowlist.digest(),
                entries: s
                    .entries()
                    .iter()
                    .map(|e| EntryRecord {
                        msr: e.addr,
                        mask: e.mask,
                        name: e.name.clone(),
                    })
                    .collect(),
            },
            cpu_list: format_cpu_list(&s.cpus),
            cpus: s.cpus.clone(),
            values: (0..s.cpus.len())
                .map(|ci| s.cpu_values(ci).iter().map(|v| SavedValue(*v)).collect())
                .collect(),
            checksum: None,
        };
        doc.checksum = Some(checksum_of(&doc));
        doc
    }

    /// Serialise to the on-disk JSON text (with checksum).
    pub fn to_json(&self) -> String {
        let mut text = serde_json::to_string_pretty(&self.document()).unwrap_or_default();
        text.push('\n');
        text
    }

    /// Parse and validate save-file text; `path` is only used in messages.
    pub fn from_json(text: &[u8], path: &Path) -> Result<SaveFile, SaveFileError> {
        let invalid = |reason: String| SaveFileError::Invalid {
            path: path.to_path_buf(),
            reason,
        };
        if text.is_empty() {
            return Err(invalid(
                "the file is empty (a save that never finished?)".to_string(),
            ));
        }
        let header: Header =
            serde_json::from_slice(text).map_err(|e| SaveFileError::Malformed {
                path: path.to_path_buf(),
                detail: e.to_string(),
            })?;
        match header.format.as_deref() {
            Some(FORMAT_NAME) => {}
            Some(other) => return Err(invalid(format!("format is {other:?}, not {FORMAT_NAME:?}"))),
            None => {
                return Err(invalid(format!(
                    "no \"format\": {FORMAT_NAME:?} key; this is not an msrsave save file (LLNL msrsave's raw binary files cannot be read)"
                )))
            }
        }
        match header.version {
            Some(v) if v == FORMAT_VERSION as u64 => {}
            Some(v) => {
                return Err(invalid(format!(
                    "format version {v}; this msrsave reads version {FORMAT_VERSION} (use the msrsave that wrote it)"
                )))
            }
            None => return Err(invalid("no format version".to_string())),
        }
        let mut doc: Document = serde_json::from_slice(text)
            .map_err(|e| invalid(format!("unexpected content: {e}")))?;
        let recorded = doc
            .checksum
            .take()
            .ok_or_else(|| invalid("no checksum".to_string()))?;
        let actual = checksum_of(&doc);
        if recorded != actual {
            return Err(SaveFileError::Checksum {
                path: path.to_path_buf(),
                recorded,
                actual,
            });
        }
        Self::from_document(doc, path)
    }

    fn from_document(doc: Document, path: &Path) -> Result<SaveFile, SaveFileError> {
        let invalid = |reason: String| SaveFileError::Invalid {
            path: path.to_path_buf(),
            reason,
        };
        let entries: Vec<AllowlistEntry> = doc
            .allowlist
            .entries
            .into_iter()
            .map(|e| AllowlistEntry {
                addr: e.msr,
                mask: e.mask,
                name: e.name,
            })
            .collect();
        let allowlist = Allowlist::from_entries(entries, &doc.allowlist.source)
            .map_err(|e| invalid(e.to_string()))?;
        if allowlist.digest() != doc.allowlist.digest {
            return Err(invalid(format!(
                "allowlist digest {} does not match its entries ({})",
                doc.allowlist.digest,
                allowlist.digest()
            )));
        }
        if doc.values.len() != doc.cpus.len() {
            return Err(invalid(format!(
                "{} CPUs but {} rows of values",
                doc.cpus.len(),
                doc.values.len()
            )));
        }
        if doc.cpus.windows(2).any(|w| w[0] >= w[1]) {
            return Err(invalid("the CPU list is not sorted and unique".to_string()));
        }
        let n = allowlist.len();
        let mut values = Vec::with_capacity(n * doc.cpus.len());
        for (cpu, row) in doc.cpus.iter().zip(doc.values) {
            if row.len() != n {
                return Err(invalid(format!(
                    "CPU {cpu} has {} values for {n} allowlisted MSRs",
                    row.len()
                )));
            }
            values.extend(row.into_iter().map(|v| v.0));
        }
        let meta = SaveMeta {
            host: doc.host,
            created: doc.created,
            job_id: doc.job_id,
            cpu: doc.cpu,
            kernel: doc.kernel,
            backend: doc.backend,
            msr_safe: doc.msr_safe,
        };
        Ok(SaveFile {
            meta,
            snapshot: Snapshot {
                allowlist: Arc::new(allowlist),
                cpus: doc.cpus,
                values,
            },
        })
    }

    /// Read and validate a save file.
    pub fn load(path: &Path) -> Result<SaveFile, SaveFileError> {
        let text = std::fs::read(path).map_err(|source| SaveFileError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_json(&text, path)
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

    /// Write atomically and durably: a temporary file next to `path` (mode 0600, created
    /// exclusively, never following a link), fsync, rename over `path`, fsync the directory.
    pub fn store(&self, path: &Path) -> Result<(), SaveFileError> {
        let doc = self.document();
        write_atomically_with(path, SAVE_FILE_MODE, |w| {
            serde_json::to_writer_pretty(&mut *w, &doc).map_err(std::io::Error::from)?;
            w.write_all(b"\n")
        })
    }
}

/// Write `bytes` to `path` so that a reader sees the old file or the whole new one, never part.
pub fn write_atomically(path: &Path, bytes: &[u8], mode: u32) -> Result<(), SaveFileError> {
    write_atomically_with(path, mode, |w| w.write_all(bytes))
}

/// Like [`write_atomically`], with the content streamed by `fill` (no copy in memory).
pub fn write_atomically_with(
    path: &Path,
    mode: u32,
    fill: impl FnOnce(&mut std::io::BufWriter<File>) -> std::io::Result<()>,
) -> Result<(), SaveFileError> {
    let io = |p: &Path| {
        let p = p.to_path_buf();
        move |source| SaveFileError::Io { path: p, source }
    };
    if let Ok(m) = std::fs::symlink_metadata(path) {
        if m.file_type().is_symlink() {
            return Err(SaveFileError::Symlink {
                path: path.to_path_buf(),
            });
        }
    }
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{file_name}.tmp.{}", std::process::id()));
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&tmp)
        .map_err(io(&tmp))?;
    let result = (|| {
        let mut w = std::io::BufWriter::new(file);
        fill(&mut w).map_err(io(&tmp))?;
        let file = w.into_inner().map_err(|e| io(&tmp)(e.into_error()))?;
        file.sync_all().map_err(io(&tmp))?;
        drop(file);
        std::fs::rename(&tmp, path).map_err(io(path))?;
        File::open(&dir)
            .and_then(|d| d.sync_all())
            .map_err(io(&dir))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> SaveFile {
        let al = Allowlist::parse(b"0x10 0\n0x199 0xffff # PERF_CTL\n", "test").unwrap();
        let snapshot = Snapshot {
            allowlist: Arc::new(al),
            cpus: vec![CpuId(0), CpuId(2)],
            values: vec![
                Ok(1),
                Ok(0x1234),
                Err(OpError::Errno(nix::errno::Errno::EIO)),
                Ok(u64::MAX),
            ],
        };
        let meta = SaveMeta::now(
            "node1".into(),
            CpuIdentity {
                vendor: "GenuineIntel".into(),
                family: 6,
                model: 85,
            },
            Some("6.1.0".into()),
            BackendKind::Safe,
        );
        SaveFile { meta, snapshot }
    }

    #[test]
    fn round_trip_keeps_every_value_and_error() {
        let f = sample();
        let text = f.to_json();
        let back = SaveFile::from_json(text.as_bytes(), Path::new("x")).unwrap();
        assert_eq!(back.meta, f.meta);
        assert_eq!(back.snapshot.values, f.snapshot.values);
        assert_eq!(back.snapshot.cpus, f.snapshot.cpus);
        assert_eq!(
            back.snapshot.allowlist.digest(),
            f.snapshot.allowlist.digest()
        );
        assert!(text.contains("\"EIO\""), "{text}");
    }

    #[test]
    fn truncated_corrupted_and_foreign_files_are_refused() {
        let text = sample().to_json();
        let p = Path::new("s.json");
        let cut = &text.as_bytes()[..text.len() / 2];
        assert!(matches!(
            SaveFile::from_json(cut, p),
            Err(SaveFileError::Malformed { .. })
        ));
        assert!(matches!(
            SaveFile::from_json(b"", p),
            Err(SaveFileError::Invalid { .. })
        ));
        let changed = text.replacen("0x0000000000001234", "0x0000000000001235", 1);
        assert!(matches!(
            SaveFile::from_json(changed.as_bytes(), p),
            Err(SaveFileError::Checksum { .. })
        ));
        let newer = text.replacen("\"version\": 1", "\"version\": 2", 1);
        let e = SaveFile::from_json(newer.as_bytes(), p)
            .unwrap_err()
            .to_string();
        assert!(e.contains("version 2"), "{e}");
        let f = SaveFile::from_json(text.as_bytes(), p).unwrap();
        assert!(f.check_host(p, "node1").is_ok());
        assert!(matches!(
            f.check_host(p, "node2"),
            Err(SaveFileError::ForeignHost { .. })
        ));
    }

    #[test]
    fn store_is_0600_and_refuses_symlinks() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("snap.json");
        sample().store(&p).unwrap();
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            SAVE_FILE_MODE
        );
        assert!(SaveFile::load(&p).is_ok());
        // Only the file itself is left behind, no temporary.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        let link = dir.path().join("link.json");
        std::os::unix::fs::symlink(&p, &link).unwrap();
        assert!(matches!(
            sample().store(&link),
            Err(SaveFileError::Symlink { .. })
        ));
    }
}
