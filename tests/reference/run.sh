#!/usr/bin/env bash
# The reference suite: our allowlist parser, lint and selection against msr-safe's own allowlists
# (GPL-2.0 data that this repository does not hold).
#
#   MSR_REFERENCE_ALLOWLISTS=DIR tests/reference/run.sh
#
# DIR is a copy of msr-safe's allowlists folder with its v1.7.0 lists in DIR/v1.7.0 (the project's
# shared/reference/msr-safe-allowlists). Without MSR_REFERENCE_ALLOWLISTS the suite looks beside
# the repository (../shared/reference/msr-safe-allowlists); when neither holds the lists it prints
# NOT RUN and exits 77, which tests/run-all.sh reports as not run (neither passed nor failed).
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
NOT_RUN_STATUS=77

dir=${MSR_REFERENCE_ALLOWLISTS:-$REPO/../shared/reference/msr-safe-allowlists}
if [ ! -f "$dir/README.md" ] || [ ! -d "$dir/v1.7.0" ]; then
    echo "NOT RUN reference: msr-safe's allowlists not found at $dir; set MSR_REFERENCE_ALLOWLISTS=DIR (a copy of msr-safe's allowlists/ with its v1.7.0 lists in DIR/v1.7.0)"
    exit "$NOT_RUN_STATUS"
fi
dir=$(cd "$dir" && pwd)
export MSR_REFERENCE_ALLOWLISTS=$dir
echo "reference: msr-safe allowlists from $dir"
exec cargo test -p msr_backend --features reference-tests --test allowlist_reference
