//! msr-safe's batch ioctl (`/dev/cpu/msr_batch`).
//! (Placeholder until the batch backend lands: opening always reports it unavailable.)

use std::path::Path;
use std::sync::Arc;

use super::DeviceError;
use crate::allowlist::Allowlist;

pub struct BatchDevice;

impl BatchDevice {
    pub fn open(path: &Path, _allowlist: Arc<Allowlist>) -> Result<BatchDevice, DeviceError> {
        Err(DeviceError::Open {
            path: path.to_path_buf(),
            source: std::io::Error::other("batch backend not built yet"),
        })
    }
}

impl super::MsrDevice for BatchDevice {
    fn kind(&self) -> super::BackendKind {
        super::BackendKind::Batch
    }
    fn run(&self, _ops: &mut [super::MsrOp]) -> Result<(), DeviceError> {
        Ok(())
    }
    fn parallelism(&self) -> super::Parallelism {
        super::Parallelism::Batched
    }
    fn describe(&self) -> String {
        String::new()
    }
}
