import Foundation
import StepwiseAgents
import StepwiseCore
import StepwiseRedis
import StepwiseTesting
import Testing

/// Issue 11, points 1 and 2: two worker processes serve `/metrics` on `--metrics-listen`, Debian's
/// `prometheus` scrapes them, and its HTTP API answers with what the load ran: the step counters
/// exactly, and `histogram_quantile` over the step duration histogram exactly where the load's
/// known step durations put it.
@Suite(
    "Prometheus scrapes two workers",
    .enabled(if: TestRedis.url != nil && TestRedis.binary != nil, "needs STEPWISE_TEST_REDIS_URL and STEPWISE_BIN: run `make test`"),
    .timeLimit(.minutes(3))
)
struct MetricsScrapeTests {
    static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent()

    /// `GET url` with curl: status code and body.
    static func get(_ url: String) async throws -> (code: Int, body: String) {
        let r = try await runTool("curl", ["-s", "-m", "5", "-w", "\n%{http_code}", url], timeout: .seconds(10))
        let lines = r.stdout.split(separator: "\n", omittingEmptySubsequences: false)
        return (Int(lines.last ?? "") ?? 0, lines.dropLast().joined(separator: "\n"))
    }

    /// One instant query to Prometheus's HTTP API: the result vector's values.
    static func query(_ port: Int, _ promql: String) async throws -> [Double] {
        let r = try await runTool(
            "curl", ["-s", "-m", "5", "--get", "--data-urlencode", "query=\(promql)", "http://127.0.0.1:\(port)/api/v1/query"],
            timeout: .seconds(10))
        let json = try JSONValue(parsing: r.stdout)
        guard json["status"]?.stringValue == "success" else { return [] }
        return (json["data"]?["result"]?.arrayValue ?? []).compactMap { $0["value"]?.arrayValue?.last?.stringValue }
            .compactMap(Double.init)
    }

