#!/usr/bin/env bash
# Make (once; cached) a Debian root holding a Slurm series the host does not have, for
# tests/slurm/run.sh: Slurm 24.11 is Debian 13's (trixie). Prints the root's path on stdout.
#
#   tests/slurm/make-root.sh 24.11
#
# debootstrap --variant=minbase, then slurmd, slurmctld, slurm-client, munge and libslurm-dev from
# Debian's archive (no daemon is started: policy-rc.d refuses). About 1 min the first time (46 s
# debootstrap and 12 s apt measured here), then reused. Cache:
# ${MSR_TEST_CACHE:-/var/cache/msr-restore-tests}/slurm-roots/<suite>-slurm-<series>, complete only
# with its stamp file (a half-made root is made again).
set -euo pipefail
series=${1:?usage: make-root.sh SERIES (24.11)}
case $series in
24.11) suite=trixie ;;
*) echo "make-root.sh: no Debian suite known for Slurm $series" >&2; exit 2 ;;
esac
cache=${MSR_TEST_CACHE:-/var/cache/msr-restore-tests}/slurm-roots
root=$cache/$suite-slurm-$series
stamp=$root/.msr-restore-root-complete
mirror=${MSR_DEBIAN_MIRROR:-http://deb.debian.org/debian}
log() { printf 'make-root: %s\n' "$*" >&2; }

mkdir -p "$cache"
exec 9>"$cache/.lock"
flock -w 1800 9
if [[ -f $stamp ]]; then
    echo "$root"
    exit 0
fi
command -v debootstrap >/dev/null || {
    log "installing debootstrap"
    DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 -q -y --no-install-recommends install debootstrap >&2
}
tmp=$root.tmp
cleanup() { mountpoint -q "$tmp/proc" && umount "$tmp/proc"; rm -rf "$tmp"; }
trap cleanup EXIT
rm -rf "$tmp"
log "debootstrap --variant=minbase $suite into $root (once; cached)"
debootstrap --variant=minbase "$suite" "$tmp" "$mirror" >"$cache/debootstrap-$suite.log" 2>&1 || {
    tail -n 20 "$cache/debootstrap-$suite.log" >&2
    exit 1
}
printf '#!/bin/sh\nexit 101\n' >"$tmp/usr/sbin/policy-rc.d"
chmod 755 "$tmp/usr/sbin/policy-rc.d"
mount -t proc proc "$tmp/proc"
log "apt-get install slurmd slurmctld slurm-client munge libslurm-dev in the root"
chroot "$tmp" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin DEBIAN_FRONTEND=noninteractive sh -c \
    'apt-get -q update && apt-get -q -y --no-install-recommends install slurmd slurmctld slurm-client munge libslurm-dev && apt-get clean' \
    >"$cache/apt-$suite.log" 2>&1 || {
    tail -n 20 "$cache/apt-$suite.log" >&2
    exit 1
}
umount "$tmp/proc"
touch "$tmp/.msr-restore-root-complete"
rm -rf "$root"
mv "$tmp" "$root"
trap - EXIT
echo "$root"
