#!/usr/bin/env python3
"""llama.cpp reference logits for every architecture verre runs.

NOT PART OF CI. Run by hand when the fixtures need to be (re)generated; the output is
committed (crates/engine/tests/fixtures/arch-*.json) and the Rust test
(crates/engine/tests/architectures.rs) only reads it.

Usage:
    gen_arch_fixtures.py MODELS_DIR OUT_DIR [--qwen15 FILE] [--qwen05 FILE] [--only NAME ...]

  MODELS_DIR  the output of `scripts/gen_arch_models.py VOCAB_DIR MODELS_DIR --reference`
  OUT_DIR     crates/engine/tests/fixtures
  --qwen15 / --qwen05  the real Qwen2.5-Coder-1.5B / 0.5B-Instruct Q4_K_M files

What it records, per model file and per case:
  1. The prompt is tokenized by llama.cpp (random models: plain text, BOS as the vocab
     says; real models: messages rendered with the model's chat template exactly as
     scripts/gen_fixtures.py does, then tokenized with special tokens parsed).
  2. A short greedy continuation is decoded by llama.cpp (prompt in one batch, then one
     token per call). It only provides realistic tokens to evaluate.
  3. The reference: prompt + continuation evaluated from scratch in ONE llama_decode batch
     with logits for every position -- the schedule verre's test uses (one forward over all
     tokens, all_logits). For every position the top-5 [id, logprob] (float64 log-softmax of
     the float32 logits, rounded to 6 decimals) and the top-1/top-2 gap are kept. Row i is
     the distribution of token i+1 given tokens[0..=i].
  4. Checks, each aborting the script when it fails:
       * the model does not collapse: its top-1 varies over the rows and the prompts;
       * a windowed llama file and its granite_swa twin agree on the rows that fit the
         window (the twin is the same model, as llama.cpp sees it);
       * for a windowed model, at least one case is longer than 3 windows, so that the
         windowed layers really drop positions.
  5. Diagnostics stored with the fixture (they say what a test within the bounds proves):
       * llama_cpp_self: llama.cpp against itself, one pass vs token-by-token decode, over
         the same top-5 metric the test uses (its own noise floor);
       * ablations: the same metric between the reference and the model with one feature
         dropped (no window, no attention temperature, no YaRN), evaluated by llama.cpp.
         A feature whose ablation moves the logits by far more than the test's bounds is
         one the test can tell is implemented.

Settings: CPU, n_threads=2, n_ctx=1024 (2048 for the real files), F16 KV cache (llama.cpp's
default), flash attention off, YaRN parameters from the model (llama-cpp-python's own
defaults would override the file's yarn_beta_* and attention factor, so -1 is passed), and
weights in their GGUF layout (use_extra_bufts=false): llama.cpp's default on an AVX2/AVX-512
CPU repacks Q4_0/Q4_K/... weights into interleaved blocks whose kernels round activations
differently; that path is machine-specific, so the fixture records it only as a diagnostic
(llama_cpp_repacked: on the real Qwen files it moves llama.cpp's own top-5 logprobs by a
mean of ~0.05-0.07 and a max of ~0.4-0.55 nats).

JSON (one file per model, arch-<name>.json):
{
  "model_file": "<basename>", "model_sha256": "<hex>",
  "reference_file": "<path under MODELS_DIR>", "reference_sha256": "<hex>",
  "architecture": "llama", "window": 32 | null,
  "reference": "llama.cpp via llama-cpp-python 0.3.36", "generated_by": "...",
  "settings": {...},
  "llama_cpp_self": {"mean": .., "max": .., "top1_flips": ..},
  "llama_cpp_repacked": {...},   # llama.cpp's default repacked-weights path vs the reference
  "ablations": {"no_window": {"mean": .., "max": .., "top1_flips": .., "rows": ..}, ...},
  "cases": [{"name": .., "prompt_text": .., ("messages": [..],) "prompt_ids": [..],
             "continuation_ids": [..], "top5": [[[id, lp] x5] per row], "gap": [..]}]
}
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gen_arch_models import MODELS  # noqa: E402
from gen_fixtures import log_softmax64, make_renderer, read_meta, sha256_file, topk  # noqa: E402

import llama_cpp  # noqa: E402
from llama_cpp import Llama  # noqa: E402

TOP_K = 5
N_THREADS = 2
CONFIDENT_GAP = 0.25

RANDOM_CONTINUATION = 16
REAL_CONTINUATION = 24

LONG_TEXT = (
    "The harbour master kept a ledger of every ship that entered the bay: its name, its "
    "flag, the tonnage it declared and the cargo it carried. In the winter of 1887 the "
    "ledger records forty-one arrivals, most of them coal colliers from Cardiff and "
    "Newcastle, three whalers returning late from the south, and a single steamer from "
    "Valparaíso whose captain refused to state his cargo. The master wrote his name twice, "
    "once in ink and once in pencil, as if unsure which of the two would last longer. "
    "Nobody knows why the page after that entry was torn out."
)

RANDOM_CASES = [
    {"name": "short", "text": "The capital of France is"},
    {"name": "french", "text": "Où est la gare ? Je cherche le train de 8 h 15 pour Genève, s'il vous plaît."},
    {"name": "code", "text": "def fibonacci(n):\n    if n < 2:\n        return n\n    return fibonacci(n - 1) + fibonacci(n - 2)\n"},
    {"name": "long", "text": LONG_TEXT},
]

REAL_CASES = [
    {
        "name": "invoice",
        "messages": [
            {"role": "system", "content": "You extract data from invoices. Answer with JSON only."},
            {"role": "user", "content": (
                "Invoice INV-2024-0173 from Nordlicht GmbH, Hauptstraße 12, 10115 Berlin, dated "
                "14 March 2024. Items: 3 x network switch at 189.00 EUR, 1 x installation at "
                "240.00 EUR. VAT 19%. Payment due within 30 days to IBAN DE89 3704 0044 0532 "
                "0130 00. What is the total amount due, including VAT, and by which date?"
            )},
        ],
    },
    {
        "name": "french",
        "messages": [
            {"role": "user", "content": (
                "Bonjour, j'ai reçu deux fois la même facture pour ma commande n° 55812 du "
                "3 février. Pouvez-vous annuler le doublon et me confirmer le montant "
                "réellement débité ? Merci d'avance."
            )},
        ],
    },
    {
        "name": "code",
        "messages": [
            {"role": "user", "content": (
                "Write a Rust function `fn median(xs: &mut [f64]) -> Option<f64>` that returns "
                "the median of the slice, or None when it is empty."
            )},
        ],
    },
]


def open_llama(path, n_ctx, repack=False):
    """llama.cpp on the CPU. `repack=False` (the reference) keeps the weights in their GGUF
    layout: llama.cpp's CPU-specific "extra buffer types" (weights repacked into interleaved
    blocks for AVX2/AVX-512, AMX) are an optimisation whose activation rounding differs, and
    which a machine without those instructions would not take."""
    defaults = llama_cpp.llama_cpp.llama_model_default_params

    def model_params():
        p = defaults()
        p.use_extra_bufts = repack
        return p

    # llama-cpp-python exposes no argument for use_extra_bufts; Llama() reads the defaults.
    llama_cpp.llama_cpp.llama_model_default_params = model_params
    try:
        return Llama(
            model_path=str(path), n_ctx=n_ctx, n_threads=N_THREADS, n_threads_batch=N_THREADS,
            logits_all=True, flash_attn=False, verbose=False,
            yarn_attn_factor=-1.0, yarn_beta_fast=-1.0, yarn_beta_slow=-1.0,
        )
    finally:
        llama_cpp.llama_cpp.llama_model_default_params = defaults


def one_pass(llm, tokens):
    """Log-softmax rows of one batch over all tokens (row i predicts token i+1)."""
    llm.reset()
    llm.eval(tokens)
    assert llm.n_tokens == len(tokens)
    return [log_softmax64(np.array(llm.scores[i], dtype=np.float32)) for i in range(len(tokens))]


def token_by_token(llm, prompt, continuation):
    """The decode schedule: prompt in one batch, then one token per call."""
    llm.reset()
    llm.eval(prompt)
    rows = [log_softmax64(np.array(llm.scores[i], dtype=np.float32)) for i in range(len(prompt))]
    for t in continuation:
        llm.eval([t])
        rows.append(log_softmax64(np.array(llm.scores[llm.n_tokens - 1], dtype=np.float32)))
    return rows


def greedy(llm, prompt, n):
    llm.reset()
    llm.eval(prompt)
    out = []
    for _ in range(n):
        nxt = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        out.append(nxt)
        llm.eval([nxt])
    return out


def compare(ref_top5, rows, row_filter=None):
    """The test's metric: |Δ logprob| over the reference's top-5, and top-1 flips where
    the reference's gap >= 0.25."""
    diffs, flips, confident = [], 0, 0
    for i, (top, lp) in enumerate(zip(ref_top5, rows)):
        if row_filter is not None and not row_filter(i):
            continue
        diffs.extend(abs(float(lp[t]) - l) for t, l in top)
        if top[0][1] - top[1][1] >= CONFIDENT_GAP:
            confident += 1
            flips += int(np.argmax(lp)) != top[0][0]
    return {
        "mean": round(float(np.mean(diffs)), 6) if diffs else None,
        "max": round(float(np.max(diffs)), 6) if diffs else None,
        "top1_flips": flips,
        "confident_rows": confident,
        "rows": len(diffs) // TOP_K,
    }


