"""CPU generation side by side, in one interleaved run: chatvec at several weight formats,
llama.cpp (node-llama-cpp's prebuilt binaries) on GGUFs of the same weights made by llama.cpp's own
convert_hf_to_gguf.py, and transformers in bf16. Synthetic Llama with random weights and Llama-3's
real tokenizer; the same prompt ids (128 and 512 by default, a table each), greedy, the same
thread count. Each engine runs in its own process per round (peak RSS from wait4); medians over
the rounds. Driven by benches/gen/run.sh.

With --eval-chat FORMATS, each round also runs the whole `chatvec eval chat --limit 8
--max-new-tokens 32 --temperature 0` command (the 8 prompts answered as one batch) and reports its
new tokens over its wall time, load included, against llama.cpp's single-stream decode.
"""

import argparse
import json
import os
import pathlib
import shutil
import statistics
import subprocess
import sys
import threading
import time

ROOT = pathlib.Path(__file__).resolve().parents[2]
BENCH_GEN = ROOT / "target/release/examples/bench_gen"
CHATVEC_BENCH = ROOT / "target/release/chatvec-bench"
CHATVEC = ROOT / "target/release/chatvec"
PY = os.environ.get("CHATVEC_PYTHON", sys.executable)
NODE_DIR = pathlib.Path(os.environ.get("CHATVEC_NODE_LLAMA_DIR", ROOT / ".tools/node"))
SIMD_ENV = "CHATVEC_SIMD"
BUNDLE = NODE_DIR / "node_modules/node-llama-cpp/llama/gitRelease.bundle"


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def measure(cmd, env, whole=False):
    """Runs cmd in a child, returns (record, wall s, peak RSS bytes of that child). The record is
    the last line of stdout as JSON, or all of stdout with `whole`."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True)
    # Read output on threads so the child never blocks on a full pipe while we wait4 it.
    chunks = {"out": "", "err": ""}

    def drain(stream, key):
        chunks[key] = stream.read()

    threads = [threading.Thread(target=drain, args=(proc.stdout, "out")),
               threading.Thread(target=drain, args=(proc.stderr, "err"))]
    for t in threads:
        t.start()
    _, status, usage = os.wait4(proc.pid, 0)
    for t in threads:
        t.join()
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(map(str, cmd))} failed ({proc.returncode}):\n{chunks['err'][-2000:]}")
    out = chunks["out"] if whole else chunks["out"].strip().splitlines()[-1]
    return json.loads(out), wall, usage.ru_maxrss * 1024


def prepare(work, shape, llama_formats):
    model = work / f"synth-{shape}"
    if not (model / "config.json").is_file():
        log(f"writing synthetic {shape} model to {model}")
        subprocess.run([CHATVEC_BENCH, "synth", "--shape", shape, "--out", model], check=True)
        tok = work / "llama3-tokenizer"
        if not (tok / "tokenizer.json").is_file():
            subprocess.run([PY, ROOT / "benches/gen/make_llama3_tokenizer.py", tok], check=True)
        for f in tok.iterdir():
            shutil.copy(f, model / f.name)
    ggufs = {}
    if llama_formats:
        llama_src = work / "llama.cpp"
        if not (llama_src / "convert_hf_to_gguf.py").is_file():
            subprocess.run(["git", "clone", "-q", BUNDLE, llama_src], check=True)
        for fmt in llama_formats:
            out = work / f"synth-{shape}-{fmt}.gguf"
            if not out.is_file():
                log(f"converting to {out.name} with llama.cpp's convert_hf_to_gguf.py")
                env = dict(os.environ, PYTHONPATH=str(llama_src / "gguf-py"))
                subprocess.run([PY, llama_src / "convert_hf_to_gguf.py", model, "--outtype", fmt, "--outfile", out],
                               check=True, env=env, stdout=subprocess.DEVNULL)
            ggufs[fmt] = out
    return model, ggufs


def restricted_node_llama(work, variant):
    """A copy of node-llama-cpp's CPU binaries with one ggml CPU variant (e.g. `haswell`: AVX2, FMA,
    F16C, no AVX-512), so llama.cpp runs at the tier chatvec is forced to. ggml loads the best
    `libggml-cpu-*.so` it finds beside it; the other packages are linked, and node must run with
    --preserve-symlinks so the copy's binaries are the ones found."""
    dest = work / f"node-llama-cpp-{variant}"
    bins = "node_modules/@node-llama-cpp/linux-x64"
    lib_dir = dest / bins / "bins/linux-x64"
    if not (lib_dir / f"libggml-cpu-{variant}.so").exists():
        shutil.rmtree(dest, ignore_errors=True)
        (dest / "node_modules/@node-llama-cpp").mkdir(parents=True)
        for entry in (NODE_DIR / "node_modules").iterdir():
            if entry.name != "@node-llama-cpp":
                (dest / "node_modules" / entry.name).symlink_to(entry.resolve())
        shutil.copytree(NODE_DIR / bins, dest / bins, symlinks=True)
        if not (lib_dir / f"libggml-cpu-{variant}.so").exists():
            raise SystemExit(f"node-llama-cpp has no CPU variant {variant!r}")
        for lib in lib_dir.glob("libggml-cpu-*.so"):
            if lib.name != f"libggml-cpu-{variant}.so":
                lib.unlink()
    return dest


