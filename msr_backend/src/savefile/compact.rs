//! Save-file format version 2, the compact one (`docs/save-format.md` has the byte layout).
//!
//! ```text
//! MAGIC "MSRSNAP\n" | version u32 LE (2) | header length u32 LE | header (JSON) | table | sha256
//! ```
//!
//! The header holds the metadata, the allowlist and the CPU list. The table has one column per
//! allowlist entry, in allowlist order; a column stores each distinct outcome once (9 bytes: a tag
//! and a u64) and, when CPUs differ, which outcome each CPU holds. Control registers that hold
//! one value on every CPU cost 14 bytes, not one value per CPU. The sha256 covers every byte
//! before it, exactly as written, and is checked over the bytes read: a file is parsed without
//! being serialised again, and no byte of it is outside the seal. A header field we do not know
//! is refused.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use nix::errno::Errno;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{
    AllowlistRecord, LockState, SaveFile, SaveFileError, SaveMeta, FORMAT_NAME, SAVE_FILE_MODE,
};
use crate::device::{BackendKind, OpError};
use crate::fsio;
use crate::snapshot::Snapshot;
use crate::types::{format_cpu_list, hex_bytes, parse_cpu_list, CpuIdentity, MAX_CPUS};

/// The first bytes of every compact save file.
pub const MAGIC: &[u8; 8] = b"MSRSNAP\n";
/// The version this module writes and reads.
pub const VERSION: u32 = 2;
/// Magic, version and header length.
pub const PREFIX_BYTES: usize = 16;
/// The sha256 at the end.
pub const DIGEST_BYTES: usize = 32;
/// The largest header read: far above the 32768 entries a loaded allowlist can have, with names.
pub const MAX_HEADER_BYTES: u32 = 16 << 20;
/// One outcome: a tag and a u64.
pub const OUTCOME_BYTES: usize = 9;
/// The largest compact file read: a header of the maximum size and a table of 8192 CPUs x
/// 32768 MSRs at worst (every CPU's own value). Real files are far smaller; [`size_bound`] gives
/// the bound for a file's own header.
pub const MAX_FILE_BYTES: u64 = PREFIX_BYTES as u64
    + MAX_HEADER_BYTES as u64
    + 32768 * (5 + MAX_CPUS as u64 * OUTCOME_BYTES as u64)
    + DIGEST_BYTES as u64;

// Column layouts.
const ALL_SAME: u8 = 0;
const PER_CPU: u8 = 1;
const INDEX_U8: u8 = 2;
const INDEX_U16: u8 = 3;

// Outcome tags.
const TAG_VALUE: u8 = 0;
const TAG_ERRNO: u8 = 1;
const TAG_NOT_ALLOWLISTED: u8 = 2;
const TAG_OUTSIDE_MASK: u8 = 3;

/// The header: metadata, allowlist and CPUs.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Header {
    format: String,
    version: u32,
    host: String,
    created: String,
    job_id: Option<String>,
    cpu: CpuIdentity,
    kernel: Option<String>,
    backend: BackendKind,
    msr_safe: Option<String>,
    /// The microcode revision; optional (files without it are version 2 as well).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    microcode: Option<String>,
    allowlist: AllowlistRecord,
    /// The CPUs, in the kernel's list syntax; one table row each, in this order.
    cpus: String,
    /// Lock bits set at save time; optional (files without it are version 2 as well).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    locked: Vec<LockState>,
}

/// A hasher for outcomes as u64 pairs: the keys are register values, not attacker-chosen.
#[derive(Default)]
struct OutcomeHasher(u64);

