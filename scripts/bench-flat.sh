#!/usr/bin/env bash
# Flat with session count (issue 13, point 5): the counter workload's steps/s with 1,000 idle
# sessions in the namespace, then with IDLE (default 1,000,000). Not a test: it prints figures.
#
# Two worker processes run in one namespace; `loadtest --external` drives them (its own 200
# sessions x 50 steps, ROUNDS times each). The idle sessions are copies of one finished counter
# session (its hash and its event stream, COPY'd under new ids) with their entries in the
# `sessions` and `expiry` indexes, as `stepwise submit` leaves them: the hot path meets them in
# every index it touches.
#
# Usage: scripts/bench-flat.sh [redis-url]   (without a URL it starts a throwaway redis-server)
set -euo pipefail
cd "$(dirname "$0")/.."
bin="$(swift build -c release --show-bin-path)/stepwise"
idle=${IDLE:-1000000}
rounds=${ROUNDS:-3}
dir=$(mktemp -d /tmp/stepwise-bench-flat.XXXXXX)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  [ -n "${started:-}" ] && scripts/redis-local.sh stop "$dir"
  rm -rf "$dir"
}
trap cleanup EXIT
if [ $# -gt 0 ]; then
  url=$1
else
  port=$(scripts/redis-local.sh start "$dir")
  started=1
  url="redis://127.0.0.1:$port"
fi
host=$(echo "$url" | sed -E 's#redis://([^:/]+):([0-9]+).*#\1#')
rport=$(echo "$url" | sed -E 's#redis://([^:/]+):([0-9]+).*#\2#')
cli() { redis-cli -h "$host" -p "$rport" "$@"; }
ns="flat$RANDOM"
P="$ns:"
for i in 1 2; do
  "$bin" worker --redis "$url" --namespace "$ns" --concurrency 32 --log-level error --worker-id "flat-$i" \
    --events-max-length 1000 >"$dir/worker-$i.log" 2>&1 &
  pids+=($!)
done
# The template: one counter session of one step, settled.
"$bin" submit --redis "$url" --namespace "$ns" --session tmpl --agent counter --input '{"n":0}' --wait >/dev/null

# Clones the template under ids idle-<from>..idle-<to-1> (10,000 per call, so Redis answers
# others in between).
clone='
local P, from, to, now = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local src = P .. "s:{tmpl}"
local exp = redis.call("PEXPIRETIME", src)
for i = from, to - 1 do
  local id = "idle-" .. i
  local dst = P .. "s:{" .. id .. "}"
  redis.call("COPY", src, dst)
  redis.call("COPY", src .. ":events", dst .. ":events")
  if exp > 0 then
    redis.call("PEXPIREAT", dst, exp)
    redis.call("PEXPIREAT", dst .. ":events", exp)
    redis.call("ZADD", P .. "expiry", exp, id)
  end
  redis.call("ZADD", P .. "sessions", now, id)
end
return to - from'
have=1
grow() {
  local target=$1 t0
  t0=$(date +%s.%N)
  while [ "$have" -lt "$target" ]; do
    local to=$((have + 10000 > target ? target : have + 10000))
    cli EVAL "$clone" 0 "$P" "$have" "$to" "$(($(date +%s%N) / 1000000))" >/dev/null
    have=$to
  done
  echo "# idle sessions: $(cli ZCARD "${P}sessions") in ${P}sessions (grown in $(echo "$(date +%s.%N) - $t0" | bc) s), used_memory $(cli INFO memory | awk -F: '/^used_memory:/ {printf "%.0f MiB", $2 / 1048576}')"
  # Growing wrote as much to the append-only file: let Redis rewrite it now, not during the
  # measurement (a rewrite forks the whole dataset and takes one of the two cores meanwhile).
  t0=$(date +%s.%N)
  cli BGREWRITEAOF >/dev/null 2>&1 || true
  for _ in $(seq 1 600); do
    cli INFO persistence | grep -Eq '^aof_rewrite_in_progress:1|^aof_rewrite_scheduled:1' || break
    sleep 0.5
  done
  # And let the kernel write the new file's pages back now, too.
  sync
  echo "# append-only file rewritten and synced in $(echo "$(date +%s.%N) - $t0" | bc) s"
}
measure() {
  local label=$1
  cli CONFIG RESETSTAT >/dev/null
  for i in $(seq 1 "$rounds"); do
    "$bin" loadtest --redis "$url" --namespace "$ns" --external --workers 2 --sessions "${SESSIONS:-200}" \
      --steps "${STEPS:-50}" --out "$dir/$label-$i" >/dev/null
  done
  python3 - "$dir" "$label" "$rounds" <<'PY'
import json, statistics, sys
base, label, rounds = sys.argv[1], sys.argv[2], int(sys.argv[3])
rates = []
for i in range(1, rounds + 1):
    r = json.load(open(f"{base}/{label}-{i}/results.json"))["rounds"][0]
    if sum(r["checks"].values()) != 0: print(f"# {label} round {i}: CHECKS FAILED {r['checks']}")
    rates.append(r["stepsPerSecond"])
print(f"{label}: " + ", ".join(f"{x:.0f}" for x in rates) + f" steps/s, median {statistics.median(rates):.0f}")
open(f"{base}/{label}.median", "w").write(str(statistics.median(rates)))
PY
  # Where Redis spent its time in these rounds: the five costliest commands (microseconds per call).
  cli INFO commandstats | tr -d '\r' | awk -F'[:,=]' '/^cmdstat_/ {printf "%s %s %s %s\n", $5, $1, $3, $7}' | sort -rn | head -5 |
    awk '{printf "#   %-24s calls %9s  usec %10s  per call %s\n", $2, $3, $1, $4}'
}
echo "# $(date -u +%Y-%m-%dT%H:%MZ)  $(uname -srm)  $(nproc) cores  redis $url  namespace $ns"
grow 1000
measure "idle-1000"
grow "$idle"
measure "idle-$idle"
python3 -c "import sys; a=float(open('$dir/idle-1000.median').read()); b=float(open('$dir/idle-$idle.median').read()); print(f'ratio: {b / a:.2f} (steps/s with $idle idle sessions / with 1000; target >= 0.90)')"
