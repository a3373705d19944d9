#!/usr/bin/env bash
# verre vs sentence-transformers, side by side in one run: embedding throughput (passages/s)
# of the same all-MiniLM-L6-v2 folder on the same passages and thread count, and how close
# the two engines' vectors are (cosine per passage).
#
# Usage: bench/compare-embeddings.sh [PASSAGES]   (default 512)
#   The passages are real English text nobody here wrote: the `description` strings of the
#   JSON Schemas in ../shared/eval/schemas, joined and cut into pieces of about 800
#   characters on word boundaries (the archive's passage size), the first PASSAGES of them.
# Environment: THREADS (default 2), REPS (default 3), BATCH (default 32: inputs per request
#   to verre, batch_size for sentence-transformers), VERRE (default target/release/verre),
#   MODEL_DIR (default $VERRE_HOME/models/minilm-l6, as `verre pull minilm-l6` leaves it),
#   ST_PYTHON (a Python with sentence-transformers; default: a venv made once under
#   VERRE_BENCH_CACHE, default ~/.cache/verre-bench — PyTorch from PyPI is about 6 GB
#   installed). Nothing is written to the repo.
set -euo pipefail
cd "$(dirname "$0")/.."
passages="${1:-512}"
threads="${THREADS:-2}"; reps="${REPS:-3}"; batch="${BATCH:-32}"
verre="${VERRE:-target/release/verre}"
home="${VERRE_HOME:-$HOME/.local/share/verre}"
model_dir="${MODEL_DIR:-$home/models/minilm-l6}"
shared="${VERRE_SHARED_DIR:-../shared}"
cache="${VERRE_BENCH_CACHE:-$HOME/.cache/verre-bench}"
[ -x "$verre" ] || { echo "compare-embeddings: no verre binary at $verre (cargo build --release)" >&2; exit 1; }
[ -f "$model_dir/modules.json" ] || { echo "compare-embeddings: no sentence-transformers folder at $model_dir (verre pull minilm-l6)" >&2; exit 1; }
[ -d "$shared/eval/schemas" ] || { echo "compare-embeddings: no $shared/eval/schemas (set VERRE_SHARED_DIR)" >&2; exit 1; }

if [ -z "${ST_PYTHON:-}" ]; then
    ST_PYTHON="$cache/st-venv/bin/python"
    if [ ! -x "$ST_PYTHON" ]; then
        python3 -m venv "$cache/st-venv"
        "$cache/st-venv/bin/pip" install --quiet sentence-transformers
    fi
fi

