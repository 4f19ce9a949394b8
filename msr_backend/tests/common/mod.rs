//! Fixtures shared by the device integration tests.
#![allow(dead_code)]

use msr_backend::allowlist::Allowlist;
#[allow(unused_imports)]
pub use msr_backend::testing::allowlist_of as allowlist;

pub mod lists;
use msr_backend::{MsrAddr, WriteMask};

/// 0: a read; 1: a write under some bits of the allowlist's mask; 2: under all of it; 3: under
/// random bits (almost always outside it).
pub fn op_mask(list: &Allowlist, addr: u32, bits: u64, how: u8) -> Option<WriteMask> {
    let allowed = list.mask(MsrAddr(addr)).map_or(bits, |m| m.0);
    match how {
        0 => None,
        1 => Some(WriteMask(allowed & bits)),
        2 => Some(WriteMask(allowed)),
        _ => Some(WriteMask(bits)),
    }
}
