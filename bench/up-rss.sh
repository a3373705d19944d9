#!/usr/bin/env bash
# Peak RSS of `verre up` through the demo (issue 17): each model is loaded once, for the API
# and the intake pipeline alike. The bound is the chat model's file + its KV cache budget
# (--kv-cache-mb of the engine, 1024 MiB by default; pages become resident as they are used)
# + 250 MB for everything else (the embedding model, the runtime, SQLite, the parser child
# is a separate process).
#
#   bench/up-rss.sh                     # release build, qwen2.5-coder-1.5b
#   VERRE=target/debug/verre MODEL=smollm2-135m bench/up-rss.sh
#
# Needs the models pulled into $VERRE_HOME (default ~/.local/share/verre).
set -euo pipefail
cd "$(dirname "$0")/.."
VERRE="${VERRE:-target/release/verre}"
MODEL="${MODEL:-qwen2.5-coder-1.5b}"
TIMEOUT_S="${TIMEOUT_S:-1800}"
store="${VERRE_HOME:-$HOME/.local/share/verre}/models"
[ -x "$VERRE" ] || { echo "up-rss: build $VERRE first" >&2; exit 1; }
[ -d "$store/$MODEL" ] || { echo "up-rss: pull $MODEL into $store first" >&2; exit 1; }

home="$(mktemp -d)"
pid=""
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null; wait 2>/dev/null; rm -rf "$home"; }
trap cleanup EXIT
ln -s "$(cd "$store" && pwd)" "$home/models"
VERRE_HOME="$home" "$VERRE" up --demo --port 0 --poll-secs 1 --model "$MODEL" 2>"$home/up.log" &
pid=$!

start=$(date +%s)
done_count=0
while :; do
    kill -0 "$pid" 2>/dev/null || { cat "$home/up.log" >&2; echo "up-rss: verre up died" >&2; exit 1; }
    if [ -f "$home/verre.db" ]; then
        done_count=$(python3 - "$home/verre.db" <<'PY'
import sqlite3, sys
try:
    c = sqlite3.connect(f"file:{sys.argv[1]}?mode=ro", uri=True, timeout=1)
    total, done = c.execute("SELECT COUNT(*), SUM(status <> 'pending') FROM messages").fetchone()
    print(f"{done or 0}/{total}")
except Exception:
    print("0/0")
PY
)
        total="${done_count#*/}"
        if [ "$total" -gt 0 ] && [ "${done_count%/*}" = "$total" ]; then break; fi
    fi
    [ $(( $(date +%s) - start )) -lt "$TIMEOUT_S" ] || { echo "up-rss: the demo did not finish in ${TIMEOUT_S}s ($done_count)" >&2; exit 1; }
    sleep 2
done
elapsed=$(( $(date +%s) - start ))
hwm_kib=$(awk '/VmHWM/ {print $2}' "/proc/$pid/status")
file_bytes=$(stat -L -c %s "$(find -L "$store/$MODEL" -name '*.gguf' | head -1)")
kv_mb=1024
python3 - "$MODEL" "$hwm_kib" "$file_bytes" "$kv_mb" "$done_count" "$elapsed" <<'PY'
import sys
model, hwm_kib, file_bytes, kv_mb, done, elapsed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5], sys.argv[6]
rss = hwm_kib * 1024 / 1e6
file = file_bytes / 1e6
kv = kv_mb * 1024 * 1024 / 1e6
bound = file + kv + 250
print(f"verre up --demo --model {model}: {done} demo mails through the pipeline in {elapsed} s")
print(f"peak RSS {rss:.1f} MB; bound file {file:.1f} + KV budget {kv:.1f} + 250 = {bound:.1f} MB: {'met' if rss <= bound else 'NOT met'}")
print(f"over the model file: {rss - file:.1f} MB")
PY
