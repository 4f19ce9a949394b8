#!/bin/sh
# Install the msr-restore PBS hooks (OpenPBS / PBS Professional). Run on the PBS server host as
# root (or a PBS manager). msrsave must already be installed on every execution host.
#
#   install.sh [--config FILE] [--hook FILE] [--prefix NAME] [--with-execjob-begin]
#              [--msrsave PATH] [--dry-run]
#
# Creates the string resource msr_changed (what each job changed, in resources_used.msr_changed)
# and creates (or updates) three hooks running the same script with the same config file:
#   PREFIX_begin  execjob_prologue,exechost_startup   fail_action=offline_vnodes
#   PREFIX_end    execjob_epilogue,execjob_end        (PBS only logs errors here; the hook
#                                                      takes the vnode offline itself)
#   PREFIX_check  exechost_periodic                   freq = check_freq from the config
# alarm on all three = alarm from the config. offline_vnodes is set only on the hook whose events
# PBS accepts it for (execjob_begin, execjob_prologue, exechost_startup).
# --with-execjob-begin adds execjob_begin to PREFIX_begin (snapshot on every host at job start,
# for sites whose jobs reach sister hosts without PBS starting a task there).
# The config is checked first (msr_restore_hook.py --check-config): the hook's keys by the hook,
# the msr-restore keys by msrsave (config show), which must be on this host: the config's msrsave
# path, or --msrsave PATH.
# Run right after uninstall.sh, it waits (MSR_RESTORE_QMGR_WAIT s, default 120) while the server
# still has the names pending delete. Running it again is always safe: it updates what exists.
# Environment: QMGR (default: qmgr in PATH or $PBS_EXEC/bin/qmgr), PYTHON (default python3),
# MSR_RESTORE_QMGR_WAIT.
set -eu

here=$(cd "$(dirname "$0")" && pwd)
config=$here/msr_restore_hook.json
hook=$here/msr_restore_hook.py
prefix=msr_restore
msrsave=
begin_events=execjob_prologue,exechost_startup
dry_run=false

usage() {
    sed -n '2,24p' "$0" | sed 's/^# \{0,1\}//'
    exit "${1:-2}"
}

while [ $# -gt 0 ]; do
    case $1 in
        --config) [ $# -ge 2 ] || usage; config=$2; shift 2 ;;
        --hook) [ $# -ge 2 ] || usage; hook=$2; shift 2 ;;
        --prefix) [ $# -ge 2 ] || usage; prefix=$2; shift 2 ;;
        --msrsave) [ $# -ge 2 ] || usage; msrsave=$2; shift 2 ;;
        --with-execjob-begin) begin_events=execjob_begin,execjob_prologue,exechost_startup; shift ;;
        --dry-run) dry_run=true; shift ;;
        -h|--help) usage 0 ;;
        *) echo "install.sh: unknown argument: $1" >&2; usage ;;
    esac
done

case $prefix in
    ''|*[!A-Za-z0-9_]*) echo "install.sh: --prefix must be letters, digits and _" >&2; exit 2 ;;
esac
for f in "$hook" "$config"; do
    if [ ! -r "$f" ]; then
        echo "install.sh: cannot read $f" >&2
        exit 2
    fi
    case $f in
        *[[:space:]\'\"]*) echo "install.sh: qmgr cannot import $f: no spaces or quotes in the path, please" >&2; exit 2 ;;
    esac
done

QMGR=${QMGR:-}
if [ -z "$QMGR" ]; then
    if command -v qmgr >/dev/null 2>&1; then
        QMGR=qmgr
    elif [ -n "${PBS_EXEC:-}" ] && [ -x "$PBS_EXEC/bin/qmgr" ]; then
        QMGR=$PBS_EXEC/bin/qmgr
    elif [ -x /opt/pbs/bin/qmgr ]; then
        QMGR=/opt/pbs/bin/qmgr
    elif ! $dry_run; then
        echo "install.sh: qmgr not found (set QMGR or PBS_EXEC)" >&2
        exit 2
    else
        QMGR=qmgr
    fi
fi

# Validate the config and take alarm and freq from it (single source of truth).
alarm=30
freq=120
# The hook's JOB_RESOURCE (test_install checks they agree).
resource=msr_changed
PYTHON=${PYTHON:-python3}
if command -v "$PYTHON" >/dev/null 2>&1; then
    set -- --check-config "$config"
    if [ -n "$msrsave" ]; then set -- "$@" --msrsave "$msrsave"; fi
    # One run judges the whole config (exit 1 on any error, said on stderr) and gives alarm.
    if ! alarm=$("$PYTHON" "$hook" "$@" --get alarm); then
        echo "install.sh: $config has errors (see above); fix it first" >&2
        exit 1
    fi
    freq=$("$PYTHON" "$hook" "$@" --get check_freq 2>/dev/null)
else
    echo "install.sh: $PYTHON not found: config not validated; using alarm=$alarm freq=$freq" >&2
fi
alarm=${alarm%.*}
freq=${freq%.*}

q() {
    if $dry_run; then
        echo "$QMGR -c \"$1\""
    else
        echo "+ qmgr -c \"$1\""
        "$QMGR" -c "$1"
    fi
}

exists() {
    $dry_run && return 1
    "$QMGR" -c "list hook $1" >/dev/null 2>&1
}

# A deleted hook's name stays "pending delete" on the server until every mom has dropped the
# hook (a second or so; as long as a mom is down): create waits for it, up to $wait seconds.
wait=${MSR_RESTORE_QMGR_WAIT:-120}
case $wait in ''|*[!0-9]*) echo "install.sh: MSR_RESTORE_QMGR_WAIT must be seconds" >&2; exit 2 ;; esac

