import Foundation
import Logging
import StepwiseAgents
import StepwiseCore
import StepwiseRedis

/// Redis memory of idle sessions, measured at one session count.
struct MemoryResult: Sendable {
    var sessions = 0
    var seconds = 0.0
    /// `used_memory` after − before, in bytes.
    var usedMemoryDelta = 0
    /// `mem_clients_normal` after − before (client buffers, not session data), in bytes.
    var clientsDelta = 0
    /// (usedMemoryDelta − clientsDelta) / sessions.
    var bytesPerSession = 0.0
    /// Average length of the `state` field (the agent's state document), in bytes.
    var stateDocumentBytes = 0.0
    /// Average `MEMORY USAGE` per key kind on a sample (0 when the key does not exist).
    var breakdown: [(name: String, bytes: Double)] = []
    /// `MEMORY USAGE` of the `<ns>:sessions` index ÷ sessions.
    var indexShare = 0.0
    var errors: [String] = []

    var beyondState: Double { bytesPerSession - stateDocumentBytes }
    var idemShare: Double { breakdown.first { $0.name == "idem" }?.bytes ?? 0 }
    /// What `MEMORY USAGE` does not see: the keyspace and expires dictionaries (entries and buckets).
    var unattributed: Double { bytesPerSession - breakdown.map(\.bytes).reduce(0, +) - indexShare }

    var json: JSONValue {
        func n(_ v: Double) -> JSONValue { .double(v.rounded()) }
        var parts: [String: JSONValue] = [:]
        for b in breakdown { parts[b.name] = n(b.bytes) }
        parts["sessionsIndexShare"] = n(indexShare)
        parts["unattributedKeyspace"] = n(unattributed)
        return [
            "sessions": .int(sessions), "seconds": .double((seconds * 1000).rounded() / 1000),
            "usedMemoryDelta": .int(usedMemoryDelta), "clientBuffersDelta": .int(clientsDelta),
            "bytesPerSession": n(bytesPerSession), "stateDocumentBytes": n(stateDocumentBytes),
            "beyondStateBytes": n(beyondState), "beyondStateWithoutIdemBytes": n(beyondState - idemShare),
            "breakdownBytesPerSession": .object(parts), "errors": .array(errors.map { .string($0) }),
        ]
    }
}

extension LoadTestCommand {
    /// The memory mode (`--memory`): for each count, N one-step `counter` sessions through the real path.
    func runMemory(conn: RedisConnection, logger: Logger) async throws -> [MemoryResult] {
        if !json {
            try output(
                "# memory per idle session: \(connection.endpoint) (redis), counter agent, 1 step per session, state ~\(stateSize) B, "
                    + "one idempotency key per session; 2 workers x \(concurrency) slots; "
                    + (compactAfter > 0 ? "streams compacted after \(compactAfter) s idle" : "not compacted"))
            try output(
                "sessions  bytes/session  state-doc  beyond-state  beyond-w/o-idem  session-hash  events  idem  jobs  inbox  index  keyspace-dicts  errors"
            )
        }
        var rows: [MemoryResult] = []
        for count in memoryCounts {
            try Console.checkStdout()
            let r = try await memoryRound(sessions: count, conn: conn)
            rows.append(r)
            if json {
                try output(r.json.jsonString)
            } else {
                func b(_ v: Double) -> String { String(Int(v.rounded())) }
                func p(_ v: some CustomStringConvertible, _ w: Int) -> String { LoadTestReport.pad(v, w) }
                let cols = [
                    p(count, 8), p(b(r.bytesPerSession), 13), p(b(r.stateDocumentBytes), 9), p(b(r.beyondState), 12),
                    p(b(r.beyondState - r.idemShare), 15),
                ]
                let parts = ["session", "events", "idem", "jobs", "inbox"].map { name in r.breakdown.first { $0.name == name }?.bytes ?? 0 }
                let widths = [12, 6, 4, 4, 5]
                let more: [String] = zip(parts, widths).map { p(b($0.0), $0.1) } + [p(b(r.indexShare), 5), p(b(r.unattributed), 14)]
                let errors: String = r.errors.isEmpty ? "0" : r.errors.joined(separator: "; ")
                try output((cols + more + [errors]).joined(separator: "  "))
            }
        }
        return rows
    }

