#!/usr/bin/env bash
# Chat decode speed of a model with and without a draft model (speculative decoding), greedy:
# five chat prompts, each answered by `verre run --json` three ways, interleaved per prompt
# (plain: --no-speculation; lookup: the default, prompt lookup only; model: --draft-model),
# with the texts compared. Decode tokens/s is tokens after the first over the time after the
# first (the engine's `decode_tokens_per_second`).
#
# Usage: bench/draft-model.sh [TARGET [DRAFT]]
#   (default: qwen2.5-coder-1.5b drafted for by qwen2.5-coder-0.5b; store names or paths)
# Environment: THREADS (2), MAX_TOKENS (128), DRAFT_TOKENS (8), VERRE (target/release/verre).
set -euo pipefail
cd "$(dirname "$0")/.."
target="${1:-qwen2.5-coder-1.5b}"; draft="${2:-qwen2.5-coder-0.5b}"
threads="${THREADS:-2}"; max_tokens="${MAX_TOKENS:-128}"; draft_tokens="${DRAFT_TOKENS:-8}"
verre="${VERRE:-target/release/verre}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
prompts=(
    "Explain how a hash map works and when to use one instead of a sorted tree."
    "Write a Python function that parses an ISO 8601 date string without libraries, with comments."
    "What are the main differences between TCP and UDP? Give examples of protocols using each."
    "Write a short story about a lighthouse keeper who finds a message in a bottle."
    "Describe step by step how to make a sourdough bread at home."
)
echo "target: $target, draft: $draft, threads: $threads, max_tokens: $max_tokens, draft_tokens: $draft_tokens, $(date -u '+%F %H:%M UTC'), load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
for i in "${!prompts[@]}"; do
    for way in plain lookup model; do
        case "$way" in
            plain) flags=(--no-speculation) ;;
            lookup) flags=() ;;
            model) flags=(--draft-model "$draft") ;;
        esac
        "$verre" run -m "$target" --json --max-tokens "$max_tokens" --threads "$threads" \
            --draft-tokens "$draft_tokens" "${flags[@]}" "${prompts[$i]}" >"$work/$i-$way.json"
    done
done
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
python3 - "$work" "${#prompts[@]}" <<'PY'
import json, sys
work, n = sys.argv[1], int(sys.argv[2])
ways = ["plain", "lookup", "model"]
print("| prompt | tokens | plain tok/s | lookup tok/s | model tok/s | model/plain | drafted by model (accepted) | forward passes plain / model | same text |")
print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
sums = {w: [0, 0.0] for w in ways}
for i in range(n):
    r = {w: json.load(open(f"{work}/{i}-{w}.json")) for w in ways}
    tps = {w: r[w]["timings"]["decode_tokens_per_second"] for w in ways}
    for w in ways:
        sums[w][0] += r[w]["completion_tokens"] - 1
        sums[w][1] += r[w]["timings"]["decode_ms"]
    same = all(r[w]["token_ids"] == r["plain"]["token_ids"] for w in ways)
    e = r["model"]["engine"]
    print(f"| {i + 1} | {r['plain']['completion_tokens']} | {tps['plain']:.1f} | {tps['lookup']:.1f} | {tps['model']:.1f} "
          f"| {tps['model'] / tps['plain']:.2f}x | {e['model_draft_tokens']} ({e['model_accepted_draft_tokens']}) "
          f"| {r['plain']['engine']['forward_passes']} / {e['forward_passes']} | {'yes' if same else 'NO'} |")
tot = {w: sums[w][0] * 1000 / sums[w][1] for w in ways}
print(f"| all | | {tot['plain']:.1f} | {tot['lookup']:.1f} | {tot['model']:.1f} | {tot['model'] / tot['plain']:.2f}x | | | |")
PY
