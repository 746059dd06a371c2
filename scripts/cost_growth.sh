#!/usr/bin/env bash
# Cost growth (issue 12): the same requests against an empty database and a
# filled one (1,000,000 messages in 10,000 conversations over 100 projects,
# 10,000 API keys, written by examples/bulk_load.rs), in the same run, on
# loopback, with the release binary and auth on. Prints Markdown on stdout
# (a table of p50/p99 per request and the filled/empty ratios, RSS after
# the run, the load figures); progress goes to stderr.
#
# "Empty" holds only what the requests read, so that both sides answer the
# same bytes and only the tables' sizes differ: one page of each list (50
# projects; 100 conversations, 50 in the probed project), two conversations
# of 100 messages (as many as each filled conversation has), 200 messages
# in all, and the keys the cold-key row uses. Both servers run at once and
# the rows alternate between them, ROUNDS times, so machine noise hits both
# sides alike; a row's figure is the median of its rounds' p50 (and p99).
#
# Rows (examples/growth_probe.rs, REQUESTS sequential requests per round on
# one keep-alive connection, after 10 uncounted):
#   GET /api/projects, GET /api/conversations, the same of one project,
#   the last 50 messages of a 100-message conversation (keyset page),
#   POST /api/chat not streaming with 50 messages of history (upstream:
#   `loadgen upstream`, answers at once), and GET /api/projects?limit=1
#   with a key never used before (the key cache is cold: SQLite lookup).
#
# Usage: scripts/cost_growth.sh [--no-build]
# Env: GROWTH_MESSAGES, GROWTH_CONVERSATIONS, GROWTH_KEYS, GROWTH_PROJECTS,
#      GROWTH_REQUESTS (300), GROWTH_ROUNDS (3).
# Every wait is bounded; everything started is stopped on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)

if [ "${1:-}" != "--no-build" ]; then
  echo "building release binaries..." >&2
  cargo build --release --locked --bin portcullis --example loadgen --example bulk_load --example growth_probe >&2
fi
BIN=$ROOT/target/release/portcullis
EX=$ROOT/target/release/examples
for b in "$BIN" "$EX/loadgen" "$EX/bulk_load" "$EX/growth_probe"; do
  [ -x "$b" ] || { echo "missing $b (run without --no-build)" >&2; exit 1; }
done

MESSAGES=${GROWTH_MESSAGES:-1000000}
CONVERSATIONS=${GROWTH_CONVERSATIONS:-10000}
KEYS=${GROWTH_KEYS:-10000}
PROJECTS=${GROWTH_PROJECTS:-100}
N=${GROWTH_REQUESTS:-300}
ROUNDS=${GROWTH_ROUNDS:-3}
PER_CONVERSATION=$((MESSAGES / CONVERSATIONS))
# Line 0 of each keys file is the warm key of the other rows; the cold-key
# row uses lines 1.., each once.
COLD_KEYS=$((N * ROUNDS + 1))
[ "$KEYS" -ge "$COLD_KEYS" ] || { echo "GROWTH_KEYS must be at least $COLD_KEYS" >&2; exit 1; }

UP=127.0.0.1:19111
TMP=$(mktemp -d /tmp/portcullis-growth.XXXXXX)
PIDS=()
cleanup() {
  for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$TMP"
}
trap cleanup EXIT

