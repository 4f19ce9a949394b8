#!/usr/bin/env bash
# Every test of the suite, in order of cost. Installs what the suites need (apt packages, the
# SLURM daemons, QEMU and a Debian kernel) through each suite's own scripts.
#
#   tests/run-all.sh            every suite
#   tests/run-all.sh unit ...   only the named suites (see SUITES below)
#
# A suite that needs something this repository does not hold (msr-safe's reference allowlists, a
# built msr-safe module, a live OpenPBS) takes its location from the environment and, without it,
# prints "NOT RUN <suite>: <what to set>" on a line of its own and exits with NOT_RUN_STATUS. Such
# a suite is reported as NOT RUN: neither passed nor failed.
#
# Exit status: 0 when no suite failed; 1 when one did. A suite that is missing counts as failed.
set -uo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"
export CARGO_TERM_COLOR=never
# The status a suite exits with when it could not run (automake's "skipped" code).
NOT_RUN_STATUS=77

declare -A SUITES=(
    [unit]="cargo test --workspace --all-targets"
    [reference]="tests/reference/run.sh"
    [pbs]="pbs_hook/tests/run.sh"
    [pbs_live]="pbs_hook/tests/live/run.sh"
    [slurm]="tests/slurm/run.sh"
    [real_kernel]="tests/real_kernel/run.sh"
    [msr_safe]="tests/msr_safe/run.sh"
    [packaging]="packaging/tests/run.sh"
)
ORDER=(unit reference pbs pbs_live slurm real_kernel msr_safe packaging)
if [ "$#" -gt 0 ]; then ORDER=("$@"); fi

# Rust's toolchain for the suites that build; apt for the ones that install.
command -v cargo >/dev/null || { echo "run-all: cargo is not installed" >&2; exit 2; }

passed=0
failed=0
not_run=0
failed_names=()
not_run_names=()
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
    $cmd
    rc=$?
    took=$(( $(date +%s) - start ))
    if [ "$rc" -eq 0 ]; then
        echo "=== suite $name: PASS ($took s)"
        passed=$((passed + 1))
    elif [ "$rc" -eq "$NOT_RUN_STATUS" ]; then
        echo "=== suite $name: NOT RUN"
        not_run=$((not_run + 1)); not_run_names+=("$name")
    else
        echo "=== suite $name: FAIL ($took s, exit status $rc)"
        failed=$((failed + 1)); failed_names+=("$name")
    fi
done

echo
[ "$failed" -eq 0 ] || echo "failed suites: ${failed_names[*]}"
for name in "${not_run_names[@]}"; do echo "NOT RUN: $name"; done
echo "suites: $passed passed, $failed failed, $not_run not run"
[ "$failed" -eq 0 ]
