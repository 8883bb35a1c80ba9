"""Tiny Mistral, Qwen2 and Gemma checkpoints *with tokenizers* for the GGUF export tests
(crates/chatvec-gguf/tests/data/{mistral,qwen2,gemma}). Random weights; tokenizers trained here on
bundled text: SentencePiece BPE with byte fallback for Mistral and Gemma (tokenizer.model plus the
tokenizer.json transformers derives from it), byte-level BPE with Qwen2's split regex for Qwen2.
Run once by hand; the output is committed.

    /work/venv/bin/python scripts/gguf/make_models.py
"""

import io
import json
import os

import sentencepiece as spm
import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (AutoTokenizer, GemmaConfig, GemmaForCausalLM,
                          MistralConfig, MistralForCausalLM, PreTrainedTokenizerFast, Qwen2Config,
                          Qwen2ForCausalLM)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OUT = os.path.join(ROOT, "crates/chatvec-gguf/tests/data")
TEXT = open(os.path.join(ROOT, "data/lab/english.txt"), encoding="utf-8").read()[:200_000] + \
    open(os.path.join(ROOT, "data/korean/constitution.txt"), encoding="utf-8").read()[:100_000]
VOCAB = 512
COMMON = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=256, num_hidden_layers=2,
              num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
              rms_norm_eps=1e-6)
QWEN2_REGEX = r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
MISTRAL_TEMPLATE = "{{ bos_token }}{% for message in messages %}{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}{% else %}{{ message['content'] + eos_token }}{% endif %}{% endfor %}"
QWEN2_TEMPLATE = "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
GEMMA_TEMPLATE = "{{ bos_token }}{% for message in messages %}{% set role = 'model' if message['role'] == 'assistant' else message['role'] %}{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}"


def train_spm(pieces, user_symbols):
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(TEXT[:200_000].splitlines()), model_writer=buf, vocab_size=VOCAB, model_type="bpe",
        byte_fallback=True, character_coverage=0.98, hard_vocab_limit=False, user_defined_symbols=user_symbols,
        unk_id=pieces["unk"], bos_id=pieces["bos"], eos_id=pieces["eos"], pad_id=pieces.get("pad", -1),
        unk_piece="<unk>", bos_piece=pieces.get("bos_piece", "<s>"), eos_piece=pieces.get("eos_piece", "</s>"),
        pad_piece="<pad>", add_dummy_prefix=True, split_digits=True, allow_whitespace_only_pieces=True,
        remove_extra_whitespaces=False, normalization_rule_name="identity")
    return buf.getvalue()


def spm_tokenizer(path, config):
    """transformers' tokenizer for the tokenizer.model in `path` (it derives tokenizer.json)."""
    json.dump(config, open(os.path.join(path, "tokenizer_config.json"), "w"))
    return AutoTokenizer.from_pretrained(path)


def randomise(model, gemma=False):
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "norm" in n or n.endswith("bias"):
                p.copy_(torch.randn_like(p) * 0.3 + (0.0 if gemma or n.endswith("bias") else 1.0))
            else:
                p.copy_(torch.randn_like(p) * 0.15)


def save(name, model, tok, dtype, gen):
    out = os.path.join(OUT, name)
    model.to(dtype).save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    tc_path = os.path.join(out, "tokenizer_config.json")
    tc = json.load(open(tc_path))
    tc.pop("vocab_file", None)  # an absolute path of this machine
    json.dump(tc, open(tc_path, "w"), indent=2)
    with open(os.path.join(out, "generation_config.json"), "w") as f:
        json.dump(gen, f, indent=2)
    print(name, sorted(os.listdir(out)))


def mistral():
    path = os.path.join(OUT, "mistral")
    os.makedirs(path, exist_ok=True)
    open(os.path.join(path, "tokenizer.model"), "wb").write(train_spm({"unk": 0, "bos": 1, "eos": 2}, []))
    tok = spm_tokenizer(path, {"tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "</s>",
                               "unk_token": "<unk>", "add_bos_token": True, "add_eos_token": False})
    tok.chat_template = MISTRAL_TEMPLATE
    torch.manual_seed(11)
    cfg = MistralConfig(**COMMON, sliding_window=4096, rope_theta=10000.0, bos_token_id=1, eos_token_id=2,
                        tie_word_embeddings=False)
    m = MistralForCausalLM(cfg)
    randomise(m)
    save("mistral", m, tok, torch.bfloat16, {"bos_token_id": 1, "eos_token_id": 2})


def gemma():
    path = os.path.join(OUT, "gemma")
    os.makedirs(path, exist_ok=True)
    model = train_spm({"pad": 0, "eos": 1, "bos": 2, "unk": 3, "bos_piece": "<bos>", "eos_piece": "<eos>"},
                      # Gemma's layout: <mask>=4 ... <start_of_turn>=106, <end_of_turn>=107 (the
                      # converter writes eot=107 for every Gemma).
                      ["<mask>", "<2mass>", "[@BOS@]"] + [f"<unused{i}>" for i in range(99)]
                      + ["<start_of_turn>", "<end_of_turn>"])
    open(os.path.join(path, "tokenizer.model"), "wb").write(model)
    tok = spm_tokenizer(path, {"tokenizer_class": "GemmaTokenizer", "bos_token": "<bos>", "eos_token": "<eos>",
                               "unk_token": "<unk>", "pad_token": "<pad>", "add_bos_token": True})
    tok.chat_template = GEMMA_TEMPLATE
    torch.manual_seed(12)
    cfg = GemmaConfig(**COMMON, head_dim=16, hidden_activation="gelu_pytorch_tanh", pad_token_id=0,
                      bos_token_id=2, eos_token_id=1)
    m = GemmaForCausalLM(cfg)
    randomise(m, gemma=True)
    eot = tok.convert_tokens_to_ids("<end_of_turn>")
    save("gemma", m, tok, torch.float32, {"bos_token_id": 2, "eos_token_id": [1, eot], "pad_token_id": 0})


def qwen2():
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    t = Tokenizer(models.BPE())
    t.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_REGEX), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False, trim_offsets=False)])
    t.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB - len(specials), initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    t.train_from_iterator(TEXT.splitlines(), trainer)
    t.add_special_tokens(specials)
    tok = PreTrainedTokenizerFast(tokenizer_object=t, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    tok.chat_template = QWEN2_TEMPLATE
    torch.manual_seed(13)
    vocab = len(tok)
    cfg = Qwen2Config(**{**COMMON, "vocab_size": vocab}, tie_word_embeddings=True, rope_theta=1e6,
                      bos_token_id=None, eos_token_id=tok.convert_tokens_to_ids("<|im_end|>"))
    m = Qwen2ForCausalLM(cfg)
    randomise(m)
    end = tok.convert_tokens_to_ids("<|endoftext|>")
    save("qwen2", m, tok, torch.float32, {"eos_token_id": [tok.eos_token_id, end], "pad_token_id": end})


mistral()
qwen2()
gemma()
