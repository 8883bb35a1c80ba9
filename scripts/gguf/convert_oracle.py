"""llama.cpp's convert_hf_to_gguf.py, run as the oracle for chatvec's GGUF export.

    python scripts/gguf/convert_oracle.py LLAMA_CPP_DIR MODEL_DIR --outfile OUT --outtype f16

Runs the converter unchanged except for one thing: the tiny fixture tokenizers are trained here,
so their pre-tokenizer hash (chkhsh) is in no table, and the converter would refuse them. When the
hash is unknown, the pre-tokenizer named by CHATVEC_GGUF_PRE (the one whose regex the fixture
copies: `llama-bpe` or `qwen2`) is used instead. The hash is printed either way
(`chatvec-chkhsh: ...`), so chatvec's own hash computation is checked against this one.

One more, where the converter refuses: a Gemma directory without tokenizer.model. Gemma's
set_vocab calls `_set_vocab_sentencepiece` with no fallback in this version; here it falls back to
`_set_vocab_llama_hf` (gguf-py's LlamaHfVocab reading tokenizer.json), as LlamaModel.set_vocab
does, so chatvec's export of such a directory has an oracle (crates/chatvec-cli/tests/gguf_export.rs).
"""

import ast
import inspect
import os
import re
import runpy
import sys
from hashlib import sha256
from pathlib import Path

llama_dir = Path(sys.argv.pop(1)).resolve()
sys.path.insert(0, str(llama_dir))
sys.path.insert(1, str(llama_dir / "gguf-py"))

import conversion.base as base  # noqa: E402

original = base.TextModel.get_vocab_base_pre
chktxt = ast.literal_eval(re.search(r"chktxt = ('.*')\n", inspect.getsource(original)).group(1))


def get_vocab_base_pre(self, tokenizer):
    print("chatvec-chkhsh:", sha256(str(tokenizer.encode(chktxt)).encode()).hexdigest(), flush=True)
    try:
        return original(self, tokenizer)
    except NotImplementedError:
        return os.environ["CHATVEC_GGUF_PRE"]


base.TextModel.get_vocab_base_pre = get_vocab_base_pre

original_spm = base.TextModel._set_vocab_sentencepiece


def set_vocab_sentencepiece(self, *args, **kwargs):
    if type(self).__name__ == "GemmaModel" and not (self.dir_model / "tokenizer.model").is_file():
        return self._set_vocab_llama_hf()
    return original_spm(self, *args, **kwargs)


base.TextModel._set_vocab_sentencepiece = set_vocab_sentencepiece
sys.argv[0] = str(llama_dir / "convert_hf_to_gguf.py")
runpy.run_path(sys.argv[0], run_name="__main__")
