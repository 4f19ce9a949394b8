#!/usr/bin/env bash
# The SPANK plugin on real one-node SLURM clusters (slurmctld + slurmd + munged on localhost), on
# every supported Slurm series: 22.05 (Debian 12) and 24.11 (Debian 13).
#
#   sudo tests/slurm/run.sh                   every series
#   sudo tests/slurm/run.sh --series 24.11    one series (repeat the option for several)
#   sudo tests/slurm/run.sh --perf            also measure the prolog/epilog cost on a 256-CPU node
#
# Where a series' Slurm comes from:
#   MSR_SLURM_ROOT_<MAJOR>_<MINOR>, e.g. MSR_SLURM_ROOT_24_11=/opt/roots/trixie-slurm: a root
#     directory holding that Slurm (slurmd, slurmctld, slurm-client, munge and libslurm-dev; for
#     24.11 a Debian 13 root). Its daemons run chrooted and the plugin is built against its
#     headers.
#     It adds the user msrtest to the root and, while a cluster runs, mounts /proc, /sys, the
#     host's /etc/hosts and the scratch directory there (tests/slurm/lib.sh).
#   else the host, when its own Slurm is that series (the script installs Debian 12's: 22.05).
#   else a Debian root that tests/slurm/make-root.sh makes once and caches (24.11: Debian 13).
#   else (no root could be made, e.g. no network) the series prints "NOT RUN slurm X.Y: ..." on a
#   line of its own: neither passed nor failed.
#
# Per series: builds libspank_msr.so against that Slurm's headers (spank_msr/build-plugin.sh, a
# target directory per series), starts the cluster, runs the scenarios (scenarios.sh) as the user
# msrtest on an emulated node, stops it. Prints "PASS [X.Y] ..." / "FAIL [X.Y] ..." per assertion
# and a count per series. Exit status: 1 if anything failed, 77 if nothing failed but a series
# was not run, else 0. Environment: MSR_SLURM_DIR (scratch, default /tmp/msr-restore-slurm, a
# subdirectory per series), PERF_JOBS (default 15).
set -uo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
# The host's cluster settings: a root is chosen per series below.
unset MSR_SLURM_CHROOT
# shellcheck source=lib.sh
. "$here/lib.sh"

SUPPORTED=(22.05 24.11)
NOT_RUN_STATUS=77
perf=0
series=()
while (($#)); do
    case $1 in
    --perf) perf=1; shift ;;
    --series)
        [[ ${2:-} =~ ^[0-9]{2}\.[0-9]{2}$ ]] || die "--series needs a Slurm major.minor such as 24.11"
        series+=("$2"); shift 2 ;;
    -h | --help) sed -n '2,24p' "$0"; exit 0 ;;
    *) die "unknown argument: $1" ;;
    esac
