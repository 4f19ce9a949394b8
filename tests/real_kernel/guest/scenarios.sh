#!/bin/sh
# The real-kernel scenarios. Runs inside the guest (busybox sh), started by /init as
#   sh /test/scenarios.sh SCENARIO
# with the stock msr driver loaded (allow_writes=on). One "PASS name" or "FAIL name: reason" line per
# assertion and a final "N passed, M failed" line; exit status 0 only when nothing failed.
#
# Tools: /bin/msrsave (the binary under test), /bin/rawmsr (our own raw pread/pwrite of
# /dev/cpu/N/msr: the "job" that changes registers and the independent read-back), busybox.
# No "set -e": commands are expected to fail here, and each outcome is asserted explicitly.
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
# info_output WHAT: the stdout and stderr of the last run, for the log.
info_output() {
    echo "INFO $1:"
    cat /tmp/out /tmp/err | sed -n '1,30s/^/INFO   /p'
}

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
# Canonical hex: lower case, 0x prefix, no leading zeros. Anything that is not a number (an errno
# name, ERR, nothing) comes back as it is. Shell builtins only: a fork costs ~15 ms under TCG.
hx() {
    case "$1" in
        '' | *[!0-9a-fA-FxX]* | [!0-9]*) echo "$1" ;;
        0[xX]?* | [1-9]* | 0) printf '0x%x\n' "$(($1))" ;;
        *) echo "$1" ;;
    esac
}
hx16() { printf '0x%016x' "$(($1))"; }

# The guest's allowlist: ALLOWLISTED (the MSRs), N_ALLOWLISTED, and MASK_<canonical hex> per MSR.
ALLOWLISTED=""
N_ALLOWLISTED=0
# shellcheck disable=SC2034 # read through eval
while read -r m k; do
    ALLOWLISTED="$ALLOWLISTED $m"
    N_ALLOWLISTED=$((N_ALLOWLISTED + 1))
    eval "MASK_$(hx "$m")=$k"
done <<EOF_AL
$(sed 's/#.*//' "$AL" | awk 'NF >= 2')
EOF_AL
# The write mask of MSR $1 in the guest's allowlist (empty if not listed).
mask_of() { eval "echo \"\${MASK_$(hx "$1"):-}\""; }

# ------------------------------------------------------------------ JSON (compact text from run)
# jval KEY [FILE]: the first scalar value of "KEY" (quotes removed).
jval() {
    awk -v k="\"$1\":" '{
        i = index($0, k); if (!i) next
        s = substr($0, i + length(k))
        if (substr(s, 1, 1) == "\"") { s = substr(s, 2); print substr(s, 1, index(s, "\"") - 1) }
        else { match(s, /^[^],}]*/); print substr(s, 1, RLENGTH) }
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
# dump NAME: read every allowlisted and outside MSR on every online CPU (one rawmsr process) into
# shell variables NAME_<cpu>_<msr> (canonical hex; ERR:<errno> where a read failed).
dump() {
    # shellcheck disable=SC2086
    eval "$(rawmsr dump $ALLOWLISTED $OUTSIDE_MSRS | awk -v p="$1" '
        function canon(x) { if (x !~ /^0[xX]/) return x; x = tolower(x); sub(/^0x0*/, "", x); return "0x" (x == "" ? "0" : x) }
        NF == 3 { print p "_" $1 "_" canon($2) "=" canon($3) }')"
}
# getv VAR NAME CPU MSR: VAR = NAME_<cpu>_<msr> (MSR in canonical hex). No fork.
getv() { eval "$1=\${$2_$3_$4:-}"; }
# isnum VALUE: VALUE is canonical hex (safe in $((...))).
isnum() {
    case "$1" in
        0x*) case "${1#0x}" in '' | *[!0-9a-f]*) return 1 ;; esac ;;
        *) return 1 ;;
    esac
}

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
            msr[c] = "0x" a[1]; val[c] = "0x" v; drv[c] = 0; next   # %x: already canonical
        }
        /<stack trace>/ { cur = cpuof($0); next }
        /=> __wrmsr_safe_on_cpu/ { drv[cur] = 1 }
        function emit(c) { if (drv[c]) print c, msr[c], val[c]; delete msr[c] }
        END { for (c in msr) emit(c) }
    ' "$T/trace" | sort >"$1"
}

# ------------------------------------------------------------------ scenarios

