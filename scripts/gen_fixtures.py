#!/usr/bin/env python3
"""Generate llama.cpp reference fixtures for verre's correctness tests.

NOT PART OF CI.  This script is run by hand, once, whenever the reference
fixtures need to be (re)generated; its output is committed to the repository
and the Rust tests only ever read that JSON file.  Nothing in the build or
test pipeline may depend on Python, llama.cpp or this script.

What it produces
----------------
One JSON file (committed as crates/engine/tests/fixtures/smollm2-135m.json)
holding, for a fixed set of chat conversations, llama.cpp's greedy
continuation and per-step top-5 next-token log-probabilities.  verre's tests
compare their own tokenization, logits and greedy decoding against it.

For every case:
  1. The messages are rendered with the model's own chat template
     (GGUF metadata key `tokenizer.chat_template`) using jinja2 the way
     HF transformers / llama.cpp do: ImmutableSandboxedEnvironment with
     trim_blocks + lstrip_blocks, `add_generation_prompt=True`, and
     `bos_token` / `eos_token` bound to the text of the vocab's BOS / EOS
     tokens.
  2. The rendered text is tokenized by llama.cpp:
        llm.tokenize(text.encode(), add_bos=<tokenizer.ggml.add_bos_token>,
                     special=True)
  3. 64 greedy steps are run with llama.cpp: the prompt is evaluated with
     `llm.eval(prompt_ids)`; then at each step the logits row of the LAST
     evaluated position (= the distribution of the NEXT token given the
     prompt + greedy ids so far) is converted to log-softmax in float64,
     its top-5 and argmax are recorded, the argmax is appended and
     evaluated, and so on.  Generation does NOT stop at EOS: it always runs
     the full 64 steps (the first EOS / <|im_end|> position is recorded).
  4. Self-checks (the script aborts if one fails):
       * row i's argmax == greedy_ids[i] (by construction);
       * llama.cpp's own greedy sampler (`Llama.generate(temp=0, top_k=1)`),
         which uses the same evaluation schedule, produces exactly the same
         64 ids;
       * alignment: the whole sequence prompt + greedy_ids[:-1] is re-evaluated
         from scratch in ONE batch (teacher forcing); the argmax of batch row
         (len(prompt) - 1 + i) must equal greedy_ids[i] except at <= 1/8 of
         the rows, and only where the top-1/top-2 gap is < 1.0.  (A row/token
         off-by-one breaks agreement almost everywhere; the diagnostics also
         print the agreement of the deliberately shifted comparison.)

Numerical caveat (measured, important for test tolerances)
------------------------------------------------------------
llama.cpp's CPU logits for this Q4_1 model are only reproducible to roughly
0.15-0.2 nats (median over rows; p95 ~0.5, worst ~1 nat) on the top-5
logprobs under benign changes: batched vs token-by-token evaluation with the
default F16 KV cache, F16 vs F32 KV cache, or an exact float64 forward pass
on the dequantized weights all differ from each other by that much
(llama.cpp quantizes activations to Q8_1/Q8_0 inside its matmuls and rounds
Q/K/V/attention weights to F16), and the argmax flips between them at rows
whose top-1/top-2 gap was up to ~0.34.  The fixture uses the token-by-token
(decode) schedule: prompt in one llama_decode batch, then one token per call,
F16 KV cache, no flash attention, n_threads=2.  Consumers should compare
logprobs with a tolerance of ~1 nat and greedy ids (teacher-forced) only
where `gap` >= ~0.5.

JSON format
-----------
{
  "model_file":   "SmolLM2-135M-Instruct.Q4_1.gguf",   # basename of MODEL.gguf
  "model_sha256": "<hex sha256 of the GGUF file>",
  "reference":    "llama.cpp via llama-cpp-python 0.3.36",
  "generated_by": "scripts/gen_fixtures.py",
  "n_steps":      64,
  "bos_id": 1, "eos_id": 2, "im_end_id": 2, "add_bos": false,
  "cases": [
    {
      "name":        "les_miserables",
      "messages":    [{"role": "user", "content": "..."}],   # input to the template
      "prompt_text": "<rendered chat template>",
      "prompt_ids":  [...],            # llama.cpp tokenization of prompt_text
      "greedy_ids":  [... 64 ids ...], # greedy continuation (past EOS too)
      "greedy_text": "...",            # detokenization of greedy_ids, special
                                       # tokens rendered, invalid UTF-8 -> U+FFFD
      "first_eos_step": 17 | null,     # first index i in greedy_ids with
                                       # greedy_ids[i] in {eos_id, im_end_id}
      "top5": [                        # 64 rows; row i = distribution of
        [[id, logprob], ... 5],        # greedy_ids[i] given prompt_ids +
        ...                            # greedy_ids[:i]; sorted best first;
      ],                               # logprob = float64 log-softmax of the
                                       # float32 logits, rounded to 6 decimals
      "gap": [...]                     # 64 floats: top1 - top2 logprob
    }                                  # (rounded to 6 decimals)
  ]
}

How to run
----------
    python3 -m venv /tmp/ref
    /tmp/ref/bin/pip install llama-cpp-python jinja2 numpy
    /tmp/ref/bin/python scripts/gen_fixtures.py MODEL.gguf OUT.json

e.g.
    /tmp/ref/bin/python scripts/gen_fixtures.py \
        SmolLM2-135M-Instruct.Q4_1.gguf \
        crates/engine/tests/fixtures/smollm2-135m.json

The run is deterministic on a given machine/build (CPU backend, n_threads=2,
fixed n_ctx/batch): running it twice gives byte-identical output.
"""

