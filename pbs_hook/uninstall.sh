#!/bin/sh
# Remove the msr-restore PBS hooks installed by install.sh. Run on the PBS server host.
#
#   uninstall.sh [--prefix NAME] [--dry-run]
#
# Vnodes the hooks took offline stay offline (their comment starts with "msr-restore: "): list
# them with  pbsnodes -l  and bring them back with  pbsnodes -r NODE  once their MSRs are right.
# Each host keeps its marker /var/lib/msr-restore/pbs_hook/offline.json and msrsave's job state
# (msrsave job status says which jobs it holds) until removed by hand.
# Remove them with this script rather than 'qmgr -c "delete hook ..."': see below.
# The resource msr_changed stays: the server refuses to delete a resource finished jobs in its
# history still have ("Resource busy on job"); qmgr -c "delete resource msr_changed" once none do.
# Environment: QMGR as for install.sh.
set -eu

prefix=msr_restore
dry_run=false
while [ $# -gt 0 ]; do
    case $1 in
        --prefix) [ $# -ge 2 ] || { echo "uninstall.sh: --prefix needs a value" >&2; exit 2; }
                  prefix=$2; shift 2 ;;
        --dry-run) dry_run=true; shift ;;
        -h|--help) sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "uninstall.sh: unknown argument: $1" >&2; exit 2 ;;
    esac
done
case $prefix in
    ''|*[!A-Za-z0-9_]*) echo "uninstall.sh: --prefix must be letters, digits and _" >&2; exit 2 ;;
esac

QMGR=${QMGR:-}
if [ -z "$QMGR" ]; then
    if command -v qmgr >/dev/null 2>&1; then
        QMGR=qmgr
    elif [ -n "${PBS_EXEC:-}" ] && [ -x "$PBS_EXEC/bin/qmgr" ]; then
        QMGR=$PBS_EXEC/bin/qmgr
    else
        QMGR=/opt/pbs/bin/qmgr
    fi
fi

q() {
    if $dry_run; then
        echo "$QMGR -c \"$1\""
    else
        echo "+ qmgr -c \"$1\""
        "$QMGR" -c "$1"
    fi
}

# Each hook is disabled, then turned into a server 'periodic' hook, then deleted. The middle
# step works around a pbs_server bug (OpenPBS 23.06): 'set hook H freq' on an enabled mom hook
# also starts a server timer for H, and 'delete hook H' drops that timer only for hooks with the
# 'periodic' event; the timer left behind runs on freed memory and, sooner or later, makes
# pbs_server spin writing "periodic hook is missing information" to its log (gigabytes a
# minute). A hook without mom events is also deleted at once, not left "pending delete" until
# every mom has dropped it; the moms still get the deletion (now, or when they come back).
removed=0
for name in "${prefix}_begin" "${prefix}_end" "${prefix}_check"; do
    if ! $dry_run && ! "$QMGR" -c "list hook $name" >/dev/null 2>&1; then
        echo "hook $name is not installed"
        continue
    fi
    q "set hook $name enabled = false"
    q "set hook $name event = periodic"
    q "delete hook $name"
    removed=$((removed + 1))
done
$dry_run || echo "removed $removed hook(s); resource msr_changed left defined; vnodes offline with a comment starting 'msr-restore: ' stay offline (pbsnodes -l)"
