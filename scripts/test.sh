#!/usr/bin/env bash
# The one test command. On a fresh Debian machine it installs what the tests need (Python 3,
# OpenSSL, Node.js and npm, curl, PostgreSQL, Redis, a QR reader, Chromium and chromedriver, fonts),
# starts a throwaway PostgreSQL cluster and Redis on free loopback ports, runs rustfmt, clippy and
# every test — once on SQLite, once on PostgreSQL + Redis — then the channel SDK conformance run
# against `paymux sandbox`, the README's demo payment (`paymux serve` + scripts/demo-pay.sh), and
# the cashier and operations console in headless Chromium, and stops PostgreSQL and Redis.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

APT_UPDATED=0
need_pkg() { # need_pkg <command-or-path> <debian package>
  if ! command -v "$1" >/dev/null 2>&1 && [ ! -e "$1" ]; then
    if [ "$APT_UPDATED" -eq 0 ]; then
      say "installing test dependencies with apt"
      as_root apt-get update -qq
      APT_UPDATED=1
    fi
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$2" >/dev/null
  fi
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

pg_bindir() {
  ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1
}

need_pkg python3 python3
need_pkg openssl openssl
need_pkg node nodejs
need_pkg npm npm
need_pkg curl curl
if [ -z "$(pg_bindir)" ]; then need_pkg /usr/lib/postgresql/15/bin/initdb postgresql; fi
need_pkg redis-server redis-server
need_pkg zbarimg zbar-tools
need_pkg chromium chromium
need_pkg chromedriver chromium-driver
need_pkg /usr/share/fonts/truetype/wqy/wqy-zenhei.ttc fonts-wqy-zenhei
need_pkg /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf fonts-dejavu-core
for extra in ${PAYMUX_TEST_EXTRA_PACKAGES:-}; do need_pkg "$extra" "$extra"; done

WORK=$(mktemp -d /tmp/paymux-test.XXXXXX)
chmod 755 "$WORK"
PG_PORT=$(free_port)
REDIS_PORT=$(free_port)
PGBIN=$(pg_bindir)

run_pg() { # PostgreSQL refuses to run as root: use the postgres user then.
  if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

cleanup() {
  set +e
  [ -f "$WORK/pg/postmaster.pid" ] && run_pg "$PGBIN/pg_ctl" -D "$WORK/pg" -m immediate stop >/dev/null 2>&1
  [ -f "$WORK/redis.pid" ] && kill "$(cat "$WORK/redis.pid")" 2>/dev/null
  rm -rf "$WORK"
}
trap cleanup EXIT

say "starting PostgreSQL on 127.0.0.1:$PG_PORT and Redis on 127.0.0.1:$REDIS_PORT"
mkdir -p "$WORK/pg"
[ "$(id -u)" -eq 0 ] && chown postgres "$WORK" "$WORK/pg"
run_pg "$PGBIN/initdb" -D "$WORK/pg" -U postgres --auth=trust -E UTF8 >/dev/null
run_pg "$PGBIN/pg_ctl" -D "$WORK/pg" -l "$WORK/pg/server.log" -w \
  -o "-p $PG_PORT -k $WORK/pg -c listen_addresses=127.0.0.1 -c max_connections=400 -c shared_buffers=256MB" start >/dev/null
redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no --daemonize yes \
  --pidfile "$WORK/redis.pid" --logfile "$WORK/redis.log" >/dev/null
for _ in $(seq 50); do redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && break; sleep 0.1; done

PG_URL="postgres://postgres@127.0.0.1:$PG_PORT/postgres"
REDIS_URL="redis://127.0.0.1:$REDIS_PORT"

# One clean build: incremental caches only cost disk here.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"
say "disk: $(df -h --output=avail "$ROOT" 2>/dev/null | tail -n 1 | tr -d ' ') free where the build goes"

say "cargo fmt --check"
cargo fmt --all -- --check

say "cargo clippy --workspace --all-targets -- -D warnings"
cargo clippy --workspace --all-targets -- -D warnings

if cargo nextest --version >/dev/null 2>&1; then
  RUN_TESTS=(cargo nextest run --workspace --no-fail-fast)
else
  RUN_TESTS=(cargo test --workspace --no-fail-fast)
fi

say "tests on SQLite"
env -u PAYMUX_TEST_DATABASE_URL -u PAYMUX_TEST_REDIS_URL "${RUN_TESTS[@]}"

say "tests on PostgreSQL + Redis"
PAYMUX_TEST_DATABASE_URL="$PG_URL" PAYMUX_TEST_REDIS_URL="$REDIS_URL" "${RUN_TESTS[@]}"

say "channel SDK conformance: unmodified public SDKs against paymux sandbox"
cargo build --quiet --bin paymux
"$ROOT/scripts/conformance/against-sandbox.sh" "${CARGO_TARGET_DIR:-$ROOT/target}/debug/paymux" all

say "the README's two commands: paymux serve, then scripts/demo-pay.sh pays a sandbox order"
DEMO_PORT=$(free_port)
mkdir -p "$WORK/demo"
PAYMUX_DATA_DIR="$WORK/demo" PAYMUX_LISTEN="127.0.0.1:$DEMO_PORT" PAYMUX_LOG=warn \
  "${CARGO_TARGET_DIR:-$ROOT/target}/debug/paymux" serve >"$WORK/demo/serve.log" 2>&1 &
DEMO_PID=$!
for _ in $(seq 100); do curl -fsS -o /dev/null "http://127.0.0.1:$DEMO_PORT/healthz" 2>/dev/null && break; sleep 0.2; done
if ! PAYMUX_DATA_DIR="$WORK/demo" PAYMUX_URL="http://127.0.0.1:$DEMO_PORT" \
  PAYMUX_BIN="${CARGO_TARGET_DIR:-$ROOT/target}/debug/paymux" "$ROOT/scripts/demo-pay.sh"; then
  cat "$WORK/demo/serve.log"
  kill "$DEMO_PID"
  exit 1
fi
kill "$DEMO_PID"
wait "$DEMO_PID" 2>/dev/null || true

say "cashier in headless Chromium: static codes paid in WeChat and Alipay through the sandboxes"
"$ROOT/scripts/cashier-browser/run.sh" "${CARGO_TARGET_DIR:-$ROOT/target}/debug/paymux"

say "operations console in headless Chromium: log in, dashboard, a run's report, an exception resolved"
"$ROOT/scripts/ops-browser/run.sh" "${CARGO_TARGET_DIR:-$ROOT/target}/debug/paymux"

say "all tests passed on SQLite and on PostgreSQL + Redis; the public SDKs pass against the sandboxes; the README's demo payment succeeded; the cashier and the operations console pass in Chromium"
