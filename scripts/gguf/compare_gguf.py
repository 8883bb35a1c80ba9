"""Compares two GGUF files key for key and tensor for tensor with gguf-py's reader (the oracle of
crates/chatvec-cli/tests/gguf_export.rs).

    python scripts/gguf/compare_gguf.py A.gguf B.gguf

Prints one JSON line: {"keys_a": [...], "keys_b": [...], "differ": [keys whose values differ],
"tensors_a": n, "tensors_b": n, "tensors_differ": [names whose type, shape or bytes differ]}.
"""

import json
import sys

import numpy as np
from gguf import GGUFReader


def fields(reader):
    # GGUF.* are the header counts, not metadata.
    return {k: f.contents() for k, f in reader.fields.items() if not k.startswith("GGUF.")}


def tensors(reader):
    return {t.name: (int(t.tensor_type), [int(x) for x in t.shape], np.asarray(t.data).tobytes()) for t in reader.tensors}


a, b = GGUFReader(sys.argv[1]), GGUFReader(sys.argv[2])
fa, fb = fields(a), fields(b)
ta, tb = tensors(a), tensors(b)
print(json.dumps({
    "keys_a": list(fa), "keys_b": list(fb),
    "differ": [k for k in fa if k in fb and fa[k] != fb[k]],
    "tensors_a": [t.name for t in a.tensors], "tensors_b": [t.name for t in b.tensors],
    "tensors_differ": [n for n in ta if n in tb and ta[n] != tb[n]],
}))
