#!/usr/bin/env python3
"""A local OpenAI-compatible chat-completions server for Stepwise's tests (Python stdlib only).

It streams `POST /v1/chat/completions` with `stream: true` exactly as the hosted API does: HTTP/1.1
chunked `text/event-stream`, a role chunk, content deltas, tool_calls deltas whose `arguments` are
split across chunks, a chunk with `finish_reason`, a usage chunk (`choices: []`) when
`stream_options.include_usage` is true, then `data: [DONE]`.

Faults and behaviours are chosen per request by `+`-separated directives in the model name, e.g.
`t1+429x1` or `t2+slow100+words=300`. Counters are per model name, so each test uses its own:
  429xN        the first N requests get 429 with `Retry-After: 1` (`ra=S` sets S seconds)
  500xN        the first N requests get 500
  dropxN       the first N requests stream a few tokens, then the connection is cut
  droptoolxN   the first N requests that carry tool results are cut that way
  malformedxN  the first N requests stream a chunk that is not JSON
  slowMS       MS milliseconds between chunks
  words=N      the answer is N words long (`w1 w2 ...`)
  loop         answer with a tool call (the first tool offered) unless tool_choice is "none"
  fenced       quiz JSON comes wrapped in a ```json fence with prose around it
  badjsonxN    the first N quiz-question answers have the wrong shape (3 choices, answer 7)
Without directives the answer is `You said: <last user message>`. A user message made of lines
`/call NAME {json arguments}` makes the model call those tools (in parallel, one per line); after
tool results, the answer is `Tool results: <result>; <result>`. Quiz requests are recognised by
`response_format.json_schema.name` (`quiz_plan`, `quiz_question`, `quiz_summary`), or by the
properties of llama.cpp's `{"type": "json_object", "schema": ...}`.

With `--api-key-file F`, requests must carry `Authorization: Bearer <contents of F>` (else 401).
`GET /_fake/requests?model=M` returns what the server saw and did for model M (for assertions).

Usage: fake_openai.py [--port 0] [--port-file PATH] [--api-key-file PATH]. Binds 127.0.0.1 only.
"""
import argparse
import json
import os
import re
import select
import socket
import sys
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

LOCK = threading.Lock()
COUNTERS = {}  # (model, counter name) -> count
REQUESTS = {}  # model -> [record]
API_KEY = None


def bump(model, name):
    with LOCK:
        COUNTERS[(model, name)] = COUNTERS.get((model, name), 0) + 1
        return COUNTERS[(model, name)]


def directives(model):
    d = {}
    for part in model.split("+")[1:]:
        m = re.fullmatch(r"([a-z0-9]+)x(\d+)", part)
        if m:
            d[m.group(1)] = int(m.group(2))
            continue
        m = re.fullmatch(r"slow(\d+)", part)
        if m:
            d["slow"] = int(m.group(1))
            continue
        if "=" in part:
            k, v = part.split("=", 1)
            d[k] = v
        else:
            d[part] = True
    return d


