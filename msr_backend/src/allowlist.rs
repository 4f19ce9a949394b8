//! msr-safe allowlists: parsed exactly as the kernel parses them (so that what we accept is what
//! `/dev/cpu/msr_allowlist` accepts, with the same errno), written back in the kernel's
//! read-back form, and picked for a CPU by msr-safe's file naming.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use sha2::{Digest, Sha256};

use crate::types::{MsrAddr, WriteMask};

/// The kernel's buffer limit: a write of more than 128 KiB is refused with E2BIG.
pub const MAX_ALLOWLIST_BYTES: usize = 128 * 1024;
/// A write of this many bytes or fewer clears the loaded list instead of parsing it.
pub const CLEARING_WRITE_MAX: usize = 2;
/// The header line the kernel puts before the first entry on read-back.
pub const READBACK_HEADER: &str = "#MSR       Write mask        \n";

/// One allowlisted MSR.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AllowlistEntry {
    pub addr: MsrAddr,
    pub mask: WriteMask,
    /// The comment on the entry's line, if any (msr-safe's lists name each MSR there).
    pub name: Option<String>,
}

/// An entry as the kernel's parser yields it (64-bit address, as the kernel keeps it), with the
/// 1-based line it started on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RawEntry {
    pub msr: u64,
    pub mask: u64,
    pub line: usize,
    pub comment: Option<String>,
}

/// Why the kernel would refuse a list, with the errno it would return.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KernelParseError {
    pub errno: Errno,
    pub line: usize,
    pub token: String,
    pub reason: &'static str,
}

impl fmt::Display for KernelParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: ", self.line)?;
        if !self.token.is_empty() {
            write!(f, "token {:?}: ", self.token)?;
        }
        write!(
            f,
            "{} (msr-safe would refuse it with {:?})",
            self.reason, self.errno
        )
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AllowlistError {
    #[error("allowlist {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("allowlist {source_name}: {error}")]
    Parse {
        source_name: String,
        error: KernelParseError,
    },
    #[error("allowlist {source_name}: {reason}")]
    Invalid { source_name: String, reason: String },
    #[error("no allowlist for {cpu} in {searched}: looked for {names}; pass --allowlist FILE or add a list for this CPU")]
    NoListForCpu {
        cpu: String,
        searched: String,
        names: String,
    },
}

/// The kernel's `isspace()` (lib/ctype.c): the C locale's six plus Latin-1 NBSP (0xA0).
fn kernel_isspace(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r' | 0xa0)
}

/// The kernel's `kstrtoull(s, 0, &v)`: optional `+`, base from the prefix (`0x` hex, leading `0`
/// octal, else decimal), no trailing characters (one trailing newline is allowed but a token
/// never has one here).
fn kstrtoull(tok: &[u8]) -> Result<u64, Errno> {
    let mut s = tok;
    if let [b'+', rest @ ..] = s {
        s = rest;
    }
    let (radix, digits): (u32, &[u8]) = match s {
        [b'0', x, d, ..] if (*x == b'x' || *x == b'X') && d.is_ascii_hexdigit() => (16, &s[2..]),
        [b'0', ..] => (8, s),
        _ => (10, s),
    };
    if digits.is_empty() {
        return Err(Errno::EINVAL);
    }
    let mut v: u64 = 0;
    for &c in digits {
        let d = match (c as char).to_digit(16) {
            Some(d) if d < radix => d as u64,
            _ => return Err(Errno::EINVAL),
        };
        v = v
            .checked_mul(radix as u64)
            .and_then(|v| v.checked_add(d))
            .ok_or(Errno::ERANGE)?;
    }
    Ok(v)
}

