#!/usr/bin/env bash
# The scenarios of the SLURM suite on one Slurm series: run by tests/slurm/run.sh, once per series
# (run that; this script expects what it prepares).
#
# Environment (set by run.sh):
#   SERIES            the Slurm major.minor under test, e.g. 24.11 (labels every PASS/FAIL line)
#   MSR_SLURM_DIR     this series' scratch directory; MSR_SLURM_CHROOT the root whose Slurm runs
#                     the cluster (empty: the host's), see lib.sh
#   PLUGIN_BUILD      libspank_msr.so built against this series' headers
#   OTHER_PLUGINS     "X.Y=PATH ...": builds for other series (the mismatch scenario), may be empty
#   MSRSAVE_BUILD     the release msrsave; PERF=1 for the performance measurement; PERF_JOBS
# Starts the cluster, runs the jobs as the user msrtest on an emulated node, stops the cluster
# (also on failure or interruption). Prints "PASS [X.Y] ..." / "FAIL [X.Y] ..." per assertion
# ("NOT RUN [X.Y] ..." for a scenario that needs what is not here) and writes "PASSED FAILED
# NOT_RUN" to MSR_SLURM_DIR/counts; exits non-zero on any failure.
set -uo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
# shellcheck source=lib.sh
. "$here/lib.sh"

: "${SERIES:?} ${PLUGIN_BUILD:?} ${MSRSAVE_BUILD:?}"
OTHER_PLUGINS=${OTHER_PLUGINS:-} PERF=${PERF:-0}
[[ $(id -u) == 0 ]] || die "run as root"

PASSED=0 FAILED=0 NOT_RUN=0
pass() { printf 'PASS [%s] %s\n' "$SERIES" "$*"; PASSED=$((PASSED + 1)); }
fail() { printf 'FAIL [%s] %s\n' "$SERIES" "$*"; FAILED=$((FAILED + 1)); }
# check DESCRIPTION COMMAND...: PASS when the command succeeds.
check() {
    local d=$1
    shift
    if "$@"; then pass "$d"; else fail "$d"; fi
}

TEST_USER=msrtest
NODE_DIR="$MSR_SLURM_DIR/node"          # the emulated node the plugin works on (root=)
STATE_DIR="$MSR_SLURM_DIR/msr-state"    # the plugin's state_dir=
JOBS="$MSR_SLURM_DIR/jobs"              # job scripts, outputs and flag files (1777)
PLUGIN="$MSR_SLURM_DIR/lib/libspank_msr.so"
MSRSAVE="$MSR_SLURM_DIR/bin/msrsave"
ALLOWLIST="$MSR_SLURM_DIR/etc/allowlist"
immutable=()

