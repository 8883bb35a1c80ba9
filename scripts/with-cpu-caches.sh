#!/usr/bin/env bash
# Runs a command as if on a host with other CPU caches: in a private mount namespace, every
# /sys/devices/system/cpu/cpu*/cache is replaced by a made-up one (L1d SIZE and WAYS, L2 1 MiB
# 16-way, L3 36 MiB 11-way), which is where gemm (candle's matmul) reads the cache sizes it
# derives its blocking from (gemm-common's cache.rs). Needs root (unshare -m, mount --bind).
#
#   scripts/with-cpu-caches.sh [--l1d 32K --ways 8] -- COMMAND [ARGS...]
#
# The default, 32 KiB 8-way, is the L1d of Skylake-SP/Cascade Lake Xeons and AMD Zen 1-4; the
# 48 KiB 12-way L1d of Ice Lake and later Xeons makes gemm sum up to 1024 terms per block
# instead of 512. Used to show that the lab's training no longer depends on it
# (docs/lab/results.md, "Bundled models and their rebuild").
set -euo pipefail
l1d=32K
ways=8
while [ $# -gt 0 ]; do
    case $1 in
        --l1d) l1d=$2; shift 2 ;;
        --ways) ways=$2; shift 2 ;;
        --) shift; break ;;
        *) break ;;
    esac
done
fake=$(mktemp -d)
trap 'rm -rf "$fake"' EXIT
mk() { # dir level type size ways shared
    mkdir -p "$fake/$1"
    echo "$2" > "$fake/$1/level"
    echo "$3" > "$fake/$1/type"
    echo "$4" > "$fake/$1/size"
    echo "$5" > "$fake/$1/ways_of_associativity"
    echo 64 > "$fake/$1/coherency_line_size"
    echo "$6" > "$fake/$1/shared_cpu_list"
}
mk index0 1 Data "$l1d" "$ways" 0
mk index1 1 Instruction 32K 8 0
mk index2 2 Unified 1024K 16 0
mk index3 3 Unified 36608K 11 "0-$(($(nproc) - 1))"
unshare -m --propagation private bash -c '
    for c in /sys/devices/system/cpu/cpu[0-9]*; do mount --bind "$0" "$c/cache"; done
    exec "$@"' "$fake" "$@"
