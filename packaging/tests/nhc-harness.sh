#!/bin/bash
# A stand-in for LBNL NHC's driver (nhc is not in Debian), enough to run one check the way
# nhc does: every INCDIR/*.nhc is sourced into one bash with nhc's shell settings (set -f,
# extglob, nhc's PATH), then the check function runs with nhc's helpers:
#   die [RC] MSG   log "Health check failed: MSG" and exit RC (default 1), as nhc does
#                  outside check-all mode (it would also mark the node offline)
#   log MSG        print MSG;  dbg MSG  print when DEBUG=1
# TIMEOUT (nhc's overall limit, default 30) is set as nhc sets it.
#
#   nhc-harness.sh INCDIR CHECK [ARGS...]     exit status: the check's (0 healthy)
PATH="/sbin:/usr/sbin:/bin:/usr/bin"
TIMEOUT=${TIMEOUT:-30}
DEBUG=${DEBUG:-0}
HOSTNAME=${HOSTNAME:-$(cat /proc/sys/kernel/hostname 2>/dev/null || echo localhost)}
export PATH TIMEOUT HOSTNAME

function log() { echo "$@"; }
function dbg() { if [[ "$DEBUG" == 1 ]]; then echo "DEBUG:  $*" >&2; fi; return 0; }
function die() {
    local RET=1
    if [[ -n "$1" && "$1" == +([0-9]) ]]; then
        RET=$1
        shift
    fi
    log "ERROR:  nhc:  Health check failed:  $*"
    exit "$RET"
}

shopt -s expand_aliases extglob
incdir=$1
shift
for f in "$incdir"/*.nhc; do
    # shellcheck disable=SC1090
    . "$f"
done
set -f
"$@"
rc=$?
echo "nhc-harness: $1 returned $rc"
exit $rc
