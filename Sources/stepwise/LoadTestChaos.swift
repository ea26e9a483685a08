import ArgumentParser
import Foundation
import StepwiseCore
import StepwiseRedis
import StepwiseTesting

#if canImport(Glibc)
    import Glibc
#endif

/// A fault `loadtest --chaos` can inject.
enum ChaosKind: String, CaseIterable, Sendable, Comparable {
    /// `kill -9` of a random worker, then a replacement.
    case kill
    /// `SIGSTOP` of a random worker for heartbeat TTL + 1-3 s, then `SIGCONT` (no replacement).
    case pause
    /// `SIGTERM` of a random worker (graceful shutdown), then a replacement.
    case term
    /// `CLIENT KILL ID` of every connection of a random worker.
    case clientKill = "client-kill"
    /// `kill -9` of the redis-server the load test started (`appendfsync always`), then a restart
    /// on the same port and directory, from its append-only file.
    case redisRestart = "redis-restart"
    /// `maxmemory` just below `used_memory` (`noeviction`) for 2-4 s, then the old value.
    case oom

    static func < (a: ChaosKind, b: ChaosKind) -> Bool {
        allCases.firstIndex(of: a)! < allCases.firstIndex(of: b)!
    }

    static var names: String { allCases.map(\.rawValue).joined(separator: ",") }

    /// Parses `kill,pause,...`: every name must be known, at least one; duplicates are ignored.
    static func parse(_ text: String) throws -> [ChaosKind] {
        var kinds: [ChaosKind] = []
        for part in text.split(separator: ",", omittingEmptySubsequences: false) {
            let name = part.trimmingCharacters(in: .whitespaces)
            guard !name.isEmpty else { continue }
            guard let kind = ChaosKind(rawValue: name) else {
                throw ValidationError("--chaos: unknown fault '\(name)': use a comma-separated list of \(names)")
            }
            if !kinds.contains(kind) { kinds.append(kind) }
        }
        guard !kinds.isEmpty else { throw ValidationError("--chaos needs at least one fault: a comma-separated list of \(names)") }
        return kinds.sorted()
    }
}

/// SplitMix64: a small, fast, seedable generator, so that `--seed` reproduces a run's fault
/// sequence (kinds, timing jitter and victims, as far as the run's own timing allows).
struct SeededGenerator: RandomNumberGenerator {
    private var state: UInt64

    init(seed: UInt64) { state = seed }

    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

/// The chaos settings of a round, resolved from the command line.
struct ChaosParameters: Sendable {
    var kinds: [ChaosKind]
    /// Mean seconds between two faults; each gap is uniform in [0.5, 1.5] x this.
    var every: Double
    /// Seconds after the round's start when injection stops; `nil`: when the last step is submitted.
    var until: Double?
    var seed: UInt64

    var json: JSONValue {
        [
            "kinds": .array(kinds.map { .string($0.rawValue) }), "everySeconds": .double(every),
            "untilSeconds": until.map { .double($0) } ?? .null, "seed": .string(String(seed)),
        ]
    }
}

/// What the chaos driver did, and what it saw recover.
struct ChaosSummary: Sendable {
    /// The `--seed` of the run (given or drawn), so that it can be repeated.
    var seed: UInt64 = 0
    /// Faults injected, by kind.
    var injected: [ChaosKind: Int] = [:]
    /// Faults that were due but found no victim (no running, unpaused worker; an OOM window
    /// already open), by kind.
    var skipped: [ChaosKind: Int] = [:]
    /// Replacement workers started after a kill or a term.
    var workersRestarted = 0
    /// Paused workers continued with SIGCONT.
    var pausesResumed = 0
    /// Terminated workers that exited with status 0.
    var cleanTerminations = 0
    /// Worker connections closed by `CLIENT KILL`.
    var connectionsKilled = 0
    /// redis-server restarts completed (the server answered `PING` again), and the longest gap.
    var redisRestarts = 0
    var redisDowntimeMaxMs = 0
    /// OOM windows opened and closed (maxmemory restored); those where a probe write was refused.
    var oomWindows = 0
    var oomConfirmed = 0
    /// Submit batches that failed (OOM, a restart) and were sent again (idempotency keys make it safe).
    var submitRetries = 0
    /// Reads of the load test's own progress that failed during a fault and were retried.
    var readRetries = 0
    /// Seconds after the round's start at which the last fault ended (its undo done).
    var lastFaultEnd: Double?
    /// The fault log: `+1.23s kill lt-…-w1`.
    var log: [String] = []
    /// The driver's own failures (could not restore maxmemory, could not restart Redis): each fails the run.
    var errors: [String] = []

