#!/usr/bin/env bash
# Fuzz verre's parsers of untrusted input on stable Rust (crates/fuzz): each target for
# SECONDS (default 60) in its own process, over the seeds in fuzz/corpus/<target>/, and print
# executions per target. A panic or a dead process leaves its input in fuzz/crashes/<target>/;
# keep it in fuzz/regressions/<target>/ with the fix (`cargo test -p verre-fuzz` replays them).
#   scripts/fuzz.sh [SECONDS] [TARGET...]        FUZZ_SEED=N picks another mutation sequence
set -uo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-60}"
shift || true
cargo build -q -p verre-fuzz || exit 1
bin=target/debug/verre-fuzz
targets=("$@")
if [ "${#targets[@]}" -eq 0 ]; then
    mapfile -t targets < <("$bin" --list | cut -f1)
fi
failed=()
for t in "${targets[@]}"; do
    if ! "$bin" --seconds "$seconds" --seed "${FUZZ_SEED:-$RANDOM}" "$t"; then
        failed+=("$t")
    fi
done
if [ "${#failed[@]}" -gt 0 ]; then
    echo "fuzz: findings in ${failed[*]}: see fuzz/crashes/" >&2
    exit 1
fi
