#!/usr/bin/env python3
"""Subscriber benchmark of the gateway: opens N SSE subscribers on K sessions while steps run,
and reports delivery latency (the event's commit time, written by the worker, to the moment the
client reads it), the gateway's memory and its Redis connections.

Usage: gateway_subscribers.py --base http://127.0.0.1:PORT --token T --gateway-pid PID
       --redis-port P --subscribers N --sessions K --steps-per-second R --seconds D
Loopback only; bounded in count and time; every socket is closed at the end.
"""
import argparse
import asyncio
import json
import socket
import subprocess
import sys
import time
import urllib.request

ap = argparse.ArgumentParser()
ap.add_argument("--base", required=True)
ap.add_argument("--token", required=True)
ap.add_argument("--gateway-pid", type=int, required=True)
ap.add_argument("--redis-port", type=int, required=True)
ap.add_argument("--subscribers", type=int, default=1000)
ap.add_argument("--sessions", type=int, default=100)
ap.add_argument("--steps-per-second", type=float, default=500)
ap.add_argument("--seconds", type=float, default=20)
ap.add_argument("--json", default="")
args = ap.parse_args()
host, port = args.base.split("//")[1].split(":")
port = int(port)
assert host in ("127.0.0.1", "localhost"), "loopback only"


def api(method, path, body=None):
    req = urllib.request.Request(args.base + path, method=method, data=None if body is None else json.dumps(body).encode(),
                                 headers={"Authorization": "Bearer " + args.token, "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.load(r)


def rss_kb(pid):
    for line in open("/proc/%d/status" % pid):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def redis_connections():
    out = subprocess.run(["redis-cli", "-p", str(args.redis_port), "CLIENT", "LIST"], capture_output=True, text=True).stdout
    return sum(1 for l in out.splitlines() if "name=stepwise:gateway@%d" % port in l)


latencies = []
span = [float("inf"), 0]
refused_submits = {}  # status code -> count of submits not answered 202  # earliest and latest commit time (ms) of the events measured
received = 0
connected = 0
errors = 0
measuring = False


async def subscriber(session):
    global received, connected, errors
    try:
        reader, writer = await asyncio.open_connection(host, port, limit=1 << 20)
    except OSError:
        errors += 1
        return
    writer.write(("GET /v1/sessions/%s/events?stay=true HTTP/1.1\r\nHost: %s\r\nAuthorization: Bearer %s\r\n"
                  "Accept: text/event-stream\r\n\r\n" % (session, host, args.token)).encode())
    try:
        status = await reader.readline()
        if b" 200 " not in status:
            errors += 1
            return
        while (await reader.readline()) not in (b"\r\n", b""):
            pass
        connected += 1
        while True:
            line = await reader.readline()
            if not line:
                break
            if line.startswith(b"data: {"):
                now = time.time() * 1000
                i = line.find(b'"time":')
                if i >= 0 and measuring:
                    j = i + 7
                    k = j
                    while line[k:k + 1].isdigit():
                        k += 1
                    t = int(line[j:k])
                    latencies.append(now - t)
                    received += 1
                    span[0] = min(span[0], t)
                    span[1] = max(span[1], t)
    except (ConnectionError, asyncio.CancelledError):
        pass
    finally:
        writer.close()


async def driver(sessions, rate, stop_at):
    # Open loop: keep-alive HTTP/1.1 connections with pipelined requests. Each connection's writer
    # paces its share of the steps whatever the response times are (a closed loop measured the
    # round trip, not the gateway); its reader counts the 202 answers.
    n = max(1, min(32, int(rate // 25) or 1))
    async def one(idx):
        reader, writer = await asyncio.open_connection(host, port)
        interval = n / rate
        sent = 0
        accepted = 0
        answered = 0
        done = asyncio.Event()

        async def read_answers():
            nonlocal accepted, answered
            while not (done.is_set() and answered >= sent):
                status = await reader.readline()
                if not status:
                    return
                length = 0
                while True:
                    h = await reader.readline()
                    if h.lower().startswith(b"content-length:"):
                        length = int(h.split(b":")[1])
                    if h in (b"\r\n", b""):
                        break
                await reader.readexactly(length)
                answered += 1
                if b" 202 " in status:
                    accepted += 1
                else:
                    code = status.split(b" ")[1].decode() if b" " in status else "?"
                    refused_submits[code] = refused_submits.get(code, 0) + 1

        answers = asyncio.create_task(read_answers())
        nxt = time.time() + idx * interval / n
        i = idx
        body = b'{"input":"x"}'
        while time.time() < stop_at:
            s = sessions[i % len(sessions)]
            i += n
            writer.write(("POST /v1/sessions/%s/steps HTTP/1.1\r\nHost: %s\r\nAuthorization: Bearer %s\r\n"
                          "Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % (s, host, args.token, len(body))).encode() + body)
            sent += 1
            nxt += interval
            delay = nxt - time.time()
            if delay > 0:
                await asyncio.sleep(delay)
        await writer.drain()
        done.set()
        try:
            await asyncio.wait_for(answers, timeout=30)
        except asyncio.TimeoutError:
            answers.cancel()
        writer.close()
        return accepted
    return sum(await asyncio.gather(*(one(i) for i in range(n))))


async def main():
    global measuring
    sessions = [api("POST", "/v1/sessions", {"agent": "echo", "input": "start"})["session"] for _ in range(args.sessions)]
    base_rss = rss_kb(args.gateway_pid)
    t0 = time.time()
    tasks = []
    for i in range(args.subscribers):
        tasks.append(asyncio.create_task(subscriber(sessions[i % len(sessions)])))
        if i % 200 == 199:
            await asyncio.sleep(0.05)
    deadline = time.time() + 120
    while connected + errors < args.subscribers and time.time() < deadline:
        await asyncio.sleep(0.1)
    # Every subscriber has finished its catch-up and joined the hub before the measurement.
    while time.time() < deadline:
        h = json.load(urllib.request.urlopen(args.base + "/healthz", timeout=10))
        if h.get("subscribers", 0) >= connected:
            break
        await asyncio.sleep(0.2)
    connect_s = time.time() - t0
    await asyncio.sleep(1.0)
    idle_rss = rss_kb(args.gateway_pid)
    conns = redis_connections()
    health = json.load(urllib.request.urlopen(args.base + "/healthz", timeout=10))
    measuring = True
    start = time.time()
    steps = await driver(sessions, args.steps_per_second, start + args.seconds)
    await asyncio.sleep(1.0)
    measuring = False
    elapsed = time.time() - start
    busy_rss = rss_kb(args.gateway_pid)
    conns = max(conns, redis_connections())
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    lat = sorted(latencies)
    pct = lambda p: round(lat[min(len(lat) - 1, int(len(lat) * p))], 1) if lat else None
    result = {
        "subscribers": args.subscribers, "connected": connected, "refused": errors, "sessions": args.sessions,
        "connect_seconds": round(connect_s, 1), "hub_subscribers": health.get("subscribers"), "hub_streams": health.get("streams"),
        "steps": steps, "steps_per_second": round(steps / args.seconds, 1),
        # Measured from the events themselves: distinct events seen / their commit-time span.
        "events_committed_per_second": round((received / (args.subscribers / args.sessions)) / max(0.001, (span[1] - span[0]) / 1000), 1),
        "submit_seconds": round(elapsed - 1.0, 1),
        "submits_not_accepted": refused_submits,
        "deliveries": received, "deliveries_per_second": round(received / max(0.001, (span[1] - span[0]) / 1000), 1),
        "latency_ms_p50": pct(0.50), "latency_ms_p99": pct(0.99), "latency_ms_max": round(lat[-1], 1) if lat else None,
        "gateway_rss_mb": {"before": round(base_rss / 1024, 1), "subscribed": round(idle_rss / 1024, 1), "busy": round(busy_rss / 1024, 1)},
        "gateway_redis_connections": conns,
    }
    print(json.dumps(result))
    if args.json:
        with open(args.json, "a") as f:
            f.write(json.dumps(result) + "\n")


asyncio.run(main())