cleanup() {
    local rc=$? f
    # Ended before its scenarios did (a cluster that did not start, an interruption): a failure.
    ((rc != 0 && FAILED == 0)) && fail "the scenarios ended early (exit status $rc)"
    for f in "${immutable[@]+"${immutable[@]}"}"; do chattr -i "$f" 2>/dev/null; done
    "$here/stop.sh" || log "stop.sh reported a daemon that did not stop"
    echo "$PASSED $FAILED $NOT_RUN" >"$MSR_SLURM_DIR/counts"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- install --------------------------------------------------------------------------------------
"$here/stop.sh" >/dev/null 2>&1 || true
rm -f "$MSR_SLURM_DIR/counts"
mkdir -p "$MSR_SLURM_DIR"/{lib,bin,etc}
chmod 755 "$MSR_SLURM_DIR" "$MSR_SLURM_DIR"/{lib,bin,etc}
# Replace a loaded .so atomically: a temporary name, then rename.
install -m 755 "$PLUGIN_BUILD" "$PLUGIN.tmp" && mv -f "$PLUGIN.tmp" "$PLUGIN"
for o in $OTHER_PLUGINS; do
    install -m 755 "${o#*=}" "$MSR_SLURM_DIR/lib/libspank_msr-${o%%=*}.so.tmp" &&
        mv -f "$MSR_SLURM_DIR/lib/libspank_msr-${o%%=*}.so.tmp" "$MSR_SLURM_DIR/lib/libspank_msr-${o%%=*}.so"
done
install -m 755 "$MSRSAVE_BUILD" "$MSRSAVE"
install -m 755 "$repo/packaging/slurm/msr-healthcheck" "$MSR_SLURM_DIR/bin/msr-healthcheck"
install -m 755 "$repo/packaging/slurm/msr-restore-slurm-check" "$MSR_SLURM_DIR/bin/msr-restore-slurm-check"
install -m 755 "$repo/packaging/files/msr-restore-fleet" "$MSR_SLURM_DIR/bin/msr-restore-fleet"

# The test user, with the same uid and gid in a root as on the host (the emulated node's register
# files are given to its group on the host).
id "$TEST_USER" >/dev/null 2>&1 || useradd -M -d /nonexistent -s /bin/bash "$TEST_USER" ||
    die "cannot create user $TEST_USER"
if [[ -n $MSR_SLURM_CHROOT ]]; then
    uid=$(id -u "$TEST_USER") gid=$(id -g "$TEST_USER")
    if ! in_root id "$TEST_USER" >/dev/null 2>&1; then
        in_root groupadd -g "$gid" "$TEST_USER" || die "cannot create group $TEST_USER in $MSR_SLURM_CHROOT"
        in_root useradd -M -u "$uid" -g "$gid" -d /nonexistent -s /bin/bash "$TEST_USER" ||
            die "cannot create user $TEST_USER in $MSR_SLURM_CHROOT"
    fi
    [[ $(in_root id -u "$TEST_USER"):$(in_root id -g "$TEST_USER") == "$uid:$gid" ]] ||
        die "user $TEST_USER has another uid/gid in $MSR_SLURM_CHROOT than on the host ($uid:$gid)"
fi
as_user() { in_root runuser -u "$TEST_USER" -- env SLURM_CONF="$SLURM_CONF" "$@"; }

# --- the emulated node ----------------------------------------------------------------------------
# Four allowlisted MSRs: three writable (masks as msr-safe's allowlists give them), one read-only.
cat >"$ALLOWLIST" <<'EOF'
0x00000199 0x000000000000FFFF # IA32_PERF_CTL
0x000001A0 0x0000000000000000 # IA32_MISC_ENABLE
0x000001B0 0x000000000000000F # IA32_ENERGY_PERF_BIAS
0x00000610 0x00FFFFFFFFFFFFFF # MSR_PKG_POWER_LIMIT
EOF
chmod 644 "$ALLOWLIST"

# make_node DIR CPUS [ALLOWLIST]: an emulated node whose register files the test user may write,
# as msr-safe's udev rules let a group write /dev/cpu/*/msr_safe.
make_node() {
    local dir=$1 cpus=$2 list=${3:-$ALLOWLIST}
    rm -rf "$dir"
    "$MSRSAVE" --allowlist "$list" emulate --cpus "$cpus" -- "$dir" >/dev/null || return 1
    chgrp "$TEST_USER" "$dir"/dev/cpu/*/msr_safe && chmod g+w "$dir"/dev/cpu/*/msr_safe
}
make_node "$NODE_DIR" 4 || die "msrsave emulate failed"
rm -rf "$STATE_DIR"

# Registers of the emulated node: 8 little-endian bytes at offset 8*address.
reg() { od -An -t x8 -j $((8 * $3)) -N 8 "$1/dev/cpu/$2/msr_safe" | tr -d ' '; }
# A job script fragment that writes VALUE (16 hex digits) to CPU's register ADDR of NODE.
poke_cmd() {
    local node=$1 cpu=$2 addr=$3 hex=$4 bytes='' i
    for i in 7 6 5 4 3 2 1 0; do bytes+="\\x${hex:$((i * 2)):2}"; done
    printf "printf '%s' | dd of=%s bs=1 seek=%d count=8 conv=notrunc status=none" \
        "$bytes" "$node/dev/cpu/$cpu/msr_safe" $((8 * addr))
}
# VALUE with only the bits of MASK flipped (what a job may change through msr-safe).
flip() { printf '%016x' $(((0x$1) ^ ($2))); }

# --- SLURM ----------------------------------------------------------------------------------------
plugstack() { printf '%s\n' "$*" >"$MSR_SLURM_DIR/etc/plugstack.conf"; }
SCONTROL=$(root_path scontrol) || die "no scontrol${MSR_SLURM_CHROOT:+ in $MSR_SLURM_CHROOT}"
JOB_METRICS="$MSR_SLURM_DIR/msr_restore_jobs.prom"
rm -f "$JOB_METRICS" # counters: a previous run's would add up
PLUG_ARGS="root=$NODE_DIR state_dir=$STATE_DIR scontrol=$SCONTROL job_metrics=$JOB_METRICS"
plugstack "required $PLUGIN $PLUG_ARGS"
: >"$MSR_SLURM_DIR/etc/healthcheck.args"
mkdir -p "$JOBS" && chmod 1777 "$JOBS"
rm -f "$JOBS"/*
MSR_SLURM_HC_INTERVAL=5 "$here/setup.sh" --no-install || die "the SLURM cluster did not start"
RELEASE=$(slurm_release)
log "Slurm $RELEASE${MSR_SLURM_CHROOT:+ (chroot $MSR_SLURM_CHROOT)}, plugin built for $("$repo/spank_msr/plugin-version.sh" "$PLUGIN")"

restart_slurmd() { "$here/start-slurmd.sh" "$@" >/dev/null; }

# submit SCRIPT_BODY [sbatch options]: submit a batch job as the test user, print its id.
submit() {
    local body=$1 s
    shift
    s=$(mktemp "$JOBS/job.XXXXXX") || return 1
    printf '#!/bin/bash\nset -e\n%s\n' "$body" >"$s"
    chmod 755 "$s"
    as_user sbatch --parsable -n1 -o "$JOBS/%j.out" -D "$JOBS" "$@" "$s"
}
job_state() { scontrol show job -o "$1" 2>/dev/null | sed -n 's/.*JobState=\([^ ]*\).*/\1/p'; }
# Wait until job $1 has ended and its epilog is done (not PENDING/RUNNING/COMPLETING).
wait_job() {
    local id=$1 timeout=${2:-60} i st
    for ((i = 0; i < timeout * 20; i++)); do
        st=$(job_state "$id")
        case $st in PENDING | RUNNING | CONFIGURING | COMPLETING | SUSPENDED | "") ;; *)
            # The epilog may still run while the state already shows the end: wait for the node.
            if ! scontrol show job -o "$id" | grep -q 'JobState=COMPLETING'; then
                printf '%s\n' "$st"
                return 0
            fi
            ;;
        esac
        sleep 0.05
    done
    printf 'TIMEOUT(%s)\n' "$st"
    return 1
}
wait_file() { local i; for ((i = 0; i < ${2:-30} * 20; i++)); do [[ -e $1 ]] && return 0; sleep 0.05; done; return 1; }
slurmd_log_has() { grep -qF -- "$1" "$MSR_SLURM_DIR/log/slurmd.log"; }
node_reason() { scontrol show node "$NODE_NAME" | sed -n 's/^ *Reason=//p'; }
resume_node() { scontrol update nodename="$NODE_NAME" state=resume 2>/dev/null; wait_node_state IDLE 20 >/dev/null; }
no_state_left() { [[ ! -e $STATE_DIR/snapshot.msr && -z $(ls -A "$STATE_DIR/jobs" 2>/dev/null) ]]; }
not() { ! "$@"; }
# slurmd.log from a mark on (log_size), for what happened after it.
log_size() { stat -c %s "$MSR_SLURM_DIR/log/slurmd.log" 2>/dev/null || echo 0; }
log_since_has() { tail -c +$(($1 + 1)) "$MSR_SLURM_DIR/log/slurmd.log" | grep -qF -- "$2"; }
# Start slurmd with the current plugstack.conf; true when it gives up by itself within 20 s ("slurmd
# initialization failed") and no slurmd is left. slurmd daemonizes before it reads
# plugstack.conf, so its exit status says nothing.
slurmd_refuses() {
    local mark i pid
    stop_pidfile "$MSR_SLURM_DIR/run/slurmd.pid" 15 || return 1
    mark=$(log_size)
    slurmd -f "$SLURM_CONF" >/dev/null 2>&1
    for ((i = 0; i < 200; i++)); do
        log_since_has "$mark" "slurmd initialization failed" && break
        sleep 0.1
    done
    log_since_has "$mark" "slurmd initialization failed" || return 1
    for ((i = 0; i < 50; i++)); do
        pid=$(tr -dc '0-9' 2>/dev/null <"$MSR_SLURM_DIR/run/slurmd.pid")
        if [[ -z $pid ]] || ! pid_alive "$pid"; then return 0; fi
        sleep 0.1
    done
    return 1
}
# The package's check (msr-restore-slurm-check) run against this cluster's slurmd with a plugin
# series; prints its output, returns its status.
series_check() {
    echo "$1" >"$MSR_SLURM_DIR/etc/slurm-series"
    chmod 644 "$MSR_SLURM_DIR/etc/slurm-series"
    in_root "$MSR_SLURM_DIR/bin/msr-restore-slurm-check" --series-file "$MSR_SLURM_DIR/etc/slurm-series" 2>&1
}

