#!/usr/bin/env bash
# The seed's story, end to end, on this machine (../shared/seed/create-centrally-managed-consumer.md):
#
#   1. installs what it needs (the wasm32-wasip1 target, Envoy into ./.venv) and builds the filter,
#      the realm service and the echo upstream;
#   2. starts realm-service (SQLite in ./.run/realm.db, a random admin token);
#   3. through its HTTP API, with curl: creates a control plane, a data-plane token, a realm that
#      allows the control plane, the consumer Ariel and a key for Ariel (`type: new`);
#   4. writes ./.run/envoy.yaml (the root envoy.yaml with the realm's id) and starts the echo
#      upstream and Envoy with the keyrealm filter (the data-plane token in KEYREALM_DP_TOKEN);
#   5. sends GET /anything with Ariel's key (expects 200, shows the consumer headers the upstream
#      saw) and with `another_key` (expects 401, shows the body). Exits non-zero if either differs.
#
# Usage:
#   scripts/demo.sh          run the story and leave everything running to try it yourself
#   scripts/demo.sh once     run the story, then stop everything
#   scripts/demo.sh stop     stop what a previous run started (the processes in ./.run/pids)
#
#   GATEWAY_KIND=host scripts/demo.sh    the same story with keyrealm-host (our own proxy-wasm host
#                                        on wasmtime) serving the same envoy.yaml instead of Envoy
#   GATEWAY_KIND=envoy-native scripts/demo.sh
#                                        the same story with Envoy and the filter as the native
#                                        dynamic module (envoy-native.yaml, libkeyrealm_native.so)
#
# Ports: 8000 (Envoy), 8001 (realm-service), 8080 (echo upstream), 9901 (Envoy admin).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
RUN=$ROOT/.run
PIDS=$RUN/pids

