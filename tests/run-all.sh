#!/usr/bin/env bash
# Every test of the suite, in order of cost. Installs what the suites need (apt packages, the
# SLURM daemons, QEMU and a Debian kernel) through each suite's own scripts.
#
#   tests/run-all.sh            every suite
#   tests/run-all.sh unit ...   only the named suites (unit pbs slurm real_kernel packaging)
#
# Exit status: 0 only if every suite ran and passed. A suite that is missing counts as failed.
set -uo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"
export CARGO_TERM_COLOR=never

declare -A SUITES=(
    [unit]="cargo test --workspace --all-targets"
    [pbs]="pbs_hook/tests/run.sh"
    [slurm]="tests/slurm/run.sh"
    [real_kernel]="tests/real_kernel/run.sh"
    [packaging]="packaging/tests/run.sh"
)
ORDER=(unit pbs slurm real_kernel packaging)
if [ "$#" -gt 0 ]; then ORDER=("$@"); fi

# Rust's toolchain for the suites that build; apt for the ones that install.
command -v cargo >/dev/null || { echo "run-all: cargo is not installed" >&2; exit 2; }

passed=0
failed=0
failed_names=()
for name in "${ORDER[@]}"; do
    cmd=${SUITES[$name]:-}
    if [ -z "$cmd" ]; then
        echo "run-all: unknown suite '$name' (known: ${!SUITES[*]})" >&2
        exit 2
    fi
    script=${cmd%% *}
    if [[ $script == */* ]] && [ ! -x "$script" ]; then
        echo "run-all: FAIL $name: $script is missing or not executable"
        failed=$((failed + 1)); failed_names+=("$name")
        continue
    fi
    echo "=== suite $name: $cmd"
    start=$(date +%s)
    if $cmd; then
        echo "=== suite $name: PASS ($(( $(date +%s) - start )) s)"
        passed=$((passed + 1))
    else
        echo "=== suite $name: FAIL ($(( $(date +%s) - start )) s)"
        failed=$((failed + 1)); failed_names+=("$name")
    fi
done

echo
[ "$failed" -eq 0 ] || echo "failed suites: ${failed_names[*]}"
echo "suites: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