def record_case(llm, name, prompt_ids, continuation, extra):
    tokens = prompt_ids + continuation
    rows = one_pass(llm, tokens)
    top5 = [topk(lp, TOP_K) for lp in rows]
    case = {"name": name, **extra, "prompt_ids": prompt_ids, "continuation_ids": continuation,
            "top5": [[[t, round(l, 6)] for t, l in r] for r in top5],
            "gap": [round(r[0][1] - r[1][1], 6) for r in top5]}
    return case, tokens, top5


def aggregate(parts):
    """Combine per-case comparisons into one (weighted by rows)."""
    parts = [p for p in parts if p["rows"]]
    if not parts:
        return None
    n = sum(p["rows"] for p in parts)
    return {
        "mean": round(sum(p["mean"] * p["rows"] for p in parts) / n, 6),
        "max": max(p["max"] for p in parts),
        "top1_flips": sum(p["top1_flips"] for p in parts),
        "confident_rows": sum(p["confident_rows"] for p in parts),
        "rows": n,
    }


def check_not_collapsed(name, cases):
    top1 = [row[0][0] for c in cases for row in c["top5"]]
    distinct = len(set(top1))
    last = {c["top5"][-1][0][0] for c in cases}
    print(f"  {name}: {distinct} distinct top-1 over {len(top1)} rows; "
          f"{len(last)} distinct last-row top-1 over {len(cases)} cases", file=sys.stderr)
    if distinct < len(top1) // 4 or len(last) < 2:
        sys.exit(f"{name}: the model collapses ({distinct} distinct top-1 over {len(top1)} rows): "
                 "its weights are not scaled right and a comparison would prove nothing")


