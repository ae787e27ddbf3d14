#!/usr/bin/env bash
# realm-service benchmark, one run, side by side on the same machine:
#  1. authenticate throughput and p99 for a warm key vs a bare axum handler returning a fixed 201
#     (wrk, same script, same connections), reported as a ratio;
#  2. cold-cache look-up latency with 1,000 vs 1,000,000 keys in the database, and its size;
#  3. PostgreSQL beside SQLite: a throwaway cluster and two replicas on it; warm authenticate
#     throughput on PostgreSQL vs SQLite, 2 replicas vs 1, and part 2 on PostgreSQL (cold look-up
#     p50 with 1,000,000 vs 1,000 keys).
# Usage: bench/realm-service/run.sh   (env: DURATION=6s CONNECTIONS=32 ROUNDS=5 KEYS=1000,1000000;
#        KEYS= skips part 2; PG=0 skips part 3)
set -euo pipefail
cd "$(dirname "$0")/../.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
DURATION="${DURATION:-6s}"
CONNECTIONS="${CONNECTIONS:-32}"
ROUNDS="${ROUNDS:-5}"
KEYS="${KEYS-1000,1000000}"
LOOKUPS="${LOOKUPS:-2000}"
scripts/install-wrk.sh >/dev/null

cargo build --quiet --release -p realm-service --bin realm-service --example bare_201 --example lookup_latency
BIN="$CARGO_TARGET_DIR/release"
WORK="$(mktemp -d)"
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
PG_STOP=""
cleanup_all() {
  if [ -n "$PG_STOP" ]; then eval "$PG_STOP" >/dev/null 2>&1 || true; fi
  cleanup
}
trap cleanup_all EXIT

# Waits for "listening on ADDR" in a log file and prints ADDR.
listening_addr() {
  for _ in $(seq 1 100); do
    addr="$(grep -o 'listening on [0-9.:]*' "$1" | head -1 | awk '{print $3}')" || true
    if [ -n "${addr:-}" ]; then echo "$addr"; return 0; fi
    sleep 0.1
  done
  echo "no 'listening on' in $1" >&2; cat "$1" >&2; return 1
}

"$BIN/examples/bare_201" 127.0.0.1:0 2>"$WORK/bare.log" & BARE_PID=$!; PIDS+=($!)
"$BIN/examples/bare_201" 127.0.0.1:0 --read-body 2>"$WORK/body.log" & BODY_PID=$!; PIDS+=($!)
REALM_ADMIN_TOKEN=bench-admin-token-0123456789abcdefghij REALM_LOG=warn,realm_service=info \
  "$BIN/realm-service" serve --listen 127.0.0.1:0 --database "$WORK/realm.db" 2>"$WORK/realm.log" & REALM_PID=$!; PIDS+=($!)
BARE="$(listening_addr "$WORK/bare.log")"
BODY="$(listening_addr "$WORK/body.log")"
REALM="$(listening_addr "$WORK/realm.log")"

api() { # method path [body] -> JSON
  curl -sf --max-time 10 -X "$1" -H 'Authorization: Bearer bench-admin-token-0123456789abcdefghij' \
    -H 'Content-Type: application/json' "http://$REALM$2" ${3:+-d "$3"}
}
field() { python3 -c "import json,sys; print(json.load(sys.stdin)['$1'])"; }
CP="$(api POST /v2/control-planes '{"name":"bench"}' | field id)"
export DP_TOKEN="$(api POST "/v2/control-planes/$CP/data-plane-tokens" '{}' | field token)"
REALM_ID="$(api POST /v1/realms "{\"name\":\"bench\",\"allowed_control_planes\":[\"$CP\"]}" | field id)"
CONSUMER="$(api POST "/v1/realms/$REALM_ID/consumers" '{"username":"Ariel"}' | field id)"
export SECRET="$(api POST "/v1/realms/$REALM_ID/consumers/$CONSUMER/keys" '{"type":"new"}' | field secret)"
PATH_AUTH="/$REALM_ID/v0/authenticate"
# The key is warm from here on (first call fills the cache).
test "$(curl -s -o /dev/null -w '%{http_code}' --max-time 10 -H "Authorization: Bearer $DP_TOKEN" \
  -H 'Content-Type: application/json' -d "{\"secret\":\"$SECRET\"}" "http://$REALM$PATH_AUTH")" = 201

LUA="bench/realm-service/post.lua"
# CPU time (user+system, clock ticks) the server process has used so far.
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
bench() { # name url pid -> "rps p99_us cpu_us_per_request"
  local before after
  before="$(cpu_ticks "$3")"
  wrk -t1 -c"$CONNECTIONS" -d"$DURATION" --latency -s "$LUA" "$2" > "$WORK/$1.txt"
  after="$(cpu_ticks "$3")"
  python3 - "$WORK/$1.txt" "$((after - before))" "$(getconf CLK_TCK)" <<'PY'
import re, sys
text = open(sys.argv[1]).read()
ticks, hz = int(sys.argv[2]), int(sys.argv[3])
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))
requests = int(re.search(r"(\d+) requests in", text).group(1))
value, unit = re.search(r"^\s+99%\s+([\d.]+)(us|ms|s)\s*$", text, re.M).groups()
p99 = float(value) * {"us": 1, "ms": 1e3, "s": 1e6}[unit]
non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text)
if non2xx:
    sys.exit(f"{sys.argv[1]}: {non2xx.group(1)} non-2xx answers")
