#!/usr/bin/env bash
# The msr-safe suite: msrsave against LLNL's real msr-safe kernel module, loaded in Debian's
# kernel under QEMU (TCG), next to the stock msr driver (our independent read-back).
#
#   MSR_SAFE_KO=/path/msr-safe.ko [LLNL_MSRSAVE=/path/msrsave] tests/msr_safe/run.sh [GROUP...]
#
# MSR_SAFE_KO (required): msr-safe built against the headers of the kernel the guest boots (the
# one tests/real_kernel/setup.sh caches; its release is checked against the module's vermagic).
# Without it the suite prints one "NOT RUN msr_safe: ..." line and exits 77.
# LLNL_MSRSAVE (optional): LLNL's msrsave, statically linked; adds the side-by-side timing and
# the restore of an LLNL-format save file. Without it that group reports NOT RUN in its log.
#
# One boot per scenario group (default: all). The guest prints "PASS name" / "FAIL name: reason";
# the allowlist group also prints what the kernel did with each generated allowlist text, which
# alparse (tests/msr_safe/alparse, our parser) judges here on the host. The last line is
# "msr_safe: N passed, M failed"; exit status 0 only if every group passed.
#
# Environment: MSR_TEST_CACHE (default /var/cache/msr-restore-tests: kernel, static builds),
# MSR_TEST_LOGS (default target/msr_safe-logs), MSR_TEST_TIMEOUT (seconds per boot, default 120),
# MSR_REFERENCE_ALLOWLISTS (msr-safe's own lists, more texts for the differential test; default
# ../shared/reference/msr-safe-allowlists beside the repository, used when present).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
NOT_RUN_STATUS=77
GROUPS_ALL=(facts allowlist cycle hotplug removed fault perms llnl)

if [ -z "${MSR_SAFE_KO:-}" ]; then
    echo "NOT RUN msr_safe: set MSR_SAFE_KO=/path/to/msr-safe.ko (LLNL msr-safe built against the headers of the kernel tests/real_kernel/setup.sh caches; see tests/msr_safe/README.md) and optionally LLNL_MSRSAVE=/path/to/LLNL's static msrsave"
    exit "$NOT_RUN_STATUS"
fi

# shellcheck source=tests/lib/guest.sh
. "$REPO/tests/lib/guest.sh"

CACHE=${MSR_TEST_CACHE:-/var/cache/msr-restore-tests}
LOGS=${MSR_TEST_LOGS:-$REPO/target/msr_safe-logs}
BOOT_TIMEOUT=${MSR_TEST_TIMEOUT:-120}
log() { printf 'msr_safe: %s\n' "$*" >&2; }
die() { printf 'msr_safe: error: %s\n' "$*" >&2; exit 2; }

t_start=$(guest_now)
if [ "$#" -gt 0 ]; then groups=("$@"); else groups=("${GROUPS_ALL[@]}"); fi
for g in "${groups[@]}"; do
    case " ${GROUPS_ALL[*]} " in *" $g "*) ;; *) die "unknown group '$g' (known: ${GROUPS_ALL[*]})" ;; esac
done

[ -f "$MSR_SAFE_KO" ] || die "MSR_SAFE_KO=$MSR_SAFE_KO: no such file"
if [ -n "${LLNL_MSRSAVE:-}" ]; then
    [ -x "$LLNL_MSRSAVE" ] || die "LLNL_MSRSAVE=$LLNL_MSRSAVE: not an executable file"
    # The initramfs has no C library: LLNL's msrsave must be static (no program interpreter).
    if command -v readelf >/dev/null && LC_ALL=C readelf -lW "$LLNL_MSRSAVE" 2>/dev/null | grep -q 'INTERP'; then
        die "LLNL_MSRSAVE=$LLNL_MSRSAVE is dynamically linked; build it with gcc -static"
    fi
fi

# ------------------------------------------------------------------ kernel and module
guest_kernel
kver=$(cat "$GUEST_KDIR/version")
vermagic=$(tr '\0' '\n' <"$MSR_SAFE_KO" | sed -n 's/^vermagic=//p' | head -n 1)
[ -n "$vermagic" ] || die "MSR_SAFE_KO=$MSR_SAFE_KO has no vermagic: not a kernel module?"
if [ "${vermagic%% *}" != "$kver" ]; then
    die "MSR_SAFE_KO was built for kernel ${vermagic%% *} but the guest boots $kver: build msr-safe against the linux-headers-$kver package (vermagic '$vermagic')"
