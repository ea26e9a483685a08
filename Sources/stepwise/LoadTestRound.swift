import Foundation
import Histogram
import StepwiseAgents
import StepwiseCore
import StepwiseRedis
import StepwiseTesting

/// One round of the load test: one worker count, start to finish.
struct LoadTestRound {
    let params: LoadTestParameters
    let connection: ConnectionOptions
    /// The keyring of `--keyring-file` (or the environment): sessions are encrypted when set.
    var sealer: (any SessionSealer)? { connection.makeSealer() }
    let conn: RedisConnection
    let json: Bool
    /// The redis-server `--start-redis` started (for `--chaos redis-restart`), if any.
    var redisServer: RedisServerProcess? = nil
    /// Set on SIGINT/SIGTERM: the round stops waiting, undoes its faults and stops its workers.
    var interrupt: InterruptFlag? = nil

    func run(workers count: Int) async throws -> RoundResult {
        let runID = String(UInt32.random(in: .min ... .max), radix: 16).leftPadded(to: 8)
        let keys = params.external ? connection.keys : try KeySpace(namespace: "\(connection.keys.namespace)-lt-\(runID)")
        // A per-run prefix, so that a namespace already in use (--external) never mixes up sessions.
        let ids = try (0..<params.sessions).map { try SessionID("lt-\(runID)-\($0)") }

        var pool: LoadTestWorkerPool?
        if !params.external {
            var args = [
                "--namespace", keys.namespace, "--concurrency", String(params.concurrency), "--log-level", connection.logLevel ?? "error",
                "--events-max-length", String(params.eventsMaxLength), "--state-cache-mb", String(params.stateCacheMb),
            ]
            if params.stateDeltas { args.append("--state-deltas") }
            if let ttl = params.heartbeatTTL { args += ["--heartbeat-ttl", String(ttl)] }
            if let interval = params.reaperInterval { args += ["--reaper-interval", String(interval)] }
            let p = LoadTestWorkerPool(arguments: args, connectionEnvironment: connection.childEnvironment, idPrefix: "lt-\(runID)")
            for _ in 0..<count { try p.start() }
            pool = p
            let store = SessionStore(connection: conn, keys: keys)
            let up = try await poll(timeout: .seconds(30), interval: .milliseconds(100)) {
                try await store.queueInfo().workers.filter(\.alive).count == count
            }
            guard up else { throw StepwiseError(.invalidConfiguration, "the \(count) worker processes did not register within 30 s") }
        }

        let filler = params.inputBytes > 0 ? String(repeating: "x", count: params.inputBytes) : nil
        let dispatcher = Dispatcher(
            connection: conn, keys: keys, agents: .builtIn, configuration: .init(sessionTTL: .seconds(3600)), sealer: sealer)
        var counterSettings: [String: JSONValue] = [:]
        if params.stepMs > 0 { counterSettings["ms"] = .int(params.stepMs) }
        if params.stateBytes > 0 { counterSettings["pad"] = .int(params.stateBytes) }
        let counterOptions: JSONValue? = params.agent == .counter && !counterSettings.isEmpty ? .object(counterSettings) : nil
        let sessions = params.sessions
        let total = sessions * params.steps
        func submission(_ i: Int) -> Submission {
            let step = i / sessions
            var input: [String: JSONValue] = ["n": .int(step)]
            if params.agent == .sleep { input["ms"] = .int(params.stepMs) }
            if let filler { input["pad"] = .string(filler) }
            // Under chaos a batch may fail half-way (OOM, a restart, a lost reply) and is sent
            // again: the idempotency key makes the second send enqueue nothing twice.
            return Submission(
                session: ids[i % sessions], agent: params.agent.rawValue, input: .object(input), options: step == 0 ? counterOptions : nil,
                idempotencyKey: params.chaos == nil ? nil : "lt-\(i)")
        }
        // Step-major order: step k of every session before step k+1 of any, so sessions interleave.
        var submitted = 0
        func submit(upTo target: Int) async throws {
            while submitted < target {
                let end = min(target, submitted + 500)
                _ = try await dispatcher.submit((submitted..<end).map(submission)).receipts()
                submitted = end
            }
        }

        let before = try await redisCounters()
        let cpuBefore = pool?.cpuSeconds ?? 0
        let start = ContinuousClock.now
        let wallStart = Int64(Date().timeIntervalSince1970 * 1000)
        if params.rate == 0 { try await submit(upTo: total) }
        var submitEnd: ContinuousClock.Instant? = submitted == total ? .now : nil
        let chaos: ChaosDriver? = params.chaos.flatMap { c in
            pool.map {
                ChaosDriver(
                    parameters: c, pool: $0, conn: conn, server: redisServer, keys: keys, heartbeatTTL: params.heartbeatTTL ?? 10,
                    start: start)
            }
        }
        var done = 0
        var kills = 0
        var lastPrint = start
        var lastKill = start
        var lastCheck = start - .seconds(1)
        var lastCount = start - .seconds(1)
        var pending = Array(ids.indices)
        // Chaos: when the faults stopped and the submits ended, how long the rest may take.
        var settleStart: ContinuousClock.Instant?
        var settleBound: SettleBound?
        var gaveUp = false
        // With --rate, submit in small, frequent batches (about 2 steps each, at least every
        // 20 ms): a burst of dozens of steps at once would measure the burst's queueing, not the
        // orchestration overhead.
        let tick: Duration = params.rate > 0 ? .microseconds(Int64(min(20_000, max(1_000, 2_000_000 / params.rate)))) : .milliseconds(20)
        let finished: Bool
        do {
            finished = try await poll(timeout: params.timeLimit, interval: tick) {
                let now = ContinuousClock.now
                if interrupt?.isSet == true { return true }
                if params.rate > 0, submitted < total {
                    let target = min(total, Int(params.rate * (now - start).inSeconds) + 1)
                    if let chaos {
                        do { try await submit(upTo: target) } catch is RedisError { chaos.countSubmitRetry() } catch is RedisServerError {
                            chaos.countSubmitRetry()
                        }
                    } else {
                        try await submit(upTo: target)
                    }
                    if submitted == total { submitEnd = .now }
                }
                pool?.collectUnexpectedExits()
                if let every = params.killEvery, let pool, now - lastKill >= every {
                    lastKill = now
                    if pool.killRandom() != nil {
                        kills += 1
                        try pool.start()
                    }
                }
                if params.external || chaos != nil {
                    // Count from this run's own sessions, not the namespace's shared counters (and
                    // under chaos not from the stats counter, which a stale commit could inflate).
                    if now - lastCheck >= .milliseconds(250) {
                        lastCheck = now
                        do {
                            if chaos != nil {
                                // Progress counts the committed steps of unfinished sessions too.
                                let left = try await remainingSteps(pending, ids: ids, keys: keys)
                                pending = left.pending
                                done = total - left.total
                            } else {
                                pending = try await unfinished(pending, ids: ids, keys: keys)
                                done = total - pending.count * params.steps
                            }
                        } catch let error where chaos != nil && (error is RedisError || error is RedisServerError) {
                            chaos?.countReadRetry()
                        }
                    }
                } else if now - lastCount >= .milliseconds(20) {
                    lastCount = now
                    done = try await conn.send(["HGET", RedisArgument(keys.stats), "committed"]).int ?? 0
                }
                let allDone = params.external || chaos != nil ? pending.isEmpty : done >= total
                if let chaos {
                    pool?.collectTerminated()
                    let injecting: Bool
                    if let until = params.chaos?.until {
                        injecting = now - start < .milliseconds(Int64(until * 1000))
                    } else {
                        injecting = submitted < total
                    }
                    await chaos.tick(inject: injecting && !allDone)
                    if !injecting, !chaos.windowOpen, submitted == total, settleStart == nil, let submitEnd {
                        let faultEnd = start + .milliseconds(Int64((chaos.summary.lastFaultEnd ?? 0) * 1000))
                        if let left = try? await remainingSteps(pending, ids: ids, keys: keys) {
                            settleStart = max(faultEnd, submitEnd)
                            settleBound = SettleBound(params: params, workers: count, backlog: (left.perSession, left.total))
                        }
                    }
                    if let settleStart, let settleBound, !allDone, now - settleStart > settleBound.giveUpAfter {
                        gaveUp = true
                        return true
                    }
                }
                if !json, now - lastPrint >= .seconds(1) {
                    lastPrint = now
                    let elapsed = (now - start).inSeconds
                    let rate = Double(done) / max(elapsed, 0.001)
                    let eta = rate > 0 ? Double(total - done) / rate : 0
                    var extra = params.killEvery == nil ? "" : ", \(kills) kills"
                    if let chaos { extra += ", \(chaos.summary.totalInjected) faults" }
                    let line = String(format: "\r  %d workers: %d/%d steps, %.0f steps/s, ETA %.0f s", count, done, total, rate, eta)
                    progress(line + extra + "   ")
                }
                return allDone
            }
        } catch {
            await chaos?.undoAll()
            await pool?.stopAll()
            throw error
        }
        let elapsed = (ContinuousClock.now - start).inSeconds
        if !json { progress("\r\u{1B}[K") }
        // Every fault is undone before anything is read or stopped: paused workers continue,
        // maxmemory is restored, Redis runs.
        await chaos?.undoAll()
        if let chaos, settleStart == nil, finished, !gaveUp, interrupt?.isSet != true, let submitEnd {
            // Every session finished while a fault was still open: nothing was left to settle.
            let faultEnd = start + .milliseconds(Int64((chaos.summary.lastFaultEnd ?? 0) * 1000))
            settleStart = max(faultEnd, submitEnd)
            settleBound = SettleBound(params: params, workers: count, backlog: (0, 0))
        }
        let after = try await redisCounters()
        let cpuAfter = pool?.cpuSeconds ?? 0
        pool?.collectUnexpectedExits()
        let interrupted = interrupt?.isSet == true
        var stuck: String?
        if !finished || gaveUp || interrupted {
            // Say where the work stands, before the workers stop and hand their jobs back.
            let q = try await SessionStore(connection: conn, keys: keys).queueInfo()
            let ws = q.workers.map { "\($0.id) inflight \($0.inflight)\($0.alive ? "" : " DEAD")" }.joined(separator: ", ")
            stuck =
                "ready \(q.ready), workers [\(ws)], stats \(q.stats.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: " "))"
        }
        await pool?.stopAll()

        var result = try await check(ids: ids, keys: keys, killedAt: pool?.killedAt ?? [:])
        if !finished || gaveUp || interrupted {
            let why = interrupted ? "interrupted" : gaveUp ? "settle bound (x2 + 5 s) passed" : "time limit"
            result.errors.insert("\(why): \(total - done) of \(total) steps not committed (\(stuck ?? ""))", at: 0)
        }
        result.errors += pool?.unexpectedExits ?? []
        if let chaos {
            var report = try await chaosReport(
                chaos.summary, keys: keys, ids: ids, wallStart: wallStart, settleStart: settleStart.map { ($0 - start).inSeconds },
                bound: settleBound, lastCommitMs: result.lastCommitMs)
            report.stuck = max(report.stuck, gaveUp || !finished || interrupted ? pending.count : 0)
            report.staleAccepted = result.staleAccepted
            report.lost = result.missing
            report.appliedTwice = result.duplicates
            report.reordered = result.orderViolations
            result.errors += report.failures
            result.chaos = report
        }
        if let pool {
            if result.errors.isEmpty {
                pool.removeLogs()
            } else {
                result.errors.append("worker logs in \(pool.logDirectory)")
            }
        }
        if params.external {
            try await deleteSessions(ids, keys: keys)
        } else {
            try await deleteNamespace(keys)
        }
        result.workers = count
        result.steps = total
        result.seconds = elapsed
        result.stepsPerSecond = Double(total) / elapsed
        result.kills = kills
        // After a redis-server restart its counters start again from zero: report no rate then.
        let restarted = (chaos?.summary.redisRestarts ?? 0) > 0
        result.redisCommandsPerSecond = restarted ? 0 : Double(after.commands - before.commands) / elapsed
        result.redisCPU = restarted ? 0 : (after.cpu - before.cpu) / elapsed
        result.bytesPerStep = restarted ? 0 : Double(after.bytes - before.bytes) / Double(max(1, total))
        result.workersCPU = params.external ? nil : (cpuAfter - cpuBefore) / elapsed
        return result
    }

