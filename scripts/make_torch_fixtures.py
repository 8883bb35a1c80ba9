#!/usr/bin/env python3
"""Writes the PyTorch checkpoint fixtures read by crates/chatvec-pickle's tests.

Run once from the repository root with real torch (CPU build is enough) and safetensors:

    pip install torch safetensors
    python3 scripts/make_torch_fixtures.py

Everything lands in crates/chatvec-pickle/tests/data/. Each `X.bin` that the reader must
accept has a twin `X.safetensors` holding the same tensors (cloned, contiguous), so the Rust test
can compare the bytes it finds through its offsets with the expected values exactly. The files are
checked into git; torch.save embeds a random serialization id, so rerunning changes their bytes
but not their contents.
"""

import collections
import io
import json
import os
import pickle
import shutil
import zipfile

import torch
from safetensors import safe_open
from safetensors.torch import save_file

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "crates", "chatvec-pickle", "tests", "data")
LLAMA = os.path.join(ROOT, "fixtures", "llama-tiny", "target")


def twin(sd, name):
    """The expected tensors as safetensors (separate, contiguous copies)."""
    save_file(
        {k: v.detach().contiguous().clone() for k, v in sd.items() if isinstance(v, torch.Tensor)},
        os.path.join(OUT, name),
    )


def check_roundtrip(path, sd):
    """torch.load must give back exactly what was saved (keeps the fixtures honest)."""
    back = torch.load(path, weights_only=True)
    for k, v in sd.items():
        if isinstance(v, torch.Tensor):
            assert back[k].dtype == v.dtype and torch.equal(back[k], v.detach()), k


def mixed():
    """Every supported dtype, a 0-dim and an empty tensor, views with storage offsets, tied names."""
    g = torch.Generator().manual_seed(0)
    base = torch.arange(24, dtype=torch.float32).reshape(6, 4)  # one storage, three views below
    tied = torch.randn(3, 4, generator=g).to(torch.bfloat16)
    sd = collections.OrderedDict()
    sd["w_bf16"] = torch.randn(3, 5, generator=g).to(torch.bfloat16)
    sd["w_f16"] = torch.randn(2, 3, generator=g).to(torch.float16)
    sd["w_f32"] = torch.randn(5, generator=g)
    sd["w_f64"] = torch.randn(2, 2, generator=g).to(torch.float64)
    sd["tail"] = base[2:]  # storage offset 8: torch saves the whole 24-element storage
    sd["head"] = base[:2]  # same storage, offset 0
    sd["row3"] = base[3]  # same storage, offset 12, 1-d
    sd["embed.weight"] = tied  # two names, one tensor (tied weights)
    sd["lm_head.weight"] = tied
    sd["position_ids"] = torch.arange(7, dtype=torch.int64).unsqueeze(0)  # an int64 buffer
    sd["i32"] = torch.tensor([-1, 2, -3], dtype=torch.int32)
    sd["i16"] = torch.tensor([-4, 5], dtype=torch.int16)
    sd["i8"] = torch.tensor([-6, 7], dtype=torch.int8)
    sd["u8"] = torch.tensor([8, 255], dtype=torch.uint8)
    sd["mask"] = torch.tensor([True, False, True])
    sd["scalar"] = torch.tensor(3.5)  # 0-dim
    sd["empty"] = torch.zeros(0, 3)  # no elements
    sd["col"] = torch.randn(4, 1, generator=g)  # size-1 dim: contiguous whatever its stride
    # A state dict carries `_metadata` (pickled as OrderedDict state, i.e. BUILD).
    sd._metadata = collections.OrderedDict({"": {"version": 1}})
    path = os.path.join(OUT, "mixed.bin")
    torch.save(sd, path)
    check_roundtrip(path, sd)
    twin(sd, "mixed.safetensors")


def params():
    """A real module's state_dict(keep_vars=True): Parameters (`_rebuild_parameter`), buffers."""
    torch.manual_seed(1)
    m = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.LayerNorm(3), torch.nn.Linear(3, 2, bias=False))
    m.register_buffer("inv_freq", torch.tensor([1.0, 0.5]))
    m = m.to(torch.bfloat16)
    sd = m.state_dict(keep_vars=True)
    path = os.path.join(OUT, "params.bin")
    torch.save(sd, path)
    check_roundtrip(path, sd)
    twin(sd, "params.safetensors")


