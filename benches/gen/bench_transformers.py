"""Prefill and decode speed of Python transformers (torch, CPU, float32) on the same synthetic
1B-shaped Llama as crates/chatvec-gen/examples/bench_gen.rs. Prints one JSON record.

    python3 benches/gen/bench_transformers.py [--prompt 128] [--new 32] [--layers 16]
"""

import argparse
import inspect
import json
import os
import time

import torch
from transformers import LlamaConfig, LlamaForCausalLM


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompt", type=int, default=128)
    ap.add_argument("--new", type=int, default=32)
    ap.add_argument("--layers", type=int, default=16)
    a = ap.parse_args()

    threads = os.cpu_count() or 1
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    cfg = LlamaConfig(
        hidden_size=2048, intermediate_size=8192, num_hidden_layers=a.layers,
        num_attention_heads=32, num_key_value_heads=8, head_dim=64, vocab_size=128256,
        rms_norm_eps=1e-5, max_position_embeddings=131072, tie_word_embeddings=True,
        rope_theta=500000.0,
        rope_scaling={"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
                      "high_freq_factor": 4.0, "original_max_position_embeddings": 8192},
    )
    t0 = time.perf_counter()
    model = LlamaForCausalLM(cfg).to(torch.float32).eval()
    params = sum(p.numel() for p in model.parameters())
    print(f"built {params / 1e9:.2f}B-parameter model in {time.perf_counter() - t0:.1f} s",
          file=__import__("sys").stderr)

    # transformers 5.2x renamed `past_key_values` to `cache`; accept either.
    cache_kw = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"

    def cache_of(out):
        return getattr(out, "cache", None) or out.past_key_values

    prompt = torch.tensor([[1000 + (k * 7919) % 100_000 for k in range(a.prompt)]])
    with torch.inference_mode():
        model(prompt[:, :8], use_cache=True, logits_to_keep=1)  # warm-up

        t = time.perf_counter()
        out = model(prompt, use_cache=True, logits_to_keep=1)
        prefill_s = time.perf_counter() - t
        past = cache_of(out)
        nxt = out.logits[:, -1].argmax(-1, keepdim=True)

        t = time.perf_counter()
        for _ in range(a.new):
            out = model(nxt, use_cache=True, **{cache_kw: past})
            past = cache_of(out)
            nxt = out.logits[:, -1].argmax(-1, keepdim=True)
        decode_s = time.perf_counter() - t

    print(json.dumps({
        "impl": "transformers",
        "versions": {"torch": torch.__version__, "transformers": __import__("transformers").__version__},
        "params": params,
        "threads": threads,
        "prompt_tokens": a.prompt,
        "new_tokens": a.new,
        "prefill_s": prefill_s,
        "prefill_tokens_per_s": a.prompt / prefill_s,
        "decode_tokens_per_s": a.new / decode_s,
    }))


if __name__ == "__main__":
    main()
