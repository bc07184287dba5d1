#!/usr/bin/env bash
# Tests the classifier against its own OpenAPI description: starts the release binary on
# loopback and runs schemathesis (pinned, from PyPI) against /openapi.json. Fails on any
# 5xx, on any response whose status, content type, headers or body the document does not
# describe, and on any request that breaks the schema yet is accepted.
# Needs images/classifier/build.sh to have been run.
# Environment: CLASSIFIER_BIN (default dist/classifier), MAX_EXAMPLES (per operation,
# default 40), IMGFORGE_CACHE, PYTHON.
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/service.sh"

VENV=$CACHE/venv-classifier-schemathesis
MAX_EXAMPLES=${MAX_EXAMPLES:-40}
pinned_venv "$VENV" "$HERE/schemathesis-requirements.txt"
TOKEN=$("$VENV/bin/python" -c 'import secrets; print(secrets.token_hex(16))')
# Small limits, so that schemathesis also meets the refusals.
start_service "$VENV/bin/python" HISTORY_TOKEN="$TOKEN" HISTORY_MAX_ROWS=50 \
    MAX_BODY_BYTES=65536 LOG_LEVEL=warn
base=$BASE

# positive_data_acceptance is left out: the document can say "binary", not "a valid
# PNG", so schema-valid random bytes are rightly refused with 415 not_an_image.
cd "$WORK"
status=0
"$VENV/bin/st" run "$base/openapi.json" \
    --checks all --exclude-checks positive_data_acceptance \
    --header "Authorization: Bearer $TOKEN" \
    --max-examples "$MAX_EXAMPLES" --seed 1 --workers 1 \
    --generation-database none --request-timeout 60 --no-color || status=$?
if ! kill -0 "$PID" 2>/dev/null; then
    cat "$WORK/service.log" >&2
    die "the service died during the run"
fi
if grep -q '"level":"ERROR"' "$WORK/service.log"; then
    grep '"level":"ERROR"' "$WORK/service.log" >&2
    die "the service logged errors"
fi
exit "$status"
