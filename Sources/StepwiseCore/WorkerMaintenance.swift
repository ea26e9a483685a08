import CStepwiseCrash
import Foundation
import Logging
import StepwiseRedis
import Synchronization

/// A worker's background duties: heartbeat, cancel watch, reaper, orphan scan, index sweep and
/// retry promoter, plus registration at start and end.
extension Worker {
    /// How long a worker stays registered after its last heartbeat (while its in-flight list is
    /// empty): long after any command it sent before it stopped can have been served.
    var pruneAfter: Duration { max(.seconds(60), configuration.heartbeatTTL * 6) }

    /// Refreshes this worker's heartbeat (allowed while Redis is out of memory). Returns whether
    /// the heartbeat was still alive; when it had expired after this worker registered, the worker
    /// was presumed dead (stopped, starved, cut off) and may have been reaped: it says so and
    /// carries on, registered again; what it held commits as stale.
    @discardableResult
    func beat(_ conn: any StepChannel) async throws -> Bool {
        let status: ScriptCalls.WorkerStatus = state.withLock { $0.stopping ? .stopping : ($0.redisFull ? .oom : .ok) }
        let reply = try await conn.run(scripts.heartbeat(worker: workerID, ttl: configuration.heartbeatTTL, status: status))
        let alive = reply.int == 1
        let wasRegistered = state.withLock { s in
            defer { s.registered = true }
            return s.registered
        }
        if wasRegistered, !alive {
            logger.warning(
                "this worker's heartbeat had expired (it was stopped or starved): other workers may have taken its steps; registered again")
        }
        return alive
    }

    /// Registers again at once after a claim found this worker's heartbeat gone.
    func reRegister() async throws {
        try await beat(steps)
    }

    func maintenance(_ conn: RedisConnection, cancelSeq start: Double?) async {
        let beatEvery = configuration.heartbeatTTL / 3
        let tick = min(Duration.milliseconds(500), beatEvery, configuration.reaperInterval)
        var lastBeat = ContinuousClock.now
        var lastReap = ContinuousClock.now
        var cancelSeq = start
        while !Task.isCancelled {
            do { try await Task.sleep(for: tick) } catch { return }
            slotChanged.yield()
            do {
                if ContinuousClock.now - lastBeat >= beatEvery {
                    lastBeat = .now
                    try await beat(conn)
                }
            } catch {
                logger.warning("heartbeat failed, retrying", metadata: [LogKeys.error: "\(error)"])
            }
            if stepwise_crash_marker_healthy() == 0 {
                // CLIENT KILL or a Redis restart closed it: a crash now would leave no marker.
                do { try await armCrashMarker() } catch {
                    logger.warning("crash marker connection lost, reconnecting", metadata: [LogKeys.error: "\(error)"])
                }
            }
            do {
                cancelSeq = try await watchCancels(conn, after: cancelSeq)
            } catch {
                logger.warning("watching for cancelled sessions failed, retrying", metadata: [LogKeys.error: "\(error)"])
            }
            do {
                if ContinuousClock.now - lastReap >= configuration.reaperInterval {
                    lastReap = .now
                    try await reapDeadWorkers(conn)
                    try await scanOrphans(conn)
                    try await sweep(conn)
                    try await compact(conn)
                }
            } catch {
                noteRedisError(error)
                if !error.isRedisOutOfMemory {
                    logger.warning("reaper failed, retrying", metadata: [LogKeys.error: "\(error)"])
                }
            }
        }
    }

    /// Cancels the running step of every job cancelled since sequence number `after` (the
    /// `cancels` set is ordered by a counter, so no clock matters). The first call only learns
    /// where the sequence is.
    func watchCancels(_ conn: RedisConnection, after: Double?) async throws -> Double? {
        guard let after else {
            let last = try await conn.send(["ZRANGE", RedisArgument(keys.cancels), -1, -1, "WITHSCORES"]).throwingServerError()
            return (last.array ?? []).last?.string.flatMap(Double.init) ?? 0
        }
        let reply = try await conn.send([
            "ZRANGEBYSCORE", RedisArgument(keys.cancels), RedisArgument("(\(Int64(after))"), "+inf", "WITHSCORES",
        ]).throwingServerError()
        let items = reply.array ?? []
        var last = after
        var i = 0
        while i + 1 < items.count {
            if let jid = items[i].string {
                let task: Task<StepResult, any Error>? = state.withLock { s in
                    if s.recentCancels.count >= 10_000 { s.recentCancels.removeAll() }
                    s.recentCancels.insert(jid)
                    guard let t = s.running[jid] else { return nil }
                    s.cancelled.insert(jid)
                    return t
                }
                if let task {
                    task.cancel()
                    logger.info("cancelling a running step: its session was cancelled", metadata: [LogKeys.jobID: .string(jid)])
                }
            }
            last = max(last, items[i + 1].string.flatMap(Double.init) ?? last)
            i += 2
        }
        return last
    }

