// Loads a GGUF file in llama.cpp (node-llama-cpp's prebuilt CPU binaries) and reports what a
// consumer sees: its tokenization of a prompt, greedy tokens from given prompt ids, which ids end
// generation, and the chat template rendered as node-llama-cpp renders it (@huggingface/jinja,
// with the GGUF's own bos/eos strings). Used by crates/chatvec-cli/tests/gguf.rs.
//
//   node scripts/gguf/llama_cpp_run.mjs REQUESTS.json   (prints a JSON list, one object per request)
//   REQUESTS: [{"model", "prompt_text", "prompt_ids", "max_new_tokens", "stop_ids", "messages"}, ...]
//   (only "model", "prompt_ids" and "max_new_tokens" are required: crates/chatvec-gen/tests/gguf_types.rs
//   asks for greedy tokens alone)
import fs from "node:fs";
import path from "node:path";
import { createRequire } from "node:module";

const dir = process.env.CHATVEC_NODE_LLAMA_DIR;
const require = createRequire(path.join(dir, "node_modules", "noop.js"));
const { getLlama, LlamaLogLevel } = await import(require.resolve("node-llama-cpp"));
const { Template } = await import(require.resolve("@huggingface/jinja"));

const requests = JSON.parse(fs.readFileSync(process.argv[2], "utf8"));
const llama = await getLlama({ gpu: false, logLevel: LlamaLogLevel.error, build: "never" });
const results = [];
for (const req of requests) results.push(await run(req));
await llama.dispose();
console.log(JSON.stringify(results));

async function run(req) {
  const model = await llama.loadModel({ modelPath: req.model });
  // One thread: the test models are tiny, and on a busy machine llama.cpp's spinning thread
  // barriers make 16 tokens take half a minute with two.
  const context = await model.createContext({ contextSize: 256, batchSize: 256, threads: 1 });
  const sequence = context.getSequence();
  const tokens = [];
  for await (const t of sequence.evaluate(req.prompt_ids, { temperature: 0 })) {
    tokens.push(t);
    if (model.isEogToken(t) || tokens.length >= req.max_new_tokens) break;
  }
  const template = model.fileInfo.metadata.tokenizer?.chat_template ?? null;
  const rendered = template === null || req.messages === undefined ? null : new Template(template).render({
    messages: req.messages,
    add_generation_prompt: true,
    bos_token: model.tokens.bosString ?? "",
    eos_token: model.tokens.eosString ?? "",
  });
  const out = {
    prompt_ids: req.prompt_text === undefined ? null : model.tokenize(req.prompt_text, true),
    tokens,
    eog: Object.fromEntries((req.stop_ids ?? []).map((id) => [id, model.isEogToken(id)])),
    bos: model.tokens.bos,
    eos: model.tokens.eos,
    eot: model.tokens.eot,
    chat_template: template,
    rendered,
  };
  await context.dispose();
  await model.dispose();
  return out;
}
