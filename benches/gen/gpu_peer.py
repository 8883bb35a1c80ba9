"""Helper for benches/gen/gpu.sh.
  gpu_peer.py prompt MODEL_DIR OUT.json N   writes a one-message chat whose templated prompt is N tokens
  gpu_peer.py peer MODEL_DIR MESSAGES.json NEW   transformers bf16 on CUDA: prefill and decode speed
Prints one JSON line."""
import json, os, sys, time

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

mode, model_dir, path = sys.argv[1:4]
tok = AutoTokenizer.from_pretrained(model_dir)
root = os.path.join(os.path.dirname(__file__), "..", "..")

if mode == "prompt":
    n = int(sys.argv[4])
    words = open(os.path.join(root, "data", "korean", "constitution.txt"), encoding="utf-8").read().split()
    lo, hi = 1, len(words)
    def count(k):
        msgs = [{"role": "user", "content": " ".join(words[:k])}]
        return len(tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True, return_dict=False))
    while lo < hi:  # smallest word count whose prompt has at least n tokens
        mid = (lo + hi) // 2
        lo, hi = (mid + 1, hi) if count(mid) < n else (lo, mid)
    json.dump([{"role": "user", "content": " ".join(words[:lo])}], open(path, "w"), ensure_ascii=False)
    print(json.dumps({"prompt_tokens": count(lo), "words": lo}))
    sys.exit(0)

new = int(sys.argv[4])
DEV = "cuda" if torch.cuda.is_available() else "cpu"  # cpu: only to try the script


def sync():
    if DEV == "cuda":
        torch.cuda.synchronize()


def timed(fn):
    sync()
    t = time.time()
    r = fn()
    sync()
    return time.time() - t, r


msgs = json.load(open(path, encoding="utf-8"))
load_s, model = timed(lambda: AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16).to(DEV))
ids = tok.apply_chat_template(msgs, add_generation_prompt=True, return_tensors="pt", return_dict=True)["input_ids"].to(DEV)
with torch.inference_mode():
    first, _ = timed(lambda: model(ids))  # first use: cuBLAS handles, kernels
    prefill = sorted(timed(lambda: model(ids))[0] for _ in range(3))[1]
    gen = lambda n: model.generate(ids, max_new_tokens=n, min_new_tokens=n, do_sample=False)
    timed(lambda: gen(new))
    one, _ = timed(lambda: gen(1))
    total, out = timed(lambda: gen(new))
decode_tps = (out.shape[1] - ids.shape[1] - 1) / (total - one)
versions = {"torch": torch.__version__, "transformers": __import__("transformers").__version__}
print(json.dumps({"impl": "transformers", "versions": versions, "prompt_tokens": ids.shape[1], "load_s": load_s,
                  "first_forward_s": first, "prefill_s": prefill, "prefill_tokens_per_s": ids.shape[1] / prefill,
                  "decode_tokens_per_s": decode_tps}))
