# shellcheck shell=bash
# Host-side pieces shared by the suites that boot Debian's kernel under QEMU TCG with a busybox
# initramfs (tests/real_kernel, tests/msr_safe). Source it from bash with `set -euo pipefail`; it
# defines functions only.
#
#   guest_kernel                    tests/real_kernel/setup.sh (apt packages, cached kernel); sets
#                                   GUEST_KDIR (msr.ko, version, config, vmlinuz, vmlinux) and
#                                   GUEST_KERNEL (the image to boot: vmlinux through PVH if there)
#   guest_build_static DIR ARGS...  cargo build --release ARGS for a static guest binary, into the
#                                   target dir DIR
#   guest_extract_functions FILE NAME...
#                                   print the shell functions NAME() { ... } of FILE (defined at
#                                   column 0, on one line or closed by a "}" line at column 0);
#                                   fails if one is missing
#   guest_cpio ROOT OUT             ROOT as a newc cpio archive (uncompressed: under TCG the guest
#                                   would spend longer decompressing than QEMU spends copying)
#   guest_boot NAME INITRD LOGS TIMEOUT [KERNEL_ARG...]
#                                   one boot; the guest's second serial port goes to LOGS/NAME.log
#                                   (and stdout), the kernel console to LOGS/NAME.console.log.
#                                   Sets GUEST_PASS, GUEST_FAIL (PASS/FAIL lines, plus 1 when the
#                                   boot itself failed) and GUEST_WHY (empty when the boot ended
#                                   with its "MSRTEST-END scenario=NAME rc=0" marker, no FAIL line
#                                   and at least one PASS). The guest's CPUs: GUEST_CPU (QEMU
#                                   -cpu, default max) and GUEST_SMP (-smp, default 4)
#
# The guest's /init is tests/real_kernel/guest/init: it mounts proc, sysfs, devtmpfs and tracefs,
# loads the stock msr driver (allow_writes=on), runs `sh /test/scenarios.sh NAME` with its output
# on the second serial port, prints the end marker and powers off.

GUEST_LIB_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
GUEST_REPO=$(cd "$GUEST_LIB_DIR/../.." && pwd)
GUEST_TRIPLE=x86_64-unknown-linux-gnu

guest_now() { date +%s.%N; }
guest_secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", b - a }'; }

guest_kernel() {
    GUEST_KDIR=$("$GUEST_REPO/tests/real_kernel/setup.sh" | tail -n 1)
    if [ ! -f "$GUEST_KDIR/msr.ko" ] || [ ! -f "$GUEST_KDIR/version" ]; then
        echo "guest: setup.sh did not leave msr.ko and version in '$GUEST_KDIR'" >&2
        return 1
    fi
    if [ -f "$GUEST_KDIR/vmlinux" ]; then GUEST_KERNEL=$GUEST_KDIR/vmlinux; else GUEST_KERNEL=$GUEST_KDIR/vmlinuz; fi
}

# Static binaries get their own target dirs: the static flags would otherwise rebuild the
# developers' target/ each time. --target keeps RUSTFLAGS away from build scripts and proc macros.
# No LTO, opt-level 1: less than half the build time; the test binary's behaviour matters, not
# its speed.
guest_build_static() {
    local dir=$1
    shift
    echo "guest: cargo build --release $*" >&2
    RUSTFLAGS='-C target-feature=+crt-static' CARGO_TARGET_DIR=$dir \
        CARGO_PROFILE_RELEASE_LTO=off CARGO_PROFILE_RELEASE_CODEGEN_UNITS=16 CARGO_PROFILE_RELEASE_OPT_LEVEL=1 \
        cargo build --quiet --release --target "$GUEST_TRIPLE" "$@" >&2
}

guest_extract_functions() {
    local file=$1 name
    shift
    for name in "$@"; do
        # A one-line definition ends on its own line; a longer one at the first "}" line.
        awk -v n="$name" '
            !inside && $0 ~ "^" n "\\(\\) *\\{" { inside = 1; print; if ($0 ~ /}[ \t]*$/) { found = 1; exit } next }
            inside { print }
            inside && /^}/ { found = 1; exit }
            END { exit !found }
        ' "$file" || { echo "guest: no function $name() in $file" >&2; return 1; }
    done
}

guest_cpio() {
    (cd "$1" && find . | /bin/busybox cpio -o -H newc >"$2" 2>/dev/null)
}

guest_boot() {
    local name=$1 initrd=$2 logs=$3 timeout=$4 out console qemu_rc end
    shift 4
    out=$logs/$name.log
    console=$logs/$name.console.log
    rm -f "$out" "$console"
    set +e
    timeout -k 5 "$timeout" qemu-system-x86_64 \
        -no-user-config -nodefaults -accel tcg -cpu "${GUEST_CPU:-max}" -smp "${GUEST_SMP:-4}" -m 512M \
        -display none -monitor none -nic none -no-reboot \
        -serial "file:$console" -serial stdio \
        -kernel "$GUEST_KERNEL" -initrd "$initrd" \
        -append "console=ttyS0 panic=-1 quiet msrtest.scenario=$name $*" \
        </dev/null | tr -d '\r' | tee "$out"
    qemu_rc=${PIPESTATUS[0]}
    set -e
    GUEST_PASS=$(grep -c '^PASS ' "$out" || true)
    GUEST_FAIL=$(grep -c '^FAIL ' "$out" || true)
    end=$(grep -E "^MSRTEST-END scenario=$name rc=[0-9]+\$" "$out" | tail -n 1 || true)
    GUEST_WHY=
    if [ -z "$end" ]; then
        if [ "$qemu_rc" -eq 124 ] || [ "$qemu_rc" -eq 137 ]; then
            GUEST_WHY="the guest did not finish within ${timeout}s"
        else
            GUEST_WHY="the guest stopped without its end marker (qemu exit status $qemu_rc)"
        fi
        GUEST_FAIL=$((GUEST_FAIL + 1))
        echo "FAIL $name.boot: $GUEST_WHY"
        echo "---- last lines of the kernel console ($console)"
        tail -n 30 "$console" 2>/dev/null || true
        echo "----"
    elif [ "${end##*rc=}" != 0 ] || [ "$GUEST_FAIL" -gt 0 ] || [ "$GUEST_PASS" -eq 0 ]; then
        GUEST_WHY="guest checks failed (rc ${end##*rc=})"
        [ "$GUEST_FAIL" -gt 0 ] || GUEST_FAIL=1
    fi
}
