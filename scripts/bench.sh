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
# Encryption at rest is measured in the same run: the same workload plain, then with a keyring.
unset STEPWISE_KEYRING STEPWISE_KEYRING_FILE
"$bin" keys generate --id bench --file "$dir/keyring.json" >/dev/null
load() {
  "$bin" loadtest --redis "redis://127.0.0.1:$port" --workers "${WORKERS:-1,2}" --sessions "${SESSIONS:-200}" \
    --steps "${STEPS:-50}" --concurrency "${CONCURRENCY:-32}" --step-ms "${STEP_MS:-0}" "$@"
}
echo "## stepwise loadtest: counter, ${SESSIONS:-200} sessions x ${STEPS:-50} steps, plain"
load --out "$dir/plain"
echo "## stepwise loadtest: the same, encrypted at rest (--keyring-file: AES-256-GCM per session)"
load --out "$dir/encrypted" --keyring-file "$dir/keyring.json"
echo "## encryption cost: encrypted steps/s / plain steps/s (target >= 0.90)"
python3 - "$dir/plain/results.json" "$dir/encrypted/results.json" <<'PY'
import json, sys
def rate(path):
    doc = json.load(open(path))
    rounds = doc.get("rounds") or []
    return {r["workers"]: r["stepsPerSecond"] for r in rounds}
plain, enc = rate(sys.argv[1]), rate(sys.argv[2])
for w in sorted(plain):
    if w in enc and plain[w] > 0:
        print(f"workers {w}: plain {plain[w]:.0f} steps/s, encrypted {enc[w]:.0f} steps/s, ratio {enc[w] / plain[w]:.2f}")
PY
if [ "${SCALING:-0}" = 1 ]; then
  echo "## stepwise loadtest: scaling run (scripts/loadtest.sh)"
  REDIS_URL="redis://127.0.0.1:$port" WORKERS=1,2,4,8 SESSIONS=800 STEPS=40 STEP_MS=50 CONCURRENCY=50 scripts/loadtest.sh
fi
echo "## gateway: SSE subscribers (scripts/bench-gateway.sh)"
scripts/bench-gateway.sh
