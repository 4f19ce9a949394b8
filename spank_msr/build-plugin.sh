#!/usr/bin/env bash
# Build the SPANK plugin (libspank_msr.so, release) against one Slurm's headers and check that
# it declares that Slurm's series: slurmd loads a plugin only when its plugin_version has the
# same major.minor, so there is one build per Slurm major.minor.
#
#   spank_msr/build-plugin.sh [--slurm-headers DIR] [--target-dir DIR]
#
#   --slurm-headers DIR  the directory holding slurm/spank.h and slurm/slurm_version.h
#                        (default /usr/include, the build host's libslurm-dev); for another
#                        Slurm, e.g. ROOT/usr/include of a Debian 13 root with libslurm-dev
#   --target-dir DIR     cargo's target directory for this build (default: TARGET/slurm-MAJOR.MINOR,
#                        TARGET being $CARGO_TARGET_DIR or <repo>/target). One per series, so that
#                        builds for two series do not rebuild each other.
#
# Prints the built plugin's path on stdout (progress goes to stderr). Needs cargo, libclang
# (libclang-dev) and readelf.
#
# Why not plain `cargo build`: the slurm-spank crate runs bindgen on <slurm/spank.h> in a build
# script that declares no rerun-if-* dependency, so cargo never reruns it when the headers or the
# include path change. This script keeps a checksum of the headers in the target directory and
# cleans slurm-spank when they differ, then verifies the result's plugin_version.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/.." && pwd)

headers=/usr/include tdir=""
while [ $# -gt 0 ]; do
    case "$1" in
        --slurm-headers) headers=${2:?--slurm-headers needs a directory}; shift 2 ;;
        --target-dir) tdir=${2:?--target-dir needs a directory}; shift 2 ;;
        -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
        *) echo "build-plugin.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done
say() { echo "build-plugin.sh: $*" >&2; }

headers=$(cd "$headers" 2>/dev/null && pwd) || { say "no directory $headers"; exit 1; }
vh=$headers/slurm/slurm_version.h
if [ ! -r "$vh" ] || [ ! -r "$headers/slurm/spank.h" ]; then
    say "$headers has no slurm/spank.h and slurm/slurm_version.h (install libslurm-dev there)"
    exit 1
fi
hex=$(sed -n 's/^#define[[:space:]]*SLURM_VERSION_NUMBER[[:space:]]*0x\([0-9a-fA-F]*\).*/\1/p' "$vh")
[ -n "$hex" ] || { say "no SLURM_VERSION_NUMBER in $vh"; exit 1; }
v=$((16#$hex))
version=$(printf '%02d.%02d.%d' $((v >> 16)) $(((v >> 8) & 255)) $((v & 255)))
series=${version%.*}
tdir=${tdir:-${CARGO_TARGET_DIR:-$repo/target}/slurm-$series}
mkdir -p "$tdir"
tdir=$(cd "$tdir" && pwd)

# An include directory holding only slurm/: the compiler must not mix another system's libc
# headers (a root's /usr/include) with the build host's.
inc=$tdir/slurm-include
mkdir -p "$inc"
ln -sfn "$headers/slurm" "$inc/slurm"

# Rerun bindgen only when the headers changed: their checksum, kept next to the build.
sum=$( (echo "$headers"; cat "$headers"/slurm/*.h) | sha256sum | cut -d' ' -f1)
stamp=$tdir/slurm-headers.sha256
if [ "$(cat "$stamp" 2>/dev/null)" != "$sum" ]; then
    say "Slurm $version headers in $headers: regenerating the bindings (cargo clean -p slurm-spank)"
    (cd "$repo" && cargo clean --quiet --release --target-dir "$tdir" -p slurm-spank) >&2
fi

say "cargo build --release -p spank_msr --features slurm against Slurm $version ($tdir)"
# CPATH (-I): our compat header first, then this Slurm's headers, before /usr/include (which may
# hold the build host's own, other, Slurm). BINDGEN_EXTRA_CLANG_ARGS comes from .cargo/config.toml.
(cd "$repo" && CPATH="$here/compat:$inc" cargo build --release --locked -p spank_msr \
    --features spank_msr/slurm --target-dir "$tdir") >&2
echo "$sum" >"$stamp"

so=$tdir/release/libspank_msr.so
got=$("$here/plugin-version.sh" "$so")
if [ "${got%.*}" != "$series" ]; then
    say "$so declares Slurm $got, the headers are $version: stale bindings? remove $tdir and retry"
    exit 1
fi
say "$so: plugin_version $got"
echo "$so"
