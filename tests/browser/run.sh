#!/usr/bin/env bash
# The review UI in real headless Chromium (Debian's `chromium`, driven by `playwright-core`
# from npm; see review.test.mjs). Installs what it needs, idempotently: Chromium with
# apt-get when /usr/bin/chromium is missing (needs root, as CI has), node_modules here
# from package-lock.json.
#
# Usage: VERRE_BIN=target/debug/verre tests/browser/run.sh
# VERRE_SCREENSHOT=docs/review-message.png also saves a screenshot of the message page;
# VERRE_SCREENSHOTS=docs saves the desk's (queue, message, confirmation) there;
# VERRE_SCREENSHOT_EVIDENCE=docs/review-evidence.png one of an evidence page.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"

: "${VERRE_BIN:?set VERRE_BIN to the verre binary (e.g. target/debug/verre)}"
VERRE_BIN="$(realpath "$VERRE_BIN")"
export VERRE_BIN
if [ -n "${VERRE_SCREENSHOT:-}" ]; then
  VERRE_SCREENSHOT="$(realpath -m "$VERRE_SCREENSHOT")"
  export VERRE_SCREENSHOT
fi
if [ -n "${VERRE_SCREENSHOTS:-}" ]; then
  VERRE_SCREENSHOTS="$(realpath -m "$VERRE_SCREENSHOTS")"
  export VERRE_SCREENSHOTS
fi
if [ -n "${VERRE_SCREENSHOT_EVIDENCE:-}" ]; then
  VERRE_SCREENSHOT_EVIDENCE="$(realpath -m "$VERRE_SCREENSHOT_EVIDENCE")"
  export VERRE_SCREENSHOT_EVIDENCE
fi
command -v node >/dev/null && command -v npm >/dev/null || {
  echo "tests/browser/run.sh: node and npm are required" >&2
  exit 1
}
if [ ! -x /usr/bin/chromium ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "tests/browser/run.sh: Chromium is missing; install it with: sudo apt-get install chromium" >&2
    exit 1
  fi
  echo "tests/browser/run.sh: installing Chromium from Debian's packages" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2
  apt-get install -y -qq --no-install-recommends chromium >&2
fi
cd "$here"
npm ci --silent --no-audit --no-fund
node --test review.test.mjs desk.test.mjs up.test.mjs evidence.test.mjs
