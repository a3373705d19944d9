#!/usr/bin/env bash
# The ecosystem matrix (issue 19): the clients people build on, pinned, each against a real
# `verre serve` that the tests start on 127.0.0.1.
#   Python: openai (chat, stream, tools, parse, responses create/stream), openai-agents
#           (default agent, one tool), langchain-openai (with_structured_output, tools,
#           use_responses_api), pydantic-ai (default output_type, Responses model), litellm,
#           and instructor (default mode, nested model) in a venv of its own.
#   npm:    openai, and the Vercel AI SDK (ai + @ai-sdk/openai-compatible).
# Usage: VERRE_BIN=target/debug/verre tests/ecosystem/run.sh
# Installs its own tools: venvs in target/ecosystem-venv{,-instructor}, node_modules here.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"

: "${VERRE_BIN:?set VERRE_BIN to the verre binary (e.g. target/debug/verre)}"
VERRE_BIN="$(realpath "$VERRE_BIN")"
export VERRE_BIN
export LITELLM_LOCAL_MODEL_COST_MAP=True  # litellm would fetch its price list from the internet

venv() { # venv DIR REQUIREMENTS
  [ -x "$1/bin/python" ] || python3 -m venv "$1"
  "$1/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps -r "$2"
}
venv "$root/target/ecosystem-venv" "$here/requirements.txt"
venv "$root/target/ecosystem-venv-instructor" "$here/requirements-instructor.txt"
(cd "$here" && npm ci --silent --no-audit --no-fund)

cd "$here"
status=0
for run in "ecosystem-venv test_python_clients.py" "ecosystem-venv-instructor test_instructor.py"; do
  set -- $run
  rc=0
  "$root/target/$1/bin/python" -m pytest -q -p no:cacheprovider "$2" || rc=$?
  if [ "$rc" -eq 5 ]; then
    echo "tests/ecosystem/run.sh: pytest collected no tests in $2" >&2
    rc=1
  fi
  [ "$rc" -eq 0 ] || status=$rc
done
node --test clients.test.mjs || status=$?
exit "$status"
