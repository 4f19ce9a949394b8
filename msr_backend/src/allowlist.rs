//! msr-safe allowlists: parsed exactly as the kernel parses them (so that what we accept is what
//! `/dev/cpu/msr_allowlist` accepts, with the same errno), written back in the kernel's
//! read-back form, picked for a CPU by msr-safe's file naming ([`select_allowlist`], which skips
//! templates), and checked for what the kernel accepts but an admin should know ([`lint`]).
//!
//! The parser follows msr-safe's `write_allowlist` and `parse_next_allowlist_entry`
//! (msr_allowlist.c, 1.8.0) with the kernel's `isspace()` and `kstrtoull(.., 0, ..)`; it was
//! checked against a user-space transliteration of that C code on thousands of generated inputs
//! and on every list msr-safe ships.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use sha2::{Digest, Sha256};

use crate::msrs;
use crate::types::CpuIdentity;
use crate::types::{MsrAddr, WriteMask};

/// The kernel's buffer limit: a write of more than 128 KiB is refused with E2BIG.
pub const MAX_ALLOWLIST_BYTES: usize = 128 * 1024;
/// A write of this many bytes or fewer clears the loaded list instead of parsing it.
pub const CLEARING_WRITE_MAX: usize = 2;
/// The header line the kernel puts before the first entry on read-back.
pub const READBACK_HEADER: &str = "#MSR       Write mask        \n";
/// The length of one entry as the kernel reads it back (`0x%08llX 0x%016llX\n`, for addresses
/// below 2^32).
pub const READBACK_ENTRY_BYTES: usize = 30;

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

/// The reason given for a write of 2 bytes or less. msr-safe does not parse such a write: it
/// returns success and clears the loaded list. [`kernel_parse`] reports it as an error (nothing
/// would be loaded) with errno ENOMSG, but the kernel itself returns no error.
const CLEARING_REASON: &str =
    "2 bytes or less: msr-safe does not parse such a write, it returns success and CLEARS the loaded list";

impl KernelParseError {
    /// True for a write of 2 bytes or less, which msr-safe accepts without error and which
    /// clears the loaded list (the `errno` field is then ours, not the kernel's).
    pub fn is_clearing_write(&self) -> bool {
        self.errno == Errno::ENOMSG && self.reason == CLEARING_REASON
    }

    /// True when loading the text would leave msr-safe with an EMPTY allowlist rather than
    /// keeping the one already loaded: a clearing write, or a duplicate MSR (ENOTUNIQ is found in
    /// the second pass, after the old list was dropped).
    pub fn empties_loaded_list(&self) -> bool {
        self.is_clearing_write() || self.errno == Errno::ENOTUNIQ
    }

    /// The error without its line: token, reason and what msr-safe returns.
    pub fn describe(&self) -> String {
        let mut s = String::new();
        if !self.token.is_empty() {
            s.push_str(&format!("token {:?}: ", self.token));
        }
        if self.is_clearing_write() {
            s.push_str(self.reason);
        } else {
            s.push_str(&format!(
                "{} (msr-safe would refuse it with {:?})",
                self.reason, self.errno
            ));
        }
        s
    }
}

