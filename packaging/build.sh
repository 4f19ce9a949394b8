#!/usr/bin/env bash
# Build msr-restore's release binaries and both packages into TARGET/packages/:
#   msr-restore_<version>-1_amd64.deb     (dpkg-deb from packaging/debian/, no debhelper)
#   msr-restore-<version>-1.x86_64.rpm    (rpmbuild of packaging/rpm/msr-restore.spec)
#
#   packaging/build.sh [--skip-cargo]
#
# --skip-cargo: package what TARGET/release already holds (no cargo build).
# TARGET is $CARGO_TARGET_DIR or <repo>/target. Installs missing tools from Debian's archive
# (dpkg-dev, rpm, and for the SPANK plugin libslurm-dev and libclang-dev).
# Writes TARGET/packages/BUILDINFO: the version and which optional parts are in the packages.
set -euo pipefail
umask 022

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/.." && pwd)
# shellcheck source=packaging/tools.sh
. "$here/tools.sh"

skip_cargo=0
for a in "$@"; do
    case "$a" in
        --skip-cargo) skip_cargo=1 ;;
        -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
        *) echo "build.sh: unknown argument $a" >&2; exit 2 ;;
    esac
done

target=${CARGO_TARGET_DIR:-$repo/target}
work=$target/packaging
out=$target/packages
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
deb_version=$version-$release
export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || date +%s)}

members=$(sed -n '/^\[workspace\]/,/^\[/s/^members *= *\[\(.*\)\]/\1/p' Cargo.toml | tr -d '" ' | tr ',' ' ')
with_spank=0
features=()
case " $members " in *" spank_msr "*) with_spank=1 ;; esac
# The plugin's SPANK entry points are behind spank_msr's `slurm` feature (it needs Slurm's
# headers and libclang); without the feature the .so would load but do nothing.
if [ "$with_spank" = 1 ] && grep -q '^slurm *=' spank_msr/Cargo.toml; then
    features=(--features spank_msr/slurm)
fi

need_tools dpkg-deb:dpkg dpkg-shlibdeps:dpkg-dev rpmbuild:rpm strip:binutils
[ "$with_spank" = 1 ] && [ "$skip_cargo" = 0 ] && need_packages libslurm-dev libclang-dev

# 1. Release binaries (msrsave, msrsave-docs, and the SPANK plugin when it is a member).
if [ "$skip_cargo" = 0 ]; then
    phase "cargo build --release --locked --workspace ${features[*]} (members: $members)"
    cargo build --release --locked --workspace "${features[@]}"
fi
[ -x "$target/release/msrsave" ] || { echo "build.sh: no $target/release/msrsave" >&2; exit 1; }

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
rm -rf "$root" "$out"
mkdir -p "$out"
"$here/stage.sh" --flavor deb --target-dir "$target" --gen-dir "$work/gen" --strip "$root" | tee "$work/stage-deb.log"
sed "s/@VERSION@/$deb_version/; s/@MAINTAINER@/$maintainer/; s/@DATE@/$(date -u -R -d "@$SOURCE_DATE_EPOCH")/" \
    packaging/debian/changelog | gzip -9n >"$root/usr/share/doc/msr-restore/changelog.Debian.gz"
chmod 0644 "$root/usr/share/doc/msr-restore/changelog.Debian.gz"
mkdir -p "$root/DEBIAN"
for s in postinst prerm postrm; do install -m 0755 "packaging/debian/$s" "$root/DEBIAN/$s"; done
(cd "$root" && find etc -type f | sort | sed 's|^|/|') >"$root/DEBIAN/conffiles"
shlib_objs=(-e"$root/usr/bin/msrsave")
so=$(find "$root/usr/lib" -name 'spank_msr.so' 2>/dev/null | head -n 1 || true)
[ -n "$so" ] && shlib_objs+=(-e"$so")
depends=$(
    tmp=$(mktemp -d)
    mkdir "$tmp/debian"
    printf 'Source: msr-restore\n\nPackage: msr-restore\nArchitecture: amd64\n' >"$tmp/debian/control"
    # The plugin's spank_* symbols come from slurmd at load time: hide that warning.
    (cd "$tmp" && dpkg-shlibdeps -O --warnings=0 "${shlib_objs[@]}" 2>/dev/null) | sed -n 's/^shlibs:Depends=//p'
    rm -rf "$tmp"
)
[ -n "$depends" ] || { echo "build.sh: dpkg-shlibdeps found no dependencies" >&2; exit 1; }
# slurmd refuses a plugin built for another Slurm major.minor: say which one this is for.
if [ -n "$so" ] && [ -r /usr/include/slurm/slurm_version.h ]; then
    v=$(sed -n 's/^#define SLURM_VERSION_NUMBER *0x\([0-9a-fA-F]*\).*/\1/p' /usr/include/slurm/slurm_version.h)
    major=$((16#${v:0:2})) minor=$((16#${v:2:2}))
    next=$(printf '%02d.%02d' "$major" "$((minor + 1))")
    breaks="slurmd (<< $(printf '%02d.%02d' "$major" "$minor")~), slurmd (>= $next~)"
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
    --define "_topdir $rpmtop" --define "_msr_target_dir $target")
if [ "$with_spank" = 0 ] || [ ! -f "$target/release/libspank_msr.so" ]; then
    rpm_args+=(--without spank)
elif ! nm -D --defined-only "$target/release/libspank_msr.so" | grep -q ' slurm_spank_job_prolog$'; then
    echo "build.sh: $target/release/libspank_msr.so has no SPANK entry points (built without --features spank_msr/slurm?)" >&2
    exit 1
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
cp "$rpmtop"/RPMS/x86_64/msr-restore-"$version"-"$release"*.x86_64.rpm "$out/"
rpm=$(ls "$out"/msr-restore-"$version"-"$release"*.x86_64.rpm)

present() { grep -q "^stage.sh: $1: staged" "$work/stage-deb.log" && echo yes || echo no; }
cat >"$out/BUILDINFO" <<EOF
version=$version
deb=$(basename "$deb")
rpm=$(basename "$rpm")
spank_msr=$(present spank_msr)
allowlists=$(present allowlists)
pbs_hook=$(present pbs_hook)
man_pages=$(present 'man pages and completions')
EOF
phase "done: $(basename "$deb") $(basename "$rpm") in $out"
cat "$out/BUILDINFO"
