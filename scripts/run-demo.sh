#!/usr/bin/env bash
# make run: a local redis-server (unless REDIS_URL is set), 2 worker processes with a pool-wide
# limit of 2 active sessions, the gateway (its page URL and a token are printed), one quiz session
# followed live next to 3 busy `sleep` sessions, the final state, then everything started here is
# stopped. From a terminal, the gateway and workers keep running until Ctrl-C, so the page can be
# tried; STEPWISE_DEMO_HOLD=<seconds> holds them that long instead (0 = stop at once).
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
# The gateway: a fresh signing key in .run/gateway.key (mode 600, never a flag value), port 8080
# or, when that is taken, a free one.
mkdir -p .run
( umask 077; head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' > .run/gateway.key )
gwport="${STEPWISE_GATEWAY_PORT:-8080}"
if ! python3 -c "import socket,sys; s=socket.socket(); s.bind(('127.0.0.1', int(sys.argv[1])))" "$gwport" 2>/dev/null; then
  gwport=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
fi
"$bin" gateway --listen "127.0.0.1:$gwport" --token-key-file .run/gateway.key --log-level warning &
pids+=($!)
for _ in $(seq 100); do curl -fs "http://127.0.0.1:$gwport/healthz" >/dev/null 2>&1 && break; sleep 0.1; done
token=$("$bin" token issue --owner demo --ttl 24h --token-key-file .run/gateway.key)
echo "== gateway: open http://127.0.0.1:$gwport/ and sign in with this token (owner 'demo', 24 h):"
echo "$token"
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
hold="${STEPWISE_DEMO_HOLD:-}"
if [ -z "$hold" ]; then if [ -t 0 ]; then hold=inf; else hold=0; fi; fi
if [ "$hold" != 0 ]; then
  echo "== the gateway runs at http://127.0.0.1:$gwport/ (token above); press Ctrl-C to stop everything"
  trap 'exit 0' INT TERM
  sleep "$hold" || true
fi