done
((${#series[@]})) || series=("${SUPPORTED[@]}")
[[ $(id -u) == 0 ]] || die "run as root"
base=$MSR_SLURM_DIR

# One test cluster per machine at a time (same scratch dir, same ports): wait for another run of
# this script to finish. The children do not inherit the lock (9>&- where they are started).
mkdir -p "$(dirname "$base")"
exec 9>"$base.lock"
if ! flock -n 9; then
    log "another tests/slurm/run.sh holds $base.lock: waiting (up to 30 min)"
    flock -w 1800 9 || die "$base.lock still held after 30 min"
fi

# --- the host's Slurm and tools, msrsave ----------------------------------------------------------
"$here/setup.sh" --install-only 9>&- || die "package installation failed"
command -v cargo >/dev/null || die "cargo not found"
log "building msrsave (release)"
(cd "$repo" && cargo build --release --locked -p msrsave) 9>&- || die "build failed"
target=$(cd "$repo" && cargo metadata --format-version 1 --no-deps 2>/dev/null |
    sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
target=${target:-$repo/target}
host_release=$(slurm_release)

# --- which Slurm runs each series -------------------------------------------------------------------
# Every series with a Slurm here is resolved, also those not asked for: their plugin builds are
# what the scenario "a plugin of another series" loads.
declare -A ROOT=() PLUGIN=() RESULT=() WANTED=()
for s in "${series[@]}"; do WANTED[$s]=1; done
available=()
early_fail=0
for s in $(printf '%s\n' "${series[@]}" "${SUPPORTED[@]}" | sort -u); do
    asked=${WANTED[$s]:-}
    var=MSR_SLURM_ROOT_${s/./_}
    r=${!var:-}
    if [[ -n $r ]]; then
        problem=""
        if [[ ! -x $r/usr/bin/env || ! -r $r/usr/include/slurm/slurm_version.h ]]; then
            problem="$var=$r is not a root holding Slurm's headers (libslurm-dev)"
        else
            rel=$(MSR_SLURM_CHROOT=$r slurm_release)
            [[ ${rel%.*} == "$s" ]] || problem="$var=$r holds Slurm '${rel:-none}', not $s"
        fi
        if [[ -n $problem ]]; then
            echo "FAIL [$s] $problem"
            RESULT[$s]="0 passed, 1 failed"; early_fail=1; continue
        fi
        ROOT[$s]=$r
    elif [[ ${host_release%.*} == "$s" ]]; then
        ROOT[$s]=""
    elif r=$("$here/make-root.sh" "$s" 9>&-); then
        ROOT[$s]=$r
    else
        [[ -n $asked ]] && echo "NOT RUN slurm $s: the host has Slurm ${host_release:-none} and tests/slurm/make-root.sh could not make a root (see above); set $var to a root directory holding Slurm $s (slurmd, slurmctld, slurm-client, munge, libslurm-dev)"
        RESULT[$s]="NOT RUN"
        continue
    fi
    available+=("$s")
done

# --- the plugin, once per series --------------------------------------------------------------------
for s in "${available[@]}"; do
    t0=$SECONDS
    if so=$("$repo/spank_msr/build-plugin.sh" --slurm-headers "${ROOT[$s]}/usr/include" \
        --target-dir "$target/slurm-$s" 9>&-); then
        PLUGIN[$s]=$so
        log "plugin for Slurm $s: $so ($((SECONDS - t0)) s)"
    else
        echo "FAIL [$s] the plugin does not build against Slurm $s's headers"
        RESULT[$s]="0 passed, 1 failed"; early_fail=1
    fi
done

# --- the scenarios, series by series ----------------------------------------------------------------
for s in "${series[@]}"; do
    [[ -n ${PLUGIN[$s]:-} ]] || continue
    others=""
    for o in "${!PLUGIN[@]}"; do [[ $o == "$s" ]] || others+="$o=${PLUGIN[$o]} "; done
    echo "=== Slurm $s${ROOT[$s]:+ (root ${ROOT[$s]})}"
    t0=$SECONDS
    mkdir -p "$base/$s"
    SERIES=$s MSR_SLURM_DIR=$base/$s MSR_SLURM_CHROOT=${ROOT[$s]} PLUGIN_BUILD=${PLUGIN[$s]} \
        OTHER_PLUGINS=$others MSRSAVE_BUILD=$target/release/msrsave PERF=$perf \
        "$here/scenarios.sh" 9>&-
    if read -r p f n <"$base/$s/counts" 2>/dev/null; then
        RESULT[$s]="$p passed, $f failed${n:+, $n not run} ($((SECONDS - t0)) s)"
        RESULT[$s]=${RESULT[$s]/, 0 not run/}
        ((f == 0)) || early_fail=1
        ((${n:-0} == 0)) || scenario_not_run=1
    else
        echo "FAIL [$s] scenarios.sh ended without counts"
        RESULT[$s]="FAIL: scenarios.sh ended without counts"; early_fail=1
    fi
done

echo
not_run=${scenario_not_run:-0}
for s in "${series[@]}"; do
    echo "slurm $s: ${RESULT[$s]}"
    [[ ${RESULT[$s]} == "NOT RUN" ]] && not_run=1
done
((early_fail)) && exit 1
((not_run)) && exit $NOT_RUN_STATUS
exit 0
