#!/usr/bin/env bash
# Envoy key-auth benchmark, all in one run on this machine, each variant the same way:
#   a  Envoy, no auth filter
#   b  Envoy, the native envoy.filters.http.api_key_auth filter (key in a header, client id forwarded)
#   c  Envoy, keyrealm filter, a control-plane key (identity_realms: cp)
#   d  Envoy, keyrealm filter, a realm key answered from the filter's cache (identity_realms: realm)
#   e  Envoy, keyrealm filter passing OPTIONS requests through (run_on_preflight: false): the cost
#      of running any proxy-wasm filter plus reading the headers, to split d's cost (not a target)
#   f  Envoy, keyrealm as the native dynamic module (keyrealm-native), the same realm key as d,
#      answered from the module's cache
#
# Besides req/s and latency, each variant's gateway CPU per request is measured (Envoy's user +
# system CPU time during the measured run / requests). After the rounds, d and f run once more with
# 2 workers: 20 concurrent first requests on 20 connections for one key, then 20 more, and the
# realm calls the realm listener saw are reported (wasm: one cache per worker VM; native: one per
# process). Set CALLS_CHECK=0 to skip.
#
# Envoy runs with --concurrency $CONCURRENCY and proxies to a second listener of the same Envoy that
# answers with a direct_response (the trivial upstream); for d, a third listener plays the realm
# service and answers the one authenticate call of the warm-up with 201. wrk drives each variant for
# $DURATION after $WARMUP of warm-up, $ROUNDS times in turn (a b c d a b c d ...); the best round of
# each variant is reported. Results: a Markdown table on stdout and in $OUT.
#
# Usage: bench/envoy/run.sh            (env: DURATION=10s WARMUP=3s CONNECTIONS=32 THREADS=1
#                                            CONCURRENCY=1 ROUNDS=3 SKIP_BUILD=0 OUT=...
#                                            VARIANTS="a b c d e" (a and b are needed for the
#                                            ratios) WASM=<module to test>)
set -euo pipefail
cd "$(dirname "$0")/../.."

DURATION="${DURATION:-10s}"
WARMUP="${WARMUP:-3s}"
CONNECTIONS="${CONNECTIONS:-32}"
THREADS="${THREADS:-1}"
CONCURRENCY="${CONCURRENCY:-1}"
ROUNDS="${ROUNDS:-3}"
VARIANTS="${VARIANTS:-a b c d e f}"
OUT="${OUT:-bench/envoy/results.md}"
WRK="${WRK:-$(scripts/install-wrk.sh)}"
ENVOY_BIN="${ENVOY_BIN:-$(scripts/install-envoy.sh)}"

if [ "${SKIP_BUILD:-0}" != 1 ]; then
  scripts/build-wasm.sh >&2   # the stripped module, as the tests load it
  cargo build --release -p keyrealm-native >&2
fi
# Where Envoy finds libkeyrealm_native.so (variant f).
export ENVOY_DYNAMIC_MODULES_SEARCH_PATH="${ENVOY_DYNAMIC_MODULES_SEARCH_PATH:-${CARGO_TARGET_DIR:-$PWD/target}/release}"
WASM="${WASM:-${CARGO_TARGET_DIR:-$PWD/target}/wasm32-wasip1/release/keyrealm_filter.wasm}"
[ -f "$WASM" ] || { echo "missing $WASM (scripts/build-wasm.sh)" >&2; exit 1; }

WORK="$(mktemp -d)"
ENVOY_PID=""
cleanup() {
  if [ -n "$ENVOY_PID" ]; then kill "$ENVOY_PID" 2>/dev/null || true; wait "$ENVOY_PID" 2>/dev/null || true; fi
  rm -rf "$WORK"
}
trap cleanup EXIT

read -r FRONT BACK REALM ADMIN < <(python3 - <<'PY'
import socket
socks = [socket.socket() for _ in range(4)]
for s in socks: s.bind(("127.0.0.1", 0))
print(*[s.getsockname()[1] for s in socks])
for s in socks: s.close()
PY
)

