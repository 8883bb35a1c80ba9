#!/usr/bin/env bash
# chatvec serve's batched throughput: 16 streaming chat clients at once against the same 16
# requests one after another, on one model, in one run (crates/chatvec-cli/tests/serve/many_clients.py,
# the openai client). Prints the CPU, the SIMD tier, both wall times, total tokens/s and the ratio.
#
# usage: benches/serve/throughput.sh MODEL_DIR [NEW_TOKENS] [QUANTIZE]
#   MODEL_DIR   a model directory with a chat template (e.g. the synthetic 1B model of benches/gen)
#   NEW_TOKENS  tokens per answer (default 32)
#   QUANTIZE    --quantize of chatvec serve (default q8_0)
# env: CHATVEC (default target/release/chatvec), PYTHON (a Python with `openai`; default python3),
#      CHATVEC_SIMD (forces a tier, as for every chatvec command).
set -euo pipefail
model=${1:?usage: throughput.sh MODEL_DIR [NEW_TOKENS] [QUANTIZE]}
tokens=${2:-32}
quantize=${3:-q8_0}
chatvec=${CHATVEC:-target/release/chatvec}
python=${PYTHON:-python3}
here=$(cd "$(dirname "$0")" && pwd)
log=$(mktemp)
"$chatvec" serve --model "bench=$model" --quantize "$quantize" --port 0 2> "$log" &
server=$!
trap 'kill $server 2>/dev/null; rm -f "$log"' EXIT
for _ in $(seq 600); do
  grep -q 'http://' "$log" && break
  kill -0 $server 2>/dev/null || { cat "$log"; exit 1; }
  sleep 0.5
done
url=$(grep -o 'http://[^ ]*' "$log" | head -1)
record=$("$python" "$here/../../crates/chatvec-cli/tests/serve/many_clients.py" "$url/v1" bench "$tokens" | tail -1)
cpu=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')
# The tier chatvec picks unless CHATVEC_SIMD forces one (chatvec_format::SimdTier::detect).
flags=$(grep -m1 '^flags' /proc/cpuinfo)
tier=baseline
if [[ $flags == *" avx2 "* && $flags == *" fma "* && $flags == *" f16c "* ]]; then tier=avx2; fi
if [[ $tier == avx2 && $flags == *" avx512f "* && $flags == *" avx512bw "* && $flags == *" avx512vl "* && $flags == *" avx512dq "* ]]; then tier=avx512; fi
"$python" - "$record" "$cpu" "${CHATVEC_SIMD:-$tier}" "$quantize" "$model" <<'PY'
import json, sys
r, cpu, simd, quantize, model = json.loads(sys.argv[1]), *sys.argv[2:]
assert [a[0] for a in r["concurrent"]] == [a[0] for a in r["sequential"]], "concurrent answers differ from sequential ones"
tokens = r["tokens"]
together, alone = r["concurrent_s"], r["sequential_s"]
print(f"model {model}, --quantize {quantize}, CPU {cpu}, SIMD tier {simd}")
print(f"16 concurrent streams: {tokens} tokens in {together:.1f} s = {tokens / together:.1f} tokens/s")
print(f"16 sequential requests: {tokens} tokens in {alone:.1f} s = {tokens / alone:.1f} tokens/s")
print(f"concurrent / sequential throughput: x{alone / together:.2f}")
PY
