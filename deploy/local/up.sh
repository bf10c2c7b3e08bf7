#!/usr/bin/env bash
# Starts a local paymux cluster, everything on loopback: a throwaway PostgreSQL cluster, Redis, a
# standalone `paymux sandbox`, N `paymux serve` nodes and nginx load-balancing them.
#
#   deploy/local/up.sh [N]        # N nodes (default 2); deploy/local/down.sh stops it all
#
# Settings (environment): PAYMUX_BIN_DIR (release binaries; default $CARGO_TARGET_DIR/release or
# ./target/release), PAYMUX_LOCAL_DIR (run directory, default /tmp/paymux-local), PAYMUX_LOCAL_PORT
# (nginx; nodes on the next N ports, default 18080), PAYMUX_SANDBOX_PORT (18090), PG_PORT (55440),
# REDIS_PORT (56390), MERCHANTS (merchants created, default 4), SANDBOX_TIME_COMPRESSION (10),
# NODE_ENV (extra `KEY=value ...` for every node, e.g. "PAYMUX_BATCH_WORKERS=8").
# It writes $PAYMUX_LOCAL_DIR/env (source it: URLs, pids, merchants file, the nodes' configuration
# for `paymux ledger audit`) and logs under $PAYMUX_LOCAL_DIR/logs.
set -euo pipefail

NODES=${1:-${NODES:-2}}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
BIN_DIR=${PAYMUX_BIN_DIR:-${CARGO_TARGET_DIR:-$ROOT/target}/release}
RUN=${PAYMUX_LOCAL_DIR:-/tmp/paymux-local}
LB_PORT=${PAYMUX_LOCAL_PORT:-18080}
SANDBOX_PORT=${PAYMUX_SANDBOX_PORT:-18090}
PG_PORT=${PG_PORT:-55440}
REDIS_PORT=${REDIS_PORT:-56390}
MERCHANTS=${MERCHANTS:-4}
COMPRESSION=${SANDBOX_TIME_COMPRESSION:-10}

say() { printf '==> %s\n' "$*"; }
die() { printf 'up.sh: %s\n' "$*" >&2; exit 1; }

[ -x "$BIN_DIR/paymux" ] || die "no $BIN_DIR/paymux: cargo build --release -p paymux -p paymux-loadtest (or set PAYMUX_BIN_DIR)"
[ -e "$RUN/env" ] && die "$RUN is in use (deploy/local/down.sh first)"
[ "$NODES" -ge 1 ] 2>/dev/null || die "N must be a positive number"

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }
APT_UPDATED=
need_pkg() { # need_pkg <file or command> <package>
  if ! command -v "$1" >/dev/null 2>&1 && [ ! -e "$1" ]; then
    say "installing $2 (apt)"
    [ -n "$APT_UPDATED" ] || { as_root apt-get update -qq; APT_UPDATED=1; }
    # Debian starts a packaged service on install (nginx on *:80): forbid that while installing.
    local policy=
    if [ ! -e /usr/sbin/policy-rc.d ]; then
      printf '#!/bin/sh\nexit 101\n' | as_root tee /usr/sbin/policy-rc.d >/dev/null
      as_root chmod +x /usr/sbin/policy-rc.d
      policy=1
    fi
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$2" >/dev/null
    [ -z "$policy" ] || as_root rm -f /usr/sbin/policy-rc.d
  fi
}
pg_bindir() { ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1; }
[ -n "$(pg_bindir)" ] || need_pkg /usr/lib/postgresql/15/bin/initdb postgresql
need_pkg redis-server redis-server
need_pkg /usr/sbin/nginx nginx
need_pkg curl curl
PGBIN=$(pg_bindir)
NGINX=$(command -v nginx || echo /usr/sbin/nginx)

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
for p in "$LB_PORT" "$SANDBOX_PORT" "$PG_PORT" "$REDIS_PORT" $(seq $((LB_PORT + 1)) $((LB_PORT + NODES))); do
  port_free "$p" || die "port 127.0.0.1:$p is taken"
done

mkdir -p "$RUN/logs" "$RUN/data" "$RUN/pids" "$RUN/nginx/tmp"
chmod 755 "$RUN"
wait_http() { # wait_http <url> <what>
  for _ in $(seq 300); do curl -fsS -o /dev/null "$1" 2>/dev/null && return 0; sleep 0.1; done
  die "$2 did not come up ($1); see $RUN/logs"
}

