#!/usr/bin/env bash
# Redis instructions per step: a smaller `make bench` workload (counter agent, SESSIONS x STEPS,
# default 40 x 50, 1 worker) against a redis-server of scripts/redis-local.sh run under valgrind's
# callgrind. Unlike steps/s, which moves by +-15-20 % between identical runs on a shared 2-core
# machine, the count is the same to about 1 % from run to run, so it shows what a change to the
# scripts costs or saves. It counts everything Redis does during the run (the submits, the steps,
# the load test's final checks and clean-up, background cron), divided by the steps: compare
# binaries, not absolute numbers.
# Usage: scripts/bench-instructions.sh [STEPWISE_BINARY ...]   (default: this tree's release build)
# Each binary's run is measured alone, one after another, on the same server. LOADTEST_ARGS adds
# load test options to every run (for example "--keyring-file keyring.json").
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v valgrind >/dev/null || ! command -v callgrind_control >/dev/null; then
  [ "$(id -u)" = 0 ] || { echo "error: needs valgrind: apt-get install valgrind" >&2; exit 1; }
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends valgrind >/dev/null
fi
bins=("$@")
if [ ${#bins[@]} -eq 0 ]; then
  make -s release >/dev/null
  bins=("$(swift build -c release --show-bin-path)/stepwise")
fi
sessions=${SESSIONS:-40}
steps=${STEPS:-50}
dir=$(mktemp -d /tmp/stepwise-instructions.XXXXXX)
cleanup() { scripts/redis-local.sh stop "$dir"; rm -rf "$dir"; }
trap cleanup EXIT
port=$(REDIS_LAUNCHER="valgrind --tool=callgrind --callgrind-out-file=$dir/callgrind.%p" scripts/redis-local.sh start "$dir")
pid=$(cat "$dir/redis.pid")
echo "# $(date -u +%Y-%m-%dT%H:%MZ)  redis $(redis-server --version | cut -d' ' -f3) under callgrind on 127.0.0.1:$port, $sessions sessions x $steps steps, 1 worker"
# shellcheck disable=SC2086  # LOADTEST_ARGS is a list of options: split on purpose
for bin in "${bins[@]}"; do
  callgrind_control -z "$pid" >/dev/null 2>&1
  "$bin" loadtest --redis "redis://127.0.0.1:$port" --workers 1 --sessions "$sessions" --steps "$steps" \
    --concurrency 8 --time-limit 600 ${LOADTEST_ARGS:-} >"$dir/loadtest.out" 2>&1 || { cat "$dir/loadtest.out" >&2; exit 1; }
  before=$(ls "$dir"/callgrind.* | wc -l)
  callgrind_control -d "$pid" >/dev/null 2>&1
  for _ in $(seq 1 100); do [ "$(ls "$dir"/callgrind.* | wc -l)" -gt "$before" ] && break; sleep 0.1; done
  dump=$(ls -t "$dir"/callgrind.* | head -1)
  total=$(awk '/^totals:/ {print $2; exit}' "$dump")
  echo "$bin: $((total / (sessions * steps))) Redis instructions per step"
done
