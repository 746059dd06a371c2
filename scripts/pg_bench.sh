#!/usr/bin/env bash
# PostgreSQL as the store (issue 18): the relay and storage benchmarks of
# bench.sh with SQLite, with PostgreSQL, and with two instances on one
# PostgreSQL database, side by side in one run; and the shared limiter's
# own cost (examples/limiter_check.rs). Starts its own PostgreSQL cluster
# (Debian's initdb/pg_ctl, run as the `postgres` user when root) in a temp
# dir on loopback, with its default durability (fsync on, synchronous
# commit). Prints Markdown on stdout; progress on stderr.
#
# Usage: scripts/pg_bench.sh [--no-build]
# Env: BENCH_DURATION (8 s per wrk run).
# Needs wrk and PostgreSQL; every wait is bounded; everything started is
# stopped on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
DUR=${BENCH_DURATION:-8}

if [ "${1:-}" != "--no-build" ]; then
  echo "building release binaries..." >&2
  cargo build --release --locked --bin portcullis --example loadgen --example limiter_check >&2
fi
BIN=$ROOT/target/release/portcullis
LOADGEN=$ROOT/target/release/examples/loadgen
CHECK=$ROOT/target/release/examples/limiter_check
PGBIN=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
[ -x "$PGBIN/initdb" ] || { echo "pg_bench.sh needs PostgreSQL (apt-get install postgresql)" >&2; exit 1; }
command -v wrk >/dev/null || { echo "pg_bench.sh needs wrk" >&2; exit 1; }

TMP=$(mktemp -d /tmp/portcullis-pgbench.XXXXXX)
chmod 755 "$TMP"
# The cluster's own dir (PostgreSQL refuses to run as root).
PGD=$TMP/pgroot; mkdir -m 700 "$PGD"
PIDS=()
AS=()
if [ "$(id -u)" = 0 ]; then AS=(runuser -u postgres --); chown postgres "$PGD"; fi
cleanup() {
  for p in "${PIDS[@]:-}"; do kill "$p" 2>/dev/null || true; done
  "${AS[@]}" "$PGBIN/pg_ctl" -D "$PGD/pg" -m immediate stop >/dev/null 2>&1 || true
  wait 2>/dev/null || true
  rm -rf "$TMP"
}
trap cleanup EXIT

