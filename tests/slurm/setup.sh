#!/usr/bin/env bash
# Install (if needed) and start a one-node SLURM cluster on localhost for the msr-restore tests.
#
#   tests/slurm/setup.sh            install packages, write the config, start munged, slurmctld,
#                                   slurmd, wait for the node to be idle
#   tests/slurm/setup.sh --no-install   skip apt-get (the packages are already there)
#   tests/slurm/setup.sh --install-only only install the packages
#
# Runs as root. Everything goes under $MSR_SLURM_DIR (default /tmp/msr-restore-slurm); an existing
# etc/plugstack.conf there is kept (run.sh writes it), otherwise an empty one is made.
# With MSR_SLURM_CHROOT=ROOT the daemons are ROOT's (chrooted; see lib.sh) and nothing is
# installed: ROOT must hold slurmctld, slurmd, slurm-client and munge.
# Stop with tests/slurm/stop.sh.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=lib.sh
. "$here/lib.sh"

install=1 start=1
for a in "$@"; do
    case $a in
    --no-install) install=0 ;;
    --install-only) start=0 ;;
    -h | --help) sed -n '2,10p' "$0"; exit 0 ;;
    *) die "unknown argument: $a" ;;
    esac
done

[[ $(id -u) == 0 ]] || die "run as root (slurmd runs the plugin's prolog and epilog as root)"

PKGS=(slurmctld slurmd slurm-client munge libslurm-dev libclang-dev)
if [[ -n $MSR_SLURM_CHROOT ]]; then
    install=0
    [[ -x $MSR_SLURM_CHROOT/usr/bin/env ]] || die "MSR_SLURM_CHROOT=$MSR_SLURM_CHROOT is not a root directory"
