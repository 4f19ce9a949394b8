#!/bin/sh
# The real-kernel scenarios. Runs inside the guest (busybox sh), started by /init as
#   sh /test/scenarios.sh SCENARIO
# with the stock msr driver loaded (allow_writes=on). One "PASS name" or "FAIL name: reason" line per
# assertion and a final "N passed, M failed" line; exit status 0 only when nothing failed.
#
# Tools: /bin/msrsave (the binary under test), /bin/rawmsr (our own raw pread/pwrite of
# /dev/cpu/N/msr: the "job" that changes registers and the independent read-back), busybox.
# No "set -e": commands are expected to fail here, and each outcome is asserted explicitly.
# shellcheck disable=SC2034 # constants for the msrsave scenarios
set -u

SCENARIO=${1:-}
AL=/test/allowlist
W=/var/lib/msrtest
T=/sys/kernel/tracing
MSRSAVE="msrsave --backend msr --allowlist $AL"
PASSED=0
FAILED=0

TSC_AUX=0xC0000103
PHYSBASE7=0x20E
PAT=0x277
SYSENTER_CS=0x174
# Registers that read 0 under TCG (writes are dropped); in the allowlist.
ZERO_MSRS="0xCE 0x199 0x1B0 0x610"
# Registers outside the allowlist that keep written values: the audit's sentinels.
OUTSIDE_MSRS="0x20C 0x20D 0x20F"

# ------------------------------------------------------------------ reporting
pass() { echo "PASS $1"; PASSED=$((PASSED + 1)); }
fail() { echo "FAIL $1: $2"; FAILED=$((FAILED + 1)); }
# Attach a file to the log, indented (after a FAIL, to see why).
attach() {
    [ -s "$1" ] || return 0
    sed -n '1,40s/^/    | /p' "$1"
}
info() { echo "INFO $*"; }

# run CMD...: RC, /tmp/out (stdout), /tmp/err (stderr), /tmp/outc (stdout without whitespace).
run() {
    "$@" >/tmp/out 2>/tmp/err
    RC=$?
    tr -d ' \t\r\n' </tmp/out >/tmp/outc
}
# After run: the exit status must be $2.
expect_rc() {
    if [ "$RC" -eq "$2" ]; then
        pass "$1"
    else
        fail "$1" "exit status $RC, expected $2"
        attach /tmp/out
        attach /tmp/err
    fi
}
# expect_eq NAME EXPECTED ACTUAL
expect_eq() {
    if [ "$2" = "$3" ]; then pass "$1"; else fail "$1" "expected '$2', got '$3'"; fi
}

# ------------------------------------------------------------------ numbers
# Canonical hex: lower case, 0x prefix, no leading zeros.
hx() {
    echo "$1" | tr 'A-FX' 'a-fx' | sed 's/^0x//; s/^0*//; s/^$/0/; s/^/0x/'
}
hx16() { printf '0x%016x' "$(($1))"; }

# The write mask of MSR $1 in the guest's allowlist (empty if not listed).
mask_of() {
    want=$(hx "$1")
    sed 's/#.*//' "$AL" | while read -r m k; do
        [ -n "$m" ] || continue
        if [ "$(hx "$m")" = "$want" ]; then
            echo "$k"
            break
        fi
    done
}
ALLOWLISTED=$(sed 's/#.*//' "$AL" | awk 'NF >= 2 { print $1 }')
N_ALLOWLISTED=$(echo "$ALLOWLISTED" | grep -c .)