def random_model_fixture(models_dir: Path, spec):
    model_path = models_dir / f"{spec.name}.gguf"
    twin = models_dir / "reference" / f"{spec.name}.granite-swa-twin.gguf"
    ref_path = twin if twin.is_file() else model_path
    if spec.window and spec.arch == "llama" and not twin.is_file():
        sys.exit(f"{twin} is missing: run gen_arch_models.py with --reference")
    print(f"{spec.name}: reference {ref_path}", file=sys.stderr)
    n_ctx = min(1024, spec.context_length)
    llm = open_llama(ref_path, n_ctx)
    add_bos = llm._model.add_bos_token()

    cases, evaluated = [], []
    for c in RANDOM_CASES:
        prompt = llm.tokenize(c["text"].encode("utf-8"), add_bos=add_bos, special=False)
        cont = greedy(llm, prompt, RANDOM_CONTINUATION)
        case, tokens, top5 = record_case(llm, c["name"], prompt, cont, {"prompt_text": c["text"]})
        cases.append(case)
        evaluated.append((prompt, cont, tokens, top5))
    check_not_collapsed(spec.name, cases)
    if spec.window:
        longest = max(len(t) for _, _, t, _ in evaluated)
        if longest < 3 * spec.window:
            sys.exit(f"{spec.name}: the longest case has {longest} tokens, fewer than 3 windows of {spec.window}")

    self_cmp = aggregate([compare(top5, token_by_token(llm, p, cont)) for p, cont, _, top5 in evaluated])
    del llm
    repacked = repacked_comparison(ref_path, n_ctx, evaluated)

    ablations = {}
    variants = []
    if ref_path != model_path:
        variants.append(("no_window", model_path))  # llama.cpp's llama arch ignores the window
    for suffix, key in [("no-window", "no_window"), ("no-temperature", "no_temperature"), ("no-yarn", "no_yarn")]:
        p = models_dir / "reference" / f"{spec.name}.{suffix}.gguf"
        if p.is_file():
            variants.append((key, p))
    for key, path in variants:
        other = open_llama(path, n_ctx)
        parts = [compare(top5, one_pass(other, tokens)) for _, _, tokens, top5 in evaluated]
        ablations[key] = aggregate(parts)
        if key == "no_window" and ref_path != model_path:
            # Rows whose position still sees everything: the twin must equal the llama file.
            inside = aggregate([compare(top5, one_pass(other, tokens), lambda i: i < spec.window)
                                for _, _, tokens, top5 in evaluated])
            ablations["no_window_inside_window"] = inside
            if inside["max"] > 0.01:
                sys.exit(f"{spec.name}: the granite_swa twin differs from the llama file inside the "
                         f"window by {inside['max']}: the twin is not the same model")
        del other

    doc = {
        "model_file": model_path.name,
        "model_sha256": sha256_file(model_path),
        "reference_file": str(ref_path.relative_to(models_dir)),
        "reference_sha256": sha256_file(ref_path),
        "architecture": spec.arch,
        "window": spec.window,
        "window_pattern": list(spec.window_pattern) if spec.window_pattern else None,
        **common_header(n_ctx),
        "llama_cpp_self": self_cmp,
        "llama_cpp_repacked": repacked,
        "ablations": ablations,
        "cases": cases,
    }
    return doc


