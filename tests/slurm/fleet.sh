# shellcheck shell=bash
# Fleet collection through the real scheduler: `msr-restore-fleet --via srun` gathers one
# fingerprint per node with srun (one task per node) and compares them. For tests/slurm/run.sh,
# which sources this file once its cluster is up and calls
#
#   fleet_scenario NODE_DIR MSRSAVE FLEET NODE_NAME
#
# NODE_DIR is the emulated node the cluster's node works on, MSRSAVE the msrsave binary the jobs
# can run, FLEET the msr-restore-fleet script, NODE_NAME the cluster's node. Uses run.sh's check/pass/fail. The one-node cluster gives one
# fingerprint: the scenario checks that srun delivered it whole (the node's name from
# SLURMD_NODENAME, the policy's fields), that a clean node compares clean (exit 0) and that a
# static field broken on the node is found (exit 1), with the scheduler in between.

# set_byte FILE ADDR VALUE: the low byte of register ADDR in an emulated register file.
set_byte() {
    printf '%b' "\\x$(printf '%02x' "$3")" |
        dd of="$1" bs=1 seek=$((8 * $2)) count=1 conv=notrunc status=none
}

fleet_scenario() {
    local node_dir=$1 msrsave=$2 fleet=$3 node_name=$4
    local dir out conf policy epb rc failed_before=$FAILED
    dir=$(mktemp -d "$MSR_SLURM_DIR/fleet.XXXXXX")
    chmod 755 "$dir"
    policy="$dir/policy.toml"
    epb=$(od -An -t u8 -j $((8 * 0x1B0)) -N 8 "$node_dir/dev/cpu/0/msr_safe" | tr -d ' ')
    cat >"$policy" <<EOF
version = 1
[field.IA32_ENERGY_PERF_BIAS.hint]
policy = "static"
value = $((epb & 15))
[field.MSR_PKG_POWER_LIMIT.pl1]
policy = "fleet_equal"
EOF
    conf="$dir/msr-restore.conf"
    printf 'root = %s\npolicy = %s\n' "$node_dir" "$policy" >"$conf"
    chmod 644 "$policy" "$conf"
    out="$dir/fingerprints.jsonl"

    rc=0
    in_root env SLURM_CONF="$SLURM_CONF" MSR_RESTORE_CONFIG="$conf" MSRSAVE="$msrsave" \
        salloc -N 1 --quiet "$fleet" --via srun --out "$out" -- --format json \
        >"$dir/compare.json" 2>"$dir/stderr" || rc=$?
    check "fleet: srun collected one fingerprint per node and compare is clean (exit $rc)" \
        test "$rc" = 0
    check "fleet: the fingerprint names the Slurm node and carries the policy's fields" \
        grep -q "\"node\":\"$node_name\".*\"IA32_ENERGY_PERF_BIAS.hint\"" "$out"
    check "fleet: compare counted 1 node" grep -q '"nodes":1' "$dir/compare.json"

    # The node's energy bias changes on CPU 1: a static field broken, found through srun. First
    # the allocation's epilog must be done: it restores what changed since its prolog.
    wait_node_state IDLE 30 >/dev/null
    set_byte "$node_dir/dev/cpu/1/msr_safe" $((0x1B0)) $(((epb & 15) ^ 1))
    rc=0
    in_root env SLURM_CONF="$SLURM_CONF" MSR_RESTORE_CONFIG="$conf" MSRSAVE="$msrsave" \
        salloc -N 1 --quiet "$fleet" --via srun --out "$out" -- --format json \
        >"$dir/compare.json" 2>"$dir/stderr" || rc=$?
    check "fleet: a broken static field is a violation (exit $rc)" test "$rc" = 1
    check "fleet: the violation names the field and CPU 1" \
        grep -q '"field":"IA32_ENERGY_PERF_BIAS.hint".*on CPUs 1' "$dir/compare.json"
    # Put the register back as it was, once this allocation's epilog is done.
    wait_node_state IDLE 30 >/dev/null
    set_byte "$node_dir/dev/cpu/1/msr_safe" $((0x1B0)) $((epb & 255))
    if ((FAILED > failed_before)); then
        echo "fleet: kept $dir for a look (fingerprints.jsonl, compare.json, stderr)"
    else
        rm -rf "$dir"
    fi
}
