#!/usr/bin/env bash
# Install what the real-kernel suite needs and cache a Debian kernel with its msr driver.
#
#   tests/real_kernel/setup.sh            (as root the first time; later runs reuse the cache)
#
# Installs qemu-system-x86, busybox-static and xz-utils with apt when they are missing, downloads
# the kernel package that linux-image-amd64 depends on (apt-get download, nothing goes to /boot),
# unpacks it under the cache and extracts the uncompressed vmlinux from the bzImage (booted via
# PVH, which skips the guest's own xz decompression: about 3 s less per boot under TCG).
#
# Cache: ${MSR_TEST_CACHE:-/var/cache/msr-restore-tests}. When it is ready it holds
#   kernel/current -> kernel/<version>/ with vmlinuz, vmlinux (if extraction worked), msr.ko, version
# and setup.sh prints that directory on its last line of stdout.
set -euo pipefail

CACHE=${MSR_TEST_CACHE:-/var/cache/msr-restore-tests}
log() { printf 'setup: %s\n' "$*" >&2; }
die() { printf 'setup: error: %s\n' "$*" >&2; exit 1; }

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else die "need root to run: $* (run tests/real_kernel/setup.sh as root once)"; fi
}

APT_UPDATED=0
apt_update_once() {
    if [ "$APT_UPDATED" -eq 0 ]; then
        log "apt-get update"
        as_root apt-get -o DPkg::Lock::Timeout=600 -q update >&2
        APT_UPDATED=1
    fi
}

# ---------------------------------------------------------------- host packages
pkg_installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'; }

need=()
pkg_installed qemu-system-x86 || need+=(qemu-system-x86)
pkg_installed busybox-static || need+=(busybox-static)
command -v xz >/dev/null || need+=(xz-utils)
apt_install() {
    export DEBIAN_FRONTEND=noninteractive
    if ! as_root apt-get -o DPkg::Lock::Timeout=600 -q -y --no-install-recommends install "$@" >&2; then
        apt_update_once
        as_root apt-get -o DPkg::Lock::Timeout=600 -q -y --no-install-recommends install "$@" >&2
    fi
}
if [ "${#need[@]}" -gt 0 ]; then
    log "installing ${need[*]}"
    had_qemu_utils=0
    if pkg_installed qemu-utils; then had_qemu_utils=1; fi
    apt_install "${need[@]}"
    # A machine with a newer qemu-utils (from backports) loses it: qemu-system-x86 from bookworm
    # conflicts with it. Put back bookworm's, so that qemu-img stays there.
    if [ "$had_qemu_utils" = 1 ] && ! pkg_installed qemu-utils; then
        log "reinstalling qemu-utils (apt removed a newer one for qemu-system-x86)"
        apt_install qemu-utils
    fi
fi
command -v qemu-system-x86_64 >/dev/null || die "qemu-system-x86_64 not found after install"
[ -x /bin/busybox ] || die "/bin/busybox (busybox-static) not found after install"

# ---------------------------------------------------------------- kernel
mkdir -p "$CACHE/debs" "$CACHE/kernel"

kernel_pkg() {
    apt-cache depends linux-image-amd64 2>/dev/null |
        awk '$1 == "Depends:" && $2 ~ /^linux-image-[0-9].*-amd64$/ { print $2; exit }'
}

pkg=$(kernel_pkg || true)
if [ -z "$pkg" ]; then
    apt_update_once || true
    pkg=$(kernel_pkg || true)
fi
if [ -z "$pkg" ]; then
    # No apt lists and no network: fall back to what an earlier run cached.
    if [ -e "$CACHE/kernel/current/msr.ko" ]; then
        log "apt does not know linux-image-amd64; using the cached kernel"
        readlink -f "$CACHE/kernel/current"
        exit 0
    fi
    die "cannot find the kernel package that linux-image-amd64 depends on (apt-cache depends linux-image-amd64)"
