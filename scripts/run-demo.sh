#!/usr/bin/env bash
# make run: a local redis-server (unless REDIS_URL is set), 2 worker processes with a pool-wide
# limit of 2 active sessions, one quiz session followed live next to 3 busy `sleep` sessions,
# the final state, then everything started here is stopped.
set -euo pipefail
cd "$(dirname "$0")/.."
bin="$(swift build -c release --show-bin-path)/stepwise"
pids=()
started_redis=""
cleanup() {
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  if [ -n "$started_redis" ]; then scripts/redis-local.sh stop .run/redis; fi
}
trap cleanup EXIT
if [ -z "${REDIS_URL:-}" ]; then
  port=$(scripts/redis-local.sh start .run/redis "${STEPWISE_DEMO_PORT:-}")
  started_redis=1
  export REDIS_URL="redis://127.0.0.1:$port"
  echo "started redis-server on 127.0.0.1:$port (data in .run/redis)"
fi
for i in 1 2; do
  "$bin" worker --concurrency 4 --max-active-sessions 2 --worker-id "demo-worker-$i" --log-level warning &
  pids+=($!)
done
session="quiz-$(date +%s)"
echo "== submitting a quiz session ($session) and 3 sleep sessions; at most 2 sessions run at once"
"$bin" submit --session "$session" --agent quiz --option ms=300 --input '{"topic":"Redis Streams","questions":4}'
for i in 1 2 3; do
  "$bin" submit --session "$session-sleep-$i" --agent sleep --input '{"ms":700}' > /dev/null
done
sleep 0.3
"$bin" queue | grep -E '^(ready|parked)'
echo "== live progress (stepwise watch $session)"
"$bin" watch "$session"
echo "== final state (stepwise status $session)"
"$bin" status "$session"
echo "== queue"
"$bin" queue
