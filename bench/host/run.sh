#!/usr/bin/env bash
# keyrealm-host vs Envoy, side by side in one run (not a test; numbers go to README.md).
#
#   bench/host/run.sh            # defaults: 1 worker, 10 connections, 8 s per run
#   WORKERS=2 DURATION=10s CONNECTIONS=16 bench/host/run.sh
#
# Four gateways, each with the same worker count, the same upstream and the same load
# generator (wrk, one thread): Envoy + keyrealm filter, keyrealm-host + keyrealm filter, Envoy
# without a filter, keyrealm-host without a filter. The filter authenticates a control-plane key
# sent in the `apikey` header on every request. Memory: resident set size of the gateway after
# its run, at WORKERS and at WORKERS+2 workers; half the difference is the cost of one worker;
# and with the filter, the RSS while IDLE_CONNECTIONS (default 1000) keep-alive connections, each
# after one authenticated request, are held open.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
WORKERS="${WORKERS:-1}"
DURATION="${DURATION:-8s}"
CONNECTIONS="${CONNECTIONS:-10}"
TARGET="${CARGO_TARGET_DIR:-$ROOT/target}"
WRK="${WRK:-$(scripts/install-wrk.sh)}"
ENVOY_BIN="${ENVOY_BIN:-$(scripts/install-envoy.sh)}"
OUT="${OUT:-/tmp/keyrealm-bench-host.txt}"
IDLE_CONNECTIONS="${IDLE_CONNECTIONS:-1000}"
ulimit -n 65536 2>/dev/null || true

cargo build --release -p keyrealm-host --bins --example bench_upstream >&2
scripts/build-wasm.sh >&2   # the stripped module, as the tests load it
HOST_BIN="$TARGET/release/keyrealm-host"
UPSTREAM_BIN="$TARGET/release/examples/bench_upstream"
WASM="$TARGET/wasm32-wasip1/release/keyrealm_filter.wasm"

WORK=$(mktemp -d)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT

UPSTREAM_PORT=18080
"$UPSTREAM_BIN" "127.0.0.1:$UPSTREAM_PORT" 2>/dev/null &
PIDS+=($!)

FILTER_CONFIG='{"key_names":["apikey"],"hide_credentials":true,"identity_realms":[{"scope":"cp","id":null}],"consumers":[{"id":"c1","username":"alice","custom_id":"A1","tags":[],"keyauth_credentials":[{"id":"cred1","key":"alice-key"}]}]}'

# write_config FILE PORT ADMIN_PORT WITH_FILTER
write_config() {
  local filters=""
  if [ "$4" = yes ]; then
    filters=$(cat <<YAML
          - name: envoy.filters.http.wasm
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm
              config:
                name: keyrealm
                root_id: keyrealm
                configuration:
                  "@type": type.googleapis.com/google.protobuf.StringValue
                  value: '$FILTER_CONFIG'
                vm_config:
                  vm_id: keyrealm
                  runtime: envoy.wasm.runtime.v8
                  code: {local: {filename: "$WASM"}}
YAML
)
  fi
  cat > "$1" <<YAML
admin:
  address: {socket_address: {address: 127.0.0.1, port_value: $3}}
static_resources:
  listeners:
  - name: main
    address: {socket_address: {address: 127.0.0.1, port_value: $2}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: bench
          route_config:
            name: local
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {prefix: "/"}
                route: {cluster: upstream}
          http_filters:
$filters
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
  - name: upstream
    connect_timeout: 1s
    type: STATIC
    load_assignment:
      cluster_name: upstream
      endpoints:
      - lb_endpoints:
        - endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: $UPSTREAM_PORT}}}
YAML
}