print(f"{rps:.0f} {p99:.0f} {ticks / hz * 1e6 / requests:.2f}")
PY
}

echo "== authenticate (warm key) vs bare axum 201: wrk -t1 -c$CONNECTIONS -d$DURATION, $ROUNDS rounds, $(nproc) cores"
echo "   (bare+body: the same bare handler, but it reads the request body first, as authenticate must)"
for target in "$BARE" "$BODY" "$REALM"; do
  wrk -t1 -c"$CONNECTIONS" -d2s -s "$LUA" "http://$target$PATH_AUTH" >/dev/null
done
: > "$WORK/rounds.txt"
for round in $(seq 1 "$ROUNDS"); do
  read -r bare_rps bare_p99 bare_cpu <<<"$(bench "bare$round" "http://$BARE$PATH_AUTH" "$BARE_PID")"
  read -r body_rps body_p99 body_cpu <<<"$(bench "body$round" "http://$BODY$PATH_AUTH" "$BODY_PID")"
  read -r auth_rps auth_p99 auth_cpu <<<"$(bench "auth$round" "http://$REALM$PATH_AUTH" "$REALM_PID")"
  echo "$bare_rps $bare_p99 $bare_cpu $body_rps $body_p99 $body_cpu $auth_rps $auth_p99 $auth_cpu" >> "$WORK/rounds.txt"
  echo "round $round: bare $bare_rps req/s p99 ${bare_p99}us cpu ${bare_cpu}us/req" \
    "| bare+body $body_rps req/s p99 ${body_p99}us cpu ${body_cpu}us/req" \
    "| authenticate $auth_rps req/s p99 ${auth_p99}us cpu ${auth_cpu}us/req"
done
python3 - "$WORK/rounds.txt" <<'PY'
import statistics, sys
rows = [list(map(float, line.split())) for line in open(sys.argv[1]) if line.strip()]
col = lambda i: [r[i] for r in rows]
med = statistics.median
ratio = lambda a, b: med([x / y for x, y in zip(col(a), col(b))])
print(f"median over {len(rows)} rounds: bare {med(col(0)):.0f} req/s p99 {med(col(1)):.0f}us"
      f" | bare+body {med(col(3)):.0f} req/s p99 {med(col(4)):.0f}us"
      f" | authenticate {med(col(6)):.0f} req/s p99 {med(col(7)):.0f}us")
print(f"throughput ratio authenticate/bare: {ratio(6, 0):.2f} (target >= 0.80);"
      f" authenticate/bare+body: {ratio(6, 3):.2f}; bare+body/bare: {ratio(3, 0):.2f}")
print(f"server CPU per request: bare {med(col(2)):.2f}us, bare+body {med(col(5)):.2f}us,"
      f" authenticate {med(col(8)):.2f}us; ratio bare/authenticate {ratio(2, 8):.2f}")
PY
curl -s --max-time 10 "http://$REALM/metrics" | grep -E '^realm_service_authenticate_(cache_)?total\{result="(hit|miss|found|not_found)"\}'

if [ -n "$KEYS" ]; then
  echo "== cold-cache look-up latency by database size ($LOOKUPS distinct keys each, one request at a time)"
  "$BIN/examples/lookup_latency" --keys "$KEYS" --lookups "$LOOKUPS" --dir "$WORK"
fi