impl fmt::Display for KernelParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}", self.line, self.describe())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AllowlistError {
    #[error("allowlist")]
    Read(#[source] crate::fsio::InputError),
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
    /// Every list found for the CPU is a template: all of its entries are commented out, so
    /// msr-safe would refuse it with ENOMSG and keep whatever list it had (msr-safe issue #185).
    #[error("no usable allowlist for {cpu}: found only {templates}, template(s) with no active entries (every entry is commented out: msr-safe would refuse it with ENOMSG and keep its old list); uncomment the MSRs to allow and set their write masks, or put an active list for this CPU in {searched} (looked for {names}), or pass --allowlist FILE")]
    TemplateOnly {
        cpu: String,
        /// The template files found, in search order.
        templates: String,
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

/// One entry as the tokenizer saw it: the kernel's view plus where its tokens were, for the lint.
#[derive(Clone, Debug)]
struct Scanned {
    raw: RawEntry,
    /// The line the write mask token was on (the kernel does not care if it differs from the
    /// address's line).
    mask_line: usize,
    /// The two tokens as written.
    tokens: [Vec<u8>; 2],
}

/// The result of the kernel's first pass: the entries read up to the first error, and that error.
struct Scan {
    entries: Vec<Scanned>,
    error: Option<KernelParseError>,
    /// The line the input ended on (where ENOMSG is reported).
    last_line: usize,
}

fn kernel_error(errno: Errno, line: usize, token: &[u8], reason: &'static str) -> KernelParseError {
    KernelParseError {
        errno,
        line,
        token: String::from_utf8_lossy(token).into_owned(),
        reason,
    }
}

/// The bytes msr-safe parses: it copies the write into a zeroed buffer and stops at the first NUL.
fn parsed_part(text: &[u8]) -> &[u8] {
    let end = text.iter().position(|&b| b == 0).unwrap_or(text.len());
    &text[..end]
}

/// Which text is parsed: what a writer hands the kernel (its 128 KiB limit applies), or what
/// the kernel reads back of a loaded list (up to 30 bytes an entry: larger than what was written).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Text {
    Written,
    ReadBack,
}

/// msr-safe's pass 1 (`parse_next_allowlist_entry` until the end or an error), keeping lines.
fn scan(text: &[u8]) -> Scan {
    scan_as(text, Text::Written)
}

fn scan_as(text: &[u8], kind: Text) -> Scan {
    let mut scan = Scan {
        entries: Vec::new(),
        error: None,
        last_line: 1,
    };
    if kind == Text::Written && text.len() > MAX_ALLOWLIST_BYTES {
        scan.error = Some(kernel_error(
            Errno::E2BIG,
            1,
            b"",
            "larger than the kernel's 128 KiB limit",
        ));
        return scan;
    }
    if text.len() <= CLEARING_WRITE_MAX {
        scan.error = Some(kernel_error(Errno::ENOMSG, 1, b"", CLEARING_REASON));
        return scan;
    }
    let buf = parsed_part(text);
    let mut line = 1usize;
    let mut pos = 0usize;

    // Advance over whitespace (the kernel's skip_spaces), counting lines.
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
        // A '#' where an address is expected skips to the end of its line (not past it).
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
        let mut mask_line = line;
        let mut data = [0u64; 2];
        let mut tokens: [Vec<u8>; 2] = [Vec::new(), Vec::new()];
        for (i, slot) in data.iter_mut().enumerate() {
            skip_spaces(&mut pos, &mut line);
            if i == 1 {
                mask_line = line;
            }
            let start = pos;
            while pos < buf.len() && !kernel_isspace(buf[pos]) {
                pos += 1;
            }
            let tok = &buf[start..pos];
            // The kernel needs a whitespace byte after each token: "Premature EOF".
            if pos >= buf.len() {
                let reason = match (i, tok.is_empty()) {
                    (0, true) => "input ends where an MSR address is expected",
                    (_, true) => "input ends where a write mask is expected",
                    (0, false) => {
                        "input ends right after the MSR address (no whitespace after the last token)"
                    }
                    (_, false) => {
                        "input ends right after the write mask (add a newline at the end)"
                    }
                };
                scan.error = Some(kernel_error(Errno::EILSEQ, line, tok, reason));
                scan.last_line = line;
                return scan;
            }
            tokens[i] = tok.to_vec();
            match kstrtoull(tok) {
                Ok(v) => *slot = v,
                Err(e) => {
                    let reason = match (e, i) {
                        (Errno::ERANGE, 0) => "MSR address does not fit in 64 bits",
                        (Errno::ERANGE, _) => "write mask does not fit in 64 bits",
                        (_, 0) => "not a number where an MSR address is expected",
                        _ => "not a number where a write mask is expected (a comment between address and mask is not allowed)",
                    };
                    scan.error = Some(kernel_error(e, line, tok, reason));
                    scan.last_line = line;
                    return scan;
                }
            }
            // The kernel steps over the one whitespace byte that ended the token.
            if buf[pos] == b'\n' {
                line += 1;
            }
            pos += 1;
        }
        let comment = trailing_comment(buf, pos);
        scan.entries.push(Scanned {
            raw: RawEntry {
                msr: data[0],
                mask: data[1],
                line: entry_line,
                comment,
            },
            mask_line,
            tokens,
        });
    }
    scan.last_line = line;
    scan
}

