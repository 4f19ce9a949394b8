#!/usr/bin/env bash
# The PBS hooks against a live OpenPBS: real jobs, real qmgr, the real pbs module.
#
#   PBS_EXEC=/opt/pbs PBS_LIVE_USER=pbstest pbs_hook/tests/live/run.sh [SCENARIO ...]
#
# Needs, on this host, a running OpenPBS server, scheduler and mom (one vnode), as root:
#   PBS_EXEC        the install prefix (bin/qmgr, bin/qsub, sbin/pbs_mom)
#   PBS_LIVE_USER   a non-root user who may submit jobs (useradd -m pbstest)
#   PBS_CONF_FILE   optional, default /etc/pbs.conf (PBS_HOME, PBS_SERVER)
#   PBS_LIVE_NODE   optional, the mom's vnode (default: the vnode whose Mom is this host)
#   MSRSAVE         optional, an msrsave binary (default: cargo build -p msrsave)
# Without PBS_EXEC or PBS_LIVE_USER it prints "NOT RUN pbs_live: ..." and exits 77.
#
# Use a test PBS: the suite installs the hooks (prefix msrlive) on an emulated node (msrsave
# emulate), takes the vnode offline and back, restarts the mom once and removes its hooks at the
# end. Prints PASS/FAIL per check and a count; exits 1 on any FAIL.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../../.." && pwd)

if [ -z "${PBS_EXEC:-}" ] || [ -z "${PBS_LIVE_USER:-}" ]; then
    echo "NOT RUN pbs_live: set PBS_EXEC to a live OpenPBS install on this host (e.g." \
         "PBS_EXEC=/opt/pbs, with /etc/pbs.conf or PBS_CONF_FILE) and PBS_LIVE_USER to a" \
         "non-root user who may submit jobs"
    exit 77
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "pbs_live: run as root (qmgr, pbsnodes -o, the mom's files)" >&2
    exit 2
fi
for tool in bin/qmgr bin/qsub bin/qstat bin/qdel bin/pbsnodes sbin/pbs_mom; do
    if [ ! -x "$PBS_EXEC/$tool" ]; then
        echo "pbs_live: $PBS_EXEC/$tool not found: is PBS_EXEC the OpenPBS prefix?" >&2
        exit 2
    fi
done
if ! id "$PBS_LIVE_USER" >/dev/null 2>&1 || [ "$(id -u "$PBS_LIVE_USER")" -eq 0 ]; then
    echo "pbs_live: PBS_LIVE_USER=$PBS_LIVE_USER must be an existing non-root user" >&2
    exit 2
fi

if [ -z "${MSRSAVE:-}" ]; then
    echo "building msrsave (cargo build -p msrsave)..."
    (cd "$repo" && cargo build -q -p msrsave)
    target=${CARGO_TARGET_DIR:-$repo/target}
    case $target in /*) ;; *) target=$repo/$target ;; esac
    MSRSAVE=$target/debug/msrsave
fi
if [ ! -x "$MSRSAVE" ]; then
    echo "pbs_live: msrsave not found at $MSRSAVE" >&2
    exit 2
fi
export MSRSAVE PBS_EXEC PBS_LIVE_USER
exec python3 "$here/live_pbs.py" "$@"
