//! LLNL msrsave's save files, so that a site moving from it can restore what its prolog saved
//! (during an upgrade a job's prolog may have run LLNL's `msrsave FILE` and its epilog ours).
//!
//! The format (msrsave/msrsave.c of msr-safe): no header; a raw array of native-endian u64,
//! CPU-major (`value[cpu * n_msrs + msr]`) for CPUs `0..N-1` (N = the online CPU count, which
//! LLNL's msrsave assumes are numbered from 0 without gaps: it fails to save otherwise), in the
//! order of the allowlist loaded in msr-safe; each value already masked (`raw & mask`). A register
//! that could not be read is stored as `~mask`, or as [`BAD_READ_COOKIE`] where the mask is all
//! ones; LLNL's restore tells them apart from values by [`is_good_value`].
//!
//! Nothing in the file says which list or CPUs it was saved with, so it is only interpreted where
//! its size is exactly `online CPUs x loaded MSRs x 8` and the online CPUs are `0..N-1`; anything
//! else is refused with a message that says the file looks like LLNL's format and why it does
//! not fit.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use nix::errno::Errno;

use super::SaveFileError;
use crate::allowlist::Allowlist;
use crate::device::OpError;
use crate::snapshot::Snapshot;
use crate::types::{format_cpu_list, CpuId, MAX_CPUS};

/// What LLNL msrsave stores for an unreadable register whose mask is all ones.
pub const BAD_READ_COOKIE: u64 = 0xFB6A_5881_3AEA_28CF;
/// Bytes per value.
pub const VALUE_BYTES: usize = 8;
/// The largest file taken for LLNL's format: 8192 CPUs x 32768 MSRs x 8 bytes.
pub const MAX_FILE_BYTES: u64 = MAX_CPUS as u64 * 32768 * VALUE_BYTES as u64;

/// LLNL's test for a value that was read (msrsave.c `is_good_value`): with a mask that is not all
/// ones, a good value has no bit outside the mask (a bad read stored `~mask`); with an all-ones
/// mask, anything but the cookie.
pub fn is_good_value(value: u64, mask: u64) -> bool {
    if mask != u64::MAX {
        value == value & mask
    } else {
        value != BAD_READ_COOKIE
    }
}

/// A file that is not one of ours and holds a whole number of u64 values.
#[derive(Clone, Debug)]
pub struct RawFile {
    pub path: PathBuf,
    pub values: Vec<u64>,
}

impl RawFile {
    /// Take `bytes` as LLNL's format if their size allows it; otherwise say that the file is
    /// neither ours nor LLNL's.
    pub fn from_bytes(bytes: &[u8], path: &Path) -> Result<RawFile, SaveFileError> {
        if bytes.len() % VALUE_BYTES != 0 {
            return Err(SaveFileError::invalid(
                path,
                format!(
                    "neither an msrsave save file (no compact header, not JSON) nor LLNL msrsave's \
                     raw format ({} bytes is not a whole number of 64-bit values); it may be \
                     truncated or not a save file at all",
                    bytes.len()
                ),
            ));
        }
        let values = bytes
            .chunks_exact(VALUE_BYTES)
            .map(|c| u64::from_ne_bytes(c.try_into().unwrap_or([0; VALUE_BYTES])))
            .collect();
        Ok(RawFile {
            path: path.to_path_buf(),
            values,
        })
    }

    /// The error for a place that takes only our formats.
    pub fn not_ours_error(&self) -> SaveFileError {
        SaveFileError::invalid(
            &self.path,
            format!(
                "not an msrsave save file; its {} bytes look like LLNL msrsave's raw format, which \
                 only `msrsave restore` (or `msrsave -r`) reads, against the allowlist loaded in \
                 msr-safe",
                self.values.len() * VALUE_BYTES
            ),
        )
    }