import hashlib
import json
import os
import sys

import numpy as np
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.exceptions import TemplateError

import llama_cpp
from llama_cpp import Llama

N_STEPS = 64
TOP_K = 5
N_CTX = 2048
N_THREADS = 2
# Batched vs incremental llama.cpp disagree on argmax only where top1-top2 is
# small (see check 2); a flip above this gap means something is misaligned.
FLIP_GAP_LIMIT = 1.0

CASES = [
    {
        "name": "les_miserables",
        "messages": [
            {"role": "user", "content": "Who wrote Les Misérables?"},
        ],
    },
    {
        "name": "maths",
        "messages": [
            {"role": "user", "content": "What is 17 multiplied by 23? Answer with just the number."},
        ],
    },
    {
        "name": "python_function",
        "messages": [
            {"role": "user", "content": "Write a Python function that checks whether a string is a palindrome."},
        ],
    },
    {
        "name": "french",
        "messages": [
            {"role": "user", "content": "Quelle est la capitale de la France ? Réponds en une phrase."},
        ],
    },
    {
        "name": "system_message",
        "messages": [
            {"role": "system", "content": "You are a pirate. Always answer like a pirate, in one short sentence."},
            {"role": "user", "content": "What is the weather like today?"},
        ],
    },
    {
        "name": "multi_turn",
        "messages": [
            {"role": "user", "content": "My name is Alice. Please remember it."},
            {"role": "assistant", "content": "Nice to meet you, Alice! I'll remember your name."},
            {"role": "user", "content": "What is my name?"},
        ],
    },
    {
        "name": "emoji_cjk",
        "messages": [
            {"role": "user", "content": "Translate to English: 你好，世界！🌍🚀 What do these emoji mean? 😀"},
        ],
    },
]


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_meta(llm):
    """The metadata we need, as llama.cpp itself reads it from the GGUF."""
    md = llm.metadata
    bos_id = int(md["tokenizer.ggml.bos_token_id"])
    eos_id = int(md["tokenizer.ggml.eos_token_id"])
    add_bos = md.get("tokenizer.ggml.add_bos_token")
    add_bos = llm._model.add_bos_token() if add_bos is None else add_bos == "true"
    im_end = llm.tokenize(b"<|im_end|>", add_bos=False, special=True)
    return {
        "chat_template": md.get("tokenizer.chat_template"),
        "add_bos": bool(add_bos),
        "bos_id": bos_id,
        "eos_id": eos_id,
        "bos_token": llm._model.token_get_text(bos_id),
        "eos_token": llm._model.token_get_text(eos_id),
        "im_end_id": im_end[0] if len(im_end) == 1 else eos_id,
    }


