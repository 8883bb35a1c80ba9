"""Writes a random Llama-3-8B-shaped bf16 model directory (safetensors shards) on a GPU machine,
with the fixture tokenizer and chat template, for benches/gen/gpu.sh. Random weights: only speed
is measured. Usage: python3 synth_gpu.py OUT_DIR [--layers 32]"""
import json, os, shutil, sys, time

import torch
from safetensors.torch import save_file

out = sys.argv[1]
layers = int(sys.argv[sys.argv.index("--layers") + 1]) if "--layers" in sys.argv else 32
H, I, NH, KV, HD, V = 4096, 14336, 32, 8, 128, 128256
cfg = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": H,
    "intermediate_size": I, "num_hidden_layers": layers, "num_attention_heads": NH,
    "num_key_value_heads": KV, "head_dim": HD, "vocab_size": V, "rms_norm_eps": 1e-5,
    "max_position_embeddings": 8192, "rope_theta": 500000.0, "tie_word_embeddings": False,
    "hidden_act": "silu", "bos_token_id": 2000, "eos_token_id": 2001, "torch_dtype": "bfloat16",
}
os.makedirs(out, exist_ok=True)
json.dump(cfg, open(os.path.join(out, "config.json"), "w"), indent=2)
src = os.path.join(os.path.dirname(__file__), "..", "..", "fixtures", "llama-tiny", "chat")
for f in ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "generation_config.json"]:
    shutil.copy(os.path.join(src, f), out)

t0 = time.time()
DEV = "cuda" if torch.cuda.is_available() else "cpu"  # cpu: only to try the script
g = torch.Generator(device=DEV).manual_seed(0)


def rand(*shape):
    return (torch.randn(*shape, generator=g, device=DEV, dtype=torch.float32) * 0.02).to(torch.bfloat16)


shapes = {"model.embed_tokens.weight": (V, H), "model.norm.weight": (H,), "lm_head.weight": (V, H)}
for l in range(layers):
    p = f"model.layers.{l}"
    shapes.update({
        f"{p}.input_layernorm.weight": (H,), f"{p}.post_attention_layernorm.weight": (H,),
        f"{p}.self_attn.q_proj.weight": (NH * HD, H), f"{p}.self_attn.k_proj.weight": (KV * HD, H),
        f"{p}.self_attn.v_proj.weight": (KV * HD, H), f"{p}.self_attn.o_proj.weight": (H, NH * HD),
        f"{p}.mlp.gate_proj.weight": (I, H), f"{p}.mlp.up_proj.weight": (I, H),
        f"{p}.mlp.down_proj.weight": (H, I),
    })
shards, cur, size = [], {}, 0
for name, shape in shapes.items():
    cur[name] = shape
    size += 2 * torch.Size(shape).numel()
    if size > 4_000_000_000:
        shards.append(cur); cur, size = {}, 0
if cur:
    shards.append(cur)
weight_map, total = {}, 0
for i, names in enumerate(shards):
    fname = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
    tensors = {}
    for n, s in names.items():
        t = torch.ones(s, dtype=torch.bfloat16) if len(s) == 1 else rand(*s).cpu()
        tensors[n] = t
        weight_map[n] = fname
        total += t.numel() * 2
    save_file(tensors, os.path.join(out, fname), metadata={"format": "pt"})
json.dump({"metadata": {"total_size": total}, "weight_map": weight_map},
          open(os.path.join(out, "model.safetensors.index.json"), "w"), indent=2)
print(f"wrote {total / 1e9:.1f} GB ({layers} layers) to {out} in {time.time() - t0:.0f} s", flush=True)