    var totalInjected: Int { injected.values.reduce(0, +) }

    var json: JSONValue {
        func n(_ v: Int) -> JSONValue { .int(v) }
        var inj: [String: JSONValue] = [:]
        for k in ChaosKind.allCases { inj[k.rawValue] = n(injected[k] ?? 0) }
        var skip: [String: JSONValue] = [:]
        for k in ChaosKind.allCases { skip[k.rawValue] = n(skipped[k] ?? 0) }
        return [
            "seed": .string(String(seed)), "injected": .object(inj), "skipped": .object(skip),
            "recoveries": [
                "workersRestarted": n(workersRestarted), "pausesResumed": n(pausesResumed), "cleanTerminations": n(cleanTerminations),
                "connectionsKilled": n(connectionsKilled), "redisRestarts": n(redisRestarts), "redisDowntimeMaxMs": n(redisDowntimeMaxMs),
                "oomWindows": n(oomWindows), "oomConfirmed": n(oomConfirmed), "submitRetries": n(submitRetries),
                "readRetries": n(readRetries),
            ],
            "lastFaultEndSeconds": lastFaultEnd.map { .double(($0 * 1000).rounded() / 1000) } ?? .null,
            "log": .array(log.map { .string($0) }), "errors": .array(errors.map { .string($0) }),
        ]
    }
}

/// Injects random faults into one round: ticked from the round's polling loop, so it needs no
/// locking (like ``LoadTestWorkerPool``, it is deliberately not `Sendable`).
///
/// The kinds are drawn from a shuffled bag (every kind once, in a random order, then a new
/// shuffle), so a run of N x kinds faults injects each kind N times. Windows (a pause, an OOM)
/// close on a later tick; ``undoAll()`` closes every open one at once and restarts Redis if it is
/// down, and the round calls it on every path out of its loop.
final class ChaosDriver {
    let parameters: ChaosParameters
    private var rng: SeededGenerator
    private var bag: [ChaosKind] = []
    private let pool: LoadTestWorkerPool
    private let conn: RedisConnection
    private let server: RedisServerProcess?
    private let keys: KeySpace
    private let heartbeatTTL: Double
    private let start: ContinuousClock.Instant
    private var nextAt: ContinuousClock.Instant
    private var pausedUntil: [String: ContinuousClock.Instant] = [:]
    private var oom: (until: ContinuousClock.Instant, maxmemory: String, policy: String)?
    private(set) var summary = ChaosSummary()

    init(
        parameters: ChaosParameters, pool: LoadTestWorkerPool, conn: RedisConnection, server: RedisServerProcess?, keys: KeySpace,
        heartbeatTTL: Double, start: ContinuousClock.Instant
    ) {
        self.parameters = parameters
        rng = SeededGenerator(seed: parameters.seed)
        self.pool = pool
        self.conn = conn
        self.server = server
        self.keys = keys
        self.heartbeatTTL = heartbeatTTL
        self.start = start
        nextAt = start
        summary.seed = parameters.seed
        nextAt = start + gap()
    }

    /// Whether a pause or an OOM window is open.
    var windowOpen: Bool { !pausedUntil.isEmpty || oom != nil }

    func countSubmitRetry() { summary.submitRetries += 1 }
    func countReadRetry() { summary.readRetries += 1 }

    /// Closes the windows that are due, then injects the next fault if it is due and `inject`.
    func tick(inject: Bool) async {
        await closeWindows(force: false)
        let now = ContinuousClock.now
        guard inject, now >= nextAt else { return }
        nextAt = now + gap()
        if bag.isEmpty { bag = parameters.kinds.shuffled(using: &rng) }
        await injectFault(bag.removeFirst())
    }