# The facts of this kernel and QEMU that the other scenarios build on, checked with rawmsr alone.
scenario_driver() {
    taint_boot=$(cat /proc/sys/kernel/tainted)
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
    # Every write through the stock driver taints the kernel (TAINT_CPU_OUT_OF_SPEC, 4, "S"),
    # even with allow_writes=on.
    expect_eq driver.untainted_at_boot 0 "$taint_boot"
    expect_eq driver.write_taints_kernel_cpu_out_of_spec 4 "$(($(cat /proc/sys/kernel/tainted) & 4))"
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

# ------------------------------------------------------------------ save files
# saved FILE CPU MSR: the value FILE records for MSR on CPU (canonical hex, or the errno name it
# records), or nothing. Asked of msrsave (`show --format json`: per MSR, each distinct value and
# the CPUs holding it), never read from the file itself. Parsed once per file into FILE.table.
saved() {
    [ -s "$1.table" ] || $MSRSAVE --json show "$1" | awk '
        function canon(m) { m = tolower(m); sub(/^0x0*/, "", m); if (m == "") m = "0"; return "0x" m }
        {
            s = $0
            i = index(s, "\"msrs\":["); if (!i) exit
            s = substr(s, i + 8)
            n = split(s, rows, /\{"msr":"/)
            for (r = 2; r <= n; r++) {
                row = rows[r]
                msr = canon(substr(row, 1, index(row, "\"") - 1))
                v = substr(row, index(row, "\"values\":{") + 10)
                v = substr(v, 1, index(v, "}") - 1)
                while ((j = index(v, "\"")) > 0) {
                    v = substr(v, j + 1); key = substr(v, 1, index(v, "\"") - 1)
                    v = substr(v, index(v, "[") + 1); list = substr(v, 1, index(v, "]") - 1)
                    v = substr(v, index(v, "]") + 1)
                    k = split(list, cpus, ",")
                    for (x = 1; x <= k; x++) print cpus[x], msr, (key ~ /^0x/ ? canon(key) : key)
                }
            }
        }' >"$1.table"
    awk -v c="$2" -v m="$(hx "$3")" '$1 == c && $2 == m { print $3 }' "$1.table"
}

# expect_save_json NAME CPUS: the JSON of a successful save (after run ... --json save FILE).
expect_save_json() {
    expect_rc "$1.exit_0" 0
    expect_eq "$1.json_ok" true "$(jval ok)"
    expect_eq "$1.json_backend" msr "$(jval backend)"
    expect_eq "$1.json_cpus" "$2" "$(jval cpus)"
    expect_eq "$1.json_msrs" "$N_ALLOWLISTED" "$(jval msrs)"
    expect_eq "$1.json_unreadable" 0 "$(jval unreadable)"
}

# 1. save: every allowlisted MSR on every CPU; TSC_AUX recorded = the CPU's number.
scenario_save() {
    trace_setup || fail save.tracefs "no msr:write_msr tracepoint"
    trace_start
    run $MSRSAVE --json save $W/s1.json
    trace_stop /tmp/w
    expect_save_json save 4
    if [ -s $W/s1.json ]; then pass save.file_written; else fail save.file_written "no $W/s1.json"; fi
    expect_eq save.writes_no_register "" "$(cat /tmp/w)"
    expect_eq save.cpus_recorded "0-3" "$($MSRSAVE --json show $W/s1.json >/tmp/sf; jval cpu_list /tmp/sf)"
    for c in 0 1 2 3; do
        # The kernel runs a read of /dev/cpu/N/msr on CPU N, and Linux sets TSC_AUX to the CPU
        # number: a read done on the wrong CPU would record another number.
        expect_eq "save.tsc_aux_recorded_is_cpu_number.cpu$c" "$(hx $c)" "$(hx "$(saved $W/s1.json $c $TSC_AUX)")"
        for m in $PAT $SYSENTER_CS $PHYSBASE7 $ZERO_MSRS; do
            expect_eq "save.recorded_equals_raw_read.cpu$c.$m" "$(hx "$(rd $c "$m")")" "$(hx "$(saved $W/s1.json $c "$m")")"
        done
    done
    # The readable report and the LLNL form work on the stock driver too.
    run $MSRSAVE save $W/s1-text.json
    expect_rc save.readable_report.exit_0 0
    run $MSRSAVE $W/s1-llnl.json
    expect_rc save.llnl_form.exit_0 0
    expect_eq save.llnl_form.tsc_aux_cpu3 0x3 "$(hx "$(saved $W/s1-llnl.json 3 $TSC_AUX)")"
    # Without --backend: no msr-safe here, so auto must fall back to the stock driver.
    run msrsave --allowlist "$AL" --json save $W/s1-auto.json
    expect_rc save.auto_backend.exit_0 0
    expect_eq save.auto_backend.picks_msr msr "$(jval backend)"
    # Without --allowlist there is no list to use (no msr-safe, no allowlist directory): refused.
    run msrsave --backend msr --json save $W/s1-none.json
    expect_rc save.no_allowlist.exit_2 2
    expect_eq save.no_allowlist.ok_false false "$(jval ok)"
    info_output "save without an allowlist"
    if [ -e $W/s1-none.json ]; then fail save.no_allowlist.no_file "$W/s1-none.json exists"; else pass save.no_allowlist.no_file; fi
    run msrsave --allowlist "$AL" info
    expect_rc save.info.exit_0 0
    if grep -Eq '^backend +msr' /tmp/out; then pass save.info.backend_msr; else fail save.info.backend_msr "info does not show backend msr"; attach /tmp/out; fi
    info_output "msrsave --allowlist $AL info"
    run msrsave info
    info "msrsave info without --allowlist exits $RC"
}

# The pretend job of scenario 2: TSC_AUX on CPU 2 (only the node bits, above bit 11: the kernel
# reads the CPU number from TSC_AUX's low 12 bits in its paranoid entry path), and MTRR_PHYSBASE7
# on CPU 1, both inside its mask (address bits) and outside it (memory type bits).
JOB_TSC_AUX_CPU2=0x7002
JOB_PHYSBASE7_CPU1=0x0000000AB0000006
job_scenario2() {
    wr 2 $TSC_AUX $JOB_TSC_AUX_CPU2
    wr 1 $PHYSBASE7 $JOB_PHYSBASE7_CPU1
}

# 2. drift: check names exactly the changed registers; restore puts back the masked bits only.
scenario_drift() {
    trace_setup || fail drift.tracefs "no msr:write_msr tracepoint"
    run $MSRSAVE --json save $W/s2.json
    expect_rc drift.save.exit_0 0
    pb_saved=$(rd 1 $PHYSBASE7)
    run $MSRSAVE --json check $W/s2.json
    expect_rc drift.check_before_job.exit_0 0
    expect_eq drift.check_before_job.clean true "$(jval clean)"

    job_scenario2
    trace_start
    run $MSRSAVE --json check $W/s2.json
    trace_stop /tmp/w
    expect_rc drift.check.exit_1 1
    expect_eq drift.check.json_clean false "$(jval clean)"
    expect_eq drift.check.json_drifted 2 "$(jval drifted)"
    expect_eq drift.check.names_exactly_the_changed_registers "1 0x20e,2 0xc0000103" "$(cpu_msr_pairs drift | tr '\n' ',' | sed 's/,$//')"
    jobjs drift | grep -i '"msr":"0x0*c0000103"' >/tmp/obj
    expect_eq drift.check.tsc_aux_expected 0x2 "$(hx "$(jval expected /tmp/obj)")"
    expect_eq drift.check.tsc_aux_actual "$(hx $JOB_TSC_AUX_CPU2)" "$(hx "$(jval actual /tmp/obj)")"
    expect_eq drift.check.tsc_aux_changed_bits 0x7000 "$(hx "$(jval changed_bits /tmp/obj)")"
    jobjs drift | grep -i '"msr":"0x0*20e"' >/tmp/obj
    # Only the bits inside the mask count by default: the type bits (0x6) are not drift.
    expect_eq drift.check.physbase7_changed_bits_in_mask 0xab0000000 "$(hx "$(jval changed_bits /tmp/obj)")"
    expect_eq drift.check.writes_no_register "" "$(cat /tmp/w)"
    run $MSRSAVE check $W/s2.json
    expect_rc drift.check_readable.exit_1 1
    info_output "check after the job"
    if grep -qi 'c0000103' /tmp/out /tmp/err && grep -qi '0x0*20e' /tmp/out /tmp/err; then
        pass drift.check_readable.names_both_registers
    else
        fail drift.check_readable.names_both_registers "the report does not name 0xC0000103 and 0x20E"
        attach /tmp/out
        attach /tmp/err
    fi

    trace_start
    run $MSRSAVE --json restore $W/s2.json
    trace_stop /tmp/w
    expect_rc drift.restore.exit_0 0
    info_output "restore --json"
    expect_eq drift.restore.json_ok true "$(jval ok)"
    expect_eq drift.restore.json_failures "" "$(jobjs failures)"
    expect_eq drift.restore.json_written 2 "$(jval written)"
    expect_eq drift.restore.tsc_aux_cpu2_back 0x2 "$(hx "$(rd 2 $TSC_AUX)")"
    # Masked bits from the save file, unmasked bits as the job left them.
    expected_pb=$(hx16 "(($pb_saved) & 0x0000000FFFFFF000) | ($JOB_PHYSBASE7_CPU1 & ~0x0000000FFFFFF000)")
    expect_eq drift.restore.physbase7_masked_bits_only "$(hx "$expected_pb")" "$(hx "$(rd 1 $PHYSBASE7)")"
    # What the kernel executed: exactly two wrmsr, each on its CPU, with those values.
    expect_eq drift.restore.kernel_wrmsr_exactly "1 0x20e $(hx "$expected_pb"),2 0xc0000103 0x2" "$(tr '\n' ',' </tmp/w | sed 's/,$//')"

    run $MSRSAVE --json check $W/s2.json
    expect_rc drift.check_after_restore.exit_0 0
    expect_eq drift.check_after_restore.clean true "$(jval clean)"
    run $MSRSAVE --json check --all-bits $W/s2.json
    expect_rc drift.check_all_bits.exit_1 1
    expect_eq drift.check_all_bits.only_physbase7_type_bits "1 0x20e" "$(cpu_msr_pairs drift | tr '\n' ',' | sed 's/,$//')"
}

# 3. The stock driver refuses writes (allow_writes=off), and a non-root user gets an explanation.
scenario_refuse() {
    trace_setup || fail refuse.tracefs "no msr:write_msr tracepoint"
    run $MSRSAVE --json save $W/s3.json
    expect_rc refuse.save.exit_0 0
    for c in 0 1 2 3; do wr $c $TSC_AUX $((0x7000 + c)); done
    wr 1 $PHYSBASE7 $JOB_PHYSBASE7_CPU1
    sum=$(sha256sum $W/s3.json | cut -d' ' -f1)
    mtime=$(stat -c %Y $W/s3.json)
    if reload_msr off; then pass refuse.reload_allow_writes_off; else fail refuse.reload_allow_writes_off "rmmod/insmod failed"; fi

    trace_start
    run $MSRSAVE --json restore $W/s3.json
    trace_stop /tmp/w
    expect_rc refuse.restore.exit_1 1
    expect_eq refuse.restore.json_ok false "$(jval ok)"
    expect_eq refuse.restore.failures_name_each_register "0 0xc0000103,1 0x20e,1 0xc0000103,2 0xc0000103,3 0xc0000103" \
        "$(cpu_msr_pairs failures | tr '\n' ',' | sed 's/,$//')"
    n_eperm=$(jobjs failures | grep -c '"code":"EPERM"')
    expect_eq refuse.restore.each_failure_is_eperm 5 "$n_eperm"
    expect_eq refuse.restore.no_wrmsr_reached_a_cpu "" "$(cat /tmp/w)"
    expect_eq refuse.restore.save_file_untouched "$sum $mtime" "$(sha256sum $W/s3.json | cut -d' ' -f1) $(stat -c %Y $W/s3.json)"
    expect_eq refuse.restore.registers_as_the_job_left_them "0x7000 0x7001 0x7002 0x7003 $(hx $JOB_PHYSBASE7_CPU1)" \
        "$(hx "$(rd 0 $TSC_AUX)") $(hx "$(rd 1 $TSC_AUX)") $(hx "$(rd 2 $TSC_AUX)") $(hx "$(rd 3 $TSC_AUX)") $(hx "$(rd 1 $PHYSBASE7)")"
    run $MSRSAVE restore $W/s3.json
    expect_rc refuse.restore_readable.exit_1 1
    info_output "restore with allow_writes=off"
    if grep -q 'EPERM' /tmp/out /tmp/err && grep -Eq 'allow_writes|writes off' /tmp/out /tmp/err; then
        pass refuse.restore_readable.explains_eperm_and_writes_off
    else
        fail refuse.restore_readable.explains_eperm_and_writes_off "the report does not give EPERM and the driver's writes being off"
        attach /tmp/out
        attach /tmp/err
    fi

    # The kernel's default mode (allow_writes=default, what a node has unless configured): writes
    # go through, and the kernel logs each write to an MSR it does not recognise and taints itself.
    if reload_msr default; then pass refuse.reload_allow_writes_default; else fail refuse.reload_allow_writes_default "rmmod/insmod failed"; fi
    taint_before=$(cat /proc/sys/kernel/tainted)
    dmesg -c >/dev/null
    run $MSRSAVE --json restore $W/s3.json
    expect_rc refuse.allow_writes_default.restore.exit_0 0
    expect_eq refuse.allow_writes_default.restore.json_written 5 "$(jval written)"
    expect_eq refuse.allow_writes_default.restored "0x0 0x1 0x2 0x3" \
        "$(hx "$(rd 0 $TSC_AUX)") $(hx "$(rd 1 $TSC_AUX)") $(hx "$(rd 2 $TSC_AUX)") $(hx "$(rd 3 $TSC_AUX)")"
    taint_after=$(cat /proc/sys/kernel/tainted)
    n_logged=$(dmesg | grep -c 'Write to unrecognized MSR')
    info "allow_writes=default: taint flags $taint_before -> $taint_after (the job's writes had set S already); $n_logged 'Write to unrecognized MSR' line(s), the kernel allows one per 30 s:"
    dmesg | grep 'unrecognized MSR' | sed -n '1,3s/^/INFO   /p'
    if reload_msr on; then pass refuse.reload_allow_writes_on; else fail refuse.reload_allow_writes_on "rmmod/insmod failed"; fi

    # Not root: the nodes are 0600 root (EACCES); even mode 0666 needs CAP_SYS_RAWIO (EPERM).
    mkdir -p /tmp/job && chown 1000:1000 /tmp/job
    cp $W/s3.json /tmp/job/s3.json && chown 1000:1000 /tmp/job/s3.json
    for mode in 0600 0666; do
        chmod $mode /dev/cpu/*/msr
        for cmd in save restore; do
            case $cmd in
                save) run rawmsr runas 1000 1000 msrsave --backend msr --allowlist "$AL" save /tmp/job/n-save.json ;;
                restore) run rawmsr runas 1000 1000 msrsave --backend msr --allowlist "$AL" restore /tmp/job/s3.json ;;
            esac
            expect_rc "refuse.nonroot.mode$mode.$cmd.exit_2" 2
            info_output "non-root, nodes $mode, $cmd"
            if grep -q 'CAP_SYS_RAWIO' /tmp/out /tmp/err && grep -q 'root' /tmp/out /tmp/err; then
                pass "refuse.nonroot.mode$mode.$cmd.explains_root_or_cap_sys_rawio"
            else
                fail "refuse.nonroot.mode$mode.$cmd.explains_root_or_cap_sys_rawio" "no mention of root and CAP_SYS_RAWIO"
                attach /tmp/out
                attach /tmp/err
            fi
        done
        run rawmsr runas 1000 1000 msrsave --backend msr --allowlist "$AL" --json save /tmp/job/n-save.json
        expect_rc "refuse.nonroot.mode$mode.save_json.exit_2" 2
        expect_eq "refuse.nonroot.mode$mode.save_json.ok_false" false "$(jval ok)"
        case "$(jval error)" in
            *CAP_SYS_RAWIO*) pass "refuse.nonroot.mode$mode.save_json.error_explains" ;;
            *) fail "refuse.nonroot.mode$mode.save_json.error_explains" "error is '$(jval error)'" ;;
        esac
        if [ -e /tmp/job/n-save.json ]; then
            fail "refuse.nonroot.mode$mode.no_save_file" "/tmp/job/n-save.json exists"
            rm -f /tmp/job/n-save.json
        else
            pass "refuse.nonroot.mode$mode.no_save_file"
        fi
    done
    chmod 0600 /dev/cpu/*/msr
}

# 4. CPU hotplug between save and restore, and a save on a node with a CPU offline.
scenario_hotplug() {
    run $MSRSAVE --json save $W/s4.json
    expect_save_json hotplug.save_4_cpus 4
    for c in 0 1 2 3; do wr $c $TSC_AUX $((0x7000 + c)); done
    echo 0 >/sys/devices/system/cpu/cpu3/online
    expect_eq hotplug.cpu3_offline 0-2 "$(cat /sys/devices/system/cpu/online)"

    run $MSRSAVE --json restore $W/s4.json
    expect_rc hotplug.restore.exit_1 1
    expect_eq hotplug.restore.json_ok false "$(jval ok)"
    expect_eq hotplug.restore.json_offline_cpus 3 "$(jlist offline_cpus)"
    others=$(cpu_msr_pairs failures | awk '$1 != 3' | tr '\n' ',')
    expect_eq hotplug.restore.no_failure_on_online_cpus "" "$others"
    expect_eq hotplug.restore.json_written 3 "$(jval written)"
    for c in 0 1 2; do
        expect_eq "hotplug.restore.cpu$c.restored" "$(hx $c)" "$(hx "$(rd $c $TSC_AUX)")"
    done
    run $MSRSAVE restore $W/s4.json
    expect_rc hotplug.restore_readable.exit_1 1
    info_output "restore with CPU 3 offline"
    if grep -Eiq 'cpu 3.*offline|offline.*(cpu 3|cpus? 3)' /tmp/out /tmp/err; then
        pass hotplug.restore_readable.says_cpu3_offline
    else
        fail hotplug.restore_readable.says_cpu3_offline "the report does not say that CPU 3 is offline"
        attach /tmp/out
        attach /tmp/err
    fi

    run $MSRSAVE check $W/s4.json
    info "check with CPU 3 offline exits $RC:"
    info_output "check with CPU 3 offline"
    run $MSRSAVE --json save $W/s4-3cpus.json
    expect_save_json hotplug.save_3_cpus 3
    expect_eq hotplug.save_3_cpus.cpus_recorded "0-2" "$($MSRSAVE --json show $W/s4-3cpus.json >/tmp/sf; jval cpu_list /tmp/sf)"
    for c in 0 1 2; do
        expect_eq "hotplug.save_3_cpus.tsc_aux.cpu$c" "$(hx $c)" "$(hx "$(saved $W/s4-3cpus.json $c $TSC_AUX)")"
    done
    echo 1 >/sys/devices/system/cpu/cpu3/online
}

# audit_verify BEFORE JOB AFTER WRITES: judge a restore from three dumps (before the save, after
# the job, after the restore) and the msr driver's wrmsr during it (WRITES, from trace_stop).
# Sets bad_value (an allowlisted register that does not hold its saved bits inside the mask and
# the job's bits outside it), bad_outside (a register outside the allowlist that the job did not
# change or the restore did), bad_write (a wrmsr outside the allowlist, to a read-only register,
# changing bits outside the mask, or with masked bits other than the saved ones) and
# n_expected_writes (registers whose value had to change).
audit_verify() {
    B=$1 J=$2 A=$3
    b="" j="" a="" k=""
    # Fork-free loops (shell arithmetic is 64-bit): a fork costs ~15 ms under TCG.
    allow_c=""
    for m in $ALLOWLISTED; do allow_c="$allow_c $(hx "$m")"; done
    outside_c=""
    for m in $OUTSIDE_MSRS; do outside_c="$outside_c $(hx "$m")"; done
    bad_value=""
    bad_outside=""
    n_expected_writes=0
    for c in $(online_cpus); do
        for m in $allow_c; do
            eval "k=\$MASK_$m"
            getv b "$B" "$c" "$m"
            getv j "$J" "$c" "$m"
            getv a "$A" "$c" "$m"
            if ! isnum "$b" || ! isnum "$j" || ! isnum "$a"; then
                bad_value="$bad_value cpu$c/$m:unreadable($b,$j,$a)"
                continue
            fi
            want=$(((b & k) | (j & ~k)))
            [ $((want == a)) = 1 ] || bad_value="$bad_value cpu$c/$m:want=$(hx16 "$want"),got=$a"
            [ $((want == j)) = 1 ] || n_expected_writes=$((n_expected_writes + 1))
        done
        for m in $outside_c; do
            getv b "$B" "$c" "$m"
            getv j "$J" "$c" "$m"
            getv a "$A" "$c" "$m"
            [ "$j" != "$b" ] || bad_outside="$bad_outside cpu$c/$m:the-job-did-not-change-it"
            [ "$a" = "$j" ] || bad_outside="$bad_outside cpu$c/$m:changed-by-restore($j->$a)"
        done
    done
    # Every wrmsr that went through the msr driver during the restore.
    bad_write=""
    while read -r c m v; do
        eval "k=\${MASK_$m:-}"
        if [ -z "$k" ]; then
            bad_write="$bad_write cpu$c/$m:not-in-allowlist"
            continue
        fi
        [ $((k != 0)) = 1 ] || bad_write="$bad_write cpu$c/$m:read-only(mask-0)"
        getv b "$B" "$c" "$m"
        getv j "$J" "$c" "$m"
        if ! isnum "$b" || ! isnum "$j"; then
            bad_write="$bad_write cpu$c/$m:unreadable($b,$j)"
            continue
        fi
        [ $(((v & ~k) == (j & ~k))) = 1 ] || bad_write="$bad_write cpu$c/$m:bits-outside-mask-changed($v)"
        [ $(((v & k) == (b & k))) = 1 ] || bad_write="$bad_write cpu$c/$m:masked-bits-not-the-saved-ones($v)"
    done <"$4"
}

# 5. Audit: nothing outside the allowlist and no bit outside a mask is ever written.
scenario_audit() {
    trace_setup || fail audit.tracefs "no msr:write_msr tracepoint"
    dump B
    trace_start
    run $MSRSAVE --json save $W/s5.json
    trace_stop /tmp/w
    expect_rc audit.save.exit_0 0
    expect_eq audit.save.writes_no_register "" "$(cat /tmp/w)"

    # The job changes every register it can on every CPU, inside and outside the masks, and
    # registers outside the allowlist.
    for c in $(online_cpus); do
        wr "$c" $TSC_AUX $((0x5000 + c))
        wr "$c" $PHYSBASE7 0x0000000CD0000005
        wr "$c" $PAT 0x0101010101010101
        wr "$c" $SYSENTER_CS 0x23
        wr "$c" 0x20C $((0x0000000AB0000006 + (c << 12)))
        wr "$c" 0x20D 0x0000000FF0000000
        wr "$c" 0x20F 0x0000000FC0000000
    done
    dump J

    trace_start
    run $MSRSAVE --json check $W/s5.json
    trace_stop /tmp/w
    expect_rc audit.check.exit_1 1
    expect_eq audit.check.writes_no_register "" "$(cat /tmp/w)"

    trace_start
    run $MSRSAVE --json restore $W/s5.json
    trace_stop /tmp/writes
    expect_rc audit.restore.exit_0 0
    dump A

    audit_verify B J A /tmp/writes
    expect_eq audit.restore.allowlisted_masked_bits_back_unmasked_bits_kept "" "$bad_value"
    expect_eq audit.restore.outside_allowlist_untouched "" "$bad_outside"
    expect_eq audit.restore.each_wrmsr_allowlisted_and_within_mask "" "$bad_write"
    n_writes=$(grep -c . /tmp/writes)
    expect_eq audit.restore.wrmsr_count_equals_registers_to_restore "$n_expected_writes" "$n_writes"
    dup=$(cut -d' ' -f1,2 /tmp/writes | sort | uniq -d | tr '\n' ',')
    expect_eq audit.restore.no_register_written_twice "" "$dup"
    info "audit: $n_writes wrmsr through the msr driver during restore"

    run $MSRSAVE --json check $W/s5.json
    expect_rc audit.check_after_restore.exit_0 0

    # Negative control: the same judgement must catch a bad restorer. The job changes
    # MTRR_PHYSBASE7's type bits (outside the mask) on CPU 0 and 0x20C (outside the allowlist) on
    # CPU 1; the "restorer" (rawmsr) puts both back whole.
    dump B2
    pb0="" o1=""
    getv pb0 B2 0 0x20e
    getv o1 B2 1 0x20c
    wr 0 $PHYSBASE7 $(((pb0 & ~0xff) | 0x1))
    wr 1 0x20C $((o1 + 0x1000))
    dump J2
    trace_start
    rawmsr write 0 $PHYSBASE7 "$pb0"
    rawmsr write 1 0x20C "$o1"
    trace_stop /tmp/badwrites
    dump A2
    audit_verify B2 J2 A2 /tmp/badwrites
    case "$bad_value" in
        *"cpu0/0x20e:want="*) pass audit.control.catches_unmasked_bits_restored ;;
        *) fail audit.control.catches_unmasked_bits_restored "bad_value='$bad_value'" ;;
    esac
    case "$bad_outside" in
        *"cpu1/0x20c:changed-by-restore"*) pass audit.control.catches_outside_register_restored ;;
        *) fail audit.control.catches_outside_register_restored "bad_outside='$bad_outside'" ;;
    esac
    case "$bad_write" in
        *"cpu0/0x20e:bits-outside-mask-changed"*"cpu1/0x20c:not-in-allowlist"*) pass audit.control.catches_both_wrmsr ;;
        *) fail audit.control.catches_both_wrmsr "bad_write='$bad_write'" ;;
    esac
}

