#!/usr/bin/env bash
# Package tests for msr-restore: build both packages, check their contents and modes, lint
# them with the distributions' own tools, install the .deb into a clean Debian root
# (debootstrap, cached) and run msrsave, the boot script and the NHC check there.
#
#   packaging/tests/run.sh [--skip-build]
#
# --skip-build  test the packages already in TARGET/packages (from packaging/build.sh)
# Environment:
#   MSR_TEST_CACHE   cache directory (default /var/cache/msr-restore-tests); this script uses
#                    MSR_TEST_CACHE/pkg: the Debian root (made once by debootstrap, about a
#                    minute) and promtool (from Debian's prometheus package)
#   CARGO_TARGET_DIR cargo's target directory (default <repo>/target)
#   KEEP=1           keep the scratch directory (the roots the packages were installed into)
#
# Prints PASS/FAIL/SKIP lines and ends with "N passed, M failed, K skipped"; exits non-zero
# when anything failed. Needs root (debootstrap, chroot) and Debian's apt for its tools.
set -uo pipefail
umask 022

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
# shellcheck source=packaging/tools.sh
. "$repo/packaging/tools.sh"

skip_build=0
for a in "$@"; do
    case "$a" in
        --skip-build) skip_build=1 ;;
        -h|--help) sed -n '2,19p' "$0"; exit 0 ;;
        *) echo "run.sh: unknown argument $a" >&2; exit 2 ;;
    esac
done