def engines(a, model, ggufs, prompt):
    common = ["--prompt", str(prompt), "--new", str(a.new)]
    out = [(f"chatvec {f}", f, [BENCH_GEN, "--model", model, "--quantize", "none" if f == "f32" else f, *common])
           for f in a.chatvec]
    node = ["node", ROOT / "benches/gen/llama_cpp.mjs", "--threads", str(a.threads), *common]
    out += [(f"llama.cpp {f}", f, [*node, "--model", g]) for f, g in ggufs.items()]
    if a.transformers:
        out.append(("transformers bf16", "bf16", [PY, ROOT / "benches/gen/bench_transformers.py", "--model", model,
                                                  "--dtype", "bf16", *common]))
    return out


def chat_engines(a, model):
    """The whole batched `eval chat` command, once per format."""
    return [(f"chatvec eval chat {f}", f, [CHATVEC, "eval", "chat", "--model", model, "--limit", "8",
                                           "--max-new-tokens", str(a.new), "--temperature", "0",
                                           "--batch-size", str(a.batch_size), "--quantize", f, "--json"])
            for f in a.eval_chat]


def weight_bytes_per_token(model, fmt):
    """Bytes of weights read per decoded token: every linear weight and the output projection."""
    cfg = json.loads((model / "config.json").read_text())
    h, i, layers = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_hidden_layers"]
    hd = cfg.get("head_dim", h // cfg["num_attention_heads"])
    q, kv = cfg["num_attention_heads"] * hd, cfg["num_key_value_heads"] * hd
    linear = layers * (h * (q + 2 * kv) + q * h + 3 * h * i)
    head = cfg["vocab_size"] * h
    bpw = {"f32": 4, "f16": 2, "bf16": 2, "q8_0": 34 / 32, "q4_k": 144 / 256, "q4_0": 18 / 32, "q6_k": 210 / 256}
    head_fmt = {"q4_k": "q6_k", "q4_0": "q6_k"}.get(fmt, fmt)
    return linear * bpw[fmt] + head * bpw[head_fmt]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", default=str(ROOT / "target/bench-gen"))
    ap.add_argument("--shape", default="1b", choices=["1b", "8b"])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prompt", default="128,512", type=lambda s: [int(x) for x in s.split(",") if x],
                    help="prompt lengths, each a table")
    ap.add_argument("--new", type=int, default=32)
    ap.add_argument("--chatvec", default="f32,bf16,q8_0,q4_k", type=lambda s: [x for x in s.split(",") if x])
    ap.add_argument("--llama-cpp", default="f16,bf16,q8_0", type=lambda s: [x for x in s.split(",") if x])
    ap.add_argument("--no-transformers", dest="transformers", action="store_false")
    ap.add_argument("--eval-chat", default="q8_0", type=lambda s: [x for x in s.split(",") if x],
                    help="formats for the batched `eval chat` row ('' for none)")
    ap.add_argument("--batch-size", type=int, default=8, help="eval chat --batch-size")
    ap.add_argument("--llama-cpp-cpu", default="haswell" if os.environ.get(SIMD_ENV) == "avx2" else "",
                    help="the one ggml CPU variant llama.cpp may load (haswell: AVX2; default: haswell when "
                         f"{SIMD_ENV}=avx2, else llama.cpp picks the best for the CPU)")
    a = ap.parse_args()
    work = pathlib.Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    model, ggufs = prepare(work, a.shape, a.llama_cpp)
    node_dir, node_options = NODE_DIR, os.environ.get("NODE_OPTIONS", "")
    if a.llama_cpp_cpu:
        node_dir, node_options = restricted_node_llama(work, a.llama_cpp_cpu), f"{node_options} --preserve-symlinks"
    env = dict(os.environ, RAYON_NUM_THREADS=str(a.threads), OMP_NUM_THREADS=str(a.threads),
               CHATVEC_NODE_LLAMA_DIR=str(node_dir), NODE_OPTIONS=node_options.strip())
    probe = measure([BENCH_GEN, "--bandwidth"], env)[0]
    bandwidth = probe["read_gb_per_s"]
    runs = {p: engines(a, model, ggufs, p) for p in a.prompt}
    results = {p: {name: [] for name, _, _ in rs} for p, rs in runs.items()}
    chat_runs = chat_engines(a, model)
    chat_results = {name: [] for name, _, _ in chat_runs}
    for r in range(a.rounds):
        for p, rs in runs.items():
            for name, _, cmd in rs:
                rec, wall, rss = measure(list(map(str, cmd)), env)
                rec.update(wall_s=wall, peak_rss=rss)
                results[p][name].append(rec)
                log(f"round {r + 1}, prompt {p}, {name}: decode {rec['decode_tokens_per_s']:.2f} tok/s, prefill "
                    f"{rec['prefill_tokens_per_s']:.1f} tok/s, peak RSS {rss / 2**30:.2f} GiB")
        for name, _, cmd in chat_runs:
            rec, wall, rss = measure(list(map(str, cmd)), env, whole=True)
            rec.update(wall_s=wall, peak_rss=rss, new_tokens=sum(x["tokens"] for x in rec["results"]))
            chat_results[name].append(rec)
            log(f"round {r + 1} {name}: {rec['new_tokens']} new tokens in {wall:.1f} s wall, "
                f"peak RSS {rss / 2**30:.2f} GiB")
    llama_tier = f"llama.cpp's ggml CPU variant: {a.llama_cpp_cpu}" if a.llama_cpp_cpu else "llama.cpp picks its own"
    print(f"CPU: {probe['cpu']} (chatvec's tier; {SIMD_ENV}={os.environ.get(SIMD_ENV, '')!r}; {llama_tier})")
    for p, rs in runs.items():
        print()
        report(a, model, bandwidth, rs, results[p], p)
    if chat_runs:
        eval_chat_table(a, chat_runs, chat_results, results[a.prompt[0]], probe["cpu"])


