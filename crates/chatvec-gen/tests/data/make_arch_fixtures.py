"""Writes tiny random Mistral, Qwen2 and Gemma checkpoints with transformers' float32 logits,
for tests/architectures.rs. Run once by hand (python3 + torch + transformers); the output is
committed, the tests never run Python.

    python3 crates/chatvec-gen/tests/data/make_arch_fixtures.py
"""

import json
import os

import torch
import transformers
from transformers import (GemmaConfig, GemmaForCausalLM, MistralConfig, MistralForCausalLM,
                          Qwen2Config, Qwen2ForCausalLM)

HERE = os.path.dirname(os.path.abspath(__file__))
COMMON = dict(vocab_size=96, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
              num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
              rms_norm_eps=1e-6)
MODELS = {
    # sliding_window 5 < the 12 input tokens, so the window mask matters.
    "mistral": (MistralForCausalLM, MistralConfig(**COMMON, sliding_window=5, rope_theta=10000.0)),
    "qwen2": (Qwen2ForCausalLM, Qwen2Config(**COMMON, tie_word_embeddings=True, rope_theta=1e6)),
    "gemma": (GemmaForCausalLM, GemmaConfig(**COMMON, head_dim=16, hidden_activation="gelu_pytorch_tanh")),
}
INPUT_IDS = [2, 17, 33, 5, 90, 41, 41, 7, 63, 12, 0, 88]

for name, (cls, cfg) in MODELS.items():
    torch.manual_seed(7)
    cfg._attn_implementation = "eager"
    model = cls(cfg).to(torch.float32).eval()
    with torch.no_grad():
        # Norm weights start at 1 (Gemma: 0); randomise them so the norm code is exercised.
        for n, p in model.named_parameters():
            if "norm" in n or n.endswith("bias"):
                p.copy_(torch.randn_like(p) * 0.5 + (0.0 if name == "gemma" or n.endswith("bias") else 1.0))
            else:
                p.copy_(torch.randn_like(p) * 0.2)
        logits = model(torch.tensor([INPUT_IDS])).logits[0]
    out = os.path.join(HERE, name)
    model.save_pretrained(out, safe_serialization=True)
    with open(os.path.join(out, "expected.json"), "w") as f:
        json.dump({"transformers": transformers.__version__, "torch": torch.__version__,
                   "input_ids": INPUT_IDS, "logits": logits.tolist()}, f)
    print(name, logits.shape)
