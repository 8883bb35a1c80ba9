"""Converts a fixture model to GGUF with llama.cpp's own convert_hf_to_gguf.py, as users do.

    python make_gguf.py LLAMA_CPP_DIR MODEL_DIR WORK_DIR OUTTYPE...

The fixtures' tokenizers are not ones the converter recognises, so a tiny sentencepiece model is
trained for the GGUF's vocabulary (the weights, which the test compares, do not depend on it).
Writes WORK_DIR/model-OUTTYPE.gguf for each OUTTYPE (f32, f16, bf16, q8_0).
"""

import json
import pathlib
import shutil
import subprocess
import sys

import sentencepiece as spm

llama_cpp, model, work = map(pathlib.Path, sys.argv[1:4])
work.mkdir(parents=True, exist_ok=True)
hf = work / "hf"
hf.mkdir(exist_ok=True)
cfg = json.loads((model / "config.json").read_text())
cfg.pop("sliding_window", None)
(hf / "config.json").write_text(json.dumps(cfg))
shutil.copy(model / "model.safetensors", hf / "model.safetensors")
text = hf / "text.txt"
text.write_text("\n".join(f"the cat sat on mat number {i} and ran to the dog {i * 7}" for i in range(200)))
spm.SentencePieceTrainer.train(input=str(text), model_prefix=str(hf / "tokenizer"), vocab_size=min(cfg["vocab_size"], 64),
                               model_type="bpe", minloglevel=2)
text.unlink()
(hf / "tokenizer.vocab").unlink()
env = {"PYTHONPATH": str(llama_cpp / "gguf-py"), "PATH": "/usr/bin:/bin"}
for outtype in sys.argv[4:]:
    out = work / f"model-{outtype}.gguf"
    subprocess.run([sys.executable, str(llama_cpp / "convert_hf_to_gguf.py"), str(hf), "--outtype", outtype,
                    "--outfile", str(out)], check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    print(out)