impl Hasher for OutcomeHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }
    fn write_u8(&mut self, n: u8) {
        self.0 = (self.0 ^ u64::from(n)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

type OutcomeMap = HashMap<(u8, u64), u16, BuildHasherDefault<OutcomeHasher>>;

fn encode(o: Result<u64, OpError>) -> (u8, u64) {
    match o {
        Ok(v) => (TAG_VALUE, v),
        Err(OpError::Errno(e)) => (TAG_ERRNO, e as i32 as u64),
        Err(OpError::NotAllowlisted) => (TAG_NOT_ALLOWLISTED, 0),
        Err(OpError::OutsideMask { bits }) => (TAG_OUTSIDE_MASK, bits),
    }
}

fn decode(tag: u8, payload: u64) -> Option<Result<u64, OpError>> {
    Some(match tag {
        TAG_VALUE => Ok(payload),
        TAG_ERRNO => Err(OpError::Errno(Errno::from_raw(
            i32::try_from(payload).ok().filter(|e| *e > 0)?,
        ))),
        TAG_NOT_ALLOWLISTED => Err(OpError::NotAllowlisted),
        TAG_OUTSIDE_MASK => Err(OpError::OutsideMask { bits: payload }),
        _ => return None,
    })
}

/// Passes bytes on and hashes them on the way.
struct Sealing<W: Write> {
    inner: W,
    hash: Sha256,
}

impl<W: Write> Write for Sealing<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hash.update(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

fn put_outcome(out: &mut impl Write, (tag, payload): (u8, u64)) -> std::io::Result<()> {
    let mut b = [0u8; OUTCOME_BYTES];
    b[0] = tag;
    b[1..].copy_from_slice(&payload.to_le_bytes());
    out.write_all(&b)
}

/// Write `file` in the compact format (checksum included) to `out`, in one pass.
pub fn write(file: &SaveFile, out: &mut impl Write) -> std::io::Result<()> {
    let s = &file.snapshot;
    let m = &file.meta;
    let header = Header {
        format: FORMAT_NAME.to_string(),
        version: VERSION,
        host: m.host.clone(),
        created: m.created.clone(),
        job_id: m.job_id.clone(),
        cpu: m.cpu.clone(),
        kernel: m.kernel.clone(),
        backend: m.backend,
        msr_safe: m.msr_safe.clone(),
        microcode: m.microcode.clone(),
        allowlist: AllowlistRecord::of(&s.allowlist),
        cpus: format_cpu_list(&s.cpus),
        locked: m.locked.clone(),
    };
    let header = serde_json::to_vec(&header).map_err(std::io::Error::other)?;
    let header_len = u32::try_from(header.len())
        .ok()
        .filter(|l| *l <= MAX_HEADER_BYTES)
        .ok_or_else(|| std::io::Error::other("save-file header too large"))?;
    let mut w = Sealing {
        inner: out,
        hash: Sha256::new(),
    };
    w.write_all(MAGIC)?;
    w.write_all(&VERSION.to_le_bytes())?;
    w.write_all(&header_len.to_le_bytes())?;
    w.write_all(&header)?;
    let n = s.allowlist.len();
    let c = s.cpus.len();
    let mut column: Vec<(u8, u64)> = Vec::with_capacity(c);
    let mut distinct: Vec<(u8, u64)> = Vec::new();
    let mut index: Vec<u16> = Vec::with_capacity(c);
    let mut seen = OutcomeMap::default();
    for e in 0..n {
        column.clear();
        column.extend((0..c).map(|ci| encode(s.value(ci, e))));
        let Some(&first) = column.first() else {
            // No CPUs: an empty table.
            continue;
        };
        if column.iter().all(|o| *o == first) {
            w.write_all(&[ALL_SAME])?;
            put_outcome(&mut w, first)?;
            continue;
        }
        distinct.clear();
        index.clear();
        seen.clear();
        for &o in &column {
            let next = distinct.len() as u16;
            let i = *seen.entry(o).or_insert_with(|| {
                distinct.push(o);
                next
            });
            index.push(i);
        }
        if distinct.len() == c {
            w.write_all(&[PER_CPU])?;
            for &o in &column {
                put_outcome(&mut w, o)?;
            }
            continue;
        }
        let wide = distinct.len() > 256;
        w.write_all(&[if wide { INDEX_U16 } else { INDEX_U8 }])?;
        w.write_all(&(distinct.len() as u32).to_le_bytes())?;
        for &o in &distinct {
            put_outcome(&mut w, o)?;
        }
        if wide {
            for &i in &index {
                w.write_all(&i.to_le_bytes())?;
            }
        } else {
            let bytes: Vec<u8> = index.iter().map(|&i| i as u8).collect();
            w.write_all(&bytes)?;
        }
    }
    let digest = w.hash.finalize();
    w.inner.write_all(&digest)?;
    w.inner.flush()
}

/// Write `file` to `path` atomically and durably (mode 0600, never through a link).
pub fn store(file: &SaveFile, path: &Path) -> Result<(), SaveFileError> {
    fsio::write_atomically_with(path, SAVE_FILE_MODE, |w| write(file, w))
        .map_err(SaveFileError::Write)
}

/// Reads the table, refusing to run past its end.
struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let end = self.pos.checked_add(n)?;
        let s = self.bytes.get(self.pos..end)?;
        self.pos = end;
        Some(s)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    fn u32(&mut self) -> Option<u32> {
        self.take(4)
            .and_then(|b| b.try_into().ok())
            .map(u32::from_le_bytes)
    }
    fn outcome(&mut self) -> Option<Result<u64, OpError>> {
        let b = self.take(OUTCOME_BYTES)?;
        let payload = u64::from_le_bytes(b[1..].try_into().ok()?);
        decode(b[0], payload)
    }
}

/// The header length a compact file's first bytes give, if they are a compact prefix.
pub fn header_len(prefix: &[u8]) -> Option<u32> {
    let p = prefix.get(..PREFIX_BYTES)?;
    if !p.starts_with(MAGIC) {
        return None;
    }
    Some(u32::from_le_bytes(p[12..16].try_into().ok()?))
}

/// The most bytes a compact file with this header can have (every column at its widest), so
/// that a file announcing few CPUs and MSRs cannot make us read gigabytes.
pub fn size_bound(prefix_and_header: &[u8], path: &Path) -> Result<u64, SaveFileError> {
    let header = parse_header(prefix_and_header, path)?.0;
    let n = header.allowlist.entries.len() as u64;
    let c = parse_cpu_list(&header.cpus)
        .map_err(|e| SaveFileError::invalid(path, format!("header: {e}")))?
        .len() as u64;
    Ok(prefix_and_header.len() as u64 + n * (5 + c * OUTCOME_BYTES as u64) + DIGEST_BYTES as u64)
}

/// Check the prefix and parse the header; returns it and where the table starts.
fn parse_header(bytes: &[u8], path: &Path) -> Result<(Header, usize), SaveFileError> {
    let invalid = |reason: String| SaveFileError::invalid(path, reason);
    if bytes.len() < PREFIX_BYTES {
        return Err(invalid(
            "shorter than a compact save file's prefix; it may be truncated".into(),
        ));
    }
    let version = u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]);
    if version != VERSION {
        return Err(invalid(format!(
            "compact format version {version}; this msrsave reads version {VERSION} (use the msrsave that wrote it)"
        )));
    }
    let len = header_len(bytes).unwrap_or(u32::MAX);
    if len > MAX_HEADER_BYTES {
        return Err(invalid(format!(
            "header of {len} bytes, more than the {MAX_HEADER_BYTES} any save file has"
        )));
    }
    let end = PREFIX_BYTES + len as usize;
    let text = bytes
        .get(PREFIX_BYTES..end)
        .ok_or_else(|| invalid("the header is cut short; the file may be truncated".into()))?;
    let header: Header =
        serde_json::from_slice(text).map_err(|e| invalid(format!("header: {e}")))?;
    if header.format != FORMAT_NAME || header.version != VERSION {
        return Err(invalid(format!(
            "header says format {:?} version {}, not {FORMAT_NAME:?} version {VERSION}",
            header.format, header.version
        )));
    }
    Ok((header, end))
}