    @Test func prometheusCountsWhatTheLoadRan() async throws {
        let keys = try TestRedis.uniqueKeys()
        let conn = try TestRedis.connection(name: "scrape")
        let pool = WorkerPool(binary: try #require(TestRedis.binary), redisURL: try #require(TestRedis.url), namespace: keys.namespace)
        defer { pool.killAll() }
        let ports = [try RedisServerProcess.freeLoopbackPort(), try RedisServerProcess.freeLoopbackPort()]
        for (i, port) in ports.enumerated() {
            try pool.start(id: "scrape-w\(i)", concurrency: 8, extra: ["--metrics-listen", "127.0.0.1:\(port)"])
        }
        // Both ready: registered with Redis and serving /readyz.
        let ready = await eventually(timeout: .seconds(20), interval: .milliseconds(100)) {
            var all = true
            for port in ports where (try? await Self.get("http://127.0.0.1:\(port)/readyz"))?.code != 200 { all = false }
            return all
        }
        #expect(ready, "workers ready: \(pool.logs())")
        #expect(try await Self.get("http://127.0.0.1:\(ports[0])/healthz").code == 200)

        // Prometheus on loopback, temporary storage, 1 s scrapes, the alert rules loaded too.
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("stepwise-prom-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let promPort = try RedisServerProcess.freeLoopbackPort()
        let config = """
            global: {scrape_interval: 1s, evaluation_interval: 1s}
            rule_files: ["\(Self.root.path)/deploy/prometheus/alerts.yml"]
            scrape_configs:
              - job_name: stepwise-workers
                static_configs:
                  - targets: ["127.0.0.1:\(ports[0])", "127.0.0.1:\(ports[1])"]
            """
        try config.write(to: dir.appendingPathComponent("prometheus.yml"), atomically: true, encoding: .utf8)
        let prometheus = try ChildProcess(
            binary: "/usr/bin/prometheus",
            arguments: [
                "--config.file=\(dir.path)/prometheus.yml", "--storage.tsdb.path=\(dir.path)/data",
                "--web.listen-address=127.0.0.1:\(promPort)", "--log.level=warn",
            ])
        defer { prometheus.signal(SIGKILL) }
        let up = await eventually(timeout: .seconds(30), interval: .milliseconds(200)) {
            ((try? await Self.query(promPort, "up{job=\"stepwise-workers\"} == 1")) ?? []).count == 2
        }
        #expect(up, "prometheus scrapes both workers: \(prometheus.output.suffix(2000))")

        // The load: 8 sessions of 3 steps of 150 ms and 2 sessions of 3 steps of 600 ms (counter
        // with options.ms). Each step lands in a known bucket: (0.1, 0.25] or (0.5, 1], with
        // 100 ms and 400 ms of slack for a busy machine.
        let dispatcher = Dispatcher(connection: conn, keys: keys, agents: .builtIn)
        var submissions: [Submission] = []
        var fast = 0
        var slow = 0
        for s in 0..<10 {
            let id = try SessionID("scrape-\(s)")
            let ms = s < 8 ? 150 : 600
            for step in 1...3 {
                submissions.append(
                    Submission(session: id, agent: "counter", input: .int(step), options: step == 1 ? ["ms": .int(ms)] : nil))
                if ms == 150 { fast += 1 } else { slow += 1 }
            }
        }
        let receipts = try await dispatcher.submit(submissions).receipts()
        let accepted = receipts.allSatisfy { $0.enqueued }
        #expect(accepted)
        let total = fast + slow
        let store = SessionStore(connection: conn, keys: keys)
        let done = await eventually(timeout: .seconds(60), interval: .milliseconds(100)) {
            var steps = 0
            for s in 0..<10 { steps += (try? await store.session(try SessionID("scrape-\(s)")))??.steps ?? 0 }
            return steps == total
        }
        #expect(done, "the load ran: \(pool.logs())")

        // Counters: exactly the steps the load ran, all `wait` (counter waits for its next input).
        var counted: [Double] = []
        let settled = await eventually(timeout: .seconds(30), interval: .milliseconds(250)) {
            counted = (try? await Self.query(promPort, "sum(stepwise_steps_total{agent=\"counter\"})")) ?? []
            return counted == [Double(total)]
        }
        #expect(settled, "sum(stepwise_steps_total) = \(counted), the load ran \(total)")
        #expect(try await Self.query(promPort, "sum(stepwise_steps_total{agent=\"counter\",outcome=\"wait\"})") == [Double(total)])
        #expect(try await Self.query(promPort, "count(stepwise_steps_total{agent=\"counter\"} > 0)") == [2])  // both workers ran steps
        #expect(try await Self.query(promPort, "sum(stepwise_step_duration_seconds_count{agent=\"counter\"})") == [Double(total)])
        #expect(try await Self.query(promPort, "sum(stepwise_retries_total) + sum(stepwise_dead_letters_total)") == [0])

        // Quantiles: Prometheus interpolates linearly inside the bucket, as computed here from the
        // load's own counts.
        func expected(_ q: Double) -> Double {
            let rank = q * Double(total)
            if rank <= Double(fast) { return 0.1 + 0.15 * rank / Double(fast) }
            return 0.5 + 0.5 * (rank - Double(fast)) / Double(slow)
        }
        for q in [0.5, 0.9, 0.99] {
            let got = try await Self.query(
                promPort, "histogram_quantile(\(q), sum by (le) (stepwise_step_duration_seconds_bucket{agent=\"counter\"}))")
            #expect(got.count == 1 && abs(got[0] - expected(q)) < 1e-9, "p\(Int(q * 100)): prometheus \(got), load \(expected(q))")
        }

        // Pool gauges: exactly one worker reports them (the lease holder).
        let reported = await eventually(timeout: .seconds(15), interval: .milliseconds(250)) {
            let reporters = (try? await Self.query(promPort, "stepwise_pool_reporter")) ?? []
            let alive = (try? await Self.query(promPort, "max(stepwise_pool_workers_alive)")) ?? []
            return reporters == [1] && alive == [2]
        }
        #expect(reported, "one reporter, 2 workers alive")
        #expect(try await Self.query(promPort, "max(stepwise_pool_ready_jobs)") == [0])
        #expect(try await Self.query(promPort, "sum(stepwise_slots)") == [16])
        // The alert rules loaded, and none fires for this healthy pool.
        let rules = try await Self.get("http://127.0.0.1:\(promPort)/api/v1/rules")
        #expect(rules.body.contains("StepwiseDeadLetters") && rules.body.contains("StepwiseRedisOutOfMemory"))
        #expect(try await Self.query(promPort, "ALERTS{alertstate=\"firing\"}").isEmpty)

        _ = await pool.stopAll()
        _ = await prometheus.stop(timeout: .seconds(10))
        _ = try await conn.send(["DEL", RedisArgument(keys.metricsLease)])
    }

    /// /metrics carries no session or job id in any label.
    @Test func metricsCarryNoSessionIDs() async throws {
        let keys = try TestRedis.uniqueKeys()
        let conn = try TestRedis.connection(name: "scrape-labels")
        let pool = WorkerPool(binary: try #require(TestRedis.binary), redisURL: try #require(TestRedis.url), namespace: keys.namespace)
        defer { pool.killAll() }
        let port = try RedisServerProcess.freeLoopbackPort()
        try pool.start(id: "labels-w", concurrency: 2, extra: ["--metrics-listen", "127.0.0.1:\(port)"])
        let marker = "sessionmarker\(UInt32.random(in: 0...UInt32.max))"
        let dispatcher = Dispatcher(connection: conn, keys: keys, agents: .builtIn)
        _ = try await dispatcher.submit(Submission(session: try SessionID(marker), agent: "counter", input: ["secret": "payload"]))
        var body = ""
        let seen = await eventually(timeout: .seconds(20), interval: .milliseconds(100)) {
            body = (try? await Self.get("http://127.0.0.1:\(port)/metrics"))?.body ?? ""
            return body.contains("stepwise_steps_total{agent=\"counter\",outcome=\"wait\"} 1")
        }
        #expect(seen, "the step is counted: \(body.prefix(3000))")
        #expect(!body.contains(marker) && !body.contains("payload"))
        #expect(body.contains("stepwise_redis_round_trip_seconds_bucket{role=\"steps\""))
        _ = await pool.stopAll()
    }

    /// A bad --metrics-listen is a usage error (64), before anything starts.
    @Test func badMetricsAddressIsAUsageError() async throws {
        for bad in ["9464", "127.0.0.1:http", ":", "127.0.0.1:70000"] {
            let r = try await runBinary(["worker", "--redis", try #require(TestRedis.url), "--metrics-listen", bad])
            #expect(r.status == 64, "\(bad): \(r.stderr)")
            #expect(r.stderr.contains("--metrics-listen"), "\(bad): \(r.stderr)")
        }
    }
}

/// The gateway's `--metrics-listen`: probes and its HTTP request metrics.
@Suite(
    "gateway metrics",
    .enabled(if: TestRedis.url != nil && TestRedis.binary != nil, "needs STEPWISE_TEST_REDIS_URL and STEPWISE_BIN: run `make test`"),
    .timeLimit(.minutes(1))
)
struct GatewayMetricsTests {
    @Test func gatewayServesProbesAndRequestMetrics() async throws {
        let keys = try TestRedis.uniqueKeys()
        let apiPort = try RedisServerProcess.freeLoopbackPort()
        let metricsPort = try RedisServerProcess.freeLoopbackPort()
        let gateway = try ChildProcess(
            binary: try #require(TestRedis.binary),
            arguments: [
                "gateway", "--redis", try #require(TestRedis.url), "--namespace", keys.namespace, "--listen", "127.0.0.1:\(apiPort)",
                "--metrics-listen", "127.0.0.1:\(metricsPort)",
            ], environment: ["STEPWISE_TOKEN_KEY": String(repeating: "k", count: 40)])
        defer { gateway.signal(SIGKILL) }
        let ready = await eventually(timeout: .seconds(20), interval: .milliseconds(100)) {
            (try? await MetricsScrapeTests.get("http://127.0.0.1:\(metricsPort)/readyz"))?.code == 200
        }
        #expect(ready, "\(gateway.output.suffix(2000))")
        #expect(try await MetricsScrapeTests.get("http://127.0.0.1:\(metricsPort)/healthz").code == 200)
        // An API request without a token: 401, counted by the request metrics.
        #expect(try await MetricsScrapeTests.get("http://127.0.0.1:\(apiPort)/v1/sessions").code == 401)
        let metrics = try await MetricsScrapeTests.get("http://127.0.0.1:\(metricsPort)/metrics")
        #expect(metrics.code == 200)
        #expect(
            metrics.body.contains("hb_requests_total") && metrics.body.contains("http_server_request_duration"),
            "\(metrics.body.prefix(2000))")
        // Every metric name is a valid Prometheus name (dots replaced).
        for line in metrics.body.split(separator: "\n") where !line.hasPrefix("#") {
            let name = line.prefix { $0 != "{" && $0 != " " }
            #expect(name.allSatisfy { $0.isASCII && ($0.isLetter || $0.isNumber || $0 == "_" || $0 == ":") }, "\(line)")
        }
        #expect(await gateway.stop(timeout: .seconds(10)) == 0, "\(gateway.output.suffix(2000))")
    }
}
