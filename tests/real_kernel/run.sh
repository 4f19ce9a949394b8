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
TRIPLE=x86_64-unknown-linux-gnu
ALL_SCENARIOS=(driver save drift refuse hotplug audit topology)

log() { printf 'real_kernel: %s\n' "$*" >&2; }
die() { printf 'real_kernel: error: %s\n' "$*" >&2; exit 2; }
now() { date +%s.%N; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", b - a }'; }

t_start=$(now)
if [ "$#" -gt 0 ]; then scenarios=("$@"); else scenarios=("${ALL_SCENARIOS[@]}"); fi
for s in "${scenarios[@]}"; do
    case " ${ALL_SCENARIOS[*]} " in *" $s "*) ;; *) die "unknown scenario '$s' (known: ${ALL_SCENARIOS[*]})" ;; esac
done

# ------------------------------------------------------------------ host side: packages, kernel
kdir=$("$HERE/setup.sh" | tail -n 1)
[ -f "$kdir/msr.ko" ] || die "setup.sh did not leave msr.ko in '$kdir'"
if [ -f "$kdir/vmlinux" ]; then kernel=$kdir/vmlinux; else kernel=$kdir/vmlinuz; fi
busybox=/bin/busybox

# ------------------------------------------------------------------ static binaries
# Their own target dirs under the cache: the static flags would otherwise rebuild the
# developers' target/ each time. --target keeps RUSTFLAGS away from build scripts and proc macros.
# The release profile without LTO and at opt-level 1 builds in less than half the time (about 14 s
# instead of 33 s from scratch here); the test binary's speed does not matter, its behaviour does.
build_static() { # build_static TARGET_DIR CARGO_ARGS...
    local dir=$1
    shift
    log "cargo build --release $*"
    RUSTFLAGS='-C target-feature=+crt-static' CARGO_TARGET_DIR=$dir \
        CARGO_PROFILE_RELEASE_LTO=off CARGO_PROFILE_RELEASE_CODEGEN_UNITS=16 CARGO_PROFILE_RELEASE_OPT_LEVEL=1 \
        cargo build --quiet --release --target "$TRIPLE" "$@" >&2
}
command -v cargo >/dev/null || die "cargo not found"
build_static "$CACHE/target-rawmsr" --manifest-path "$HERE/rawmsr/Cargo.toml"
rawmsr=$CACHE/target-rawmsr/$TRIPLE/release/rawmsr

need_msrsave=0
for s in "${scenarios[@]}"; do [ "$s" = driver ] || need_msrsave=1; done
msrsave=
if [ "$need_msrsave" = 1 ]; then
    [ -f "$REPO/Cargo.toml" ] || die "no Cargo.toml at $REPO: msrsave cannot be built"
    build_static "$CACHE/target-msrsave" --manifest-path "$REPO/Cargo.toml" -p msrsave --bin msrsave
    msrsave=$CACHE/target-msrsave/$TRIPLE/release/msrsave
fi

# ------------------------------------------------------------------ initramfs
work=$(mktemp -d "${TMPDIR:-/tmp}/msr-real-kernel.XXXXXX")
trap 'rm -rf "$work"' EXIT
root=$work/root
mkdir -p "$root/bin" "$root/test" "$root/etc" "$root/dev" "$root/proc" "$root/sys" "$root/tmp"
cp "$busybox" "$root/bin/busybox"
cp "$rawmsr" "$root/bin/rawmsr"
[ -z "$msrsave" ] || cp "$msrsave" "$root/bin/msrsave"
cp "$kdir/msr.ko" "$root/test/msr.ko"
cp "$HERE/guest/init" "$root/init"
cp "$HERE/guest/scenarios.sh" "$HERE/guest/allowlist" "$root/test/"
chmod 0755 "$root/init"
printf 'root:x:0:0:root:/root:/bin/sh\njob:x:1000:1000:pretend job:/tmp:/bin/sh\n' >"$root/etc/passwd"
printf 'root:x:0:\njob:x:1000:\n' >"$root/etc/group"
# Uncompressed: the guest would spend longer under TCG decompressing than QEMU spends copying.
(cd "$root" && find . | "$busybox" cpio -o -H newc >"$work/initrd.cpio" 2>/dev/null)

# ------------------------------------------------------------------ boots
mkdir -p "$LOGS"
log "kernel $(cat "$kdir/version") ($(basename "$kernel")), logs in $LOGS"
total_pass=0
total_fail=0
failed_boots=()
for s in "${scenarios[@]}"; do
    out=$LOGS/$s.log
    console=$LOGS/$s.console.log
    rm -f "$out" "$console"
    log "boot: $s"
    # The topology scenario needs 2 sockets of 2-thread cores and an Intel family-6 identity (the
    # MSR table's scopes are per vendor and family); the others run on 4 plain CPUs.
    cpu=max
    smp=4
    if [ "$s" = topology ]; then
        cpu=max,vendor=GenuineIntel,family=6,model=143
        smp=8,sockets=2,cores=2,threads=2
    fi
    t0=$(now)
    set +e
    timeout -k 5 "$BOOT_TIMEOUT" qemu-system-x86_64 \
        -no-user-config -nodefaults -accel tcg -cpu "$cpu" -smp "$smp" -m 512M \
        -display none -monitor none -nic none -no-reboot \
        -serial "file:$console" -serial stdio \
        -kernel "$kernel" -initrd "$work/initrd.cpio" \
        -append "console=ttyS0 panic=-1 quiet msrtest.scenario=$s" \
        </dev/null | tr -d '\r' | tee "$out"
    qemu_rc=${PIPESTATUS[0]}
    set -e
    t1=$(now)
    n_pass=$(grep -c '^PASS ' "$out" || true)
    n_fail=$(grep -c '^FAIL ' "$out" || true)
    end=$(grep -E "^MSRTEST-END scenario=$s rc=[0-9]+\$" "$out" | tail -n 1 || true)
    why=
    if [ -z "$end" ]; then
        if [ "$qemu_rc" -eq 124 ] || [ "$qemu_rc" -eq 137 ]; then
            why="the guest did not finish within ${BOOT_TIMEOUT}s"
        else
            why="the guest stopped without its end marker (qemu exit status $qemu_rc)"
        fi
        n_fail=$((n_fail + 1))
        echo "FAIL $s.boot: $why"
        echo "---- last lines of the kernel console ($console)"
        tail -n 30 "$console" 2>/dev/null || true
        echo "----"
    elif [ "${end##*rc=}" != 0 ] || [ "$n_fail" -gt 0 ] || [ "$n_pass" -eq 0 ]; then
        why="guest checks failed (${end##*rc=})"
        [ "$n_fail" -gt 0 ] || n_fail=1
    fi
    total_pass=$((total_pass + n_pass))
    total_fail=$((total_fail + n_fail))
    if [ -n "$why" ]; then failed_boots+=("$s"); fi
    log "boot: $s took $(secs "$t0" "$t1") s: $n_pass passed, $n_fail failed${why:+ ($why)}"
done

log "suite took $(secs "$t_start" "$(now)") s"
if [ "${#failed_boots[@]}" -gt 0 ]; then
    log "failed: ${failed_boots[*]} (logs: $LOGS)"
fi
echo "real_kernel: $total_pass passed, $total_fail failed"
[ "${#failed_boots[@]}" -eq 0 ]