    /// The end-of-round chaos figures: the engine's counters, dead letters, settle time and stuck sessions.
    private func chaosReport(
        _ summary: ChaosSummary, keys: KeySpace, ids: [SessionID], wallStart: Int64, settleStart: Double?, bound: SettleBound?,
        lastCommitMs: [Int64?]
    ) async throws -> ChaosRoundReport {
        var r = ChaosRoundReport(summary: summary)
        let replies = try await conn.pipeline([["HGETALL", RedisArgument(keys.stats)], ["ZCARD", RedisArgument(keys.dead)]])
        let flat = replies[0].array ?? []
        for i in stride(from: 0, to: flat.count - 1, by: 2) {
            if let k = flat[i].string, let v = flat[i + 1].string.flatMap({ Int($0) }) { r.stats[k] = v }
        }
        r.deadLetters = max(replies[1].int ?? 0, r.stats["dead"] ?? 0)
        if r.deadLetters > 0 {
            let dead = try await conn.send(["ZRANGE", RedisArgument(keys.dead), "0", "4"]).array?.compactMap(\.string) ?? []
            let fields = try await conn.pipeline(
                dead.map {
                    ["HMGET", RedisArgument(keys.prefix + "s:{" + $0 + "}"), "dead_reason", "dead_attempts", "dead_error", "blocked"]
                })
            for (sid, f) in zip(dead, fields) {
                let v = (f.array ?? []).map { $0.string ?? "-" }
                guard v.count == 4 else { continue }
                r.samples.append("dead letter \(sid): job \(v[3]) reason \(v[0]), attempts \(v[1]), error \(v[2].prefix(200))")
            }
        }
        r.bound = bound
        r.settleStart = settleStart
        if let settleStart {
            let limit = wallStart + Int64(((settleStart + (bound?.seconds ?? 0)) * 1000).rounded())
            let stuck = lastCommitMs.indices.filter { lastCommitMs[$0] == nil || lastCommitMs[$0]! > limit }
            r.stuck = stuck.count
            let fields = try await conn.pipeline(
                stuck.prefix(5).map { ["HMGET", RedisArgument(keys.session(ids[$0])), "status", "steps", "holder", "blocked"] })
            for (i, f) in zip(stuck.prefix(5), fields) {
                let v = (f.array ?? []).map { $0.string ?? "-" }
                guard v.count == 4 else { continue }
                let when = lastCommitMs[i].map { String(format: "finished at +%.2f s", Double($0 - wallStart) / 1000) } ?? "unfinished"
                r.samples.append("stuck \(ids[i].rawValue): \(when), status \(v[0]), steps \(v[1]), holder '\(v[2])', blocked '\(v[3])'")
            }
            if let last = lastCommitMs.compactMap({ $0 }).max(), !lastCommitMs.contains(where: { $0 == nil }) {
                r.allFinished = Double(last - wallStart) / 1000
                r.settle = max(0, Double(last - wallStart) / 1000 - settleStart)
            }
        } else {
            r.stuck = lastCommitMs.filter { $0 == nil }.count
        }
        return r
    }