# ------------------------------------------------------------------ JSON (compact text from run)
# jval KEY [FILE]: the first scalar value of "KEY" (quotes removed).
jval() {
    awk -v k="\"$1\":" '{
        i = index($0, k); if (!i) next
        s = substr($0, i + length(k))
        if (substr(s, 1, 1) == "\"") { s = substr(s, 2); print substr(s, 1, index(s, "\"") - 1) }
        else { match(s, /^[^,}\]]*/); print substr(s, 1, RLENGTH) }
        exit
    }' "${2:-/tmp/outc}"
}
# jobjs KEY [FILE]: each object of the array "KEY" on its own line.
jobjs() {
    awk -v k="\"$1\":[" '{
        i = index($0, k); if (!i) next
        s = substr($0, i + length(k)); n = length(s); d = 0; cur = ""
        for (j = 1; j <= n; j++) {
            c = substr(s, j, 1)
            if (c == "\"") {
                e = j + 1
                while (e <= n && substr(s, e, 1) != "\"") { if (substr(s, e, 1) == "\\") e++; e++ }
                if (d > 0) cur = cur substr(s, j, e - j + 1)
                j = e; continue
            }
            if (d == 0 && c == "]") break
            if (c == "{" || c == "[") d++
            if (d > 0) cur = cur c
            if (c == "}" || c == "]") { d--; if (d == 0) { print cur; cur = "" } }
        }
        exit
    }' "${2:-/tmp/outc}"
}
# jlist KEY [FILE]: the scalars of the array "KEY", space separated.
jlist() {
    sed -n "s/.*\"$1\":\[\([^]]*\)\].*/\1/p" "${2:-/tmp/outc}" | tr ',' ' ' | tr -d '"'
}
# "cpu msr" (canonical hex) of each object of array KEY, sorted.
cpu_msr_pairs() {
    jobjs "$1" | while read -r o; do
        echo "$o" >/tmp/obj
        echo "$(jval cpu /tmp/obj) $(hx "$(jval msr /tmp/obj)")"
    done | sort
}

# ------------------------------------------------------------------ raw access (our helper)
rd() { rawmsr read "$1" "$2" 2>/dev/null || echo ERR; }
# wr CPU MSR VALUE: a write by the pretend job; a failure here is a failure of the scenario.
wr() {
    if ! rawmsr write "$1" "$2" "$3" 2>/tmp/wr.err; then
        fail "job.write.cpu$1.$2" "$(cat /tmp/wr.err)"
        return 1
    fi
}
online_cpus() {
    awk -F, '{ for (i = 1; i <= NF; i++) { n = split($i, r, "-"); a = r[1]; b = (n > 1) ? r[2] : r[1]; for (c = a; c <= b; c++) print c } }' \
        /sys/devices/system/cpu/online
}
# dump FILE: "cpu msr value" (canonical hex) of every allowlisted and outside MSR on every online CPU.
dump() {
    # shellcheck disable=SC2086
    rawmsr dump $ALLOWLISTED $OUTSIDE_MSRS | while read -r c m v; do echo "$c $(hx "$m") $v"; done >"$1"
}
# val FILE CPU MSR: the value in a dump.
val() { awk -v c="$2" -v m="$(hx "$3")" '$1 == c && $2 == m { print $3 }' "$1"; }

reload_msr() { # reload_msr on|off
    rmmod msr || return 1
    insmod /test/msr.ko "allow_writes=$1" || return 1
    [ "$(cat /sys/module/msr/parameters/allow_writes)" = "$1" ]
}

# ------------------------------------------------------------------ kernel tracing of MSR writes
# Every wrmsr the kernel executes fires the msr:write_msr tracepoint on the CPU that executed it;
# a stack trace per event tells the msr driver's writes (__wrmsr_safe_on_cpu) from the kernel's own.
TRACE_OK=0
trace_setup() {
    [ -d "$T/events/msr/write_msr" ] || return 1
    echo stacktrace >"$T/events/msr/write_msr/trigger" || return 1
    TRACE_OK=1
}
trace_start() {
    [ "$TRACE_OK" = 1 ] || return 0
    echo 0 >"$T/events/msr/write_msr/enable"
    echo >"$T/trace"
    echo 1 >"$T/events/msr/write_msr/enable"
}
# trace_stop FILE: "cpu msr value" (canonical hex) of each MSR write done through /dev/cpu/N/msr.
trace_stop() {
    [ "$TRACE_OK" = 1 ] || { : >"$1"; return 0; }
    echo 0 >"$T/events/msr/write_msr/enable"
    awk '
        function cpuof(s) { match(s, /\[[0-9]+\]/); return substr(s, RSTART + 1, RLENGTH - 2) + 0 }
        /write_msr: / {
            c = cpuof($0); if (c in msr) emit(c)
            s = $0; sub(/.*write_msr: /, "", s); split(s, a, /, value /); v = a[2]; sub(/ .*/, "", v)
            msr[c] = "0x" a[1]; val[c] = "0x" v; drv[c] = 0; next
        }
        /<stack trace>/ { cur = cpuof($0); next }
        /=> __wrmsr_safe_on_cpu/ { drv[cur] = 1 }
        function emit(c) { if (drv[c]) print c, msr[c], val[c]; delete msr[c] }
        END { for (c in msr) emit(c) }
    ' "$T/trace" | while read -r c m v; do echo "$c $(hx "$m") $(hx "$v")"; done | sort >"$1"
}

