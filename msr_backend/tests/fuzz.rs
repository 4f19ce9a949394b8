//! Fuzzing with a fixed budget, as part of the test suite: the allowlist parser and the
//! save-file loader take arbitrary and mutated input without panicking, and a save file that was
//! changed after it was written is never accepted. `MSR_FUZZ_CASES` raises the budget (the
//! default keeps the suite fast).

use std::path::Path;
use std::sync::Arc;

use msr_backend::allowlist::{kernel_parse, lint, Allowlist};
use msr_backend::device::{BackendKind, OpError};
use msr_backend::savefile::{self, json, Loaded, SaveFile, SaveMeta};
use msr_backend::snapshot::Snapshot;
use msr_backend::types::CpuIdentity;
use msr_backend::CpuId;
use nix::errno::Errno;
use proptest::prelude::*;
use proptest::test_runner::Config;

fn cases(default: u32) -> Config {
    let n = std::env::var("MSR_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default);
    Config {
        cases: n,
        failure_persistence: None,
        ..Config::default()
    }
}

/// Allowlist-like text: mostly tokens the grammar knows, with everything else mixed in.
fn allowlist_text() -> impl Strategy<Value = Vec<u8>> {
    let token = prop_oneof![
        Just(b"0x".to_vec()),
        Just(b"#".to_vec()),
        Just(b" ".to_vec()),
        Just(b"\n".to_vec()),
        Just(b"\t".to_vec()),
        Just(vec![0xa0]),
        Just(vec![0]),
        "[0-9a-fA-FxX+ #\n]{1,12}".prop_map(String::into_bytes),
        proptest::collection::vec(any::<u8>(), 1..8),
    ];
    proptest::collection::vec(token, 0..40).prop_map(|v| v.concat())
}

/// A snapshot of `cpus` CPUs of a small list, with some unreadable registers.
fn snapshot(cpus: u32, values: &[u64]) -> SaveFile {
    let al = Allowlist::parse(b"0x10 0\n0x199 0xffff\n0x610 0xffffff\n", "fuzz").expect("list");
    let n = al.len();
    let outcomes: Vec<_> = (0..cpus as usize * n)
        .map(|i| {
            let v = values[i % values.len()];
            if v % 13 == 0 {
                Err(OpError::Errno(Errno::EIO))
            } else {
                Ok(v)
            }
        })
        .collect();
    SaveFile {
        meta: SaveMeta::now(
            "fuzz-node".into(),
            CpuIdentity {
                vendor: "GenuineIntel".into(),
                family: 6,
                model: 0x55,
            },
            None,
            BackendKind::Safe,
        ),
        snapshot: Snapshot::from_outcomes(Arc::new(al), (0..cpus).map(CpuId).collect(), outcomes),
    }
}

proptest! {
    #![proptest_config(cases(3000))]

    /// The parser answers every input (entries or the kernel's errno), lint too, and what it
    /// accepts reads back to the same list.
    #[test]
    fn the_allowlist_parser_takes_anything(text in allowlist_text()) {
        let kernel = kernel_parse(&text);
        let _ = lint(&text);
        if let Ok(list) = Allowlist::parse(&text, "fuzz") {
            prop_assert!(kernel.is_ok());
            let back = Allowlist::parse(list.to_kernel_text().as_bytes(), "back").expect("read-back parses");
            prop_assert_eq!(back.digest(), list.digest());
        }
    }

    /// Arbitrary bytes are refused or taken as LLNL's raw format, never a panic.
    #[test]
    fn the_save_file_loader_takes_anything(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        let _ = savefile::parse(&bytes, Path::new("fuzz"));
        let mut compact = savefile::compact::MAGIC.to_vec();
        compact.extend_from_slice(&bytes);
        prop_assert!(savefile::parse(&compact, Path::new("fuzz")).is_err());
    }
}

proptest! {
    #![proptest_config(cases(1500))]

    /// Any change to a compact file after it was written (a flipped bit, a cut, bytes added) is
    /// refused; the untouched file loads.
    #[test]
    fn a_changed_save_file_is_never_accepted(
        cpus in 1u32..9,
        values in proptest::collection::vec(any::<u64>(), 1..20),
        at in any::<prop::sample::Index>(),
        bit in 0u8..8,
        how in 0u8..3,
    ) {
        let file = snapshot(cpus, &values);
        let bytes = file.to_bytes();
        let good = SaveFile::from_bytes(&bytes, Path::new("f")).expect("loads");
        prop_assert_eq!(good.snapshot.outcomes(), file.snapshot.outcomes());
        let mut bad = bytes.clone();
        match how {
            0 => { let i = at.index(bad.len()); bad[i] ^= 1 << bit; }
            1 => bad.truncate(at.index(bad.len())),
            _ => bad.insert(at.index(bad.len()), bit),
        }
        match savefile::parse(&bad, Path::new("f")) {
            Ok(Loaded::Ours(_)) => prop_assert!(false, "a changed file was accepted"),
            Ok(Loaded::LlnlRaw(_)) | Err(_) => {}
        }
        // The version-1 JSON of the same snapshot: a changed value is refused too.
        let text = json::document_text(&file);
        let changed = text.replacen("\"0x", "\"0x1", 1);
        prop_assert!(json::parse(changed.as_bytes(), Path::new("f")).is_err());
    }
}