    /// The sessions of `pending` that have steps left, the most steps any one has left, and the sum.
    private func remainingSteps(_ pending: [Int], ids: [SessionID], keys: KeySpace) async throws
        -> (pending: [Int], perSession: Int, total: Int)
    {
        var still: [Int] = []
        var most = 0
        var sum = 0
        for chunk in stride(from: 0, to: pending.count, by: 1000) {
            let part = pending[chunk..<min(chunk + 1000, pending.count)]
            let replies = try await conn.pipeline(part.map { ["HGET", RedisArgument(keys.session(ids[$0])), "steps"] })
            for (i, r) in zip(part, replies) {
                let left = max(0, params.steps - (try r.throwingServerError().int ?? 0))
                if left > 0 { still.append(i) }
                most = max(most, left)
                sum += left
            }
        }
        return (still, most, sum)
    }

    /// The indices of `pending` whose session has not yet committed all its steps (pipelined `HGET steps`).
    private func unfinished(_ pending: [Int], ids: [SessionID], keys: KeySpace) async throws -> [Int] {
        var left: [Int] = []
        for chunk in stride(from: 0, to: pending.count, by: 1000) {
            let part = pending[chunk..<min(chunk + 1000, pending.count)]
            let replies = try await conn.pipeline(part.map { ["HGET", RedisArgument(keys.session(ids[$0])), "steps"] })
            for (i, r) in zip(part, replies) where (r.int ?? 0) < params.steps { left.append(i) }
        }
        return left
    }