    /// Closes every open window now (SIGCONT, maxmemory restored) and restarts Redis if it is down.
    func undoAll() async {
        if let server, !(server.process?.isRunning ?? false) {
            do {
                try await server.restart()
                summary.redisRestarts += 1
                note("redis-server restarted (undo)")
            } catch {
                summary.errors.append("could not restart redis-server: \(error)")
            }
        }
        await closeWindows(force: true)
        if oom != nil {
            // Redis refused or was unreachable: retry for up to 10 s, never leave maxmemory low.
            _ = await poll(timeout: .seconds(10), interval: .milliseconds(200)) {
                await closeWindows(force: true)
                return oom == nil
            }
            if let oom { summary.errors.append("could not restore maxmemory \(oom.maxmemory) within 10 s: restore it by hand") }
        }
        summary.cleanTerminations = pool.cleanTerminations
    }

    // MARK: - Faults

    private func injectFault(_ kind: ChaosKind) async {
        switch kind {
        case .kill:
            guard let id = pool.killRandom(using: &rng) else { return skip(kind) }
            count(kind, id)
            restartWorker()
        case .pause:
            guard let id = pool.pauseRandom(using: &rng) else { return skip(kind) }
            let seconds = heartbeatTTL + Double.random(in: 1...3, using: &rng)
            pausedUntil[id] = .now + .milliseconds(Int64(seconds * 1000))
            count(kind, "\(id) for \(String(format: "%.1f", seconds)) s")
        case .term:
            guard let id = pool.terminateRandom(using: &rng) else { return skip(kind) }
            count(kind, id)
            restartWorker()
        case .clientKill:
            await clientKill()
        case .redisRestart:
            await restartRedis()
        case .oom:
            await openOOM()
        }
    }

    private func restartWorker() {
        do {
            try pool.start()
            summary.workersRestarted += 1
        } catch {
            summary.errors.append("could not start a replacement worker: \(error)")
        }
        faultEnded()
    }

    /// `CLIENT KILL ID` of each connection named `stepwise:<worker>:<role>` of one random
    /// running, unpaused worker that has connections (a new one may not have connected yet).
    private func clientKill() async {
        do {
            let list = try await conn.send(["CLIENT", "LIST", "TYPE", "normal"]).throwingServerError().string ?? ""
            var connections: [String: [String]] = [:]
            for line in list.split(whereSeparator: \.isNewline) {
                var fields: [Substring: Substring] = [:]
                for pair in line.split(separator: " ") {
                    guard let eq = pair.firstIndex(of: "=") else { continue }
                    fields[pair[..<eq]] = pair[pair.index(after: eq)...]
                }
                guard let name = fields["name"], let id = fields["id"] else { continue }
                let parts = name.split(separator: ":")
                if parts.count == 3, parts[0] == "stepwise" { connections[String(parts[1]), default: []].append(String(id)) }
            }
            let candidates = pool.activeIDs.filter { connections[$0] != nil }
            guard !candidates.isEmpty else { return skip(.clientKill) }
            let victim = candidates[Int.random(in: 0..<candidates.count, using: &rng)]
            let ids = connections[victim] ?? []
            var killed = 0
            for id in ids { killed += try await conn.send(["CLIENT", "KILL", "ID", RedisArgument(id)]).throwingServerError().int ?? 0 }
            summary.connectionsKilled += killed
            count(.clientKill, "\(victim) (\(killed) connections)")
            faultEnded()
        } catch {
            summary.errors.append("client-kill failed: \(error)")
        }
    }

    /// kill -9 of the server (appendfsync always: every acknowledged write is on disk), then a
    /// restart on the same port and directory; waits until it answers `PING` again.
    private func restartRedis() async {
        guard let server else { return skip(.redisRestart) }
        let down = ContinuousClock.now
        let pid = server.process?.pid ?? 0
        guard await server.kill9() else {
            summary.errors.append("redis-server did not die within 5 s of kill -9")
            return
        }
        count(.redisRestart, "kill -9 of redis-server pid \(pid)")
        do {
            try await server.restart()
            summary.redisRestarts += 1
            let downtime = Int((ContinuousClock.now - down).inSeconds * 1000)
            summary.redisDowntimeMaxMs = max(summary.redisDowntimeMaxMs, downtime)
            // The restarted server starts without the OOM window's maxmemory: that window is over.
            if oom != nil {
                oom = nil
                summary.oomWindows += 1
                note("the OOM window ended with the restart")
            }
            note("redis-server is back after \(downtime) ms")
        } catch {
            summary.errors.append("could not restart redis-server: \(error)")
        }
        faultEnded()
    }