/// Parse and validate a compact file; `path` is only used in messages.
pub fn parse(bytes: &[u8], path: &Path) -> Result<SaveFile, SaveFileError> {
    let invalid = |reason: String| SaveFileError::invalid(path, reason);
    if bytes.len() < PREFIX_BYTES + DIGEST_BYTES {
        return Err(invalid(
            "shorter than a compact save file can be; it may be truncated".into(),
        ));
    }
    let (sealed, recorded) = bytes.split_at(bytes.len() - DIGEST_BYTES);
    let actual = Sha256::digest(sealed);
    if actual.as_slice() != recorded {
        return Err(SaveFileError::Checksum {
            path: path.to_path_buf(),
            recorded: format!("sha256:{}", hex_bytes(recorded)),
            actual: format!("sha256:{}", hex_bytes(&actual)),
        });
    }
    let (header, table_start) = parse_header(sealed, path)?;
    let cpus = parse_cpu_list(&header.cpus).map_err(|e| invalid(format!("header: {e}")))?;
    let allowlist = header.allowlist.into_allowlist(path)?;
    let n = allowlist.len();
    let c = cpus.len();
    let mut values = vec![0u64; n * c];
    let mut errors: Vec<(u32, OpError)> = Vec::new();
    let mut cur = Cursor {
        bytes: &sealed[table_start..],
        pos: 0,
    };
    let short = |e: usize| invalid(format!("the table ends inside the column of entry {e}"));
    let mut outcomes: Vec<Result<u64, OpError>> = Vec::with_capacity(c.min(256));
    if c > 0 {
        for e in 0..n {
            let mut set = |ci: usize, o: Result<u64, OpError>| {
                let i = ci * n + e;
                match o {
                    Ok(v) => values[i] = v,
                    Err(err) => errors.push((i as u32, err)),
                }
            };
            match cur.u8().ok_or_else(|| short(e))? {
                ALL_SAME => {
                    let o = cur.outcome().ok_or_else(|| short(e))?;
                    (0..c).for_each(|ci| set(ci, o));
                }
                PER_CPU => {
                    for ci in 0..c {
                        let o = cur.outcome().ok_or_else(|| short(e))?;
                        set(ci, o);
                    }
                }
                layout @ (INDEX_U8 | INDEX_U16) => {
                    let k = cur.u32().ok_or_else(|| short(e))? as usize;
                    if k < 2 || k > c {
                        return Err(invalid(format!(
                            "entry {e}: {k} distinct outcomes for {c} CPUs"
                        )));
                    }
                    outcomes.clear();
                    for _ in 0..k {
                        outcomes.push(cur.outcome().ok_or_else(|| short(e))?);
                    }
                    let width = if layout == INDEX_U8 { 1 } else { 2 };
                    let idx = cur.take(c * width).ok_or_else(|| short(e))?;
                    for ci in 0..c {
                        let i = if width == 1 {
                            usize::from(idx[ci])
                        } else {
                            usize::from(u16::from_le_bytes([idx[2 * ci], idx[2 * ci + 1]]))
                        };
                        let o = *outcomes.get(i).ok_or_else(|| {
                            invalid(format!("entry {e}: CPU index {i} beyond {k} outcomes"))
                        })?;
                        set(ci, o);
                    }
                }
                other => return Err(invalid(format!("entry {e}: unknown column layout {other}"))),
            }
        }
    }
    if cur.pos != cur.bytes.len() {
        return Err(invalid(format!(
            "{} bytes after the table",
            cur.bytes.len() - cur.pos
        )));
    }
    errors.sort_unstable_by_key(|e| e.0);
    let meta = SaveMeta {
        host: header.host,
        created: header.created,
        job_id: header.job_id,
        cpu: header.cpu,
        kernel: header.kernel,
        backend: header.backend,
        msr_safe: header.msr_safe,
        microcode: header.microcode,
        locked: header.locked,
    };
    Ok(SaveFile {
        meta,
        snapshot: Snapshot::from_parts(Arc::new(allowlist), cpus, values, errors),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::savefile::tests::{sample, sample_of};

    fn bytes_of(f: &SaveFile) -> Vec<u8> {
        let mut v = Vec::new();
        write(f, &mut v).unwrap();
        v
    }

    /// Recompute the seal after changing bytes, as a forger would.
    fn reseal(mut b: Vec<u8>) -> Vec<u8> {
        let n = b.len() - DIGEST_BYTES;
        let d = Sha256::digest(&b[..n]);
        b[n..].copy_from_slice(&d);
        b
    }

    #[test]
    fn round_trip_keeps_every_value_and_error() {
        let f = sample();
        let b = bytes_of(&f);
        assert!(b.starts_with(MAGIC));
        let back = parse(&b, Path::new("x")).unwrap();
        assert_eq!(back.meta, f.meta);
        assert_eq!(back.snapshot.outcomes(), f.snapshot.outcomes());
        assert_eq!(back.snapshot.cpus, f.snapshot.cpus);
        assert_eq!(
            back.snapshot.allowlist.digest(),
            f.snapshot.allowlist.digest()
        );
    }

    #[test]
    fn every_column_layout_round_trips() {
        // 300 CPUs: one column all the same, one per CPU, one per package (u8 index), one with
        // 299 distinct values (u16 index), one with errors among values.
        let f = sample_of(300, |cpu, e| match e {
            0 => Ok(7),
            1 => Ok(u64::from(cpu) << 32 | 0xdead),
            2 => Ok(if cpu < 150 { 0x10 } else { 0x20 }),
            3 => Ok(u64::from(cpu.min(298))),
            _ if cpu % 7 == 0 => Err(OpError::Errno(Errno::EIO)),
            _ if cpu % 11 == 0 => Err(OpError::OutsideMask { bits: 0xf0 }),
            _ if cpu == 13 => Err(OpError::NotAllowlisted),
            _ => Ok(0x1234),
        });
        let b = bytes_of(&f);
        let back = parse(&b, Path::new("x")).unwrap();
        assert_eq!(back.snapshot.outcomes(), f.snapshot.outcomes());
    }

    #[test]
    fn repeated_values_are_stored_once() {
        let same = bytes_of(&sample_of(256, |_, _| Ok(0x1234_5678)));
        let differ = bytes_of(&sample_of(256, |cpu, e| {
            Ok(u64::from(cpu) * 1000 + e as u64)
        }));
        // 5 entries x 256 CPUs: 14 bytes a column against 1 + 256 x 9.
        assert!(
            differ.len() - same.len() >= 5 * (256 * OUTCOME_BYTES - OUTCOME_BYTES),
            "{} {}",
            same.len(),
            differ.len()
        );
    }

    #[test]
    fn truncated_corrupted_newer_and_trailing_bytes_are_refused() {
        let b = bytes_of(&sample());
        let p = Path::new("s.msr");
        for cut in [b.len() - 1, b.len() / 2, PREFIX_BYTES + 3, 10] {
            assert!(parse(&b[..cut], p).is_err(), "cut at {cut}");
        }
        let mut flipped = b.clone();
        let last_value = flipped.len() - DIGEST_BYTES - 3;
        flipped[last_value] ^= 1;
        assert!(matches!(
            parse(&flipped, p),
            Err(SaveFileError::Checksum { .. })
        ));
        let mut newer = b.clone();
        newer[8] = 3;
        let e = parse(&reseal(newer), p).unwrap_err().to_string();
        assert!(e.contains("version 3"), "{e}");
        let mut longer = b[..b.len() - DIGEST_BYTES].to_vec();
        longer.extend_from_slice(b"xx");
        longer.extend_from_slice(&[0; DIGEST_BYTES]);
        let e = parse(&reseal(longer), p).unwrap_err().to_string();
        assert!(e.contains("2 bytes after the table"), "{e}");
    }

    #[test]
    fn lock_states_round_trip_and_files_without_them_stay_byte_identical() {
        let plain = sample();
        let b = bytes_of(&plain);
        let header = &b[PREFIX_BYTES..PREFIX_BYTES + header_len(&b).unwrap() as usize];
        assert!(
            !String::from_utf8_lossy(header).contains("locked"),
            "no lock, no field: the header is what earlier version-2 writers wrote"
        );
        let mut locked = sample();
        locked.meta.locked = vec![LockState {
            msr: crate::types::MsrAddr(0x610),
            lock_bit: 63,
            scope: crate::msrs::scope::Scope::Package,
            domains: vec!["package 0".into(), "package 1".into()],
            cpus: "0-3".into(),
        }];
        let back = parse(&bytes_of(&locked), Path::new("x")).unwrap();
        assert_eq!(back.meta.locked, locked.meta.locked);
        assert_eq!(back.meta, locked.meta);
    }

    #[test]
    fn an_unknown_header_field_is_refused() {
        let b = bytes_of(&sample());
        let len = header_len(&b).unwrap() as usize;
        let header = std::str::from_utf8(&b[PREFIX_BYTES..PREFIX_BYTES + len]).unwrap();
        let planted = header.replacen('{', "{\"comment\":\"planted\",", 1);
        let mut forged = b[..12].to_vec();
        forged.extend_from_slice(&(planted.len() as u32).to_le_bytes());
        forged.extend_from_slice(planted.as_bytes());
        forged.extend_from_slice(&b[PREFIX_BYTES + len..]);
        let e = parse(&reseal(forged), Path::new("s.msr"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown field `comment`"), "{e}");
    }

    #[test]
    fn store_is_0600_leaves_no_temp_and_refuses_symlinks() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("snap.msr");
        sample().store(&p).unwrap();
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            SAVE_FILE_MODE
        );
        assert!(SaveFile::load(&p).is_ok());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        let link = dir.path().join("link.msr");
        std::os::unix::fs::symlink(&p, &link).unwrap();
        assert!(matches!(
            sample().store(&link),
            Err(SaveFileError::Write(fsio::WriteError::Symlink { .. }))
        ));
    }

    #[test]
    fn a_header_announcing_little_bounds_the_read() {
        let b = bytes_of(&sample());
        let len = header_len(&b).unwrap() as usize;
        let bound = size_bound(&b[..PREFIX_BYTES + len], Path::new("s")).unwrap();
        assert!(bound >= b.len() as u64);
        assert!(bound < 1024 * 1024);
    }
}
