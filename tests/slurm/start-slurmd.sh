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

stop_pidfile "$MSR_SLURM_DIR/run/slurmd.pid" 15 || die "slurmd did not stop"
slurmd -f "$SLURM_CONF" || die "slurmd did not start: $(tail -n 5 "$MSR_SLURM_DIR/log/slurmd.log")"
# The node may be marked DOWN (unexpected reboot) when slurmd comes back: ReturnToService=2 makes it
# idle on registration. Wait for registration, then for the state asked for.
if ! wait_node_state "$want" 30 >/dev/null; then
    log "slurmd.log tail:"; tail -n 20 "$MSR_SLURM_DIR/log/slurmd.log" >&2 || true
    die "node did not become usable: $(node_state_reason)"
fi
