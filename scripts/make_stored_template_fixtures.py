"""Records which chat template transformers finds in a model directory, for chatvec-format's
test of `modelfiles::chat_template` and `ChatTemplate::pick`
(the tests of crates/chatvec-format/src/modelfiles.rs).

Each case is a model directory's template files (chat_template.jinja and/or tokenizer_config.json);
the script loads it with transformers (the tokenizer is the llama-tiny fixture's) and records
`get_chat_template()` and `get_chat_template(tools=[...])`, or that transformers has no template
or refuses (the Rust side must then refuse too, with an error naming the file).

Run: CHATVEC_PYTHON=/work/venv/bin/python; $CHATVEC_PYTHON scripts/make_stored_template_fixtures.py
Writes fixtures/stored-templates/cases.json.
"""

import json
import pathlib
import shutil
import tempfile

import transformers
from transformers import PreTrainedTokenizerFast

ROOT = pathlib.Path(__file__).resolve().parent.parent
OUT = ROOT / "fixtures" / "stored-templates" / "cases.json"
TOKENIZER = ROOT / "fixtures" / "llama-tiny" / "tokenizer" / "tokenizer.json"
TOOLS = [{"type": "function", "function": {"name": "f", "parameters": {}}}]

CASES = {
    "none": {},
    "null_in_config": {"tokenizer_config": {"chat_template": None}},
    "string_in_config": {"tokenizer_config": {"chat_template": "CONFIG"}},
    "empty_string_in_config": {"tokenizer_config": {"chat_template": ""}},
    "jinja_file_wins_over_config": {"jinja": "FILE", "tokenizer_config": {"chat_template": "CONFIG"}},
    "empty_jinja_file_wins_over_config": {"jinja": "", "tokenizer_config": {"chat_template": "CONFIG"}},
    "jinja_file_wins_over_named_list": {
        "jinja": "FILE",
        "tokenizer_config": {"chat_template": [{"name": "tool_use", "template": "TOOLS"}]},
    },
    "named_list_default_and_tool_use": {
        "tokenizer_config": {
            "chat_template": [
                {"name": "tool_use", "template": "TOOLS"},
                {"name": "default", "template": "DEFAULT"},
                {"name": "rag", "template": "RAG"},
            ]
        }
    },
    "named_list_default_only": {"tokenizer_config": {"chat_template": [{"name": "default", "template": "DEFAULT"}]}},
    "named_list_repeated_name_last_wins": {
        "tokenizer_config": {
            "chat_template": [{"name": "default", "template": "FIRST"}, {"name": "default", "template": "LAST"}]
        }
    },
    "named_list_without_default": {
        "tokenizer_config": {
            "chat_template": [{"name": "tool_use", "template": "TOOLS"}, {"name": "rag", "template": "RAG"}]
        }
    },
    "empty_named_list": {"tokenizer_config": {"chat_template": []}},
    "named_object": {"tokenizer_config": {"chat_template": {"default": "DEFAULT", "tool_use": "TOOLS"}}},
}


def load(case: dict) -> PreTrainedTokenizerFast:
    d = pathlib.Path(tempfile.mkdtemp())
    shutil.copy(TOKENIZER, d / "tokenizer.json")
    config = {"tokenizer_class": "PreTrainedTokenizerFast", **case.get("tokenizer_config", {})}
    (d / "tokenizer_config.json").write_text(json.dumps(config))
    if "jinja" in case:
        (d / "chat_template.jinja").write_text(case["jinja"])
    return PreTrainedTokenizerFast.from_pretrained(d)


def pick(tok: PreTrainedTokenizerFast, tools) -> dict:
    if tok.chat_template is None:
        return {"none": True}
    try:
        return {"template": tok.get_chat_template(tools=tools)}
    except ValueError:
        return {"refused": True}


def main() -> None:
    cases = []
    for name, case in CASES.items():
        tok = load(case)
        cases.append({"name": name, **case, "without_tools": pick(tok, None), "with_tools": pick(tok, TOOLS)})
    OUT.write_text(json.dumps({"transformers": transformers.__version__, "cases": cases}, indent=1, ensure_ascii=False) + "\n")
    print(f"{OUT}: {len(cases)} cases")


if __name__ == "__main__":
    main()
