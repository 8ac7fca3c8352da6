#!/usr/bin/env bash
#
# The verdict decoder under libFuzzer with ASan and UBSan.
#
#   fuzz/run.sh [RUNS]        default 200000
#
# Builds build/fuzz/verdict_fuzz, seeds build/fuzz/corpus with valid
# verdicts from the reference encoder, runs RUNS executions and prints
# one closing line with the executions and exec/s.  Exits non-zero on a
# finding; the crashing input is left in build/fuzz/ as crash-*,
# leak-*, timeout-* or oom-*.

set -euo pipefail

runs=${1:-200000}
root=$(cd "$(dirname "$0")/.." && pwd)
out=$root/build/fuzz
cc=${CLANG:-clang}
python=${PYTHON:-python3}

mkdir -p "$out"

"$cc" -g -O1 -fsanitize=fuzzer,address,undefined \
    -fno-sanitize-recover=all -Wall -Wextra -Wno-unused-parameter \
    -I "$root/shm_ring" \
    "$root/fuzz/verdict_fuzz.c" "$root/shm_ring/shm_verdict.c" \
    -o "$out/verdict_fuzz"

"$python" "$root/fuzz/make_corpus.py" "$out/corpus"

log=$out/fuzz.log
status=0
start=$(date +%s%N)

"$out/verdict_fuzz" -runs="$runs" -print_final_stats=1 \
    -artifact_prefix="$out/" "$out/corpus" >"$log" 2>&1 || status=$?

end=$(date +%s%N)
execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
execs=${execs:-0}
cov=$(awk '/DONE +cov:/ { print $4 " edges, " $6 " features, " \
                              substr($8, 1, index($8, "/") - 1) " inputs" }' \
          "$log" | tail -1)
secs=$(awk -v ns=$((end - start)) 'BEGIN { printf "%.1f", ns / 1e9 }')
rate=$(awk -v n="$execs" -v ns=$((end - start)) \
           'BEGIN { printf "%.0f", ns ? n * 1e9 / ns : 0 }')

if [ "$status" -ne 0 ]; then
    tail -n 60 "$log"
    echo "verdict_fuzz: FINDING after $execs executions" \
         "(exit $status, see build/fuzz/fuzz.log)"
    exit "$status"
fi

echo "verdict_fuzz: $execs executions in $secs s, $rate exec/s," \
     "no finding (coverage: ${cov:-?})"
