//! alparse: the host half of tests/msr_safe's differential test of our allowlist parser
//! (`msr_backend::allowlist::kernel_parse`) against the real msr-safe module.
//!
//!   alparse gen DIR [LISTS_DIR...]   write the allowlist texts to DIR/cases/<name> and the
//!                                    sentinel list to DIR/sentinel; LISTS_DIR adds every regular
//!                                    file in it as a case too (real allowlists); prints the count
//!   alparse judge DIR RESULTS        compare what the kernel did (RESULTS, from the guest) with
//!                                    what kernel_parse says it does; one PASS/FAIL line per case
//!
//! In the guest, `rawmsr al-probe` loads the sentinel, then the case in one write(), and reads the
//! list back; the guest reports per case "ALCASE <name> <sha256 of the read-back> <bytes>
//! <OK N | ERRNO>". From kernel_parse's verdict we predict the write's result and the read-back:
//! the entries for an accepted text, an empty list where the kernel drops the loaded list
//! (a duplicate MSR, a write of 2 bytes or less), the sentinel where it keeps the old list.
//!
//! Disagreements on purpose are named, not failed: kernel_parse reports a write of 2 bytes or
//! less as an error ("clearing write", errno ENOMSG) where the kernel returns success and clears
//! its list; and `msrsave allowlist load` (Allowlist::parse) refuses what kernel_parse accepts
//! when an MSR address is above 32 bits.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use msr_backend::allowlist::{kernel_parse, Allowlist, RawEntry, READBACK_HEADER};
use sha2::{Digest, Sha256};

/// Loaded before every case: what the read-back shows when the kernel kept its old list.
const SENTINEL: &[u8] = b"0xDEAD0001 0x5A5A\n";

/// The kernel's read-back of a list: the header and the first entry, then one entry per record.
fn render(entries: &[(u64, u64)]) -> Vec<u8> {
    let mut s = String::new();
    for (i, (msr, mask)) in entries.iter().enumerate() {
        if i == 0 {
            s.push_str(READBACK_HEADER);
        }
        // The kernel's "0x%08llX 0x%016llX\n".
        let _ = writeln!(s, "0x{msr:08X} 0x{mask:016X}");
    }
    s.into_bytes()
}

fn pairs(entries: &[RawEntry]) -> Vec<(u64, u64)> {
    entries.iter().map(|e| (e.msr, e.mask)).collect()
}

fn sha256_hex(b: &[u8]) -> String {
    Sha256::digest(b).iter().fold(String::new(), |mut s, x| {
        let _ = write!(s, "{x:02x}");
        s
    })
}

/// A small deterministic generator (xorshift64*), so that the random cases are the same on
/// every run and a failure can be reproduced.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn pick<'a>(&mut self, v: &[&'a [u8]]) -> &'a [u8] {
        v[self.below(v.len())]
    }
}

/// Entries `0x{base+i:X} 0x{mask:X}\n` for i in 0..n.
fn entries_text(base: u64, n: u64, mask: u64) -> Vec<u8> {
    let mut s = String::new();
    for i in 0..n {
        let _ = writeln!(s, "0x{:X} 0x{mask:X}", base + i);
    }
    s.into_bytes()
}

/// `text` padded with spaces before its last byte (a newline) to exactly `len` bytes.
fn padded(mut text: Vec<u8>, len: usize) -> Vec<u8> {
    let last = text.pop().unwrap_or(b'\n');
    text.resize(len - 1, b' ');
    text.push(last);
    text
}

