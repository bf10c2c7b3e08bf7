#!/usr/bin/env bash
# Stops what deploy/local/up.sh started (by the pids it recorded) and removes its run directory.
set -uo pipefail
RUN=${PAYMUX_LOCAL_DIR:-/tmp/paymux-local}
[ -d "$RUN" ] || { echo "down.sh: nothing at $RUN"; exit 0; }

stop_pid() { # stop_pid <pidfile>: TERM, wait up to 10 s, then KILL
  local f=$1 pid
  [ -f "$f" ] || return 0
  pid=$(cat "$f")
  kill "$pid" 2>/dev/null || return 0
  for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
  kill -9 "$pid" 2>/dev/null
}

if [ -f "$RUN/pids/nginx.pid" ]; then
  nginx_bin=$(command -v nginx || echo /usr/sbin/nginx)
  "$nginx_bin" -p "$RUN/nginx" -c "$RUN/nginx/nginx.conf" -s quit 2>/dev/null || stop_pid "$RUN/pids/nginx.pid"
  for _ in $(seq 50); do [ -f "$RUN/pids/nginx.pid" ] || break; sleep 0.1; done
fi
for f in "$RUN"/pids/node*.pid "$RUN/pids/sandbox.pid"; do stop_pid "$f"; done
stop_pid "$RUN/pids/redis.pid"
if [ -f "$RUN/pg/postmaster.pid" ]; then
  PGBIN=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
  if [ "$(id -u)" -eq 0 ]; then
    runuser -u postgres -- "$PGBIN/pg_ctl" -D "$RUN/pg" -m fast -w stop >/dev/null
  else
    "$PGBIN/pg_ctl" -D "$RUN/pg" -m fast -w stop >/dev/null
  fi
fi
rm -rf "$RUN"
echo "down: stopped and removed $RUN"