create_hook() { # NAME
    if $dry_run; then
        q "create hook $1"
        return 0
    fi
    waited=0
    while :; do
        if out=$("$QMGR" -c "create hook $1" 2>&1); then
            echo "+ qmgr -c \"create hook $1\""
            return 0
        fi
        case $out in
            *"pending delete"*) ;;
            *) echo "$out" >&2; return 1 ;;
        esac
        if [ "$waited" -ge "$wait" ]; then
            echo "install.sh: hook $1 is still pending delete after ${wait}s: the server forgets a" \
                 "deleted hook once every mom has dropped it; bring back the moms that are down" \
                 "(pbsnodes -l) and run install.sh again" >&2
            return 1
        fi
        if [ "$waited" -eq 0 ]; then
            echo "hook $1 is pending delete on the server (uninstalled just now?): waiting up to ${wait}s"
        fi
        sleep 1
        waited=$((waited + 1))
    done
}

# The string resource the end hook records what the jobs changed in (resources_used.NAME: qstat
# -x -f, the accounting log). The hook sets it only where the moms' copy of the server's
# resourcedef has it as a string: another type here is left alone, and the hook then does not.
if $dry_run; then
    q "create resource $resource type=string"
elif out=$("$QMGR" -c "list resource $resource" 2>/dev/null); then
    case $out in
        *"type = string"*) echo "resource $resource exists" ;;
        *) echo "install.sh: resource $resource exists and is not a string: jobs' MSR changes" \
                "go to their job logs only (tracejob); qmgr -c 'list resource $resource'" >&2 ;;
    esac
else
    q "create resource $resource type=string"
fi

# Phase 1: every hook exists and is disabled, so that nothing runs half configured, and a run
# stopped here (a name still pending delete) leaves no hook with events: run install.sh again.
begin=${prefix}_begin
end=${prefix}_end
check=${prefix}_check
for name in "$begin" "$end" "$check"; do
    if exists "$name"; then
        echo "hook $name exists: updating it"
    else
        create_hook "$name" || exit 1
    fi
    q "set hook $name enabled = false"
done

configure_hook() { # NAME EVENTS FAIL_ACTION FREQ
    name=$1
    q "import hook $name application/x-python default $hook"
    q "import hook $name application/x-config default $config"
    q "set hook $name event = '$2'"
    q "set hook $name alarm = $alarm"
    q "set hook $name fail_action = $3"
    if [ -n "$4" ]; then
        q "set hook $name freq = $4"
    fi
}

# Phase 2: configure all three, then enable them.
configure_hook "$begin" "$begin_events" offline_vnodes ""
configure_hook "$end" "execjob_epilogue,execjob_end" none ""
configure_hook "$check" "exechost_periodic" none "$freq"
for name in "$begin" "$end" "$check"; do
    q "set hook $name enabled = true"
done

# Phase 3: what the server now has.
if ! $dry_run; then
    for name in "$begin" "$end" "$check"; do
        if ! "$QMGR" -c "list hook $name" 2>/dev/null | grep -q "enabled = true"; then
            echo "install.sh: hook $name is not there and enabled after the install:" >&2
            "$QMGR" -c "list hook $name" >&2 || true
            exit 1
        fi
    done
fi

if ! $dry_run; then
    echo "installed: ${prefix}_begin ${prefix}_end ${prefix}_check (alarm ${alarm}s, drift check every ${freq}s)"
    echo "check with: $QMGR -c 'list hook ${prefix}_begin'; the moms pick the hooks up on their own"
fi
