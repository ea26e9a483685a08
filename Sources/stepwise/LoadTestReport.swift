import Foundation
import StepwiseCore
import StepwiseRedis

#if canImport(Glibc)
    import Glibc
#endif

/// One result row of the load test: one worker count.
struct RoundResult: Sendable {
    var workers = 0
    var steps = 0
    var seconds = 0.0
    var stepsPerSecond = 0.0
    /// steps/s ÷ (workers × the first round's steps/s per worker).
    var scalingEfficiency = 1.0
    /// Submit-to-completed latency (ms): the step-end event's time minus the job's submit time.
    var p50: UInt64 = 0, p90: UInt64 = 0, p99: UInt64 = 0, max: UInt64 = 0
    /// Latency minus the simulated step time (ms).
    var overheadP50: UInt64 = 0, overheadP99: UInt64 = 0
    /// The committing run's `step.started` to its step end, minus the simulated step time (ms):
    /// the part of the overhead spent inside the worker (agent, commit), without queueing.
    var claimToCommitOverheadP50: UInt64 = 0, claimToCommitOverheadP99: UInt64 = 0
    var redisCommandsPerSecond = 0.0
    /// Bytes Redis received and sent (every client: workers, this driver) per step.
    var bytesPerStep = 0.0
    /// Fractions of one core.
    var redisCPU = 0.0
    var workersCPU: Double?
    var kills = 0
    /// `step.recovered` events seen in the run's streams.
    var recoveredSteps = 0
    var sessionsHit = 0
    /// For every step recovered from a killed worker: its commit time minus the kill time (ms).
    var recoveryWaitMaxMs: UInt64?
    var recoveryWaitP50Ms: UInt64?
    var orderViolations = 0, duplicates = 0, missing = 0, incompleteStreams = 0, failedSteps = 0
    /// `step.released` events seen (graceful shutdowns handing steps back).
    var releasedSteps = 0
    /// Step ends committed by a run that had lost its step (see `LoadTestRound.staleCommits`).
    var staleAccepted = 0
    /// Per session (in order): when its last step committed (ms since 1970), `nil` if it did not.
    var lastCommitMs: [Int64?] = []
    /// With --chaos: faults, recoveries and the chaos checks.
    var chaos: ChaosRoundReport?
    var errors: [String] = []

    var json: [String: JSONValue] {
        func n(_ v: Double, _ digits: Double = 1) -> JSONValue { .double((v * digits).rounded() / digits) }
        func u(_ v: UInt64?) -> JSONValue { v.map { .int($0) } ?? .null }
        var o: [String: JSONValue] = [
            "workers": .int(workers), "steps": .int(steps), "seconds": n(seconds, 1000),
            "stepsPerSecond": n(stepsPerSecond), "scalingEfficiency": n(scalingEfficiency, 1000),
            "latencyMs": ["p50": u(p50), "p90": u(p90), "p99": u(p99), "max": u(max)],
            "overheadMs": ["p50": u(overheadP50), "p99": u(overheadP99)],
            "claimToCommitOverheadMs": ["p50": u(claimToCommitOverheadP50), "p99": u(claimToCommitOverheadP99)],
            "redisCommandsPerSecond": n(redisCommandsPerSecond), "redisCPU": n(redisCPU, 1000), "bytesPerStep": n(bytesPerStep),
            "workersCPU": workersCPU.map { n($0, 1000) } ?? .null,
            "kills": .int(kills), "recoveredSteps": .int(recoveredSteps), "sessionsHit": .int(sessionsHit),
            "recoveryWaitMs": ["max": u(recoveryWaitMaxMs), "p50": u(recoveryWaitP50Ms)],
            "checks": [
                "orderViolations": .int(orderViolations), "duplicates": .int(duplicates), "missing": .int(missing),
                "incompleteStreams": .int(incompleteStreams), "failedSteps": .int(failedSteps),
            ],
            "errors": .array(errors.map { .string($0) }),
        ]
        if let chaos {
            o["chaos"] = chaos.json
            o["releasedSteps"] = n(Double(releasedSteps))
        }
        return o
    }
}

/// What the run ran on: recorded in `results.json` next to the figures.
struct MachineInfo: Sendable {
    var cores: Int
    var uname: String
    var hostname: String
    var redisVersion: String
    var loadAverage: String

