#!/usr/bin/env bash
# CPU generation speed, chatvec vs Python transformers, on a synthetic 1B-shaped Llama in f32.
# Needs python3 with torch and transformers for the comparison column.
#
#   bash benches/gen/run.sh [--prompt 128] [--new 32] [--layers 16]
set -euo pipefail
cd "$(dirname "$0")/../.."

cargo build --release -q -p chatvec-gen --example bench_gen
ours=$(./target/release/examples/bench_gen "$@" | tail -n 1)
theirs=$(python3 benches/gen/bench_transformers.py "$@" | tail -n 1)

python3 - "$ours" "$theirs" <<'EOF'
import json, sys
c, t = json.loads(sys.argv[1]), json.loads(sys.argv[2])
print(f"synthetic Llama, {c['params'] / 1e9:.2f}B parameters, f32, CPU, {c['threads']} threads; "
      f"prompt {c['prompt_tokens']} tokens, {c['new_tokens']} new tokens "
      f"(torch {t['versions']['torch']}, transformers {t['versions']['transformers']})")
print()
print("| | chatvec (candle) | transformers (torch) | ratio |")
print("|---|---:|---:|---:|")
for key, label in [("prefill_tokens_per_s", "prefill tokens/s"), ("decode_tokens_per_s", "decode tokens/s")]:
    print(f"| {label} | {c[key]:.1f} | {t[key]:.1f} | {c[key] / t[key]:.2f}x |")
EOF
