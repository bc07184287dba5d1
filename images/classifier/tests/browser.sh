#!/usr/bin/env bash
# The classifier's pages in headless Chromium (tests/browser.py): starts the release
# binary on loopback, opens `/` and `/docs` as a person would, and keeps the screenshots.
# Needs images/classifier/build.sh to have been run, and Debian's chromium.
# Environment: CLASSIFIER_BIN (default dist/classifier), ARTIFACTS (where the screenshots
# go, default $IMGFORGE_CACHE/artifacts), IMGFORGE_CACHE, PYTHON, CHROMIUM.
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/service.sh"

VENV=$CACHE/venv-classifier-browser
ARTIFACTS=${ARTIFACTS:-$CACHE/artifacts}
[[ -x ${CHROMIUM:-/usr/bin/chromium} ]] || die "no chromium: apt-get install chromium"
pinned_venv "$VENV" "$HERE/browser-requirements.txt"
start_service "$VENV/bin/python" LOG_LEVEL=warn
mkdir -p "$ARTIFACTS"
"$VENV/bin/python" "$HERE/browser.py" "$BASE" "$DIST/testdata/chelsea.png" "$ARTIFACTS" || {
    cat "$WORK/service.log" >&2
    die "the browser test failed"
}