def make_renderer(template_src):
    # Same environment HF transformers uses for chat templates
    # (transformers.utils.chat_template_utils._compile_jinja_template).
    def raise_exception(message):
        raise TemplateError(message)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = raise_exception
    return env.from_string(template_src)


def log_softmax64(logits_f32):
    x = np.asarray(logits_f32, dtype=np.float64)
    m = x.max()
    return x - (m + np.log(np.exp(x - m).sum()))


def topk(lp, k):
    # stable sort on -lp: descending logprob, ties -> ascending id
    order = np.argsort(-lp, kind="stable")[:k]
    return [(int(i), float(lp[i])) for i in order]


def run_case(llm, meta, render, case, im_end_id):
    prompt_text = render.render(
        messages=case["messages"],
        add_generation_prompt=True,
        bos_token=meta["bos_token"],
        eos_token=meta["eos_token"],
    )
    prompt_ids = llm.tokenize(prompt_text.encode("utf-8"), add_bos=meta["add_bos"], special=True)
    P = len(prompt_ids)
    assert P + N_STEPS <= N_CTX

    # ---- incremental greedy decode ------------------------------------------
    llm.reset()
    llm.eval(prompt_ids)
    greedy, rows, lps = [], [], []
    for step in range(N_STEPS):
        assert llm.n_tokens == P + step
        row = np.array(llm.scores[llm.n_tokens - 1], dtype=np.float32, copy=True)
        lp = log_softmax64(row)
        t5 = topk(lp, TOP_K)
        nxt = t5[0][0]
        assert nxt == int(np.argmax(row)), "argmax mismatch"
        greedy.append(nxt)
        rows.append(t5)
        lps.append(lp)
        llm.eval([nxt])

    # ---- check 1: row i's argmax is greedy_ids[i] ------------------------------
    for i, t5 in enumerate(rows):
        assert t5[0][0] == greedy[i]
    gaps = [t5[0][1] - t5[1][1] for t5 in rows]

    # ---- check 2: teacher-forced batched re-evaluation from scratch ----------
    # NOTE: llama.cpp's logits are NOT batch-invariant with its default F16 KV
    # cache: the same sequence evaluated in one batch vs one token at a time
    # gives top-5 logprobs differing by ~0.1-0.2 nats (median), up to ~1 nat,
    # so argmax flips are legitimate at small gaps.  A row/token misalignment
    # would instead break agreement almost everywhere, including large gaps.
    llm.reset()
    llm.eval(prompt_ids + greedy[:-1])
    B = [log_softmax64(np.array(llm.scores[P - 1 + i], dtype=np.float32)) for i in range(N_STEPS)]
    max_dlp, flips, max_flip_gap = 0.0, 0, 0.0
    for i in range(N_STEPS):
        top_ids = [t for t, _ in rows[i]]
        max_dlp = max(max_dlp, float(np.abs(B[i][top_ids] - lps[i][top_ids]).max()))
        if int(np.argmax(B[i])) != greedy[i]:
            flips += 1
            max_flip_gap = max(max_flip_gap, gaps[i])
    # the same check deliberately shifted by one row must fail badly
    shifted = sum(int(np.argmax(B[i + 1])) == greedy[i] for i in range(N_STEPS - 1))
    if flips > N_STEPS // 8 or max_flip_gap > FLIP_GAP_LIMIT:
        raise SystemExit(
            f"[{case['name']}] batched re-evaluation disagrees with greedy_ids at {flips} "
            f"rows (largest gap {max_flip_gap:.3f}): off-by-one?"
        )

    # ---- check 3: llama.cpp's own greedy sampler -------------------------------
    # Same evaluation schedule as above (prompt batch, then 1 token per eval),
    # so this must match exactly.
    llm.reset()
    sampled = []
    for tok in llm.generate(prompt_ids, temp=0.0, top_k=1, top_p=1.0, min_p=0.0,
                            repeat_penalty=1.0, reset=True):
        sampled.append(int(tok))
        if len(sampled) == N_STEPS:
            break
    if sampled != greedy:
        i = next(i for i in range(N_STEPS) if sampled[i] != greedy[i])
        raise SystemExit(
            f"[{case['name']}] llama.cpp's greedy sampler diverges at step {i}: "
            f"{sampled[i]} vs {greedy[i]} (gap {gaps[i]:.6f})"
        )
    llm.reset()

    stop_ids = {meta["eos_id"], im_end_id}
    first_eos = next((i for i, t in enumerate(greedy) if t in stop_ids), None)
    greedy_text = llm.detokenize(greedy, special=True).decode("utf-8", errors="replace")

    out = {
        "name": case["name"],
        "messages": case["messages"],
        "prompt_text": prompt_text,
        "prompt_ids": prompt_ids,
        "greedy_ids": greedy,
        "greedy_text": greedy_text,
        "first_eos_step": first_eos,
        "top5": [[[t, round(l, 6)] for t, l in r] for r in rows],
        "gap": [round(g, 6) for g in gaps],
    }
    diag = {
        "max_dlp_batch_vs_incr": max_dlp,
        "batch_argmax_flips": flips,
        "max_flip_gap": max_flip_gap,
        "shifted_agree": shifted,
    }
    return out, diag


