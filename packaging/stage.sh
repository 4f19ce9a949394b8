#!/usr/bin/env bash
# Install every artifact of msr-restore into DESTDIR with the layout of one distribution.
# The single place that says where each file goes and with which mode: the Debian package
# (packaging/build.sh) and the RPM (%install in packaging/rpm/msr-restore.spec) both use it.
#
#   packaging/stage.sh --flavor deb|rpm [--target-dir DIR] [--plugin FILE] [--gen-dir DIR] [--strip] DESTDIR
#
#   --target-dir DIR  cargo's target directory holding release/msrsave and, when the SPANK
#                     plugin is built, release/libspank_msr.so (default: <repo>/target)
#   --plugin FILE     the SPANK plugin to stage instead of TARGET/release/libspank_msr.so (a
#                     build for one Slurm series: spank_msr/build-plugin.sh); the series it
#                     declares goes to /usr/share/msr-restore/slurm-series
#   --no-plugin       stage no SPANK plugin (an RPM built --without spank)
#   --gen-dir DIR     output of msrsave-docs: man/*.1 and completions/ (default: TARGET/packaging/gen)
#   --strip           strip the binaries (the .deb; rpmbuild strips and splits debuginfo itself)
#
# Prints one line per optional part telling whether it was staged (spank_msr, allowlists,
# pbs_hook, torque, man pages): an absent part is reported, not an error.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/.." && pwd)
files="$here/files"

flavor="" target="" gen="" strip=0 dest="" plugin=""
while [ $# -gt 0 ]; do
    case "$1" in
        --flavor) flavor=$2; shift 2 ;;
        --target-dir) target=$2; shift 2 ;;
        --plugin) plugin=$2; shift 2 ;;
        --gen-dir) gen=$2; shift 2 ;;
        --strip) strip=1; shift ;;
        --no-plugin) plugin=/nonexistent; shift ;;
        -h|--help) sed -n '2,18p' "$0"; exit 0 ;;
        -*) echo "stage.sh: unknown option $1" >&2; exit 2 ;;
        *) [ -z "$dest" ] || { echo "stage.sh: one DESTDIR only" >&2; exit 2; }; dest=$1; shift ;;
    esac
done
[ -n "$dest" ] || { echo "stage.sh: DESTDIR missing" >&2; exit 2; }
target=${target:-$repo/target}
gen=${gen:-$target/packaging/gen}
plugin=${plugin:-$target/release/libspank_msr.so}

# Paths that differ between the distributions.
case "$flavor" in
    deb)
        unitdir=/lib/systemd/system
        slurm_plugindir=/usr/lib/x86_64-linux-gnu/slurm-wlm
        zshdir=/usr/share/zsh/vendor-completions
        prom_dir=/var/lib/prometheus/node-exporter
        so_mode=0644 ;;   # Debian policy: shared objects are not executable
    rpm)
        unitdir=/usr/lib/systemd/system
        slurm_plugindir=/usr/lib64/slurm
        zshdir=/usr/share/zsh/site-functions
        prom_dir=/var/lib/node_exporter/textfile_collector
        so_mode=0755 ;;   # RPM: rpm strips and extracts debuginfo from executable objects only
    *) echo "stage.sh: --flavor must be deb or rpm" >&2; exit 2 ;;
esac
plugstack_dir=/etc/slurm/plugstack.conf.d
libexecdir=/usr/libexec/msr-restore
datadir=/usr/share/msr-restore
docdir=/usr/share/doc/msr-restore

mkdir -p "$dest"
dest=$(cd "$dest" && pwd)

inst() { # inst MODE SRC DEST-PATH
    install -D -m "$1" "$2" "$dest$3"
}
subst() { # subst MODE SRC DEST-PATH: copy with @VARIABLES@ replaced
    mkdir -p "$(dirname "$dest$3")"
    sed -e "s|@PROM_DIR@|$prom_dir|g" \
        -e "s|@UNITDIR@|$unitdir|g" "$2" >"$dest$3"
    chmod "$1" "$dest$3"
}
note() { echo "stage.sh: $*"; }
# script_man SCRIPT PAGE NAME SUMMARY SEE-ALSO: a section 8 man page made of the script's header
# comment (its --help text), so the page says what the script says.
script_man() {
    local upper
    upper=$(printf '%s' "$3" | tr '[:lower:]' '[:upper:]' | sed 's/-/\\-/g')
    mkdir -p "$(dirname "$2")"
    {
        printf '.TH %s 8 "" "msr-restore" "msr-restore"\n' "$upper"
        printf '.SH NAME\n%s \\- %s\n' "$(printf '%s' "$3" | sed 's/-/\\-/g')" "$4"
        printf '.SH DESCRIPTION\n.nf\n'
        sed -n '2,/^[^#]/{/^#/!d; s/^# \{0,1\}//; s/\\/\\e/g; s/^\./\\\&./; s/-/\\-/g; p}' "$1"
        printf '.fi\n.SH SEE ALSO\n%s\n' "$5"
    } >"$2"
    chmod 0644 "$2"
}