fn cases() -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<(&str, Vec<u8>)> = Vec::new();
    let mut add = |name: &'static str, text: &[u8]| v.push((name, text.to_vec()));

    // Sizes around the clearing write (2 bytes or less is not parsed).
    add("size0-empty", b"");
    add("size1-newline", b"\n");
    add("size1-digit", b"7");
    add("size2-two-newlines", b"\n\n");
    add("size2-digit-newline", b"1\n");
    add("size2-nul-nul", b"\0\0");
    add("size3-two-tokens-no-newline", b"1 2");
    add("size3-spaces", b"   ");
    add("size3-nul-first", b"\0 \n");
    add("size4-one-entry", b"1 2\n");
    add("size4-comment", b"#x\n\n");

    // Valid lists, bases and widths.
    add("valid-one-entry", b"0x10 0x0\n");
    add("valid-hex-upper-prefix", b"0X1F 0XFF\n");
    add("valid-hex-lower-digits", b"0xc0000103 0xffffffff\n");
    add("valid-decimal", b"16 255\n");
    add("valid-octal", b"020 0777\n");
    add("valid-zero-msr", b"0 0\n");
    add("valid-double-zero", b"00 00\n");
    add("valid-plus-sign", b"+16 +0x10\n");
    add(
        "valid-padded-hex",
        b"0x0000000000000010 0x000000000000FFFF\n",
    );
    add(
        "valid-many-leading-zeros",
        b"0x00000000000000000000000000000010 00000000000000000000000000000000000007\n",
    );
    add("valid-mask-all-ones-hex", b"0x10 0xFFFFFFFFFFFFFFFF\n");
    add(
        "valid-mask-all-ones-decimal",
        b"0x10 18446744073709551615\n",
    );
    add(
        "valid-mask-all-ones-octal",
        b"0x10 01777777777777777777777\n",
    );
    add("valid-mixed-bases", b"0x10 0x0\n17 7\n022 0x3\n0X13 010\n");
    add(
        "valid-several",
        b"0x10 0x0\n0x1A0 0x0000000000400000\n0x199 0xFFFF\n0x610 0x00FFFFFF00FFFFFF\n",
    );
    add("valid-entries-on-one-line", b"0x10 0x0 0x11 0x1 0x12 0x2\n");
    add("valid-newline-between-msr-and-mask", b"0x10\n0x0\n");
    add(
        "valid-blank-lines-between",
        b"\n\n0x10 0x0\n\n\n0x11 0x0\n\n",
    );
    add("valid-leading-blank-lines", b"\n\n\n0x10 0x0\n");
    add("valid-trailing-space-no-newline", b"0x10 0x0 ");
    add("valid-trailing-tab-no-newline", b"0x10 0x0\t");
    add("valid-trailing-cr-no-newline", b"0x10 0x0\r");
    add("valid-crlf", b"0x10 0x0\r\n0x11 0xF\r\n");
    add("valid-tabs", b"0x10\t\t0x0\n\t0x11\t0xF\n");
    add("valid-vt-ff-separators", b"0x10\x0b0x0\x0c0x11\x0b0x1\n");
    add("valid-nbsp-separator", b"0x10\xa00x0\n");
    add("valid-nbsp-line-end", b"0x10 0x0\xa0");
    add("valid-nbsp-indent", b"\xa0\xa00x10 0x0\n");
    add("valid-third-token-next-entry", b"0x10 0x0 0x20\n0x0\n");
    add(
        "valid-comment-lines",
        b"# header\n#MSR Write mask\n0x10 0x0\n# 0x11 0x0\n0x12 0x1\n",
    );
    add(
        "valid-comment-after-entry",
        b"0x10 0x0 # IA32_TSC\n0x11 0x1 #another\n",
    );
    add("valid-comment-no-space-after-entry", b"0x10 0x0 #x\n");
    add("valid-comment-at-eof-no-newline", b"0x10 0x0\n# the end");
    add("valid-comment-only-hash-at-eof", b"0x10 0x0\n#");
    add("valid-indented-comment", b"   # c\n\t# c\n0x10 0x0\n");
    add("valid-hash-hash", b"## c\n0x10 0x0\n");
    add(
        "valid-nul-after-list",
        b"0x10 0x0\n\0garbage that is never parsed",
    );
    add("valid-nul-after-list-bad-token", b"0x10 0x0\n\0zz zz\n");
    add("valid-msr-32bit-max", b"0xFFFFFFFF 0x1\n");
    add("valid-readback-form", b"#MSR       Write mask        \n0x00000010 0x0000000000000000\n0x000001A0 0x0000000000400000\n");
    add("valid-lower-upper-x", b"0x1a 0X1B\n");
    add(
        "valid-mask-zero-forms",
        b"0x10 0\n0x11 00\n0x12 0x0\n0x13 +0\n",
    );
    add(
        "valid-long-zero-token",
        &[b"0".repeat(300), b" 0x1\n".to_vec()].concat(),
    );

    // Above 32 bits: the kernel takes 64-bit MSR addresses (a u64 hash key).
    add("msr64-above-32-bits", b"0x100000000 0x0\n");
    add("msr64-max", b"0xFFFFFFFFFFFFFFFF 0x1\n");
    add(
        "msr64-differs-above-32-bits",
        b"0x10 0x0\n0x100000010 0x1\n",
    );
    add("msr64-decimal", b"4294967296 0x0\n");

    // Premature end of input: no whitespace after the last token.
    add("eof-no-newline", b"0x10 0x0");
    add("eof-second-entry-no-newline", b"0x10 0x0\n0x11 0x1");
    add("eof-after-msr", b"0x10");
    add("eof-after-msr-space", b"0x10 ");
    add("eof-after-msr-newline", b"0x10\n");
    add("eof-third-token-alone", b"0x10 0x0 0x20\n");
    add("eof-nul-inside-msr", b"0x10\0 0x0\n");
    add("eof-nul-after-msr-space", b"0x10 \0 0x0\n");
    add("eof-nul-inside-mask", b"0x10 0x0\0\n");
    add("eof-after-comment-line-then-msr", b"# c\n0x10");

    // Bad tokens.
    add("bad-hex-digit", b"0xG 0x0\n");
    add("bad-0x-alone", b"0x 0x0\n");
    add("bad-0x-alone-mask", b"0x10 0x\n");
    add("bad-negative", b"-1 0x0\n");
    add("bad-negative-mask", b"0x10 -1\n");
    add("bad-plus-alone", b"+ 0x0\n");
    add("bad-double-plus", b"++1 0x0\n");
    add("bad-octal-digit-8", b"08 0x0\n");
    add("bad-octal-digit-9-mask", b"0x10 09\n");
    add("bad-00x", b"00x10 0x0\n");
    add("bad-binary", b"0b101 0x0\n");
    add("bad-exponent", b"1e3 0x0\n");
    add("bad-trailing-comma", b"0x10, 0x0\n");
    add("bad-word", b"abc 0x0\n");
    add("bad-hex-without-prefix", b"C0000103 0x0\n");
    add("bad-h-suffix", b"10h 0x0\n");
    add("bad-comment-between-tokens", b"0x10 # c\n0x0\n");
    add("bad-comment-glued-to-mask", b"0x10 0x0#c\n");
    add("bad-comment-glued-to-msr", b"0x10#c 0x0\n");
    add(
        "bad-utf8-token",
        "0x10 0x0\n\u{00e9}\u{00e9} 0x0\n".as_bytes(),
    );
    add("bad-nel-not-space", b"0x10\x850x0\n");
    add("bad-unit-separator-not-space", b"0x10\x1f0x0\n");
    add("bad-file-separator-not-space", b"0x10\x1c0x0\n");
    add("bad-del-in-token", b"0x10\x7f 0x0\n");
    add("bad-second-entry", b"0x10 0x0\n0x11 zz\n");
    add(
        "bad-after-many-good",
        &[entries_text(0x100, 50, 0xF), b"0x1 0xZ\n".to_vec()].concat(),
    );
    add("bad-readback-header-glued", b"#MSR\n0x10 0x0\nWrite mask\n");
    add("bad-colon", b"0x10:0x0\n");
    add("bad-equals", b"0x10=0x0 0x1\n");

    // Overflow.
    add("range-msr-2pow64-hex", b"0x10000000000000000 0x0\n");
    add("range-mask-2pow64-hex", b"0x10 0x10000000000000000\n");
    add("range-mask-2pow64-decimal", b"0x10 18446744073709551616\n");
    add("range-mask-octal", b"0x10 02000000000000000000000\n");
    add("range-many-nines", b"99999999999999999999999999 0\n");
    add("range-then-invalid-char", b"99999999999999999999x 0\n");
    add("range-invalid-char-first", b"9x9999999999999999999999 0\n");
    add(
        "range-long-ones",
        &[b"1".repeat(500), b" 0x0\n".to_vec()].concat(),
    );

    // Nothing to load.
    add("empty-whitespace", b"  \n\t\n");
    add("empty-comments-only", b"# a\n# b\n# 0x10 0x0\n");
    add("empty-template", b"#MSR Write mask # Comment\n# 0x00000010 0x0000000000000000 # \"IA32_TSC\"\n# 0x000001A0 0x0000000000000000\n");
    add("empty-nul-first", b"\0x10 0x0\n");
    add("empty-cr-only", b"\r\r\r");
    add("empty-nbsp-only", b"\xa0\xa0\xa0\n");
    add("empty-comment-no-newline", b"# nothing");

    // Duplicates (found in pass 2: the kernel drops its loaded list).
    add("dup-same", b"0x10 0x0\n0x10 0x0\n");
    add("dup-other-mask", b"0x10 0x0\n0x10 0xF\n");
    add("dup-hex-vs-decimal", b"0x10 0x0\n16 0x0\n");
    add("dup-case", b"0xa 0x0\n0XA 0x0\n");
    add("dup-octal", b"0x8 0x0\n010 0x0\n");
    add(
        "dup-not-adjacent",
        b"0x10 0x0\n0x11 0x0\n0x12 0x0\n0x10 0x1\n",
    );
    add("dup-then-bad-token", b"0x10 0x0\n0x10 0x0\n0x11 zz\n");
    add("dup-then-eof", b"0x10 0x0\n0x10 0x0");
    add("dup-msr64-same", b"0x100000000 0x0\n0x100000000 0x0\n");

    // Big lists and the 128 KiB limit.
    add("big-512-entries", &entries_text(0x1000, 512, 0xFF));
    add(
        "big-exactly-128KiB",
        &padded(entries_text(0x2000, 4000, 0x1), 128 * 1024),
    );
    add(
        "big-128KiB-plus-1",
        &padded(entries_text(0x2000, 4000, 0x1), 128 * 1024 + 1),
    );
    add(
        "big-128KiB-minus-1",
        &padded(entries_text(0x2000, 4000, 0x1), 128 * 1024 - 1),
    );
    add("big-max-entries-128KiB", &{
        // As many entries as fit: "N 0\n" in decimal from 0.
        let mut s = Vec::new();
        let mut i = 0u64;
        loop {
            let e = format!("{i} 0\n");
            if s.len() + e.len() > 128 * 1024 {
                break;
            }
            s.extend_from_slice(e.as_bytes());
            i += 1;
        }
        s
    });
    add(
        "big-10000-entries-too-large",
        &entries_text(0x10000, 10000, 0xFFFF_FFFF),
    );
    add(
        "big-dup-at-end",
        &[entries_text(0x3000, 2000, 0x3), b"0x3000 0x0\n".to_vec()].concat(),
    );
    add(
        "big-bad-at-end",
        &[entries_text(0x3000, 2000, 0x3), b"0x3000".to_vec()].concat(),
    );
    add(
        "big-comments-128KiB",
        &padded(
            [
                b"# ".to_vec(),
                b"c".repeat(131000),
                b"\n0x10 0x0\n".to_vec(),
            ]
            .concat(),
            128 * 1024,
        ),
    );
    add("big-one-long-line", &{
        let mut s = Vec::new();
        for i in 0..3000u64 {
            s.extend_from_slice(format!("0x{:X} 0x1 ", 0x5000 + i).as_bytes());
        }
        s.push(b'\n');
        s
    });

    let mut out: Vec<(String, Vec<u8>)> = v
        .into_iter()
        .enumerate()
        .map(|(i, (n, t))| (format!("{:03}-{n}", i + 1), t))
        .collect();

    // Random texts from a fixed seed: good and bad tokens, every kind of separator.
    let good: &[&[u8]] = &[
        b"0x10",
        b"0x1A0",
        b"0XFF",
        b"16",
        b"0",
        b"00",
        b"017",
        b"+5",
        b"0xFFFFFFFF",
        b"0xffffffffffffffff",
        b"4294967296",
        b"0x0000000000000001",
        b"0xc0000103",
        b"1",
    ];
    let bad: &[&[u8]] = &[
        b"0x",
        b"zz",
        b"-1",
        b"08",
        b"0x10000000000000000",
        b"1e3",
        b"0x1G",
        b"#c",
    ];
    let seps: &[&[u8]] = &[
        b" ",
        b"\t",
        b"\n",
        b"\r\n",
        b"\xa0",
        b"\x0b",
        b"\x0c",
        b"  ",
        b"\n# comment\n",
        b" # c\n",
    ];
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let first_random = out.len() + 1;
    for k in 0..70 {
        let mut t = Vec::new();
        let n_tokens = 1 + rng.below(12);
        for _ in 0..n_tokens {
            // About one text in four gets a bad token somewhere; some end without a separator.
            let tok = if rng.below(40) == 0 {
                rng.pick(bad)
            } else {
                rng.pick(good)
            };
            t.extend_from_slice(tok);
            t.extend_from_slice(rng.pick(seps));
        }
        match rng.below(10) {
            0 => {
                t.pop();
            }
            1 => t.insert(rng.below(t.len() + 1), 0),
            2 => t.extend_from_slice(b"# tail"),
            _ => {}
        }
        out.push((format!("{:03}-random-{k}", first_random + k), t));
    }
    out
}