/// Parse allowlist text exactly as msr-safe's `write_allowlist` does (passes 1 and 2), returning
/// the entries it would load or the errno it would return.
pub fn kernel_parse(text: &[u8]) -> Result<Vec<RawEntry>, KernelParseError> {
    let err = |errno, line, token: &[u8], reason| KernelParseError {
        errno,
        line,
        token: String::from_utf8_lossy(token).into_owned(),
        reason,
    };
    if text.len() > MAX_ALLOWLIST_BYTES {
        return Err(err(
            Errno::E2BIG,
            1,
            b"",
            "larger than the kernel's 128 KiB limit",
        ));
    }
    if text.len() <= CLEARING_WRITE_MAX {
        return Err(err(
            Errno::ENOMSG,
            1,
            b"",
            "2 bytes or less: the kernel would clear the list",
        ));
    }
    // The kernel copies the text into a zeroed buffer: a NUL ends the input.
    let end = text.iter().position(|&b| b == 0).unwrap_or(text.len());
    let buf = &text[..end];
    let mut line = 1usize;
    let mut pos = 0usize;
    let mut entries = Vec::new();

    // Advance over whitespace, counting lines.
    let skip_spaces = |pos: &mut usize, line: &mut usize| {
        while *pos < buf.len() && kernel_isspace(buf[*pos]) {
            if buf[*pos] == b'\n' {
                *line += 1;
            }
            *pos += 1;
        }
    };

    loop {
        skip_spaces(&mut pos, &mut line);
        while pos < buf.len() && buf[pos] == b'#' {
            while pos < buf.len() && buf[pos] != b'\n' {
                pos += 1;
            }
            skip_spaces(&mut pos, &mut line);
        }
        if pos >= buf.len() {
            break;
        }
        let entry_line = line;
        let mut data = [0u64; 2];
        for (i, slot) in data.iter_mut().enumerate() {
            skip_spaces(&mut pos, &mut line);
            let start = pos;
            while pos < buf.len() && !kernel_isspace(buf[pos]) {
                pos += 1;
            }
            let tok = &buf[start..pos];
            if pos >= buf.len() {
                let what = if i == 0 { "MSR address" } else { "write mask" };
                let reason = if tok.is_empty() {
                    if i == 0 {
                        "input ends where an MSR address is expected"
                    } else {
                        "input ends where a write mask is expected"
                    }
                } else if what == "MSR address" {
                    "input ends right after the MSR address (no whitespace after the last token)"
                } else {
                    "input ends right after the write mask (add a newline at the end)"
                };
                return Err(err(Errno::EILSEQ, line, tok, reason));
            }
            *slot = kstrtoull(tok).map_err(|e| {
                let reason = match (e, i) {
                    (Errno::ERANGE, 0) => "MSR address does not fit in 64 bits",
                    (Errno::ERANGE, _) => "write mask does not fit in 64 bits",
                    (_, 0) => "not a number where an MSR address is expected",
                    _ => "not a number where a write mask is expected (a comment between address and mask is not allowed)",
                };
                err(e, line, tok, reason)
            })?;
            // The kernel steps over the one whitespace byte that ended the token.
            if buf[pos] == b'\n' {
                line += 1;
            }
            pos += 1;
        }
        let comment = trailing_comment(buf, pos);
        entries.push(RawEntry {
            msr: data[0],
            mask: data[1],
            line: entry_line,
            comment,
        });
    }
    if entries.is_empty() {
        return Err(err(
            Errno::ENOMSG,
            line,
            b"",
            "no entries (every line is blank or a comment)",
        ));
    }
    let mut seen: HashMap<u64, usize> = HashMap::with_capacity(entries.len());
    for e in &entries {
        if seen.insert(e.msr, e.line).is_some() {
            return Err(KernelParseError {
                errno: Errno::ENOTUNIQ,
                line: e.line,
                token: format!("{:#010x}", e.msr),
                reason: "MSR listed twice; msr-safe would refuse the list and leave the loaded list EMPTY",
            });
        }
    }
    Ok(entries)
}

/// The comment that follows an entry on its own line (`0x10 0x0 # "IA32_TSC"` -> `IA32_TSC`).
fn trailing_comment(buf: &[u8], mut pos: usize) -> Option<String> {
    // pos is just past the whitespace byte that ended the mask; if that byte was the newline,
    // the entry had no comment.
    if pos == 0 || buf.get(pos - 1) == Some(&b'\n') {
        return None;
    }
    while pos < buf.len() && buf[pos] != b'\n' && kernel_isspace(buf[pos]) {
        pos += 1;
    }
    if buf.get(pos) != Some(&b'#') {
        return None;
    }
    let end = buf[pos..]
        .iter()
        .position(|&b| b == b'\n')
        .map_or(buf.len(), |n| pos + n);
    let text = String::from_utf8_lossy(&buf[pos + 1..end]);
    let text = text.trim().trim_matches('"').trim();
    (!text.is_empty()).then(|| text.to_string())
}

