#!/usr/bin/env bash
#
# Everything nginx reads from shared memory, under libFuzzer with ASan and
# UBSan, and the Python workers' request parser under atheris:
#
#   verdict    the verdict decoder, both phases' records (shm_verdict.c)
#   region     the region check of create and attach
#   producer   poll, rescue, arm and the reaper over hostile slot states
#   endpoints  the endpoint table's readers (shm_endpoints.c)
#   request    the Cython request parser (_ring.pyx), with atheris
#
#   fuzz/run.sh [RUNS [TARGET...]]     RUNS default 200000, every target
#
# FUZZ_FLAGS adds libFuzzer flags (-max_total_time=SECONDS, -jobs=N...).
#
# Builds build/fuzz/TARGET, runs RUNS executions of each and prints one
# closing line per target with the executions and exec/s.  Exits non-zero
# on a finding; the crashing input is left in build/fuzz/TARGET/ as
# crash-*, leak-*, timeout-* or oom-*.

set -euo pipefail

runs=${1:-200000}
shift || true
targets=${*:-verdict region producer endpoints request}
root=$(cd "$(dirname "$0")/.." && pwd)
out=$root/build/fuzz
cc=${CLANG:-clang}
python=${PYTHON:-python3}
status=0

mkdir -p "$out"

report() {      # target log start_ns rc
    local target=$1 log=$2 start=$3 rc=$4 end execs cov secs rate

    end=$(date +%s%N)
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    execs=${execs:-0}
    cov=$(awk '/DONE +cov:/ { print $4 " edges, " $6 " features" }' "$log" \
              | tail -1)
    secs=$(awk -v ns=$((end - start)) 'BEGIN { printf "%.1f", ns / 1e9 }')
    rate=$(awk -v n="$execs" -v ns=$((end - start)) \
               'BEGIN { printf "%.0f", ns ? n * 1e9 / ns : 0 }')

    if [ "$rc" -ne 0 ]; then
        tail -n 60 "$log"
        echo "${target}_fuzz: FINDING after $execs executions" \
             "(exit $rc, see $log)"
        status=$rc
        return
    fi

    echo "${target}_fuzz: $execs executions in $secs s, $rate exec/s," \
         "no finding (coverage: ${cov:-?})"
}

for target in $targets; do
    dir=$out/$target
    log=$dir/fuzz.log
    mkdir -p "$dir/corpus"
    rc=0

    if [ "$target" = request ]; then
        "$python" "$root/fuzz/make_corpus.py" --requests "$dir/corpus" \
            >/dev/null
        start=$(date +%s%N)
        "$python" "$root/fuzz/request_fuzz.py" -runs="$runs" \
            ${FUZZ_FLAGS:-} -print_final_stats=1 -artifact_prefix="$dir/" "$dir/corpus" \
            >"$log" 2>&1 || rc=$?
        report "$target" "$log" "$start" "$rc"
        continue
    fi

    "$cc" -g -O1 -fsanitize=fuzzer,address,undefined \
        -fno-sanitize-recover=all -Wall -Wextra -Wno-unused-parameter \
        -I "$root/shm_ring" \
        "$root/fuzz/${target}_fuzz.c" "$root"/shm_ring/shm_*.c \
        -o "$dir/${target}_fuzz"

    if [ "$target" = verdict ]; then
        "$python" "$root/fuzz/make_corpus.py" "$dir/corpus" >/dev/null
    fi

    start=$(date +%s%N)
    "$dir/${target}_fuzz" -runs="$runs" ${FUZZ_FLAGS:-} -print_final_stats=1 \
        -artifact_prefix="$dir/" "$dir/corpus" >"$log" 2>&1 || rc=$?
    report "$target" "$log" "$start" "$rc"
done

exit "$status"
