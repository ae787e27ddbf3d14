#!/usr/bin/env bash
# realm-service as three replicas on one PostgreSQL database, behind nothing but their ports:
#
#   scripts/replicas.sh start   # PostgreSQL on 127.0.0.1:$REPLICAS_PG_PORT (default 5433), and
#                               # replicas on 127.0.0.1:8001, 8002, 8003
#   scripts/replicas.sh stop
#
# State lives in ./.replicas (the cluster's data, logs, pids). REALM_ADMIN_TOKEN (at least 32
# characters) is generated on the first start and kept in .replicas/admin-token. Point Envoy at
# the replicas with envoy-replicas.yaml. Debian's postgresql package provides initdb/pg_ctl; as
# root, PostgreSQL runs as the `postgres` user. Overrides: REPLICAS_PORTS="8001 8002 8003",
# REALM_SERVICE_BIN (default: target/release/realm-service, built first). See docs/operations.md.
set -euo pipefail
cd "$(dirname "$0")/.."

DIR="$PWD/.replicas"
PG_PORT="${REPLICAS_PG_PORT:-5433}"
read -r -a PORTS <<<"${REPLICAS_PORTS:-8001 8002 8003}"
BIN="${REALM_SERVICE_BIN:-target/release/realm-service}"
URL="postgres://postgres@127.0.0.1:$PG_PORT/keyrealm"

pg_bin() {
  if command -v pg_ctl >/dev/null && command -v createdb >/dev/null; then
    dirname "$(readlink -f "$(command -v pg_ctl)")"; return
  fi
  local found
  found=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
  [ -n "$found" ] || { echo "PostgreSQL is not installed (apt-get install -y postgresql)" >&2; exit 1; }
  echo "$found"
}

as_pg() {
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

start() {
  local bin; bin=$(pg_bin)
  mkdir -p "$DIR"
  [ "$(id -u)" = 0 ] && chown postgres:postgres "$DIR"
  if [ ! -d "$DIR/data" ]; then
    as_pg "$bin/initdb" -D "$DIR/data" -U postgres --auth=trust -E UTF8 >/dev/null
  fi
  as_pg "$bin/pg_ctl" -D "$DIR/data" -l "$DIR/postgres.log" -w \
    -o "-p $PG_PORT -h 127.0.0.1 -k $DIR" start >/dev/null
  as_pg "$bin/psql" -h 127.0.0.1 -p "$PG_PORT" -U postgres -tAc \
    "SELECT 1 FROM pg_database WHERE datname = 'keyrealm'" | grep -q 1 ||
    as_pg "$bin/createdb" -h 127.0.0.1 -p "$PG_PORT" -U postgres keyrealm
  [ -n "${REALM_SERVICE_BIN:-}" ] || cargo build --release -p realm-service
  if [ ! -f "$DIR/admin-token" ]; then
    (umask 077; python3 -c 'import secrets; print("replicas-admin-" + secrets.token_urlsafe(32))' >"$DIR/admin-token")
  fi
  local port
  for port in "${PORTS[@]}"; do
    REALM_ADMIN_TOKEN="$(cat "$DIR/admin-token")" REALM_LOG=info \
      nohup "$BIN" serve --listen "127.0.0.1:$port" --database "$URL" \
      >"$DIR/replica-$port.log" 2>&1 &
    echo $! >"$DIR/replica-$port.pid"
  done
  for port in "${PORTS[@]}"; do
    for _ in $(seq 1 100); do
      curl -sf --max-time 1 "http://127.0.0.1:$port/health" >/dev/null && break
      sleep 0.1
    done
    curl -sf --max-time 1 "http://127.0.0.1:$port/health" >/dev/null ||
      { echo "replica on $port did not start; see $DIR/replica-$port.log" >&2; exit 1; }
  done
  echo "PostgreSQL: $URL"
  echo "replicas:   ${PORTS[*]/#/127.0.0.1:}"
  echo "admin token in $DIR/admin-token"
}

stop() {
  local port bin
  for port in "${PORTS[@]}"; do
    if [ -f "$DIR/replica-$port.pid" ]; then
      kill "$(cat "$DIR/replica-$port.pid")" 2>/dev/null || true
      rm -f "$DIR/replica-$port.pid"
    fi
  done
  if [ -f "$DIR/data/postmaster.pid" ]; then
    bin=$(pg_bin)
    as_pg "$bin/pg_ctl" -D "$DIR/data" -m fast -w stop >/dev/null
  fi
  echo "stopped"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  *) echo "usage: $0 start|stop" >&2; exit 2 ;;
esac
