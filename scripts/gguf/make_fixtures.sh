#!/usr/bin/env bash
# Regenerates the GGUF oracle fixtures: llama.cpp's own convert_hf_to_gguf.py (the version
# node-llama-cpp 3.21.1 bundles as llama/gitRelease.bundle) run on each fixture model
# (fixtures/llama-tiny/chat and fixtures/arch/{mistral,qwen2,gemma}) at each type;
# the sha256 and size of every output go to crates/chatvec-gguf/tests/data/converter.json (the
# files themselves are a few MB in all, so only their hashes are committed), with the converter's
# chkhsh of each BPE tokenizer. Also regenerates src/pre_hashes.rs from the converter's table.
#
#   PYTHON=/work/venv/bin/python NODE_LLAMA_DIR=/work/tools/node scripts/gguf/make_fixtures.sh
#
# Needs torch, transformers, sentencepiece, numpy (the converter's requirements).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
PYTHON="${PYTHON:-${CHATVEC_PYTHON:-python3}}"
NODE_LLAMA_DIR="${NODE_LLAMA_DIR:-${CHATVEC_NODE_LLAMA_DIR:-$ROOT/.tools/node}}"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
git clone -q "$NODE_LLAMA_DIR/node_modules/node-llama-cpp/llama/gitRelease.bundle" "$WORK/llama.cpp" 2>/dev/null
LLAMA="$WORK/llama.cpp"
DATA="$ROOT/crates/chatvec-gguf/tests/data"
"$PYTHON" - "$LLAMA" "$ROOT/crates/chatvec-gguf/src/pre_hashes.rs" <<'PY'
import re, sys
src = open(sys.argv[1] + "/conversion/base.py").read()
body = src[src.index("# Marker: Start get_vocab_base_pre"):src.index("# Marker: End get_vocab_base_pre")]
pairs = re.findall(r'if chkhsh == "([0-9a-f]{64})":\n(?:\s*#[^\n]*\n)*\s*res = "([^"]+)"', body)
assert len(pairs) == body.count("if chkhsh =="), "a table entry was not parsed"
out = ["//! The converter's table of known BPE pre-tokenizers: chkhsh → `tokenizer.ggml.pre`.",
       "//! Generated from llama.cpp's `get_vocab_base_pre` (the version node-llama-cpp 3.21.1 bundles)",
       "//! by `scripts/gguf/make_fixtures.sh`; do not edit by hand.", "",
       "/// (chkhsh, pre-tokenizer name) pairs, in the converter's order.",
       "pub const KNOWN: &[(&str, &str)] = &["] + ['    ("%s", "%s"),' % p for p in pairs] + ["];", ""]
open(sys.argv[2], "w").write("\n".join(out))
PY
# model dir | pre-tokenizer its tokenizer copies (used only when its chkhsh is unknown)
ARCH="$ROOT/fixtures/arch"
MODELS=("llama-tiny:$ROOT/fixtures/llama-tiny/chat:gpt-2" "mistral:$ARCH/mistral:" "qwen2:$ARCH/qwen2:qwen2" "gemma:$ARCH/gemma:")
echo "{" > "$WORK/converter.json"
first=1
for m in "${MODELS[@]}"; do
  IFS=: read -r name dir pre <<<"$m"
  for t in f32 f16 bf16 q8_0; do
    out="$WORK/$name-$t.gguf"
    CHATVEC_GGUF_PRE="$pre" "$PYTHON" "$ROOT/scripts/gguf/convert_oracle.py" "$LLAMA" "$dir" --outfile "$out" --outtype "$t" >"$WORK/log" 2>&1 \
      || { cat "$WORK/log"; exit 1; }
    hash=$(sha256sum "$out" | cut -d' ' -f1)
    size=$(stat -c %s "$out")
    chk=$(grep -o 'chatvec-chkhsh: [0-9a-f]*' "$WORK/log" | head -1 | cut -d' ' -f2 || true)
    [ $first = 1 ] || echo "," >> "$WORK/converter.json"
    first=0
    printf '  "%s-%s": {"sha256": "%s", "bytes": %s, "chkhsh": "%s"}' "$name" "$t" "$hash" "$size" "$chk" >> "$WORK/converter.json"
    [ -n "${KEEP_GGUF:-}" ] && cp "$out" "$KEEP_GGUF/"
  done
done
printf '\n}\n' >> "$WORK/converter.json"
cp "$WORK/converter.json" "$DATA/converter.json"
cat "$DATA/converter.json"