GATEWAY=127.0.0.1:8000
REALM=127.0.0.1:8001
UPSTREAM=127.0.0.1:8080
ADMIN=127.0.0.1:9901

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
die() {
  printf '\n\033[31mdemo failed: %s\033[0m\n' "$*" >&2
  for log in "$RUN"/*.log; do
    [ -f "$log" ] || continue
    printf -- '--- last lines of %s ---\n' "${log#"$ROOT"/}" >&2
    tail -n 15 "$log" >&2
  done
  printf 'Stop what was started with: scripts/demo.sh stop\n' >&2
  exit 1
}

stop_all() {
  if [ ! -f "$PIDS" ]; then
    echo "nothing to stop (no $PIDS)"
    return 0
  fi
  while read -r pid name; do
    [ -n "$pid" ] || continue
    if kill -0 "$pid" 2>/dev/null; then
      kill "$pid" 2>/dev/null || true
      for _ in $(seq 1 50); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
      done
      kill -9 "$pid" 2>/dev/null || true
      echo "stopped $name (pid $pid)"
    fi
  done <"$PIDS"
  rm -f "$PIDS"
}

# Starts a background process that outlives this script; records its pid in ./.run/pids.
start_bg() {
  local name=$1
  shift
  nohup "$@" >"$RUN/$name.log" 2>&1 </dev/null &
  echo "$! $name" >>"$PIDS"
  echo "started $name (pid $!, log .run/$name.log)"
}

# wait_for NAME URL [TRIES]: polls URL until it answers 200 (0.25 s apart), or fails clearly.
wait_for() {
  local name=$1 url=$2 tries=${3:-120}
  for _ in $(seq 1 "$tries"); do
    if [ "$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "$url" || true)" = 200 ]; then
      echo "$name is ready ($url)"
      return 0
    fi
    # Give up early when the process already died.
    if ! grep -q " $name\$" "$PIDS" || ! kill -0 "$(grep " $name\$" "$PIDS" | tail -n 1 | cut -d' ' -f1)" 2>/dev/null; then
      die "$name exited during start-up"
    fi
    sleep 0.25
  done
  die "$name did not become ready at $url after $((tries / 4)) s"
}

port_free() {
  ! (exec 3<>"/dev/tcp/${1%:*}/${1#*:}") 2>/dev/null
}

# api METHOD PATH [JSON]: an admin API call with the admin token; prints the body, dies unless 2xx.
api() {
  local method=$1 path=$2 body=${3:-}
  local out status
  out=$(mktemp)
  status=$(curl -sS -o "$out" -w '%{http_code}' --max-time 10 -X "$method" "http://$REALM$path" \
    -H "Authorization: Bearer $REALM_ADMIN_TOKEN" -H 'Content-Type: application/json' \
    ${body:+--data "$body"}) || { rm -f "$out"; die "$method $path: no answer from realm-service"; }
  if [ "${status:0:1}" != 2 ]; then
    cat "$out" >&2
    rm -f "$out"
    die "$method $path answered $status"
  fi
  cat "$out"
  rm -f "$out"
}

# json_field FIELD: reads a JSON object on stdin, prints its string field FIELD.
json_field() {
  python3 -c 'import json,sys; print(json.load(sys.stdin)[sys.argv[1]])' "$1"
}

case "${1:-run}" in
  stop)
    stop_all
    exit 0
    ;;
  run | once) MODE=${1:-run} ;;
  *)
    echo "usage: scripts/demo.sh [run|once|stop]" >&2
    exit 2
    ;;
esac

for tool in curl python3 cargo rustup; do
  command -v "$tool" >/dev/null || die "$tool is required (install it, then run again)"
done

mkdir -p "$RUN"
[ -f "$PIDS" ] && { say "stopping the previous demo"; stop_all; }
for port in $GATEWAY $REALM $UPSTREAM $ADMIN; do
  port_free "$port" || die "$port is already in use: stop what listens there (scripts/demo.sh stop, if it is an earlier demo)"
done

say "installing the wasm target and Envoy"
rustup target add wasm32-wasip1
ENVOY_BIN=$(scripts/install-envoy.sh)
"$ENVOY_BIN" --version

GATEWAY_KIND=${GATEWAY_KIND:-envoy}
case "$GATEWAY_KIND" in
  envoy) GATEWAY_NAME=Envoy ;;
  host) GATEWAY_NAME=keyrealm-host ;;
  envoy-native) GATEWAY_NAME="Envoy (native module)" ;;
  *) die "GATEWAY_KIND must be envoy, envoy-native or host, not '$GATEWAY_KIND'" ;;
esac

BINARIES=(-p realm-service -p keyrealm-tests)
[ "$GATEWAY_KIND" = host ] && BINARIES+=(-p keyrealm-host)
say "building the filter and the binaries: ${BINARIES[*]//-p /}"
scripts/build-wasm.sh
cargo build --release "${BINARIES[@]}" --bins
[ "$GATEWAY_KIND" = envoy-native ] && cargo build --release -p keyrealm-native
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
WASM=$TARGET/wasm32-wasip1/release/keyrealm_filter.wasm
[ -f "$WASM" ] || die "the filter was not built at $WASM"

say "starting realm-service on $REALM (SQLite .run/realm.db)"
rm -f "$RUN"/realm.db "$RUN"/realm.db-wal "$RUN"/realm.db-shm
REALM_ADMIN_TOKEN=$(python3 -c 'import secrets; print("demo-admin-" + secrets.token_urlsafe(24))')
export REALM_ADMIN_TOKEN
start_bg realm-service "$TARGET/release/realm-service" serve --listen "$REALM" --database "$RUN/realm.db"
export -n REALM_ADMIN_TOKEN # only realm-service needs it in its environment
wait_for realm-service "http://$REALM/health"

say "creating a control plane, a data-plane token, a realm, the consumer Ariel and a key"
CONTROL_PLANE_ID=$(api POST /v2/control-planes '{"name":"demo-cp"}' | json_field id)
echo "control plane: $CONTROL_PLANE_ID"
KEYREALM_DP_TOKEN=$(api POST "/v2/control-planes/$CONTROL_PLANE_ID/data-plane-tokens" '{"name":"demo"}' | json_field token)
echo "data-plane token: created (shown once; kept in .run/demo.env)"
REALM_ID=$(api POST /v1/realms "{\"name\":\"prod\",\"allowed_control_planes\":[\"$CONTROL_PLANE_ID\"]}" | json_field id)
echo "realm prod: $REALM_ID"
CONSUMER_ID=$(api POST "/v1/realms/$REALM_ID/consumers" '{"username":"Ariel"}' | json_field id)
echo "consumer Ariel: $CONSUMER_ID"
CONSUMER_KEY=$(api POST "/v1/realms/$REALM_ID/consumers/$CONSUMER_ID/keys" '{"type":"new"}' | json_field secret)
echo "key for Ariel: created (shown once; kept in .run/demo.env)"
(
  umask 077
  cat >"$RUN/demo.env" <<ENV
export REALM_ADMIN_TOKEN='$REALM_ADMIN_TOKEN'
export CONTROL_PLANE_ID='$CONTROL_PLANE_ID'
export KEYREALM_DP_TOKEN='$KEYREALM_DP_TOKEN'
export REALM_ID='$REALM_ID'
export CONSUMER_ID='$CONSUMER_ID'
export CONSUMER_KEY='$CONSUMER_KEY'
ENV
)

say "starting the echo upstream on $UPSTREAM and $GATEWAY_NAME on $GATEWAY"
CONFIG=envoy.yaml
[ "$GATEWAY_KIND" = envoy-native ] && CONFIG=envoy-native.yaml
sed -e "s|\"REALM_ID\"|\"$REALM_ID\"|" \
  -e "s|filename: target/wasm32-wasip1/release/keyrealm_filter.wasm|filename: $WASM|" \
  "$CONFIG" >"$RUN/envoy.yaml"
grep -q "$REALM_ID" "$RUN/envoy.yaml" || die "could not write the realm id into .run/envoy.yaml"
start_bg echo-upstream "$TARGET/release/echo-upstream" --listen "$UPSTREAM"
wait_for echo-upstream "http://$UPSTREAM/ready"
export KEYREALM_DP_TOKEN # the gateway passes it to the filter (host_env_keys)
if [ "$GATEWAY_KIND" = host ]; then
  start_bg keyrealm-host "$TARGET/release/keyrealm-host" --config "$RUN/envoy.yaml" --concurrency 2
  wait_for keyrealm-host "http://$ADMIN/ready" 240
else
  if [ "$GATEWAY_KIND" = envoy-native ]; then
    [ -f "$TARGET/release/libkeyrealm_native.so" ] || die "the native module was not built"
    export ENVOY_DYNAMIC_MODULES_SEARCH_PATH=$TARGET/release
  fi
  start_bg envoy "$ENVOY_BIN" -c "$RUN/envoy.yaml" \
    --disable-hot-restart --concurrency 2 -l info
  wait_for envoy "http://$ADMIN/ready" 240
fi

say "GET /anything with Ariel's key  (curl http://$GATEWAY/anything -H \"apikey:\$CONSUMER_KEY\")"
OK_BODY=$(mktemp)
OK_STATUS=$(curl -sS -o "$OK_BODY" -w '%{http_code}' --max-time 10 "http://$GATEWAY/anything" -H "apikey:$CONSUMER_KEY") || OK_STATUS=000
echo "status: $OK_STATUS"
python3 - "$OK_BODY" <<'PY' || cat "$OK_BODY"
import json, sys
seen = json.load(open(sys.argv[1]))
print("the upstream saw:", seen["method"], seen["path"])
for name, value in sorted(seen["headers"].items()):
    if name.startswith(("x-consumer", "x-credential", "x-anonymous")) or name == "apikey":
        print(f"  {name}: {value}")
PY
rm -f "$OK_BODY"

say "GET /anything with another_key  (curl http://$GATEWAY/anything -H apikey:another_key)"
BAD_STATUS=$(curl -sS -D "$RUN/last-401.headers" -o "$RUN/last-401.body" -w '%{http_code}' --max-time 10 \
  "http://$GATEWAY/anything" -H 'apikey:another_key') || BAD_STATUS=000
echo "status: $BAD_STATUS"
grep -i '^www-authenticate' "$RUN/last-401.headers" || true
cat "$RUN/last-401.body"
echo

FAILED=
[ "$OK_STATUS" = 200 ] || FAILED="with Ariel's key: expected 200, got $OK_STATUS"
[ "$BAD_STATUS" = 401 ] || FAILED="${FAILED:+$FAILED; }with another_key: expected 401, got $BAD_STATUS"

if [ "$MODE" = once ]; then
  say "stopping everything (once)"
  stop_all
fi
[ -z "$FAILED" ] || die "$FAILED"

say "the seed's story works: 200 with the key, 401 with another_key"
if [ "$MODE" = run ]; then
  cat <<MSG
Everything is still running:
  $GATEWAY_NAME with keyrealm  http://$GATEWAY   (admin http://$ADMIN, stats: curl http://$ADMIN/stats/prometheus | grep keyrealm)
  realm-service        http://$REALM     (admin API; token in .run/demo.env)
  echo upstream        http://$UPSTREAM
Try it:   source .run/demo.env && curl -i http://$GATEWAY/anything -H "apikey:\$CONSUMER_KEY"
Logs:     .run/*.log
Stop:     scripts/demo.sh stop
MSG
fi
