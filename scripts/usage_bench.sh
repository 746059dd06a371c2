#!/usr/bin/env bash
# Usage reports (issue 16): 30-day reports over 1,000,000 usage rows, through
# the release server (auth on) on loopback. examples/usage_load.rs writes the
# rows with the server's own write path (rows, labels, day sums; 20 users,
# 40 keys, 5 models, spread over 30 days); the server then answers
# `GET /api/admin/usage` grouped by day, model, key and user, and one user's
# own view (`user_id`, by day), REQUESTS times each (curl, a new connection
# per request, every answer checked 200); `portcullis usage` is timed too.
# The baseline is what a plain SQL aggregate over the window's rows costs
# (one GROUP BY, measured by usage_load on the same file). Prints Markdown on
# stdout; progress on stderr.
#
# Usage: scripts/usage_bench.sh [--no-build]
# Env: USAGE_ROWS (1000000), USAGE_REQUESTS (21).
# Every wait is bounded; everything started is stopped on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)

if [ "${1:-}" != "--no-build" ]; then
  echo "building release binaries..." >&2
  cargo build --release --locked --bin portcullis --example usage_load >&2
fi
BIN=$ROOT/target/release/portcullis
LOAD=$ROOT/target/release/examples/usage_load
for b in "$BIN" "$LOAD"; do
  [ -x "$b" ] || { echo "missing $b (run without --no-build)" >&2; exit 1; }
done
command -v curl >/dev/null || { echo "curl is required" >&2; exit 1; }

ROWS=${USAGE_ROWS:-1000000}
N=${USAGE_REQUESTS:-21}
PORT=19171
TMP=$(mktemp -d /tmp/portcullis-usage.XXXXXX)
PID=
cleanup() {
  [ -n "$PID" ] && kill "$PID" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$TMP"
}
trap cleanup EXIT

field() { echo "$1" | tr ' ' '\n' | awk -F= -v k="$2" '$1==k{print $2}'; }
median() { sort -n | awk '{a[NR]=$1} END{print a[int((NR+1)/2)]}'; }
maxof() { sort -n | tail -1; }

echo "loading $ROWS usage rows..." >&2
LOADED=$("$LOAD" "$TMP/data" --rows "$ROWS")
USER_ID=$(field "$LOADED" user_id)
DB_MB=$(du -m "$TMP/data/portcullis.db" | awk '{print $1}')

(exec 3<>/dev/tcp/127.0.0.1/$PORT) 2>/dev/null && { echo "port $PORT is taken" >&2; exit 1; }
PORTCULLIS_SERVER_BIND=127.0.0.1:$PORT PORTCULLIS_SERVER_DATA_DIR="$TMP/data" \
  PORTCULLIS_RATE_LIMIT_OTHER_PER_MINUTE=100000 PORTCULLIS_LOGGING_LEVEL=warn \
  "$BIN" serve 2>"$TMP/server.log" & PID=$!
for _ in $(seq 1 200); do (exec 3<>/dev/tcp/127.0.0.1/$PORT) 2>/dev/null && break; sleep 0.05; done
for _ in $(seq 1 100); do [ -s "$TMP/data/first_api_key" ] && break; sleep 0.05; done
KEY=$(cat "$TMP/data/first_api_key")

# url path -> "p50_ms max_ms items"
timed() {
  local path=$1 times=() items=0 out code
  for _ in $(seq 1 "$N"); do
    out=$(curl -s -o "$TMP/answer" -w '%{http_code} %{time_total}' -H "Authorization: Bearer $KEY" "http://127.0.0.1:$PORT$path")
    code=${out%% *}
    [ "$code" = 200 ] || { echo "$path answered $code: $(cat "$TMP/answer")" >&2; exit 1; }
    times+=("$(awk -v t="${out#* }" 'BEGIN{printf "%.2f", t*1000}')")
  done
  items=$(grep -o '"group"' "$TMP/answer" | wc -l)
  echo "$(printf '%s\n' "${times[@]}" | median) $(printf '%s\n' "${times[@]}" | maxof) $items"
}

echo "timing reports..." >&2
echo "| report (30 days, $ROWS rows) | p50 | max | groups |"
echo "|---|---|---|---|"
for row in "admin, by day|/api/admin/usage?group_by=day" \
           "admin, by model|/api/admin/usage?group_by=model" \
           "admin, by key|/api/admin/usage?group_by=key" \
           "admin, by user|/api/admin/usage?group_by=user" \
           "one user (1/20 of the rows), by day|/api/admin/usage?group_by=day&user_id=$USER_ID"; do
  name=${row%%|*}
  path=${row#*|}
  read -r p50 max items <<<"$(timed "$path")"
  echo "| \`GET\` $name | $p50 ms | $max ms | $items |"
done
CLI_START=$(date +%s%N)
PORTCULLIS_SERVER_DATA_DIR="$TMP/data" "$BIN" usage --by model >/dev/null
CLI_MS=$(( ($(date +%s%N) - CLI_START) / 1000000 ))
echo "| \`portcullis usage --by model\` (process start included) | $CLI_MS ms | | |"
echo
echo "Baseline: the same window as one SQL aggregate over its rows (\`GROUP BY\` day, $(field "$LOADED" naive_rows) rows): $(field "$LOADED" naive_ms) ms (median of 5). Loading $ROWS rows through \`Db::record_usage\` took $(field "$LOADED" load_s) s; the database file is $DB_MB MB."
