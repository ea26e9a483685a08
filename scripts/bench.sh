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
rb=$(redis-benchmark -h 127.0.0.1 -p "$port" -q -c 50 -n 200000 -t set,get,lpush,rpop | tr '\r' '\n' | grep -E 'requests per second' || true)
echo "$rb"
set_rps=$(echo "$rb" | awk '/^SET:/ {print $2}')
echo "## redis-benchmark pipelined (-P 16)"
redis-benchmark -h 127.0.0.1 -p "$port" -q -c 50 -n 1000000 -P 16 -t set,get | tr '\r' '\n' | grep -E 'requests per second' || true
# Encryption at rest is measured in the same run: the same workload plain, then with a keyring.
unset STEPWISE_KEYRING STEPWISE_KEYRING_FILE
"$bin" keys generate --id bench --file "$dir/keyring.json" >/dev/null
load() {
  "$bin" loadtest --redis "redis://127.0.0.1:$port" --workers "${WORKERS:-1,2}" --sessions "${SESSIONS:-200}" \
    --steps "${STEPS:-50}" --concurrency "${CONCURRENCY:-32}" --step-ms "${STEP_MS:-0}" "$@"
}
# Plain and encrypted runs alternate, ENC_ROUNDS times each (default 7), on the same server, so a
# slow spell of the machine hits both; the cost is the ratio of the medians.
rounds=${ENC_ROUNDS:-7}
for i in $(seq 1 "$rounds"); do
  echo "## stepwise loadtest: counter, ${SESSIONS:-200} sessions x ${STEPS:-50} steps, plain (round $i of $rounds)"
  load --out "$dir/plain$i"
  echo "## stepwise loadtest: the same, encrypted at rest (--keyring-file: AES-256-GCM per session; round $i of $rounds)"
  load --out "$dir/encrypted$i" --keyring-file "$dir/keyring.json"
done
echo "## encryption cost: median encrypted steps/s / median plain steps/s over $rounds alternating rounds (target >= 0.90)"
python3 - "$dir" "$rounds" "${set_rps:-0}" <<'PY'
import json, statistics, sys
base, rounds, set_rps = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
def rates(kind):
    out = {}
    for i in range(1, rounds + 1):
        for r in json.load(open(f"{base}/{kind}{i}/results.json")).get("rounds") or []:
            out.setdefault(r["workers"], []).append(r["stepsPerSecond"])
    return out
plain, enc = rates("plain"), rates("encrypted")
for w in sorted(plain):
    if w in enc:
        p, e = statistics.median(plain[w]), statistics.median(enc[w])
        runs = lambda xs: ", ".join(f"{x:.0f}" for x in xs)
        print(f"workers {w}: plain {runs(plain[w])} (median {p:.0f}) steps/s, encrypted {runs(enc[w])} (median {e:.0f}) steps/s, ratio {e / p:.2f}")
        # Each encrypted round against the plain round just before it: the spread says how far
        # this machine's noise moves a single comparison.
        paired = [y / x for x, y in zip(plain[w], enc[w])]
        print(f"workers {w}: round by round {', '.join(f'{q:.2f}' for q in paired)} (median {statistics.median(paired):.2f}, "
              f"{sum(q >= 0.9 for q in paired)} of {len(paired)} at 0.90 or more)")
        cpu = lambda kind: statistics.median(
            (r["redisCPU"] + r["workersCPU"]) * 1e6 / r["stepsPerSecond"]
            for i in range(1, rounds + 1) for r in json.load(open(f"{base}/{kind}{i}/results.json"))["rounds"] if r["workers"] == w)
        print(f"workers {w}: CPU (Redis + workers) per step: plain {cpu('plain'):.0f} us, encrypted {cpu('encrypted'):.0f} us, "
              f"ratio {cpu('plain') / cpu('encrypted'):.2f}")
# Issue 13's ratios, from the plain rounds (the median round by steps/s).
print("## throughput as ratios (plain rounds; issue 13 targets: >= 0.18 x SET/s, <= 12 commands per step)")
for w in sorted(plain):
    rows = []
    for i in range(1, rounds + 1):
        rows += [r for r in json.load(open(f"{base}/plain{i}/results.json")).get("rounds") or [] if r["workers"] == w]
    r = sorted(rows, key=lambda r: r["stepsPerSecond"])[len(rows) // 2]
    s = r["stepsPerSecond"]
    ratio = f"{s / set_rps:.3f} x redis-benchmark SET/s ({set_rps:.0f})" if set_rps > 0 else "no SET/s figure"
    print(f"workers {w}: {s:.0f} steps/s = {ratio}, {r['redisCommandsPerSecond'] / s:.1f} Redis commands per step, "
          f"Redis CPU {r['redisCPU'] * 1000 / s:.3f} s per 1,000 steps")
PY
# Large states (an LLM conversation's): steps/s and bytes Redis moved per step (in + out, every
# client), with the workers' state cache on (default 64 MiB, states over 8 KiB) and off, and with
# the cache and --state-deltas (commits carry only what changed).
echo "## large states: counter, ${BIG_SESSIONS:-100} sessions x ${BIG_STEPS:-20} steps, 2 workers: state cache off, on, on with deltas"
for size in 1024 65536 204800; do
  for mode in off on delta; do
    case $mode in
      off) flags=(--state-cache-mb 0) ;;
      on) flags=(--state-cache-mb 64) ;;
      delta) flags=(--state-cache-mb 64 --state-deltas) ;;
    esac
    "$bin" loadtest --redis "redis://127.0.0.1:$port" --workers 2 --sessions "${BIG_SESSIONS:-100}" --steps "${BIG_STEPS:-20}" \
      --concurrency 32 --state-bytes "$size" "${flags[@]}" --out "$dir/big-$size-$mode" >/dev/null
    python3 - "$dir/big-$size-$mode/results.json" "$size" "$mode" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))["rounds"][0]
checks = sum(r["checks"].values())
label = {"off": "cache off", "on": "cache on ", "delta": "+ deltas "}[sys.argv[3]]
print(f"state {int(sys.argv[2]) // 1024:>3} KiB, {label}: {r['stepsPerSecond']:7.0f} steps/s, "
      f"{r['bytesPerStep'] / 1024:8.1f} KiB moved per step, redis cpu {r['redisCPU'] * 100:3.0f} %, check failures {checks}")
PY
  done
done
if [ "${SCALING:-0}" = 1 ]; then
  echo "## stepwise loadtest: scaling run (scripts/loadtest.sh)"
  REDIS_URL="redis://127.0.0.1:$port" WORKERS=1,2,4,8 SESSIONS=800 STEPS=40 STEP_MS=50 CONCURRENCY=50 scripts/loadtest.sh
fi
echo "## gateway: SSE subscribers (scripts/bench-gateway.sh)"
scripts/bench-gateway.sh
