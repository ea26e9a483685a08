#!/usr/bin/env bash
# The gateway's subscriber benchmark (part of `make bench`): a throwaway redis-server, 2 worker
# processes and one gateway (release build), then bench/gateway_subscribers.py opens N SSE
# subscribers while echo steps run, and prints delivery latency (commit to client), gateway memory
# and Redis connections. Loopback only; everything it started is stopped on exit.
# RUNS="subscribers:sessions:steps_per_second:seconds ..." overrides the default runs.
set -euo pipefail
cd "$(dirname "$0")/.."
bin="$(swift build -c release --show-bin-path)/stepwise"
dir=$(mktemp -d /tmp/stepwise-bench-gw.XXXXXX)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  scripts/redis-local.sh stop "$dir"; rm -rf "$dir"
}
trap cleanup EXIT
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
port=$(scripts/redis-local.sh start "$dir")
redis="redis://127.0.0.1:$port"
gwport=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
export STEPWISE_TOKEN_KEY="bench-$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')"
for i in 1 2; do "$bin" worker --redis "$redis" --concurrency 32 --log-level error & pids+=($!); done
"$bin" gateway --redis "$redis" --listen "127.0.0.1:$gwport" --max-subscriptions-per-owner 100000 \
  --subscriber-buffer 4096 --log-level warning & gw=$!; pids+=($gw)
for _ in $(seq 100); do curl -fs "http://127.0.0.1:$gwport/healthz" >/dev/null && break; sleep 0.1; done
token=$("$bin" token issue --owner bench --ttl 2h)
echo "# gateway subscribers: $(date -u +%Y-%m-%dT%H:%MZ)  $(uname -srm)  $(nproc) cores  $(redis-server --version | cut -d' ' -f3)"
for run in ${RUNS:-"1000:100:500:20" "10000:1000:50:20"}; do
  IFS=: read -r subs sessions rate secs <<<"$run"
  echo "## $subs subscribers on $sessions sessions, $rate echo steps/s (2 events each) for ${secs}s"
  python3 bench/gateway_subscribers.py --base "http://127.0.0.1:$gwport" --token "$token" --gateway-pid "$gw" \
    --redis-port "$port" --subscribers "$subs" --sessions "$sessions" --steps-per-second "$rate" --seconds "$secs"
done
