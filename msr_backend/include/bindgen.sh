#!/bin/sh
# Regenerate src/device/batch_bindings.rs from include/msr_batch.h.
# Needs bindgen-cli (cargo install bindgen-cli) and libclang (apt-get install libclang-dev).
# Run from anywhere; the output is meant to be checked in unchanged.
set -eu
cd "$(dirname "$0")/.."
bindgen include/msr_batch.h \
	--allowlist-type 'msr_batch_.*' \
	--allowlist-var 'MSR_BATCH_.*' \
	--with-derive-custom-struct 'msr_batch_op=Default' \
	--with-derive-partialeq --with-derive-eq \
	--rust-target 1.80 \
	--raw-line '// Generated from include/msr_batch.h by include/bindgen.sh (bindgen-cli 0.73, libclang 14):' \
	--raw-line "//   cd msr_backend && bindgen include/msr_batch.h --allowlist-type 'msr_batch_.*' --allowlist-var 'MSR_BATCH_.*' --with-derive-custom-struct 'msr_batch_op=Default' --with-derive-partialeq --with-derive-eq --rust-target 1.80 -o src/device/batch_bindings.rs" \
	--raw-line '//   (plus the --raw-line options that write these three comment lines). Do not edit by hand.' \
	-o src/device/batch_bindings.rs