fi
kver=${pkg#linux-image-}
kdir="$CACHE/kernel/$kver"

# The package's version is part of the .deb's name: a new upload of the same ABI gets a new file.
pver=$(apt-cache policy "$pkg" 2>/dev/null | awk '$1 == "Candidate:" { print $2; exit }')
ready_stamp="$kdir/.ready-$pver"

if [ ! -e "$ready_stamp" ]; then
    deb=$(find "$CACHE/debs" -maxdepth 1 -name "${pkg}_${pver//:/%3a}_amd64.deb" -print -quit 2>/dev/null || true)
    if [ -z "$deb" ]; then
        log "downloading $pkg $pver"
        tmp=$(mktemp -d "$CACHE/debs/dl.XXXXXX")
        # apt-get download runs as the _apt user when it can; let it write into tmp.
        chmod 0777 "$tmp"
        if ! (cd "$tmp" && apt-get -q download "$pkg=$pver" >&2); then
            apt_update_once
            pver=$(apt-cache policy "$pkg" 2>/dev/null | awk '$1 == "Candidate:" { print $2; exit }')
            ready_stamp="$kdir/.ready-$pver"
            (cd "$tmp" && apt-get -q download "$pkg=$pver" >&2)
        fi
        deb_name=$(cd "$tmp" && ls -- *.deb)
        mv -f "$tmp/$deb_name" "$CACHE/debs/"
        rmdir "$tmp"
        deb="$CACHE/debs/$deb_name"
        # Keep only this .deb: old kernels are not needed.
        find "$CACHE/debs" -maxdepth 1 -name 'linux-image-*.deb' ! -name "$deb_name" -delete
    fi
    log "unpacking $(basename "$deb")"
    rm -rf "$kdir"
    mkdir -p "$kdir/tree"
    dpkg-deb --fsys-tarfile "$deb" |
        tar -x -C "$kdir/tree" --wildcards './boot/vmlinuz-*' './boot/config-*' \
            "./lib/modules/$kver/kernel/arch/x86/kernel/msr.ko*"
    cp "$kdir/tree/boot/vmlinuz-$kver" "$kdir/vmlinuz"
    cp "$kdir/tree/boot/config-$kver" "$kdir/config"
    mod=$(find "$kdir/tree/lib/modules" -name 'msr.ko*' -print -quit)
    [ -n "$mod" ] || die "no msr.ko in $pkg"
    case "$mod" in
        *.ko) cp "$mod" "$kdir/msr.ko" ;;
        *.ko.xz) xz -dc "$mod" >"$kdir/msr.ko" ;;
        *.ko.zst) die "zstd-compressed modules are not handled ($mod)" ;;
        *) die "unexpected module file $mod" ;;
    esac
    rm -rf "$kdir/tree"
    grep -q '^CONFIG_X86_MSR=m' "$kdir/config" || die "$pkg does not build the msr driver as a module"

    # The uncompressed vmlinux (an ELF with a PVH entry note): QEMU boots it directly and the guest
    # skips decompressing itself. The bzImage payload is one xz stream; find it by its magic.
    off=$(LC_ALL=C grep -obUaP '\xFD7zXZ\x00' "$kdir/vmlinuz" | head -n 1 | cut -d: -f1 || true)
    # (Through a file, not a pipe: xz stops reading after the stream and tail would die of SIGPIPE.)
    if [ -n "$off" ] && tail -c "+$((off + 1))" "$kdir/vmlinuz" >"$kdir/payload.xz" &&
        xz -dc --single-stream "$kdir/payload.xz" >"$kdir/vmlinux.tmp" 2>/dev/null &&
        [ "$(head -c 4 "$kdir/vmlinux.tmp" | od -An -c | tr -d ' ')" = '177ELF' ]; then
        mv "$kdir/vmlinux.tmp" "$kdir/vmlinux"
        log "extracted vmlinux ($(du -h "$kdir/vmlinux" | cut -f1)) for a PVH boot"
    else
        rm -f "$kdir/vmlinux.tmp"
        log "could not extract vmlinux; the suite boots the bzImage (slower)"
    fi
    rm -f "$kdir/payload.xz"
    echo "$kver" >"$kdir/version"
    touch "$ready_stamp"
    ln -sfn "$kver" "$CACHE/kernel/current.tmp"
    mv -T "$CACHE/kernel/current.tmp" "$CACHE/kernel/current"
    # Drop other unpacked kernels.
    find "$CACHE/kernel" -mindepth 1 -maxdepth 1 -type d ! -name "$kver" -exec rm -rf {} +
fi
ln -sfn "$kver" "$CACHE/kernel/current"
echo "$kdir"