# ------------------------------------------------------------------ scenarios

# The facts of this kernel and QEMU that the other scenarios build on, checked with rawmsr alone.
scenario_driver() {
    for c in $(online_cpus); do
        expect_eq "driver.tsc_aux_is_cpu_number.cpu$c" "$(hx "$c")" "$(hx "$(rd "$c" $TSC_AUX)")"
    done
    for m in $ZERO_MSRS; do
        for c in $(online_cpus); do
            expect_eq "driver.reads_zero.cpu$c.$m" 0x0 "$(hx "$(rd "$c" "$m")")"
        done
    done

    trace_setup || fail driver.tracefs "no msr:write_msr tracepoint or stacktrace trigger under $T"
    old=$(rd 1 $PHYSBASE7)
    trace_start
    wr 1 $PHYSBASE7 0x0000000AB0000006
    taskset 1 rawmsr write 3 $TSC_AUX 0x3003
    trace_stop /tmp/w
    expect_eq driver.keeps_written_value.physbase7 0xab0000006 "$(hx "$(rd 1 $PHYSBASE7)")"
    expect_eq driver.keeps_written_value.tsc_aux 0x3003 "$(hx "$(rd 3 $TSC_AUX)")"
    expect_eq driver.trace_sees_each_write_on_its_cpu "1 0x20e 0xab0000006 3 0xc0000103 0x3003" "$(tr '\n' ' ' </tmp/w | sed 's/ $//')"
    wr 1 $PHYSBASE7 "$old"
    wr 3 $TSC_AUX 3

    if reload_msr off; then
        pass driver.reload_allow_writes_off
        if rawmsr write 2 $TSC_AUX 0x2002 2>/tmp/err; then
            fail driver.allow_writes_off_eperm "the write succeeded"
        else
            expect_eq driver.allow_writes_off_eperm "rawmsr: write cpu 2 msr 0xc0000103: EPERM" "$(cat /tmp/err)"
        fi
        expect_eq driver.allow_writes_off_unchanged 0x2 "$(hx "$(rd 2 $TSC_AUX)")"
        if reload_msr on; then pass driver.reload_allow_writes_on; else fail driver.reload_allow_writes_on "rmmod/insmod failed"; fi
    else
        fail driver.reload_allow_writes_off "rmmod/insmod allow_writes=off failed"
    fi

    run rawmsr runas 1000 1000 rawmsr read 0 $TSC_AUX
    expect_eq driver.nonroot_eacces "rawmsr: open /dev/cpu/0/msr: EACCES" "$(cat /tmp/err)"
    chmod 0666 /dev/cpu/0/msr
    run rawmsr runas 1000 1000 rawmsr read 0 $TSC_AUX
    expect_eq driver.nonroot_mode_0666_eperm "rawmsr: open /dev/cpu/0/msr: EPERM" "$(cat /tmp/err)"
    chmod 0600 /dev/cpu/0/msr

    echo 0 >/sys/devices/system/cpu/cpu3/online
    expect_eq driver.hotplug_offline_list 0-2 "$(cat /sys/devices/system/cpu/online)"
    run rawmsr read 3 $TSC_AUX
    expect_eq driver.hotplug_offline_enoent "rawmsr: open /dev/cpu/3/msr: ENOENT" "$(cat /tmp/err)"
    echo 1 >/sys/devices/system/cpu/cpu3/online
    expect_eq driver.hotplug_online_again 0x3 "$(hx "$(rd 3 $TSC_AUX)")"
}

case "$SCENARIO" in
    driver) scenario_driver ;;
    *)
        echo "scenarios.sh: unknown scenario '$SCENARIO'"
        fail "scenario.$SCENARIO" "unknown scenario"
        ;;
esac

echo "$PASSED passed, $FAILED failed"
[ "$FAILED" -eq 0 ] && [ "$PASSED" -gt 0 ]
