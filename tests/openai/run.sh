#!/usr/bin/env bash
# OpenAI conformance: the official Python clients of OpenAI and Anthropic (pytest) and
# the official npm client (node --test) against a real `verre serve` that each test starts
# on 127.0.0.1.
#
# Usage: VERRE_BIN=target/debug/verre tests/openai/run.sh
# The model to serve is VERRE_TEST_MODEL (default smollm2-135m), looked up in VERRE_HOME's
# store as `verre serve -m` does. Installs its own tools: a venv in target/openai-venv
# (requirements.txt) and node_modules here (package-lock.json).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"

: "${VERRE_BIN:?set VERRE_BIN to the verre binary (e.g. target/debug/verre)}"
VERRE_BIN="$(realpath "$VERRE_BIN")"
export VERRE_BIN
command -v node >/dev/null && command -v npm >/dev/null || {
  echo "tests/openai/run.sh: node and npm are required" >&2
  exit 1
}

venv="$root/target/openai-venv"
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$here/requirements.txt"
(cd "$here" && npm ci --silent --no-audit --no-fund)

cd "$here"
status=0
"$venv/bin/python" -m pytest -q -p no:cacheprovider test_openai.py test_anthropic.py || status=$?
if [ "$status" -eq 5 ]; then
  echo "tests/openai/run.sh: pytest collected no tests" >&2
  exit 1
elif [ "$status" -ne 0 ]; then
  exit "$status"
fi
node --test stream.mjs