    /// `maxmemory` just below `used_memory` with `noeviction`, checked with a probe write.
    private func openOOM() async {
        guard oom == nil else { return skip(.oom) }
        do {
            let old = try await conn.pipeline([["CONFIG", "GET", "maxmemory"], ["CONFIG", "GET", "maxmemory-policy"]])
            guard let maxmemory = old[0].array?.last?.string, let policy = old[1].array?.last?.string else {
                summary.errors.append("oom: CONFIG GET returned \(old)")
                return
            }
            let used = try await RedisInfo.read(conn, section: "memory").int("used_memory")
            let limit = max(1024, used - 128 * 1024)
            let seconds = Double.random(in: 2...4, using: &rng)
            // Recorded before the change, so that an error half-way is still undone.
            oom = (.now + .milliseconds(Int64(seconds * 1000)), maxmemory, policy)
            let replies = try await conn.pipeline([
                ["CONFIG", "SET", "maxmemory-policy", "noeviction"], ["CONFIG", "SET", "maxmemory", RedisArgument(limit)],
                ["SET", RedisArgument(keys.prefix + "chaos-probe"), "x"],
            ])
            try replies[0].throwingServerError()
            try replies[1].throwingServerError()
            var refused = false
            if case .error(let m) = replies[2] { refused = m.hasPrefix("OOM") }
            if refused { summary.oomConfirmed += 1 }
            count(
                .oom,
                "maxmemory \(limit) (used \(used)) for \(String(format: "%.1f", seconds)) s\(refused ? "" : ", probe write NOT refused")")
        } catch {
            summary.errors.append("oom: \(error)")
        }
    }

    private func closeWindows(force: Bool) async {
        let now = ContinuousClock.now
        for (id, until) in pausedUntil where force || now >= until {
            pausedUntil[id] = nil
            if pool.resume(id) {
                summary.pausesResumed += 1
                note("SIGCONT \(id)")
            } else {
                note("SIGCONT \(id): it no longer runs")
            }
            faultEnded()
        }
        if let window = oom, force || now >= window.until {
            do {
                let replies = try await conn.pipeline([
                    ["CONFIG", "SET", "maxmemory", RedisArgument(window.maxmemory)],
                    ["CONFIG", "SET", "maxmemory-policy", RedisArgument(window.policy)],
                    ["DEL", RedisArgument(keys.prefix + "chaos-probe")],
                ])
                try replies[0].throwingServerError()
                try replies[1].throwingServerError()
                oom = nil
                summary.oomWindows += 1
                note("maxmemory \(window.maxmemory) restored")
                faultEnded()
            } catch {
                // Retried on the next tick (or by undoAll's bounded retry).
                countReadRetry()
            }
        }
    }

    // MARK: - Bookkeeping

    private func gap() -> Duration {
        .milliseconds(Int64(parameters.every * Double.random(in: 0.5...1.5, using: &rng) * 1000))
    }

    private func count(_ kind: ChaosKind, _ detail: String) {
        summary.injected[kind, default: 0] += 1
        note("\(kind.rawValue) \(detail)")
        faultEnded()
    }

    /// A fault that found no victim goes back to the end of the bag, so that every kind still
    /// comes up once per cycle.
    private func skip(_ kind: ChaosKind) {
        summary.skipped[kind, default: 0] += 1
        bag.append(kind)
        note("\(kind.rawValue) skipped: no victim")
    }

    private func faultEnded() {
        summary.lastFaultEnd = (ContinuousClock.now - start).inSeconds
    }

    private func note(_ text: String) {
        summary.log.append(String(format: "+%.2fs ", (ContinuousClock.now - start).inSeconds) + text)
    }
}

/// How long a chaos round may take to finish after its last fault (and its last submit): the
/// time to notice a dead worker and recover its steps, plus the steps that were still to run.
///
/// `heartbeat TTL + reaper interval + 0.5 s reaper tick + 1 s reconnect backoff
/// + (backlog + 3) x (step time + 50 ms)`, where the backlog is the larger of the most steps any
/// one unfinished session had left (they run one after another) and all steps left divided by
/// the pool's slots, both read when the settle phase began.
struct SettleBound: Sendable {
    var heartbeatTTL: Double
    var reaperInterval: Double
    var slack = 1.5
    var backlogSteps: Int
    var extraSteps = 3
    var stepSeconds: Double

