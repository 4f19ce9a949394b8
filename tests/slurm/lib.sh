# shellcheck shell=bash
# Common settings of the one-node SLURM test cluster. Sourced by setup.sh, stop.sh, run.sh and
# scenarios.sh.
#
# The cluster runs the host's Slurm, or, when MSR_SLURM_CHROOT names a root directory (e.g. a
# Debian 13 root holding Slurm 24.11), that root's Slurm and munge, chrooted: setup.sh mounts
# /proc and /sys there and binds MSR_SLURM_DIR at the same path inside, so every file of the
# cluster has one path for the test scripts and for the daemons; stop.sh unmounts them.
#
# Everything lives under one scratch directory (MSR_SLURM_DIR), so the test cluster does not touch
# /etc/slurm, the system munged or any other SLURM on the machine:
#   etc/slurm.conf etc/plugstack.conf   the configuration (readable by the test user; cgroup.conf
#                                       for Slurm 23.02 and later)
#   munge/                              our own munged: socket, key copy, pid, log, seed
#   run/                                daemon pid files
#   log/                                slurmctld.log slurmd.log
#   spool/ state/                       slurmd spool, slurmctld state
#   lib/                                the installed plugin
#   jobs/                               job output files (mode 1777)

MSR_SLURM_DIR=${MSR_SLURM_DIR:-/tmp/msr-restore-slurm}
MSR_SLURM_CHROOT=${MSR_SLURM_CHROOT:-}
MSR_SLURM_CTLD_PORT=${MSR_SLURM_CTLD_PORT:-6817}
MSR_SLURM_SLURMD_PORT=${MSR_SLURM_SLURMD_PORT:-6818}
export SLURM_CONF="$MSR_SLURM_DIR/etc/slurm.conf"
# shellcheck disable=SC2034 # used by setup.sh
MUNGE_SOCKET="$MSR_SLURM_DIR/munge/munge.socket"
NODE_NAME=$(hostname -s)

log() { printf '[slurm-test] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# in_root CMD...: run CMD with the cluster's Slurm: on the host, or chrooted into
# MSR_SLURM_CHROOT (clean environment, SLURM_CONF set, the current directory kept when the root
# has it, e.g. inside MSR_SLURM_DIR).
in_root() {
    if [[ -z $MSR_SLURM_CHROOT ]]; then
        command "$@"
        return
    fi
    local cwd=/
    [[ -d $MSR_SLURM_CHROOT$PWD ]] && cwd=$PWD
    chroot "$MSR_SLURM_CHROOT" /usr/bin/env -i -C "$cwd" PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root \
        LC_ALL=C.UTF-8 SLURM_CONF="$SLURM_CONF" "$@"
}
# The Slurm commands the scripts call are the cluster's (a chrooted root's Slurm only talks to
# clients of its own release range: the host's 22.05 scontrol cannot talk to a 24.11 slurmctld).
scontrol() { in_root scontrol "$@"; }
squeue() { in_root squeue "$@"; }
slurmd() { in_root slurmd "$@"; }
slurmctld() { in_root slurmctld "$@"; }
# The path of the cluster's COMMAND as its daemons see it (e.g. scontrol= for the plugin).
# shellcheck disable=SC2016 # $1 is the inner shell's
root_path() { in_root sh -c 'command -v "$1"' sh "$1"; }
# The cluster's Slurm release, MAJOR.MINOR.MICRO, from `slurmd -V` ("slurm 24.11.5", Debian:
# "slurm-wlm 24.11.5").
slurm_release() { slurmd -V 2>/dev/null | sed -n 's/^slurm[^ ]* \([0-9][0-9]*\.[0-9][0-9]*\.[0-9][0-9]*\).*/\1/p' | head -n1; }

# Mount what the chrooted daemons need (idempotent): /proc, /sys, the host's /etc/hosts (they share
# its host name and network; without it every lookup of the node's name waits for DNS: 5 s
# stalls of slurmctld) and MSR_SLURM_DIR at its own path.
mount_root() {
    [[ -n $MSR_SLURM_CHROOT ]] || return 0
    local r=$MSR_SLURM_CHROOT
    mountpoint -q "$r/proc" || mount -t proc proc "$r/proc" || return 1
    mountpoint -q "$r/sys" || mount -t sysfs -o ro sysfs "$r/sys" || mount --bind -o ro /sys "$r/sys" || return 1
    if ! mountpoint -q "$r/etc/hosts"; then
        [[ -e $r/etc/hosts ]] || : >"$r/etc/hosts"
        mount --bind /etc/hosts "$r/etc/hosts" && mount -o remount,bind,ro "$r/etc/hosts" || return 1
    fi
    mkdir -p "$r$MSR_SLURM_DIR" || return 1
    mountpoint -q "$r$MSR_SLURM_DIR" || mount --bind "$MSR_SLURM_DIR" "$r$MSR_SLURM_DIR" || return 1
}
# Undo mount_root (after the daemons are stopped).
umount_root() {
    [[ -n $MSR_SLURM_CHROOT ]] || return 0
    local r=$MSR_SLURM_CHROOT m rc=0
    for m in "$r$MSR_SLURM_DIR" "$r/etc/hosts" "$r/sys" "$r/proc"; do
        if mountpoint -q "$m"; then
            umount "$m" 2>/dev/null || umount -l "$m" || { log "cannot unmount $m"; rc=1; }
        fi
    done
    return $rc
}

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

# When the node's current slurmd started, as slurmctld saw it register (seconds since the epoch),
# or nothing before the first registration. Parsed in the cluster's root: its time zone is the
# one slurmctld printed the time in.
slurmd_start_time() {
    local t
    t=$(scontrol show node "$NODE_NAME" 2>/dev/null | sed -n 's/.*SlurmdStartTime=\([0-9T:-]*\).*/\1/p' | head -n1)
    [[ -n $t ]] && in_root date -d "$t" +%s 2>/dev/null
    return 0
}

# The node's state and reason, one line, for assertions and messages.
node_state_reason() {
    scontrol show node "$NODE_NAME" 2>/dev/null |
        awk '/ State=/{for(i=1;i<=NF;i++) if ($i ~ /^State=/) s=$i} /Reason=/{sub(/^ *Reason=/,""); r=$0} END{print s" Reason="r}'
}
