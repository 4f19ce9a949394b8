#!/bin/sh
# Install the msr-restore PBS hooks (OpenPBS / PBS Professional). Run on the PBS server host as
# root (or a PBS manager). msrsave must already be installed on every execution host.
#
#   install.sh [--config FILE] [--hook FILE] [--prefix NAME] [--with-execjob-begin] [--dry-run]
#
# Creates (or updates) three hooks running the same script with the same config file:
#   PREFIX_begin  execjob_prologue,exechost_startup   fail_action=offline_vnodes
#   PREFIX_end    execjob_epilogue,execjob_end        (PBS only logs errors here; the hook
#                                                      takes the vnode offline itself)
#   PREFIX_check  exechost_periodic                   freq = check_freq from the config
# alarm on all three = alarm from the config. offline_vnodes is set only on the hook whose events
# PBS accepts it for (execjob_begin, execjob_prologue, exechost_startup).
# --with-execjob-begin adds execjob_begin to PREFIX_begin (snapshot on every host at job start,
# for sites whose jobs reach sister hosts without PBS starting a task there).
# Environment: QMGR (default: qmgr in PATH or $PBS_EXEC/bin/qmgr), PYTHON (default python3).
set -eu

here=$(cd "$(dirname "$0")" && pwd)
config=$here/msr_restore_hook.json
hook=$here/msr_restore_hook.py
prefix=msr_restore
begin_events=execjob_prologue,exechost_startup
dry_run=false

usage() {
    sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'
    exit "${1:-2}"
}

while [ $# -gt 0 ]; do
    case $1 in
        --config) [ $# -ge 2 ] || usage; config=$2; shift 2 ;;
        --hook) [ $# -ge 2 ] || usage; hook=$2; shift 2 ;;
        --prefix) [ $# -ge 2 ] || usage; prefix=$2; shift 2 ;;
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
PYTHON=${PYTHON:-python3}
if command -v "$PYTHON" >/dev/null 2>&1; then
    if ! "$PYTHON" "$hook" --check-config "$config" >/dev/null; then
        echo "install.sh: $config has errors (see above); fix it first" >&2
        exit 1
    fi
    alarm=$("$PYTHON" "$hook" --check-config "$config" --get alarm 2>/dev/null)
    freq=$("$PYTHON" "$hook" --check-config "$config" --get check_freq 2>/dev/null)
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

install_hook() { # NAME EVENTS FAIL_ACTION FREQ
    name=$1
    if exists "$name"; then
        echo "hook $name exists: updating it"
        q "set hook $name enabled = false"
    else
        q "create hook $name"
    fi
    q "import hook $name application/x-python default $hook"
    q "import hook $name application/x-config default $config"
    q "set hook $name event = '$2'"
    q "set hook $name alarm = $alarm"
    q "set hook $name fail_action = $3"
    if [ -n "$4" ]; then
        q "set hook $name freq = $4"
    fi
    q "set hook $name enabled = true"
}

install_hook "${prefix}_begin" "$begin_events" offline_vnodes ""
install_hook "${prefix}_end" "execjob_epilogue,execjob_end" none ""
install_hook "${prefix}_check" "exechost_periodic" none "$freq"

if ! $dry_run; then
    echo "installed: ${prefix}_begin ${prefix}_end ${prefix}_check (alarm ${alarm}s, drift check every ${freq}s)"
    echo "check with: $QMGR -c 'list hook ${prefix}_begin'; the moms pick the hooks up on their own"
fi