const DUPLICATE_REASON: &str =
    "MSR listed twice; msr-safe would refuse the list and leave the loaded list EMPTY";
const NO_ENTRIES_REASON: &str = "no entries (every line is blank or a comment)";

/// The first duplicate in file order, as msr-safe's pass 2 finds it.
fn first_duplicate<'a>(
    entries: impl IntoIterator<Item = &'a RawEntry>,
) -> Option<KernelParseError> {
    let mut seen: HashMap<u64, usize> = HashMap::new();
    for e in entries {
        if seen.insert(e.msr, e.line).is_some() {
            return Some(KernelParseError {
                errno: Errno::ENOTUNIQ,
                line: e.line,
                token: format!("{:#010x}", e.msr),
                reason: DUPLICATE_REASON,
            });
        }
    }
    None
}

/// What msr-safe returns for the scanned text: `None` when it loads the entries.
fn kernel_verdict(scan: &Scan) -> Option<KernelParseError> {
    if let Some(e) = &scan.error {
        return Some(e.clone());
    }
    if scan.entries.is_empty() {
        return Some(kernel_error(
            Errno::ENOMSG,
            scan.last_line,
            b"",
            NO_ENTRIES_REASON,
        ));
    }
    first_duplicate(scan.entries.iter().map(|s| &s.raw))
}

/// Parse allowlist text exactly as msr-safe's `write_allowlist` does (passes 1 and 2), returning
/// the entries it would load or the errno it would return.
///
/// One case is not a kernel error: a write of 2 bytes or less is not parsed at all, msr-safe
/// returns success and clears its list. It is reported here as ENOMSG (nothing would be loaded);
/// [`KernelParseError::is_clearing_write`] tells it apart.
pub fn kernel_parse(text: &[u8]) -> Result<Vec<RawEntry>, KernelParseError> {
    verdict(scan(text))
}