fi
# The whole vermagic (SMP, preempt, modversions...) is a string in the kernel image.
if [ -f "$GUEST_KDIR/vmlinux" ] && ! LC_ALL=C grep -qaF "$vermagic" "$GUEST_KDIR/vmlinux"; then
    die "MSR_SAFE_KO's vermagic '$vermagic' is not the guest kernel's ($kver has another configuration)"
fi
ko_version=$(tr '\0' '\n' <"$MSR_SAFE_KO" | sed -n 's/^version=//p' | head -n 1)
log "msr-safe module $MSR_SAFE_KO (version ${ko_version:-?}, vermagic '$vermagic')"

# ------------------------------------------------------------------ builds
command -v cargo >/dev/null || die "cargo not found"
guest_build_static "$CACHE/target-rawmsr" --manifest-path "$REPO/tests/real_kernel/rawmsr/Cargo.toml"
rawmsr=$CACHE/target-rawmsr/$GUEST_TRIPLE/release/rawmsr
guest_build_static "$CACHE/target-msrsave" --manifest-path "$REPO/Cargo.toml" -p msrsave --bin msrsave
msrsave=$CACHE/target-msrsave/$GUEST_TRIPLE/release/msrsave
# The side-by-side timing uses msrsave's release profile (LTO, opt-level 3), not the quicker test
# build above, and links it like LLNL's `gcc -static`: static, not static-pie. Under TCG a
# static-pie's start-up relocation costs about 70 ms per process (measured: --version 98 ms
# static-pie, 28 ms static, LLNL's 26 ms), which would swamp the save itself.
msrsave_release=
case " ${groups[*]} " in
    *" llnl "*)
        if [ -n "${LLNL_MSRSAVE:-}" ]; then
            log "cargo build --release (the workspace's release profile, for the timing)"
            RUSTFLAGS='-C target-feature=+crt-static -C relocation-model=static' \
                CARGO_TARGET_DIR=$CACHE/target-msrsave-release \
                cargo build --quiet --release --target "$GUEST_TRIPLE" --manifest-path "$REPO/Cargo.toml" \
                -p msrsave --bin msrsave >&2
            msrsave_release=$CACHE/target-msrsave-release/$GUEST_TRIPLE/release/msrsave
        fi
        ;;
esac

# Our parser on the host: the allowlist texts for the differential test and its judge.
log "cargo build --release --manifest-path tests/msr_safe/alparse/Cargo.toml (host)"
CARGO_TARGET_DIR=$CACHE/target-alparse cargo build --quiet --release \
    --manifest-path "$HERE/alparse/Cargo.toml" >&2
alparse=$CACHE/target-alparse/release/alparse

# ------------------------------------------------------------------ initramfs
work=$(mktemp -d "${TMPDIR:-/tmp}/msr-safe-suite.XXXXXX")
trap 'rm -rf "$work"' EXIT
root=$work/root
mkdir -p "$root/bin" "$root/test/al" "$root/test/lists" "$root/etc" "$root/dev" "$root/proc" "$root/sys" "$root/tmp"
cp /bin/busybox "$root/bin/busybox"
cp "$rawmsr" "$root/bin/rawmsr"
cp "$msrsave" "$root/bin/msrsave"
[ -z "${LLNL_MSRSAVE:-}" ] || cp "$LLNL_MSRSAVE" "$root/bin/msrsave-llnl"
[ -z "$msrsave_release" ] || cp "$msrsave_release" "$root/bin/msrsave-release"
cp "$GUEST_KDIR/msr.ko" "$root/test/msr.ko"
cp "$MSR_SAFE_KO" "$root/test/msr-safe.ko"
cp "$REPO/tests/real_kernel/guest/init" "$root/init"
chmod 0755 "$root/init"
cp "$HERE/guest/scenarios.sh" "$root/test/scenarios.sh"
# The registers that keep written values under TCG, as real_kernel's guest uses them.
cp "$REPO/tests/real_kernel/guest/allowlist" "$root/test/allowlist"
# A real list for the timing: Skylake-SP's, 399 MSRs (most read 0 under TCG).
cp "$REPO/allowlists/al_06_55" "$root/test/lists/al_06_55"
# real_kernel's assertion and JSON helpers, taken as they are (not copied into this suite).
guest_extract_functions "$REPO/tests/real_kernel/guest/scenarios.sh" \
    pass fail attach info info_output run expect_rc expect_eq hx hx16 jval jobjs jlist \
    cpu_msr_pairs rd wr online_cpus dump getv isnum trace_setup trace_start audit_verify \
    >"$root/test/rk-helpers.sh"
