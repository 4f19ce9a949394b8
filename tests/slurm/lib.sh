# shellcheck shell=bash
# Common settings of the one-node SLURM test cluster. Sourced by setup.sh, stop.sh and run.sh.
#
# Everything lives under one scratch directory (MSR_SLURM_DIR), so the test cluster does not touch
# /etc/slurm, the system munged or any other SLURM on the machine:
#   etc/slurm.conf etc/plugstack.conf   the configuration (readable by the test user)
#   munge/                              our own munged: socket, key copy, pid, log, seed
#   run/                                daemon pid files
#   log/                                slurmctld.log slurmd.log
#   spool/ state/                       slurmd spool, slurmctld state
#   lib/                                the installed plugin
#   jobs/                               job output files (mode 1777)

MSR_SLURM_DIR=${MSR_SLURM_DIR:-/tmp/msr-restore-slurm}
MSR_SLURM_CTLD_PORT=${MSR_SLURM_CTLD_PORT:-6817}
MSR_SLURM_SLURMD_PORT=${MSR_SLURM_SLURMD_PORT:-6818}
export SLURM_CONF="$MSR_SLURM_DIR/etc/slurm.conf"
MUNGE_SOCKET="$MSR_SLURM_DIR/munge/munge.socket"
NODE_NAME=$(hostname -s)

log() { printf '[slurm-test] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# The state of process PID from /proc (R, S, D, Z, ...), or nothing when it is gone.
proc_state() {
    local pid=$1
    [[ -r /proc/$pid/stat ]] || return 0
    # The command name is in parentheses and may contain spaces: take what follows the last ')'.
    local stat
    stat=$(cat "/proc/$pid/stat" 2>/dev/null) || return 0
    stat=${stat##*) }
    printf '%s' "${stat%% *}"
}

# True when PID is a live process (a zombie does not count: PID 1 here may reap late).
pid_alive() {
    local st
    st=$(proc_state "$1")
    [[ -n $st && $st != Z && $st != X ]]
}

# Stop the daemon whose pid file is $1: SIGTERM, wait up to $2 seconds (default 10), then SIGKILL.
stop_pidfile() {
    local pidfile=$1 wait_s=${2:-10} pid i
    [[ -f $pidfile ]] || return 0
    pid=$(tr -dc '0-9' <"$pidfile")
    if [[ -z $pid ]]; then rm -f "$pidfile"; return 0; fi
    if pid_alive "$pid"; then
        kill -TERM "$pid" 2>/dev/null || true
        for ((i = 0; i < wait_s * 10; i++)); do
            pid_alive "$pid" || break
            sleep 0.1
        done
        if pid_alive "$pid"; then
            log "pid $pid ($pidfile) did not stop on SIGTERM: SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
            for ((i = 0; i < 50; i++)); do
                pid_alive "$pid" || break
                sleep 0.1
            done
        fi
    fi
    pid_alive "$pid" && { log "pid $pid ($pidfile) still alive"; return 1; }
    rm -f "$pidfile"
}

# The node's state as scontrol shows it: IDLE, ALLOCATED, MIXED, IDLE+DRAIN, DOWN+NOT_RESPONDING...
node_state() {
    scontrol show node "$NODE_NAME" 2>/dev/null | sed -n 's/.* State=\([^ ]*\).*/\1/p' | head -n1
}

# Wait until the node is in one of the states matching the regex $1 (node_state), up to $2 seconds.
wait_node_state() {
    local want=$1 timeout=${2:-30} i st
    for ((i = 0; i < timeout * 10; i++)); do
        st=$(node_state)
        if [[ $st =~ ^($want)$ ]]; then
            return 0
        fi
        sleep 0.1
    done
    log "node $NODE_NAME is '$st', not /$want/ after ${timeout}s"
    return 1
}

# The node's state and reason, one line, for assertions and messages.
node_state_reason() {
    scontrol show node "$NODE_NAME" 2>/dev/null |
        awk '/ State=/{for(i=1;i<=NF;i++) if ($i ~ /^State=/) s=$i} /Reason=/{sub(/^ *Reason=/,""); r=$0} END{print s" Reason="r}'
}
