#!/usr/bin/env bash
# Builds the CUDA chatvec binary on a machine without a GPU or system CUDA (a CUDA 13.0 toolkit from
# PyPI wheels plus a libcuda link stub, see scripts/setup-cuda-toolkit.sh), for Hopper (sm_90) GPUs
# with driver >= 580. First build about 8 minutes on 2 cores, mostly nvcc on candle-kernels.
#
#   bash benches/gen/build-cuda.sh [TOOLKIT_DIR]     -> target-cuda/release/chatvec, .carry/chatvec.gz
#
# On the GPU machine: gunzip -c .carry/chatvec.gz > /tmp/chatvec && chmod +x /tmp/chatvec, and set
# LD_LIBRARY_PATH to the cuBLAS/cuRAND/cudart of the machine's PyTorch wheels plus the driver's lib
# folder (never the stub folder).
set -euo pipefail
cd "$(dirname "$0")/../.."
TK=${1:-.cuda}
cargo fetch -q
bash scripts/setup-cuda-toolkit.sh "$TK"
# shellcheck disable=SC1091
source "$TK/env.sh"
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-target-cuda}
cargo build --release -p chatvec --features cuda
mkdir -p .carry
strip -o .carry/chatvec "$CARGO_TARGET_DIR/release/chatvec"
gzip -9 -f .carry/chatvec
ls -l .carry/chatvec.gz