/// A hasher for MSR addresses: the guard looks one up for every op, and SipHash's DoS
/// resistance buys nothing for a key set read from a root-owned file.
#[derive(Default, Clone, Copy)]
pub struct AddrHasher(u64);

impl std::hash::Hasher for AddrHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ b as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }
    fn write_u32(&mut self, n: u32) {
        self.0 = (n as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

type AddrIndex = HashMap<MsrAddr, usize, std::hash::BuildHasherDefault<AddrHasher>>;

/// A validated allowlist: the MSRs we may read and the bits we may write.
#[derive(Clone, Debug)]
pub struct Allowlist {
    entries: Vec<AllowlistEntry>,
    index: AddrIndex,
    source: String,
}

impl Allowlist {
    /// Parse allowlist text as the kernel does, then require what our devices need (32-bit
    /// addresses).
    pub fn parse(text: &[u8], source: &str) -> Result<Allowlist, AllowlistError> {
        let raw = kernel_parse(text).map_err(|error| AllowlistError::Parse {
            source_name: source.to_string(),
            error,
        })?;
        let mut entries = Vec::with_capacity(raw.len());
        for r in raw {
            let addr = u32::try_from(r.msr).map_err(|_| AllowlistError::Invalid {
                source_name: source.to_string(),
                reason: format!(
                    "line {}: MSR {:#x} is above 0xffffffff; msr-safe accepts it but no device can address it",
                    r.line, r.msr
                ),
            })?;
            entries.push(AllowlistEntry {
                addr: MsrAddr(addr),
                mask: WriteMask(r.mask),
                name: r.comment,
            });
        }
        Self::from_entries(entries, source)
    }

    pub fn from_file(path: &Path) -> Result<Allowlist, AllowlistError> {
        let text = std::fs::read(path).map_err(|source| AllowlistError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text, &path.display().to_string())
    }

    pub fn from_entries(
        entries: Vec<AllowlistEntry>,
        source: &str,
    ) -> Result<Allowlist, AllowlistError> {
        let mut index = AddrIndex::with_capacity_and_hasher(entries.len(), Default::default());
        for (i, e) in entries.iter().enumerate() {
            if index.insert(e.addr, i).is_some() {
                return Err(AllowlistError::Invalid {
                    source_name: source.to_string(),
                    reason: format!("MSR {} is listed twice", e.addr),
                });
            }
        }
        Ok(Allowlist {
            entries,
            index,
            source: source.to_string(),
        })
    }

    pub fn entries(&self) -> &[AllowlistEntry] {
        &self.entries
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn writable_count(&self) -> usize {
        self.entries.iter().filter(|e| e.mask.is_writable()).count()
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    pub fn get(&self, addr: MsrAddr) -> Option<&AllowlistEntry> {
        self.index.get(&addr).map(|&i| &self.entries[i])
    }

    /// The write mask of `addr`, or `None` if it is not allowlisted.
    pub fn mask(&self, addr: MsrAddr) -> Option<WriteMask> {
        self.get(addr).map(|e| e.mask)
    }

    pub fn contains(&self, addr: MsrAddr) -> bool {
        self.index.contains_key(&addr)
    }

    /// The list as `/dev/cpu/msr_allowlist` reads it back: header, then `0x%08X 0x%016X`.
    pub fn to_kernel_text(&self) -> String {
        let mut s = String::with_capacity(READBACK_HEADER.len() + self.entries.len() * 30);
        if !self.entries.is_empty() {
            s.push_str(READBACK_HEADER);
        }
        for e in &self.entries {
            s.push_str(&format!("0x{:08X} 0x{:016X}\n", e.addr.0, e.mask.0));
        }
        s
    }

    /// `sha256:<hex>` over the read-back form: the same for every spelling of the same list.
    pub fn digest(&self) -> String {
        let d = Sha256::digest(self.to_kernel_text().as_bytes());
        format!("sha256:{}", hex(&d))
    }
}

/// msr-safe's names for a CPU's list: `al_<FF>_<MM>` (`printf 'al_%.2X_%X'`) and, before
/// v1.8, `al_<ff><mm>`.
pub fn allowlist_file_names(id: &crate::node::CpuIdentity) -> Vec<String> {
    vec![
        format!("al_{:02X}_{:X}", id.family, id.model),
        format!("al_{:02x}{:02x}", id.family, id.model),
    ]
}

/// The first list for `id` in `dirs` (in order, current naming first).
pub fn select_allowlist(
    id: &crate::node::CpuIdentity,
    dirs: &[PathBuf],
) -> Result<PathBuf, AllowlistError> {
    let names = allowlist_file_names(id);
    for dir in dirs {
        for name in &names {
            let p = dir.join(name);
            if p.is_file() {
                return Ok(p);
            }
        }
    }
    Err(AllowlistError::NoListForCpu {
        cpu: id.to_string(),
        searched: dirs
            .iter()
            .map(|d| d.display().to_string())
            .collect::<Vec<_>>()
            .join(", "),
        names: names.join(" or "),
    })
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Vec<(u64, u64)>, Errno> {
        kernel_parse(s.as_bytes())
            .map(|v| v.into_iter().map(|e| (e.msr, e.mask)).collect())
            .map_err(|e| e.errno)
    }

    #[test]
    fn kernel_grammar() {
        assert_eq!(
            parse("0x10 0x0\n0x199 0xffff # PERF_CTL\n"),
            Ok(vec![(0x10, 0), (0x199, 0xffff)])
        );
        // Any base, any width.
        assert_eq!(parse("16 010\n"), Ok(vec![(16, 8)]));
        // Tokens, not lines: a third token starts the next entry.
        assert_eq!(
            parse("0x10 0x0 0x11\n0x1\n"),
            Ok(vec![(0x10, 0), (0x11, 1)])
        );
        // Comment in place of an address skips the line.
        assert_eq!(
            parse("# header\n  # indented\n0x10 0x0\n"),
            Ok(vec![(0x10, 0)])
        );
        assert_eq!(parse("0x10 # c\n0x0\n"), Err(Errno::EINVAL));
        assert_eq!(parse("0x10 0x0"), Err(Errno::EILSEQ));
        assert_eq!(parse("0x10 "), Err(Errno::EILSEQ));
        assert_eq!(parse("0x10 0x10000000000000000\n"), Err(Errno::ERANGE));
        assert_eq!(parse("# only comments\n"), Err(Errno::ENOMSG));
        assert_eq!(parse("0x10 0x0\n0x10 0x1\n"), Err(Errno::ENOTUNIQ));
        assert_eq!(parse("0xg 0\n"), Err(Errno::EINVAL));
        assert_eq!(parse("0x 0\n"), Err(Errno::EINVAL));
        assert_eq!(parse("+0x10 +1\n"), Ok(vec![(0x10, 1)]));
        assert_eq!(parse("09 0\n"), Err(Errno::EINVAL));
        let big = "0x10 0x0\n".repeat(MAX_ALLOWLIST_BYTES / 9 + 1);
        assert_eq!(parse(&big), Err(Errno::E2BIG));
    }

    #[test]
    fn errors_name_the_line_and_token() {
        let e = kernel_parse(b"0x10 0x0\n\n0x11 zz\n").unwrap_err();
        assert_eq!(
            (e.line, e.token.as_str(), e.errno),
            (3, "zz", Errno::EINVAL)
        );
    }

    #[test]
    fn names_come_from_the_entry_comment_and_readback_is_kernel_format() {
        let a = Allowlist::parse(b"0x199 0xffff # \"SMSR_PERF_CTL\"\n0x10 0\n", "t").unwrap();
        assert_eq!(a.entries()[0].name.as_deref(), Some("SMSR_PERF_CTL"));
        assert_eq!(a.entries()[1].name, None);
        assert_eq!(
            a.to_kernel_text(),
            "#MSR       Write mask        \n0x00000199 0x000000000000FFFF\n0x00000010 0x0000000000000000\n"
        );
        let back = Allowlist::parse(a.to_kernel_text().as_bytes(), "back").unwrap();
        assert_eq!(back.digest(), a.digest());
    }
}