fi
if ((install)); then
    missing=()
    for p in "${PKGS[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
    done
    if ((${#missing[@]})); then
        log "installing ${missing[*]}"
        export DEBIAN_FRONTEND=noninteractive
        apt-get -o DPkg::Lock::Timeout=600 update -q
        apt-get -o DPkg::Lock::Timeout=600 install -y -q --no-install-recommends "${missing[@]}"
    fi
fi
for b in munged slurmctld slurmd sinfo scontrol sbatch srun; do
    root_path "$b" >/dev/null || die "$b not found${MSR_SLURM_CHROOT:+ in $MSR_SLURM_CHROOT}: install ${PKGS[*]}"
done
((start)) || exit 0

# Refuse to start a second cluster over a running one.
for d in slurmctld slurmd munged; do
    pf="$MSR_SLURM_DIR/run/$d.pid"
    [[ $d == munged ]] && pf="$MSR_SLURM_DIR/munge/munged.pid"
    if [[ -f $pf ]] && pid_alive "$(tr -dc '0-9' <"$pf")"; then
        die "$d already running (pid file $pf): run tests/slurm/stop.sh first"
    fi
done

mkdir -p "$MSR_SLURM_DIR"/{etc,run,log,spool,state,lib,bin,jobs}
chmod 755 "$MSR_SLURM_DIR" "$MSR_SLURM_DIR"/{etc,lib,bin}
chmod 1777 "$MSR_SLURM_DIR/jobs"
rm -rf "$MSR_SLURM_DIR/state"/* "$MSR_SLURM_DIR/spool"/*
mount_root || die "cannot mount /proc, /sys and $MSR_SLURM_DIR in $MSR_SLURM_CHROOT"
release=$(slurm_release)
[[ -n $release ]] || die "slurmd -V prints no version"

# --- munge: our own munged on our own socket, with a copy of the key ------------------------------
# The munge user is the cluster's (a root has its own uid for it): chown inside the root.
munge_user=munge
in_root id "$munge_user" >/dev/null 2>&1 || die "no munge user (is the munge package installed?)"
mdir="$MSR_SLURM_DIR/munge"
mkdir -p "$mdir"
if [[ ! -s $mdir/munge.key ]]; then
    if [[ -s $MSR_SLURM_CHROOT/etc/munge/munge.key ]]; then
        cp "$MSR_SLURM_CHROOT/etc/munge/munge.key" "$mdir/munge.key"
    else
        head -c 1024 /dev/urandom >"$mdir/munge.key"
    fi
fi
in_root chown "$munge_user:" "$mdir" "$mdir/munge.key"
chmod 755 "$mdir"
chmod 600 "$mdir/munge.key"
rm -f "$MUNGE_SOCKET" "$MUNGE_SOCKET.lock"
in_root runuser -u "$munge_user" -- munged --socket="$MUNGE_SOCKET" --key-file="$mdir/munge.key" \
    --pid-file="$mdir/munged.pid" --log-file="$mdir/munged.log" --seed-file="$mdir/munged.seed" \
    || die "munged did not start: $(tail -n 5 "$mdir/munged.log" 2>/dev/null)"
for ((i = 0; i < 50; i++)); do [[ -S $MUNGE_SOCKET ]] && break; sleep 0.1; done
[[ -S $MUNGE_SOCKET ]] || die "munged socket $MUNGE_SOCKET did not appear"

# --- config ---------------------------------------------------------------------------------------
node_line=$(slurmd -C | head -n1)
[[ $node_line == NodeName=* ]] || die "slurmd -C printed '$node_line'"
node_line=${node_line/NodeName=* CPUs=/NodeName=$NODE_NAME CPUs=}
sed -e "s|@DIR@|$MSR_SLURM_DIR|g" -e "s|@NODE@|$NODE_NAME|g" \
    -e "s|@CTLD_PORT@|$MSR_SLURM_CTLD_PORT|g" -e "s|@SLURMD_PORT@|$MSR_SLURM_SLURMD_PORT|g" \
    -e "s|@MUNGE_SOCKET@|$MUNGE_SOCKET|g" -e "s|@HC_INTERVAL@|${MSR_SLURM_HC_INTERVAL:-5}|g" \
    -e "s|@NODE_LINE@|$node_line|" \
    "$here/slurm.conf.in" >"$SLURM_CONF"
chmod 644 "$SLURM_CONF"
# slurmd 23.02 and later load a cgroup plugin at start and fail without a cgroup file system
# ("No filesystem mounted on /sys/fs/cgroup"): none here, and the test cluster needs none.
if [[ ${release%%.*} -ge 23 ]]; then
    printf '# Written by tests/slurm/setup.sh: no cgroups on the test machine.\nCgroupPlugin=disabled\n' \
        >"$MSR_SLURM_DIR/etc/cgroup.conf"
    chmod 644 "$MSR_SLURM_DIR/etc/cgroup.conf"
else
    rm -f "$MSR_SLURM_DIR/etc/cgroup.conf"
fi
[[ -f $MSR_SLURM_DIR/etc/plugstack.conf ]] || : >"$MSR_SLURM_DIR/etc/plugstack.conf"
chmod 644 "$MSR_SLURM_DIR/etc/plugstack.conf"
# The health check slurmd runs: a shim that runs the msr-restore health check when a test has
# configured it (etc/healthcheck.args holds its arguments), and does nothing otherwise.
cat >"$MSR_SLURM_DIR/bin/healthcheck" <<EOF
#!/bin/sh
# HealthCheckProgram of the test cluster (written by tests/slurm/setup.sh).
args="$MSR_SLURM_DIR/etc/healthcheck.args"
# slurmd runs the health check with an empty environment: scontrol needs this cluster's config.
export SLURM_CONF="$SLURM_CONF"
[ -s "\$args" ] || exit 0
exec $MSR_SLURM_DIR/bin/msr-healthcheck \$(cat "\$args") >>$MSR_SLURM_DIR/log/healthcheck.log 2>&1
EOF
chmod 755 "$MSR_SLURM_DIR/bin/healthcheck"

# --- daemons --------------------------------------------------------------------------------------
log "starting Slurm $release slurmctld and slurmd${MSR_SLURM_CHROOT:+ in $MSR_SLURM_CHROOT} ($SLURM_CONF)"
slurmctld -f "$SLURM_CONF" || die "slurmctld did not start: $(tail -n 5 "$MSR_SLURM_DIR/log/slurmctld.log")"
"$here/start-slurmd.sh"
log "node $NODE_NAME is up"
