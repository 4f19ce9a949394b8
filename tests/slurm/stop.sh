#!/usr/bin/env bash
# Stop the test cluster's daemons (slurmd, slurmctld, munged) by their pid files only, then undo
# setup.sh's mounts in MSR_SLURM_CHROOT (if any). Safe to run when nothing runs. A daemon that lingers as a zombie counts as stopped.
set -uo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=lib.sh
. "$here/lib.sh"

rc=0
stop_pidfile "$MSR_SLURM_DIR/run/slurmd.pid" 15 || rc=1
stop_pidfile "$MSR_SLURM_DIR/run/slurmctld.pid" 15 || rc=1
stop_pidfile "$MSR_SLURM_DIR/munge/munged.pid" 10 || rc=1
# A chrooted cluster: unmount what setup.sh mounted, once nothing runs there.
((rc == 0)) && { umount_root || rc=1; }
exit $rc
