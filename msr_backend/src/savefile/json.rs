//! Save-file format version 1 (written before the compact format): one JSON document with the
//! metadata, the allowlist, the CPU list and every value as a hex string (or the errno name where
//! it could not be read), sealed with a sha256 over the compact JSON of the same document without
//! its checksum. Read only: files written by earlier versions stay usable. A key we do not know is
//! refused, so no byte outside the checksummed fields can ride along.

use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{AllowlistRecord, SaveFile, SaveFileError, SaveMeta, FORMAT_NAME};
use crate::device::{BackendKind, OpError};
use crate::snapshot::Snapshot;
use crate::types::{hex_bytes as hex, CpuId, CpuIdentity, Hex64};

/// The version this module reads.
pub const VERSION: u32 = 1;

/// The largest version-1 file read: about 28 bytes a value, and version-1 files of the largest
/// nodes (4096 CPUs x 1000 MSRs) are about 115 MB.
pub const MAX_FILE_BYTES: u64 = 1 << 30;

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
#[serde(deny_unknown_fields)]
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

/// The version-1 document of `file` (its checksum included), as earlier versions wrote it: for
/// tests of reading such files, and for `msrsave` tests of old files.
pub fn document_text(file: &SaveFile) -> String {
    let s = &file.snapshot;
    let m = file.meta.clone();
    let mut doc = Document {
        format: FORMAT_NAME.to_string(),
        version: VERSION,
        host: m.host,
        created: m.created,
        job_id: m.job_id,
        cpu: m.cpu,
        kernel: m.kernel,
        backend: m.backend,
        msr_safe: m.msr_safe,
        allowlist: AllowlistRecord::of(&s.allowlist),
        cpu_list: crate::types::format_cpu_list(&s.cpus),
        cpus: s.cpus.clone(),
        values: (0..s.cpus.len())
            .map(|ci| s.cpu_values(ci).map(SavedValue).collect())
            .collect(),
        checksum: None,
    };
    doc.checksum = Some(checksum_of(&doc));
    let mut text = serde_json::to_string_pretty(&doc).unwrap_or_default();
    text.push('\n');
    text
}

/// Parse and validate a version-1 document; `path` is only used in messages.
pub fn parse(text: &[u8], path: &Path) -> Result<SaveFile, SaveFileError> {
    let invalid = |reason: String| SaveFileError::invalid(path, reason);
    let header: Header = serde_json::from_slice(text).map_err(|e| {
        invalid(format!(
            "not a complete JSON document ({e}); it may be truncated"
        ))
    })?;
    match header.format.as_deref() {
        Some(FORMAT_NAME) => {}
        Some(other) => return Err(invalid(format!("format is {other:?}, not {FORMAT_NAME:?}"))),
        None => {
            return Err(invalid(format!(
                "no \"format\": {FORMAT_NAME:?} key; this is not an msrsave save file"
            )))
        }
    }
    match header.version {
        Some(v) if v == u64::from(VERSION) => {}
        Some(v) => {
            return Err(invalid(format!(
                "a JSON document of format version {v}; this msrsave reads JSON version {VERSION} and compact version {} (use the msrsave that wrote it)",
                super::compact::VERSION
            )))
        }
        None => return Err(invalid("no format version".to_string())),
    }
    let mut doc: Document =
        serde_json::from_slice(text).map_err(|e| invalid(format!("unexpected content: {e}")))?;
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
    from_document(doc, path)
}

fn from_document(doc: Document, path: &Path) -> Result<SaveFile, SaveFileError> {
    let invalid = |reason: String| SaveFileError::invalid(path, reason);
    let allowlist = doc.allowlist.into_allowlist(path)?;
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
    if doc
        .cpus
        .last()
        .is_some_and(|c| c.0 >= crate::types::MAX_CPUS)
    {
        return Err(invalid(format!(
            "a CPU number at or above {}",
            crate::types::MAX_CPUS
        )));
    }
    let n = allowlist.len();
    for (cpu, row) in doc.cpus.iter().zip(&doc.values) {
        if row.len() != n {
            return Err(invalid(format!(
                "CPU {cpu} has {} values for {n} allowlisted MSRs",
                row.len()
            )));
        }
    }
    let meta = SaveMeta {
        host: doc.host,
        created: doc.created,
        job_id: doc.job_id,
        cpu: doc.cpu,
        kernel: doc.kernel,
        backend: doc.backend,
        msr_safe: doc.msr_safe,
        microcode: None, // version 1 never recorded it
        locked: Vec::new(),
    };
    let snapshot = Snapshot::from_outcomes(
        Arc::new(allowlist),
        doc.cpus,
        doc.values.into_iter().flatten().map(|v| v.0),
    );
    Ok(SaveFile { meta, snapshot })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::savefile::tests::sample;

    #[test]
    fn round_trip_keeps_every_value_and_error() {
        let f = sample();
        let text = document_text(&f);
        let back = parse(text.as_bytes(), Path::new("x")).unwrap();
        assert_eq!(back.meta, f.meta);
        assert_eq!(back.snapshot.outcomes(), f.snapshot.outcomes());
        assert_eq!(back.snapshot.cpus, f.snapshot.cpus);
        assert_eq!(
            back.snapshot.allowlist.digest(),
            f.snapshot.allowlist.digest()
        );
        assert!(text.contains("\"EIO\""), "{text}");
    }

    #[test]
    fn truncated_corrupted_newer_and_foreign_files_are_refused() {
        let text = document_text(&sample());
        let p = Path::new("s.json");
        let cut = &text.as_bytes()[..text.len() / 2];
        let e = parse(cut, p).unwrap_err().to_string();
        assert!(e.contains("truncated"), "{e}");
        let changed = text.replacen("0x0000000000001234", "0x0000000000001235", 1);
        assert!(matches!(
            parse(changed.as_bytes(), p),
            Err(SaveFileError::Checksum { .. })
        ));
        let newer = text.replacen("\"version\": 1", "\"version\": 3", 1);
        let e = parse(newer.as_bytes(), p).unwrap_err().to_string();
        assert!(e.contains("version 3"), "{e}");
        let f = parse(text.as_bytes(), p).unwrap();
        assert!(f.check_host(p, "node1").is_ok());
        assert!(matches!(
            f.check_host(p, "node2"),
            Err(SaveFileError::ForeignHost { .. })
        ));
    }

    /// The checksum of version 1 covers the known fields only: a key we do not know would ride
    /// along unsealed, so it is refused.
    #[test]
    fn an_unknown_key_is_refused() {
        let text = document_text(&sample());
        let extra = text.replacen("{\n", "{\n  \"comment\": \"planted\",\n", 1);
        let e = parse(extra.as_bytes(), Path::new("s.json"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown field `comment`"), "{e}");
    }
}
