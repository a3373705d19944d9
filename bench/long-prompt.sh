#!/usr/bin/env bash
# Long prompts, verre vs llama.cpp: time to first token (the prefill of one prompt from an
# empty cache, in chunks of 512) and peak RSS at several prompt lengths, the same model file,
# thread count and context for both.
#
# Usage: bench/long-prompt.sh MODEL.gguf [TOKENS ...]   (default TOKENS: 1024 4096 16384)
# Environment: THREADS (2), KV_CACHE_TYPE (f16; verre's --kv-cache-type), VERRE
#   (target/release/verre), VERRE_BENCH_CACHE: llama.cpp is built there as by
#   bench/compare-llamacpp.sh, once. llama.cpp runs `llama-bench -p N -n 0 -r 1` (ubatch 512,
#   no flash attention, f16 cache); verre runs `verre bench --prompt-tokens N --gen-tokens 1`.
#   Peak RSS is each process's maximum resident set (GNU time), model file included.
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -ge 1 ] || { sed -n '2,/^set /{/^#/p}' "$0"; exit 2; }
model="$1"; shift
[ -f "$model" ] || { echo "long-prompt: no such file: $model" >&2; exit 1; }
lengths=("$@"); [ ${#lengths[@]} -gt 0 ] || lengths=(1024 4096 16384)
threads="${THREADS:-2}"; kv="${KV_CACHE_TYPE:-f16}"
verre="${VERRE:-target/release/verre}"
. bench/llamacpp.sh
[ -x /usr/bin/time ] || { echo "long-prompt: needs GNU time (/usr/bin/time)" >&2; exit 1; }

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
rss_kb() { sed -n 's/^\s*Maximum resident set size (kbytes): //p' "$1"; }

echo "model: $(basename "$model"), threads: $threads, verre KV cache: $kv, $(date -u '+%F %H:%M UTC'), load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "| prompt tokens | verre TTFT s | llama.cpp TTFT s | verre/llama.cpp | verre peak RSS MB | llama.cpp peak RSS MB |"
echo "| --- | --- | --- | --- | --- | --- |"
for n in "${lengths[@]}"; do
    /usr/bin/time -v "$build/bin/llama-bench" -m "$model" -p "$n" -n 0 -r 1 -t "$threads" -o json \
        >"$work/llama.json" 2>"$work/llama.time"
    /usr/bin/time -v "$verre" bench -m "$model" --prompt-tokens "$n" --gen-tokens 1 --repetitions 1 \
        --threads "$threads" --kv-cache-type "$kv" --json >"$work/verre.json" 2>"$work/verre.time"
    python3 - "$n" "$work/llama.json" "$work/verre.json" "$(rss_kb "$work/llama.time")" "$(rss_kb "$work/verre.time")" <<'PY'
import json, sys
n, llama, verre = int(sys.argv[1]), json.load(open(sys.argv[2])), json.load(open(sys.argv[3]))
rss_l, rss_v = int(sys.argv[4]) / 1024, int(sys.argv[5]) / 1024
tps_l = next(r["avg_ts"] for r in llama if r["n_prompt"] == n)
ttft_l = n / tps_l
ttft_v = verre["prefill_ms"]["median"] / 1000
print(f"| {n} | {ttft_v:.1f} | {ttft_l:.1f} | {ttft_v / ttft_l:.2f}x | {rss_v:.0f} | {rss_l:.0f} |")
PY
done
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
