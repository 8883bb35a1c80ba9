#!/usr/bin/env bash
# CPU generation, side by side in one interleaved run (medians of 3): chatvec at f32, bf16, q8_0
# and q4_k, and the whole batched `eval chat` command at q8_0; llama.cpp (node-llama-cpp 3.21.1's
# prebuilt binaries) on GGUFs made by llama.cpp's own convert_hf_to_gguf.py (f16, bf16, q8_0; the
# converter writes no k-quants and node-llama-cpp ships no llama-quantize); transformers in bf16.
# Synthetic Llama-3.2-1B shape with Llama-3's tokenizer.
#
#   bash benches/gen/run.sh                      # the README tables (1B shape, 2 threads, prompts 128 and 512)
#   bash benches/gen/run.sh --shape 8b --chatvec q8_0 --llama-cpp '' --no-transformers --rounds 1
#   bash benches/gen/run.sh --chatvec '' --llama-cpp q8_0 --no-transformers   # batched eval chat vs llama.cpp
#   CHATVEC_SIMD=avx2 bash benches/gen/run.sh --chatvec q8_0,bf16 --llama-cpp q8_0,bf16 --no-transformers
#                                                # both at the AVX2 tier on an AVX-512 machine (chatvec
#                                                # forced; llama.cpp given only ggml's haswell build)
#
# The first line of output names the CPU, its SIMD features and the tier chatvec ran at.
#
# Needs: CHATVEC_PYTHON (default python3) with torch, transformers, tiktoken, numpy, sentencepiece;
# node, and node-llama-cpp in CHATVEC_NODE_LLAMA_DIR (default .tools/node). Models, GGUFs and the
# llama.cpp checkout go to target/bench-gen (about 12 GB for the 1B shape, 16 GB more for 8B).
set -euo pipefail
cd "$(dirname "$0")/../.."
cargo build --release -q -p chatvec-gen --example bench_gen
cargo build --release -q -p chatvec-bench -p chatvec
exec "${CHATVEC_PYTHON:-python3}" benches/gen/compare.py "$@"