# 7. topology: the kernel's own topology files, as msrsave reads them. Booted (run.sh) with
# -smp 8,sockets=2,cores=2,threads=2 and an Intel family 6 model 0x8F identity, so that the MSR
# table's scopes apply (MSR_PKG_POWER_LIMIT and PLATFORM_INFO are in the list: per package).
scenario_topology() {
    d=/sys/devices/system/cpu/cpu0/topology
    # Every file our emulated nodes lay out is one this kernel writes.
    for f in physical_package_id die_id core_id thread_siblings_list core_cpus_list \
        die_cpus_list package_cpus_list core_siblings_list; do
        if [ -f "$d/$f" ]; then
            pass "topology.kernel_has.$f"
        else
            fail "topology.kernel_has.$f" "no $d/$f"
        fi
    done
    for c in 0 1 2 3 4 5 6 7; do
        t=/sys/devices/system/cpu/cpu$c/topology
        info "cpu$c: package $(cat $t/physical_package_id) die $(cat $t/die_id) core $(cat $t/core_id) core_cpus $(cat $t/core_cpus_list) package_cpus $(cat $t/package_cpus_list)"
    done
    run $MSRSAVE --format shell info
    expect_rc topology.info.exit_0 0
    info_output "info --format shell"
    topology=
    packages=
    eval "$(cat /tmp/out)"
    expect_eq topology.info.summary "2 packages, 4 cores, 8 CPUs" "$topology"
    # Each CPU's package as msrsave lists it is the kernel's package_cpus_list of that CPU.
    for c in 0 1 2 3 4 5 6 7; do
        t=/sys/devices/system/cpu/cpu$c/topology
        want="$(cat $t/physical_package_id):$(cat $t/package_cpus_list)"
        case " $packages " in
            *" $want "*) pass "topology.info.cpu$c.package" ;;
            *) fail "topology.info.cpu$c.package" "msrsave lists '$packages', the kernel says $want" ;;
        esac
    done
    # A save reads the package level because the list has package registers on this CPU model.
    run $MSRSAVE --json save $W/t.msr
    expect_rc topology.save.exit_0 0
    expect_eq topology.save.topology "2 packages, 8 CPUs" "$(jval topology /tmp/out)"
    # The package registers read alike on the CPUs of each package (0 under TCG): nothing is
    # reported inconsistent, and a restore after a per-CPU change writes exactly that register.
    expect_eq topology.save.inconsistent "[]" "$(tr -d ' \n' </tmp/out | sed 's/.*"inconsistent":\(\[[^]]*\]\).*/\1/')"
    trace_setup || fail topology.tracefs "no msr:write_msr tracepoint"
    wr 5 $TSC_AUX 0x1234
    trace_start
    run $MSRSAVE --json restore $W/t.msr
    trace_stop /tmp/w
    expect_rc topology.restore.exit_0 0
    expect_eq topology.restore.written 1 "$(jval written)"
    expect_eq topology.restore.kernel_wrmsr_exactly "5 0xc0000103 0x5" "$(tr '\n' ',' </tmp/w | sed 's/,$//')"
}

case "$SCENARIO" in
    driver) scenario_driver ;;
    save) scenario_save ;;
    drift) scenario_drift ;;
    refuse) scenario_refuse ;;
    hotplug) scenario_hotplug ;;
    audit) scenario_audit ;;
    topology) scenario_topology ;;
    *)
        echo "scenarios.sh: unknown scenario '$SCENARIO'"
        fail "scenario.$SCENARIO" "unknown scenario"
        ;;
esac

echo "$PASSED passed, $FAILED failed"
[ "$FAILED" -eq 0 ] && [ "$PASSED" -gt 0 ]
