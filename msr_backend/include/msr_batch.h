/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * The msr-safe batch ioctl ABI (x86-64), written for msr-restore from the ABI facts recorded in
 * the project notes (field order, widths, offsets, the ioctl request). It is not msr-safe's own
 * header. Its only consumer is bindgen: the Rust bindings are generated from it and checked in
 * as msr_backend/src/device/batch_bindings.rs (the command is in that file).
 *
 * Only fixed-width standard types are used so that the layout does not depend on any kernel or
 * libc header; the Rust side asserts every size and offset at compile time.
 */
#ifndef MSR_RESTORE_MSR_BATCH_H
#define MSR_RESTORE_MSR_BATCH_H

#include <stdint.h>

/* The ioctl is _IOWR(MSR_BATCH_IOC_TYPE, MSR_BATCH_IOC_NR, struct msr_batch_array) = 0xC01063A2.
 * The Rust side computes it with nix's request_code_readwrite! and asserts the number. */
#define MSR_BATCH_IOC_TYPE 'c'
#define MSR_BATCH_IOC_NR 0xA2

/* Value for msr_batch_array.version: (major << 16) | (minor << 8) | patch of the module
 * version the layout matches (1.8.0). Padding before 1.8, ignored by 1.x, checked from 2.0. */
#define MSR_BATCH_ABI_VERSION 0x010800

/* One read or write of one MSR on one CPU; 32 bytes. */
struct msr_batch_op {
	uint16_t cpu;      /* offset  0, in: logical CPU */
	uint16_t isrdmsr;  /* offset  2, in: non-zero reads, zero writes */
	int32_t err;       /* offset  4, out: 0 or a negative errno */
	uint32_t msr;      /* offset  8, in: MSR address; 4 bytes of padding follow */
	uint64_t msrdata;  /* offset 16, in: value to write; out: value read */
	uint64_t wmask;    /* offset 24, out: the loaded allowlist's write mask of msr */
};

/* The ioctl argument; 16 bytes. */
struct msr_batch_array {
	uint32_t numops;             /* offset 0: number of ops, never 0 */
	uint32_t version;            /* offset 4: MSR_BATCH_ABI_VERSION */
	struct msr_batch_op *ops;    /* offset 8: numops ops, read and written back */
};

#endif /* MSR_RESTORE_MSR_BATCH_H */
