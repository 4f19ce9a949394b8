#!/usr/bin/env bash
# Build msr-restore's release binaries and both packages into TARGET/packages/:
#   msr-restore_<version>-1+slurm<X.Y>_amd64.deb    (dpkg-deb from packaging/debian/, no debhelper)
#   msr-restore-<version>-1.slurm<X.Y>.x86_64.rpm   (rpmbuild of packaging/rpm/msr-restore.spec)
# X.Y is the Slurm series (major.minor) the SPANK plugin is built for: slurmd loads only a
# plugin of its own series, so there is one package per series (no suffix without the plugin).
#
#   packaging/build.sh [--slurm-headers DIR | --slurm-root DIR] [--out DIR] [--skip-cargo]
#
# --slurm-headers DIR  build the plugin against DIR/slurm/*.h (default /usr/include: the build
#                      host's libslurm-dev, Slurm 22.05 on Debian 12)
# --slurm-root DIR     the same with DIR/usr/include: a root holding another Slurm's
#                      libslurm-dev, e.g. a Debian 13 root for Slurm 24.11
# --out DIR            where the packages go (default TARGET/packages; earlier msr-restore
#                      packages and BUILDINFO there are removed first)
# --skip-cargo         package what TARGET already holds (no cargo build): TARGET/release and
#                      the plugin in TARGET/slurm-<X.Y>/release (spank_msr/build-plugin.sh)
# TARGET is $CARGO_TARGET_DIR or <repo>/target. Installs missing tools from Debian's archive
# (dpkg-dev, rpm, binutils, and for the SPANK plugin libclang-dev and libslurm-dev).
# Writes OUT/BUILDINFO: the version, the Slurm series and which optional parts are in the packages.
set -euo pipefail
umask 022

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/.." && pwd)
# shellcheck source=packaging/tools.sh
. "$here/tools.sh"

skip_cargo=0 headers=/usr/include out=""
while [ $# -gt 0 ]; do
    case "$1" in
        --skip-cargo) skip_cargo=1; shift ;;
        --slurm-headers) headers=${2:?--slurm-headers needs a directory}; shift 2 ;;
        --slurm-root) headers=${2:?--slurm-root needs a directory}/usr/include; shift 2 ;;
        --out) out=${2:?--out needs a directory}; shift 2 ;;
        -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
        *) echo "build.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done

target=${CARGO_TARGET_DIR:-$repo/target}
work=$target/packaging
out=${out:-$target/packages}
mkdir -p "$out"
out=$(cd "$out" && pwd)
maintainer="msr-restore developers <msr-restore@example.invalid>"
t0=$SECONDS
phase() { echo "build.sh: [$((SECONDS - t0))s] $*"; }

cd "$repo"
version=$(sed -n '/^\[workspace.package\]/,/^\[/s/^version *= *"\(.*\)"/\1/p' Cargo.toml)
[ -n "$version" ] || { echo "build.sh: no version in [workspace.package] of Cargo.toml" >&2; exit 1; }
spec_version=$(sed -n 's/^Version: *//p' packaging/rpm/msr-restore.spec)
if [ "$spec_version" != "$version" ]; then
    echo "build.sh: packaging/rpm/msr-restore.spec says Version: $spec_version, Cargo.toml says $version" >&2
    exit 1
fi
release=1
export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || date +%s)}

members=$(sed -n '/^\[workspace\]/,/^\[/s/^members *= *\[\(.*\)\]/\1/p' Cargo.toml | tr -d '" ' | tr ',' ' ')
with_spank=0
# The plugin's SPANK entry points are behind spank_msr's `slurm` feature (it needs Slurm's
# headers and libclang): spank_msr/build-plugin.sh builds it, one target directory per series.
case " $members " in *" spank_msr "*) grep -q '^slurm *=' spank_msr/Cargo.toml && with_spank=1 ;; esac

need_tools dpkg-deb:dpkg dpkg-shlibdeps:dpkg-dev rpmbuild:rpm strip:binutils readelf:binutils
if [ "$with_spank" = 1 ] && [ "$skip_cargo" = 0 ]; then
    need_packages libclang-dev
    [ "$headers" = /usr/include ] && need_packages libslurm-dev