if [ "${PG:-1}" != 0 ]; then
  echo "== PostgreSQL beside SQLite"
  PGBIN="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)"
  [ -x "$PGBIN/pg_ctl" ] || { echo "PostgreSQL is required (apt-get install postgresql)" >&2; exit 1; }
  as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
  PGDIR="$(mktemp -d /tmp/keyrealm-bench-pg.XXXXXX)"; [ "$(id -u)" = 0 ] && chown postgres:postgres "$PGDIR"
  PGPORT="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
  as_pg "$PGBIN/initdb" -D "$PGDIR/data" -U postgres --auth=trust -E UTF8 >/dev/null
  as_pg "$PGBIN/pg_ctl" -D "$PGDIR/data" -l "$PGDIR/log" -w \
    -o "-p $PGPORT -h 127.0.0.1 -k $PGDIR -c max_connections=200 -c shared_buffers=256MB" start >/dev/null
  PG_STOP="as_pg $PGBIN/pg_ctl -D $PGDIR/data -m immediate stop; rm -rf $PGDIR"
  as_pg "$PGBIN/createdb" -h 127.0.0.1 -p "$PGPORT" -U postgres keyrealm
  PGURL="postgres://postgres@127.0.0.1:$PGPORT/keyrealm"
  for r in 1 2; do
    REALM_ADMIN_TOKEN=bench-admin-token-0123456789abcdefghij REALM_LOG=warn,realm_service=info \
      "$BIN/realm-service" serve --listen 127.0.0.1:0 --database "$PGURL" 2>"$WORK/pg$r.log" &
    PIDS+=($!); eval "PG${r}_PID=$!"
  done
  PG1="$(listening_addr "$WORK/pg1.log")"; PG2="$(listening_addr "$WORK/pg2.log")"
  REALM_SQLITE="$REALM"; REALM="$PG1"
  CP="$(api POST /v2/control-planes '{"name":"bench"}' | field id)"
  PG_TOKEN="$(api POST "/v2/control-planes/$CP/data-plane-tokens" '{}' | field token)"
  PG_REALM="$(api POST /v1/realms "{\"name\":\"bench\",\"allowed_control_planes\":[\"$CP\"]}" | field id)"
  CONSUMER="$(api POST "/v1/realms/$PG_REALM/consumers" '{"username":"Ariel"}' | field id)"
  PG_SECRET="$(api POST "/v1/realms/$PG_REALM/consumers/$CONSUMER/keys" '{"type":"new"}' | field secret)"
  REALM="$REALM_SQLITE"
  PG_PATH="/$PG_REALM/v0/authenticate"
  for target in "$PG1" "$PG2"; do
    test "$(curl -s -o /dev/null -w '%{http_code}' --max-time 10 -H "Authorization: Bearer $PG_TOKEN" \
      -H 'Content-Type: application/json' -d "{\"secret\":\"$PG_SECRET\"}" "http://$target$PG_PATH")" = 201
    DP_TOKEN="$PG_TOKEN" SECRET="$PG_SECRET" wrk -t1 -c"$CONNECTIONS" -d2s -s "$LUA" "http://$target$PG_PATH" >/dev/null
  done
  rps() { python3 -c "import re,sys; t=open(sys.argv[1]).read(); assert 'Non-2xx' not in t, t; print(re.search(r'Requests/sec:\s+([\d.]+)', t).group(1))" "$1"; }
  : > "$WORK/pg_rounds.txt"
  HALF=$((CONNECTIONS / 2))
  for round in $(seq 1 "$ROUNDS"); do
    wrk -t1 -c"$CONNECTIONS" -d"$DURATION" -s "$LUA" "http://$REALM_SQLITE$PATH_AUTH" > "$WORK/sq$round.txt"
    DP_TOKEN="$PG_TOKEN" SECRET="$PG_SECRET" wrk -t1 -c"$CONNECTIONS" -d"$DURATION" -s "$LUA" "http://$PG1$PG_PATH" > "$WORK/p1$round.txt"
    DP_TOKEN="$PG_TOKEN" SECRET="$PG_SECRET" wrk -t1 -c"$HALF" -d"$DURATION" -s "$LUA" "http://$PG1$PG_PATH" > "$WORK/p2a$round.txt" & W=$!
    DP_TOKEN="$PG_TOKEN" SECRET="$PG_SECRET" wrk -t1 -c"$HALF" -d"$DURATION" -s "$LUA" "http://$PG2$PG_PATH" > "$WORK/p2b$round.txt"
    wait "$W"
    sleep 0.5
    sq="$(rps "$WORK/sq$round.txt")"; p1="$(rps "$WORK/p1$round.txt")"
    p2="$(python3 -c "print(float('$(rps "$WORK/p2a$round.txt")') + float('$(rps "$WORK/p2b$round.txt")'))")"
    echo "$sq $p1 $p2" >> "$WORK/pg_rounds.txt"
    echo "round $round: warm authenticate SQLite $sq req/s | PostgreSQL 1 replica $p1 req/s | 2 replicas $p2 req/s"
  done
  python3 - "$WORK/pg_rounds.txt" <<'PY'
import statistics, sys
rows = [list(map(float, l.split())) for l in open(sys.argv[1]) if l.strip()]
med = statistics.median
print(f"median over {len(rows)} rounds: warm authenticate PostgreSQL/SQLite {med([r[1]/r[0] for r in rows]):.2f};"
      f" 2 replicas / 1 replica {med([r[2]/r[1] for r in rows]):.2f}"
      " (both replicas and wrk share this machine's cores)")
PY
  if [ -n "$KEYS" ]; then
    echo "== cold-cache look-up latency by database size on PostgreSQL ($LOOKUPS distinct keys each)"
    "$BIN/examples/lookup_latency" --keys "$KEYS" --lookups "$LOOKUPS" --dir "$WORK" \
      --postgres "postgres://postgres@127.0.0.1:$PGPORT/postgres"
  fi
fi