# msrsave
[ -x "$target/release/msrsave" ] || { echo "stage.sh: $target/release/msrsave is missing: run packaging/build.sh" >&2; exit 1; }
inst 0755 "$target/release/msrsave" /usr/bin/msrsave
[ "$strip" = 1 ] && strip --strip-unneeded --remove-section=.comment --remove-section=.note "$dest/usr/bin/msrsave"

# Man pages and completions generated from the CLI definition (msrsave-docs).
if [ -d "$gen/man" ] && compgen -G "$gen/man/*.1" >/dev/null; then
    for m in "$gen"/man/*.1; do
        inst 0644 "$m" "/usr/share/man/man1/$(basename "$m")"
        gzip -9nf "$dest/usr/share/man/man1/$(basename "$m")"
    done
    inst 0644 "$gen/completions/msrsave.bash" /usr/share/bash-completion/completions/msrsave
    inst 0644 "$gen/completions/_msrsave" "$zshdir/_msrsave"
    inst 0644 "$gen/completions/msrsave.fish" /usr/share/fish/vendor_completions.d/msrsave.fish
    note "man pages and completions: staged ($(find "$gen/man" -name '*.1' | wc -l) man pages)"
else
    note "man pages and completions: ABSENT (no $gen/man: msrsave-docs not run)"
fi

# Configuration shared by the CLI, the SPANK plugin and the PBS hook.
inst 0644 "$files/msr-restore.conf" /etc/msr-restore/msr-restore.conf

# Boot-time allowlist load and baseline; the optional periodic check for Prometheus.
inst 0755 "$files/msr-restore-boot" "$libexecdir/msr-restore-boot"
inst 0755 "$files/msr-restore-check" "$libexecdir/msr-restore-check"
inst 0644 "$files/msr-restore-baseline.service" "$unitdir/msr-restore-baseline.service"
subst 0644 "$files/msr-restore-check.service" "$unitdir/msr-restore-check.service"
inst 0644 "$files/msr-restore-check.timer" "$unitdir/msr-restore-check.timer"
install -d -m 0755 "$dest/var/lib/msr-restore"

# Fleet consistency: collect fingerprints across nodes (srun, pdsh or clush) and compare them
# against the site policy; run by an admin on a login or management node.
inst 0755 "$files/msr-restore-fleet" /usr/sbin/msr-restore-fleet
script_man "$files/msr-restore-fleet" "$dest/usr/share/man/man8/msr-restore-fleet.8" \
    msr-restore-fleet "compare MSR settings across nodes against the site policy (msr-restore)" \
    '\fBmsrsave\-fleet\fR(1), \fBsrun\fR(1), \fBpdsh\fR(1), \fBclush\fR(1)'
gzip -9nf "$dest/usr/share/man/man8/msr-restore-fleet.8"

# NHC check, udev rules (optional, not active).
inst 0644 "$files/msr_restore.nhc" /etc/nhc/scripts/msr_restore.nhc
inst 0644 "$files/99-msr_safe.rules" "$datadir/udev/99-msr_safe.rules"

# Allowlists picked per CPU by `msrsave allowlist load --auto` (the al_* files only); their
# README (origin, license and attribution) goes with the documentation.
install -d -m 0755 "$dest$datadir/allowlists"
if compgen -G "$repo/allowlists/al_*" >/dev/null; then
    for f in "$repo"/allowlists/al_*; do
        inst 0644 "$f" "$datadir/allowlists/$(basename "$f")"
    done
    [ -f "$repo/allowlists/README.md" ] && inst 0644 "$repo/allowlists/README.md" "$docdir/allowlists.md"
    note "allowlists: staged ($(compgen -G "$dest$datadir/allowlists/al_*" | wc -l) lists)"
else
    note "allowlists: ABSENT (no $repo/allowlists/al_*)"
fi

# SLURM: the SPANK plugin (when spank_msr is built with its `slurm` feature) as spank_msr.so in
# SLURM's plugin directory; the Slurm series it is built for in $datadir/slurm-series, read by
# msr-restore-slurm-check (run by the post-install) and msrsave info; the plugstack.conf line of
# packaging/slurm/plugstack.conf, commented out and pointing at that path; the health check
# (HealthCheckProgram) and its arguments.
if [ -f "$plugin" ]; then
    # A .so without plugin_version (built without the `slurm` feature) is no plugin: refuse it.
    series=$("$repo/spank_msr/plugin-version.sh" --series "$plugin") ||
        { echo "stage.sh: $plugin is not a SPANK plugin (build it with spank_msr/build-plugin.sh)" >&2; exit 1; }
    inst "$so_mode" "$plugin" "$slurm_plugindir/spank_msr.so"
    [ "$strip" = 1 ] && strip --strip-unneeded --remove-section=.comment --remove-section=.note "$dest$slurm_plugindir/spank_msr.so"
    mkdir -p "$dest$plugstack_dir"
    [ -f "$repo/packaging/slurm/plugstack.conf" ] || { echo "stage.sh: packaging/slurm/plugstack.conf is missing" >&2; exit 1; }
    {
        echo "# Installed by the msr-restore package, every line commented out: uncomment the plugin"
        echo "# line, make /etc/slurm/plugstack.conf read this file (include $plugstack_dir/*.conf)"
        echo "# or copy the line there, then restart slurmd."
        echo "#"
        sed -e "s|[^ ]*/\\(lib\\)\\{0,1\\}spank_msr\\.so|$slurm_plugindir/spank_msr.so|g" \
            -e 's|^\([^#]\)|#\1|' "$repo/packaging/slurm/plugstack.conf"
    } >"$dest$plugstack_dir/msr-restore.conf"
    chmod 0644 "$dest$plugstack_dir/msr-restore.conf"
    mkdir -p "$dest$datadir"
    echo "$series" >"$dest$datadir/slurm-series"
    chmod 0644 "$dest$datadir/slurm-series"
    inst 0755 "$repo/packaging/slurm/msr-restore-slurm-check" "$libexecdir/msr-restore-slurm-check"
    if [ -f "$repo/packaging/slurm/msr-healthcheck" ]; then
        inst 0755 "$repo/packaging/slurm/msr-healthcheck" /usr/sbin/msr-healthcheck
        inst 0644 "$repo/packaging/slurm/healthcheck.args" /etc/msr-restore/healthcheck.args
        script_man "$repo/packaging/slurm/msr-healthcheck" "$dest/usr/share/man/man8/msr-healthcheck.8" \
            msr-healthcheck "SLURM health check for MSR drift (msr-restore)" \
            '\fBmsrsave\-check\fR(1), \fBslurm.conf\fR(5) (HealthCheckProgram)'
        gzip -9nf "$dest/usr/share/man/man8/msr-healthcheck.8"
    fi
    note "spank_msr: staged ($slurm_plugindir/spank_msr.so, Slurm $series)"
