//! The one guard every backend puts in front of the kernel: an op reaches a device only as a
//! [`Checked`] op, and only [`Guard::check`] makes one. It lets through
//!
//! - a read of an MSR in the allowlist in effect;
//! - a write to an MSR in the allowlist whose mask is within the allowlist's write mask and not
//!   empty (an empty mask asks for nothing, yet the batch ioctl would still store `value` under
//!   the kernel's own mask, and an allowlist mask of 0 means the MSR is read-only).
//!
//! Everything else gets [`OpError::NotAllowlisted`] or [`OpError::OutsideMask`] and never reaches
//! a register, whatever the kernel module below would allow.

use std::sync::Arc;

use super::{MsrOp, OpError, OpKind};
use crate::allowlist::Allowlist;
use crate::types::{CpuId, MsrAddr, WriteMask};

/// What a checked op does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CheckedKind {
    Read,
    /// Write `value` where `mask` says; `mask` is non-empty and within the allowlist's mask.
    Write {
        value: u64,
        mask: WriteMask,
    },
}

/// An op the guard let through. Its fields can be read but not built outside this module.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Checked {
    cpu: CpuId,
    addr: MsrAddr,
    kind: CheckedKind,
}

impl Checked {
    pub fn cpu(&self) -> CpuId {
        self.cpu
    }
    pub fn addr(&self) -> MsrAddr {
        self.addr
    }
    pub fn kind(&self) -> CheckedKind {
        self.kind
    }
}

/// The allowlist in effect, as a guard.
#[derive(Clone, Debug)]
pub struct Guard {
    allowlist: Arc<Allowlist>,
}

impl Guard {
    pub fn new(allowlist: Arc<Allowlist>) -> Guard {
        Guard { allowlist }
    }

    pub fn allowlist(&self) -> &Arc<Allowlist> {
        &self.allowlist
    }

    /// Let `op` through, or say why it must not reach a register.
    pub fn check(&self, op: &MsrOp) -> Result<Checked, OpError> {
        let allowed = self
            .allowlist
            .mask(op.addr)
            .ok_or(OpError::NotAllowlisted)?;
        let kind = match op.kind {
            OpKind::Read => CheckedKind::Read,
            OpKind::Write { value, mask } => {
                let outside = mask.0 & !allowed.0;
                if outside != 0 {
                    return Err(OpError::OutsideMask { bits: outside });
                }
                if !allowed.is_writable() || !mask.is_writable() {
                    return Err(OpError::OutsideMask { bits: mask.0 });
                }
                CheckedKind::Write { value, mask }
            }
        };
        Ok(Checked {
            cpu: op.cpu,
            addr: op.addr,
            kind,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::allowlist_of;

    #[test]
    fn one_rule_for_every_backend() {
        let g = Guard::new(allowlist_of(&[(0x10, 0), (0x199, 0xffff)]));
        let c = |op: MsrOp| g.check(&op);
        assert_eq!(
            c(MsrOp::read(CpuId(0), MsrAddr(0x11))),
            Err(OpError::NotAllowlisted)
        );
        assert_eq!(
            c(MsrOp::write(
                CpuId(0),
                MsrAddr(0x199),
                1,
                WriteMask(0x1_0001)
            )),
            Err(OpError::OutsideMask { bits: 0x1_0000 })
        );
        // Read-only MSR, and a write that asks for nothing: refused on every backend.
        assert_eq!(
            c(MsrOp::write(CpuId(0), MsrAddr(0x10), 1, WriteMask(1))),
            Err(OpError::OutsideMask { bits: 1 })
        );
        assert_eq!(
            c(MsrOp::write(CpuId(0), MsrAddr(0x199), 1, WriteMask(0))),
            Err(OpError::OutsideMask { bits: 0 })
        );
        let w = c(MsrOp::write(
            CpuId(3),
            MsrAddr(0x199),
            0xab,
            WriteMask(0xff),
        ))
        .unwrap();
        assert_eq!(
            (w.cpu(), w.addr(), w.kind()),
            (
                CpuId(3),
                MsrAddr(0x199),
                CheckedKind::Write {
                    value: 0xab,
                    mask: WriteMask(0xff)
                }
            )
        );
        assert_eq!(
            c(MsrOp::read(CpuId(2), MsrAddr(0x10))).unwrap().kind(),
            CheckedKind::Read
        );
    }
}