def repacked_comparison(path, n_ctx, evaluated):
    """llama.cpp's default CPU path (repacked weights) against the reference."""
    llm = open_llama(path, n_ctx, repack=True)
    out = aggregate([compare(top5, one_pass(llm, tokens)) for _, _, tokens, top5 in evaluated])
    del llm
    return out


def real_model_fixture(path: Path, name: str):
    print(f"{name}: reference {path}", file=sys.stderr)
    n_ctx = 2048
    llm = open_llama(path, n_ctx)
    meta = read_meta(llm)
    meta_arch, meta_name = llm.metadata.get("general.architecture"), llm.metadata.get("general.name")
    render = make_renderer(meta["chat_template"])
    cases, evaluated = [], []
    for c in REAL_CASES:
        text = render.render(messages=c["messages"], add_generation_prompt=True,
                             bos_token=meta["bos_token"], eos_token=meta["eos_token"])
        prompt = llm.tokenize(text.encode("utf-8"), add_bos=meta["add_bos"], special=True)
        cont = greedy(llm, prompt, REAL_CONTINUATION)
        case, tokens, top5 = record_case(llm, c["name"], prompt, cont,
                                         {"messages": c["messages"], "prompt_text": text})
        case["continuation_text"] = llm.detokenize(cont, special=True).decode("utf-8", errors="replace")
        cases.append(case)
        evaluated.append((prompt, cont, tokens, top5))
    check_not_collapsed(name, cases)
    self_cmp = aggregate([compare(top5, token_by_token(llm, p, cont)) for p, cont, _, top5 in evaluated])
    del llm
    repacked = repacked_comparison(path, n_ctx, evaluated)
    doc = {
        "model_file": path.name,
        "model_sha256": sha256_file(path),
        "model_size": path.stat().st_size,
        "reference_file": path.name,
        "architecture": meta_arch,
        "general_name": meta_name,
        "window": None,
        **common_header(n_ctx),
        "llama_cpp_self": self_cmp,
        "llama_cpp_repacked": repacked,
        "ablations": {},
        "cases": cases,
    }
    return doc


