#!/usr/bin/env bash
# The real-kernel suite: msrsave against Debian's kernel and its stock msr driver, under QEMU.
#
#   tests/real_kernel/run.sh [SCENARIO...]      (as root; default: every scenario)
#
# Steps: setup.sh (apt packages, cached kernel), static builds of msrsave and of our rawmsr helper,
# an initramfs (busybox-static, msr.ko, guest/init, guest/scenarios.sh, guest/allowlist, the two
# binaries), then one fresh boot per scenario (qemu-system-x86_64 -accel tcg -cpu max -smp 4) under
# a timeout. The guest prints "PASS name" / "FAIL name: reason" lines, "N passed, M failed" and
# "MSRTEST-END scenario=S rc=R" on its second serial port; the kernel console goes to a log file.
# Exit status 0 only if every boot ended with its marker, rc=0 and no FAIL line.
#
# Environment:
#   MSR_TEST_CACHE     cache for the kernel and the static builds (default /var/cache/msr-restore-tests)
#   MSR_TEST_LOGS      where the logs go (default target/real_kernel-logs in the repository)
#   MSR_TEST_TIMEOUT   seconds per boot before the guest counts as hung (default 90)
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
CACHE=${MSR_TEST_CACHE:-/var/cache/msr-restore-tests}
LOGS=${MSR_TEST_LOGS:-$REPO/target/real_kernel-logs}
BOOT_TIMEOUT=${MSR_TEST_TIMEOUT:-90}
ALL_SCENARIOS=(driver save drift refuse hotplug audit topology)

log() { printf 'real_kernel: %s\n' "$*" >&2; }
die() { printf 'real_kernel: error: %s\n' "$*" >&2; exit 2; }
# shellcheck source=tests/lib/guest.sh
. "$REPO/tests/lib/guest.sh"

t_start=$(guest_now)
if [ "$#" -gt 0 ]; then scenarios=("$@"); else scenarios=("${ALL_SCENARIOS[@]}"); fi
for s in "${scenarios[@]}"; do
    case " ${ALL_SCENARIOS[*]} " in *" $s "*) ;; *) die "unknown scenario '$s' (known: ${ALL_SCENARIOS[*]})" ;; esac
done

# ------------------------------------------------------------------ host side: packages, kernel
guest_kernel
busybox=/bin/busybox

# ------------------------------------------------------------------ static binaries
command -v cargo >/dev/null || die "cargo not found"
guest_build_static "$CACHE/target-rawmsr" --manifest-path "$HERE/rawmsr/Cargo.toml"
rawmsr=$CACHE/target-rawmsr/$GUEST_TRIPLE/release/rawmsr

need_msrsave=0
for s in "${scenarios[@]}"; do [ "$s" = driver ] || need_msrsave=1; done
msrsave=
if [ "$need_msrsave" = 1 ]; then
    [ -f "$REPO/Cargo.toml" ] || die "no Cargo.toml at $REPO: msrsave cannot be built"
    guest_build_static "$CACHE/target-msrsave" --manifest-path "$REPO/Cargo.toml" -p msrsave --bin msrsave
    msrsave=$CACHE/target-msrsave/$GUEST_TRIPLE/release/msrsave
fi

# ------------------------------------------------------------------ initramfs
work=$(mktemp -d "${TMPDIR:-/tmp}/msr-real-kernel.XXXXXX")
trap 'rm -rf "$work"' EXIT
root=$work/root
mkdir -p "$root/bin" "$root/test" "$root/etc" "$root/dev" "$root/proc" "$root/sys" "$root/tmp"
cp "$busybox" "$root/bin/busybox"
cp "$rawmsr" "$root/bin/rawmsr"
[ -z "$msrsave" ] || cp "$msrsave" "$root/bin/msrsave"
cp "$GUEST_KDIR/msr.ko" "$root/test/msr.ko"
cp "$HERE/guest/init" "$root/init"
cp "$HERE/guest/scenarios.sh" "$HERE/guest/allowlist" "$root/test/"
chmod 0755 "$root/init"
printf 'root:x:0:0:root:/root:/bin/sh\njob:x:1000:1000:pretend job:/tmp:/bin/sh\n' >"$root/etc/passwd"
printf 'root:x:0:\njob:x:1000:\n' >"$root/etc/group"
guest_cpio "$root" "$work/initrd.cpio"

# ------------------------------------------------------------------ boots
mkdir -p "$LOGS"
log "kernel $(cat "$GUEST_KDIR/version") ($(basename "$GUEST_KERNEL")), logs in $LOGS"
total_pass=0
total_fail=0
failed_boots=()
for s in "${scenarios[@]}"; do
    log "boot: $s"
    # The topology scenario needs 2 sockets of 2-thread cores and an Intel family-6 identity (the
    # MSR table's scopes are per vendor and family); the others run on 4 plain CPUs.
    # shellcheck disable=SC2034 # guest_boot reads them
    GUEST_CPU=max GUEST_SMP=4
    if [ "$s" = topology ]; then
        # shellcheck disable=SC2034 # guest_boot reads them
        GUEST_CPU=max,vendor=GenuineIntel,family=6,model=143 GUEST_SMP=8,sockets=2,cores=2,threads=2
    fi
    t0=$(guest_now)
    guest_boot "$s" "$work/initrd.cpio" "$LOGS" "$BOOT_TIMEOUT"
    t1=$(guest_now)
    total_pass=$((total_pass + GUEST_PASS))
    total_fail=$((total_fail + GUEST_FAIL))
    if [ -n "$GUEST_WHY" ]; then failed_boots+=("$s"); fi
    log "boot: $s took $(guest_secs "$t0" "$t1") s: $GUEST_PASS passed, $GUEST_FAIL failed${GUEST_WHY:+ ($GUEST_WHY)}"
done

log "suite took $(guest_secs "$t_start" "$(guest_now)") s"
if [ "${#failed_boots[@]}" -gt 0 ]; then
    log "failed: ${failed_boots[*]} (logs: $LOGS)"
fi
echo "real_kernel: $total_pass passed, $total_fail failed"
[ "${#failed_boots[@]}" -eq 0 ]
