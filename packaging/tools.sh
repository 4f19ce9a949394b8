# shellcheck shell=bash
# Sourced by packaging/build.sh and packaging/tests/run.sh: install missing tools from
# Debian's archive (this project's machines are Debian 12, root). Nothing else is downloaded.

# need_tools CMD:PACKAGE ...: apt-get install the PACKAGE of every CMD that is missing.
need_tools() {
    local pair cmd pkg missing=()
    for pair in "$@"; do
        cmd=${pair%%:*}
        pkg=${pair#*:}
        command -v "$cmd" >/dev/null 2>&1 || missing+=("$pkg")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    apt_install "${missing[@]}"
}

# need_packages PACKAGE ...: apt-get install those not installed (for headers and libraries).
need_packages() {
    local p missing=()
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    apt_install "${missing[@]}"
}

apt_install() {
    if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
        echo "packaging: missing tools: $* (install them; needs root and apt-get)" >&2
        return 1
    fi
    local log
    log=$(mktemp)
    echo "packaging: installing $* from Debian's archive" >&2
    if [ -z "${_MSR_APT_UPDATED:-}" ]; then
        apt-get -o DPkg::Lock::Timeout=600 -q update >"$log" 2>&1 || { tail -n 20 "$log" >&2; rm -f "$log"; return 1; }
        _MSR_APT_UPDATED=1
    fi
    if ! DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 -q install -y \
        --no-install-recommends "$@" >"$log" 2>&1; then
        tail -n 20 "$log" >&2
        rm -f "$log"
        return 1
    fi
    rm -f "$log"
}
