"""Renders real chat templates with transformers' apply_chat_template, for chatvec's byte-for-byte
template test (crates/chatvec-gen/tests/real_templates.rs).

The templates in fixtures/chat-templates/*.jinja are the models' published chat templates:
llama-3.1, llama-3.2, qwen2.5 and gemma-2 copied from llama.cpp's models/templates (which
fetches them from the models' tokenizer_config.json); llama-3, mistral-v0.3, exaone-3.5 and solar
(the template of SOLAR-10.7B-Instruct, which EEVE-Korean builds on) written from their
tokenizer_config.json. No hub access: the tokenizer is the llama-tiny fixture's, with each
model's special tokens set. strftime_now reads a fixed clock (FIXED_NOW).

Run: CHATVEC_PYTHON=/work/venv/bin/python; $CHATVEC_PYTHON scripts/make_template_fixtures.py
Writes fixtures/chat-templates/cases.json.
"""

import datetime
import json
import pathlib

import transformers
from transformers import PreTrainedTokenizerFast
from transformers.utils import chat_template_utils

ROOT = pathlib.Path(__file__).resolve().parent.parent
DIR = ROOT / "fixtures" / "chat-templates"
TOKENIZER = ROOT / "fixtures" / "llama-tiny" / "tokenizer" / "tokenizer.json"
# 2025-03-05 09:05:00 UTC, as Unix seconds (the Rust test sets the same clock).
FIXED_NOW = 1741165500

SPECIAL = {
    "llama-3": {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"},
    "llama-3.1": {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"},
    "llama-3.2": {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"},
    "mistral-v0.3": {"bos_token": "<s>", "eos_token": "</s>"},
    "qwen2.5": {"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"},
    "gemma-2": {"bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>"},
    "exaone-3.5": {"bos_token": "[BOS]", "eos_token": "[|endofturn|]"},
    "solar": {"bos_token": "<s>", "eos_token": "</s>"},
}

SYSTEM = {"role": "system", "content": "친절한 챗봇으로서 한국어로 답하세요.\nBe brief."}
USER = {"role": "user", "content": "  피보나치 수열이 뭐야?  "}
ASSISTANT = {"role": "assistant", "content": "1, 1, 2, 3, 5, 8 ... 앞의 두 수의 합입니다. "}
USER2 = {"role": "user", "content": "What about \"Lucas\" numbers? {braces} & <tags>"}
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Current temperature of a city, in °C",
            "parameters": {
                "type": "object",
                "properties": {
                    "city": {"type": "string", "description": "e.g. 서울"},
                    "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                    "precision": {"type": "number", "default": 1e-07},
                },
                "required": ["city"],
            },
        },
    }
]
TOOL_TURNS = [
    {"role": "user", "content": "서울 날씨 어때?"},
    {
        "role": "assistant",
        "content": "",
        "tool_calls": [
            {"id": "call12345", "type": "function",
             "function": {"name": "get_weather", "arguments": {"city": "서울", "unit": "celsius"}}}
        ],
    },
    {"role": "tool", "tool_call_id": "call12345", "name": "get_weather", "content": "22.5"},
]

CONVERSATIONS = {
    "user": [USER],
    "system_user": [SYSTEM, USER],
    "multi_turn": [SYSTEM, USER, ASSISTANT, USER2],
    "multi_turn_no_system": [USER, ASSISTANT, USER2],
    "tools": [USER],
    "tool_call_and_result": TOOL_TURNS,
}


class FixedClock(datetime.datetime):
    @classmethod
    def now(cls, tz=None):
        return datetime.datetime.fromtimestamp(FIXED_NOW, tz=datetime.timezone.utc).replace(tzinfo=tz)


def render(tokenizer, template, conversation, tools, add_generation_prompt):
    try:
        text = tokenizer.apply_chat_template(
            conversation, tools=tools, chat_template=template, tokenize=False,
            add_generation_prompt=add_generation_prompt,
        )
        return {"output": text}
    except Exception as e:  # the template refused the conversation (raise_exception)
        return {"error": str(e)}


def main():
    chat_template_utils.datetime = FixedClock
    cases = []
    for name, special in SPECIAL.items():
        template = (DIR / f"{name}.jinja").read_text()
        tokenizer = PreTrainedTokenizerFast(tokenizer_file=str(TOKENIZER), **special)
        for conv_name, conversation in CONVERSATIONS.items():
            tools = TOOLS if conv_name.startswith("tool") else None
            for gen in (True, False):
                case = {"template": name, "special_tokens": special, "conversation": conv_name,
                        "messages": conversation, "tools": tools, "add_generation_prompt": gen}
                case.update(render(tokenizer, template, conversation, tools, gen))
                cases.append(case)
    out = {"transformers": transformers.__version__, "now_unix": FIXED_NOW, "cases": cases}
    (DIR / "cases.json").write_text(json.dumps(out, ensure_ascii=False, indent=1) + "\n")
    print(f"{len(cases)} cases, {sum('error' in c for c in cases)} refused by their template")


if __name__ == "__main__":
    main()