def report(a, model, bandwidth, runs, results, prompt):
    med = {n: {k: statistics.median(r[k] for r in rs) for k in ("decode_tokens_per_s", "prefill_tokens_per_s",
                                                                 "peak_rss", "load_s")}
           for n, rs in results.items()}
    cfg = json.loads((model / "config.json").read_text())
    ref = next((rs[0]["tokens"] for n, rs in results.items() if n == "chatvec f32"), None)
    print(f"synthetic Llama ({a.shape} shape: hidden {cfg['hidden_size']}, {cfg['num_hidden_layers']} layers, vocab "
          f"{cfg['vocab_size']}, random weights, Llama-3 tokenizer), {a.threads} threads, prompt {prompt} tokens, "
          f"{a.new} new, greedy; medians of {a.rounds} interleaved rounds; read bandwidth {bandwidth:.1f} GB/s")
    print()
    print("| engine | decode tok/s | bandwidth ceiling | of ceiling | vs llama.cpp | prefill tok/s | vs llama.cpp "
          "| peak RSS GiB | load s | greedy = chatvec f32 |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    print_rows(runs, med, model, bandwidth, results, ref)
    print_cpu_time(runs, results)


def print_cpu_time(runs, results):
    """Tokens per CPU-second (user + system of all the engine's threads): what each engine gets
    done per unit of CPU, which compares fairly on a machine other jobs share, where wall time
    depends on them. llama.cpp's threads spin while they wait, which counts against it."""
    med = {n: {k: statistics.median(r[k] for r in rs if k in r) for k in ("prefill_cpu_s", "decode_cpu_s")}
           for n, rs in results.items() if all("prefill_cpu_s" in r for r in rs)}
    print()
    print("| engine | prefill tok per CPU-s | vs llama.cpp | decode tok per CPU-s | vs llama.cpp |")
    print("|---|---:|---:|---:|---:|")
    rate = {n: (results[n][0]["prompt_tokens"] / m["prefill_cpu_s"], results[n][0]["new_tokens"] / m["decode_cpu_s"])
            for n, m in med.items()}
    for name, fmt, _ in runs:
        if name not in rate:
            continue
        peer = rate.get(f"llama.cpp {fmt}")
        vs = [f"{rate[name][i] / peer[i]:.2f}x" if peer and "chatvec" in name else "" for i in (0, 1)]
        print(f"| {name} | {rate[name][0]:.1f} | {vs[0]} | {rate[name][1]:.2f} | {vs[1]} |")


def print_rows(runs, med, model, bandwidth, results, ref):
    for name, fmt, _ in runs:
        m = med[name]
        ceiling = bandwidth * 1e9 / weight_bytes_per_token(model, fmt)
        peer = med.get(f"llama.cpp {fmt}")
        ratio = f"{m['decode_tokens_per_s'] / peer['decode_tokens_per_s']:.2f}x" if peer and "chatvec" in name else ""
        pre = f"{m['prefill_tokens_per_s'] / peer['prefill_tokens_per_s']:.2f}x" if peer and "chatvec" in name else ""
        toks = results[name][0].get("tokens")
        agree = "" if ref is None or toks is None else f"{sum(1 for x, y in zip(toks, ref) if x == y)}/{len(ref)}"
        print(f"| {name} | {m['decode_tokens_per_s']:.2f} | {ceiling:.1f} | {m['decode_tokens_per_s'] / ceiling:.0%} "
              f"| {ratio} | {m['prefill_tokens_per_s']:.1f} | {pre} | {m['peak_rss'] / 2**30:.2f} | {m['load_s']:.1f} "
              f"| {agree} |")


def eval_chat_table(a, chat_runs, results, peers, cpu):
    """The batched `eval chat` rows: new tokens of the 8 answers over the command's wall time,
    against llama.cpp's single-stream decode (at the first prompt length) from the same rounds."""
    print()
    print(f"`chatvec eval chat --limit 8 --max-new-tokens {a.new} --temperature 0 --batch-size {a.batch_size}`, "
          f"whole command (load, prefill, decode) on {cpu}, {a.threads} threads; medians of {a.rounds}; llama.cpp "
          f"decode at a {a.prompt[0]}-token prompt")
    print()
    print("| command | wall s | new tokens | new tokens / wall s | llama.cpp single-stream decode tok/s | ratio "
          "| peak RSS GiB |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, fmt, _ in chat_runs:
        rs = results[name]
        wall = statistics.median(r["wall_s"] for r in rs)
        toks = rs[0]["new_tokens"]
        rate = statistics.median(r["new_tokens"] / r["wall_s"] for r in rs)
        peer = peers.get(f"llama.cpp {fmt}")
        peer_decode = statistics.median(r["decode_tokens_per_s"] for r in peer) if peer else None
        peer_rate = f"{peer_decode:.2f}" if peer else "-"
        ratio = f"{rate / peer_decode:.2f}x" if peer else "-"
        rss = statistics.median(r["peak_rss"] for r in rs)
        print(f"| {name} | {wall:.1f} | {toks} | {rate:.2f} | {peer_rate} | {ratio} | {rss / 2**30:.2f} |")


if __name__ == "__main__":
    main()
