"""Load time, prefill and decode speed of Python transformers (torch, CPU) on a model directory,
on the same prompt ids as crates/chatvec-gen/examples/bench_gen.rs (greedy). Prints one JSON record.

    python3 benches/gen/bench_transformers.py --model DIR [--dtype bf16] [--prompt 128] [--new 32]
Threads: OMP_NUM_THREADS (benches/gen/compare.py sets it).
"""

import argparse
import inspect
import json
import os
import time

import torch
from transformers import AutoModelForCausalLM


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--dtype", default="bf16", choices=["bf16", "f32"])
    ap.add_argument("--prompt", type=int, default=128)
    ap.add_argument("--new", type=int, default=32)
    a = ap.parse_args()

    threads = int(os.environ.get("OMP_NUM_THREADS", os.cpu_count() or 1))
    torch.set_num_threads(threads)
    t0 = time.perf_counter()
    dtype = {"bf16": torch.bfloat16, "f32": torch.float32}[a.dtype]
    model = AutoModelForCausalLM.from_pretrained(a.model, dtype=dtype).eval()
    load_s = time.perf_counter() - t0

    # transformers 5.2x renamed `past_key_values` to `cache`; accept either.
    cache_kw = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"

    def cache_of(out):
        return getattr(out, "cache", None) or out.past_key_values

    ids = [128000] + [1000 + (k * 7919) % 100_000 for k in range(a.prompt - 1)]
    prompt = torch.tensor([ids])
    tokens = []
    with torch.inference_mode():
        t = time.perf_counter()
        out = model(prompt, use_cache=True, logits_to_keep=1)
        prefill_s = time.perf_counter() - t
        past = cache_of(out)
        nxt = out.logits[:, -1].argmax(-1, keepdim=True)
        tokens.append(int(nxt))

        t = time.perf_counter()
        for _ in range(a.new):
            out = model(nxt, use_cache=True, **{cache_kw: past})
            past = cache_of(out)
            nxt = out.logits[:, -1].argmax(-1, keepdim=True)
            tokens.append(int(nxt))
        decode_s = time.perf_counter() - t

    print(json.dumps({
        "impl": "transformers",
        "versions": {"torch": torch.__version__, "transformers": __import__("transformers").__version__},
        "threads": threads,
        "prompt_tokens": a.prompt,
        "new_tokens": a.new,
        "load_s": load_s,
        "prefill_tokens_per_s": a.prompt / prefill_s,
        "decode_tokens_per_s": a.new / decode_s,
        "tokens": tokens[: a.new],
    }))


if __name__ == "__main__":
    main()
