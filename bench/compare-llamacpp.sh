#!/usr/bin/env bash
# verre vs llama.cpp, side by side in one run: prefill (pp512) and decode (tg128) tokens/s
# with the same model file and thread count, and the verre/llama.cpp ratio.
#
# Usage: bench/compare-llamacpp.sh MODEL.gguf [QUANT ...]
#   QUANT: also requantize MODEL with llama.cpp's llama-quantize to these types
#          (e.g. Q4_0 Q8_0 Q4_K_M Q6_K) and measure each (for speed only: requantizing an
#          already quantized file costs quality).
# Environment: THREADS (default 2), REPS (default 3), VERRE (default target/release/verre),
#   VERRE_BENCH_CACHE (default ~/.cache/verre-bench): llama.cpp is built there from the
#   source vendored in the PyPI sdist of llama-cpp-python, once. Nothing is written to the repo.
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -ge 1 ] || { sed -n 2,12p "$0"; exit 2; }
model="$1"; shift
[ -f "$model" ] || { echo "compare-llamacpp: no such file: $model" >&2; exit 1; }
threads="${THREADS:-2}"; reps="${REPS:-3}"
verre="${VERRE:-target/release/verre}"
. bench/llamacpp.sh

models=("$model")
for q in "$@"; do
    out="$cache/$(basename "${model%.gguf}")-$q.gguf"
    [ -f "$out" ] || "$build/bin/llama-quantize" --allow-requantize "$model" "$out" "$q" >/dev/null
    models+=("$out")
done

# llama.cpp's threads spin while they wait for each other, so it loses far more than verre
# when other processes want the same cores: ratios from a busy machine mean little. The
# load average is printed with the table for that reason.
load_before="$(cut -d' ' -f1 /proc/loadavg 2>/dev/null || echo '?')"
results="$(mktemp)"
for m in "${models[@]}"; do
    "$build/bin/llama-bench" -m "$m" -p 512 -n 128 -t "$threads" -r "$reps" -o json > "$results.llama"
    "$verre" bench -m "$m" --prompt-tokens 512 --gen-tokens 128 --batch 1 --threads "$threads" \
        --repetitions "$reps" --json > "$results.verre"
    python3 - "$m" "$results.llama" "$results.verre" >> "$results" <<'PY'
import json, os, sys
name, llama, verre = sys.argv[1], json.load(open(sys.argv[2])), json.load(open(sys.argv[3]))
def llama_tps(n_prompt, n_gen):
    for r in llama:
        if r["n_prompt"] == n_prompt and r["n_gen"] == n_gen:
            return r["avg_ts"]
    return float("nan")
pp_l, tg_l = llama_tps(512, 0), llama_tps(0, 128)
pp_v = verre["prefill_tokens_per_second"]["median"]
tg_v = verre["decode"][0]["tokens_per_second"]["median"]
print(f"| {os.path.basename(name)} | pp512 | {pp_v:.1f} | {pp_l:.1f} | {pp_v / pp_l:.2f}x |")
print(f"| {os.path.basename(name)} | tg128 | {tg_v:.1f} | {tg_l:.1f} | {tg_v / tg_l:.2f}x |")
PY
done
load_after="$(cut -d' ' -f1 /proc/loadavg 2>/dev/null || echo '?')"
echo "threads: $threads, repetitions: $reps, llama.cpp: llama-cpp-python $version sdist, $(date -u +%F)," \
    "load average $load_before before, $load_after after"
echo "| model | test | verre t/s | llama.cpp t/s | verre/llama.cpp |"
echo "| --- | --- | --- | --- | --- |"
cat "$results"
rm -f "$results" "$results.llama" "$results.verre"