say "PostgreSQL on 127.0.0.1:$PG_PORT ($RUN/pg)"
run_pg() { if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
mkdir -p "$RUN/pg"
[ "$(id -u)" -eq 0 ] && chown postgres "$RUN/pg"
run_pg "$PGBIN/initdb" -D "$RUN/pg" -U postgres --auth=trust -E UTF8 >/dev/null
run_pg "$PGBIN/pg_ctl" -D "$RUN/pg" -l "$RUN/pg/server.log" -w \
  -o "-p $PG_PORT -k $RUN/pg -c listen_addresses=127.0.0.1 -c max_connections=400 -c shared_buffers=512MB" start >/dev/null
run_pg "$PGBIN/psql" -h 127.0.0.1 -p "$PG_PORT" -U postgres -qc "CREATE DATABASE paymux" >/dev/null

say "Redis on 127.0.0.1:$REDIS_PORT"
redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no --daemonize yes \
  --pidfile "$RUN/pids/redis.pid" --logfile "$RUN/logs/redis.log" >/dev/null

# Every process shares this configuration (and the data directory: the sandbox keys live there).
cat > "$RUN/env" <<ENV
export PAYMUX_DATABASE_URL=postgres://postgres@127.0.0.1:$PG_PORT/paymux
export PAYMUX_REDIS_URL=redis://127.0.0.1:$REDIS_PORT
export PAYMUX_MASTER_KEY=$(openssl rand -hex 32)
export PAYMUX_DATA_DIR=$RUN/data
export PAYMUX_DEMO_MERCHANT=false
export PAYMUX_LOG=\${PAYMUX_LOG:-warn}
export LOCAL_URL=http://127.0.0.1:$LB_PORT
export LOCAL_SANDBOX_URL=http://127.0.0.1:$SANDBOX_PORT
export LOCAL_MERCHANTS=$RUN/merchants.json
export LOCAL_BIN_DIR=$BIN_DIR
ENV
chmod 600 "$RUN/env"
# shellcheck disable=SC1091
. "$RUN/env"

say "migrations and $MERCHANTS merchants"
"$BIN_DIR/paymux" migrate >"$RUN/logs/migrate.log" 2>&1
{
  echo "["
  for k in $(seq "$MERCHANTS"); do
    [ "$k" -gt 1 ] && echo ","
    "$BIN_DIR/paymux" merchant create --name "Load merchant $k" 2>>"$RUN/logs/migrate.log"
  done
  echo "]"
} >"$RUN/merchants.json"
chmod 600 "$RUN/merchants.json"

start() { # start <name> <command...>: in its own session, pid in pids/<name>.pid
  local name=$1; shift
  setsid "$@" >"$RUN/logs/$name.log" 2>&1 < /dev/null &
  echo $! >"$RUN/pids/$name.pid"
}

say "paymux sandbox on 127.0.0.1:$SANDBOX_PORT (time compression $COMPRESSION)"
start sandbox env PAYMUX_SANDBOX_TIME_COMPRESSION="$COMPRESSION" "$BIN_DIR/paymux" sandbox --listen "127.0.0.1:$SANDBOX_PORT"
wait_http "http://127.0.0.1:$SANDBOX_PORT/wechat/sandbox/account" "the sandbox"

UPSTREAM=""
for k in $(seq "$NODES"); do
  port=$((LB_PORT + k))
  say "node $k on 127.0.0.1:$port"
  # shellcheck disable=SC2086
  start "node$k" env PAYMUX_LISTEN="127.0.0.1:$port" PAYMUX_PUBLIC_BASE_URL="$LOCAL_URL" \
    PAYMUX_SANDBOX_URL="$LOCAL_SANDBOX_URL" PAYMUX_RATE_LIMIT_PER_SECOND=0 PAYMUX_CASHIER_RATE_LIMIT_PER_SECOND=0 \
    PAYMUX_CODE_PAY_POLL_INTERVAL_MS=1000 PAYMUX_DATABASE_MAX_CONNECTIONS=32 ${NODE_ENV:-} \
    "$BIN_DIR/paymux" serve
  UPSTREAM="$UPSTREAM        server 127.0.0.1:$port max_fails=0;
"
done
for k in $(seq "$NODES"); do wait_http "http://127.0.0.1:$((LB_PORT + k))/readyz" "node $k"; done

say "nginx on 127.0.0.1:$LB_PORT"
NGINX_USER=""
if [ "$(id -u)" -eq 0 ]; then NGINX_USER="user nobody nogroup;"; chown -R nobody "$RUN/nginx/tmp"; fi
cat >"$RUN/nginx/nginx.conf" <<CONF
# Generated by deploy/local/up.sh (see deploy/nginx/paymux.conf for a production one).
$NGINX_USER
worker_processes 1;
pid $RUN/pids/nginx.pid;
error_log $RUN/logs/nginx-error.log warn;
events { worker_connections 8192; }
http {
    access_log off;
    client_body_temp_path $RUN/nginx/tmp/body;
    proxy_temp_path $RUN/nginx/tmp/proxy;
    fastcgi_temp_path $RUN/nginx/tmp/fastcgi;
    uwsgi_temp_path $RUN/nginx/tmp/uwsgi;
    scgi_temp_path $RUN/nginx/tmp/scgi;
    client_body_buffer_size 64k;
    client_max_body_size 64k;
    upstream paymux {
$UPSTREAM        keepalive 512;
    }
    upstream sandbox {
        server 127.0.0.1:$SANDBOX_PORT;
        keepalive 64;
    }
    server {
        listen 127.0.0.1:$LB_PORT backlog=4096;
        keepalive_requests 1000000;
        location / {
            proxy_pass http://paymux;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host \$host;
            proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
            proxy_set_header X-Request-Id \$request_id;
            proxy_next_upstream off;
        }
        # The standalone sandbox (the C2B payer, faults, bills) under /sandbox/ as on a single node.
        location /sandbox/ {
            proxy_pass http://sandbox/;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }
}
CONF
"$NGINX" -t -q -p "$RUN/nginx" -c "$RUN/nginx/nginx.conf"
"$NGINX" -p "$RUN/nginx" -c "$RUN/nginx/nginx.conf"
wait_http "$LOCAL_URL/readyz" "nginx"

NODE_PIDS=$(for k in $(seq "$NODES"); do cat "$RUN/pids/node$k.pid"; done | paste -sd, -)
cat >>"$RUN/env" <<ENV
export LOCAL_NODE_PIDS=$NODE_PIDS
export LOCAL_NODES=$NODES
ENV
say "up: $NODES nodes (pids $NODE_PIDS) behind $LOCAL_URL; sandbox $LOCAL_SANDBOX_URL"
echo "    . $RUN/env    # then e.g."
echo "    \$LOCAL_BIN_DIR/paymux-loadtest run --url \$LOCAL_URL --credentials \$LOCAL_MERCHANTS --server-pid \$LOCAL_NODE_PIDS --mix code_scan=40,qr=20,create_query=30,refund=10 --rate 200 --duration 10"
