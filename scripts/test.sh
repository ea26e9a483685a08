#!/usr/bin/env bash
# make test: builds, starts a throwaway redis-server on a free loopback port, runs every test
# suite against it, and always stops it.
set -euo pipefail
cd "$(dirname "$0")/.."
dir=$(mktemp -d /tmp/stepwise-test-redis.XXXXXX)
cleanup() { scripts/redis-local.sh stop "$dir"; rm -rf "$dir"; }
trap cleanup EXIT
swift build --build-tests
port=$(scripts/redis-local.sh start "$dir")
echo "test redis-server on 127.0.0.1:$port (pid $(cat "$dir/redis.pid"))"
export STEPWISE_TEST_REDIS_URL="redis://127.0.0.1:$port"
# A password file or payload logging from the caller's shell would leak into every command the
# tests run; the tests set what they need themselves.
unset REDIS_PASSWORD_FILE STEPWISE_LOG_PAYLOADS STEPWISE_KEYRING STEPWISE_KEYRING_FILE
export STEPWISE_BIN="$(swift build --show-bin-path)/stepwise"
if [ $# -gt 0 ]; then
  swift test --skip-build "$@"
else
  # The real-browser and schemathesis runs load both cores (chromium, a Python fuzzer), and so do
  # the operations checks (a prometheus server, Python schema validators, promtool): they run
  # after the other suites, not beside their timing-sensitive tests, and apart from each other.
  # So do the llm agent's worker-and-test-server cases, which measure cancel latency and
  # Retry-After waits.
  ops='DeployFilesTests|MetricsScrapeTests|GatewayMetricsTests|TopCommandTests'
  swift test --skip-build --skip GatewayToolTests --skip "$ops" --skip LLMAgentTests
  swift test --skip-build --filter "$ops"
  swift test --skip-build --filter LLMAgentTests
  swift test --skip-build --filter GatewayToolTests
fi
