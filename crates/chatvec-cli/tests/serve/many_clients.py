"""16 streaming clients at once against `chatvec serve`, then the same 16 requests one after
another. Prints one JSON record: every answer both ways, finish reasons, the two wall times and
the tokens generated.

usage: many_clients.py BASE_URL MODEL MAX_TOKENS
"""
import asyncio
import json
import sys
import time

import openai

base_url, model, max_tokens = sys.argv[1], sys.argv[2], int(sys.argv[3])
PROMPTS = [f"질문 {i}: 서울에서 가볼 만한 곳을 {i + 1}개 알려줘." for i in range(16)]


async def one(client, prompt):
    parts, finish, tokens = [], None, 0
    stream = await client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": prompt}], temperature=0, max_tokens=max_tokens,
        stream=True, stream_options={"include_usage": True})
    async for chunk in stream:
        if chunk.usage is not None:
            tokens = chunk.usage.completion_tokens
        for c in chunk.choices:
            parts.append(c.delta.content or "")
            finish = c.finish_reason or finish
    return "".join(parts), finish, tokens


async def main():
    client = openai.AsyncOpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=600)
    start = time.perf_counter()
    together = await asyncio.gather(*(one(client, p) for p in PROMPTS))
    concurrent_s = time.perf_counter() - start
    start = time.perf_counter()
    alone = [await one(client, p) for p in PROMPTS]
    sequential_s = time.perf_counter() - start
    print(json.dumps({"concurrent": together, "sequential": alone, "concurrent_s": concurrent_s,
                      "sequential_s": sequential_s, "tokens": sum(t for _, _, t in together)}, ensure_ascii=False))


asyncio.run(main())