fn verdict(scan: Scan) -> Result<Vec<RawEntry>, KernelParseError> {
    match kernel_verdict(&scan) {
        Some(e) => Err(e),
        None => Ok(scan.entries.into_iter().map(|s| s.raw).collect()),
    }
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

/// Read an allowlist file: a regular file (a FIFO or a device is refused, never waited on) of
/// at most the kernel's 128 KiB (more is what msr-safe refuses with E2BIG).
pub fn read_file(path: &Path) -> Result<Vec<u8>, AllowlistError> {
    crate::fsio::read_file(
        path,
        crate::fsio::Expect::Regular,
        crate::fsio::Links::Follow,
        MAX_ALLOWLIST_BYTES as u64,
        "allowlist (msr-safe takes at most 128 KiB)",
    )
    .map_err(AllowlistError::Read)
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
        Self::from_kernel(kernel_parse(text), source)
    }

    /// Parse the loaded list as the kernel reads it back: the same grammar, without the limit of
    /// a write (17,772 entries, the most a 128 KiB write can load, read back as 533 KB).
    pub fn parse_readback(text: &[u8], source: &str) -> Result<Allowlist, AllowlistError> {
        Self::from_kernel(verdict(scan_as(text, Text::ReadBack)), source)
    }

    fn from_kernel(
        parsed: Result<Vec<RawEntry>, KernelParseError>,
        source: &str,
    ) -> Result<Allowlist, AllowlistError> {
        let raw = parsed.map_err(|error| AllowlistError::Parse {
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
        let text = read_file(path)?;
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

    /// The position of `addr` in the list (the index of its values in a snapshot row).
    pub fn index_of(&self, addr: MsrAddr) -> Option<usize> {
        self.index.get(&addr).copied()
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
        format!("sha256:{}", crate::types::hex_bytes(&d))
    }
}

impl AllowlistEntry {
    /// The entry's name comment, or else the well-known name of its MSR ([`msrs::msr_name`]).
    pub fn display_name(&self) -> Option<&str> {
        self.name.as_deref().or_else(|| msrs::msr_name(self.addr))
    }
}

/// How many commented-out entries (`# 0x... 0x...`, msr-safe's template form) the text has.
/// A list with none active but some of these is a template: see [`select_allowlist`].
pub fn template_entry_count(text: &[u8]) -> usize {
    parsed_part(text)
        .split(|&b| b == b'\n')
        .filter(|l| is_commented_entry(l))
        .count()
}

/// `#`, optional whitespace, then two numbers: an entry commented out.
fn is_commented_entry(line: &[u8]) -> bool {
    let line = trim_ascii_start(line);
    let Some(rest) = line.strip_prefix(b"#") else {
        return false;
    };
    let mut toks = rest.split(|&b| kernel_isspace(b)).filter(|t| !t.is_empty());
    matches!(
        (toks.next(), toks.next()),
        (Some(a), Some(m)) if kstrtoull(a).is_ok() && kstrtoull(m).is_ok()
    )
}

fn trim_ascii_start(mut s: &[u8]) -> &[u8] {
    while let [first, rest @ ..] = s {
        if !kernel_isspace(*first) {
            break;
        }
        s = rest;
    }
    s
}

/// The file names msr-safe gives the allowlist of a CPU, newest convention first:
/// `al_<FF>_<MM>` (`printf 'al_%.2X_%X' family model`, since v1.8) and `al_<ff><mm>` (lower case,
/// both padded to two digits, v1.7.0 and older).
pub fn allowlist_file_names(id: &CpuIdentity) -> Vec<String> {
    vec![
        format!("al_{:02X}_{:X}", id.family, id.model),
        format!("al_{:02x}{:02x}", id.family, id.model),
    ]
}

/// The allowlist file for a CPU: the first of [`allowlist_file_names`] found in `dirs`, searching
/// the directories in order and, in each, the new name before the old one.
///
/// A file with no active entry (msr-safe's templates: every entry commented out; or an empty
/// file) is skipped, since msr-safe would refuse it with ENOMSG; if only such files are found the
/// error is [`AllowlistError::TemplateOnly`], naming them. A file that exists but cannot be read
/// is an error, not skipped. Other problems in the chosen file are left to the loader, which
/// reports them with line and token.
pub fn select_allowlist(id: &CpuIdentity, dirs: &[PathBuf]) -> Result<PathBuf, AllowlistError> {
    let names = allowlist_file_names(id);
    let mut templates: Vec<PathBuf> = Vec::new();
    for dir in dirs {
        for name in &names {
            let path = dir.join(name);
            if !path.is_file() {
                continue;
            }
            let text = read_file(&path)?;
            match kernel_parse(&text) {
                Err(e) if e.errno == Errno::ENOMSG => templates.push(path),
                _ => return Ok(path),
            }
        }
    }
    let cpu = id.to_string();
    let searched = if dirs.is_empty() {
        "no directories".to_string()
    } else {
        dirs.iter()
            .map(|d| d.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let names = names.join(" or ");
    if templates.is_empty() {
        return Err(AllowlistError::NoListForCpu {
            cpu,
            searched,
            names,
        });
    }
    Err(AllowlistError::TemplateOnly {
        cpu,
        templates: templates
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", "),
        searched,
        names,
    })
}

/// A token kstrtoull reads as octal with a value that differs from its decimal reading
/// (`010`, `0610`; not `0`, `00` or `0x10`).
fn is_octal_token(tok: &[u8]) -> bool {
    let t = tok.strip_prefix(b"+").unwrap_or(tok);
    match t {
        [b'0', rest @ ..] => {
            let is_hex =
                matches!(rest, [x, d, ..] if (*x == b'x' || *x == b'X') && d.is_ascii_hexdigit());
            !is_hex && rest.iter().any(|&b| b != b'0')
        }
        _ => false,
    }
}

/// How much a lint finding matters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Severity {
    /// The kernel accepts the list but something in it is probably not what was meant.
    Warning,
    /// msr-safe refuses the list (or would clear or empty the loaded one), or our tools refuse it.
    Error,
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Severity::Warning => "warning",
            Severity::Error => "error",
        })
    }
}