field() { echo "$1" | tr ' ' '\n' | awk -F= -v k="$2" '$1==k{print $2}'; }
median() { sort -n | awk '{a[NR]=$1} END{print a[int((NR+1)/2)]}'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN{printf "%.2f", a/b}'; }
rss_kib() { awk '/VmRSS/{print $2}' /proc/"$1"/status; }

(exec 3<>/dev/tcp/127.0.0.1/19111) 2>/dev/null && { echo "port 19111 is taken" >&2; exit 1; }
"$EX/loadgen" upstream "$UP" & PIDS+=("$!")
for _ in $(seq 1 200); do (exec 3<>/dev/tcp/127.0.0.1/19111) 2>/dev/null && break; sleep 0.05; done

# Each load prints one line of name=value fields (ids to probe, load_s).
echo "loading the empty database..." >&2
LOAD_EMPTY=$("$EX/bulk_load" "$TMP/empty" --projects 50 --conversations 100 \
  --conversations-per-project 50 --messages $((2 * PER_CONVERSATION)) \
  --conversations-with-messages 2 --keys "$COLD_KEYS")
echo "loading $MESSAGES messages, $CONVERSATIONS conversations, $KEYS keys..." >&2
LOAD_FILLED=$("$EX/bulk_load" "$TMP/filled" --projects "$PROJECTS" --conversations "$CONVERSATIONS" \
  --messages "$MESSAGES" --keys "$KEYS")
DB_MIB_EMPTY=$(du -m "$TMP/empty/portcullis.db" | cut -f1)
DB_MIB_FILLED=$(du -m "$TMP/filled/portcullis.db" | cut -f1)

# start NAME: a server on DATA_DIR $TMP/NAME (limits raised out of the way
# as in bench.sh, auth on); sets PID_<NAME> and ADDR_<NAME>.
start() {
  local dir=$TMP/$1 addr=""
  env -i PATH="$PATH" HOME="$TMP" \
    PORTCULLIS_SERVER_BIND=127.0.0.1:0 \
    PORTCULLIS_SERVER_DATA_DIR="$dir" \
    PORTCULLIS_RATE_LIMIT_CHAT_PER_MINUTE=1000000 \
    PORTCULLIS_RATE_LIMIT_OTHER_PER_MINUTE=1000000 \
    PORTCULLIS_UPSTREAM_BASE_URL=http://$UP/v1 \
    PORTCULLIS_UPSTREAM_MODEL=bench \
    PORTCULLIS_LOGGING_FILE="$dir/portcullis.log" \
    "$BIN" serve >/dev/null 2>"$dir/stderr" &
  local pid=$!; PIDS+=("$pid")
  for _ in $(seq 1 200); do
    addr=$(cat "$dir/portcullis.addr" 2>/dev/null || true)
    [[ "$addr" == *:* ]] && break
    sleep 0.05
  done
  [[ "$addr" == *:* ]] || { echo "portcullis did not start: $(cat "$dir/stderr")" >&2; exit 1; }
  printf -v "PID_$1" %s "$pid"; printf -v "ADDR_$1" %s "$addr"
}
start empty
start filled

# probe SIDE ROW ROUND: one growth_probe run; prints "p50 p99".
probe() {
  local side=$1 row=$2 round=$3 load addr key conv conv2 project out
  load=LOAD_${side^^}; load=${!load}
  addr=ADDR_$side; addr=${!addr}
  key=$(head -1 "$TMP/$side/bulk_keys.txt")
  conv=$(field "$load" conversation_id); conv2=$(field "$load" conversation_id_2)
  project=$(field "$load" project_id)
  case $row in
    projects) out=$("$EX/growth_probe" get "$addr" "$key" /api/projects "$N") ;;
    conversations) out=$("$EX/growth_probe" get "$addr" "$key" /api/conversations "$N") ;;
    of_project) out=$("$EX/growth_probe" get "$addr" "$key" "/api/conversations?project_id=$project" "$N") ;;
    last_50) out=$("$EX/growth_probe" last-page "$addr" "$key" "$conv" "$N") ;;
    chat) out=$("$EX/growth_probe" chat "$addr" "$key" "$conv2" "$N") ;;
    cold_key) out=$("$EX/growth_probe" cold-keys "$addr" "$TMP/$side/bulk_keys.txt" "$N" $((1 + round * N))) ;;
  esac
  echo "$(field "$out" p50_us) $(field "$out" p99_us)"
}

ROWS="projects conversations of_project last_50 chat cold_key"
declare -A P50 P99
for round in $(seq 0 $((ROUNDS - 1))); do
  echo "round $((round + 1)) of $ROUNDS" >&2
  for row in $ROWS; do
    for side in empty filled; do
      read -r a b <<<"$(probe "$side" "$row" "$round")"
      P50[$side.$row]+="$a "; P99[$side.$row]+="$b "
    done
  done
done
RSS_EMPTY=$(rss_kib "$PID_empty"); RSS_FILLED=$(rss_kib "$PID_filled")

label() {
  case $1 in
    projects) echo "GET /api/projects" ;;
    conversations) echo "GET /api/conversations" ;;
    of_project) echo "GET /api/conversations?project_id= (one project)" ;;
    last_50) echo "GET the last 50 messages of a conversation (keyset page)" ;;
    chat) echo "POST /api/chat, not streaming, 50 messages of history" ;;
    cold_key) echo "key check, cold key cache (GET /api/projects?limit=1, a new key each)" ;;
  esac
}
mid() { tr ' ' '\n' | grep . | median; }

echo "| request | empty p50 µs | filled p50 µs | p50 ratio | empty p99 µs | filled p99 µs | p99 ratio |"
echo "|---|---|---|---|---|---|---|"
WORST=0
for row in $ROWS; do
  e50=$(echo "${P50[empty.$row]}" | mid); f50=$(echo "${P50[filled.$row]}" | mid)
  e99=$(echo "${P99[empty.$row]}" | mid); f99=$(echo "${P99[filled.$row]}" | mid)
  r=$(ratio "$f50" "$e50")
  WORST=$(awk -v a="$r" -v b="$WORST" 'BEGIN{print (a > b) ? a : b}')
  echo "| $(label $row) | $e50 | $f50 | **$r** | $e99 | $f99 | $(ratio "$f99" "$e99") |"
done
R_RSS=$(ratio "$RSS_FILLED" "$RSS_EMPTY")
echo "| RSS after the run (KiB) | $RSS_EMPTY | $RSS_FILLED | **$R_RSS** | | | |"
echo
echo "Targets: each p50 ratio ≤ 1.5 (worst here: **$WORST**), RSS ratio ≤ 1.5 (here **$R_RSS**)."
echo
echo "Filled: $(field "$LOAD_FILLED" messages) messages, $(field "$LOAD_FILLED" conversations) conversations,"
echo "$(field "$LOAD_FILLED" projects) projects, $(field "$LOAD_FILLED" keys) keys: a $DB_MIB_FILLED MiB database, loaded in"
echo "$(field "$LOAD_FILLED" load_s) s. Empty: one page of each list (50 projects, 100 conversations, 50"
echo "of them in the probed project), 2 conversations of $PER_CONVERSATION messages, $COLD_KEYS keys: $DB_MIB_EMPTY MiB."
echo "$ROUNDS rounds of $N requests per row and side, alternating sides; each figure is"
echo "the median of the rounds' p50 (p99)."
