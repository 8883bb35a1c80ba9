"""Writes the seeds of fuzz/corpus/gguf: small GGUF files from gguf-py's GGUFWriter (an
independent writer) and hostile variants of them, one fault each (issue 20).

    python scripts/gguf/make_fuzz_seeds.py fuzz/corpus/gguf
"""
import struct
import sys
from pathlib import Path

import numpy as np
import gguf


def good(path, alignment=None):
    w = gguf.GGUFWriter(str(path), "llama")
    if alignment:
        w.add_custom_alignment(alignment)
    w.add_block_count(1)
    w.add_embedding_length(32)
    w.add_head_count(2)
    w.add_rope_freq_base(10000.0)
    w.add_tokenizer_model("llama")
    w.add_token_list(["<unk>", "<s>", "</s>", "a", "b"])
    w.add_token_scores([0.0, 0.0, 0.0, -1.0, -2.0])
    w.add_token_types([2, 3, 3, 1, 1])
    w.add_array("general.tags", ["x"] * 50)
    w.add_tensor("token_embd.weight", np.arange(5 * 32, dtype=np.float32).reshape(5, 32))
    q = gguf.quants.quantize(np.linspace(-1, 1, 64, dtype=np.float32).reshape(2, 32), gguf.GGMLQuantizationType.Q8_0)
    w.add_tensor("blk.0.attn_q.weight", q, raw_shape=q.shape, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
    w.add_tensor("blk.0.attn_k.weight", np.zeros((2, 32), dtype=np.float16))
    w.add_tensor("output_norm.weight", np.ones(32, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path.read_bytes()


def after(b, s):
    needle = struct.pack("<Q", len(s)) + s.encode()
    return b.index(needle) + len(needle)


def field(b, name):
    """(type position, offset position) of tensor `name`."""
    at = after(b, name)
    n_dims = struct.unpack_from("<I", b, at)[0]
    t = at + 4 + 8 * n_dims
    return t, t + 4


def main(out):
    out = Path(out)
    base = good(out / "good.gguf")
    good(out / "good-align64.gguf", 64)
    b = bytearray(base)
    variants = {}
    t, o = field(base, "blk.0.attn_q.weight")
    v = bytearray(b); struct.pack_into("<Q", v, o, struct.unpack_from("<Q", b, o)[0] + 8); variants["unaligned"] = v
    v = bytearray(b); struct.pack_into("<Q", v, o, 0); variants["overlap"] = v
    v = bytearray(b); struct.pack_into("<I", v, t, 1); variants["relabelled"] = v
    v = bytearray(b); struct.pack_into("<I", v, t, 16); variants["iq2_xxs"] = v
    v = bytearray(b); i = after(b, "blk.0.attn_k.weight") - len("attn_k.weight"); v[i:i + 6] = b"attn_q"
    variants["name-twice"] = v
    v = bytearray(b); i = after(b, "llama.rope.freq_base"); struct.pack_into("<f", v, i + 4, float("nan")); variants["nan"] = v
    v = bytearray(b[:24]); struct.pack_into("<Q", v, 16, struct.unpack_from("<Q", b, 16)[0] + 1)
    v += struct.pack("<Q", 17) + b"general.alignment" + struct.pack("<II", 4, 0) + b[24:]; variants["alignment-zero"] = v
    v = bytearray(b); struct.pack_into("<I", v, 4, 3 << 24); variants["big-endian"] = v
    v = bytearray(b); struct.pack_into("<Q", v, 8, 1 << 60); variants["tensor-count"] = v
    variants["truncated"] = b[: len(b) - 7]
    v = bytearray(b); i = after(b, "general.tags"); struct.pack_into("<I", v, i + 4, 9); variants["nested-array"] = v
    for name, data in variants.items():
        (out / f"{name}.gguf").write_bytes(bytes(data))


if __name__ == "__main__":
    main(sys.argv[1])