def untyped_v3():
    """The newer spelling: a torch.UntypedStorage persistent id plus `_rebuild_tensor_v3(..., dtype)`.

    torch uses it for dtypes without a legacy storage class (uint16, float8...); here it is crafted
    for bf16 and f32 so the reader's handling of it can be checked against values. torch.load reads
    the result, which proves the crafted file is well-formed.
    """
    a = torch.tensor([[1.0, -2.0, 3.0], [0.5, 0.25, -0.125]], dtype=torch.bfloat16)
    b = torch.arange(6, dtype=torch.float32)

    class Storage:
        def __init__(self, key, t):
            self.key, self.t = key, t

    class Tensor:
        def __init__(self, storage, offset, size, stride, dtype):
            self.args = (storage, offset, size, stride, False, collections.OrderedDict(), dtype)

        def __reduce__(self):
            return (torch._utils._rebuild_tensor_v3, self.args)

    sa, sb = Storage("0", a), Storage("1", b)
    obj = collections.OrderedDict()
    obj["a"] = Tensor(sa, 0, (2, 3), (3, 1), torch.bfloat16)
    obj["b_tail"] = Tensor(sb, 2, (2, 2), (2, 1), torch.float32)

    class P(pickle.Pickler):
        def persistent_id(self, o):
            if isinstance(o, Storage):
                return ("storage", torch.UntypedStorage, o.key, "cpu", o.t.numel() * o.t.element_size())
            return None

    buf = io.BytesIO()
    P(buf, protocol=2).dump(obj)
    path = os.path.join(OUT, "untyped_v3.bin")
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        z.writestr("untyped_v3/data.pkl", buf.getvalue())
        z.writestr("untyped_v3/byteorder", "little")
        z.writestr("untyped_v3/data/0", a.view(torch.int16).numpy().tobytes())
        z.writestr("untyped_v3/data/1", b.numpy().tobytes())
        z.writestr("untyped_v3/version", "3\n")
    expected = {"a": a, "b_tail": b[2:].reshape(2, 2)}
    back = torch.load(path, weights_only=True)
    for k, v in expected.items():
        assert back[k].dtype == v.dtype and torch.equal(back[k], v), k
    twin(expected, "untyped_v3.safetensors")


def errors():
    """Checkpoints the reader must refuse with a clear message."""
    # A transposed (non-contiguous) tensor among fine ones.
    t = torch.arange(6, dtype=torch.float32).reshape(2, 3)
    torch.save({"ok": torch.ones(2), "transposed": t.t()}, os.path.join(OUT, "noncontig.bin"))
    # Pre-1.6 format: a bare pickle stream.
    torch.save({"w": torch.ones(2)}, os.path.join(OUT, "legacy.bin"), _use_new_zipfile_serialization=False)
    # A training checkpoint: the state dict nested under "model".
    torch.save({"model": {"w": torch.ones(2)}, "epoch": 3}, os.path.join(OUT, "nested.bin"))
    # uint16 is written with UntypedStorage + _rebuild_tensor_v3 + torch.uint16: not supported.
    torch.save({"ok": torch.ones(2), "u16": torch.tensor([1, 2], dtype=torch.uint16)}, os.path.join(OUT, "uint16.bin"))
    # A sparse tensor: an unknown rebuild function (torch._utils._rebuild_sparse_tensor).
    sp = torch.tensor([[0.0, 1.0], [2.0, 0.0]]).to_sparse()
    torch.save({"sparse": sp}, os.path.join(OUT, "sparse.bin"))
    # mixed.bin re-zipped with deflate: the bytes cannot be read in place.
    src = os.path.join(OUT, "mixed.bin")
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(os.path.join(OUT, "deflated.bin"), "w", zipfile.ZIP_DEFLATED) as zout:
        for info in zin.infolist():
            zout.writestr(info.filename, zin.read(info.filename))


def llama_sharded():
    """fixtures/llama-tiny/target as two HF-style .bin shards plus index, same names/shapes/values."""
    d = os.path.join(OUT, "llama-sharded")
    os.makedirs(d, exist_ok=True)
    shutil.copy(os.path.join(LLAMA, "config.json"), os.path.join(d, "config.json"))
    with safe_open(os.path.join(LLAMA, "model.safetensors"), "pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    for v in tensors.values():
        assert v.dtype == torch.bfloat16
    names = list(tensors)
    total = sum(v.numel() * v.element_size() for v in tensors.values())
    shards, cur, size = [], [], 0
    for k in names:
        cur.append(k)
        size += tensors[k].numel() * tensors[k].element_size()
        if size >= total / 2 and len(shards) == 0:
            shards.append(cur)
            cur = []
    shards.append(cur)
    assert len(shards) == 2 and all(shards)
    weight_map = {}
    for i, keys in enumerate(shards):
        fname = f"pytorch_model-{i + 1:05d}-of-{len(shards):05d}.bin"
        sd = collections.OrderedDict((k, tensors[k]) for k in keys)
        torch.save(sd, os.path.join(d, fname))
        check_roundtrip(os.path.join(d, fname), sd)
        weight_map.update({k: fname for k in keys})
    with open(os.path.join(d, "pytorch_model.bin.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)
        f.write("\n")


def main():
    os.makedirs(OUT, exist_ok=True)
    mixed()
    params()
    untyped_v3()
    errors()
    llama_sharded()
    for root, _, files in sorted(os.walk(OUT)):
        for name in sorted(files):
            p = os.path.join(root, name)
            print(f"{os.path.getsize(p):8d}  {os.path.relpath(p, ROOT)}")


if __name__ == "__main__":
    main()