lists=()
ref=${MSR_REFERENCE_ALLOWLISTS:-$REPO/../shared/reference/msr-safe-allowlists}
if [ -d "$ref" ]; then
    lists+=("$ref")
    [ ! -d "$ref/v1.7.0" ] || lists+=("$ref/v1.7.0")
fi
lists+=("$REPO/allowlists")
n_cases=$("$alparse" gen "$work/al" "${lists[@]}")
cp -r "$work/al/cases" "$work/al/sentinel" "$root/test/al/"
log "$n_cases allowlist texts for the differential test (generated, and the lists in ${lists[*]})"
# Users: root; "op", an operator in the device group msr-user (and, where a scenario says so, in
# msr-admin, the allowlist node's group), as packaging/files/99-msr_safe.rules names them; "job",
# a user outside both.
printf 'root:x:0:0:root:/root:/bin/sh\njob:x:1000:1000:pretend job:/tmp:/bin/sh\nop:x:1001:1001:operator:/tmp:/bin/sh\n' >"$root/etc/passwd"
printf 'root:x:0:\njob:x:1000:\nop:x:1001:\nmsr-user:x:900:op\nmsr-admin:x:901:\n' >"$root/etc/group"
guest_cpio "$root" "$work/initrd.cpio"

# ------------------------------------------------------------------ boots
mkdir -p "$LOGS"
log "kernel $kver ($(basename "$GUEST_KERNEL")), logs in $LOGS"
total_pass=0
total_fail=0
failed_groups=()
for g in "${groups[@]}"; do
    if [ "$g" = llnl ] && [ -z "${LLNL_MSRSAVE:-}" ]; then
        # Neither passed nor failed: the side-by-side needs LLNL's binary.
        echo "NOT RUN msr_safe.llnl: set LLNL_MSRSAVE=/path/to/LLNL's static msrsave for the save-time ratio and the LLNL-format restore"
        continue
    fi
    log "boot: $g"
    t0=$(guest_now)
    guest_boot "$g" "$work/initrd.cpio" "$LOGS" "$BOOT_TIMEOUT"
    n_pass=$GUEST_PASS n_fail=$GUEST_FAIL why=$GUEST_WHY
    if [ "$g" = allowlist ]; then
        # The kernel's verdicts, judged by our parser.
        grep '^ALCASE ' "$LOGS/$g.log" >"$LOGS/allowlist-kernel.txt" || true
        set +e
        "$alparse" judge "$work/al" "$LOGS/allowlist-kernel.txt" | tee "$LOGS/allowlist-judged.log"
        judge_rc=${PIPESTATUS[0]}
        set -e
        n_pass=$((n_pass + $(grep -c '^PASS ' "$LOGS/allowlist-judged.log" || true)))
        n_fail=$((n_fail + $(grep -c '^FAIL ' "$LOGS/allowlist-judged.log" || true)))
        if [ "$judge_rc" -ne 0 ]; then
            why="${why:+$why; }the kernel and our parser disagree"
            grep -q '^FAIL ' "$LOGS/allowlist-judged.log" || n_fail=$((n_fail + 1))
        fi
    fi
    total_pass=$((total_pass + n_pass))
    total_fail=$((total_fail + n_fail))
    [ -z "$why" ] || failed_groups+=("$g")
    log "boot: $g took $(guest_secs "$t0" "$(guest_now)") s: $n_pass passed, $n_fail failed${why:+ ($why)}"
done

log "suite took $(guest_secs "$t_start" "$(guest_now)") s"
[ "${#failed_groups[@]}" -eq 0 ] || log "failed: ${failed_groups[*]} (logs: $LOGS)"
echo "msr_safe: $total_pass passed, $total_fail failed"
[ "${#failed_groups[@]}" -eq 0 ]