else
    note "spank_msr: ABSENT (no $plugin)"
fi

# PBS: the hook, its install/uninstall scripts and the Torque scripts under
# /usr/share/msr-restore/pbs (tests left out). The hook's config is a conffile,
# /etc/msr-restore/msr_restore_hook.json; the symlink in its place lets install.sh find the
# admin's copy by default.
stage_tree() { # stage_tree SRC-DIR DEST-DIR: files keep their exec bit (0755) or get 0644
    local src=$1 d=$2 f rel
    while IFS= read -r -d '' f; do
        rel=${f#"$src"/}
        if [ -x "$f" ]; then inst 0755 "$f" "$d/$rel"; else inst 0644 "$f" "$d/$rel"; fi
    done < <(find "$src" -type f ! -path "$src/tests/*" ! -path '*/__pycache__/*' ! -name '*.pyc' -print0 | sort -z)
}
if [ -d "$repo/pbs_hook" ]; then
    stage_tree "$repo/pbs_hook" "$datadir/pbs"
    if [ -f "$dest$datadir/pbs/msr_restore_hook.json" ]; then
        mkdir -p "$dest/etc/msr-restore"
        mv "$dest$datadir/pbs/msr_restore_hook.json" "$dest/etc/msr-restore/msr_restore_hook.json"
        # Debian policy: a link between top-level directories is absolute; RPM's: relative.
        if [ "$flavor" = deb ]; then
            ln -s /etc/msr-restore/msr_restore_hook.json "$dest$datadir/pbs/msr_restore_hook.json"
        else
            ln -s ../../../../etc/msr-restore/msr_restore_hook.json "$dest$datadir/pbs/msr_restore_hook.json"
        fi
    fi
    note "pbs_hook: staged ($(find "$dest$datadir/pbs" -type f | wc -l) files in $datadir/pbs)"
else
    note "pbs_hook: ABSENT (no $repo/pbs_hook)"
fi

# Documentation.
inst 0644 "$here/README.md" "$docdir/README.md"
inst 0644 "$here/debian/copyright" "$docdir/copyright"
[ -f "$repo/README.md" ] && inst 0644 "$repo/README.md" "$docdir/README.project.md"
[ -f "$repo/docs/interfaces.md" ] && inst 0644 "$repo/docs/interfaces.md" "$docdir/interfaces.md"
[ -f "$repo/docs/policy.md" ] && inst 0644 "$repo/docs/policy.md" "$docdir/policy.md"
[ -f "$repo/docs/save-format.md" ] && inst 0644 "$repo/docs/save-format.md" "$docdir/save-format.md"
exit 0
