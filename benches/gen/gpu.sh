#!/usr/bin/env bash
# One command for a lent GPU machine: a random Llama-3-8B-shaped bf16 model, `chatvec generate` on
# CUDA, and transformers on the same model and prompt. Prints decode tok/s, prefill tok/s at a
# 1024-token prompt, and time to first token including first-use kernel loading.
#
#   CHATVEC=path/to/chatvec-with-cuda bash benches/gen/gpu.sh [MODEL_DIR]
#
# Needs python3 with torch+transformers (the GPU machine's image has them) to make the model and
# run the peer. The chatvec binary comes from `bash benches/gen/build-cuda.sh`.
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN=${CHATVEC:-target/release/chatvec}
M=${1:-/tmp/chatvec-8b}
NEW=${NEW:-128}
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
[ -f "$M/model.safetensors.index.json" ] || python3 benches/gen/synth_gpu.py "$M"
P=$(mktemp --suffix .json)
python3 benches/gen/gpu_peer.py prompt "$M" "$P" 1024
run() { # one process: load the model, generate once
  local t0 t1; t0=$(date +%s.%N)
  "$BIN" generate --model "$M" --device cuda --messages "$P" --temperature 1.0 --top-k 0 --top-p 1 \
    --seed 1 --max-new-tokens "$NEW" --json > "$P.$1.json"
  t1=$(date +%s.%N)
  python3 - "$P.$1.json" "$1" "$t0" "$t1" <<'PY'
import json, sys
r = json.load(open(sys.argv[1])); run = r["runs"][0]
wall = float(sys.argv[4]) - float(sys.argv[3])
print(json.dumps({"impl": "chatvec", "process": sys.argv[2], "dtype": r["dtype"], "prompt_tokens": r["prompt_tokens"],
  "new_tokens": run["new_tokens"], "time_to_first_token_s": run["time_to_first_token_s"],
  "prefill_tokens_per_s": r["prompt_tokens"] / run["time_to_first_token_s"],
  "decode_tokens_per_s": run["decode_tokens_per_second"], "process_wall_s": wall}))
PY
}
# The first process on a fresh machine pays the kernels' first-use cost (the driver's JIT cache is
# empty); the second finds them cached. Their TTFT difference is the first-use stall.
run first
run second
python3 benches/gen/gpu_peer.py peer "$M" "$P" "$NEW"
