#!/usr/bin/env bash
# Starts or stops a throwaway redis-server on loopback.
#   redis-local.sh start DIR [PORT]   -> prints the port; PID in DIR/redis.pid
#   redis-local.sh stop DIR
# With no PORT a free one is picked. Data stays in DIR (append-only file on, so a restart keeps it).
# The settings match deploy/redis.conf where they matter to Stepwise (AOF, noeviction, memory).
# REDIS_LAUNCHER, when set, is a command the server runs under (scripts/bench-instructions.sh
# runs it under valgrind); the start then waits up to 60 s instead of 5.
set -euo pipefail
cmd=${1:?start|stop}
dir=${2:?directory}
port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
case "$cmd" in
start)
  mkdir -p "$dir"
  dir=$(cd "$dir" && pwd)
  port=${3:-}
  if [ -z "$port" ]; then
    for _ in $(seq 1 50); do
      p=$(( 20000 + RANDOM % 20000 ))
      if port_free "$p"; then port=$p; break; fi
    done
  fi
  [ -n "$port" ] || { echo "error: no free loopback port found" >&2; exit 1; }
  args=(--port "$port" --bind 127.0.0.1 --protected-mode yes --dir "$dir"
    --appendonly yes --appendfsync everysec --save "" --maxmemory-policy noeviction
    --stream-node-max-bytes 1024 --hash-max-listpack-value 8192 --hash-max-listpack-entries 48
    --pidfile "$dir/redis.pid" --logfile "$dir/redis.log")
  if [ -n "${REDIS_LAUNCHER:-}" ]; then
    # Not daemonized: the launcher (valgrind) keeps the server's own process id.
    # shellcheck disable=SC2086  # the launcher is a command line: split on purpose
    nohup $REDIS_LAUNCHER redis-server "${args[@]}" --daemonize no >"$dir/launcher.log" 2>&1 &
  else
    redis-server "${args[@]}" --daemonize yes >/dev/null
  fi
  tries=100
  [ -z "${REDIS_LAUNCHER:-}" ] || tries=1200
  for _ in $(seq 1 "$tries"); do
    if redis-cli -p "$port" ping >/dev/null 2>&1; then echo "$port"; exit 0; fi
    sleep 0.05
  done
  echo "error: redis-server did not answer on 127.0.0.1:$port (see $dir/redis.log)" >&2
  exit 1
  ;;
stop)
  if [ -f "$dir/redis.pid" ]; then
    pid=$(cat "$dir/redis.pid")
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.05; done
    kill -9 "$pid" 2>/dev/null || true
    rm -f "$dir/redis.pid"
  fi
  ;;
*) echo "usage: $0 start|stop DIR [PORT]" >&2; exit 2 ;;
esac
