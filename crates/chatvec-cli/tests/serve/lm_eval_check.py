"""lm-evaluation-harness 0.4.13 against `chatvec serve`, run through its own command line
(`lm_eval ...`) in this process, with its API model's calls observed (not changed):

- loglikelihood: `--model local-completions` on tasks/chatvec_tiny_mc.yaml. Every item's
  loglikelihood lm-eval computed from the server's answers is compared with transformers on the
  same token ids (the ids lm-eval sent), and so is the accuracy. Every prompt position of every
  server answer is compared too.
- generate: `--model local-chat-completions` on tasks/chatvec_tiny_gen.yaml, end to end.

Prints one JSON record. usage: lm_eval_check.py loglikelihood|generate BASE_URL MODEL MODEL_DIR OUT_DIR
"""
import glob
import json
import os
import sys

mode, base_url, model, model_dir, out_dir = sys.argv[1:6]
tasks_dir = os.path.join(os.path.dirname(os.path.abspath(__file__)), "tasks")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ["HF_DATASETS_CACHE"] = os.path.join(out_dir, "datasets")
os.chdir(tasks_dir)

import lm_eval.__main__  # noqa: E402
from lm_eval.models.api_models import TemplateAPI  # noqa: E402

calls, pairs = [], {}
real_model_call, real_ll_tokens = TemplateAPI.model_call, TemplateAPI._loglikelihood_tokens


def model_call(self, messages, *args, **kwargs):
    out = real_model_call(self, messages, *args, **kwargs)
    calls.append({"messages": messages, "generate": kwargs.get("generate", True), "output": out})
    return out


def ll_tokens(self, requests, **kwargs):
    results = real_ll_tokens(self, requests, **kwargs)
    for (key, ctx, cont), res in zip(requests, results):
        pairs[tuple(key)] = (list(ctx), list(cont), res)
    return results


TemplateAPI.model_call, TemplateAPI._loglikelihood_tokens = model_call, ll_tokens

if mode == "loglikelihood":
    lm, task = "local-completions", "chatvec_tiny_mc"
    args = (f"model={model},base_url={base_url}/completions,tokenizer_backend=huggingface,tokenizer={model_dir},"
            "num_concurrent=1,max_retries=1,max_length=256")
else:
    lm, task = "local-chat-completions", "chatvec_tiny_gen"
    args = f"model={model},base_url={base_url}/chat/completions,num_concurrent=1,max_retries=1"
sys.argv = ["lm_eval", "--model", lm, "--model_args", args, "--tasks", task, "--include_path", tasks_dir,
            "--output_path", out_dir, "--log_samples", "--seed", "1234"]
if mode == "generate":
    sys.argv.append("--apply_chat_template")
lm_eval.__main__.cli_evaluate()

results_file = sorted(glob.glob(os.path.join(out_dir, "**", "results_*.json"), recursive=True))[-1]
samples_file = sorted(glob.glob(os.path.join(out_dir, "**", f"samples_{task}_*.jsonl"), recursive=True))[-1]
results = json.load(open(results_file))["results"][task]
samples = [json.loads(line) for line in open(samples_file)]

if mode == "generate":
    print(json.dumps({"results": results, "responses": [s["filtered_resps"] for s in samples],
                      "requests": [c["messages"] for c in calls if c["generate"]],
                      "answers": [c["output"]["choices"][0]["message"]["content"] for c in calls if c["generate"]]},
                     ensure_ascii=False))
    sys.exit(0)

import torch  # noqa: E402
from transformers import AutoModelForCausalLM  # noqa: E402

hf = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()


def token_logprobs(ids):
    with torch.no_grad():
        logits = hf(torch.tensor([ids])).logits[0].double()
    lp = torch.log_softmax(logits, dim=-1)
    return [lp[i - 1, ids[i]].item() for i in range(1, len(ids))], lp


# Every prompt position of every answer: server vs transformers on the ids it received.
worst_position = 0.0
for call in calls:
    for ids, choice in zip(call["messages"], call["output"]["choices"]):
        ref, _ = token_logprobs(ids)
        got = choice["logprobs"]["token_logprobs"]
        assert got[0] is None and len(got) == len(ids) + 1, (len(got), len(ids))
        worst_position = max(worst_position, max(abs(a - b) for a, b in zip(got[1:len(ids)], ref)))

# Every item: lm-eval's loglikelihood and greediness vs transformers', then the accuracy.
worst_item, items, correct = 0.0, 0, 0
for s in samples:
    lls = []
    args = [(a["arg_0"], a["arg_1"]) for _, a in sorted(s["arguments"].items(), key=lambda kv: int(kv[0][9:]))]
    for ctx_text, cont_text in args:
        ctx, cont, (ll, greedy) = pairs[(ctx_text, cont_text)]
        ref, lp = token_logprobs(ctx + cont)
        ref_ll = sum(ref[len(ctx) - 1:])
        ref_greedy = all(lp[len(ctx) - 1 + i].argmax().item() == t for i, t in enumerate(cont))
        worst_item = max(worst_item, abs(ll - ref_ll))
        assert greedy == ref_greedy, (ctx_text, cont_text)
        lls.append(ref_ll)
        items += 1
    correct += int(max(range(len(lls)), key=lambda i: lls[i]) == int(s["target"]))
print(json.dumps({"calls": len(calls), "items": items, "docs": len(samples), "worst_position": worst_position,
                  "worst_item": worst_item, "acc_lm_eval": results["acc,none"], "acc_transformers": correct / len(samples)}))