work="$(mktemp -d)"
server=""
cleanup() { [ -n "$server" ] && kill "$server" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT

# verre serves the folder by path, on a free loopback port, without keys (loopback only).
RAYON_NUM_THREADS="$threads" "$verre" serve -m "$model_dir" --host 127.0.0.1 --port 0 \
    --threads "$threads" --database "sqlite://$work/verre.db" > "$work/serve.log" 2>&1 &
server=$!
for _ in $(seq 1 300); do
    grep -qE 'http://127\.0\.0\.1:[0-9]+' "$work/serve.log" && break
    kill -0 "$server" 2>/dev/null || { cat "$work/serve.log" >&2; exit 1; }
    sleep 0.2
done
url="$(grep -oE 'http://127\.0\.0\.1:[0-9]+' "$work/serve.log" | head -1)"
[ -n "$url" ] || { echo "compare-embeddings: verre did not start" >&2; cat "$work/serve.log" >&2; exit 1; }

load_before="$(cut -d' ' -f1 /proc/loadavg 2>/dev/null || echo '?')"
OMP_NUM_THREADS="$threads" MKL_NUM_THREADS="$threads" "$ST_PYTHON" - "$url" "$model_dir" \
    "$shared/eval/schemas" "$passages" "$threads" "$reps" "$batch" <<'PY'
import glob, json, os, statistics, sys, time, urllib.error, urllib.request

url, model_dir, schemas, n, threads, reps, batch = sys.argv[1:]
n, threads, reps, batch = int(n), int(threads), int(reps), int(batch)

def descriptions(node):
    if isinstance(node, dict):
        for k, v in node.items():
            if k == "description" and isinstance(v, str):
                yield v
            else:
                yield from descriptions(v)
    elif isinstance(node, list):
        for v in node:
            yield from descriptions(v)

passages, piece = [], []
for path in sorted(glob.glob(os.path.join(schemas, "*", "*.json"))):
    try:
        doc = json.load(open(path, encoding="utf-8"))
    except (ValueError, UnicodeDecodeError):
        continue
    for text in descriptions(doc):
        for word in text.split():
            piece.append(word)
            if sum(len(w) + 1 for w in piece) >= 800:
                passages.append(" ".join(piece))
                piece = []
    if len(passages) >= n:
        break
passages = passages[:n]
if len(passages) < n:
    sys.exit(f"only {len(passages)} passages of text in {schemas}")

# The address is printed before the models are loaded: wait for /v1/models to answer.
for _ in range(600):
    try:
        with urllib.request.urlopen(url + "/v1/models", timeout=60) as r:
            model = json.load(r)["data"][0]["id"]
        break
    except (urllib.error.HTTPError, urllib.error.URLError):
        time.sleep(0.5)
else:
    sys.exit("verre did not become ready in 300 s")

def verre_embed():
    out = []
    for i in range(0, n, batch):
        # sentence-transformers cuts inputs at the model's limit (256 tokens): so does verre.
        body = json.dumps({"model": model, "input": passages[i:i + batch],
                           "truncate": True}).encode()
        req = urllib.request.Request(url + "/v1/embeddings", body,
                                     {"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=600) as r:
                data = json.load(r)["data"]
        except urllib.error.HTTPError as e:
            sys.exit(f"verre answered {e.code}: {e.read().decode(errors='replace')}")
        out += [d["embedding"] for d in sorted(data, key=lambda d: d["index"])]
    return out

import torch
from sentence_transformers import SentenceTransformer
torch.set_num_threads(threads)
st = SentenceTransformer(model_dir, device="cpu")

def st_embed():
    return st.encode(passages, batch_size=batch, normalize_embeddings=True).tolist()

# One untimed warm-up of each, then REPS alternating timed runs.
verre_embed(); st_embed()
times = {"verre": [], "st": []}
for _ in range(reps):
    for name, f in (("verre", verre_embed), ("st", st_embed)):
        t = time.perf_counter(); vecs = f(); times[name].append(time.perf_counter() - t)
        if name == "verre": verre_vecs = vecs
        else: st_vecs = vecs

def cos(a, b):
    dot = sum(x * y for x, y in zip(a, b))
    na = sum(x * x for x in a) ** 0.5; nb = sum(y * y for y in b) ** 0.5
    return dot / (na * nb)
cosines = [cos(a, b) for a, b in zip(verre_vecs, st_vecs)]
tokens = sum(len(st.tokenizer(p, truncation=True, max_length=st.max_seq_length)["input_ids"])
             for p in passages)
v, s = statistics.median(times["verre"]), statistics.median(times["st"])
print(f"passages: {n} (about 800 characters each, {tokens} tokens in all), batch {batch}, "
      f"{threads} threads, {reps} alternating runs (median)")
print(f"sentence-transformers {__import__('sentence_transformers').__version__}, "
      f"torch {torch.__version__}")
print()
print("| engine | passages/s | seconds | runs (s) |")
print("| --- | --- | --- | --- |")
print(f"| verre /v1/embeddings | {n / v:.1f} | {v:.2f} | {', '.join(f'{t:.2f}' for t in times['verre'])} |")
print(f"| sentence-transformers | {n / s:.1f} | {s:.2f} | {', '.join(f'{t:.2f}' for t in times['st'])} |")
print()
print(f"verre / sentence-transformers: {s / v:.2f}x the throughput")
print(f"cosine between the two engines' vectors: mean {statistics.mean(cosines):.6f}, "
      f"min {min(cosines):.6f}")
PY
echo "load average: $load_before before, $(cut -d' ' -f1 /proc/loadavg 2>/dev/null || echo '?') after"
