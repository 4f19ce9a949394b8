//! Names of well-known MSRs, for reports when an allowlist entry has no name comment.

use crate::types::MsrAddr;

/// The architectural name of `addr`, if it is a well-known MSR.
pub fn msr_name(_addr: MsrAddr) -> Option<&'static str> {
    None
}
