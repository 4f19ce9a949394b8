//! msr-safe's batch ioctl (`/dev/cpu/msr_batch`).
