#!/usr/bin/env bash
# Load time to the first token against a cold read of the same weights, in PAIRS pairs:
#   benches/gen/load_cold.sh MODEL_DIR [PAIRS]
# Each pair drops the page cache of MODEL_DIR's files (posix_fadvise DONTNEED, no root needed),
# times `cat` of the safetensors shards, drops the cache again and times
# `chatvec generate --greedy --max-new-tokens 1` (load, prefill of "hello", one token).
# Prints one line per pair with both times and their ratio. Uses target/release/chatvec.
set -euo pipefail
model=${1:?usage: load_cold.sh MODEL_DIR [PAIRS]}
pairs=${2:-3}
root=$(cd "$(dirname "$0")/../.." && pwd)
chatvec="$root/target/release/chatvec"
[ -x "$chatvec" ] || { echo "load_cold.sh: build it first: cargo build --release -p chatvec" >&2; exit 2; }
drop_cache() {
  python3 - "$model" <<'PY'
import os, sys
for root, _, files in os.walk(sys.argv[1]):
    for f in files:
        fd = os.open(os.path.join(root, f), os.O_RDONLY)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        os.close(fd)
PY
}
now() { date +%s.%N; }
for i in $(seq "$pairs"); do
  drop_cache; sleep 2
  t0=$(now); cat "$model"/*.safetensors > /dev/null; t1=$(now)
  drop_cache; sleep 2
  t2=$(now)
  "$chatvec" generate --model "$model" --greedy --max-new-tokens 1 --json --no-memory-check --prompt hello > /dev/null
  t3=$(now)
  python3 -c "import sys; c, g = float(sys.argv[2]) - float(sys.argv[1]), float(sys.argv[4]) - float(sys.argv[3]); print(f'pair {sys.argv[5]}: cold read {c:.1f} s, load to first token {g:.1f} s, {g / c:.2f}x')" "$t0" "$t1" "$t2" "$t3" "$i"
done
