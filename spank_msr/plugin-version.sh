#!/usr/bin/env bash
# Print the Slurm version a built SPANK plugin declares: its exported `plugin_version`
# (SLURM_VERSION_NUMBER of the headers it was built against), the number slurmd compares with
# its own major.minor before it loads the plugin.
#
#   spank_msr/plugin-version.sh [--series] PLUGIN.so
#
# Prints MAJOR.MINOR.MICRO (e.g. 22.05.8), or with --series only MAJOR.MINOR (22.05).
# Needs readelf and od (binutils, coreutils); reads the file, loads nothing.
set -euo pipefail

series=0
case "${1:-}" in
    --series) series=1; shift ;;
    -h|--help) sed -n '2,9p' "$0"; exit 0 ;;
esac
[ $# = 1 ] || { echo "usage: $0 [--series] PLUGIN.so" >&2; exit 2; }
so=$1
[ -r "$so" ] || { echo "plugin-version.sh: cannot read $so" >&2; exit 1; }

# plugin_version's address and section index, from the dynamic symbol table (slurmd finds it
# there with dlsym, so a stripped plugin keeps it).
read -r addr ndx size < <(readelf -W --dyn-syms "$so" |
    awk '$8 == "plugin_version" && $4 == "OBJECT" {print $2, $7, $3; exit}') || true
if [ -z "${addr:-}" ] || ! [[ $ndx =~ ^[0-9]+$ ]] || [ "$size" != 4 ]; then
    echo "plugin-version.sh: $so exports no 4-byte plugin_version object (not a SPANK plugin?)" >&2
    exit 1
fi
# That section's address and file offset: the value sits at addr - sh_addr + sh_offset.
read -r sh_addr sh_off < <(readelf -W -S "$so" |
    awk -v n="$ndx" '{ line = $0; if (sub(/^ *\[ */, "", line) && sub(/\].*/, "", line) && line == n) {
        sub(/^ *\[ *[0-9]+\] */, ""); print $3, $4; exit } }') || true
[ -n "${sh_off:-}" ] || { echo "plugin-version.sh: no section $ndx in $so" >&2; exit 1; }
offset=$((16#$addr - 16#$sh_addr + 16#$sh_off))
v=$(od -An -t u4 -j "$offset" -N 4 "$so" | tr -d ' ')
if ! [[ $v =~ ^[1-9][0-9]*$ ]]; then
    echo "plugin-version.sh: unreadable plugin_version in $so" >&2
    exit 1
fi
# SLURM_VERSION_NUM(a, b, c) = a << 16 | b << 8 | c; releases are written YY.MM.
if [ "$series" = 1 ]; then
    printf '%02d.%02d\n' $((v >> 16)) $(((v >> 8) & 255))
else
    printf '%02d.%02d.%d\n' $((v >> 16)) $(((v >> 8) & 255)) $((v & 255))
fi