fi

# 1. Release binaries (msrsave, msrsave-docs) and the SPANK plugin for the Slurm of $headers.
if [ "$skip_cargo" = 0 ]; then
    phase "cargo build --release --locked --workspace (members: $members)"
    cargo build --release --locked --workspace
fi
[ -x "$target/release/msrsave" ] || { echo "build.sh: no $target/release/msrsave" >&2; exit 1; }
so="" series=""
if [ "$with_spank" = 1 ]; then
    if [ "$skip_cargo" = 0 ]; then
        phase "SPANK plugin against the Slurm headers in $headers"
        so=$(CARGO_TARGET_DIR=$target spank_msr/build-plugin.sh --slurm-headers "$headers")
    else
        hex=$(sed -n 's/^#define[[:space:]]*SLURM_VERSION_NUMBER[[:space:]]*0x\([0-9a-fA-F]*\).*/\1/p' \
            "$headers/slurm/slurm_version.h" 2>/dev/null)
        [ -n "$hex" ] || { echo "build.sh: no Slurm headers in $headers (--slurm-headers)" >&2; exit 1; }
        so=$target/slurm-$(printf '%02d.%02d' $((16#$hex >> 16)) $(((16#$hex >> 8) & 255)))/release/libspank_msr.so
        [ -f "$so" ] || { echo "build.sh: no $so: run spank_msr/build-plugin.sh --slurm-headers $headers" >&2; exit 1; }
    fi
    # The series comes from the plugin itself: the plugin_version slurmd will compare.
    series=$(spank_msr/plugin-version.sh --series "$so")
    phase "SPANK plugin $so: Slurm $("spank_msr/plugin-version.sh" "$so") (series $series)"
fi
# One package per Slurm series: the series is part of the package's version (Debian revision,
# RPM release), so the builds for two series never share a file name or a version.
deb_version=$version-$release${series:++slurm$series}
rpm_release=$release${series:+.slurm$series}
# 2. Man pages and completions from the CLI definition.
mkdir -p "$work"
rm -rf "$work/gen"
if [ -x "$target/release/msrsave-docs" ]; then
    phase "msrsave-docs: man pages and completions"
    "$target/release/msrsave-docs" "$work/gen"
else
    phase "no msrsave-docs binary: packages without man pages and completions"
fi

# 3. The Debian package.
phase "staging and building the .deb"
root=$work/deb-root
rm -rf "$root" "$out"/msr-restore[_-]*.deb "$out"/msr-restore-*.rpm "$out/BUILDINFO"
plugin_arg=()
[ -n "$so" ] && plugin_arg=(--plugin "$so")
"$here/stage.sh" --flavor deb --target-dir "$target" "${plugin_arg[@]}" --gen-dir "$work/gen" --strip "$root" | tee "$work/stage-deb.log"
sed "s/@VERSION@/$deb_version/; s/@MAINTAINER@/$maintainer/; s/@DATE@/$(date -u -R -d "@$SOURCE_DATE_EPOCH")/" \
    packaging/debian/changelog | gzip -9n >"$root/usr/share/doc/msr-restore/changelog.Debian.gz"
chmod 0644 "$root/usr/share/doc/msr-restore/changelog.Debian.gz"
mkdir -p "$root/DEBIAN"
for s in postinst prerm postrm; do install -m 0755 "packaging/debian/$s" "$root/DEBIAN/$s"; done
(cd "$root" && find etc -type f | sort | sed 's|^|/|') >"$root/DEBIAN/conffiles"
shlib_objs=(-e"$root/usr/bin/msrsave")
staged_so=$(find "$root/usr/lib" -name 'spank_msr.so' 2>/dev/null | head -n 1 || true)
[ -n "$staged_so" ] && shlib_objs+=(-e"$staged_so")
depends=$(
    tmp=$(mktemp -d)
    mkdir "$tmp/debian"
    printf 'Source: msr-restore\n\nPackage: msr-restore\nArchitecture: amd64\n' >"$tmp/debian/control"
    # The plugin's spank_* symbols come from slurmd at load time: hide that warning.
    (cd "$tmp" && dpkg-shlibdeps -O --warnings=0 "${shlib_objs[@]}" 2>/dev/null) | sed -n 's/^shlibs:Depends=//p'
    rm -rf "$tmp"
)
[ -n "$depends" ] || { echo "build.sh: dpkg-shlibdeps found no dependencies" >&2; exit 1; }
# slurmd refuses a plugin built for another Slurm major.minor: say which one this is for, from
# the plugin's own plugin_version (Debian's slurmd versions are X.Y.Z-N: 22.05.8-4+deb12u3).
if [ -n "$staged_so" ]; then
    major=$((10#${series%.*})) minor=$((10#${series#*.}))
    breaks="slurmd (<< $series~), slurmd (>= $(printf '%02d.%02d' "$major" "$((minor + 1))")~)"
fi
size=$(du -sk --exclude=DEBIAN "$root" | cut -f1)
sed -e "s/@VERSION@/$deb_version/" -e "s/@MAINTAINER@/$maintainer/" -e "s/@INSTALLED_SIZE@/$size/" \
    -e "s/@DEPENDS@/$depends/" packaging/debian/control.in >"$root/DEBIAN/control"
[ -n "${breaks:-}" ] && sed -i "s/^Suggests: /Breaks: $breaks\nSuggests: /" "$root/DEBIAN/control"
(cd "$root" && find . -path ./DEBIAN -prune -o -type f -printf '%P\0' | sort -z | xargs -0 md5sum) >"$root/DEBIAN/md5sums"
chmod 0644 "$root/DEBIAN/control" "$root/DEBIAN/conffiles" "$root/DEBIAN/md5sums"
deb=$out/msr-restore_${deb_version}_amd64.deb
dpkg-deb --root-owner-group -Zxz --build "$root" "$deb" >/dev/null

# 4. The RPM, from the same binaries, staged by the same script (spec's %install).
phase "building the .rpm"
rpmtop=$work/rpmbuild
rm -rf "$rpmtop"
rpm_args=(-bb --build-in-place --nodeps --with prebuilt
    --define "_topdir $rpmtop" --define "_msr_target_dir $target" --define "_msr_release $rpm_release")
if [ -z "$so" ]; then
    rpm_args+=(--without spank)
elif ! nm -D --defined-only "$so" | grep -q ' slurm_spank_job_prolog$'; then
    echo "build.sh: $so has no SPANK entry points (built without --features spank_msr/slurm?)" >&2
    exit 1
else
    rpm_args+=(--define "_msr_spank_so $so" --define "_msr_slurm_series $series"
        --define "_msr_slurm_next $(printf '%02d.%02d' "$((10#${series%.*}))" "$((10#${series#*.} + 1))")")
fi
[ -d pbs_hook ] || rpm_args+=(--without pbs)
# Debian's rpm lacks RHEL's systemd and path macros: load RHEL's values for them.
if [ "$(rpm --eval '%{?_unitdir}')" = "" ]; then
    rpm_args+=(--load "$here/rpm/macros.debian-host")
fi
rpmbuild "${rpm_args[@]}" packaging/rpm/msr-restore.spec >"$work/rpmbuild.log" 2>&1 || {
    tail -n 40 "$work/rpmbuild.log" >&2
    echo "build.sh: rpmbuild failed (log: $work/rpmbuild.log)" >&2
    exit 1
}
cp "$rpmtop"/RPMS/x86_64/msr-restore-"$version"-"$rpm_release"*.x86_64.rpm "$out/"
rpm=$(ls "$out"/msr-restore-"$version"-"$rpm_release"*.x86_64.rpm)

present() { grep -q "^stage.sh: $1: staged" "$work/stage-deb.log" && echo yes || echo no; }
cat >"$out/BUILDINFO" <<EOF
version=$version
slurm_series=$series
deb_version=$deb_version
rpm_release=$rpm_release
deb=$(basename "$deb")
rpm=$(basename "$rpm")
spank_msr=$(present spank_msr)
allowlists=$(present allowlists)
pbs_hook=$(present pbs_hook)
man_pages=$(present 'man pages and completions')
EOF
phase "done: $(basename "$deb") $(basename "$rpm") in $out"
cat "$out/BUILDINFO"