    /// Reads every session's event stream (and, for `counter`, its ledger) and counts what is wrong.
    private func check(ids: [SessionID], keys: KeySpace, killedAt: [String: Int64]) async throws -> RoundResult {
        let steps = params.steps
        let stepMs = UInt64(params.stepMs)
        let ledger = params.agent == .counter
        let sealer = self.sealer
        var latency = Histogram<UInt64>(highestTrackableValue: 3_600_000)
        var overhead = Histogram<UInt64>(highestTrackableValue: 3_600_000)
        var recovery = Histogram<UInt64>(highestTrackableValue: 3_600_000)
        var inWorker = Histogram<UInt64>(highestTrackableValue: 3_600_000)
        var orderViolations = 0
        var duplicates = 0
        var missing = 0
        var incompleteStreams = 0
        var failedSteps = 0
        var recoveredSteps = 0
        var sessionsHit = 0
        var releasedSteps = 0
        var staleAccepted = 0
        var lastCommitMs: [Int64?] = []
        // counter (with --step-ms) and sleep sleep stepMs in every run: a run cannot end sooner.
        let timedSteps = params.agent == .sleep || (params.agent == .counter && params.stepMs > 0)
        for chunk in stride(from: 0, to: ids.count, by: 100) {
            let part = Array(ids[chunk..<min(chunk + 100, ids.count)])
            let perSession = ledger ? 2 : 1
            let replies = try await conn.pipeline(
                part.flatMap { id -> [[RedisArgument]] in
                    let events: [RedisArgument] = ["XRANGE", RedisArgument(keys.events(id)), "-", "+"]
                    return ledger ? [events, ["HMGET", RedisArgument(keys.session(id)), "state", "dk"]] : [events]
                })
            for n in part.indices {
                let events = (replies[perSession * n].array ?? []).compactMap { StepEvent(entry: $0) }
                let ends = events.filter(\.isStepEnd)
                let seqs = ends.map { jobSeq($0.jobID) }
                let distinct = Set(seqs)
                // Each is a count of sessions: a session that fails a check in its stream and in
                // its ledger counts once. Job numbers come from the pool-wide counter: distinct
                // and rising, not 1...steps.
                var duplicated = distinct.count != seqs.count
                var lost = distinct.count < steps
                var reordered = seqs != seqs.sorted()
                if ends.map(\.step) != Array(1...steps) { incompleteStreams += 1 }
                failedSteps += ends.filter { $0.type == "step.failed" }.count
                if ledger {
                    // An encrypted session's state opens with the keyring (`--keyring-file`).
                    let f = replies[perSession * n + 1].array ?? []
                    let stored = f.first?.string ?? ""
                    let text = try? SealedText.open(
                        stored, as: .state, with: SealedText.cipher(sealer, session: part[n], wrappedKey: f.count > 1 ? f[1].string : nil),
                        session: part[n].rawValue)
                    let state = (try? JSONValue(parsing: text ?? "")) ?? .null
                    let applied = (state["inputs"]?.arrayValue ?? []).compactMap { $0["n"]?.intValue }
                    if applied != Array(0..<steps) {
                        if Set(applied).count != applied.count { duplicated = true }
                        if Set(applied).intersection(0..<steps).count < steps { lost = true }
                        if applied != applied.sorted() { reordered = true }
                    }
                }
                if duplicated { duplicates += 1 }
                if lost { missing += 1 }
                if reordered { orderViolations += 1 }
                // Steps that were in flight on a killed worker: from the kill to their commit.
                var hit: [String: Int64] = [:]
                for e in events where e.type == "step.recovered" {
                    recoveredSteps += 1
                    if let worker = e.fields["worker"], let killed = killedAt[worker] { hit[e.jobID] = min(hit[e.jobID] ?? .max, killed) }
                }
                if !hit.isEmpty { sessionsHit += 1 }
                releasedSteps += events.filter { $0.type == "step.released" }.count
                lastCommitMs.append(ends.first { $0.step == steps }?.time)
                staleAccepted += Self.staleCommits(events, stepMs: timedSteps ? params.stepMs : 0)
                // Claim-to-commit time of the run that committed, minus the simulated step time.
                var startedAt: [String: Int64] = [:]
                for e in events where e.type == "step.started" { startedAt["\(e.jobID)/\(e.attempt)"] = e.time }
                for e in ends {
                    if let started = startedAt["\(e.jobID)/\(e.attempt)"] {
                        let ms = UInt64(max(0, e.time - started))
                        _ = inWorker.record(ms > stepMs ? ms - stepMs : 0)
                    }
                    if let killed = hit[e.jobID] { _ = recovery.record(UInt64(max(0, e.time - killed))) }
                    guard let submitted = e.fields["submitted"].flatMap({ Int64($0) }) else { continue }
                    let ms = UInt64(max(0, e.time - submitted))
                    _ = latency.record(ms)
                    _ = overhead.record(ms > stepMs ? ms - stepMs : 0)
                }
            }
        }
        var errors: [String] = []
        if orderViolations > 0 { errors.append("\(orderViolations) sessions out of order") }
        if duplicates > 0 { errors.append("\(duplicates) sessions with duplicate steps") }
        if missing > 0 { errors.append("\(missing) sessions with missing steps") }
        if incompleteStreams > 0 { errors.append("\(incompleteStreams) incomplete event streams") }
        if failedSteps > 0 { errors.append("\(failedSteps) failed steps") }
        var r = RoundResult()
        r.p50 = latency.valueAtPercentile(50)
        r.p90 = latency.valueAtPercentile(90)
        r.p99 = latency.valueAtPercentile(99)
        r.max = latency.max
        r.overheadP50 = overhead.valueAtPercentile(50)
        r.overheadP99 = overhead.valueAtPercentile(99)
        r.claimToCommitOverheadP50 = inWorker.valueAtPercentile(50)
        r.claimToCommitOverheadP99 = inWorker.valueAtPercentile(99)
        r.orderViolations = orderViolations
        r.duplicates = duplicates
        r.missing = missing
        r.incompleteStreams = incompleteStreams
        r.failedSteps = failedSteps
        r.recoveredSteps = recoveredSteps
        r.releasedSteps = releasedSteps
        r.staleAccepted = staleAccepted
        r.lastCommitMs = lastCommitMs
        r.sessionsHit = sessionsHit
        r.recoveryWaitMaxMs = recovery.totalCount > 0 ? recovery.max : nil
        r.recoveryWaitP50Ms = recovery.totalCount > 0 ? recovery.valueAtPercentile(50) : nil
        r.errors = errors
        return r
    }

