"""Writes Llama-3's real 128k tokenizer as Hugging Face files (tokenizer.json,
tokenizer_config.json with the Llama-3 chat template, special_tokens_map.json) into a directory.

Meta's PyPI package `llama-models` ships the tokenizer as a tiktoken BPE file; transformers'
TikTokenConverter turns it into a tokenizer.json, as transformers does for Llama-3 checkpoints.
No model hub is involved.

    python benches/gen/make_llama3_tokenizer.py OUT_DIR
Needs: pip install tiktoken transformers (the wheel of llama-models==0.3.0 is fetched with
`pip download --no-deps`, not installed).
"""

import json
import pathlib
import subprocess
import sys
import tempfile
import zipfile

from transformers.convert_slow_tokenizer import TikTokenConverter

LLAMA_MODELS = "llama-models==0.3.0"
PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# llama_models/llama3/tokenizer.py: 12 named special tokens, then reserved ones up to 256.
NAMED = [
    "<|begin_of_text|>", "<|end_of_text|>", "<|reserved_special_token_0|>",
    "<|reserved_special_token_1|>", "<|finetune_right_pad_id|>", "<|step_id|>",
    "<|start_header_id|>", "<|end_header_id|>", "<|eom_id|>", "<|eot_id|>", "<|python_tag|>",
    "<|image|>",
]
SPECIAL = NAMED + [f"<|reserved_special_token_{2 + i}|>" for i in range(256 - len(NAMED))]
CHAT_TEMPLATE = (
    "{{- bos_token }}{%- for message in messages %}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] | trim + '<|eot_id|>' }}"
    "{%- endfor %}{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}"
)


def bpe_file(work: pathlib.Path) -> pathlib.Path:
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", LLAMA_MODELS, "-d", str(work)],
                   check=True)
    wheel = next(work.glob("llama_models-*.whl"))
    with zipfile.ZipFile(wheel) as z:
        z.extract("llama_models/llama3/tokenizer.model", work)
    return work / "llama_models/llama3/tokenizer.model"


def main():
    out = pathlib.Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        tok = TikTokenConverter(vocab_file=str(bpe_file(pathlib.Path(tmp))), pattern=PATTERN,
                                extra_special_tokens=SPECIAL).converted()
    assert tok.get_vocab_size() == 128256, tok.get_vocab_size()
    assert tok.token_to_id("<|eot_id|>") == 128009
    tok.save(str(out / "tokenizer.json"))
    (out / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<|begin_of_text|>",
        "eos_token": "<|eot_id|>", "model_max_length": 131072, "chat_template": CHAT_TEMPLATE,
        "clean_up_tokenization_spaces": True,
    }, indent=1))
    (out / "special_tokens_map.json").write_text(json.dumps(
        {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"}, indent=1))
    print(out / "tokenizer.json")


if __name__ == "__main__":
    main()
