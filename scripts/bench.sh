#!/usr/bin/env bash
# make bench: the counter workload (200 sessions x 50 steps) with 1 and 2 worker processes,
# beside redis-benchmark on the same server in the same run. Not a test: it prints figures.
# SCALING=1 also runs the scaling run of `make loadtest` (1,2,4,8 workers, 50 ms steps) on the same server.
set -euo pipefail
cd "$(dirname "$0")/.."
bin="$(swift build -c release --show-bin-path)/stepwise"
dir=$(mktemp -d /tmp/stepwise-bench-redis.XXXXXX)
cleanup() { scripts/redis-local.sh stop "$dir"; rm -rf "$dir"; }
trap cleanup EXIT
port=$(scripts/redis-local.sh start "$dir")
echo "# $(date -u +%Y-%m-%dT%H:%MZ)  $(uname -srm)  $(nproc) cores  $(redis-server --version | cut -d' ' -f3)  redis on 127.0.0.1:$port"
echo "## redis-benchmark (50 clients, 200000 requests each)"
redis-benchmark -h 127.0.0.1 -p "$port" -q -c 50 -n 200000 -t set,get,lpush,rpop | tr '\r' '\n' | grep -E 'requests per second' || true
echo "## redis-benchmark pipelined (-P 16)"
redis-benchmark -h 127.0.0.1 -p "$port" -q -c 50 -n 1000000 -P 16 -t set,get | tr '\r' '\n' | grep -E 'requests per second' || true
echo "## stepwise loadtest: counter, ${SESSIONS:-200} sessions x ${STEPS:-50} steps"
"$bin" loadtest --redis "redis://127.0.0.1:$port" --workers "${WORKERS:-1,2}" --sessions "${SESSIONS:-200}" \
  --steps "${STEPS:-50}" --concurrency "${CONCURRENCY:-32}" --step-ms "${STEP_MS:-0}"
if [ "${SCALING:-0}" = 1 ]; then
  echo "## stepwise loadtest: scaling run (scripts/loadtest.sh)"
  REDIS_URL="redis://127.0.0.1:$port" WORKERS=1,2,4,8 SESSIONS=800 STEPS=40 STEP_MS=50 CONCURRENCY=50 scripts/loadtest.sh
fi
echo "## gateway: SSE subscribers (scripts/bench-gateway.sh)"
scripts/bench-gateway.sh