    /// Interpret the file against the node: the allowlist LLNL's msrsave read (the one loaded in
    /// msr-safe) and the CPUs online now. A snapshot whose unreadable registers are marked EIO,
    /// or why the file does not fit.
    pub fn fit(
        &self,
        allowlist: Arc<Allowlist>,
        online: &[CpuId],
    ) -> Result<Snapshot, SaveFileError> {
        let n = allowlist.len();
        let c = online.len();
        let have = self.values.len();
        let looks = |why: String| {
            SaveFileError::invalid(
                &self.path,
                format!(
                    "not an msrsave save file; it looks like LLNL msrsave's raw format ({} bytes: \
                     {have} 64-bit values, no header), but it does not fit this node: {why}",
                    have * VALUE_BYTES
                ),
            )
        };
        if have != n * c {
            return Err(looks(format!(
                "the allowlist in effect ({}) has {n} MSRs and {c} CPUs are online, which makes \
                 {n} x {c} = {} values ({} bytes); {}",
                allowlist.source(),
                n * c,
                n * c * VALUE_BYTES,
                if n > 0 && have % n == 0 {
                    format!("the file would fit {} CPUs", have / n)
                } else if c > 0 && have % c == 0 {
                    format!("the file would fit an allowlist of {} MSRs", have / c)
                } else {
                    "it was saved with another allowlist or CPU count".to_string()
                }
            )));
        }
        let contiguous = online
            .iter()
            .enumerate()
            .all(|(i, cpu)| cpu.0 as usize == i);
        if !contiguous {
            return Err(looks(format!(
                "LLNL msrsave numbers CPUs 0..{} but the online CPUs are {}",
                c.saturating_sub(1),
                format_cpu_list(online)
            )));
        }
        let masks: Vec<u64> = allowlist.entries().iter().map(|e| e.mask.0).collect();
        let outcomes = self.values.iter().enumerate().map(|(i, &v)| {
            if is_good_value(v, masks[i % n]) {
                Ok(v)
            } else {
                // LLNL msrsave could not read it: nothing to restore there.
                Err(OpError::Errno(Errno::EIO))
            }
        });
        Ok(Snapshot::from_outcomes(
            allowlist,
            online.to_vec(),
            outcomes,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::allowlist_of;

    fn raw(values: &[u64]) -> Vec<u8> {
        values.iter().flat_map(|v| v.to_ne_bytes()).collect()
    }

    fn cpus(n: u32) -> Vec<CpuId> {
        (0..n).map(CpuId).collect()
    }

    #[test]
    fn good_values_as_llnl_tells_them() {
        assert!(is_good_value(0x12, 0xff));
        assert!(!is_good_value(!0xffu64, 0xff));
        assert!(is_good_value(0, 0));
        assert!(!is_good_value(u64::MAX, 0));
        assert!(is_good_value(0x1234, u64::MAX));
        assert!(!is_good_value(BAD_READ_COOKIE, u64::MAX));
    }

    #[test]
    fn a_fitting_file_becomes_a_snapshot_with_bad_reads_unreadable() {
        let list = allowlist_of(&[(0x10, 0), (0x199, 0xffff), (0x1a0, u64::MAX)]);
        // CPU 0: values; CPU 1: every kind of bad read.
        let bytes = raw(&[0, 0x1234, 7, u64::MAX, !0xffffu64, BAD_READ_COOKIE]);
        let f = RawFile::from_bytes(&bytes, Path::new("llnl.dat")).unwrap();
        let s = f.fit(list, &cpus(2)).unwrap();
        let eio = Err(OpError::Errno(Errno::EIO));
        assert_eq!(s.outcomes(), vec![Ok(0), Ok(0x1234), Ok(7), eio, eio, eio]);
    }

    #[test]
    fn a_file_that_does_not_fit_says_why() {
        let list = allowlist_of(&[(0x10, 0), (0x199, 0xffff)]);
        let f = RawFile::from_bytes(&raw(&[0; 6]), Path::new("llnl.dat")).unwrap();
        let e = f.fit(list.clone(), &cpus(2)).unwrap_err().to_string();
        assert!(e.contains("looks like LLNL msrsave's raw format"), "{e}");
        assert!(
            e.contains("2 MSRs and 2 CPUs") && e.contains("would fit 3 CPUs"),
            "{e}"
        );
        let f = RawFile::from_bytes(&raw(&[0; 4]), Path::new("llnl.dat")).unwrap();
        let e = f.fit(list, &[CpuId(0), CpuId(2)]).unwrap_err().to_string();
        assert!(
            e.contains("numbers CPUs 0..1 but the online CPUs are 0,2"),
            "{e}"
        );
        let e = RawFile::from_bytes(b"12345", Path::new("x"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("not a whole number of 64-bit values"), "{e}");
    }
}
