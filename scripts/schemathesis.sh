#!/usr/bin/env bash
# Runs schemathesis (every check, every phase: examples, coverage, fuzzing
# and the stateful phase) against the OpenAPI document the server serves,
# which is generated from the route table (src/routes/openapi.rs). The
# server is the release binary on a free loopback port, with a fresh data
# dir, its first API key as a Bearer header and the mock upstream
# (examples/mock_upstream.rs) as its model server. Nothing leaves loopback.
#
# Usage: scripts/schemathesis.sh [extra schemathesis run options]
# Env:   MAX_EXAMPLES (default 50 per operation); MAX_TIME (seconds; when
#        set, fuzzing and the stateful phase repeat until it is spent);
#        DEADLINE (hard bound on the whole run, seconds, default 1800);
#        SEED (default 1, reproducible; empty for random); PROFILE (release,
#        or debug for a quicker build while iterating).
# Exit status: schemathesis's (0 when no check failed). The report (JUnit)
# and the server's log are kept in $OUT (default target/schemathesis).
#
# Known disagreement (a check against the binding contract): with some
# seeds the stateful phase reports ST302 "Created resource not found" for
# a conversation whose project it deleted first. The contract has
# `DELETE /api/projects/{id}` remove the project's conversations, so the
# 404 is right; ensure_resource_availability only knows about a DELETE of
# the resource itself. The server log shows the project's DELETE just
# before. The same check also fires (seed 1, on the merged tree) when a
# PATCH /api/conversations/{id} names a `project_id` that does not exist:
# the server answers 404 `not_found` for the unknown project (the contract:
# "unknown path or id" is 404), which ST302 reads as the conversation
# missing. A 400 instead trips positive_data_acceptance (schema-valid data
# refused), so one of the two checks disagrees with any contract answer.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
MAX_EXAMPLES=${MAX_EXAMPLES:-50}
MAX_TIME=${MAX_TIME:-}
DEADLINE=${DEADLINE:-1800}
SEED=${SEED-1}
PROFILE=${PROFILE:-release}
OUT=${OUT:-$ROOT/target/schemathesis}

if ! command -v schemathesis >/dev/null 2>&1; then
  echo "installing schemathesis with pip..." >&2
  python3 -m pip install --quiet schemathesis >&2
fi

echo "building $PROFILE binaries..." >&2
if [ "$PROFILE" = release ]; then
  cargo build --release --locked --bin portcullis --example mock_upstream >&2
else
  cargo build --locked --bin portcullis --example mock_upstream >&2
fi
BIN=$ROOT/target/$PROFILE/portcullis
MOCK=$ROOT/target/$PROFILE/examples/mock_upstream

TMP=$(mktemp -d /tmp/portcullis-schemathesis.XXXXXX)
PIDS=()
cleanup() {
  for p in "${PIDS[@]:-}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$TMP"
}
trap cleanup EXIT

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
wait_for() {
  for _ in $(seq 1 200); do [ -s "$1" ] && return 0; sleep 0.05; done
  echo "$1 did not appear" >&2
  return 1
}
wait_port() {
  for _ in $(seq 1 200); do (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0; sleep 0.05; done
  echo "port $1 did not open" >&2
  return 1
}

UP_PORT=$(free_port)
"$MOCK" "127.0.0.1:$UP_PORT" 1 >"$TMP/upstream.log" 2>&1 &
PIDS+=($!)
wait_port "$UP_PORT"

# Limits raised so the run tests the API, not the rate limiter (429 is
# documented, but a run of 429s checks nothing); the key-failure limit too,
# since the ignored_auth check sends requests without a valid key.
DATA=$TMP/data
mkdir -p "$DATA" "$OUT"
(cd "$TMP" && env -i PATH="$PATH" HOME="$TMP" \
  PORTCULLIS_SERVER_BIND=127.0.0.1:0 \
  PORTCULLIS_SERVER_DATA_DIR="$DATA" \
  PORTCULLIS_RATE_LIMIT_CHAT_PER_MINUTE=1000000 \
  PORTCULLIS_RATE_LIMIT_OTHER_PER_MINUTE=1000000 \
  PORTCULLIS_AUTH_MAX_FAILURES_PER_MINUTE=1000000 \
  PORTCULLIS_UPSTREAM_BASE_URL="http://127.0.0.1:$UP_PORT/v1" \
  PORTCULLIS_UPSTREAM_MODEL=mock \
  PORTCULLIS_LOGGING_FILE="$OUT/server.log" \
  "$BIN" serve >/dev/null 2>"$OUT/server.stderr") &
PIDS+=($!)
wait_for "$DATA/portcullis.addr"
wait_for "$DATA/first_api_key"
ADDR=$(cat "$DATA/portcullis.addr")
KEY=$(cat "$DATA/first_api_key")
case "$ADDR" in
  127.0.0.1:*) ;;
  *) echo "refusing to test a non-loopback address: $ADDR" >&2; exit 1 ;;
esac
URL="http://$ADDR"
echo "portcullis at $URL, upstream mock at 127.0.0.1:$UP_PORT" >&2

EXTRA=()
[ -n "$SEED" ] && EXTRA+=(--seed "$SEED")
[ -n "$MAX_TIME" ] && EXTRA+=(--max-time "$MAX_TIME")
# Run from $OUT: schemathesis keeps its cache (which replays earlier
# failures first) in ./.schemathesis, which belongs there, not in the tree.
cd "$OUT"
set +e
timeout "$DEADLINE" schemathesis run "$URL/api/openapi.json" \
  --url "$URL" \
  --checks all \
  --phases examples,coverage,fuzzing,stateful \
  --header "Authorization: Bearer $KEY" \
  --max-examples "$MAX_EXAMPLES" \
  --workers 1 \
  --request-timeout 30 \
  --generation-database none \
  --report junit --report-dir "$OUT" \
  "${EXTRA[@]}" "$@"
STATUS=$?
set -e
echo "schemathesis exit status: $STATUS (report and server log in $OUT)" >&2
exit $STATUS