    static func collect(_ conn: RedisConnection) async throws -> MachineInfo {
        var u = utsname()
        _ = Glibc.uname(&u)
        func field<T>(_ value: T) -> String {
            withUnsafeBytes(of: value) { raw in String(decoding: raw.prefix(while: { $0 != 0 }), as: UTF8.self) }
        }
        let info = try await RedisInfo.read(conn, section: "server")
        let load = (try? String(contentsOfFile: "/proc/loadavg", encoding: .utf8))?.split(separator: " ").prefix(3).joined(separator: " ")
        return MachineInfo(
            cores: ProcessInfo.processInfo.activeProcessorCount,
            uname: "\(field(u.sysname)) \(field(u.release)) \(field(u.machine))", hostname: ProcessInfo.processInfo.hostName,
            redisVersion: info.fields["redis_version"] ?? "?", loadAverage: load ?? "?")
    }

    var json: JSONValue {
        [
            "cores": .int(cores), "uname": .string(uname), "hostname": .string(hostname),
            "redisVersion": .string(redisVersion), "loadAverageAtStart": .string(loadAverage),
        ]
    }
}

enum LoadTestReport {
    static func header(_ p: LoadTestParameters, endpoint: String, machine: MachineInfo) -> String {
        var text = "# \(p.sessions) sessions x \(p.steps) steps, agent \(p.agent.rawValue), step \(p.stepMs) ms, "
        text += "concurrency \(p.concurrency)/worker, "
        text += p.rate > 0 ? "offered \(Int(p.rate)) steps/s" : "all submitted at once"
        if let k = p.killEvery { text += ", kill -9 every \(k.inSeconds) s" }
        text += ", redis \(endpoint) (\(machine.redisVersion)), \(machine.cores) cores, load \(machine.loadAverage)"
        return text
    }

    static func chaosHeader(_ c: ChaosParameters, params: LoadTestParameters) -> String {
        var text =
            "# chaos: \(c.kinds.map(\.rawValue).joined(separator: ",")) every \(c.every) s on average (uniform 0.5-1.5x), seed \(c.seed)"
        text += c.until.map { ", until +\($0) s" } ?? ", until the last step is submitted"
        text +=
            "; workers: heartbeat TTL \(params.heartbeatTTL.map { "\($0)" } ?? "10") s, reaper interval \(params.reaperInterval.map { "\($0)" } ?? "4") s"
        if c.kinds.contains(.redisRestart) {
            text += "; redis-restart = kill -9 of redis-server (appendonly yes, appendfsync always: every acknowledged write is fsynced) "
            text += "and a restart on the same port and dir"
        }
        return text
    }

    /// The chaos part of a round, as `#` lines after its row: faults, recoveries, settle time, checks.
    static func chaosBlock(_ c: ChaosRoundReport) -> String {
        let s = c.summary
        func counts(_ d: [ChaosKind: Int]) -> String {
            d.isEmpty ? "none" : ChaosKind.allCases.compactMap { k in d[k].map { "\(k.rawValue) \($0)" } }.joined(separator: ", ")
        }
        var lines = ["# faults: \(s.totalInjected) injected: \(counts(s.injected)) (skipped, no victim: \(counts(s.skipped)))"]
        lines.append(
            "# recoveries: \(s.workersRestarted) workers restarted, \(s.pausesResumed) paused workers continued, "
                + "\(s.cleanTerminations) clean SIGTERM exits, \(s.connectionsKilled) connections killed, "
                + "\(s.redisRestarts) redis restarts (longest downtime \(s.redisDowntimeMaxMs) ms), "
                + "\(s.oomWindows) OOM windows (\(s.oomConfirmed) confirmed by a refused write), "
                + "\(s.submitRetries) submit retries, \(s.readRetries) read retries")
        let stat = ["committed", "reaped", "stale_commits", "skipped", "dead"].map { "\($0) \(c.stats[$0] ?? 0)" }
        let other = c.stats.keys.filter { !["committed", "reaped", "stale_commits", "skipped", "dead"].contains($0) }.sorted()
        lines.append(
            "# engine stats: " + (stat + other.map { "\($0) \(c.stats[$0] ?? 0)" }).joined(separator: ", ")
                + " (stale_commits are rejected ones)")
        func t(_ v: Double?) -> String { v.map { String(format: "+%.2f s", $0) } ?? "never" }
        var settle = "# settle: faults and submits over at \(t(c.settleStart)), last fault ended at \(t(s.lastFaultEnd)), "
        settle += "all sessions finished at \(t(c.allFinished))"
        if let v = c.settle { settle += String(format: ": settle %.2f s", v) }
        if let b = c.bound { settle += " (bound: \(b.text))" }
        lines.append(settle)
        let failures = c.failures
        lines.append(
            "# checks: lost \(c.lost), applied twice \(c.appliedTwice), reordered \(c.reordered), stuck \(c.stuck), "
                + "stale commits accepted \(c.staleAccepted), dead letters \(c.deadLetters): "
                + (failures.isEmpty && c.lost + c.appliedTwice + c.reordered == 0 ? "OK" : "FAILED"))
        lines += c.samples.map { "# \($0)" }
        lines += s.log.prefix(200).map { "#   \($0)" }
        if s.log.count > 200 { lines.append("#   ... \(s.log.count - 200) more in results.json") }
        return lines.joined(separator: "\n")
    }

