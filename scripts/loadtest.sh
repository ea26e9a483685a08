#!/usr/bin/env bash
# make loadtest: the horizontal-scaling run (1, 2, 4, 8 worker processes, 50 ms steps, 50 slots each)
# against a throwaway redis-server (or $REDIS_URL if set), with results.json and chart.svg in
# $OUT (default .run/loadtest). Not a test: it prints figures. Extra arguments go to `stepwise loadtest`.
set -euo pipefail
cd "$(dirname "$0")/.."
bin="$(swift build -c release --show-bin-path)/stepwise"
out=${OUT:-.run/loadtest}
url=${REDIS_URL:-}
if [ -z "$url" ]; then
  dir=$(mktemp -d /tmp/stepwise-loadtest-redis.XXXXXX)
  cleanup() { scripts/redis-local.sh stop "$dir"; rm -rf "$dir"; }
  trap cleanup EXIT
  port=$(scripts/redis-local.sh start "$dir")
  url="redis://127.0.0.1:$port"
fi
echo "# $(date -u +%Y-%m-%dT%H:%MZ)  $(uname -srm)  $(nproc) cores  $(redis-server --version | cut -d' ' -f3)  load: $(cut -d' ' -f1-3 /proc/loadavg)"
# The URL goes in the environment, not on the command line, so a password in it never shows in ps.
REDIS_URL="$url" "$bin" loadtest --workers "${WORKERS:-1,2,4,8}" --sessions "${SESSIONS:-800}" --steps "${STEPS:-40}" \
  --step-ms "${STEP_MS:-50}" --concurrency "${CONCURRENCY:-50}" --out "$out" "$@"