wait_ready() { # ADMIN_PORT
  for _ in $(seq 1 300); do
    if curl -fs "http://127.0.0.1:$1/ready" >/dev/null 2>&1; then return 0; fi
    sleep 0.1
  done
  echo "gateway did not become ready" >&2; tail -n 20 "$WORK"/*.log >&2 2>/dev/null; return 1
}

# held_rss PORT PID -> RSS (KiB) of PID while IDLE_CONNECTIONS connections, each after one
# request with the key (all must get 200), are held open.
held_rss() {
  local ready="$WORK/held.$1"
  python3 - "$1" "$IDLE_CONNECTIONS" "$ready" <<'PY' &
import asyncio, sys
port, n, ready = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
async def one():
    r, w = await asyncio.open_connection("127.0.0.1", port)
    w.write(b"GET / HTTP/1.1\r\nHost: bench\r\napikey: alice-key\r\n\r\n")
    await w.drain()
    head = await r.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    await r.readexactly(length)
    return (r, w, head.startswith(b"HTTP/1.1 200"))
async def main():
    held = []
    for i in range(0, n, 100):
        held += await asyncio.gather(*[one() for _ in range(min(100, n - i))])
    ok = sum(1 for h in held if h[2])
    open(ready, "w").write(str(ok))
    await asyncio.sleep(60)
asyncio.run(main())
PY
  local client=$!
  for _ in $(seq 1 600); do [ -s "$ready" ] && break; sleep 0.1; done
  sleep 1
  local ok rss
  ok=$(cat "$ready" 2>/dev/null || echo 0)
  rss=$(ps -o rss= -p "$2" | tr -d ' ')
  kill "$client" 2>/dev/null || true; wait "$client" 2>/dev/null || true
  rm -f "$ready"
  [ "$ok" = "$IDLE_CONNECTIONS" ] || { echo "held connections: only $ok of $IDLE_CONNECTIONS got 200" >&2; echo 0; return; }
  echo "$rss"
}

# run NAME KIND(envoy|host) WITH_FILTER WORKERS -> prints "NAME req/s p50 p99 rss_kib non2xx held_rss_kib"
run() {
  local name=$1 kind=$2 filter=$3 workers=$4
  local port=$((18100 + RANDOM % 800)) admin=$((19100 + RANDOM % 800))
  local cfg="$WORK/$name.yaml"
  write_config "$cfg" "$port" "$admin" "$filter"
  if [ "$kind" = envoy ]; then
    "$ENVOY_BIN" -c "$cfg" --concurrency "$workers" --disable-hot-restart -l error >"$WORK/$name.log" 2>&1 &
  else
    "$HOST_BIN" -c "$cfg" --concurrency "$workers" >"$WORK/$name.log" 2>&1 &
  fi
  local pid=$!
  PIDS+=("$pid")
  wait_ready "$admin"
  local hdr=()
  if [ "$filter" = yes ]; then hdr=(-H "apikey: alice-key"); fi
  # Check the path works (200 with the key), then warm up, then measure.
  local code
  code=$(curl -s -o /dev/null -w '%{http_code}' "${hdr[@]}" "http://127.0.0.1:$port/")
  [ "$code" = 200 ] || { echo "$name: expected 200, got $code" >&2; cat "$WORK/$name.log" >&2; return 1; }
  if [ "$filter" = yes ]; then
    code=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port/")
    [ "$code" = 401 ] || { echo "$name: the filter is not active (no key gave $code)" >&2; return 1; }
  fi
  "$WRK" -t1 -c"$CONNECTIONS" -d2s "${hdr[@]}" "http://127.0.0.1:$port/" >/dev/null
  local result
  result=$("$WRK" -t1 -c"$CONNECTIONS" -d"$DURATION" --latency "${hdr[@]}" "http://127.0.0.1:$port/")
  local rss held=-
  rss=$(ps -o rss= -p "$pid" | tr -d ' ')
  if [ "$filter" = yes ] && [ "$workers" = "$WORKERS" ]; then
    held=$(held_rss "$port" "$pid")
  fi
  kill "$pid"; wait "$pid" 2>/dev/null || true
  local rps p50 p99 non2xx
  rps=$(echo "$result" | awk '/Requests\/sec/ {print $2}')
  p50=$(echo "$result" | awk '$1=="50%" {print $2}')
  p99=$(echo "$result" | awk '$1=="99%" {print $2}')
  non2xx=$(echo "$result" | awk '/Non-2xx/ {print $NF}')
  echo "$name $rps $p50 $p99 $rss ${non2xx:-0} $held"
}

{
  echo "# $(date -u +%FT%TZ) workers=$WORKERS connections=$CONNECTIONS duration=$DURATION"
  echo "# name req/s p50 p99 rss_kib non2xx rss_kib_with_${IDLE_CONNECTIONS}_connections"
  run envoy_filter envoy yes "$WORKERS"
  run host_filter host yes "$WORKERS"
  run envoy_nofilter envoy no "$WORKERS"
  run host_nofilter host no "$WORKERS"
  run envoy_filter_plus2 envoy yes $((WORKERS + 2))
  run host_filter_plus2 host yes $((WORKERS + 2))
} | tee "$OUT"

awk '
  /^#/ {next}
  {rps[$1]=$2; rss[$1]=$5; held[$1]=$7}
  END {
    printf "keyrealm-host/Envoy with the filter:    %.2fx\n", rps["host_filter"]/rps["envoy_filter"]
    printf "keyrealm-host/Envoy without a filter:   %.2fx\n", rps["host_nofilter"]/rps["envoy_nofilter"]
    printf "RSS with the filter (KiB): envoy %d, keyrealm-host %d\n", rss["envoy_filter"], rss["host_filter"]
    printf "RSS with the filter and the idle connections held (KiB): envoy %d, keyrealm-host %d\n", held["envoy_filter"], held["host_filter"]
    printf "memory per worker (RSS KiB, half the growth from +2 workers): envoy %d, keyrealm-host %d\n", (rss["envoy_filter_plus2"]-rss["envoy_filter"])/2, (rss["host_filter_plus2"]-rss["host_filter"])/2
  }' "$OUT" | tee -a "$OUT"