    /// Step ends that a run committed after it had lost its step: a step end of a job whose last
    /// event before it was `step.recovered` or `step.released` (no new `step.started` since),
    /// or, for agents that sleep `stepMs` in every run, one that came sooner than `stepMs` after
    /// the `step.started` of its attempt (the run that started then cannot have ended yet, so an
    /// older run committed). Every such commit should have been rejected as stale.
    static func staleCommits(_ events: [StepEvent], stepMs: Int) -> Int {
        var revoked: Set<String> = []
        var startedAt: [String: Int64] = [:]
        var stale = 0
        for e in events {
            switch e.type {
            case "step.started":
                revoked.remove(e.jobID)
                startedAt["\(e.jobID)/\(e.attempt)"] = e.time
            case "step.recovered", "step.released":
                revoked.insert(e.jobID)
            case "step.completed", "step.failed":
                if revoked.contains(e.jobID) {
                    stale += 1
                } else if stepMs > 2, let started = startedAt["\(e.jobID)/\(e.attempt)"], e.time - started < Int64(stepMs - 2) {
                    stale += 1
                }
            default:
                break
            }
        }
        return stale
    }

    private func jobSeq(_ jobID: String) -> Int {
        jobID.lastIndex(of: ":").flatMap { Int(jobID[jobID.index(after: $0)...]) } ?? -1
    }