fn gen(dir: &Path, lists: &[PathBuf]) -> Result<(), String> {
    let cases_dir = dir.join("cases");
    std::fs::create_dir_all(&cases_dir).map_err(|e| format!("{}: {e}", cases_dir.display()))?;
    let mut all = cases();
    let mut n = all.len();
    for d in lists {
        let mut files: Vec<PathBuf> = std::fs::read_dir(d)
            .map_err(|e| format!("{}: {e}", d.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            // Allowlists only (al_*), not a folder's README or scripts.
            .filter(|p| {
                p.is_file()
                    && p.file_name()
                        .is_some_and(|n| n.to_string_lossy().starts_with("al_"))
            })
            .collect();
        files.sort();
        let tag: String = d
            .file_name()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default()
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '.' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        for f in files {
            let text = std::fs::read(&f).map_err(|e| format!("{}: {e}", f.display()))?;
            n += 1;
            let base = f
                .file_name()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            all.push((format!("{n:03}-file-{tag}-{base}"), text));
        }
    }
    for (name, text) in &all {
        std::fs::write(cases_dir.join(name), text).map_err(|e| format!("{name}: {e}"))?;
    }
    std::fs::write(dir.join("sentinel"), SENTINEL).map_err(|e| format!("sentinel: {e}"))?;
    println!("{}", all.len());
    Ok(())
}

/// What the kernel should do with `text`, by kernel_parse: the write's result as the guest
/// prints it, the read-back, and a note when we disagree on purpose.
fn predict(text: &[u8]) -> (String, Vec<u8>, Option<String>) {
    match kernel_parse(text) {
        Ok(entries) => {
            let note = match Allowlist::parse(text, "case") {
                Ok(_) => None,
                Err(e) => Some(format!(
                    "on purpose: the kernel and kernel_parse accept it, `msrsave allowlist load` refuses it ({e})"
                )),
            };
            (format!("OK {}", text.len()), render(&pairs(&entries)), note)
        }
        Err(e) if e.is_clearing_write() => (
            format!("OK {}", text.len()),
            Vec::new(),
            Some(format!(
                "on purpose: the kernel returns success and clears its list; kernel_parse reports a clearing write ({:?}: {})",
                e.errno, e.reason
            )),
        ),
        Err(e) => {
            let back = if e.empties_loaded_list() {
                Vec::new()
            } else {
                // The kernel kept the list it had: the sentinel.
                let sentinel = kernel_parse(SENTINEL).map(|v| pairs(&v)).unwrap_or_default();
                render(&sentinel)
            };
            (format!("{:?}", e.errno), back, None)
        }
    }
}

fn judge(dir: &Path, results: &Path) -> Result<bool, String> {
    let text =
        std::fs::read_to_string(results).map_err(|e| format!("{}: {e}", results.display()))?;
    // "ALCASE <name> <sha256> <bytes> <result...>"
    let mut kernel: BTreeMap<String, (String, usize, String)> = BTreeMap::new();
    for line in text.lines() {
        let w: Vec<&str> = line.split_whitespace().collect();
        if let ["ALCASE", name, sha, bytes, result @ ..] = w.as_slice() {
            let bytes = bytes.parse().map_err(|_| format!("bad line {line:?}"))?;
            kernel.insert(name.to_string(), (sha.to_string(), bytes, result.join(" ")));
        }
    }
    let cases_dir = dir.join("cases");
    let mut names: Vec<String> = std::fs::read_dir(&cases_dir)
        .map_err(|e| format!("{}: {e}", cases_dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect();
    names.sort();
    let (mut passed, mut failed, mut on_purpose) = (0, 0, 0);
    let mut by_result: BTreeMap<String, usize> = BTreeMap::new();
    for name in &names {
        let t = std::fs::read(cases_dir.join(name)).map_err(|e| format!("{name}: {e}"))?;
        let (want_result, want_back, note) = predict(&t);
        let id = format!("allowlist_diff.{name}");
        let Some((sha, bytes, result)) = kernel.get(name) else {
            println!("FAIL {id}: the guest reported nothing for this case");
            failed += 1;
            continue;
        };
        let mut why = Vec::new();
        if *result != want_result {
            why.push(format!(
                "the kernel's write gave {result}, kernel_parse predicts {want_result}"
            ));
        }
        if *sha != sha256_hex(&want_back) {
            why.push(format!(
                "the read-back ({bytes} bytes) differs from kernel_parse's ({} bytes)",
                want_back.len()
            ));
        }
        *by_result
            .entry(result.split(' ').next().unwrap_or("").to_string())
            .or_default() += 1;
        if why.is_empty() {
            match note {
                Some(n) => {
                    println!("PASS {id} ({n})");
                    on_purpose += 1;
                }
                None => println!("PASS {id}"),
            }
            passed += 1;
        } else {
            println!("FAIL {id}: {}", why.join("; "));
            failed += 1;
        }
    }
    let spread: Vec<String> = by_result.iter().map(|(k, n)| format!("{k} {n}")).collect();
    println!(
        "INFO allowlist_diff: {} texts, {passed} agree ({on_purpose} of them disagree on purpose, named above), {failed} disagree; kernel verdicts: {}",
        names.len(),
        spread.join(", ")
    );
    for k in kernel.keys() {
        if !names.contains(k) {
            println!("FAIL allowlist_diff.{k}: the guest reported a case that was not generated");
            failed += 1;
        }
    }
    Ok(failed == 0)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let r = match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["gen", dir, lists @ ..] => {
            let lists: Vec<PathBuf> = lists.iter().map(PathBuf::from).collect();
            gen(Path::new(dir), &lists).map(|()| true)
        }
        ["judge", dir, results] => judge(Path::new(dir), Path::new(results)),
        _ => Err("usage: alparse gen DIR [LISTS_DIR...] | alparse judge DIR RESULTS".to_string()),
    };
    match r {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("alparse: {e}");
            ExitCode::from(2)
        }
    }
}
