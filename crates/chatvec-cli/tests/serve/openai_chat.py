"""The openai client against `chatvec serve`: one greedy chat answer, whole and streamed, with a
stop string and logprobs. Prints one JSON record for the Rust test to compare with
`chatvec generate --greedy`.

usage: openai_chat.py BASE_URL MODEL PROMPT MAX_TOKENS [STOP]
"""
import json
import sys

import openai

base_url, model, prompt, max_tokens = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
stop = sys.argv[5] if len(sys.argv) > 5 else None
client = openai.OpenAI(base_url=base_url, api_key="unused")
messages = [{"role": "user", "content": prompt}]

whole = client.chat.completions.create(model=model, messages=messages, temperature=0, max_tokens=max_tokens,
                                       logprobs=True, top_logprobs=3)
choice = whole.choices[0]
streamed, finish, usage = [], None, None
for chunk in client.chat.completions.create(model=model, messages=messages, temperature=0, max_tokens=max_tokens,
                                            stream=True, stream_options={"include_usage": True}):
    if chunk.usage is not None:
        usage = chunk.usage.model_dump()
    for c in chunk.choices:
        if c.delta.content:
            streamed.append(c.delta.content)
        if c.finish_reason:
            finish = c.finish_reason
record = {
    "whole": choice.message.content,
    "whole_finish": choice.finish_reason,
    "whole_usage": whole.usage.model_dump(),
    "streamed": "".join(streamed),
    "streamed_chunks": len(streamed),
    "streamed_finish": finish,
    "streamed_usage": usage,
    "logprobs": [
        {"token": t.token, "logprob": t.logprob, "top": [(a.token, a.logprob) for a in t.top_logprobs]}
        for t in choice.logprobs.content
    ],
}
if stop is not None:
    stopped = client.chat.completions.create(model=model, messages=messages, temperature=0, max_tokens=max_tokens,
                                             stop=[stop])
    record["stopped"] = stopped.choices[0].message.content
    record["stopped_finish"] = stopped.choices[0].finish_reason
    parts = []
    for chunk in client.chat.completions.create(model=model, messages=messages, temperature=0,
                                                max_tokens=max_tokens, stop=stop, stream=True):
        parts.extend(c.delta.content or "" for c in chunk.choices)
    record["stopped_streamed"] = "".join(parts)
print(json.dumps(record, ensure_ascii=False))