class Cut(Exception):
    """The client went away."""


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):  # quiet: the tests read /_fake/requests
        pass

    # --- plumbing -------------------------------------------------------------------------------

    def send_json(self, status, body, headers=()):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in headers:
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def client_gone(self, wait):
        """Waits up to `wait` seconds; True when the client closed its end meanwhile."""
        sock = self.connection
        deadline = time.monotonic() + wait
        while True:
            left = max(0.0, deadline - time.monotonic())
            r, _, _ = select.select([sock], [], [], left)
            if r:
                try:
                    data = sock.recv(1, socket.MSG_PEEK)
                except OSError:
                    return True
                if not data:
                    return True
                # Unexpected bytes from the client (a pipelined request): stop watching.
                time.sleep(left)
                return False
            if left <= 0:
                return False

    def chunk(self, payload):
        data = payload.encode()
        try:
            self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
            self.wfile.flush()
        except OSError as e:
            raise Cut() from e

    def event(self, obj):
        self.chunk("data: " + (obj if isinstance(obj, str) else json.dumps(obj, separators=(",", ":"))) + "\n\n")

    # --- routes ---------------------------------------------------------------------------------

    def do_GET(self):
        url = urllib.parse.urlparse(self.path)
        if url.path == "/_fake/requests":
            model = urllib.parse.parse_qs(url.query).get("model", [""])[0]
            with LOCK:
                body = list(REQUESTS.get(model, []))
            self.send_json(200, body)
        elif url.path == "/v1/models":
            self.send_json(200, {"object": "list", "data": [{"id": "fake", "object": "model", "owned_by": "stepwise-tests"}]})
        else:
            self.send_json(404, {"error": {"message": "not found", "type": "invalid_request_error", "code": None}})

    def do_POST(self):
        url = urllib.parse.urlparse(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length)
        if url.path != "/v1/chat/completions":
            self.send_json(404, {"error": {"message": "not found", "type": "invalid_request_error", "code": None}})
            return
        try:
            req = json.loads(raw)
        except ValueError:
            self.send_json(400, {"error": {"message": "body is not JSON", "type": "invalid_request_error", "code": None}})
            return
        model = str(req.get("model", ""))
        record = {
            "messages": req.get("messages"),
            "tools": [t.get("function", {}).get("name") for t in (req.get("tools") or [])],
            "stream": req.get("stream"),
            "include_usage": (req.get("stream_options") or {}).get("include_usage"),
            "temperature": req.get("temperature"),
            "response_format": req.get("response_format"),
            "authorized": API_KEY is None or self.headers.get("Authorization") == "Bearer " + API_KEY,
            "started": time.time(),
            "outcome": None,
        }
        with LOCK:
            REQUESTS.setdefault(model, []).append(record)
        if not record["authorized"]:
            record["outcome"] = "401"
            # As the hosted API does, the message quotes part of the refused key.
            sent = (self.headers.get("Authorization") or "").removeprefix("Bearer ")
            self.send_json(401, {"error": {"message": "Incorrect API key provided: %s****%s" % (sent[:8], sent[-4:]),
                                           "type": "invalid_request_error", "code": "invalid_api_key"}})
            return
        d = directives(model)
        for code in ("429", "500"):
            if code in d and bump(model, code) <= d[code]:
                record["outcome"] = code
                headers = [("Retry-After", str(d.get("ra", "1")))] if code == "429" else []
                message = "Rate limit reached" if code == "429" else "The server had an error while processing your request"
                self.send_json(int(code), {"error": {"message": message, "type": "server_error", "code": None}}, headers)
                return
        try:
            self.stream(req, model, d, record)
        except Cut:
            record["outcome"] = "client closed"
            record["closed_at"] = time.time()
        self.close_connection = True

    # --- the "model" ----------------------------------------------------------------------------

    def answer(self, req, d):
        """What the model says: ("text", str) or ("tools", [(name, arguments text)])."""
        messages = req.get("messages") or []
        last = messages[-1] if messages else {}
        tools = req.get("tools") or []
        rf = req.get("response_format") or {}
        schema_name = (rf.get("json_schema") or {}).get("name")
        if not schema_name and isinstance(rf.get("schema"), dict):  # llama.cpp's json_object + schema
            props = rf["schema"].get("properties") or {}
            schema_name = "quiz_plan" if "plan" in props else "quiz_question" if "choices" in props else "quiz_summary"
        if schema_name:
            return ("text", self.quiz(schema_name, rf, messages, d, req.get("model", "")))
        if d.get("loop") and tools and req.get("tool_choice") != "none":
            name = tools[0]["function"]["name"]
            return ("tools", [(name, json.dumps({"expression": "1+1"}))])
        if last.get("role") == "tool":
            results = []
            for m in reversed(messages):
                if m.get("role") != "tool":
                    break
                results.append(str(m.get("content")))
            return ("text", "Tool results: " + "; ".join(reversed(results)))
        if "words" in d:
            return ("text", " ".join("w%d" % i for i in range(1, int(d["words"]) + 1)))
        content = last.get("content") or ""
        calls = [line[6:].strip() for line in content.splitlines() if line.startswith("/call ")]
        if calls:
            out = []
            for c in calls:
                name, _, args = c.partition(" ")
                out.append((name, args.strip() or "{}"))
            return ("tools", out)
        return ("text", "You said: " + content)

    def quiz(self, name, rf, messages, d, model):
        text = " ".join(str(m.get("content")) for m in messages)
        if name == "quiz_plan":
            schema = (rf.get("json_schema") or rf)["schema"]["properties"]["plan"]
            n = int(schema.get("maxItems", 3))
            body = {"plan": ["angle %d of the topic" % (i + 1) for i in range(n)]}
        elif name == "quiz_question":
            m = re.search(r"[Qq]uestion (\d+)", text)
            i = int(m.group(1)) if m else 1
            if "badjson" in d and bump(model, "badjson") <= d["badjson"]:
                body = {"q": "Broken question %d?" % i, "choices": ["a", "b", "c"], "answer": 7}
            else:
                body = {"q": "Model question %d?" % i, "choices": ["right", "wrong 1", "wrong 2", "wrong 3"],
                        "answer": 0}
        else:
            body = {"summary": "A model-written quiz."}
        out = json.dumps(body)
        if d.get("fenced"):
            out = "Sure! Here is the JSON you asked for:\n```json\n" + out + "\n```\nHope this helps."
        return out

    def stream(self, req, model, d, record):
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream; charset=utf-8")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        delay = d.get("slow", 0) / 1000.0
        base = {"id": "chatcmpl-%d" % int(time.time() * 1000), "object": "chat.completion.chunk",
                "created": int(time.time()), "model": model, "system_fingerprint": "fp_fake"}

        def send(delta, finish=None):
            if delay and self.client_gone(delay):
                raise Cut()
            self.event(dict(base, choices=[{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]))

        kind, value = self.answer(req, d)
        carries_tools = (req.get("messages") or [{}])[-1].get("role") == "tool"
        drop = ("drop" in d and bump(model, "drop") <= d["drop"]) or (
            carries_tools and "droptool" in d and bump(model, "droptool") <= d["droptool"])
        malformed = "malformed" in d and bump(model, "malformed") <= d["malformed"]
        send({"role": "assistant", "content": "" if kind == "text" else None, "refusal": None})
        if kind == "text":
            pieces = re.findall(r"\S+\s*|\s+", value) or [""]
            for i, piece in enumerate(pieces):
                if drop and i == 2:
                    record["outcome"] = "dropped"
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                if malformed and i == 1:
                    record["outcome"] = "malformed"
                    self.event('{"id":"chatcmpl-broken","choices":[{"index":0,"delta":{"content":"oops"')
                    self.chunk("")
                    return
                send({"content": piece})
            finish = "stop"
        else:
            for index, (name, args) in enumerate(value):
                call_id = "call_%d_%d" % (int(time.time() * 1000) % 100000, index)
                send({"tool_calls": [{"index": index, "id": call_id, "type": "function",
                                      "function": {"name": name, "arguments": ""}}]})
                # Split the arguments into 3 pieces, as the hosted API does (mid-token, mid-string).
                step = max(1, (len(args) + 2) // 3)
                for start in range(0, len(args), step):
                    if drop and start > 0:
                        record["outcome"] = "dropped"
                        self.connection.shutdown(socket.SHUT_RDWR)
                        return
                    send({"tool_calls": [{"index": index, "function": {"arguments": args[start:start + step]}}]})
            finish = "tool_calls"
        send({}, finish)
        if (req.get("stream_options") or {}).get("include_usage"):
            prompt = sum(len(str(m.get("content") or "").split()) for m in req.get("messages") or [])
            completion = len(str(value).split())
            self.event(dict(base, choices=[], usage={"prompt_tokens": prompt, "completion_tokens": completion,
                                                     "total_tokens": prompt + completion}))
        self.event("[DONE]")
        self.chunk("")
        record["outcome"] = "ok"


def main():
    global API_KEY
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--port-file")
    parser.add_argument("--api-key-file")
    args = parser.parse_args()
    if args.api_key_file:
        with open(args.api_key_file) as f:
            API_KEY = f.read().strip()
    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    server.daemon_threads = True
    port = server.server_address[1]
    if args.port_file:
        tmp = args.port_file + ".tmp"
        with open(tmp, "w") as f:
            f.write(str(port))
        os.rename(tmp, args.port_file)
    print("fake OpenAI server on 127.0.0.1:%d" % port, flush=True)
    try:
        server.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    sys.exit(main())