def common_header(n_ctx):
    return {
        "reference": f"llama.cpp via llama-cpp-python {llama_cpp.__version__}",
        "generated_by": "scripts/gen_arch_fixtures.py",
        "settings": {"n_ctx": n_ctx, "n_threads": N_THREADS, "kv_cache": "f16", "flash_attn": False,
                     "use_extra_bufts": False,
                     "schedule": "prompt + continuation in one llama_decode batch, logits for every position"},
    }


def dump_json(doc):
    """One key per line, one top-5 row per line: small diffs when regenerated."""
    d = lambda v: json.dumps(v, ensure_ascii=False)
    lines = ["{"]
    keys = [k for k in doc if k != "cases"]
    for k in keys:
        lines.append(f" {d(k)}: {d(doc[k])},")
    lines.append(' "cases": [')
    for ci, c in enumerate(doc["cases"]):
        lines.append("  {")
        ckeys = list(c)
        for ki, k in enumerate(ckeys):
            sep = "," if ki + 1 < len(ckeys) else ""
            if k == "top5":
                rows = ",\n".join("    " + d(r) for r in c[k])
                lines.append(f"   {d(k)}: [\n{rows}\n   ]{sep}")
            else:
                lines.append(f"   {d(k)}: {d(c[k])}{sep}")
        lines.append("  }" + ("," if ci + 1 < len(doc["cases"]) else ""))
    lines.append(" ]")
    lines.append("}")
    text = "\n".join(lines) + "\n"
    assert json.loads(text) == json.loads(json.dumps(doc))
    return text


def write(out_dir: Path, name: str, doc):
    path = out_dir / f"arch-{name}.json"
    path.write_text(dump_json(doc), encoding="utf-8")
    s, r, a = doc["llama_cpp_self"], doc["llama_cpp_repacked"], doc["ablations"]
    print(f"wrote {path}: llama.cpp one pass vs token by token: mean {s['mean']} max {s['max']} "
          f"flips {s['top1_flips']}/{s['confident_rows']}; repacked weights: mean {r['mean']} "
          f"max {r['max']} flips {r['top1_flips']}", file=sys.stderr)
    for k, v in a.items():
        print(f"    ablation {k}: mean {v['mean']} max {v['max']} flips {v['top1_flips']}/{v['confident_rows']}",
              file=sys.stderr)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("models_dir", type=Path)
    ap.add_argument("out_dir", type=Path)
    ap.add_argument("--qwen15", type=Path)
    ap.add_argument("--qwen05", type=Path)
    ap.add_argument("--only", nargs="*", help="model names to (re)generate")
    args = ap.parse_args()
    want = lambda n: not args.only or n in args.only
    args.out_dir.mkdir(parents=True, exist_ok=True)
    for spec in MODELS:
        if want(spec.name):
            write(args.out_dir, spec.name, random_model_fixture(args.models_dir, spec))
    for name, path in [("qwen2.5-coder-1.5b", args.qwen15), ("qwen2.5-coder-0.5b", args.qwen05)]:
        if path is not None and want(name):
            write(args.out_dir, name, real_model_fixture(path, name))


if __name__ == "__main__":
    main()