def dump_json(doc):
    """Readable but compact JSON: one key per line, one top5 row per line."""
    d = lambda v: json.dumps(v, ensure_ascii=False)
    lines = ["{"]
    for k, v in doc.items():
        if k != "cases":
            lines.append(f" {d(k)}: {d(v)},")
    lines.append(' "cases": [')
    for ci, c in enumerate(doc["cases"]):
        lines.append("  {")
        keys = list(c)
        for ki, k in enumerate(keys):
            sep = "," if ki + 1 < len(keys) else ""
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


def main():
    if len(sys.argv) != 3:
        sys.exit(f"usage: {sys.argv[0]} MODEL.gguf OUT.json")
    model_path, out_path = sys.argv[1], sys.argv[2]

    llm = Llama(model_path=model_path, n_ctx=N_CTX, n_threads=N_THREADS,
                logits_all=True, verbose=False)
    meta = read_meta(llm)
    if not meta["chat_template"]:
        sys.exit("model has no tokenizer.chat_template")
    render = make_renderer(meta["chat_template"])
    im_end_id = meta["im_end_id"]

    cases, diags = [], []
    for case in CASES:
        out, diag = run_case(llm, meta, render, case, im_end_id)
        cases.append(out)
        diags.append(diag)

    if not any(any(ord(ch) > 127 for m in c["messages"] for ch in m["content"]) for c in cases):
        sys.exit("need at least one non-ASCII prompt")

    doc = {
        "model_file": os.path.basename(model_path),
        "model_sha256": sha256_file(model_path),
        "reference": f"llama.cpp via llama-cpp-python {llama_cpp.__version__}",
        "generated_by": "scripts/gen_fixtures.py",
        "n_steps": N_STEPS,
        "bos_id": meta["bos_id"],
        "eos_id": meta["eos_id"],
        "im_end_id": im_end_id,
        "add_bos": meta["add_bos"],
        "cases": cases,
    }
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    with open(out_path, "w", encoding="utf-8") as f:
        f.write(dump_json(doc))

    # Summary on stderr (not part of the fixture).
    for c, d in zip(cases, diags):
        g = c["gap"]
        preview = c["greedy_text"][:80].replace("\n", "\\n")
        print(
            f"{c['name']:16s} prompt={len(c['prompt_ids']):3d} tok  eos@{c['first_eos_step']}  "
            f"min_gap={min(g):.6f}  n_gap<0.25={sum(x < 0.25 for x in g):2d}  "
            f"max|dlp| batch-vs-incr={d['max_dlp_batch_vs_incr']:.2e} "
            f"flips={d['batch_argmax_flips']} (max gap {d['max_flip_gap']:.3f}, "
            f"shifted-by-one agree {d['shifted_agree']}/63)\n"
            f"    {preview!r}",
            file=sys.stderr,
        )
    print(f"wrote {out_path}", file=sys.stderr)


if __name__ == "__main__":
    main()
