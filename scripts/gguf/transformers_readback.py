"""Python transformers reads a chatvec GGUF back: every weight of
`AutoModelForCausalLM.from_pretrained(dir, gguf_file=...)` must equal the original checkpoint's,
rounded the way the GGUF stores it (f16 matrices, f32 vectors). Prints one JSON line.

    python scripts/gguf/transformers_readback.py MODEL_DIR FILE.gguf
"""

import json
import os
import sys

import torch
from transformers import AutoModelForCausalLM

model_dir, gguf = sys.argv[1], sys.argv[2]
original = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).state_dict()
loaded = AutoModelForCausalLM.from_pretrained(os.path.dirname(gguf), gguf_file=os.path.basename(gguf),
                                              dtype=torch.float32).state_dict()
differ = {}
for name, want in original.items():
    if name not in loaded:
        differ[name] = "missing"
        continue
    if want.dim() >= 2:
        want = want.to(torch.float16).to(torch.float32)
    got = loaded[name].to(torch.float32)
    if got.shape != want.shape:
        differ[name] = f"shape {list(got.shape)} vs {list(want.shape)}"
    elif not torch.equal(got, want):
        differ[name] = float((got - want).abs().max())
print(json.dumps({"tensors": len(original), "differ": differ}))
