#!/usr/bin/env bash
# (Re)start slurmd of the test cluster and wait for the node to be usable. slurmd reads
# plugstack.conf only at start: run this after changing it (scontrol reconfigure is not enough).
# With --allow-drain the node may come back drained (a test that left it so on purpose).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=lib.sh
. "$here/lib.sh"

want='IDLE|IDLE\+DRAIN'
[[ ${1:-} == --allow-drain ]] || want='IDLE'

# The node's state alone does not tell that the new slurmd registered: slurmctld still shows the
# previous one's (IDLE) until it times out. Wait for the node's SlurmdStartTime (seconds, set at
# registration) to reach the second this slurmd was started in, started later than the previous one.
prev=$(slurmd_start_time)
stop_pidfile "$MSR_SLURM_DIR/run/slurmd.pid" 15 || die "slurmd did not stop"
while [[ -n $prev ]] && (($(date +%s) <= prev)); do sleep 0.1; done
launched=$(date +%s)
slurmd -f "$SLURM_CONF" || die "slurmd did not start: $(tail -n 5 "$MSR_SLURM_DIR/log/slurmd.log")"
for ((i = 0; i < 300; i++)); do
    t=$(slurmd_start_time)
    [[ -n $t ]] && ((t >= launched)) && break
    sleep 0.1
done
if [[ -z $t ]] || ((t < launched)); then
    log "slurmd.log tail:"; tail -n 20 "$MSR_SLURM_DIR/log/slurmd.log" >&2 || true
    die "slurmd did not register with slurmctld within 30 s"
fi
# The node may be marked DOWN (unexpected reboot) when slurmd comes back: ReturnToService=2 makes it
# idle on registration. Wait for the state asked for.
if ! wait_node_state "$want" 30 >/dev/null; then
    log "slurmd.log tail:"; tail -n 20 "$MSR_SLURM_DIR/log/slurmd.log" >&2 || true
    die "node did not become usable: $(node_state_reason)"
fi
