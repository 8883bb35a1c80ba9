// Tries to load each GGUF file in llama.cpp (node-llama-cpp's prebuilt CPU binaries) and reports
// whether it loaded: the oracle for chatvec's checks of hostile GGUF files
// (crates/chatvec-cli/tests/gguf_hostile.rs).
//
//   node scripts/gguf/llama_cpp_loads.mjs A.gguf B.gguf ...   (prints {"A.gguf": true, ...})
import path from "node:path";
import { createRequire } from "node:module";

const dir = process.env.CHATVEC_NODE_LLAMA_DIR;
const require = createRequire(path.join(dir, "node_modules", "noop.js"));
const { getLlama, LlamaLogLevel } = await import(require.resolve("node-llama-cpp"));

const llama = await getLlama({ gpu: false, logLevel: LlamaLogLevel.disabled, build: "never" });
const loaded = {};
for (const file of process.argv.slice(2)) {
  try {
    const model = await llama.loadModel({ modelPath: file });
    await model.dispose();
    loaded[file] = true;
  } catch {
    loaded[file] = false;
  }
}
await llama.dispose();
console.log(JSON.stringify(loaded));