    static func tableHeader(kills: Bool) -> String {
        "workers  steps/s  vs-linear  p50ms  p90ms  p99ms  maxms  overhead-p50ms  in-worker-p50ms  redis-cmd/s  redis-cpu%  workers-cpu%"
            + (kills ? "  kills  recovered  recovery-max-ms" : "") + "  errors"
    }

    static func tableRow(_ r: RoundResult, kills: Bool) -> String {
        var cols = [
            pad(r.workers, 7), pad(Int(r.stepsPerSecond.rounded()), 7), pad(String(format: "%.2f", r.scalingEfficiency), 9),
            pad(r.p50, 5), pad(r.p90, 5), pad(r.p99, 5), pad(r.max, 5), pad(r.overheadP50, 14), pad(r.claimToCommitOverheadP50, 15),
            pad(Int(r.redisCommandsPerSecond), 11),
            pad(Int(r.redisCPU * 100), 10), pad(r.workersCPU.map { String(Int($0 * 100)) } ?? "-", 12),
        ]
        if kills {
            cols += [pad(r.kills, 5), pad(r.recoveredSteps, 9), pad(r.recoveryWaitMaxMs.map(String.init) ?? "-", 15)]
        }
        cols.append(r.errors.isEmpty ? "0" : r.errors.joined(separator: "; "))
        return cols.joined(separator: "  ")
    }

    static func pad(_ v: some CustomStringConvertible, _ width: Int) -> String {
        let s = v.description
        return String(repeating: " ", count: Swift.max(0, width - s.count)) + s
    }

    static func isoDate(_ date: Date) -> String {
        let f = ISO8601DateFormatter()
        f.formatOptions = [.withInternetDateTime]
        return f.string(from: date)
    }

    static func chartSubtitle(_ p: LoadTestParameters, machine: MachineInfo, date: Date) -> String {
        var s =
            "\(p.sessions) sessions × \(p.steps) steps, \(p.agent.rawValue) agent, step \(p.stepMs) ms, concurrency \(p.concurrency)/worker"
        if let k = p.killEvery { s += ", kill -9 every \(k.inSeconds) s" }
        return s + " · \(machine.cores) cores, \(machine.uname), redis \(machine.redisVersion) · \(isoDate(date))"
    }

    /// The `results.json` document: parameters, machine, date and every row.
    static func resultsDocument(
        command: LoadTestCommand, machine: MachineInfo, date: Date, rounds: [RoundResult], memory: [MemoryResult]
    ) -> JSONValue {
        var o: [String: JSONValue] = [
            "date": .string(isoDate(date)), "machine": machine.json,
            "command": .string((["stepwise"] + CommandLine.arguments.dropFirst().map(redactedArgument)).joined(separator: " ")),
            "ok": .bool(rounds.allSatisfy { $0.errors.isEmpty } && memory.allSatisfy { $0.errors.isEmpty }),
        ]
        if memory.isEmpty {
            o["parameters"] = .object(LoadTestParameters(command: command).json)
            o["rounds"] = .array(rounds.map { .object($0.json) })
        } else {
            o["parameters"] = ["stateBytes": .int(command.stateSize), "concurrency": .int(command.concurrency)]
            o["memory"] = .array(memory.map(\.json))
        }
        return .object(o)
    }

    /// Hides a password in a `redis://user:password@host` argument.
    private static func redactedArgument(_ arg: String) -> String {
        guard arg.hasPrefix("redis://"), let at = arg.lastIndex(of: "@") else { return arg }
        return "redis://***@" + arg[arg.index(after: at)...]
    }
}