CP_KEY="bench-cp-key-0123456789"
REALM_KEY="bench-realm-key-0123456789"
REALM_ID="11111111-1111-4111-8111-111111111111"
REALM_ANSWER='{"id":"rc-1","username":"ariel","custom_id":null,"type":"developer","tags":[],"consumer_group_names":["gold"],"ttl":60,"negative_ttl":5,"credential":{"id":"rk-1","created_at":"2026-01-01T00:00:00Z","tags":[],"expires_at":null}}'

REALM_CONFIG='{"identity_realms":[{"scope":"realm","id":"'"$REALM_ID"'","region":null}],"realm_service":{"clusters":{"default":"realm_default"},"token":"bench-dp-token","timeout_ms":1000}}'

# The HTTP filters of the front listener, per variant.
filters() {
  case "$1" in
    a) ;;
    b) cat <<YAML
          - name: envoy.filters.http.api_key_auth
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.api_key_auth.v3.ApiKeyAuth
              credentials:
              - { key: "$CP_KEY", client: "alice" }
              key_sources:
              - header: apikey
              forwarding:
                header: x-client-id
                hide_credentials: true
YAML
    ;;
    f) cat <<YAML
          - name: envoy.filters.http.dynamic_modules
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.dynamic_modules.v3.DynamicModuleFilter
              dynamic_module_config: { name: keyrealm_native }
              filter_name: keyrealm
              filter_config:
                "@type": type.googleapis.com/google.protobuf.StringValue
                value: '$REALM_CONFIG'
YAML
    ;;
    c|d|e)
      if [ "$1" = e ]; then
        config='{"run_on_preflight":false}'
      elif [ "$1" = c ]; then
        config='{"consumers":[{"id":"c-alice","username":"alice","custom_id":"A-1","keyauth_credentials":[{"id":"cred-alice","key":"'"$CP_KEY"'"}]}]}'
      else
        config="$REALM_CONFIG"
      fi
      cat <<YAML
          - name: envoy.filters.http.wasm
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm
              config:
                name: keyrealm
                root_id: keyrealm
                allow_on_headers_stop_iteration: true
                configuration:
                  "@type": type.googleapis.com/google.protobuf.StringValue
                  value: '$config'
                vm_config:
                  vm_id: keyrealm
                  runtime: envoy.wasm.runtime.v8
                  code: { local: { filename: "$WASM" } }
YAML
    ;;
  esac
}

listener() { # name port route-action filters
  cat <<YAML
  - name: $1
    address: { socket_address: { address: 127.0.0.1, port_value: $2 } }
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: $1
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: { prefix: "/" }
                $3
          http_filters:
$4
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
YAML
}

cluster() { # name port
  cat <<YAML
  - name: $1
    type: STATIC
    connect_timeout: 1s
    load_assignment:
      cluster_name: $1
      endpoints: [{ lb_endpoints: [{ endpoint: { address: { socket_address: { address: 127.0.0.1, port_value: $2 } } } }] }]
YAML
}

render() { # variant -> envoy.yaml
  cat <<YAML
admin:
  address: { socket_address: { address: 127.0.0.1, port_value: $ADMIN } }
static_resources:
  listeners:
$(listener front "$FRONT" "route: { cluster: upstream }" "$(filters "$1")")
$(listener back "$BACK" 'direct_response: { status: 200, body: { inline_string: "ok" } }' "")
$(listener realm "$REALM" "direct_response: { status: 201, body: { inline_string: '$REALM_ANSWER' } }" "")
  clusters:
$(cluster upstream "$BACK")
$(cluster realm_default "$REALM")
YAML
}

