import ArgumentParser
import Foundation
import Histogram
import Logging
import StepwiseAgents
import StepwiseCore
import StepwiseRedis

struct LoadTestCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "loadtest",
        abstract: "Measure steps/s and latency with 1..N worker processes, and check that nothing was lost, duplicated or reordered.",
        discussion: """
            For each count in --workers, starts that many `stepwise worker` processes (unless --external), \
            submits sessions x steps `counter` steps into a fresh namespace, waits until every step is \
            committed, checks each session's ledger and event stream, prints one result row, stops the \
            workers and deletes the namespace. Exits non-zero when any check fails or the time limit passes.
            """)

    @OptionGroup var connection: ConnectionOptions

    @Option(help: "Comma-separated worker process counts to run, e.g. 1,2,4.")
    var workers: String = "1,2"

    @Option(help: "Number of sessions (1-1000000).")
    var sessions: Int = 200

    @Option(help: "Steps per session (1-100000).")
    var steps: Int = 50

    @Option(help: "Steps run at once per worker process.")
    var concurrency: Int = 16

    @Option(help: "Simulated step latency in milliseconds (an LLM call), 0 for none.")
    var stepMs: Int = 0

    @Option(help: "Bytes of filler text in each step input.")
    var inputBytes: Int = 0

    @Option(help: "Seconds each worker count may take before the run is declared failed.")
    var timeLimit: Double = 300

    @Flag(help: "Drive workers that already run against the same --redis and --namespace instead of starting them (one round only).")
    var external = false

    @Flag(help: "Print each result row as one JSON object.")
    var json = false

    var workerCounts: [Int] { workers.split(separator: ",").compactMap { Int($0.trimmingCharacters(in: .whitespaces)) } }

    func validate() throws {
        let counts = workerCounts
        guard !counts.isEmpty, counts.count == workers.split(separator: ",").count, counts.allSatisfy({ (1...64).contains($0) }) else {
            throw ValidationError("--workers '\(workers)' must be comma-separated counts 1-64, e.g. 1,2,4")
        }
        guard (1...1_000_000).contains(sessions) else { throw ValidationError("--sessions must be 1-1000000") }
        guard (1...100_000).contains(steps) else { throw ValidationError("--steps must be 1-100000") }
        guard sessions * steps <= 10_000_000 else { throw ValidationError("--sessions x --steps must be at most 10000000") }
        guard (1...1000).contains(concurrency) else { throw ValidationError("--concurrency must be 1-1000") }
        guard (0...60_000).contains(stepMs) else { throw ValidationError("--step-ms must be 0-60000") }
        guard (0...256 * 1024).contains(inputBytes) else { throw ValidationError("--input-bytes must be 0-262144") }
        _ = try seconds(timeLimit, flag: "--time-limit", min: 1)
        if external && counts.count != 1 { throw ValidationError("--external runs one round: give one --workers value (the pool's size)") }
    }

    func run() async throws {
        let logger = connection.makeLogger(label: "stepwise.loadtest")
        let conn = try await connection.connect(name: "stepwise:loadtest", logger: logger)
        var allOK = true
        if !json {
            output("# \(sessions) sessions x \(steps) steps, agent counter, step \(stepMs) ms, concurrency \(concurrency)/worker, redis \(connection.endpoint)")
            output("workers  steps/s  vs-linear  p50ms  p90ms  p99ms  maxms  overhead-p50ms  redis-cmd/s  redis-cpu%  workers-cpu%  errors")
        }
        var baseline: Double?
        for count in workerCounts {
            let result = try await reportingFailures { try await round(workers: count, conn: conn, logger: logger) }
            if baseline == nil { baseline = result.stepsPerSecond / Double(count) }
            let efficiency = result.stepsPerSecond / ((baseline ?? 1) * Double(count))
            allOK = allOK && result.errors.isEmpty
            if json {
                var o = result.json
                o["scalingEfficiency"] = .number((efficiency * 1000).rounded() / 1000)
                output(JSONValue.object(o).jsonString)
            } else {
                output(
                    [
                        pad(count, 7), pad(Int(result.stepsPerSecond), 8), pad(String(format: "%.2f", efficiency), 9),
                        pad(result.p50, 5), pad(result.p90, 5), pad(result.p99, 5), pad(result.max, 5),
                        pad(result.overheadP50, 14), pad(Int(result.redisCommandsPerSecond), 11),
                        pad(Int(result.redisCPU * 100), 10), pad(Int(result.workersCPU * 100), 12),
                        result.errors.isEmpty ? "0" : result.errors.joined(separator: "; "),
                    ].joined(separator: "  "))
            }
        }
        if !allOK { throw ExitCode.failure }
    }

    private func pad(_ v: some CustomStringConvertible, _ width: Int) -> String {
        let s = v.description
        return String(repeating: " ", count: max(0, width - s.count)) + s
    }

    struct RoundResult {
        var workers: Int
        var steps: Int
        var seconds: Double
        var stepsPerSecond: Double
        var p50, p90, p99, max, overheadP50: UInt64
        var redisCommandsPerSecond: Double
        var redisCPU: Double
        var workersCPU: Double
        var errors: [String]

        var json: [String: JSONValue] {
            [
                "workers": .number(Double(workers)), "steps": .number(Double(steps)), "seconds": .number(seconds),
                "stepsPerSecond": .number(stepsPerSecond.rounded()), "latencyMs": ["p50": .number(Double(p50)), "p90": .number(Double(p90)), "p99": .number(Double(p99)), "max": .number(Double(max))],
                "overheadP50Ms": .number(Double(overheadP50)), "redisCommandsPerSecond": .number(redisCommandsPerSecond.rounded()),
                "redisCPU": .number(redisCPU), "workersCPU": .number(workersCPU), "errors": .array(errors.map { .string($0) }),
            ]
        }
    }

    private func round(workers count: Int, conn: RedisConnection, logger: Logger) async throws -> RoundResult {
        let keys = external ? connection.keys : try KeySpace(namespace: "\(connection.keys.namespace)-lt-\(UUID().uuidString.prefix(8).lowercased())")
        let ids = try (0..<sessions).map { try SessionID("lt\($0)") }
        var children: [Process] = []
        defer { for p in children where p.isRunning { kill(p.processIdentifier, SIGKILL) } }
        if !external {
            let binary = URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath().path
            for i in 0..<count {
                let p = Process()
                p.executableURL = URL(fileURLWithPath: binary)
                p.arguments = [
                    "worker", "--redis", connection.redisURL, "--namespace", keys.namespace, "--concurrency", String(concurrency),
                    "--worker-id", "lt-\(i)", "--log-level", "warning",
                ]
                p.standardInput = FileHandle.nullDevice
                try p.run()
                children.append(p)
            }
            let up = try await waitUntil(timeout: .seconds(30)) {
                try await SessionStore(connection: conn, keys: keys).queueInfo().workers.filter(\.alive).count == count
            }
            guard up else { throw StepwiseError(.invalidConfiguration, "the \(count) worker processes did not register within 30 s") }
        }

        let filler = inputBytes > 0 ? String(repeating: "x", count: inputBytes) : nil
        let dispatcher = Dispatcher(connection: conn, keys: keys, agents: .builtIn, configuration: .init(sessionTTL: .seconds(3600)))
        let options: JSONValue? = stepMs > 0 ? ["ms": .number(Double(stepMs))] : nil
        let total = sessions * steps
        let before = try await redisCounters(conn)
        let cpuBefore = children.map { cpuSeconds(pid: $0.processIdentifier) }.reduce(0, +)
        let start = ContinuousClock.now
        // Submit in rounds (step k of every session), pipelined in batches of 500.
        for step in 0..<steps {
            var batch: [Submission] = []
            for id in ids {
                var input: [String: JSONValue] = ["n": .number(Double(step))]
                if let filler { input["pad"] = .string(filler) }
                batch.append(Submission(session: id, agent: "counter", input: .object(input), options: step == 0 ? options : nil))
                if batch.count == 500 {
                    _ = try await dispatcher.submit(batch)
                    batch.removeAll(keepingCapacity: true)
                }
            }
            if !batch.isEmpty { _ = try await dispatcher.submit(batch) }
        }
        var lastPrint = ContinuousClock.now
        let finished = try await waitUntil(timeout: try seconds(timeLimit, flag: "--time-limit"), interval: .milliseconds(50)) {
            let done = try await conn.send(["HGET", RedisArgument(keys.stats), "committed"]).int ?? 0
            if !json, ContinuousClock.now - lastPrint > .seconds(1) {
                lastPrint = .now
                let elapsed = (ContinuousClock.now - start).inSeconds
                let rate = Double(done) / max(elapsed, 0.001)
                let eta = rate > 0 ? Double(total - done) / rate : 0
                FileHandle.standardError.write(Data(String(format: "\r  %d workers: %d/%d steps, %.0f steps/s, ETA %.0f s   ", count, done, total, rate, eta).utf8))
            }
            return done >= total
        }
        let elapsed = (ContinuousClock.now - start).inSeconds
        if !json { FileHandle.standardError.write(Data("\r\u{1B}[K".utf8)) }
        let after = try await redisCounters(conn)
        let cpuAfter = children.map { cpuSeconds(pid: $0.processIdentifier) }.reduce(0, +)
        for p in children { kill(p.processIdentifier, SIGTERM) }
        for p in children { p.waitUntilExit() }

        var errors: [String] = []
        if !finished { errors.append("time limit: not all steps committed") }
        var latency = Histogram<UInt64>(highestTrackableValue: 3_600_000)
        var overhead = Histogram<UInt64>(highestTrackableValue: 3_600_000)
        var orderViolations = 0, duplicates = 0, missing = 0, incompleteStreams = 0
        for chunk in stride(from: 0, to: ids.count, by: 100) {
            let part = Array(ids[chunk..<min(chunk + 100, ids.count)])
            let replies = try await conn.pipeline(
                part.flatMap { id -> [[RedisArgument]] in
                    [["HGET", RedisArgument(keys.session(id)), "state"], ["XRANGE", RedisArgument(keys.events(id)), "-", "+"]]
                })
            for (n, _) in part.enumerated() {
                let state = (try? JSONValue(parsing: replies[2 * n].bytes ?? [])) ?? .null
                let applied = (state["inputs"]?.arrayValue ?? []).compactMap { $0["n"]?.intValue }
                if applied.count > steps || Set(applied).count != applied.count { duplicates += 1 }
                if Set(applied).count < steps { missing += 1 }
                if applied != applied.sorted() { orderViolations += 1 }
                let events = (replies[2 * n + 1].array ?? []).compactMap(StepEvent.init(entry:))
                let ends = events.filter(\.isStepEnd)
                if ends.map(\.step) != Array(1...steps) { incompleteStreams += 1 }
                for e in ends {
                    guard let submitted = e.fields["submitted"].flatMap({ Int64($0) }) else { continue }
                    let ms = UInt64(max(0, e.time - submitted))
                    _ = latency.record(ms)
                    _ = overhead.record(ms > UInt64(stepMs) ? ms - UInt64(stepMs) : 0)
                }
            }
        }
        if orderViolations > 0 { errors.append("\(orderViolations) sessions out of order") }
        if duplicates > 0 { errors.append("\(duplicates) sessions with duplicate steps") }
        if missing > 0 { errors.append("\(missing) sessions with missing steps") }
        if incompleteStreams > 0 { errors.append("\(incompleteStreams) incomplete event streams") }
        if !external { try await deleteNamespace(keys, conn: conn) }
        return RoundResult(
            workers: count, steps: total, seconds: elapsed, stepsPerSecond: Double(total) / elapsed,
            p50: latency.valueAtPercentile(50), p90: latency.valueAtPercentile(90), p99: latency.valueAtPercentile(99),
            max: latency.max, overheadP50: overhead.valueAtPercentile(50),
            redisCommandsPerSecond: Double(after.commands - before.commands) / elapsed,
            redisCPU: (after.cpu - before.cpu) / elapsed, workersCPU: (cpuAfter - cpuBefore) / elapsed, errors: errors)
    }

    private func waitUntil(timeout: Duration, interval: Duration = .milliseconds(100), _ condition: () async throws -> Bool) async throws -> Bool {
        let deadline = ContinuousClock.now + timeout
        while ContinuousClock.now < deadline {
            if try await condition() { return true }
            try await Task.sleep(for: interval)
        }
        return try await condition()
    }

    private func redisCounters(_ conn: RedisConnection) async throws -> (commands: Int, cpu: Double) {
        let info = try await conn.send(["INFO", "all"]).string ?? ""
        var commands = 0
        var cpu = 0.0
        for line in info.split(whereSeparator: \.isNewline) {
            let kv = line.split(separator: ":", maxSplits: 1)
            guard kv.count == 2 else { continue }
            switch kv[0] {
            case "total_commands_processed": commands = Int(kv[1]) ?? 0
            case "used_cpu_sys", "used_cpu_user": cpu += Double(kv[1]) ?? 0
            default: break
            }
        }
        return (commands, cpu)
    }

    /// utime + stime of a process, from /proc (Linux).
    private func cpuSeconds(pid: Int32) -> Double {
        guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
            let close = stat.lastIndex(of: ")")
        else { return 0 }
        let fields = stat[stat.index(after: close)...].split(separator: " ")
        guard fields.count > 13, let u = Double(fields[11]), let s = Double(fields[12]) else { return 0 }
        return (u + s) / Double(sysconf(Int32(_SC_CLK_TCK)))
    }

    private func deleteNamespace(_ keys: KeySpace, conn: RedisConnection) async throws {
        var cursor = "0"
        var rounds = 0
        repeat {
            let reply = try await conn.send(["SCAN", RedisArgument(cursor), "MATCH", RedisArgument(keys.prefix + "*"), "COUNT", 1000])
            guard let parts = reply.array, parts.count == 2 else { return }
            cursor = parts[0].string ?? "0"
            let found = (parts[1].array ?? []).compactMap(\.bytes).map { RedisArgument(bytes: $0) }
            if !found.isEmpty { _ = try await conn.send(["UNLINK"] + found) }
            rounds += 1
        } while cursor != "0" && rounds < 100_000
    }
}

extension Duration {
    var inSeconds: Double {
        let (s, atto) = components
        return Double(s) + Double(atto) / 1e18
    }
}
