#!/bin/sh
#
# Builds the ring's C stress test into build/tests/ring_stress.
#
#   shm_ring/tests/build.sh            -O2, assertions of the test only
#   SANITIZE=address shm_ring/tests/build.sh
#                                      with -fsanitize=address,undefined

set -eu

root=$(cd "$(dirname "$0")/../.." && pwd)
out=$root/build/tests
cc=${CC:-cc}
flags="-O2 -g"

if [ -n "${SANITIZE:-}" ]; then
    flags="-O1 -g -fno-omit-frame-pointer -fsanitize=$SANITIZE,undefined"
    flags="$flags -fno-sanitize-recover=all"
fi

mkdir -p "$out"

$cc $flags -std=gnu11 -Wall -Wextra -Wno-unused-parameter \
    -I "$root/shm_ring" \
    "$root/shm_ring/tests/ring_stress.c" "$root"/shm_ring/shm_*.c \
    -o "$out/ring_stress${SANITIZE:+-$SANITIZE}"

echo "$out/ring_stress${SANITIZE:+-$SANITIZE}"
