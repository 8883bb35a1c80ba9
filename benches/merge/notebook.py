"""The notebook approach users run today, for comparison with `chatvec merge`.

Loads base and chat in bf16 with transformers, subtracts the state dicts, frees them, loads the
target, adds, and `save_pretrained`s — the way the chat-vector notebooks do it (bf16 arithmetic,
so each element is rounded twice).

    python3 benches/merge/notebook.py BASE CHAT TARGET OUT
"""
import sys

import torch
from transformers import AutoModelForCausalLM

base_dir, chat_dir, target_dir, out_dir = sys.argv[1:5]
kw = dict(dtype=torch.bfloat16, low_cpu_mem_usage=True)
base = AutoModelForCausalLM.from_pretrained(base_dir, **kw)
chat = AutoModelForCausalLM.from_pretrained(chat_dir, **kw)
chat_vector = {k: chat.state_dict()[k] - v for k, v in base.state_dict().items()}
del base, chat
target = AutoModelForCausalLM.from_pretrained(target_dir, **kw)
with torch.no_grad():
    for k, v in target.state_dict().items():
        if k in chat_vector and chat_vector[k].shape == v.shape:
            v.add_(chat_vector[k])
target.save_pretrained(out_dir)