    /// Moves due retries to `ready`. Asks Redis when the next retry is due (at most every
    /// second, plus a little jitter so the workers of a pool do not call together), and wakes at
    /// once for retries this process scheduled itself; between calls it only checks local state.
    func promoter(_ conn: RedisConnection) async {
        var nextCall = ContinuousClock.now
        while !Task.isCancelled {
            let now = Dispatcher.nowMillis()
            let localDue = state.withLock { $0.retryDue.map { $0 <= now } ?? false }
            if localDue || ContinuousClock.now >= nextCall {
                state.withLock { s in if let due = s.retryDue, due <= now { s.retryDue = nil } }
                var wait = Duration.seconds(1)
                do {
                    let reply = try await conn.run(scripts.promote())
                    if let next = reply.array?.last?.string.flatMap({ Int64($0) }) {
                        wait = .milliseconds(max(5, min(1000, next)))
                    }
                } catch {
                    noteRedisError(error)
                    if !error.isRedisOutOfMemory {
                        logger.warning("promoting retries failed, retrying", metadata: [LogKeys.error: "\(error)"])
                    }
                }
                nextCall = .now + wait + .milliseconds(Int64.random(in: 0...20))
            }
            do { try await Task.sleep(for: .milliseconds(10)) } catch { return }
        }
    }

    /// Index upkeep: drops index entries of expired sessions and frees stale active slots.
    func sweep(_ conn: RedisConnection) async throws {
        let reply = try await conn.run(scripts.sweep(activeLimit: configuration.maxActiveSessions))
        if let n = reply.int, n > 0 {
            logger.debug("swept expired sessions from the indexes", metadata: [LogKeys.count: .stringConvertible(n)])
        }
    }

    /// Trims the event streams of sessions idle for ``Configuration/compactAfter`` (docs/ARCHITECTURE.md,
    /// "Compaction"): up to 500 sessions looked at per call, more calls while a call trims a full batch.
    func compact(_ conn: RedisConnection) async throws {
        guard let idle = configuration.compactAfter else { return }
        for _ in 0..<20 {
            let reply = try await conn.run(scripts.compact(idleMilliseconds: max(1, idle.milliseconds), batch: 500))
            guard let n = reply.int, n > 0 else { return }
            logger.debug("compacted idle sessions' event streams", metadata: [LogKeys.count: .stringConvertible(n)])
            if n < 500 { return }
        }
    }

    /// Warns (or, with ``Configuration/strict``, refuses to start) when Redis can lose jobs.
    func checkRedisConfiguration(_ conn: RedisConnection) async throws {
        let info = try await conn.send(["INFO", "persistence"]).throwingServerError().string ?? ""
        let memory = try await conn.send(["INFO", "memory"]).throwingServerError().string ?? ""
        func field(_ text: String, _ name: String) -> String? {
            text.split(whereSeparator: \.isNewline).first { $0.hasPrefix(name + ":") }.map { String($0.dropFirst(name.count + 1)) }
        }
        var problems: [String] = []
        if let policy = field(memory, "maxmemory_policy"), policy != "noeviction" {
            problems.append("maxmemory-policy is '\(policy)', so Redis may evict jobs and sessions: set it to noeviction")
        }
        if field(info, "aof_enabled") == "0" {
            problems.append("the append-only file is off, so a Redis restart loses accepted steps: set appendonly yes")
        }
        for problem in problems {
            logger.warning("unsafe redis configuration: \(problem)")
        }
        if configuration.strict, !problems.isEmpty {
            throw StepwiseError(
                .unsafeRedisConfiguration,
                "refusing to start (--strict): " + problems.joined(separator: "; ") + " (see deploy/redis.conf)")
        }
    }

    /// Runs the reap script for every registered worker whose heartbeat key is gone. Reaped
    /// workers stay registered for ``pruneAfter``, so their in-flight lists stay watched.
    func reapDeadWorkers(_ conn: RedisConnection) async throws {
        let members = try await conn.send(["ZRANGE", RedisArgument(keys.workers), 0, -1]).throwingServerError()
        let others = (members.array ?? []).compactMap(\.string).filter { $0 != workerID }
        guard !others.isEmpty else { return }
        let alive = try await conn.pipeline(others.map { ["EXISTS", RedisArgument(keys.heartbeat(worker: $0))] })
        for (id, exists) in zip(others, alive) where exists.int == 0 {
            let n = try await reap(id, on: conn, pruneAfter: pruneAfter)
            metrics.reaped(n)
            if n > 0 {
                logger.info(
                    "recovered jobs of a dead worker",
                    metadata: ["stepwise.dead_worker": .string(id), LogKeys.count: .stringConvertible(n)])
            }
        }
    }

    func reap(_ id: String, on conn: RedisConnection, pruneAfter: Duration) async throws -> Int {
        let reply = try await conn.run(
            scripts.reap(
                deadWorker: id, now: Dispatcher.nowMillis(), activeLimit: configuration.maxActiveSessions, pruneAfter: pruneAfter))
        return reply.int ?? 0
    }

