#!/usr/bin/env bash
# Memory per byte received (issue 10): what JSON bodies and upstream answers
# cost the release binary, on loopback only. Prints Markdown table rows:
#   idle RSS; peak RSS (VmHWM) after one 10 MiB body of tiny values; after
#   eight such bodies at once; after eight non-streaming /v1 answers of
#   7.5 MiB of tiny values at once (from examples/mock_upstream.rs).
# Each peak is measured on a fresh server with a fresh data dir (VmHWM is a
# high-water mark). Budget: one request at most 3x its body above idle;
# eight 10 MiB bodies under 128 MiB in all.
#
# Usage: scripts/body_memory.sh [--no-build]
# Needs: curl. Every wait is bounded; everything started is stopped on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)

if [ "${1:-}" != "--no-build" ]; then
  echo "building release binaries..." >&2
  cargo build --release --locked --bin portcullis --example mock_upstream >&2
fi
BIN=$ROOT/target/release/portcullis
MOCK=$ROOT/target/release/examples/mock_upstream
[ -x "$BIN" ] && [ -x "$MOCK" ] || { echo "missing $BIN or $MOCK (run without --no-build)" >&2; exit 1; }
command -v curl >/dev/null || { echo "body_memory.sh needs curl" >&2; exit 1; }

MIB=$((1024 * 1024))
BODY_BYTES=$((10 * MIB - 64))      # under the default max_body_bytes (10 MiB)
ANSWER_BYTES=7864320               # 7.5 MiB
TMP=$(mktemp -d /tmp/portcullis-bodymem.XXXXXX)
PIDS=()
cleanup() {
  for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$TMP"
}
trap cleanup EXIT

status_kib() { awk -v k="$2:" '$1==k{print $2}' /proc/"$1"/status; }
mib() { awk -v k="$1" 'BEGIN{printf "%.1f", k/1024}'; }

# The body: {"name":"x","pad":[0,0,...]} of BODY_BYTES, refused (400
# validation_failed, unknown field) after it was parsed.
BODY=$TMP/body.json
{
  printf '{"name":"x","pad":[0'
  # `yes` ends on SIGPIPE once `head` has enough: not a failure here.
  (set +o pipefail; yes ',0' | head -n $(((BODY_BYTES - 22) / 2)) | tr -d '\n')
  printf ']}'
} >"$BODY"

# The mock upstream: answers non-streaming requests with ANSWER_BYTES of
# tiny values. It prints its address (port 0 picks a free one).
"$MOCK" 127.0.0.1:0 0 "tiny:$ANSWER_BYTES" >"$TMP/mock.out" 2>&1 &
MOCK_PID=$!; PIDS+=("$MOCK_PID")
UP=""
for _ in $(seq 1 200); do
  UP=$(awk '/listening on/{print $5; exit}' "$TMP/mock.out")
  [ -n "$UP" ] && break
  sleep 0.05
done
[ -n "$UP" ] || { echo "mock upstream did not start" >&2; exit 1; }

# A fresh server on 127.0.0.1:0 with its own data dir; sets PC_PID, PC_ADDR.
start_server() {
  local dir=$TMP/data-$1; mkdir -p "$dir"
  env -i PATH="$PATH" HOME="$TMP" \
    PORTCULLIS_SERVER_BIND=127.0.0.1:0 \
    PORTCULLIS_SERVER_DATA_DIR="$dir" \
    PORTCULLIS_AUTH_MODE=none \
    PORTCULLIS_RATE_LIMIT_CHAT_PER_MINUTE=100000 \
    PORTCULLIS_RATE_LIMIT_OTHER_PER_MINUTE=100000 \
    PORTCULLIS_UPSTREAM_BASE_URL="http://$UP/v1" \
    PORTCULLIS_LOGGING_FILE="$dir/portcullis.log" \
    "$BIN" serve >/dev/null 2>"$dir/stderr" &
  PC_PID=$!; PIDS+=("$PC_PID")
  PC_ADDR=""
  for _ in $(seq 1 200); do
    PC_ADDR=$(cat "$dir/portcullis.addr" 2>/dev/null || true)
    [[ "$PC_ADDR" == *:* ]] && break
    sleep 0.05
  done
  [[ "$PC_ADDR" == *:* ]] || { echo "portcullis did not start: $(cat "$dir/stderr")" >&2; exit 1; }
  # Warm up (threads, database, first response) before any baseline.
  curl -s -o /dev/null --max-time 10 -H 'Host: localhost' "http://$PC_ADDR/health"
  sleep 0.5
}
stop_server() { kill -TERM "$PC_PID" 2>/dev/null || true; wait "$PC_PID" 2>/dev/null || true; }

# POST FILE to PATH, N at once; prints the status codes.
post_n() {
  local path=$1 file=$2 n=$3 i
  for i in $(seq 1 "$n"); do
    curl -s -o /dev/null -w '%{http_code}\n' --max-time 60 \
      -H 'Host: localhost' -H 'Origin: http://localhost:3000' \
      -H 'Content-Type: application/json' --data-binary @"$file" \
      "http://$PC_ADDR$path" &
  done
  wait # runs in $(...): waits for these curls only
}

# One figure on a fresh server: label, path, file, concurrency, bytes each.
peak_row() {
  local label=$1 path=$2 file=$3 n=$4 each=$5
  start_server "$label"
  local idle hwm codes grew per
  idle=$(status_kib "$PC_PID" VmRSS)
  codes=$(post_n "$path" "$file" "$n" | sort | uniq -c | awk '{printf "%s%s x%s", (NR>1?", ":""), $2, $1}')
  hwm=$(status_kib "$PC_PID" VmHWM)
  grew=$((hwm - idle))
  per=$(awk -v g="$grew" -v b="$each" -v n="$n" 'BEGIN{printf "%.2f", g*1024/(b*n)}')
  echo "| $label | $(mib "$hwm") MiB | +$(mib "$grew") MiB over idle $(mib "$idle") MiB | ${per}x the bytes received | $codes |"
  stop_server
}

ASK=$TMP/ask.json
printf '{"messages":[{"role":"user","content":"hi"}]}' >"$ASK"

echo "| figure | peak RSS (VmHWM) | growth | per byte | statuses |"
echo "|---|---|---|---|---|"
start_server idle
echo "| idle (after one /health) | $(mib "$(status_kib "$PC_PID" VmHWM)") MiB | RSS $(mib "$(status_kib "$PC_PID" VmRSS)") MiB | - | - |"
stop_server
peak_row "one 10 MiB body of tiny values (POST /api/projects)" /api/projects "$BODY" 1 "$BODY_BYTES"
peak_row "eight 10 MiB bodies at once" /api/projects "$BODY" 8 "$BODY_BYTES"
peak_row "eight 7.5 MiB non-streaming /v1 answers at once" /v1/chat/completions "$ASK" 8 "$ANSWER_BYTES"