start_envoy() {
  render "$1" > "$WORK/envoy-$1.yaml"
  "$ENVOY_BIN" -c "$WORK/envoy-$1.yaml" --concurrency "$CONCURRENCY" --disable-hot-restart \
    --base-id $((RANDOM * 7 + 1000)) -l warning > "$WORK/envoy-$1.log" 2>&1 &
  ENVOY_PID=$!
  for _ in $(seq 100); do
    if curl -fsS "http://127.0.0.1:$ADMIN/ready" >/dev/null 2>&1; then return 0; fi
    if ! kill -0 "$ENVOY_PID" 2>/dev/null; then cat "$WORK/envoy-$1.log" >&2; exit 1; fi
    sleep 0.1
  done
  echo "Envoy ($1) did not become ready" >&2; cat "$WORK/envoy-$1.log" >&2; exit 1
}

stop_envoy() {
  kill "$ENVOY_PID" 2>/dev/null || true
  wait "$ENVOY_PID" 2>/dev/null || true
  ENVOY_PID=""
}

key_for() { case "$1" in a|b|c|e) echo "$CP_KEY" ;; d|f) echo "$REALM_KEY" ;; esac; }

# Envoy's CPU time so far (user + system), in clock ticks.
cpu_ticks() { awk '{print $14 + $15}' "/proc/$ENVOY_PID/stat"; }

# The variant really authenticates: 200 with the key, 401 without (except a).
check() {
  local v="$1" key code
  key="$(key_for "$v")"
  if [ "$v" = e ]; then
    code=$(curl -s -o /dev/null -w '%{http_code}' -X OPTIONS "http://127.0.0.1:$FRONT/")
    [ "$code" = 200 ] || { echo "variant e: $code for OPTIONS" >&2; exit 1; }
    code=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$FRONT/")
    [ "$code" = 401 ] || { echo "variant e: $code for GET without a key" >&2; exit 1; }
    return 0
  fi
  code=$(curl -s -o /dev/null -w '%{http_code}' -H "apikey: $key" "http://127.0.0.1:$FRONT/")
  [ "$code" = 200 ] || { echo "variant $v: $code with the key" >&2; cat "$WORK/envoy-$v.log" >&2; exit 1; }
  if [ "$v" != a ]; then
    code=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$FRONT/")
    [ "$code" = 401 ] || { echo "variant $v: $code without a key" >&2; exit 1; }
  fi
}

to_ms() { # wrk duration (12.3us, 1.2ms, 1.1s) -> ms
  python3 - "$1" <<'PY'
import re, sys
m = re.fullmatch(r"([0-9.]+)(us|ms|s|m)", sys.argv[1])
scale = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}[m.group(2)]
print("%.3f" % (float(m.group(1)) * scale))
PY
}

declare -A RPS P50 P99 CPU
run_variant() {
  local v="$1" key out rps p50 p99
  key="$(key_for "$v")"
  start_envoy "$v"
  check "$v"
  local script=()
  if [ "$v" = e ]; then
    echo 'wrk.method = "OPTIONS"' > "$WORK/options.lua"
    script=(-s "$WORK/options.lua")
  fi
  "$WRK" -t"$THREADS" -c"$CONNECTIONS" -d"$WARMUP" "${script[@]}" -H "apikey: $key" "http://127.0.0.1:$FRONT/" >/dev/null
  local ticks_before ticks_after cpu
  ticks_before=$(cpu_ticks)
  out="$("$WRK" -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" --latency "${script[@]}" -H "apikey: $key" "http://127.0.0.1:$FRONT/")"
  ticks_after=$(cpu_ticks)
  echo "$out" > "$WORK/wrk-$v.txt"
  # Gateway CPU per request, µs.
  cpu=$(python3 -c "import sys; print('%.1f' % ((int(sys.argv[2]) - int(sys.argv[1])) / int(sys.argv[3]) * 1e6 / int(sys.argv[4])))" \
    "$ticks_before" "$ticks_after" "$(getconf CLK_TCK)" "$(awk '/requests in/ {print $1}' <<<"$out")")
  if grep -q "Non-2xx" <<<"$out"; then echo "variant $v: non-2xx answers" >&2; echo "$out" >&2; exit 1; fi
  rps=$(awk '/^Requests\/sec:/ {print $2}' <<<"$out")
  p50=$(to_ms "$(awk '$1 == "50%" {print $2}' <<<"$out")")
  p99=$(to_ms "$(awk '$1 == "99%" {print $2}' <<<"$out")")
  if [ -z "${RPS[$v]:-}" ] || python3 -c "import sys; sys.exit(0 if float(sys.argv[1]) > float(sys.argv[2]) else 1)" "$rps" "${RPS[$v]}"; then
    RPS[$v]=$rps; P50[$v]=$p50; P99[$v]=$p99; CPU[$v]=$cpu
  fi
  if [ "$v" = d ] || [ "$v" = f ]; then
    # All of d's traffic came from the cache: exactly one realm call (the check's first request).
    local calls
    calls=$(curl -s "http://127.0.0.1:$ADMIN/stats?filter=keyrealm_realm_calls_found" | awk '{print $2}')
    [ "$calls" = 1 ] || { echo "variant $v: $calls realm calls, expected 1" >&2; exit 1; }
  fi
  stop_envoy
  echo "round $round variant $v: $rps req/s, p50 $p50 ms, p99 $p99 ms, $cpu µs CPU/req" >&2
}

