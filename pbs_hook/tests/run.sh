#!/bin/sh
# Run the PBS hook, Torque script and install script tests.
#   pbs_hook/tests/run.sh [unittest args, e.g. test_hook.FailureTests]
# Builds msrsave (cargo build -p msrsave) unless $MSRSAVE names a binary, prints one line per
# test and unittest's summary, and exits non-zero on any failure.
set -eu

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)

if [ -z "${MSRSAVE:-}" ]; then
    echo "building msrsave (cargo build -p msrsave)..."
    (cd "$repo" && cargo build -q -p msrsave)
    target=${CARGO_TARGET_DIR:-$repo/target}
    case $target in /*) ;; *) target=$repo/$target ;; esac
    MSRSAVE=$target/debug/msrsave
fi
case $MSRSAVE in /*) ;; *) MSRSAVE=$(pwd)/$MSRSAVE ;; esac  # the tests run elsewhere
if [ ! -x "$MSRSAVE" ]; then
    echo "msrsave not found at $MSRSAVE" >&2
    exit 1
fi
export MSRSAVE
# The real-msrsave tests must run, not be skipped.
export MSR_RESTORE_PBS_REQUIRE_MSRSAVE=1
echo "msrsave: $MSRSAVE"

cd "$here"
if [ $# -eq 0 ]; then
    exec python3 -m unittest discover -v -s "$here" -p 'test_*.py'
fi
exec python3 -m unittest -v "$@"