/// One thing [`lint`] found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LintFinding {
    /// 1-based line; 0 when the finding is about the whole list.
    pub line: usize,
    pub severity: Severity,
    pub message: String,
    /// The kernel's error, when the finding is one (same line and token as [`kernel_parse`]).
    pub kernel_error: Option<KernelParseError>,
}

impl fmt::Display for LintFinding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line > 0 {
            write!(f, "line {}: ", self.line)?;
        }
        write!(f, "{}: {}", self.severity, self.message)
    }
}

/// Lists larger than this get a warning: a few more lines and msr-safe refuses them (E2BIG).
pub const LINT_SIZE_WARNING_BYTES: usize = MAX_ALLOWLIST_BYTES / 10 * 9;
/// At most this many lines get their own non-ASCII warning.
const LINT_MAX_NON_ASCII_LINES: usize = 5;

/// Check allowlist text for what msr-safe refuses (errors, with the same line and token as
/// [`kernel_parse`]) and for what it accepts but an admin should know about (warnings): a third
/// number on a line, an entry split over lines, a number with a leading 0 (octal), a missing
/// final newline, a write mask on a read-only MSR, no writable MSR at all, NUL bytes, non-ASCII
/// bytes, a size close to the 128 KiB limit. An MSR above 32 bits is an error (msr-safe accepts
/// it but no device can address it, and [`Allowlist::parse`] refuses it). Every duplicate is
/// reported, not only the first. Findings are sorted by line (whole-list findings, line 0, first).
pub fn lint(text: &[u8]) -> Vec<LintFinding> {
    let mut out: Vec<LintFinding> = Vec::new();
    let warn = |line: usize, message: String| LintFinding {
        line,
        severity: Severity::Warning,
        message,
        kernel_error: None,
    };
    let error = |line: usize, message: String| LintFinding {
        line,
        severity: Severity::Error,
        message,
        kernel_error: None,
    };
    let kernel = |e: KernelParseError, extra: String| LintFinding {
        line: e.line,
        severity: Severity::Error,
        message: format!("{}{extra}", e.describe()),
        kernel_error: Some(e),
    };

    let scan = scan(text);
    let entries: Vec<&Scanned> = scan.entries.iter().collect();
    let parsed = parsed_part(text);

    // What the kernel says, then every further duplicate (the kernel stops at the first).
    let verdict = kernel_verdict(&scan);
    if let Some(e) = &verdict {
        let extra = match e.errno {
            Errno::E2BIG => format!(" ({} bytes)", text.len()),
            Errno::ENOMSG if !e.is_clearing_write() => match template_entry_count(text) {
                0 => String::new(),
                n => format!(
                    "; this is a template: its {n} entries are all commented out (uncomment the MSRs to allow and set their write masks)"
                ),
            },
            Errno::ENOTUNIQ => entries
                .iter()
                .find(|s| format!("{:#010x}", s.raw.msr) == e.token)
                .map(|s| format!(" (first listed on line {})", s.raw.line))
                .unwrap_or_default(),
            _ => String::new(),
        };
        out.push(kernel(e.clone(), extra));
    }
    if scan.error.is_none() {
        let mut first_seen: HashMap<u64, usize> = HashMap::new();
        let mut skipped_kernel_one = false;
        for s in &entries {
            let Some(&first) = first_seen.get(&s.raw.msr) else {
                first_seen.insert(s.raw.msr, s.raw.line);
                continue;
            };
            if !skipped_kernel_one {
                // Reported above as the kernel's ENOTUNIQ.
                skipped_kernel_one = true;
                continue;
            }
            out.push(error(
                s.raw.line,
                format!(
                    "MSR {:#010x} listed again (first on line {first}); remove one",
                    s.raw.msr
                ),
            ));
        }
    }

    // Token layout the kernel accepts but nobody means.
    for (i, s) in entries.iter().enumerate() {
        let prev_mask_line = i.checked_sub(1).map(|p| entries[p].mask_line);
        if prev_mask_line == Some(s.raw.line) {
            out.push(warn(
                s.raw.line,
                format!(
                    "more than two numbers on this line: msr-safe reads the third one ({:#x}) as the MSR of another entry, with the next number ({:#x}, line {}) as its write mask",
                    s.raw.msr, s.raw.mask, s.mask_line
                ),
            ));
        } else if s.mask_line != s.raw.line {
            out.push(warn(
                s.raw.line,
                format!(
                    "MSR {:#x} has no write mask on its line: msr-safe takes the next number ({:#x}, line {}) as its mask",
                    s.raw.msr, s.raw.mask, s.mask_line
                ),
            ));
        }
    }

    // Numbers with a leading 0 are octal to the kernel: 0610 is 0x188, not 0x610.
    for s in &entries {
        for (tok, what, value) in [
            (&s.tokens[0], "MSR address", s.raw.msr),
            (&s.tokens[1], "write mask", s.raw.mask),
        ] {
            if is_octal_token(tok) {
                let line = if what == "MSR address" {
                    s.raw.line
                } else {
                    s.mask_line
                };
                out.push(warn(
                    line,
                    format!(
                        "{what} {:?} has a leading 0, so msr-safe reads it as octal ({value:#x}); write it in hex with 0x if that is not meant",
                        String::from_utf8_lossy(tok)
                    ),
                ));
            }
        }
    }

    // Entries our tools cannot use, and masks that make no sense.
    let mut writable = 0usize;
    for s in &entries {
        let (msr, mask) = (s.raw.msr, s.raw.mask);
        if mask != 0 {
            writable += 1;
        }
        let Ok(addr) = u32::try_from(msr) else {
            out.push(error(
                s.raw.line,
                format!(
                    "MSR {msr:#x} is above 32 bits: msr-safe accepts it but no device can address it (offsets and batch ops are 32-bit), and msrsave refuses such a list"
                ),
            ));
            continue;
        };
        if mask != 0 && msrs::is_read_only(MsrAddr(addr)) {
            let name = msrs::msr_name(MsrAddr(addr)).unwrap_or("?");
            out.push(warn(
                s.raw.line,
                format!(
                    "MSR {addr:#x} ({name}) is read-only or a free-running counter, but its write mask is {mask:#x}: a restore would write it back; use mask 0"
                ),
            ));
        }
    }
    if scan.error.is_none() && !entries.is_empty() && writable == 0 {
        out.push(warn(
            0,
            format!(
                "none of the {} entries has a write mask: the list allows reading only, a restore has nothing to put back",
                entries.len()
            ),
        ));
    }

    // Bytes.
    if text.len() > LINT_SIZE_WARNING_BYTES && text.len() <= MAX_ALLOWLIST_BYTES {
        out.push(warn(
            0,
            format!(
                "{} bytes, close to msr-safe's limit of {MAX_ALLOWLIST_BYTES}: {} more and it refuses the list (E2BIG); shorten comments",
                text.len(),
                MAX_ALLOWLIST_BYTES - text.len() + 1
            ),
        ));
    }
    if parsed.len() < text.len() {
        let line = 1 + parsed.iter().filter(|&&b| b == b'\n').count();
        let rest = &text[parsed.len()..];
        let ignored_entries = rest
            .split(|&b| b == b'\n')
            .filter(|l| {
                let l: Vec<u8> = l.iter().copied().filter(|&b| b != 0).collect();
                trim_ascii_start(&l)
                    .first()
                    .is_some_and(|b| b.is_ascii_digit() || *b == b'+')
            })
            .count();
        let what = if ignored_entries > 0 {
            format!(", including {ignored_entries} line(s) that look like entries")
        } else {
            String::new()
        };
        out.push(warn(
            line,
            format!(
                "NUL byte: msr-safe stops reading here and ignores the {} bytes after it{what}",
                rest.len()
            ),
        ));
    }
    if scan.error.is_none() && !parsed.is_empty() && parsed.last() != Some(&b'\n') {
        let line = 1 + parsed.iter().filter(|&&b| b == b'\n').count();
        out.push(warn(
            line,
            "no newline at the end: harmless while the last line ends in a comment or blank, but if it becomes an entry msr-safe refuses the list (EILSEQ)".to_string(),
        ));
    }
    let mut non_ascii_lines = 0usize;
    for (i, l) in text.split(|&b| b == b'\n').enumerate() {
        if l.iter().any(|&b| b >= 0x80) {
            non_ascii_lines += 1;
            if non_ascii_lines <= LINT_MAX_NON_ASCII_LINES {
                out.push(warn(
                    i + 1,
                    "non-ASCII bytes: harmless in a comment, but elsewhere msr-safe reads them as part of a number (EINVAL), except byte 0xA0 which it takes for a space".to_string(),
                ));
            }
        }
    }
    if non_ascii_lines > LINT_MAX_NON_ASCII_LINES {
        out.push(warn(
            0,
            format!(
                "non-ASCII bytes on {} more lines",
                non_ascii_lines - LINT_MAX_NON_ASCII_LINES
            ),
        ));
    }
    out.sort_by_key(|f| f.line);
    out
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

    fn id(family: u32, model: u32) -> CpuIdentity {
        CpuIdentity {
            vendor: "GenuineIntel".into(),
            family,
            model,
        }
    }

    #[test]
    fn clearing_writes_are_not_reported_as_a_kernel_errno() {
        let e = kernel_parse(b"\n\n").unwrap_err();
        assert!(e.is_clearing_write() && e.empties_loaded_list());
        assert!(!e.to_string().contains("refuse"), "{e}");
        assert!(e.to_string().contains("CLEARS"), "{e}");
        let e = kernel_parse(b"\n\n\n").unwrap_err();
        assert_eq!(e.errno, Errno::ENOMSG);
        assert!(!e.is_clearing_write() && !e.empties_loaded_list());
        let e = kernel_parse(b"0x10 0\n0x10 1\n").unwrap_err();
        assert!(e.empties_loaded_list());
    }

    #[test]
    fn a_readback_larger_than_a_write_parses() {
        // The most entries a 128 KiB write can load: short, distinct addresses.
        let mut text = String::new();
        let mut n = 0u32;
        while text.len() + format!("{n} 0\n").len() <= MAX_ALLOWLIST_BYTES {
            text.push_str(&format!("{n} 0\n"));
            n += 1;
        }
        let list = Allowlist::parse(text.as_bytes(), "w").unwrap();
        assert_eq!(list.len(), 17_772);
        let back = list.to_kernel_text();
        assert!(back.len() > 500_000);
        assert!(
            Allowlist::parse(back.as_bytes(), "r").is_err(),
            "the write limit"
        );
        assert_eq!(
            Allowlist::parse_readback(back.as_bytes(), "r")
                .unwrap()
                .digest(),
            list.digest()
        );
    }

    #[test]
    fn kernel_parse_boundaries() {
        // Exactly 128 KiB is accepted, one more byte is E2BIG.
        let mut t = b"0x10 0x0\n".to_vec();
        t.resize(MAX_ALLOWLIST_BYTES, b' ');
        assert_eq!(parse(std::str::from_utf8(&t).unwrap()), Ok(vec![(0x10, 0)]));
        t.push(b' ');
        assert_eq!(kernel_parse(&t).unwrap_err().errno, Errno::E2BIG);
        // A comment right after the mask with no space makes the mask token invalid.
        assert_eq!(parse("0x10 0x0#c\n"), Err(Errno::EINVAL));
        // A trailing comment without newline after an entry is fine.
        assert_eq!(parse("0x10 0x0 # c"), Ok(vec![(0x10, 0)]));
        // Overflow is ERANGE even with junk after the digits (the kernel checks overflow first).
        assert_eq!(parse("0x1ffffffffffffffffz 0\n"), Err(Errno::ERANGE));
        assert_eq!(parse("18446744073709551615 0\n"), Ok(vec![(u64::MAX, 0)]));
        assert_eq!(parse("0x00000000000000000010 0\n"), Ok(vec![(0x10, 0)]));
        // Latin-1 NBSP separates tokens, like the kernel's isspace().
        assert_eq!(kernel_parse(b"0x10\xa00x1\n").map(|v| v[0].mask), Ok(1));
        // Lines count through CRLF and vertical tabs.
        let e = kernel_parse(b"0x10 0\r\n\x0b\n0x11 q\n").unwrap_err();
        assert_eq!((e.line, e.errno), (3, Errno::EINVAL));
    }

    #[test]
    fn file_names_and_selection() {
        assert_eq!(allowlist_file_names(&id(6, 0x8F)), ["al_06_8F", "al_068f"]);
        assert_eq!(allowlist_file_names(&id(6, 0x5)), ["al_06_5", "al_0605"]);
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        let dirs = [a.path().to_path_buf(), b.path().to_path_buf()];
        std::fs::write(b.path().join("al_068f"), "0x10 0\n").unwrap();
        assert_eq!(
            select_allowlist(&id(6, 0x8F), &dirs).unwrap(),
            b.path().join("al_068f")
        );
        std::fs::write(b.path().join("al_06_8F"), "0x10 0\n").unwrap();
        assert_eq!(
            select_allowlist(&id(6, 0x8F), &dirs).unwrap(),
            b.path().join("al_06_8F")
        );
        // A template in the first dir is skipped; only templates: TemplateOnly naming them.
        std::fs::write(a.path().join("al_06_8F"), "# 0x10 0x0 # TSC\n").unwrap();
        assert_eq!(
            select_allowlist(&id(6, 0x8F), &dirs).unwrap(),
            b.path().join("al_06_8F")
        );
        std::fs::remove_file(b.path().join("al_06_8F")).unwrap();
        std::fs::write(b.path().join("al_068f"), "\n").unwrap();
        let e = select_allowlist(&id(6, 0x8F), &dirs).unwrap_err();
        let msg = e.to_string();
        assert!(matches!(e, AllowlistError::TemplateOnly { .. }), "{msg}");
        assert!(
            msg.contains(&a.path().join("al_06_8F").display().to_string()),
            "{msg}"
        );
        assert!(
            msg.contains(&b.path().join("al_068f").display().to_string()),
            "{msg}"
        );
        // A broken list is returned: the loader reports its line and token.
        std::fs::write(b.path().join("al_068f"), "0x10 zz\n").unwrap();
        assert_eq!(
            select_allowlist(&id(6, 0x8F), &dirs).unwrap(),
            b.path().join("al_068f")
        );
        // A directory with the name is not a list.
        std::fs::create_dir(a.path().join("al_06_55")).unwrap();
        assert!(matches!(
            select_allowlist(&id(6, 0x55), &dirs),
            Err(AllowlistError::NoListForCpu { .. })
        ));
        assert!(matches!(
            select_allowlist(&id(6, 0x55), &[]),
            Err(AllowlistError::NoListForCpu { .. })
        ));
    }

    #[test]
    fn lint_is_quiet_on_a_good_list_and_sorted() {
        assert_eq!(lint(b"# ok\n0x10 0x0 # TSC\n0x199 0xffff\n"), vec![]);
        let f = lint(b"0x199 0xffff\n0x10 0x1\n0x11 0x0 0x12 0x0\n# caf\xe9\n");
        let lines: Vec<usize> = f.iter().map(|f| f.line).collect();
        assert!(lines.windows(2).all(|w| w[0] <= w[1]), "{f:?}");
        assert!(f.iter().all(|f| f.severity == Severity::Warning), "{f:?}");
        assert_eq!(lines, [2, 3, 4], "{f:?}");
        // Near the size limit.
        let mut big = b"0x199 0xffff\n".to_vec();
        big.resize(LINT_SIZE_WARNING_BYTES + 1, b'\n');
        assert!(lint(&big).iter().any(|f| f.message.contains("close to")));
        // Octal only where it changes the value.
        assert!(is_octal_token(b"010") && is_octal_token(b"+07"));
        assert!(!is_octal_token(b"0") && !is_octal_token(b"000") && !is_octal_token(b"0x10"));
        // A name comes from the comment, else from the table.
        let a = Allowlist::parse(b"0x199 0xffff\n0x10 0 # my TSC\n0x12345 0\n", "t").unwrap();
        let names: Vec<_> = a.entries().iter().map(|e| e.display_name()).collect();
        assert_eq!(names, [Some("IA32_PERF_CTL"), Some("my TSC"), None]);
    }
}
