"""Re-stores a GGUF file's matrices in other ggml types with gguf-py (an independent writer), and
writes gguf-py's dequantization of each result as an f32 GGUF beside it: the oracle files of
crates/chatvec-gen/tests/gguf_types.rs (issue 24, item 2).

    python scripts/gguf/requant.py SRC.gguf OUT_DIR TYPE...

TYPE is a ggml type name (Q4_0, Q5_1, Q4_K, F16, BF16, ...) or `mixed` (each matrix a different
type, as llama-quantize's _M/_S mixes do). For each TYPE it writes OUT_DIR/TYPE.gguf and
OUT_DIR/TYPE-dequantized.gguf. Matrices whose rows are not whole blocks stay F32, as
llama-quantize leaves them. gguf-py has no k-quant quantizer, so k-quant blocks are made from
seeded random bits with a small finite scale (any bits are a valid block); the oracle is gguf-py's
dequantization of those blocks, not the source weights.
"""
import sys
from pathlib import Path

import numpy as np
import gguf
from gguf import GGMLQuantizationType as Q, GGUFValueType as V

# Byte positions of the f16 scales in each k-quant block (ggml-common.h).
K_SCALES = {Q.Q2_K: (80, 82), Q.Q3_K: (108,), Q.Q4_K: (0, 2), Q.Q5_K: (0, 2), Q.Q6_K: (208,)}
MIX = [Q.Q2_K, Q.Q3_K, Q.Q4_K, Q.Q5_K, Q.Q6_K, Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1, Q.Q8_0, Q.F16, Q.BF16]


def k_blocks(rng, qtype, rows, cols):
    block, size = gguf.GGML_QUANT_SIZES[qtype]
    data = rng.integers(0, 256, size=(rows, cols // block, size), dtype=np.uint8)
    for at in K_SCALES[qtype]:
        scale = rng.uniform(0.002, 0.02, size=data.shape[:2]).astype(np.float16)
        data[:, :, at:at + 2] = scale.view(np.uint8).reshape(rows, cols // block, 2)
    return data.reshape(rows, -1)


def store(rng, values, qtype):
    rows, cols = values.shape
    block, _ = gguf.GGML_QUANT_SIZES[qtype]
    if cols % block:
        return values, Q.F32
    if qtype in K_SCALES:
        return k_blocks(rng, qtype, rows, cols), qtype
    if qtype == Q.F16:
        return values.astype(np.float16), qtype
    return gguf.quants.quantize(values, qtype), qtype


def copy_metadata(reader, writer):
    for name, field in reader.fields.items():
        if name.startswith("GGUF.") or name == "general.architecture":
            continue
        vtype = field.types[0]
        sub = field.types[-1] if vtype == V.ARRAY else None
        writer.add_key_value(name, field.contents(), vtype, sub)


def write(path, reader, tensors):
    w = gguf.GGUFWriter(str(path), reader.fields["general.architecture"].contents())
    copy_metadata(reader, w)
    for name, data, qtype, shape in tensors:
        w.add_tensor(name, data, raw_shape=data.shape if qtype != Q.F32 else None, raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def main(src, out_dir, types):
    reader = gguf.GGUFReader(src)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for name in types:
        rng = np.random.default_rng(0)
        stored, dequantized, mixed_count = [], [], {}
        for t in reader.tensors:
            values = gguf.quants.dequantize(t.data, t.tensor_type).reshape(tuple(reversed(t.shape.tolist())))
            values = np.ascontiguousarray(values, dtype=np.float32)
            if name == "mixed":
                fits = [q for q in MIX if values.shape[-1] % gguf.GGML_QUANT_SIZES[q][0] == 0]
                n = mixed_count[len(fits)] = mixed_count.get(len(fits), -1) + 1
                qtype = fits[n % len(fits)]
            else:
                qtype = Q[name]
            data, qtype = store(rng, values, qtype) if values.ndim == 2 else (values, Q.F32)
            stored.append((t.name, data, qtype, values.shape))
            back = gguf.quants.dequantize(data, qtype).reshape(values.shape).astype(np.float32)
            dequantized.append((t.name, back, Q.F32, values.shape))
        write(out / f"{name}.gguf", reader, stored)
        write(out / f"{name}-dequantized.gguf", reader, dequantized)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3:])