for round in $(seq "$ROUNDS"); do
  for v in $VARIANTS; do run_variant "$v"; done
done

# With 2 workers: realm calls for one new key (20 concurrent first requests on 20 connections,
# then 20 more), as the realm listener counted them.
declare -A CALLS
if [ "${CALLS_CHECK:-1}" = 1 ]; then
  for v in $VARIANTS; do
    case "$v" in d|f) ;; *) continue ;; esac
    saved=$CONCURRENCY; CONCURRENCY=2
    start_envoy "$v"
    CONCURRENCY=$saved
    for _ in 1 2; do
      seq 20 | xargs -P 20 -I{} curl -s -o /dev/null -H "apikey: $REALM_KEY" "http://127.0.0.1:$FRONT/"
    done
    CALLS[$v]=$(curl -s "http://127.0.0.1:$ADMIN/stats?filter=^http\.realm\.downstream_rq_total$" | awk '{print $2}')
    stop_envoy
    echo "variant $v, 2 workers: ${CALLS[$v]} realm calls for 40 requests with one key" >&2
  done
fi

ratio() { python3 -c "import sys; print(f'{float(sys.argv[1]) / float(sys.argv[2]):.2f}')" "$1" "$2"; }
{
  echo "| variant | req/s | p50 ms | p99 ms | gateway CPU µs/req | vs a (no auth) | vs b (native api_key_auth) | CPU/req vs b |"
  echo "|---|---|---|---|---|---|---|---|"
  for v in $VARIANTS; do
    case "$v" in
      a) name="a: no auth filter" ;;
      b) name="b: native api_key_auth" ;;
      c) name="c: keyrealm, control-plane key" ;;
      d) name="d: keyrealm, cached realm key" ;;
      e) name="e: keyrealm, OPTIONS passed through (floor)" ;;
      f) name="f: keyrealm native module, cached realm key" ;;
    esac
    echo "| $name | ${RPS[$v]} | ${P50[$v]} | ${P99[$v]} | ${CPU[$v]} | $(ratio "${RPS[$v]}" "${RPS[a]}") | $(ratio "${RPS[$v]}" "${RPS[b]}") | $(ratio "${CPU[$v]}" "${CPU[b]}") |"
  done
  if [ "${#CALLS[@]}" -gt 0 ]; then
    echo
    for v in "${!CALLS[@]}"; do
      echo "- variant $v with \`--concurrency 2\`: ${CALLS[$v]} realm call(s) for one key (40 requests, the first 20 concurrent on 20 connections)."
    done
  fi
  echo
  echo "wrk -t$THREADS -c$CONNECTIONS -d$DURATION --latency (after $WARMUP warm-up), Envoy $("$ENVOY_BIN" --version | grep -o 'version: [^ ]*' | head -1 | cut -d' ' -f2) --concurrency $CONCURRENCY, best of $ROUNDS rounds, $(nproc) CPUs, $(date -u +%Y-%m-%dT%H:%MZ)."
} | tee "$OUT"