target=${CARGO_TARGET_DIR:-$repo/target}
out=$target/packages
cache=${MSR_TEST_CACHE:-/var/cache/msr-restore-tests}/pkg
suite="bookworm"
mirror=${MSR_TEST_MIRROR:-http://deb.debian.org/debian}
base_root=$cache/debian-$suite-minbase-systemd
t_start=$SECONDS

pass=0 fail=0 skip=0
ok() { echo "PASS: $*"; pass=$((pass + 1)); }
bad() { echo "FAIL: $*"; fail=$((fail + 1)); }
skipped() { echo "SKIP: $*"; skip=$((skip + 1)); }
indent() { sed -e 's/^/    /' | tail -n "${1:-25}"; }
# t NAME CMD...: PASS when CMD exits 0, else FAIL with the end of its output.
t() {
    local name=$1 o
    shift
    if o=$("$@" 2>&1); then ok "$name"; else bad "$name (exit $?)"; printf '%s\n' "$o" | indent; fi
}
# t_rc NAME RC CMD...: PASS when CMD exits with RC.
t_rc() {
    local name=$1 want=$2 o rc
    shift 2
    o=$("$@" 2>&1)
    rc=$?
    if [ "$rc" = "$want" ]; then ok "$name"; else bad "$name (exit $rc, expected $want)"; printf '%s\n' "$o" | indent; fi
}
finish() {
    echo "run.sh: test time $((SECONDS - t_start))s${build_time:+ (package build ${build_time}s)}"
    echo "$pass passed, $fail failed, $skip skipped"
    [ "$fail" = 0 ]
    exit $?
}

work=$(mktemp -d /tmp/msr-restore-pkgtest.XXXXXX)
mounts=()
cleanup() {
    local m
    for m in "${mounts[@]}"; do umount -l "$m" 2>/dev/null; done
    if [ "${KEEP:-0}" = 1 ]; then echo "run.sh: kept $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT

# ---------------------------------------------------------------------------------------
echo "== tools"
if [ "$(id -u)" != 0 ]; then
    bad "run as root (debootstrap, chroot and dpkg -i into the test root need it)"
    finish
fi
if need_tools dpkg-deb:dpkg dpkg-shlibdeps:dpkg-dev rpm:rpm rpmbuild:rpm rpmlint:rpmlint \
    debootstrap:debootstrap python3:python3 shellcheck:shellcheck lintian:lintian \
    systemd-analyze:systemd nm:binutils man:man-db; then
    ok "tools: dpkg-dev, rpm, rpmlint, lintian, debootstrap, shellcheck, systemd-analyze"
else
    bad "tools could not be installed"
    finish
fi

# ---------------------------------------------------------------------------------------
echo "== build"
build_time=
if [ "$skip_build" = 0 ]; then
    t0=$SECONDS
    if "$repo/packaging/build.sh" >"$work/build.log" 2>&1; then
        build_time=$((SECONDS - t0))
        ok "packaging/build.sh built both packages (${build_time}s)"
    else
        bad "packaging/build.sh failed"
        indent 40 <"$work/build.log"
        finish
    fi
fi
if [ ! -f "$out/BUILDINFO" ]; then
    bad "no $out/BUILDINFO: run packaging/build.sh"
    finish
fi
version="" deb="" rpm="" spank_msr=no allowlists=no pbs_hook=no man_pages=no slurm_series="" deb_version="" rpm_release=""
# shellcheck disable=SC1091
. "$out/BUILDINFO"
deb_file=$out/$deb
rpm_file=$out/$rpm
echo "run.sh: version $version (deb $deb_version, rpm release $rpm_release); SPANK plugin: $spank_msr${slurm_series:+ for Slurm $slurm_series}; allowlists: $allowlists; PBS hook: $pbs_hook; man pages: $man_pages"

# ---------------------------------------------------------------------------------------
echo "== contents and modes"
# "TYPE MODE PATH OWNER" of every entry of each package (TYPE: - file, d directory, l link).
perm2oct() { # -rwxr-xr-x -> 0755 (no setuid bits are expected)
    local p=$1 o=0 i d
    for i in 0 3 6; do
        d=0
        [ "${p:$((i + 1)):1}" = r ] && d=$((d + 4))
        [ "${p:$((i + 2)):1}" = w ] && d=$((d + 2))
        case "${p:$((i + 3)):1}" in x|s|t) d=$((d + 1)) ;; esac
        o=$o$d
    done
    echo "$o"
}
dpkg-deb -c "$deb_file" | while read -r perm owner _ _ _ path arrow target; do
    path=${path#.}
    path=${path%/}
    [ -z "$path" ] && continue
    echo "${perm:0:1} $(perm2oct "$perm") $path $owner${arrow:+ $arrow $target}"
done | sort -k3 >"$work/deb.list"
rpm -qplv --nosignature "$rpm_file" 2>/dev/null | while read -r perm _ owner group _ _ _ _ path arrow target; do
    echo "${perm:0:1} $(perm2oct "$perm") $path $owner/$group${arrow:+ $arrow $target}"
done | sort -k3 >"$work/rpm.list"

# expect FLAVOR: the artifacts a package must hold, as "MODE PATH".
expect() {
    local unitdir plugindir zshdir so_mode
    if [ "$1" = deb ]; then
        unitdir=/lib/systemd/system plugindir=/usr/lib/x86_64-linux-gnu/slurm-wlm
        zshdir=/usr/share/zsh/vendor-completions so_mode=0644
    else
        unitdir=/usr/lib/systemd/system plugindir=/usr/lib64/slurm
        zshdir=/usr/share/zsh/site-functions so_mode=0755
    fi
    cat <<EOF
0755 /usr/bin/msrsave
0644 /etc/msr-restore/msr-restore.conf
0755 /usr/libexec/msr-restore/msr-restore-boot
0755 /usr/libexec/msr-restore/msr-restore-check
0755 /usr/sbin/msr-restore-fleet
0644 /usr/share/man/man8/msr-restore-fleet.8.gz
0644 /usr/share/doc/msr-restore/policy.md
0644 /usr/share/doc/msr-restore/save-format.md
0644 $unitdir/msr-restore-baseline.service
0644 $unitdir/msr-restore-check.service
0644 $unitdir/msr-restore-check.timer
0755 /var/lib/msr-restore
0644 /etc/nhc/scripts/msr_restore.nhc
0644 /usr/share/msr-restore/udev/99-msr_safe.rules
0755 /usr/share/msr-restore/allowlists
0644 /usr/share/doc/msr-restore/README.md
0644 /usr/share/doc/msr-restore/copyright
EOF
    if [ "$man_pages" = yes ]; then
        cat <<EOF
0644 /usr/share/man/man1/msrsave.1.gz
0644 /usr/share/man/man1/msrsave-save.1.gz
0644 /usr/share/man/man1/msrsave-restore.1.gz
0644 /usr/share/man/man1/msrsave-check.1.gz
0644 /usr/share/man/man1/msrsave-allowlist.1.gz
0644 /usr/share/man/man1/msrsave-allowlist-load.1.gz
0644 /usr/share/bash-completion/completions/msrsave
0644 $zshdir/_msrsave
0644 /usr/share/fish/vendor_completions.d/msrsave.fish
EOF
    fi
    if [ "$spank_msr" = yes ]; then
        echo "$so_mode $plugindir/spank_msr.so"
        echo "0644 /etc/slurm/plugstack.conf.d/msr-restore.conf"
        echo "0755 /usr/sbin/msr-healthcheck"
        echo "0644 /usr/share/man/man8/msr-healthcheck.8.gz"
        echo "0644 /etc/msr-restore/healthcheck.args"
        echo "0644 /usr/share/msr-restore/slurm-series"
        echo "0755 /usr/libexec/msr-restore/msr-restore-slurm-check"
    fi
    if [ "$pbs_hook" = yes ]; then
        cat <<EOF
0644 /usr/share/msr-restore/pbs/msr_restore_hook.py
0755 /usr/share/msr-restore/pbs/install.sh
0755 /usr/share/msr-restore/pbs/uninstall.sh
0644 /usr/share/msr-restore/pbs/README.md
0755 /usr/share/msr-restore/pbs/torque/msr-restore-job
0644 /etc/msr-restore/msr_restore_hook.json
EOF
    fi
    [ "$1" = deb ] && echo "0644 /usr/share/doc/msr-restore/changelog.Debian.gz"
    return 0
}
for flavor in deb rpm; do
    problems=$(expect "$flavor" | while read -r mode path; do
        got=$(awk -v p="$path" '$3 == p {print $2; exit}' "$work/$flavor.list")
        if [ -z "$got" ]; then echo "missing $path"; elif [ "$got" != "$mode" ]; then echo "$path has mode $got, expected $mode"; fi
    done)
    if [ -z "$problems" ]; then
        ok "$flavor: all $(expect "$flavor" | wc -l) expected artifacts present with the right modes"
    else
        bad "$flavor: artifacts missing or with wrong modes"
        printf "%s\n" "$problems" | indent
    fi
    # Nothing writable by group or others, nothing owned by anyone but root.
    loose=$(awk '$1 != "l" { m = substr($2, 3, 2); if (m ~ /[2367]/ || $4 != "root/root") print }' "$work/$flavor.list")
    if [ -z "$loose" ]; then ok "$flavor: every file root-owned, none group- or world-writable"; else bad "$flavor: loose files"; printf '%s\n' "$loose" | indent; fi
done
if [ "$allowlists" = yes ]; then
    for flavor in deb rpm; do
        n=$(grep -c ' /usr/share/msr-restore/allowlists/al_' "$work/$flavor.list")
        wrong=$(grep ' /usr/share/msr-restore/allowlists/al_' "$work/$flavor.list" | grep -vc '^- 0644 ')
        if [ "$n" -gt 0 ] && [ "$wrong" = 0 ]; then ok "$flavor: $n allowlists, mode 0644"; else bad "$flavor: $n allowlists, $wrong with a mode other than 0644"; fi
    done
else
    skipped "allowlists: the tree has no allowlists/al_* yet"
fi
if [ "$pbs_hook" = yes ]; then
    for flavor in deb rpm; do
        n=$(grep -c '^- .* /usr/share/msr-restore/pbs/' "$work/$flavor.list")
        link=$(awk '$1 == "l" && $3 == "/usr/share/msr-restore/pbs/msr_restore_hook.json" {print $5 $6}' "$work/$flavor.list")
        # absolute in the .deb (Debian policy), relative in the RPM (Fedora's)
        if [ "$n" -gt 0 ] && { [ "$link" = "->/etc/msr-restore/msr_restore_hook.json" ] ||
            [ "$link" = "->../../../../etc/msr-restore/msr_restore_hook.json" ]; }; then
            ok "$flavor: PBS hook and Torque scripts ($n files under /usr/share/msr-restore/pbs), its config a conffile linked from there"
        else
            bad "$flavor: $n files under /usr/share/msr-restore/pbs; config link '$link'"
        fi
        if grep -q '/usr/share/msr-restore/pbs/tests' "$work/$flavor.list"; then bad "$flavor: the PBS tests are packaged"; fi
    done
else
    skipped "PBS hook and Torque scripts: the tree has no pbs_hook/ yet"
fi
[ "$spank_msr" = yes ] || skipped "SPANK plugin: spank_msr is not a workspace member yet (packages built without spank_msr.so)"

# The two packages carry the same files, distribution paths aside.
norm() {
    sed -e 's|/usr/lib/x86_64-linux-gnu/slurm-wlm/|PLUGINDIR/|; s|/usr/lib64/slurm/|PLUGINDIR/|' \
        -e 's|^/lib/systemd/system/|UNITDIR/|; s|^/usr/lib/systemd/system/|UNITDIR/|' \
        -e 's|/usr/share/zsh/vendor-completions/|ZSH/|; s|/usr/share/zsh/site-functions/|ZSH/|' "$1" |
        grep -v -e '^/usr/lib/.build-id' -e 'changelog.Debian.gz$' | sort
}
# Compare files only (directories differ: dpkg lists every parent, rpm only owned ones).
awk '$1 == "-" {print $3}' "$work/deb.list" >"$work/deb.files"
awk '$1 == "-" {print $3}' "$work/rpm.list" >"$work/rpm.files"
if diff <(norm "$work/deb.files" | grep -v '^$') <(norm "$work/rpm.files" | grep -v '^$') >"$work/files.diff"; then
    ok "deb and rpm hold the same $(wc -l <"$work/rpm.files") files (distribution paths aside)"
else
    bad "deb and rpm differ (< deb, > rpm)"
    indent <"$work/files.diff"
fi

# ---------------------------------------------------------------------------------------
echo "== metadata and scripts"
f() { dpkg-deb -f "$deb_file" "$1"; }
want_deb_version=$version-1${slurm_series:++slurm$slurm_series}
t "deb: Package msr-restore, Version $want_deb_version, Architecture amd64" \
    test "$(f Package) $(f Version) $(f Architecture)" = "msr-restore $want_deb_version amd64"
t "deb: Depends from dpkg-shlibdeps names libc6 ($(f Depends))" grep -q 'libc6 (>=' <<<"$(f Depends)"
dpkg-deb --ctrl-tarfile "$deb_file" | tar -xO ./conffiles >"$work/conffiles" 2>/dev/null
awk '$1 == "-" && $3 ~ /^\/etc\// {print $3}' "$work/deb.list" | sort >"$work/etc-files"
t "deb: every file under /etc is a conffile ($(wc -l <"$work/etc-files"))" diff <(sort "$work/conffiles") "$work/etc-files"
rpm -qpc --nosignature "$rpm_file" 2>/dev/null | sort >"$work/rpm-config"
awk '$1 == "-" && $3 ~ /^\/etc\// {print $3}' "$work/rpm.list" | sort >"$work/rpm-etc-files"
t "rpm: every file under /etc is %config(noreplace)" diff "$work/rpm-config" "$work/rpm-etc-files"
t "rpm: Version $version, scriptlets preset the boot unit" \
    bash -c "[ \"\$(rpm -qp --nosignature --qf '%{VERSION}' '$rpm_file')\" = '$version' ] &&
             rpm -qp --nosignature --scripts '$rpm_file' | grep -q 'preset msr-restore-baseline.service'"

# ---------------------------------------------------------------------------------------
echo "== lint"
o=$(rpmlint -c "$repo/packaging/rpm/rpmlint.toml" "$repo/packaging/rpm/msr-restore.spec" "$rpm_file" 2>&1)
rc=$?
summary=$(printf '%s\n' "$o" | grep -E 'checked;' | tail -n 1)
if [ "$rc" = 0 ]; then ok "rpmlint spec and rpm: ${summary# }"; else bad "rpmlint (exit $rc): $summary"; printf '%s\n' "$o" | grep -E ': [EW]: ' | indent; fi
o=$(lintian --tag-display-limit 0 --suppress-tags-from-file "$here/lintian-suppressed" "$deb_file" 2>&1)
rc=$?
if [ "$rc" = 0 ] && ! printf '%s\n' "$o" | grep -qE '^[EW]: '; then
    ok "lintian: no errors or warnings$(printf '%s\n' "$o" | grep -cE '^[IP]: ' | sed 's/^0$//; s/^\(.\+\)$/ (\1 info notes)/')"
else
    bad "lintian (exit $rc)"
    printf '%s\n' "$o" | grep -E '^[EW]: ' | indent 40
fi
shell_files=("$repo"/packaging/*.sh "$repo"/packaging/tests/*.sh "$repo/packaging/files/msr-restore-boot"
    "$repo/packaging/files/msr_restore.nhc" "$repo"/packaging/debian/{postinst,prerm,postrm}
    "$repo/packaging/slurm/msr-restore-slurm-check" "$repo"/spank_msr/*.sh)
t "shellcheck: ${#shell_files[@]} shell files (boot script, NHC check, maintainer scripts, build and test scripts)" \
    shellcheck -x "${shell_files[@]}"
# udev rules: every rule is KEY[{attr}]OP"value" pairs separated by commas.
t "udev rules: syntax (KEY==\"value\", KEY=\"value\" pairs)" python3 - "$repo/packaging/files/99-msr_safe.rules" <<'EOF'
import re, sys
pair = r'\s*[A-Z_]+(\{[^}]*\})?\s*(==|!=|=|\+=|-=|:=)\s*"[^"]*"\s*'
n = 0
for i, line in enumerate(open(sys.argv[1]), 1):
    s = line.strip()
    if not s or s.startswith('#'):
        continue
    if not re.fullmatch(pair + '(,' + pair + ')*', s):
        sys.exit(f"line {i}: not a udev rule: {s}")
    if not re.search(r'(MODE|GROUP)=', s):
        sys.exit(f"line {i}: sets neither MODE nor GROUP")
    n += 1
if n != 4:
    sys.exit(f"{n} rules, expected 4 (msr_safe, msr_batch, msr_safe_version, msr_allowlist)")
EOF
if [ "$man_pages" = yes ]; then
    mkdir -p "$work/deb-x"
    dpkg-deb -x "$deb_file" "$work/deb-x"
    o=$(for m in "$work"/deb-x/usr/share/man/man1/*.1.gz; do
        LC_ALL=C.UTF-8 MANWIDTH=80 man --warnings -E UTF-8 -l "$m" 2>&1 >/dev/null | sed "s|^|$(basename "$m"): |"
    done)
    n=$(find "$work/deb-x/usr/share/man" -name '*.gz' | wc -l)
    if [ -z "$o" ]; then ok "man pages: $n pages render without groff warnings"; else bad "man pages: groff warnings"; printf '%s\n' "$o" | indent; fi
else
    skipped "man pages: not built"
fi

# ---------------------------------------------------------------------------------------
echo "== clean Debian root"
make_base_root() {
    mkdir -p "$cache"
    exec 9>"$cache/.lock"
    flock 9
    if [ ! -f "$base_root/.msr-restore-root-complete" ]; then
        echo "run.sh: debootstrap --variant=minbase --include=systemd $suite into $base_root (once; cached)"
        rm -rf "$base_root.tmp"
        if ! debootstrap --variant=minbase --include=systemd "$suite" "$base_root.tmp" "$mirror" >"$work/debootstrap.log" 2>&1; then
            indent 20 <"$work/debootstrap.log"
            rm -rf "$base_root.tmp"
            flock -u 9
            return 1
        fi
        rm -f "$base_root.tmp"/var/cache/apt/archives/*.deb
        touch "$base_root.tmp/.msr-restore-root-complete"
        rm -rf "$base_root"
        mv "$base_root.tmp" "$base_root"
    fi
    flock -u 9
}
# new_root DIR: a fresh copy of the cached root, with /proc mounted.
new_root() {
    cp -a "$base_root" "$1" || return 1
    mount -t proc proc "$1/proc" && mounts+=("$1/proc")
    return 0
}
t0=$SECONDS
if make_base_root; then
    ok "Debian $suite minbase root with systemd ($((SECONDS - t0))s; cached in $base_root)"
else
    bad "debootstrap failed"
    finish
fi
root=$work/deb-root
new_root "$root"
inroot() { chroot "$root" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LC_ALL=C.UTF-8 "$@"; }
cp "$deb_file" "$root/tmp/"
t "dpkg -i $(basename "$deb_file") into the clean root" inroot dpkg -i "/tmp/$(basename "$deb_file")"
t "postinst enabled msr-restore-baseline.service (multi-user.target.wants), not the check timer" \
    bash -c "[ -L '$root/etc/systemd/system/multi-user.target.wants/msr-restore-baseline.service' ] &&
             [ ! -e '$root/etc/systemd/system/timers.target.wants/msr-restore-check.timer' ]"
t "systemd-analyze verify: the installed units (in the root)" \
    inroot systemd-analyze verify --man=no /lib/systemd/system/msr-restore-baseline.service \
    /lib/systemd/system/msr-restore-check.service /lib/systemd/system/msr-restore-check.timer
o=$(inroot systemd-analyze security --offline=true --no-pager /lib/systemd/system/msr-restore-baseline.service 2>&1 | tail -n 1)
case "$o" in
    *"Overall exposure level"*) ok "systemd-analyze security (offline) of the boot unit: ${o#*→ }" ;;
    *) skipped "systemd-analyze security --offline not available: $o" ;;
esac
o=$(inroot msrsave --version 2>&1)
t "msrsave --version in the root: '$o'" grep -q "$version" <<<"$o"
t "msrsave demo in the root" inroot msrsave demo

# An emulated node inside the root, with a small allowlist for CPU 06_55 in a test directory.
mkdir -p "$root/tmp/t/al" "$root/tmp/t/b" "$root/tmp/t/empty/dev/cpu"
cat >"$root/tmp/t/al/al_06_55" <<'EOF'
# test allowlist for family 06 model 55
0x00000010 0x0000000000000000
0x00000199 0x000000000000FFFF
0x000001B0 0x000000000000000F
0x00000610 0x00FFFFFF00FFFFFF
EOF
printf 'allowlist_dir = /tmp/t/al\nbaseline = /tmp/t/b/baseline.msr\n' >"$root/tmp/t/test.conf"
printf 'allowlist_dir = /tmp/t/al\nbaseline = /tmp/t/b/baseline.msr\non_drift = log\n' >"$root/tmp/t/log.conf"
t "msrsave emulate: a 4-CPU 06_55 node with msr-safe" \
    inroot msrsave emulate /tmp/t/node --cpus 4 --cpu-model 06_55 --allowlist /tmp/t/al/al_06_55
t "msrsave info on the emulated node reads the shipped config" inroot msrsave info --root /tmp/t/node
: >"$root/tmp/t/node/dev/cpu/msr_allowlist"   # as after boot: msr-safe loaded with an empty list

echo "== boot script (msr-restore-baseline.service's ExecStart)"
boot() { inroot env MSR_RESTORE_CONFIG="$1" MSR_RESTORE_ROOT="$2" /usr/libexec/msr-restore/msr-restore-boot; }
o=$(boot /tmp/t/test.conf /tmp/t/node 2>&1)
rc=$?
if [ "$rc" = 0 ] && [ -s "$root/tmp/t/b/baseline.msr" ] && grep -q '0x00000199' "$root/tmp/t/node/dev/cpu/msr_allowlist"; then
    ok "known CPU: allowlist al_06_55 loaded into msr-safe, baseline written"
else
    bad "known CPU (exit $rc)"; printf '%s\n' "$o" | indent
fi
inroot msrsave emulate /tmp/t/unknown --cpus 2 --cpu-model 06_01 --allowlist /tmp/t/al/al_06_55 >/dev/null 2>&1
: >"$root/tmp/t/unknown/dev/cpu/msr_allowlist"
printf 'allowlist_dir = /tmp/t/al\nbaseline = /tmp/t/b/unknown.json\n' >"$root/tmp/t/unknown.conf"
o=$(boot /tmp/t/unknown.conf /tmp/t/unknown 2>&1)
rc=$?
if [ "$rc" != 0 ] && [ ! -e "$root/tmp/t/b/unknown.json" ] && grep -q 'FAILED: no allowlist was loaded' <<<"$o" &&
    grep -qiE 'no (allowlist|list) for this CPU|06_01|al_06_1' <<<"$o"; then
    ok "unknown CPU 06_01: fails (exit $rc) saying no allowlist was loaded, takes no baseline"
else
    bad "unknown CPU (exit $rc): expected a failure naming the CPU and no baseline"; printf '%s\n' "$o" | indent
fi
printf '%s\n' "$o" | grep -m 2 -iE 'error|no list' | indent 2
o=$(boot /tmp/t/test.conf /tmp/t/empty 2>&1)
rc=$?
if [ "$rc" = 0 ] && grep -q SKIPPED <<<"$o"; then ok "no msr_safe and no msr driver: skips with a message, exit 0"; else bad "no devices (exit $rc)"; printf '%s\n' "$o" | indent; fi

echo "== drift check and Prometheus textfile"
promtool=
get_promtool() {
    [ -x "$cache/promtool/usr/bin/promtool" ] && { promtool=$cache/promtool/usr/bin/promtool; return 0; }
    mkdir -p "$cache/promtool.tmp" && (cd "$cache/promtool.tmp" && apt-get download prometheus >/dev/null 2>&1) || return 1
    dpkg-deb -x "$cache"/promtool.tmp/prometheus_*.deb "$cache/promtool.tmp/x" || return 1
    mkdir -p "$cache/promtool/usr/bin"
    mv "$cache/promtool.tmp/x/usr/bin/promtool" "$cache/promtool/usr/bin/promtool"
    rm -rf "$cache/promtool.tmp"
    promtool=$cache/promtool/usr/bin/promtool
}
get_promtool || true
prom_ok() { # prom_ok NAME FILE EXPECTED-DRIFT-REGISTERS
    local name=$1 file=$2 drift=$3 o now
    now=$(date +%s)
    if o=$(python3 "$here/promcheck.py" "$file" --require msr_restore_check_timestamp_seconds \
        --gauge-range msr_restore_check_timestamp_seconds $((now - 300)) $((now + 5)) \
        --gauge-range msr_restore_drift_registers "$drift" "$drift" 2>&1); then
        ok "$name: valid exposition format, drift_registers = $drift, last check time now ($(grep -c '^msr_' "$file") samples)"
    else
        bad "$name"; printf '%s\n' "$o" | indent
    fi
    if [ -n "$promtool" ]; then
        if o=$("$promtool" check metrics <"$file" 2>&1); then ok "$name: promtool check metrics"; else bad "$name: promtool check metrics"; printf '%s\n' "$o" | indent; fi
    fi
}
t_rc "msrsave check of the node against its baseline: clean (exit 0)" 0 \
    inroot msrsave check /tmp/t/b/baseline.msr --root /tmp/t/node --prometheus /tmp/t/clean.prom
prom_ok "--prometheus after a clean check" "$root/tmp/t/clean.prom" 0
[ -n "$promtool" ] || skipped "promtool: could not fetch Debian's prometheus package"
# A job leaves IA32_PERF_CTL (0x199) changed on CPU 2: 8 bytes at offset 8*0x199.
poke() { printf '%b' "$2" | dd of="$root/tmp/t/node/dev/cpu/$1/msr_safe" bs=1 seek=$((8 * 0x199)) conv=notrunc status=none; }
poke 2 '\x34\x12\x00\x00\x00\x00\x00\x00'
t_rc "msrsave check after a register changed: drift (exit 1)" 1 \
    inroot msrsave check /tmp/t/b/baseline.msr --root /tmp/t/node --prometheus /tmp/t/drift.prom
prom_ok "--prometheus after drift" "$root/tmp/t/drift.prom" 1

rm -f "$root/tmp/t/timer.prom"
t_rc "msr-restore-check (the timer's script) after drift: exit 1, textfile written" 1 \
    inroot env MSR_RESTORE_CONFIG=/tmp/t/test.conf MSR_RESTORE_ROOT=/tmp/t/node PROM_FILE=/tmp/t/timer.prom \
    /usr/libexec/msr-restore/msr-restore-check
[ -s "$root/tmp/t/timer.prom" ] && prom_ok "msr-restore-check's textfile" "$root/tmp/t/timer.prom" 1
mkdir -p "$root/tmp/t/state/jobs" && : >"$root/tmp/t/state/jobs/42"
printf 'allowlist_dir = /tmp/t/al\nbaseline = /tmp/t/b/baseline.msr\nstate_dir = /tmp/t/state\n' >"$root/tmp/t/jobs.conf"
o=$(inroot env MSR_RESTORE_CONFIG=/tmp/t/jobs.conf MSR_RESTORE_ROOT=/tmp/t/node PROM_FILE=/tmp/t/timer2.prom \
    /usr/libexec/msr-restore/msr-restore-check 2>&1)
rc=$?
if [ "$rc" = 0 ] && grep -q 'skipped: job(s) 42' <<<"$o" && [ ! -e "$root/tmp/t/timer2.prom" ]; then
    ok "msr-restore-check while job 42 holds the node: skipped"
else
    bad "msr-restore-check with a job on the node (exit $rc)"; printf '%s\n' "$o" | indent
fi

# The installed fleet script: one node's fingerprint through a pdsh that runs its command here
# (pdsh's output form, "host: line"), compared by the installed msrsave.
mkdir -p "$root/tmp/t/bin"
cat >"$root/tmp/t/bin/pdsh" <<'EOF'
#!/bin/sh
# pdsh -w NODE CMD: the command run locally, each line prefixed as pdsh does.
[ "$1" = -w ] || exit 2
host=$2; shift 2
sh -c "$*" | sed "s/^/$host: /"
EOF
chmod 755 "$root/tmp/t/bin/pdsh"
printf 'version = 1\n[field.IA32_PERF_CTL.target]\npolicy = "fleet_equal"\n' >"$root/tmp/t/policy.toml"
printf 'root = /tmp/t/node\npolicy = /tmp/t/policy.toml\n' >"$root/tmp/t/fleet.conf"
o=$(inroot env PATH=/tmp/t/bin:/usr/sbin:/usr/bin:/sbin:/bin MSR_RESTORE_CONFIG=/tmp/t/fleet.conf \
    msr-restore-fleet --via pdsh --nodes n1 --out /tmp/t/fleet.jsonl -- --format json 2>&1)
rc=$?
if [ "$rc" = 0 ] && grep -q '"nodes":1' <<<"$o" && grep -q '"fleet fingerprint"' "$root/tmp/t/fleet.jsonl"; then
    ok "msr-restore-fleet --via pdsh (installed): one node's fingerprint collected and compared"
else
    bad "msr-restore-fleet --via pdsh (exit $rc)"; printf '%s\n' "$o" | indent
fi

echo "== NHC check (check_msr_drift)"
cp "$here/nhc-harness.sh" "$root/tmp/t/"
nhc() { inroot env MSR_RESTORE_CONFIG="$1" bash /tmp/t/nhc-harness.sh /etc/nhc/scripts check_msr_drift "${@:2}"; }
o=$(nhc /tmp/t/test.conf -r /tmp/t/node -p /tmp/t/nhc.prom 2>&1)
rc=$?
if [ "$rc" = 1 ] && grep -q 'Health check failed:  check_msr_drift:  .*drift' <<<"$o"; then
    ok "drift: the check fails through die with msrsave's summary"
    printf '%s\n' "$o" | grep -m 1 'Health check failed' | indent 1
else
    bad "drift: expected die (exit $rc)"; printf '%s\n' "$o" | indent
fi
if [ -s "$root/tmp/t/nhc.prom" ]; then ok "-p wrote the Prometheus textfile"; else bad "-p wrote no Prometheus textfile"; fi
t_rc "drift with -l: logged, check passes" 0 nhc /tmp/t/test.conf -r /tmp/t/node -l
t_rc "drift with on_drift = log in the config: logged, check passes" 0 nhc /tmp/t/log.conf -r /tmp/t/node
t_rc "drift while job 42 holds the node (state_dir/jobs): skipped, check passes" 0 nhc /tmp/t/jobs.conf -r /tmp/t/node
t_rc "no baseline: logged and skipped" 0 nhc /tmp/t/test.conf -r /tmp/t/node -b /tmp/t/b/none.json
t_rc "no baseline with -m: fails" 1 nhc /tmp/t/test.conf -r /tmp/t/node -b /tmp/t/b/none.json -m
t_rc "bad option: fails naming it" 1 nhc /tmp/t/test.conf -x
t "msrsave restore puts the baseline back" inroot msrsave restore /tmp/t/b/baseline.msr --root /tmp/t/node
t_rc "after msrsave restore: clean, check passes" 0 nhc /tmp/t/test.conf -r /tmp/t/node

echo "== shell completions"
t "bash completion loads and completes msrsave" inroot bash -c \
    '. /usr/share/bash-completion/completions/msrsave && complete -p msrsave'

echo "== optional parts"
if [ "$allowlists" = yes ]; then
    t "msrsave allowlist lint: every shipped allowlist" \
        inroot bash -c 'msrsave allowlist lint /usr/share/msr-restore/allowlists/al_*'
    t "msrsave allowlist select picks a shipped list for an emulated 06_55 node" \
        inroot bash -c 'msrsave emulate /tmp/t/n55 --cpus 2 --cpu-model 06_55 --allowlist /tmp/t/al/al_06_55 >/dev/null &&
                        msrsave allowlist select --root /tmp/t/n55 | grep -q /usr/share/msr-restore/allowlists/'
    # The production path for every shipped list: an emulated node of that CPU with msr-safe
    # loaded but empty, the boot script with the shipped config, the NHC check after it.
    for al in "$root"/usr/share/msr-restore/allowlists/al_*; do
        model=${al##*/al_}
        fam=${model%%_*}
        vendor=GenuineIntel
        [ "$fam" = 19 ] && vendor=AuthenticAMD
        node=/tmp/t/boot-$model
        rm -f "$root/var/lib/msr-restore/baseline.msr"
        o=$(inroot msrsave emulate "$node" --cpus 4 --cpu-model "$(printf '%s_%02X' "$fam" "0x${model#*_}")" \
                --vendor "$vendor" --allowlist "/usr/share/msr-restore/allowlists/al_$model" 2>&1 &&
            : >"$root$node/dev/cpu/msr_allowlist" &&
            inroot env MSR_RESTORE_ROOT="$node" /usr/libexec/msr-restore/msr-restore-boot 2>&1 &&
            inroot bash /tmp/t/nhc-harness.sh /etc/nhc/scripts check_msr_drift -r "$node" -m 2>&1)
        rc=$?
        loaded=$(grep -c '^0x' "$root$node/dev/cpu/msr_allowlist" 2>/dev/null)
        if [ "$rc" = 0 ] && [ -s "$root/var/lib/msr-restore/baseline.msr" ] && [ "${loaded:-0}" -gt 0 ]; then
            ok "al_$model ($vendor): boot script with the shipped config loads it ($loaded MSRs) and takes the baseline; NHC check clean"
        else
            bad "al_$model: boot script or NHC check failed (exit $rc)"; printf '%s\n' "$o" | indent
        fi
    done
else
    skipped "shipped allowlists: none in the tree yet"
fi
if [ "$spank_msr" = yes ]; then
    so=$(find "$root/usr/lib" -name spank_msr.so | head -n 1)
    syms=$(nm -D --defined-only "$so" 2>/dev/null | awk '{print $3}')
    miss=""
    for s in plugin_name plugin_type plugin_version slurm_spank_job_prolog slurm_spank_job_epilog; do
        grep -qx "$s" <<<"$syms" || miss="$miss $s"
    done
    if [ -z "$miss" ]; then ok "spank_msr.so exports plugin_name, plugin_type, plugin_version and the job prolog/epilog callbacks"; else bad "spank_msr.so lacks:$miss"; fi
    t "spank_msr.so: every library it needs is in the clean root (ldd)" bash -c \
        "o=\$(chroot '$root' ldd '${so#"$root"}') && ! grep -q 'not found' <<<\"\$o\""
    snippet=$root/etc/slurm/plugstack.conf.d/msr-restore.conf
    line=$(grep -E '^#(required|optional)[[:space:]]' "$snippet" | head -n 1)
    if ! grep -qv '^[[:space:]]*\(#\|$\)' "$snippet" && [ -n "$line" ] && [ -e "$root$(awk '{print $2}' <<<"$line")" ]; then
        ok "plugstack.conf snippet: every line commented out; its plugin line names the installed .so ($line)"
    else
        bad "plugstack.conf snippet: active lines, or no plugin line naming the installed .so"; indent <"$snippet"
    fi
    # The series: what the packaged plugin declares (plugin_version), in the series file, the
    # version and Breaks.
    so_series=$("$repo/spank_msr/plugin-version.sh" --series "$so" 2>&1)
    t "spank_msr.so declares Slurm $so_series: BUILDINFO, /usr/share/msr-restore/slurm-series and the version say so" \
        test "$so_series" = "$slurm_series" -a "$(cat "$root/usr/share/msr-restore/slurm-series" 2>&1)" = "$so_series" \
        -a "$(f Version)" = "$version-1+slurm$so_series"
    next=$(printf '%02d.%02d' "$((10#${so_series%.*}))" "$((10#${so_series#*.} + 1))")
    t "deb: Breaks slurmd of another major.minor than the plugin's ($(f Breaks))" \
        test "$(f Breaks)" = "slurmd (<< $so_series~), slurmd (>= $next~)"
    t "rpm: Conflicts slurm-slurmd of another major.minor, release 1.slurm$so_series" bash -c \
        "[ \"\$(rpm -qp --nosignature --conflicts '$rpm_file' | tr '\n' ' ')\" = 'slurm-slurmd < $so_series slurm-slurmd >= $next ' ] &&
         [ \"\$(rpm -qp --nosignature --qf '%{RELEASE}' '$rpm_file')\" = '1.slurm$so_series' ]"
    # The post-install check: a stand-in slurmd printing what the real ones print for `slurmd -V`
    # (Debian 12: "slurm-wlm 22.05.8", Debian 13: "slurm-wlm 24.11.5"; the SLURM suite runs the
    # check against both real ones). /usr/local/sbin: a site-built Slurm, which Breaks: misses.
    o=$(inroot /usr/libexec/msr-restore/msr-restore-slurm-check 2>&1)
    rc=$?
    if [ "$rc" = 0 ] && grep -q "no slurmd on this node; the SPANK plugin is built for Slurm $so_series only" <<<"$o"; then
        ok "msr-restore-slurm-check without slurmd: a note, exit 0"
    else
        bad "msr-restore-slurm-check without slurmd (exit $rc)"; printf '%s\n' "$o" | indent
    fi
    other=22.05.8
    [ "$so_series" = 22.05 ] && other=24.11.5
    # shellcheck disable=SC2016 # the stub's own $1
    stub_slurmd() { printf '#!/bin/sh\n[ "$1" = -V ] && echo "slurm-wlm %s"\n' "$1" >"$root/usr/local/sbin/slurmd"; chmod 755 "$root/usr/local/sbin/slurmd"; }
    mkdir -p "$root/usr/local/sbin"
    stub_slurmd "$other"
    o=$(inroot dpkg -i "/tmp/$(basename "$deb_file")" 2>&1)
    rc=$?
    if [ "$rc" = 0 ] && grep -q "WARNING: this slurmd will NOT load the SPANK plugin" <<<"$o" &&
        grep -q "spank_msr.so is built for Slurm $so_series; /usr/local/sbin/slurmd is Slurm $other" <<<"$o"; then
        ok "dpkg -i with a site-built slurmd $other: installs (exit 0) and post-install warns loudly"
    else
        bad "dpkg -i with slurmd $other (exit $rc): expected the loud warning"; printf '%s\n' "$o" | indent
    fi
    stub_slurmd "$so_series.1"
    o=$(inroot dpkg -i "/tmp/$(basename "$deb_file")" 2>&1)
    rc=$?
    if [ "$rc" = 0 ] && ! grep -q WARNING <<<"$o" &&
        inroot /usr/libexec/msr-restore/msr-restore-slurm-check | grep -q "built for Slurm $so_series, as /usr/local/sbin/slurmd ($so_series.1)"; then
        ok "dpkg -i with slurmd $so_series.1: no warning; the check says they agree"
    else
        bad "dpkg -i with slurmd $so_series.1 (exit $rc)"; printf '%s\n' "$o" | indent
    fi
    rm -f "$root/usr/local/sbin/slurmd"
    t "msr-healthcheck (HealthCheckProgram) on the clean node: exit 0" \
        inroot msr-healthcheck --root /tmp/t/node --baseline /tmp/t/b/baseline.msr --state-dir /tmp/t/nostate --on-drift log
else
    skipped "spank_msr.so checks: the plugin is not built yet"
fi
if [ "$pbs_hook" = yes ]; then
    t "PBS hook: the installed hook parses (host python3)" python3 -c \
        'import ast, sys; ast.parse(open(sys.argv[1]).read(), sys.argv[1])' "$root/usr/share/msr-restore/pbs/msr_restore_hook.py"
    # install.sh has msrsave judge the config's msr-restore keys: the package's msrsave and
    # configuration (the root has no python3 to run the hook's check in it).
    o=$(QMGR=/bin/false MSR_RESTORE_CONFIG="$root/etc/msr-restore/msr-restore.conf" \
        "$root/usr/share/msr-restore/pbs/install.sh" --dry-run --msrsave "$root/usr/bin/msrsave" \
        --config "$root/etc/msr-restore/msr_restore_hook.json" --hook "$root/usr/share/msr-restore/pbs/msr_restore_hook.py" 2>&1)
    rc=$?
    if [ "$rc" = 0 ] && grep -q 'create hook' <<<"$o"; then
        ok "PBS install.sh --dry-run from the package validates the packaged config and prints the qmgr commands"
    else
        bad "PBS install.sh --dry-run (exit $rc)"; printf '%s\n' "$o" | indent
    fi
else
    skipped "PBS hook checks: pbs_hook/ is not in the tree yet"
fi

echo "== remove and purge"
t "dpkg -r msr-restore" inroot dpkg -r msr-restore
t "after remove: binary gone, conffiles kept" bash -c "[ ! -e '$root/usr/bin/msrsave' ] && [ -f '$root/etc/msr-restore/msr-restore.conf' ]"
mkdir -p "$root/var/lib/msr-restore/pbs_hook" && echo '{}' >"$root/var/lib/msr-restore/pbs_hook/offline.json"
t "dpkg -P msr-restore" inroot dpkg -P msr-restore
t "after purge: /etc/msr-restore, the NHC check and /var/lib/msr-restore gone" bash -c \
    "[ ! -e '$root/etc/msr-restore' ] && [ ! -e '$root/etc/nhc/scripts/msr_restore.nhc' ] && [ ! -e '$root/var/lib/msr-restore' ]"

echo "== packages for other Slurm series (packaging/build.sh --slurm-root)"
# Roots holding another Slurm's headers: MSR_SLURM_ROOT_<MAJOR>_<MINOR> from the environment,
# else the Debian 13 root tests/slurm/make-root.sh makes and caches for the SLURM suite.
if [ -z "$(compgen -v MSR_SLURM_ROOT_ || true)" ] && [ "$spank_msr" = yes ] &&
    r=$("$repo/tests/slurm/make-root.sh" 24.11); then
    export MSR_SLURM_ROOT_24_11=$r
fi
other_roots=$(compgen -v MSR_SLURM_ROOT_ || true)
if [ "$spank_msr" != yes ]; then
    skipped "per-series packages: the plugin is not built"
elif [ -z "$other_roots" ]; then
    echo "NOT RUN: packages for another Slurm series: tests/slurm/make-root.sh could not make a Debian 13 root; set MSR_SLURM_ROOT_24_11 to one holding libslurm-dev"
    skip=$((skip + 1))
fi
for v in $other_roots; do
    [ "$spank_msr" = yes ] || break
    want=${v#MSR_SLURM_ROOT_}
    want=${want/_/.}
    pout=$work/pkg-$want
    if ! "$repo/packaging/build.sh" --slurm-root "${!v}" --out "$pout" >"$work/build-$want.log" 2>&1; then
        bad "packaging/build.sh --slurm-root ${!v} ($v)"; indent 30 <"$work/build-$want.log"
        continue
    fi
    pdeb=$(ls "$pout"/*.deb) prpm=$(ls "$pout"/*.rpm)
    mkdir -p "$pout/x"
    dpkg-deb -x "$pdeb" "$pout/x"
    psv=$("$repo/spank_msr/plugin-version.sh" "$pout/x/usr/lib/x86_64-linux-gnu/slurm-wlm/spank_msr.so" 2>&1)
    pnext=$(printf '%02d.%02d' "$((10#${want%.*}))" "$((10#${want#*.} + 1))")
    if [ "${psv%.*}" = "$want" ] && [ "$(cat "$pout/x/usr/share/msr-restore/slurm-series")" = "$want" ] &&
        [ "$(dpkg-deb -f "$pdeb" Version)" = "$version-1+slurm$want" ] &&
        [ "$(dpkg-deb -f "$pdeb" Breaks)" = "slurmd (<< $want~), slurmd (>= $pnext~)" ] &&
        [ "$(rpm -qp --nosignature --qf '%{RELEASE}' "$prpm")" = "1.slurm$want" ] &&
        [ "$(basename "$pdeb")" != "$(basename "$deb_file")" ]; then
        ok "Slurm $want package: plugin_version $psv, slurm-series $want, Version $version-1+slurm$want, Breaks slurmd outside $want, rpm release 1.slurm$want"
    else
        bad "Slurm $want package: plugin $psv, series file '$(cat "$pout/x/usr/share/msr-restore/slurm-series" 2>&1)', $(dpkg-deb -f "$pdeb" Version Breaks | tr '\n' ' ')"
    fi
    # Both packages in a copy of that root, whose Debian slurmd is the real one of series $want.
    sroot=$work/root-$want
    # --one-file-system: not the /proc or /sys of a SLURM suite running in that root meanwhile.
    if ! cp -a --one-file-system "${!v}" "$sroot" || ! mount -t proc proc "$sroot/proc"; then
        bad "copy of ${!v} with /proc"; continue
    fi
    mounts+=("$sroot/proc")
    cp "$deb_file" "$pdeb" "$sroot/tmp/"
    sin() { chroot "$sroot" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LC_ALL=C.UTF-8 "$@"; }
    srel=$(sin slurmd -V 2>&1)
    if [ "$slurm_series" != "$want" ]; then
        o=$(sin dpkg -i "/tmp/$(basename "$deb_file")" 2>&1)
        rc=$?
        if [ "$rc" != 0 ] && grep -q "installing msr-restore would break slurmd" <<<"$o"; then
            ok "the Slurm $slurm_series package next to the root's $srel: dpkg refuses it (Breaks)"
        else
            bad "the Slurm $slurm_series package next to $srel (exit $rc): expected Breaks to refuse it"; printf '%s\n' "$o" | indent
        fi
        o=$(sin dpkg -i --force-breaks "/tmp/$(basename "$deb_file")" 2>&1)
        rc=$?
        if [ "$rc" = 0 ] && grep -q "spank_msr.so is built for Slurm $slurm_series; /usr/sbin/slurmd is Slurm ${srel##* }" <<<"$o"; then
            ok "forced in anyway (--force-breaks): the post-install warns loudly against the real slurmd"
        else
            bad "--force-breaks (exit $rc): expected the loud warning"; printf '%s\n' "$o" | indent
        fi
    fi
    o=$(sin dpkg -i "/tmp/$(basename "$pdeb")" 2>&1)
    rc=$?
    if [ "$rc" = 0 ] && ! grep -q WARNING <<<"$o" &&
        sin /usr/libexec/msr-restore/msr-restore-slurm-check | grep -q "built for Slurm $want, as /usr/sbin/slurmd (${srel##* })"; then
        ok "the Slurm $want package next to the root's $srel: installs without warning; the check agrees"
    else
        bad "the Slurm $want package next to $srel (exit $rc)"; printf '%s\n' "$o" | indent
    fi
done

echo "== RPM payload in a clean root"
root2=$work/rpm-root
new_root "$root2"
t "rpm -i --nodeps --noscripts $(basename "$rpm_file") into a second clean root" \
    rpm --root "$root2" --dbpath /var/lib/rpm -i --nodeps --noscripts --nosignature "$rpm_file"
t "msrsave from the RPM runs (--version, demo)" \
    chroot "$root2" /usr/bin/env -i PATH=/usr/bin:/bin sh -c 'msrsave --version && msrsave demo >/dev/null'
t "rpm -V: installed files match the package" rpm --root "$root2" --dbpath /var/lib/rpm -V --nodeps --nosignature msr-restore

finish