    /// Gives back in-flight entries that no slot of this process works on (for example after a
    /// connection broke between `BLMOVE` and the claim). An entry must be seen unowned on two
    /// scans in a row, so a job just popped is never mistaken for an orphan. The release script
    /// acts only when the session is unheld or held by this worker.
    func scanOrphans(_ conn: RedisConnection) async throws {
        let listed = try await conn.send(["LRANGE", RedisArgument(inflightKey), 0, -1]).throwingServerError()
        let ids = Set((listed.array ?? []).compactMap(\.string))
        // An entry must stay unowned for a while (two scans, and at least the heartbeat TTL), so a
        // job whose claim reply a busy process has not handled yet is never taken for an orphan.
        let now = ContinuousClock.now
        let patience = max(configuration.reaperInterval * 2, configuration.heartbeatTTL)
        let orphans: [String] = state.withLock { s in
            let unowned = ids.subtracting(s.active)
            var confirmed: [String] = []
            var still: [String: ContinuousClock.Instant] = [:]
            for jid in unowned {
                let first = s.suspects[jid] ?? now
                if now - first >= patience { confirmed.append(jid) } else { still[jid] = first }
            }
            s.suspects = still
            return confirmed
        }
        for jid in orphans {
            guard jid.split(separator: ":").count == 2 else {
                _ = try await conn.send(["LREM", RedisArgument(inflightKey), 0, RedisArgument(jid)])
                continue
            }
            let released = try await conn.run(
                scripts.release(
                    worker: workerID, jobID: jid, holder: nil, reason: .orphan, now: Dispatcher.nowMillis(),
                    activeLimit: configuration.maxActiveSessions, uncount: false))
            if released.int == 1 {
                logger.info("released an orphaned in-flight job", metadata: [LogKeys.jobID: .string(jid)])
            }
        }
    }

    /// Runs `body`, again and again while Redis refuses it for lack of memory (a worker started
    /// during an out-of-memory window waits for room instead of exiting).
    func whileRedisIsFull(_ body: () async throws -> Void) async throws {
        var waits = 0
        while true {
            do {
                return try await body()
            } catch  where error.isRedisOutOfMemory {
                if waits == 0 { logger.error("redis is out of memory (maxmemory reached, noeviction): waiting for room to start") }
                waits += 1
                try await Task.sleep(for: .milliseconds(min(2000, 50 << min(waits, 6))))
            }
        }
    }

    /// Before registering: a previous process under this worker id that died without
    /// deregistering left its in-flight list (and maybe a crash marker). Recover it now, as any
    /// reaper would, instead of waiting for its heartbeat to expire.
    func recoverPreviousProcess(_ conn: RedisConnection) async throws {
        let listed = try await conn.send(["LLEN", RedisArgument(inflightKey)]).throwingServerError()
        let marker = try await conn.send(["EXISTS", RedisArgument(keys.crashMarker(worker: workerID))]).throwingServerError()
        guard (listed.int ?? 0) > 0 || (marker.int ?? 0) > 0 else { return }
        _ = try await conn.send(["DEL", RedisArgument(keys.heartbeat(worker: workerID))]).throwingServerError()
        let n = try await reap(workerID, on: conn, pruneAfter: pruneAfter)
        logger.info(
            "recovered the in-flight jobs of a previous process with this worker id", metadata: [LogKeys.count: .stringConvertible(n)])
    }

    /// Arms the crash marker: a crash signal (a trap, abort, segfault) makes this process write
    /// `SET <ns>:crash:<worker> <pid>` on a connection kept for that alone, so the reaper can tell
    /// a step that crashes its worker from a worker killed from outside.
    func armCrashMarker() async throws {
        if let old = state.withLock({ $0.crashConnection }) {
            stepwise_crash_marker_disarm()
            await old.close()
        }
        let conn = connection("crash")
        let fd = try await conn.rawDescriptor()
        var command = Data()
        let args = ["SET", keys.crashMarker(worker: workerID), String(getpid()), "PX", "3600000"]
        command.append(Data("*\(args.count)\r\n".utf8))
        for a in args { command.append(Data("$\(a.utf8.count)\r\n\(a)\r\n".utf8)) }
        let armed = command.withUnsafeBytes { raw in
            stepwise_crash_marker_arm(fd, raw.baseAddress?.assumingMemoryBound(to: CChar.self), raw.count)
        }
        if armed != 0 { logger.warning("crash marker not armed: command too long") }
        // The connection stays open for the life of the process; the marker is its only use.
        state.withLock { $0.crashConnection = conn }
    }

    func deregister(_ conn: RedisConnection) async {
        do {
            _ = try await conn.send(["DEL", RedisArgument(keys.heartbeat(worker: workerID)), RedisArgument(keys.report(worker: workerID))])
            _ = try await reap(workerID, on: conn, pruneAfter: .zero)
        } catch {
            logger.warning("could not deregister; the reaper will", metadata: [LogKeys.error: "\(error)"])
        }
        await conn.close()
        if let crash = state.withLock({ $0.crashConnection }) {
            stepwise_crash_marker_disarm()
            await crash.close()
        }
    }
}
