// Tokenizes texts with llama.cpp's own tokenizer for a GGUF file (node-llama-cpp's prebuilt CPU
// binaries), special tokens parsed, no BOS added: the oracle of
// crates/chatvec-gen/tests/gguf_tokenizer.rs.
//
//   node scripts/gguf/llama_cpp_tokenize.mjs MODEL.gguf TEXTS.json   (prints {"ids": [[...], ...], "bos": id, "add_bos": bool})
import fs from "node:fs";
import path from "node:path";
import { createRequire } from "node:module";

const dir = process.env.CHATVEC_NODE_LLAMA_DIR;
const require = createRequire(path.join(dir, "node_modules", "noop.js"));
const { getLlama, LlamaLogLevel } = await import(require.resolve("node-llama-cpp"));

const texts = JSON.parse(fs.readFileSync(process.argv[3], "utf8"));
const llama = await getLlama({ gpu: false, logLevel: LlamaLogLevel.error, build: "never" });
const model = await llama.loadModel({ modelPath: process.argv[2], vocabOnly: true });
const ids = texts.map((t) => Array.from(model.tokenize(t, true)));
const detok = ids.map((i) => model.detokenize(i, true));
console.log(JSON.stringify({ ids, detok, bos: model.tokens.bos, eos: model.tokens.eos, eot: model.tokens.eot, add_bos: model.tokens.shouldPrependBosToken }));
await model.dispose();
await llama.dispose();