# --- 0. the plugin is loaded; srun/sbatch contexts stay quiet ----------------------------------------
echo "== 0. plugin loaded by slurmd; nothing in srun's context"
check "slurmd loaded the plugin and checked its arguments" slurmd_log_has "msr-restore: loaded: state_dir=$STATE_DIR"
out=$(cd "$JOBS" && as_user srun -n1 /bin/true 2>&1)
check "srun as $TEST_USER runs and prints nothing of the plugin" test -z "$out"
sleep 0.5
wait_node_state IDLE 20 >/dev/null
SLURMD_PATH=$(root_path slurmd)
out=$(series_check "$SERIES")
rc=$?
check "msr-restore-slurm-check (the packages' post-install check): plugin for $SERIES, slurmd $RELEASE: agree, exit $rc ($out)" \
    test $rc = 0 -a -n "$(grep -F "built for Slurm $SERIES, as $SLURMD_PATH ($RELEASE)" <<<"$out")"

# --- 1. one job changes registers; the epilog restores them -----------------------------------------
echo "== 1. a job changes writable registers; the epilog puts them back"
b199=$(reg "$NODE_DIR" 0 0x199) b610=$(reg "$NODE_DIR" 3 0x610) b1b0=$(reg "$NODE_DIR" 1 0x1B0)
n199=$(flip "$b199" 0x00FF) n610=$(flip "$b610" 0x00F0000000000FFF) n1b0=$(flip "$b1b0" 0x5)
id=$(submit "$(poke_cmd "$NODE_DIR" 0 0x199 "$n199")
$(poke_cmd "$NODE_DIR" 3 0x610 "$n610")
$(poke_cmd "$NODE_DIR" 1 0x1B0 "$n1b0")
od -An -t x8 -j $((8 * 0x199)) -N 8 $NODE_DIR/dev/cpu/0/msr_safe | tr -d ' ' > $JOBS/1.seen")
st=$(wait_job "$id")
check "job $id completed (state $st)" test "$st" = COMPLETED
check "the job did change CPU 0 MSR 0x199 (it saw $(cat "$JOBS/1.seen" 2>/dev/null))" test "$(cat "$JOBS/1.seen" 2>/dev/null)" = "$n199"
check "CPU 0 MSR 0x199 restored to $b199 (now $(reg "$NODE_DIR" 0 0x199))" test "$(reg "$NODE_DIR" 0 0x199)" = "$b199"
check "CPU 3 MSR 0x610 restored to $b610 (now $(reg "$NODE_DIR" 3 0x610))" test "$(reg "$NODE_DIR" 3 0x610)" = "$b610"
check "CPU 1 MSR 0x1B0 restored to $b1b0 (now $(reg "$NODE_DIR" 1 0x1B0))" test "$(reg "$NODE_DIR" 1 0x1B0)" = "$b1b0"
check "the job's state is gone (no job file, no snapshot in $STATE_DIR)" no_state_left
check "slurmd.log: prolog took the snapshot" slurmd_log_has "msr-restore: job $id: first job on the node: snapshot of 4 CPUs x 4 MSRs"
check "slurmd.log: epilog restored (3 written, 3 verified)" slurmd_log_has "msr-restore: job $id: last job on the node: registers restored (3 written, 3 verified"
check "node idle after the job ($(node_state))" test "$(node_state)" = IDLE
check "slurmd.log: what the job changed, per MSR" slurmd_log_has "msr-restore: job $id: the job(s) that held the node changed 3 MSR(s)"
check "job_metrics counts each changed MSR once ($(grep -c '^msr_restore_job_changed_total' "$JOB_METRICS" 2>/dev/null) MSRs)" \
    grep -q '^msr_restore_job_changed_total{msr="0x00000199",msr_name="IA32_PERF_CTL"} 1$' "$JOB_METRICS"

# --- 2. two overlapping jobs: restore only after both end -------------------------------------------
echo "== 2. two overlapping jobs: registers restored only when the last one ends"
b199=$(reg "$NODE_DIR" 0 0x199) b610=$(reg "$NODE_DIR" 1 0x610)
n199=$(flip "$b199" 0x0F0F) n610=$(flip "$b610" 0xFF00)
rm -f "$JOBS"/{a.wrote,b.wrote,release-a,release-b}
ida=$(submit "$(poke_cmd "$NODE_DIR" 0 0x199 "$n199")
touch $JOBS/a.wrote
while [ ! -e $JOBS/release-a ]; do sleep 0.1; done")
wait_file "$JOBS/a.wrote" 30
idb=$(submit "while [ ! -e $JOBS/a.wrote ]; do sleep 0.1; done
$(poke_cmd "$NODE_DIR" 1 0x610 "$n610")
touch $JOBS/b.wrote
while [ ! -e $JOBS/release-b ]; do sleep 0.1; done")
check "both jobs run at once on the node" wait_file "$JOBS/b.wrote" 30
check "slurmd.log: job $idb joined job $ida" slurmd_log_has "msr-restore: job $idb: joins job(s) $ida on the node"
touch "$JOBS/release-a"
st=$(wait_job "$ida")
check "job $ida completed ($st)" test "$st" = COMPLETED
check "after the first job: CPU 0 MSR 0x199 still as the jobs left it ($(reg "$NODE_DIR" 0 0x199))" test "$(reg "$NODE_DIR" 0 0x199)" = "$n199"
check "after the first job: CPU 1 MSR 0x610 still as job $idb set it" test "$(reg "$NODE_DIR" 1 0x610)" = "$n610"
check "after the first job: snapshot kept, job $idb registered" test -e "$STATE_DIR/snapshot.msr" -a -e "$STATE_DIR/jobs/$idb" -a ! -e "$STATE_DIR/jobs/$ida"
check "slurmd.log: job $ida ended while job $idb runs: nothing restored" slurmd_log_has "msr-restore: job $ida: ended; job(s) $idb still on the node"
touch "$JOBS/release-b"
st=$(wait_job "$idb")
check "job $idb completed ($st)" test "$st" = COMPLETED
check "after both: CPU 0 MSR 0x199 restored to $b199 ($(reg "$NODE_DIR" 0 0x199))" test "$(reg "$NODE_DIR" 0 0x199)" = "$b199"
check "after both: CPU 1 MSR 0x610 restored to $b610" test "$(reg "$NODE_DIR" 1 0x610)" = "$b610"
check "after both: no state left" no_state_left

# --- 3. broken setup: unreadable allowlist ----------------------------------------------------------
echo "== 3. unreadable allowlist: required drains the node, optional lets the job run"
broken="$MSR_SLURM_DIR/etc/missing-allowlist"
rm -f "$broken"
plugstack "required $PLUGIN $PLUG_ARGS allowlist=$broken"
restart_slurmd
id=$(submit "echo ran > $JOBS/3a.ran" --no-requeue)
check "required: node drains" wait_node_state 'IDLE\+DRAIN|DRAIN.*' 30
r=$(node_reason)
check "required: drain reason names the prolog and the allowlist ($r)" grep -q "prolog job $id: cannot snapshot.*missing-allowlist" <<<"$r"
check "required: slurmd.log names the cause" grep -q "error: msr-restore: prolog job $id: cannot snapshot.*missing-allowlist" "$MSR_SLURM_DIR/log/slurmd.log"
st=$(wait_job "$id")
check "required: job $id did not run ($st)" test ! -e "$JOBS/3a.ran"
check "required: its epilog found nothing to restore" slurmd_log_has "msr-restore: job $id: was not registered on the node"
check "required: no state left" no_state_left
plugstack "optional $PLUGIN $PLUG_ARGS allowlist=$broken drain=no"
restart_slurmd --allow-drain
resume_node
id=$(submit "echo ran > $JOBS/3b.ran")
st=$(wait_job "$id")
check "optional: job $id ran ($st)" test "$st" = COMPLETED -a -e "$JOBS/3b.ran"
check "optional: node stays in service ($(node_state))" test "$(node_state)" = IDLE
check "optional: slurmd.log says what happened" grep -q "error: msr-restore: prolog job $id: cannot snapshot.*missing-allowlist" "$MSR_SLURM_DIR/log/slurmd.log"

# --- 4. a restore that cannot complete --------------------------------------------------------------
echo "== 4. a register file made unwritable: the epilog drains the node naming the register"
plugstack "required $PLUGIN $PLUG_ARGS"
restart_slurmd
b199=$(reg "$NODE_DIR" 2 0x199)
n199=$(flip "$b199" 0x3C)
rm -f "$JOBS"/{4.wrote,release-4}
id=$(submit "$(poke_cmd "$NODE_DIR" 2 0x199 "$n199")
touch $JOBS/4.wrote
while [ ! -e $JOBS/release-4 ]; do sleep 0.1; done")
wait_file "$JOBS/4.wrote" 30
regfile="$NODE_DIR/dev/cpu/2/msr_safe"
if chattr +i "$regfile"; then
    immutable+=("$regfile")
    touch "$JOBS/release-4"
    wait_job "$id" >/dev/null
    check "node drains" wait_node_state 'IDLE\+DRAIN|DRAIN.*' 30
    r=$(node_reason)
    check "drain reason names CPU 2 MSR 0x00000199 ($r)" grep -q "epilog job $id: restore incomplete.*CPU 2 MSR 0x00000199" <<<"$r"
    check "slurmd.log names the register" grep -q "error: msr-restore: epilog job $id: restore incomplete.*CPU 2 MSR 0x00000199" "$MSR_SLURM_DIR/log/slurmd.log"
    check "snapshot kept for a retry" test -e "$STATE_DIR/snapshot.msr"
    chattr -i "$regfile"
    immutable=()
    resume_node
    id2=$(submit "true")
    wait_job "$id2" >/dev/null
    check "next job reuses the kept snapshot" slurmd_log_has "msr-restore: job $id2: a snapshot left by an earlier failed restore is kept"
    check "its epilog restores CPU 2 MSR 0x199 to $b199 ($(reg "$NODE_DIR" 2 0x199))" test "$(reg "$NODE_DIR" 2 0x199)" = "$b199"
    check "node back in service, no state left" test "$(node_state)" = IDLE -a ! -e "$STATE_DIR/snapshot.msr"
else
    touch "$JOBS/release-4"
    wait_job "$id" >/dev/null
    fail "chattr +i is not supported on the file system of $MSR_SLURM_DIR (set MSR_SLURM_DIR to ext4/xfs)"
fi

# --- 5. health check --------------------------------------------------------------------------------
echo "== 5. HealthCheckProgram: drains a node with drift, leaves a clean one alone"
baseline="$MSR_SLURM_DIR/baseline.msr"
"$MSRSAVE" --root "$NODE_DIR" save -- "$baseline" >/dev/null
hc=(--baseline "$baseline" --root "$NODE_DIR" --state-dir "$STATE_DIR" --msrsave "$MSRSAVE")
out=$("$MSR_SLURM_DIR/bin/msr-healthcheck" "${hc[@]}")
rc=$?
check "clean node: health check exits 0 and says clean ($out)" test $rc = 0 -a -n "$(grep 'check clean' <<<"$out")"
check "clean node: not drained ($(node_state))" test "$(node_state)" = IDLE
# Now through slurmd itself (HealthCheckInterval=5 in this cluster's slurm.conf).
: >"$MSR_SLURM_DIR/log/healthcheck.log"
echo "${hc[*]}" >"$MSR_SLURM_DIR/etc/healthcheck.args"
for ((i = 0; i < 300; i++)); do [[ -s $MSR_SLURM_DIR/log/healthcheck.log ]] && break; sleep 0.1; done
check "slurmd runs it as HealthCheckProgram ($(head -c 150 "$MSR_SLURM_DIR/log/healthcheck.log"))" test -s "$MSR_SLURM_DIR/log/healthcheck.log"
check "slurmd's run: clean, node left alone ($(node_state))" test "$(node_state)" = IDLE
b=$(reg "$NODE_DIR" 1 0x199)
eval "$(poke_cmd "$NODE_DIR" 1 0x199 "$(flip "$b" 0x1)")"
check "drifted node: slurmd's health check drains it" wait_node_state 'IDLE\+DRAIN|DRAIN.*' 30
r=$(node_reason)
check "drain reason names the drift ($r)" grep -q "msr-restore health check: MSR drift: .*0x00000199" <<<"$r"
check "the health check says so in its output" grep -q "drained $NODE_NAME: msr-restore health check: MSR drift" "$MSR_SLURM_DIR/log/healthcheck.log"
: >"$MSR_SLURM_DIR/etc/healthcheck.args"
eval "$(poke_cmd "$NODE_DIR" 1 0x199 "$b")"
# Let a health check slurmd started before the args were emptied finish (HealthCheckInterval=5).
sleep 6
resume_node
# A message with quotes in it reaches the drain reason whole (msrsave's --format shell line).
bad="$MSR_SLURM_DIR/bad-baseline.json"
printf '{"format": "other", "version": 1}\n' >"$bad"
# Through the cluster's own scontrol (a 24.11 controller refuses the host's 22.05 client).
out=$(in_root "$MSR_SLURM_DIR/bin/msr-healthcheck" --baseline "$bad" --root "$NODE_DIR" --state-dir "$STATE_DIR" --msrsave "$MSRSAVE" 2>&1)
r=$(node_reason)
check "a quoted message stays whole in the drain reason ($r; the health check said: $out)" grep -qF 'format is "other", not "msr-restore-snapshot"' <<<"$r"
resume_node

# --- 6. a bad argument in plugstack.conf ------------------------------------------------------------
echo "== 6. a bad plugstack.conf argument: required stops slurmd at start, optional logs it"
plugstack "required $PLUGIN $PLUG_ARGS state-dir=/x"
mark=$(log_size)
check "required: slurmd refuses to start" slurmd_refuses
check "required: slurmd.log names the bad argument" \
    log_since_has "$mark" "error: msr-restore: bad argument 'state-dir=/x' in plugstack.conf: unknown key 'state-dir'"
plugstack "optional $PLUGIN $PLUG_ARGS state-dir=/x"
mark=$(log_size)
check "optional: slurmd starts" restart_slurmd
check "optional: slurmd.log names the bad argument" log_since_has "$mark" "error: msr-restore: bad argument 'state-dir=/x'"
id=$(submit "echo ran > $JOBS/6.ran")
st=$(wait_job "$id")
check "optional: job $id runs ($st)" test "$st" = COMPLETED -a -e "$JOBS/6.ran"
check "optional: node stays in service ($(node_state))" test "$(node_state)" = IDLE

# --- 7. the plugin built for another Slurm series ---------------------------------------------------
if [[ -z $OTHER_PLUGINS ]]; then
    echo "NOT RUN [$SERIES] 7. a plugin built for another Slurm series: no other series here (see run.sh: MSR_SLURM_ROOT_*)"
    NOT_RUN=$((NOT_RUN + 1))
fi
for o in $OTHER_PLUGINS; do
    os=${o%%=*}
    oso=$MSR_SLURM_DIR/lib/libspank_msr-$os.so
    ov=$("$repo/spank_msr/plugin-version.sh" "$oso")
    echo "== 7. the plugin built for Slurm $ov under slurmd $RELEASE: refused; with optional, jobs run unprotected"
    plugstack "required $oso $PLUG_ARGS"
    mark=$(log_size)
    check "required: slurmd refuses to start" slurmd_refuses
    check "required: slurmd.log: 'Incompatible Slurm plugin $oso version ($ov)'" \
        log_since_has "$mark" "Incompatible Slurm plugin $oso version ($ov)"
    plugstack "optional $oso $PLUG_ARGS"
    mark=$(log_size)
    check "optional: slurmd starts" restart_slurmd
    check "optional: slurmd.log says so at start" log_since_has "$mark" "Incompatible Slurm plugin $oso version ($ov)"
    b=$(reg "$NODE_DIR" 0 0x199)
    n=$(flip "$b" 0x00F0)
    mark=$(log_size)
    id=$(submit "$(poke_cmd "$NODE_DIR" 0 0x199 "$n")" 2>"$JOBS/7.sbatch.err")
    st=$(wait_job "$id")
    check "optional: job $id runs ($st)" test "$st" = COMPLETED
    check "optional: slurmd.log says so again in the job's step ([$id.batch])" \
        log_since_has "$mark" "[$id.batch] plugin_load_from_file: Incompatible Slurm plugin $oso version ($ov)"
    check "optional: sbatch tells the submitting user ($(grep -m1 -o 'Incompatible.*' "$JOBS/7.sbatch.err"))" \
        grep -qF "Incompatible Slurm plugin $oso version ($ov)" "$JOBS/7.sbatch.err"
    check "optional: nothing restored: CPU 0 MSR 0x199 left at $n by the job (now $(reg "$NODE_DIR" 0 0x199))" \
        test "$(reg "$NODE_DIR" 0 0x199)" = "$n"
    check "optional: slurmd.log has no line of the plugin after the start" not log_since_has "$mark" "msr-restore: "
    eval "$(poke_cmd "$NODE_DIR" 0 0x199 "$b")"
    out=$(series_check "$os")
    rc=$?
    check "msr-restore-slurm-check: plugin for $os, slurmd $RELEASE: warns, exit $rc" \
        test $rc = 1 -a -n "$(grep -F "spank_msr.so is built for Slurm $os; $SLURMD_PATH is Slurm $RELEASE." <<<"$out")"
done
plugstack "required $PLUGIN $PLUG_ARGS"

# --- 8. a job slurmd forgot ------------------------------------------------------------------------
echo "== 8. a registered job slurmd no longer runs (its epilog never ran) is ended by the next prolog"
restart_slurmd --allow-drain
resume_node
# What a slurmd crash leaves: a registration and the snapshot of the node before it.
b=$(reg "$NODE_DIR" 0 0x199)
"$MSRSAVE" --root "$NODE_DIR" --set "state_dir=$STATE_DIR" job begin 999999 >/dev/null
touch -d '10 minutes ago' "$STATE_DIR/jobs/999999"
eval "$(poke_cmd "$NODE_DIR" 0 0x199 "$(flip "$b" 0x0F)")"
id=$(submit "true")
st=$(wait_job "$id")
check "job $id completed ($st)" test "$st" = COMPLETED
check "slurmd.log: the forgotten job 999999 was ended, saying why" \
    slurmd_log_has "msr-restore: job 999999 ended by reconciliation: registered"
check "the node was restored to the state before job 999999 ($(reg "$NODE_DIR" 0 0x199))" test "$(reg "$NODE_DIR" 0 0x199)" = "$b"
check "no state left" no_state_left
restart_slurmd

# --- 9. fleet consistency through srun ------------------------------------------------------------
echo "== 9. msr-restore-fleet --via srun: one fingerprint per node, compared against a policy"
# shellcheck source=fleet.sh
. "$here/fleet.sh"
fleet_scenario "$NODE_DIR" "$MSRSAVE" "$MSR_SLURM_DIR/bin/msr-restore-fleet" "$NODE_NAME"

# --- performance: what the plugin adds to a job on a 256-CPU node ------------------------------------
# The same job (srun -n1 /bin/true as the test user) with no plugin and with the plugin on an
# emulated node of 256 CPUs and a Skylake-SP-sized allowlist. Per job: the srun time (with
# PrologFlags=Alloc srun starts the task only after the prolog) and the time until the node is
# idle again (the epilog is done). Medians over PERF_JOBS jobs each, after 2 warm-up jobs.
median() { sort -n | awk '{v[NR]=$1} END{if(NR==0){print "nan"} else if(NR%2){print v[(NR+1)/2]} else {print (v[NR/2]+v[NR/2+1])/2}}'; }
now_ms() { echo $(($(date +%s%N) / 1000)) | awk '{printf "%.1f", $1/1000}'; }
perf_run() { # LABEL N: prints "srun_ms total_ms" per job into $JOBS/perf-LABEL.txt
    local label=$1 n=$2 k t0 t1 t2
    : >"$JOBS/perf-$label.txt"
    for ((k = -2; k < n; k++)); do
        t0=$(now_ms)
        (cd "$JOBS" && as_user srun -n1 /bin/true) || return 1
        t1=$(now_ms)
        while [[ $(node_state) != IDLE ]]; do sleep 0.005; done
        t2=$(now_ms)
        ((k >= 0)) && echo "$(awk -v a="$t0" -v b="$t1" 'BEGIN{print b-a}') $(awk -v a="$t0" -v b="$t2" 'BEGIN{print b-a}')" >>"$JOBS/perf-$label.txt"
    done
    return 0
}
perf() {
    local n=${PERF_JOBS:-15} list node256="$MSR_SLURM_DIR/node256" pstate="$MSR_SLURM_DIR/perf-state"
    echo "== performance: prolog and epilog cost on an emulated node of 256 CPUs ($n jobs each)"
    # Skylake-SP: msr-safe v1.7.0's al_0655, entry for entry (399 MSRs, 266 writable).
    list="$repo/allowlists/al_06_55"
    make_node "$node256" 256 "$list" || { fail "emulate a 256-CPU node"; return 1; }
    rm -rf "$pstate"
    local first_job
    plugstack ""
    restart_slurmd || return 1
    perf_run none "$n" || { fail "perf jobs without the plugin"; return 1; }
    plugstack "required $PLUGIN root=$node256 state_dir=$pstate scontrol=$SCONTROL"
    restart_slurmd || return 1
    first_job=$(($(squeue -h -t all -o %i | sort -n | tail -n1) + 1))
    # slurmd.log outlives runs (and job ids start over): read only what these jobs logged.
    local mark since
    mark=$(log_size)
    perf_run plugin "$n" || { fail "perf jobs with the plugin"; return 1; }
    since=$(tail -c +$((mark + 1)) "$MSR_SLURM_DIR/log/slurmd.log")
    local s0 s1 e0 e1 snap rest msrs
    s0=$(cut -d' ' -f1 "$JOBS/perf-none.txt" | median); s1=$(cut -d' ' -f1 "$JOBS/perf-plugin.txt" | median)
    e0=$(cut -d' ' -f2 "$JOBS/perf-none.txt" | median); e1=$(cut -d' ' -f2 "$JOBS/perf-plugin.txt" | median)
    msrs=$(sed -n 's/.*snapshot of 256 CPUs x \([0-9]*\) MSRs.*/\1/p' <<<"$since" | tail -n1)
    snap=$(sed -n 's/.*msr-restore: job \([0-9]*\): first job on the node: snapshot of 256 CPUs.* in \([0-9.]*\) ms$/\1 \2/p' <<<"$since" |
        awk -v f="$first_job" '$1 >= f+2 {print $2}' | median)
    rest=$(sed -n 's/.*msr-restore: job \([0-9]*\): last job on the node: registers restored.* in \([0-9.]*\) ms$/\1 \2/p' <<<"$since" |
        awk -v f="$first_job" '$1 >= f+2 {print $2}' | median)
    printf 'perf [%s]: 256 CPUs x %s MSRs (%s); medians of %s jobs (srun -n1 /bin/true):\n' "$SERIES" "$msrs" "$(basename "$list")" "$n"
    printf 'perf [%s]:   srun (job start incl. prolog): %8.1f ms without plugin, %8.1f ms with: %+.1f ms\n' "$SERIES" "$s0" "$s1" "$(awk -v a="$s0" -v b="$s1" 'BEGIN{print b-a}')"
    printf 'perf [%s]:   until node idle (incl. epilog): %7.1f ms without plugin, %8.1f ms with: %+.1f ms\n' "$SERIES" "$e0" "$e1" "$(awk -v a="$e0" -v b="$e1" 'BEGIN{print b-a}')"
    printf 'perf [%s]:   plugin self-reported: snapshot %s ms (prolog), restore+verify+check %s ms (epilog)\n' "$SERIES" "$snap" "$rest"
    check "performance: the plugin's own snapshot and restore times are in slurmd's log (${snap:-none} / ${rest:-none} ms)" \
        test -n "$snap" -a -n "$rest"
}

if ((PERF)); then
    perf || fail "performance measurement"
fi

((FAILED == 0))
