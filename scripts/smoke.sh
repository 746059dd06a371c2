#!/usr/bin/env bash
# Curl checks of the HTTP contract (docs/contract.md) against a running
# portcullis. Exits non-zero on the first failure with a readable message.
#
#   BASE_URL=http://127.0.0.1:8000 API_KEY=pcs_... scripts/smoke.sh
#
# API_KEY is needed in auth mode api_key (the default; the first key is in
# <data_dir>/first_api_key). ORIGIN must be one of allowed_origins
# (default http://localhost:3000). CHAT=1 also checks the chat endpoints
# (needs a reachable upstream, e.g. `cargo run --example mock_upstream`).
set -uo pipefail

BASE_URL=${BASE_URL:-http://127.0.0.1:8000}
API_KEY=${API_KEY:-}
ORIGIN=${ORIGIN:-http://localhost:3000}
CHAT=${CHAT:-0}
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
N=0

fail() { echo "FAIL: $*" >&2; [ -s "$TMP/body" ] && { echo "--- body:" >&2; head -c 600 "$TMP/body" >&2; echo >&2; }; exit 1; }
ok() { N=$((N + 1)); echo "ok $N - $*"; }

# req METHOD PATH [curl args...] -> sets STATUS, body in $TMP/body, headers in $TMP/headers
req() {
  local method=$1 path=$2; shift 2
  local auth=()
  [ -n "$API_KEY" ] && auth=(-H "Authorization: Bearer $API_KEY")
  STATUS=$(curl -sS -o "$TMP/body" -D "$TMP/headers" -w '%{http_code}' -X "$method" \
    --max-time 30 "${auth[@]}" "$@" "$BASE_URL$path") || fail "$method $path: curl failed (is the server at $BASE_URL?)"
}
expect_status() { [ "$STATUS" = "$1" ] || fail "$2: expected status $1, got $STATUS"; }
expect_code() { grep -q "\"code\":\"$1\"" "$TMP/body" || fail "$2: expected error code $1"; }
expect_header() { grep -qi "^$1:" "$TMP/headers" || fail "$2: missing header $1"; }
json_field() { python3 -c "import json,sys; d=json.load(open('$TMP/body')); print(eval('d'+sys.argv[1]))" "$1" 2>/dev/null; }
jpost() { req "$1" "$2" -H 'Content-Type: application/json' -H "Origin: $ORIGIN" --data "$3"; }

# --- health and headers ------------------------------------------------------
req GET /health
expect_status 200 "GET /health"
grep -q '"status":"ok"' "$TMP/body" || fail "GET /health: body lacks status ok"
for h in X-Request-Id X-Content-Type-Options X-Frame-Options Referrer-Policy Content-Security-Policy Cache-Control; do
  expect_header "$h" "GET /health"
done
grep -qi '^Server:.*[0-9]' "$TMP/headers" && fail "GET /health: Server header carries a version"
ok "GET /health is ok with security headers"

req GET /health/ready
[ "$STATUS" = 200 ] || [ "$STATUS" = 503 ] || fail "GET /health/ready: status $STATUS"
grep -q '"database"' "$TMP/body" || fail "GET /health/ready: no database check"
ok "GET /health/ready reports its checks"

req GET /no/such/path
expect_status 404 "unknown path"; expect_code not_found "unknown path"; expect_header X-Request-Id "404"
ok "unknown path is 404 not_found"

req DELETE /health -H "Origin: $ORIGIN"
expect_status 405 "DELETE /health"; expect_code method_not_allowed "DELETE /health"; expect_header Allow "405"
ok "wrong method is 405 with Allow"

req GET /health -H 'Host: evil.example'
expect_status 421 "foreign Host"; expect_code host_not_allowed "foreign Host"
ok "foreign Host is 421"

# --- auth, origin, CORS -----------------------------------------------------------
if [ -n "$API_KEY" ]; then
  STATUS=$(curl -sS -o "$TMP/body" -w '%{http_code}' "$BASE_URL/api/projects")
  expect_status 401 "no key"; expect_code unauthorized "no key"
  STATUS=$(curl -sS -o "$TMP/body" -w '%{http_code}' -H 'Authorization: Bearer pcs_not_a_real_key' "$BASE_URL/api/projects")
  expect_status 401 "bad key"
  ok "missing and unknown keys are 401"
fi

req POST /api/projects -H 'Content-Type: application/json' -H 'Origin: http://evil.example' --data '{"name":"x"}'
expect_status 403 "foreign Origin"; expect_code origin_not_allowed "foreign Origin"
ok "foreign Origin is 403"

req OPTIONS /api/projects -H "Origin: $ORIGIN" -H 'Access-Control-Request-Method: POST'
expect_status 204 "preflight"
grep -qi "^Access-Control-Allow-Origin: $ORIGIN" "$TMP/headers" || fail "preflight: origin not echoed"
grep -qi '^Access-Control-Allow-Origin: \*' "$TMP/headers" && fail "preflight: wildcard origin"
grep -qi '^Vary:.*Origin' "$TMP/headers" || fail "preflight: no Vary: Origin"
ok "CORS preflight echoes the allowed origin"

req GET /api/csrf-token
expect_status 200 "csrf token"
grep -q '"token"' "$TMP/body" || fail "csrf token: no token"
ok "GET /api/csrf-token gives a token"

# --- resources ----------------------------------------------------------------------
req POST /api/projects -H "Origin: $ORIGIN" --data '{"name":"x"}' -H 'Content-Type: text/plain'
expect_status 415 "text/plain body"; expect_code unsupported_media_type "text/plain body"
ok "non-JSON content type is 415"

jpost POST /api/projects '{"name":'
expect_status 400 "broken JSON"; expect_code invalid_json "broken JSON"
ok "broken JSON is 400 invalid_json"

jpost POST /api/projects '{"name":""}'
expect_status 400 "empty name"; expect_code validation_failed "empty name"
grep -q '"field":"name"' "$TMP/body" || fail "empty name: field not named"
ok "validation names the field"

jpost POST /api/projects '{"name":"smoke project","description":"from smoke.sh"}'
expect_status 201 "create project"
PROJECT=$(json_field "['id']"); [ -n "$PROJECT" ] || fail "create project: no id"
json_field "['created_at']" | grep -Eq '^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9:]{8}\.[0-9]{3}Z$' || fail "create project: created_at not RFC 3339 with ms"
ok "POST /api/projects creates ($PROJECT)"

req GET "/api/projects/$PROJECT"; expect_status 200 "get project"
jpost PATCH "/api/projects/$PROJECT" '{"name":"renamed"}'; expect_status 200 "patch project"
grep -q '"renamed"' "$TMP/body" || fail "patch project: name not changed"
req GET "/api/projects?limit=1"; expect_status 200 "list projects"
grep -q '"items"' "$TMP/body" && grep -q '"next_cursor"' "$TMP/body" || fail "list: not {items, next_cursor}"
req GET "/api/projects?limit=0"; expect_status 400 "limit=0"
ok "project get, patch, list and pagination shape"

jpost POST /api/conversations "{\"project_id\":\"$PROJECT\",\"title\":\"smoke\"}"
expect_status 201 "create conversation"
CONV=$(json_field "['id']")
req GET "/api/conversations?project_id=$PROJECT"; expect_status 200 "list conversations"
grep -q "$CONV" "$TMP/body" || fail "list conversations: new one missing"
req GET "/api/conversations/$CONV/messages"; expect_status 200 "list messages"
ok "conversation create, list by project, messages"

if [ "$CHAT" = 1 ]; then
  jpost POST /api/chat "{\"conversation_id\":\"$CONV\",\"message\":\"hello\"}"
  expect_status 200 "chat"; grep -q '"message"' "$TMP/body" || fail "chat: no message"
  STATUS=$(curl -sS -N -o "$TMP/body" -w '%{http_code}' --max-time 60 -H "Authorization: Bearer $API_KEY" \
    -H 'Content-Type: application/json' -H "Origin: $ORIGIN" \
    --data "{\"conversation_id\":\"$CONV\",\"message\":\"stream please\",\"stream\":true}" "$BASE_URL/api/chat")
  expect_status 200 "chat stream"
  for ev in start delta done; do grep -q "^event: $ev" "$TMP/body" || fail "chat stream: no $ev event"; done
  jpost POST /v1/chat/completions '{"messages":[{"role":"user","content":"hi"}]}'
  expect_status 200 "v1 chat"; grep -q '"choices"' "$TMP/body" || fail "v1 chat: no choices"
  req GET /v1/models; expect_status 200 "v1 models"
  ok "chat, chat stream (start/delta/done), /v1 relay and models"
fi

req DELETE "/api/projects/$PROJECT" -H "Origin: $ORIGIN"; expect_status 204 "delete project"
req GET "/api/conversations/$CONV"; expect_status 404 "conversation after project delete"
ok "deleting a project removes its conversations"

req GET /api/openapi.json; expect_status 200 "openapi"
grep -q '"openapi"' "$TMP/body" || fail "openapi: not an OpenAPI document"
ok "GET /api/openapi.json"

echo "smoke: all $N checks passed"
