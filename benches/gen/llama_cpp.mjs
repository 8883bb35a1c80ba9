// Prefill and decode speed of llama.cpp (through node-llama-cpp's prebuilt CPU binaries) on a
// GGUF, with a fixed thread count, on the same token ids as chatvec's bench_gen. Prints one JSON
// record on the last line.
//
//   NODE_PATH=$CHATVEC_NODE_LLAMA_DIR/node_modules node benches/gen/llama_cpp.mjs \
//     --model M.gguf [--threads 2] [--prompt 128] [--new 32]
import { createRequire } from "node:module";
import path from "node:path";

const args = process.argv.slice(2);
const arg = (name, fallback) => {
    const i = args.indexOf(name);
    return i >= 0 ? args[i + 1] : fallback;
};
const modelPath = arg("--model");
const threads = Number(arg("--threads", 2));
const promptLen = Number(arg("--prompt", 128));
const newTokens = Number(arg("--new", 32));

const require = createRequire(path.join(process.env.CHATVEC_NODE_LLAMA_DIR ?? ".tools/node", "package.json"));
const { getLlama } = await import(require.resolve("node-llama-cpp"));

const t0 = performance.now();
const llama = await getLlama({ gpu: false, build: "never", maxThreads: threads });
const model = await llama.loadModel({ modelPath, gpuLayers: 0 });
const contextSize = Math.max(512, promptLen + newTokens + 8);
const context = await model.createContext({ contextSize, batchSize: contextSize, threads });
const loadS = (performance.now() - t0) / 1000;

// The bench_gen prompt: BOS, then ids spread over the vocabulary.
const prompt = [128000];
for (let k = 0; prompt.length < promptLen; k++) prompt.push(1000 + ((k * 7919) % 100000));

const sequence = context.getSequence();
const start = performance.now();
let firstAt = 0;
const tokens = [];
for await (const token of sequence.evaluate(prompt, { temperature: 0 })) {
    if (tokens.length === 0) firstAt = performance.now();
    tokens.push(token);
    if (tokens.length > newTokens) break;
}
const end = performance.now();
const prefillS = (firstAt - start) / 1000;
const decodeS = (end - firstAt) / 1000;
console.log(JSON.stringify({
    impl: "llama.cpp",
    threads,
    prompt_tokens: prompt.length,
    new_tokens: newTokens,
    load_s: loadS,
    prefill_tokens_per_s: prompt.length / prefillS,
    decode_tokens_per_s: newTokens / decodeS,
    tokens: tokens.slice(0, newTokens),
}));
await context.dispose();
await model.dispose();
await llama.dispose();
