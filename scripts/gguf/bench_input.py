"""GGUF input speed against the same model from safetensors, side by side in one interleaved run
(issue 24): chatvec's decoder on a q8_0 GGUF file that `chatvec export gguf` wrote, and on the
bf16 safetensors directory converted to q8_0 at load (`--quantize q8_0`). Synthetic
Llama-3.2-1B shape with Llama-3's tokenizer (as benches/gen/run.sh). Prints the CPU and SIMD tier,
each round, and the medians with their ratio.

    python scripts/gguf/bench_input.py [--rounds 3] [--types q8_0,f16] [--work target/bench-gguf]

An f16 GGUF is compared with the safetensors directory at `--quantize bf16`.

Binaries: BENCH_GEN (default target/release/examples/bench_gen), CHATVEC (target/release/chatvec),
CHATVEC_BENCH (target/release/chatvec-bench); build them with
`cargo build --release -p chatvec-gen --example bench_gen && cargo build --release -p chatvec -p chatvec-bench`.
Needs about 4 GB of disk in --work for q8_0 (the model 2.5 GB, the GGUF 1.3 GB).
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BENCH_GEN = os.environ.get("BENCH_GEN", str(ROOT / "target/release/examples/bench_gen"))
CHATVEC = os.environ.get("CHATVEC", str(ROOT / "target/release/chatvec"))
CHATVEC_BENCH = os.environ.get("CHATVEC_BENCH", str(ROOT / "target/release/chatvec-bench"))


def prepare(work, types):
    model = work / "synth-1b"
    if not (model / "config.json").is_file():
        subprocess.run([CHATVEC_BENCH, "synth", "--shape", "1b", "--out", model], check=True)
        tok = work / "llama3-tokenizer"
        if not (tok / "tokenizer.json").is_file():
            subprocess.run([sys.executable, ROOT / "benches/gen/make_llama3_tokenizer.py", tok], check=True)
        for f in tok.iterdir():
            shutil.copy(f, model / f.name)
    ggufs = {}
    for t in types:
        out = work / f"synth-1b-{t}.gguf"
        if not out.is_file():
            subprocess.run([CHATVEC, "export", "gguf", "--model", model, "-o", out, "--type", t, "-q"], check=True)
        ggufs[t] = out
    return model, ggufs


def bench(model, quantize, prompt, new):
    cmd = [BENCH_GEN, "--model", model, "--prompt", str(prompt), "--new", str(new)]
    if quantize:
        cmd += ["--quantize", quantize]
    for attempt in range(5):
        run = subprocess.run(cmd, capture_output=True, text=True)
        if run.returncode == 0:
            return json.loads(run.stdout.strip().splitlines()[-1])
        # bench_gen's memory check refuses while other jobs on a shared machine hold the memory.
        print(f"  ({run.stderr.strip().splitlines()[-1][:160]}; retrying)", flush=True)
        time.sleep(15)
    raise SystemExit(f"{cmd} failed: {run.stderr[-2000:]}")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--types", default="q8_0")
    p.add_argument("--prompt", type=int, default=128)
    p.add_argument("--new", type=int, default=32)
    p.add_argument("--work", type=Path, default=ROOT / "target/bench-gguf")
    a = p.parse_args()
    a.work.mkdir(parents=True, exist_ok=True)
    types = a.types.split(",")
    model, ggufs = prepare(a.work, types)
    engines = []
    # An f16 GGUF is compared with what a user gets from the same safetensors at 16 bits: bf16.
    partner = {t: {"f16": "bf16"}.get(t, t) for t in types}
    for t in types:
        engines += [(f"safetensors --quantize {partner[t]}", model, partner[t]), (f"GGUF {t}", ggufs[t], None)]
    results = {name: [] for name, _, _ in engines}
    for r in range(a.rounds):
        for name, path, quantize in engines:
            rec = bench(path, quantize, a.prompt, a.new)
            if r == 0 and name == engines[0][0]:
                print(f"CPU: {rec['cpu']}; {rec['threads']} threads; prompt {rec['prompt_tokens']}, {a.new} new tokens")
            results[name].append(rec)
            print(f"round {r + 1} {name}: prefill {rec['prefill_tokens_per_s']:.1f} tok/s "
                  f"({rec['prefill_cpu_s']:.1f} CPU s), decode {rec['decode_tokens_per_s']:.2f} tok/s "
                  f"({rec['decode_cpu_s']:.1f} CPU s), load {rec['load_s']:.1f} s", flush=True)
    keys = ("prefill_tokens_per_s", "decode_tokens_per_s", "prefill_cpu_s", "decode_cpu_s", "load_s")
    med = {n: {k: statistics.median(x[k] for x in recs) for k in keys} for n, recs in results.items()}
    print("\n| weights (medians) | prefill tok/s | decode tok/s | prefill CPU s | decode CPU s | load s |")
    print("|---|---:|---:|---:|---:|---:|")
    for n, m in med.items():
        print(f"| {n} | {m['prefill_tokens_per_s']:.1f} | {m['decode_tokens_per_s']:.2f} | "
              f"{m['prefill_cpu_s']:.1f} | {m['decode_cpu_s']:.1f} | {m['load_s']:.1f} |")
    # On a shared machine wall time depends on what else runs; CPU seconds for the same work less so.
    for t in types:
        g, s = med[f"GGUF {t}"], med[f"safetensors --quantize {partner[t]}"]
        print(f"{t}: GGUF / safetensors --quantize {partner[t]} speed = prefill {g['prefill_tokens_per_s'] / s['prefill_tokens_per_s']:.2f}x, "
              f"decode {g['decode_tokens_per_s'] / s['decode_tokens_per_s']:.2f}x (wall); "
              f"prefill {s['prefill_cpu_s'] / g['prefill_cpu_s']:.2f}x, decode {s['decode_cpu_s'] / g['decode_cpu_s']:.2f}x (CPU time)")


if __name__ == "__main__":
    main()