    init(params: LoadTestParameters, workers: Int, backlog: (perSession: Int, total: Int)) {
        heartbeatTTL = params.heartbeatTTL ?? 10
        reaperInterval = params.reaperInterval ?? 4
        let slots = max(1, workers * params.concurrency)
        backlogSteps = max(backlog.perSession, (backlog.total + slots - 1) / slots)
        stepSeconds = Double(params.stepMs + 50) / 1000
    }

    var seconds: Double { heartbeatTTL + reaperInterval + slack + Double(backlogSteps + extraSteps) * stepSeconds }

    /// The round stops waiting at twice the bound plus 5 s, so a stuck round ends long before --time-limit.
    var giveUpAfter: Duration { .milliseconds(Int64((2 * seconds + 5) * 1000)) }

    var text: String {
        String(
            format:
                "heartbeat TTL %g s + reaper interval %g s + %g s (reaper tick, reconnect) + (backlog %d + %d) steps x %.0f ms = %.2f s",
            heartbeatTTL, reaperInterval, slack, backlogSteps, extraSteps, stepSeconds * 1000, seconds)
    }

    var json: JSONValue {
        [
            "seconds": .double((seconds * 1000).rounded() / 1000), "heartbeatTTLSeconds": .double(heartbeatTTL),
            "reaperIntervalSeconds": .double(reaperInterval), "slackSeconds": .double(slack), "backlogSteps": .int(backlogSteps),
            "extraSteps": .int(extraSteps), "stepSeconds": .double(stepSeconds),
        ]
    }
}

/// The chaos part of one round's result: faults, recoveries and the end-of-run checks.
struct ChaosRoundReport: Sendable {
    var summary: ChaosSummary
    /// The namespace's `stats` hash at the end (`reaped`, `stale_commits`, `dead`, `skipped`, `committed`, ...).
    var stats: [String: Int] = [:]
    /// Dead letters left (the larger of `ZCARD dead` and `stats.dead`): the counter agent never
    /// fails, so each one is a bystander wrongly blamed.
    var deadLetters = 0
    /// Sessions with a step missing, applied twice, or applied out of order (the round's ledger and stream checks).
    var lost = 0, appliedTwice = 0, reordered = 0
    /// Sessions not finished within the settle bound (or not at all).
    var stuck = 0
    /// Step ends committed by a run that no longer held its step (see ``RoundResult/staleAccepted``).
    var staleAccepted = 0
    /// Seconds after the round's start when faults and submits were over, and when the last step committed.
    var settleStart: Double?
    var allFinished: Double?
    /// The last commit minus `settleStart`, when every session finished.
    var settle: Double?
    var bound: SettleBound?
    /// Up to 5 dead letters and 5 stuck sessions, described (reason, attempts; status, holder).
    var samples: [String] = []

    init(summary: ChaosSummary) { self.summary = summary }

    /// The failed checks, one line each; empty when the round passed.
    var failures: [String] {
        var f: [String] = []
        if stuck > 0 { f.append("\(stuck) sessions stuck (not finished within the settle bound)") }
        if staleAccepted > 0 { f.append("\(staleAccepted) stale commits accepted") }
        if deadLetters > 0 { f.append("\(deadLetters) dead letters (the counter agent never fails)") }
        if let settle, let bound, settle > bound.seconds {
            f.append(String(format: "settle time %.2f s exceeds the bound %.2f s", settle, bound.seconds))
        }
        if settleStart == nil { f.append("the settle phase never began (faults or submits did not end before the time limit)") }
        f += summary.errors.map { "chaos: \($0)" }
        return f
    }

    var json: JSONValue {
        var stat: [String: JSONValue] = [:]
        for (k, v) in stats { stat[k] = .int(v) }
        func r(_ v: Double?) -> JSONValue { v.map { .double(($0 * 1000).rounded() / 1000) } ?? .null }
        guard case .object(var o) = summary.json else { return summary.json }
        o["stats"] = .object(stat)
        o["samples"] = .array(samples.map { .string($0) })
        o["settle"] = [
            "startSeconds": r(settleStart), "allFinishedSeconds": r(allFinished), "settleSeconds": r(settle),
            "bound": bound?.json ?? .null,
        ]
        o["checks"] = [
            "lost": .int(lost), "appliedTwice": .int(appliedTwice), "reordered": .int(reordered),
            "stuck": .int(stuck), "staleCommitsAccepted": .int(staleAccepted),
            "deadLetters": .int(deadLetters),
        ]
        return .object(o)
    }
}