    private func memoryRound(sessions count: Int, conn: RedisConnection) async throws -> MemoryResult {
        let runID = String(UInt32.random(in: .min ... .max), radix: 16).leftPadded(to: 8)
        let keys = try KeySpace(namespace: "\(connection.keys.namespace)-mem-\(runID)")
        let warmKeys = try KeySpace(namespace: "\(connection.keys.namespace)-memw-\(runID)")
        let pool = LoadTestWorkerPool(
            arguments: [
                "--namespace", keys.namespace, "--concurrency", String(concurrency), "--log-level", connection.logLevel ?? "error",
                "--compact-after", String(compactAfter), "--reaper-interval", "1",
            ],
            connectionEnvironment: connection.childEnvironment, idPrefix: "mem-\(runID)")
        for _ in 0..<2 { try pool.start() }
        let store = SessionStore(connection: conn, keys: keys)
        guard
            try await poll(
                timeout: .seconds(30), interval: .milliseconds(100),
                until: { try await store.queueInfo().workers.filter(\.alive).count == 2 })
        else { throw StepwiseError(.invalidConfiguration, "the 2 worker processes did not register within 30 s") }

        // The state document is {"count":1,"inputs":[{"pad":"xxx…"}]}: 31 bytes + the filler.
        let filler = String(repeating: "x", count: max(0, stateSize - 31))
        let dispatcher = Dispatcher(connection: conn, keys: keys, agents: .builtIn, configuration: .init(sessionTTL: .seconds(3600)))
        // Load the submit script before the first reading (the script cache is server-wide).
        let warm = Dispatcher(connection: conn, keys: warmKeys, agents: .builtIn)
        _ = try await warm.submit(Submission(session: try SessionID("warm"), agent: "counter", input: .null))
        try await LoadTestCleanup.deleteNamespace(warmKeys, conn: conn)

        let m0 = try await settledMemory(conn)
        let start = ContinuousClock.now
        let ids = try (0..<count).map { try SessionID("m-\(runID)-\($0)") }
        for chunk in stride(from: 0, to: count, by: 500) {
            let batch = ids[chunk..<min(chunk + 500, count)].map {
                Submission(session: $0, agent: "counter", input: ["pad": .string(filler)], idempotencyKey: "msg-\($0.rawValue)-1")
            }
            _ = try await dispatcher.submit(Array(batch)).receipts()
        }
        var result = MemoryResult()
        result.sessions = count
        let finished = try await poll(timeout: try seconds(timeLimit, flag: "--time-limit"), interval: .milliseconds(100)) {
            (try await conn.send(["HGET", RedisArgument(keys.stats), "committed"]).int ?? 0) >= count
        }
        result.seconds = (ContinuousClock.now - start).inSeconds
        if !finished { result.errors.append("time limit: not every session ran its step") }
        // Breakdown on an evenly spaced sample of at most 500 sessions.
        let sample = stride(from: 0, to: count, by: max(1, count / 500)).map { ids[$0] }
        if compactAfter > 0 {
            // The workers compact idle sessions on their reaper schedule: wait until the sample is done.
            let compacted = try await poll(timeout: .seconds(120) + .seconds(compactAfter), interval: .milliseconds(250)) {
                let lengths = try await conn.pipeline(sample.map { ["XLEN", RedisArgument(keys.events($0))] })
                return lengths.allSatisfy { $0.int == 0 }
            }
            if !compacted { result.errors.append("the workers did not compact every sampled session within the time limit") }
        }
        let m1 = try await settledMemory(conn)
        result.usedMemoryDelta = m1.int("used_memory") - m0.int("used_memory")
        result.clientsDelta = m1.int("mem_clients_normal") - m0.int("mem_clients_normal")
        result.bytesPerSession = Double(result.usedMemoryDelta - result.clientsDelta) / Double(count)

        let kinds: [(String, (SessionID) -> String)] = [
            ("session", keys.session), ("events", keys.events), ("idem", keys.idempotency), ("jobs", keys.jobs), ("inbox", keys.inbox),
        ]
        var commands: [[RedisArgument]] = []
        for id in sample {
            commands.append(["HSTRLEN", RedisArgument(keys.session(id)), "state"])
            for (_, key) in kinds { commands.append(["MEMORY", "USAGE", RedisArgument(key(id)), "SAMPLES", "0"]) }
        }
        let replies = try await conn.pipeline(commands)
        let stride = kinds.count + 1
        var sums = Array(repeating: 0.0, count: stride)
        for (i, r) in replies.enumerated() { sums[i % stride] += Double(r.int ?? 0) }
        let n = Double(sample.count)
        result.stateDocumentBytes = sums[0] / n
        result.breakdown = kinds.enumerated().map { (k, kind) in (kind.0, sums[k + 1] / n) }
        let index = try await conn.send(["MEMORY", "USAGE", RedisArgument(keys.sessions), "SAMPLES", "0"]).int ?? 0
        result.indexShare = Double(index) / Double(count)

        pool.collectUnexpectedExits()
        result.errors += pool.unexpectedExits
        await pool.stopAll()
        if result.errors.isEmpty { pool.removeLogs() } else { result.errors.append("worker logs in \(pool.logDirectory)") }
        try await LoadTestCleanup.deleteNamespace(keys, conn: conn)
        return result
    }

    /// `INFO memory` once `used_memory` has stopped moving (two readings 300 ms apart within 1 KiB; at most 10 s).
    private func settledMemory(_ conn: RedisConnection) async throws -> RedisInfo {
        var last = try await RedisInfo.read(conn, section: "memory")
        _ = try await poll(timeout: .seconds(10), interval: .milliseconds(300)) {
            let now = try await RedisInfo.read(conn, section: "memory")
            defer { last = now }
            return abs(now.int("used_memory") - last.int("used_memory")) < 1024
        }
        return last
    }
}