PG_PORT=19140; U_PORT=19141; S_PORT=19142; A_PORT=19143; B_PORT=19144
UP=127.0.0.1:$U_PORT
wait_port() { for _ in $(seq 1 200); do (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0; sleep 0.05; done; echo "port $1 did not open" >&2; return 1; }
wrk_rps() { awk '/Requests\/sec/{print $2}'; }
non2xx() { awk '/Non-2xx/{n=$5} END{print n+0}'; }
us_of() { awk 'function us(v){ if (v ~ /us$/) return v+0; if (v ~ /ms$/) return (v+0)*1000; if (v ~ /s$/) return (v+0)*1000000; return v }
  /^ +50%/{p50=us($2)} /^ +99%/{p99=us($2)} /Requests\/sec/{rps=$2} END{printf "%.0f %.0f %s\n", p50, p99, rps}'; }

echo "starting PostgreSQL..." >&2
"${AS[@]}" "$PGBIN/initdb" -D "$PGD/pg" -U postgres --auth=trust -E UTF8 --locale=C >/dev/null
"${AS[@]}" "$PGBIN/pg_ctl" -D "$PGD/pg" -w -t 60 -l "$PGD/pg.log" \
  -o "-p $PG_PORT -c listen_addresses=127.0.0.1 -k $PGD -c max_connections=100" start >/dev/null
PGV=$("$PGBIN/postgres" --version | awk '{print $3}')
psql_() { "${AS[@]}" "$PGBIN/psql" -X -q -h 127.0.0.1 -p $PG_PORT -U postgres -d postgres -c "$1" >/dev/null; }
psql_ "CREATE DATABASE one"
psql_ "CREATE DATABASE two"
URL_ONE=postgres://postgres@127.0.0.1:$PG_PORT/one?sslmode=disable
URL_TWO=postgres://postgres@127.0.0.1:$PG_PORT/two?sslmode=disable

"$LOADGEN" upstream "$UP" 20 & PIDS+=($!); wait_port $U_PORT

# One portcullis: port, data dir, database URL (empty: SQLite).
start_pc() {
  local port=$1 dir=$2 url=$3; mkdir -p "$dir"
  env -i PATH="$PATH" HOME="$TMP" \
    PORTCULLIS_SERVER_BIND=127.0.0.1:$port \
    PORTCULLIS_SERVER_DATA_DIR="$dir" \
    PORTCULLIS_SERVER_MAX_CONNECTIONS=1024 \
    PORTCULLIS_SERVER_MAX_CONNECTIONS_PER_IP=512 \
    PORTCULLIS_RATE_LIMIT_CHAT_PER_MINUTE=1000000 \
    PORTCULLIS_RATE_LIMIT_OTHER_PER_MINUTE=1000000 \
    PORTCULLIS_UPSTREAM_BASE_URL=http://$UP/v1 \
    PORTCULLIS_UPSTREAM_MODEL=bench \
    PORTCULLIS_DATABASE_URL="$url" \
    PORTCULLIS_DATABASE_POOL_SIZE=8 \
    PORTCULLIS_CSRF_SECRET=0123456789abcdef0123456789abcdef \
    PORTCULLIS_LOGGING_FILE="$dir/portcullis.log" \
    "$BIN" serve >/dev/null 2>"$dir/stderr" &
  # (a failed start is reported with its message)
  PIDS+=($!)
  wait_port "$port" || { cat "$dir/stderr" >&2; exit 1; }
}
start_pc $S_PORT "$TMP/sqlite" ""
start_pc $A_PORT "$TMP/pg-one" "$URL_ONE"
start_pc $B_PORT "$TMP/pg-a" "$URL_TWO"
start_pc $((B_PORT + 1)) "$TMP/pg-b" "$URL_TWO"
for d in sqlite pg-one pg-a; do
  for _ in $(seq 1 100); do [ -s "$TMP/$d/first_api_key" ] && break; sleep 0.05; done
done
KEY_S=$(cat "$TMP/sqlite/first_api_key"); KEY_P=$(cat "$TMP/pg-one/first_api_key"); KEY_2=$(cat "$TMP/pg-a/first_api_key")

lua() { # file key method body
  { echo "wrk.method = \"$3\""; [ -n "$4" ] && echo "wrk.body = '$4'"
    echo 'wrk.headers["Content-Type"] = "application/json"'
    echo "wrk.headers[\"Authorization\"] = \"Bearer $2\""
    echo 'wrk.headers["Host"] = "localhost"'; } > "$1"
}
CHAT='{"model":"bench","messages":[{"role":"user","content":"hello"}]}'
PROJ='{"name":"bench project","description":"created by scripts/pg_bench.sh"}'
for k in S P 2; do
  eval key=\$KEY_$k
  lua "$TMP/chat-$k.lua" "$key" POST "$CHAT"
  lua "$TMP/create-$k.lua" "$key" POST "$PROJ"
done
one() { wrk -t1 -c1 -d${DUR}s --latency -s "$1" "$2" | us_of; }
many() { wrk -t2 -c"$3" -d${DUR}s --latency -s "$1" "$2"; }

echo "relay, one client" >&2
read D50 D99 _ <<<"$(one "$TMP/chat-S.lua" http://$UP/v1/chat/completions)"
read S50 S99 _ <<<"$(one "$TMP/chat-S.lua" http://127.0.0.1:$S_PORT/v1/chat/completions)"
read P50 P99 _ <<<"$(one "$TMP/chat-P.lua" http://127.0.0.1:$A_PORT/v1/chat/completions)"

echo "relay, 32 clients" >&2
OUT=$(many "$TMP/chat-S.lua" http://127.0.0.1:$S_PORT/v1/chat/completions 32); S32=$(echo "$OUT" | wrk_rps); BAD=$(echo "$OUT" | non2xx)
OUT=$(many "$TMP/chat-P.lua" http://127.0.0.1:$A_PORT/v1/chat/completions 32); P32=$(echo "$OUT" | wrk_rps); BAD=$((BAD + $(echo "$OUT" | non2xx)))
# Two instances: 16 clients on each, at once; the sum.
many "$TMP/chat-2.lua" http://127.0.0.1:$B_PORT/v1/chat/completions 16 > "$TMP/two-a" &
WA=$!
many "$TMP/chat-2.lua" http://127.0.0.1:$((B_PORT + 1))/v1/chat/completions 16 > "$TMP/two-b"
wait $WA
T32=$(awk '/Requests\/sec/{s+=$2} END{printf "%.0f", s}' "$TMP/two-a" "$TMP/two-b")
BAD=$((BAD + $(non2xx < "$TMP/two-a") + $(non2xx < "$TMP/two-b")))

echo "creates, 32 connections" >&2
read _ SC99 SCR <<<"$(many "$TMP/create-S.lua" http://127.0.0.1:$S_PORT/api/projects 32 | us_of)"
read _ PC99 PCR <<<"$(many "$TMP/create-P.lua" http://127.0.0.1:$A_PORT/api/projects 32 | us_of)"
many "$TMP/create-2.lua" http://127.0.0.1:$B_PORT/api/projects 16 > "$TMP/cr-a" &
WA=$!
many "$TMP/create-2.lua" http://127.0.0.1:$((B_PORT + 1))/api/projects 16 > "$TMP/cr-b"
wait $WA
TCR=$(awk '/Requests\/sec/{s+=$2} END{printf "%.0f", s}' "$TMP/cr-a" "$TMP/cr-b")
TC99=$(cat "$TMP/cr-a" "$TMP/cr-b" | awk 'function us(v){ if (v ~ /us$/) return v+0; if (v ~ /ms$/) return (v+0)*1000; if (v ~ /s$/) return (v+0)*1000000; return v } /^ +99%/{v=us($2); if (v>m) m=v} END{printf "%.0f", m}')

echo "limiter check" >&2
LIM=$("$CHECK" "$URL_ONE" 5000)
LIM50=$(echo "$LIM" | tr ' ' '\n' | awk -F= '$1=="p50_us"{print $2}')
LIM99=$(echo "$LIM" | tr ' ' '\n' | awk -F= '$1=="p99_us"{print $2}')

ratio() { awk -v a="$1" -v b="$2" 'BEGIN{printf "%.2f", a/b}'; }
cat <<EOF
PostgreSQL $PGV on loopback (one cluster, default durability: fsync and
synchronous commit on), the same loopback upstream (\`loadgen upstream\`,
20 µs), every portcullis with auth on and rate limits raised out of the way
(each request still runs the limiter check: in memory for SQLite, one
statement for PostgreSQL). ${DUR} s per run; two instances means two
processes on one database, driven at once (16 clients each), figures summed.

| figure | SQLite | PostgreSQL | two instances, one PostgreSQL |
|---|---|---|---|
| relay, 1 client: p50 / p99 (direct upstream: $D50 / $D99 µs) | $S50 / $S99 µs | $P50 / $P99 µs | |
| relay overhead at p50 (minus the direct upstream) | $((S50 - D50)) µs | $((P50 - D50)) µs | |
| relay, 32 clients | $S32 req/s | $P32 req/s ($(ratio "$P32" "$S32")x) | $T32 req/s ($(ratio "$T32" "$S32")x) |
| creates, 32 connections: rate / p99 | $SCR /s, $SC99 µs | $PCR /s, $PC99 µs | $TCR /s, $TC99 µs (worse instance) |

Non-2xx answers across the relay runs: $BAD.

The shared limiter's check alone (\`examples/limiter_check.rs\`: 5,000
\`take_request\` calls, one \`INSERT ... ON CONFLICT ... RETURNING\` each on
one connection, 90% on one hot bucket): **p50 $LIM50 µs**, p99 $LIM99 µs
(target: at most 500 µs at p50).
EOF