    private func redisCounters() async throws -> (commands: Int, cpu: Double, bytes: Int) {
        let info = try await RedisInfo.read(conn, section: "all")
        return (
            info.int("total_commands_processed"), info.double("used_cpu_sys") + info.double("used_cpu_user"),
            info.int("total_net_input_bytes") + info.int("total_net_output_bytes")
        )
    }

    /// Deletes only this run's sessions: their five keys and their index entries.
    private func deleteSessions(_ ids: [SessionID], keys: KeySpace) async throws {
        for chunk in stride(from: 0, to: ids.count, by: 200) {
            let part = ids[chunk..<min(chunk + 200, ids.count)]
            let names = part.flatMap { id in [keys.session(id), keys.inbox(id), keys.jobs(id), keys.idempotency(id), keys.events(id)] }
            _ = try await conn.pipeline([
                ["UNLINK"] + names.map { RedisArgument($0) },
                ["ZREM", RedisArgument(keys.sessions)] + part.map { RedisArgument($0.rawValue) },
            ])
        }
    }

    private func deleteNamespace(_ keys: KeySpace) async throws {
        try await LoadTestCleanup.deleteNamespace(keys, conn: conn)
    }
}

enum LoadTestCleanup {
    /// Deletes every key of a namespace the load test created (bounded `SCAN` + `UNLINK`).
    static func deleteNamespace(_ keys: KeySpace, conn: RedisConnection) async throws {
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

/// `INFO` fields, parsed.
struct RedisInfo {
    var fields: [String: String] = [:]

    /// `INFO <section>`: see <https://redis.io/docs/latest/commands/info/>.
    static func read(_ conn: RedisConnection, section: String) async throws -> RedisInfo {
        let text = try await conn.send(["INFO", RedisArgument(section)]).string ?? ""
        var info = RedisInfo()
        for line in text.split(whereSeparator: \.isNewline) {
            let kv = line.split(separator: ":", maxSplits: 1)
            if kv.count == 2 { info.fields[String(kv[0])] = String(kv[1]) }
        }
        return info
    }

    func int(_ key: String) -> Int { fields[key].flatMap { Int($0) } ?? 0 }
    func double(_ key: String) -> Double { fields[key].flatMap { Double($0) } ?? 0 }
}

extension String {
    func leftPadded(to width: Int, with pad: Character = "0") -> String {
        count >= width ? self : String(repeating: pad, count: width - count) + self
    }
}
