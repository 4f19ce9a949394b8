/*
 * Build shim for the slurm-spank crate (0.3.0 - 0.4.1) on Slurm older than 23.11.
 *
 * The crate's bindings expect spank_prepend_task_argv(), which spank.h declares only from
 * Slurm 23.11 on; Debian 12 ships 22.05, where the crate fails with E0425. Declaring the
 * function lets the bindings compile. The plugin never calls it, and the unused wrapper is
 * dropped by the linker, so the .so has no reference to the missing symbol.
 *
 * Used through .cargo/config.toml: BINDGEN_EXTRA_CLANG_ARGS="-include msr_restore_spank_compat.h"
 * with this directory on CPATH.
 */
#include <slurm/spank.h>
#include <slurm/slurm_version.h>

#if SLURM_VERSION_NUMBER < SLURM_VERSION_NUM(23, 11, 0)
extern spank_err_t spank_prepend_task_argv(spank_t spank, int argc, const char *argv[]);
#endif
