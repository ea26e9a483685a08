import Foundation
import Logging
import ServiceLifecycle
import StepwiseRedis
import Synchronization

/// A worker process's engine: runs up to `concurrency` steps at once, keeps a heartbeat, and
/// recovers the jobs of workers that died.
///
/// Each slot owns one Redis connection (one thread). A slot moves a job from `ready` into this
/// worker's in-flight list (`LMOVE`/`BLMOVE` inside the claim script), runs the agent's step,
/// then commits with one script that also claims the next ready job, so a busy slot spends one
/// round trip per step. Run it inside a `ServiceGroup`: graceful shutdown stops taking jobs,
/// waits up to ``Configuration/grace`` for running steps, and puts unfinished ones back at the
/// front of their session.
public final class Worker: Service, Sendable {
    /// Worker settings.
    public struct Configuration: Sendable {
        /// Unique id of this process in the pool: `[A-Za-z0-9_.-]{1,100}`.
        public var workerID: String
        /// Steps run at once in this process.
        public var concurrency: Int
        /// How long one `BLMOVE` waits on an empty queue before checking for shutdown.
        public var blockTimeout: Duration
        /// Heartbeat key TTL: a worker silent this long is presumed dead.
        public var heartbeatTTL: Duration
        /// How often the reaper looks for dead workers.
        public var reaperInterval: Duration
        /// How long running steps may finish after graceful shutdown starts.
        public var grace: Duration
        /// Approximate cap (`MAXLEN ~`) of each session's event stream.
        public var eventsMaxLength: Int

        public init(
            workerID: String = defaultWorkerID(), concurrency: Int = 8, blockTimeout: Duration = .seconds(1),
            heartbeatTTL: Duration = .seconds(10), reaperInterval: Duration = .seconds(4),
            grace: Duration = .seconds(25), eventsMaxLength: Int = 1000
        ) {
            self.workerID = workerID
            self.concurrency = concurrency
            self.blockTimeout = blockTimeout
            self.heartbeatTTL = heartbeatTTL
            self.reaperInterval = reaperInterval
            self.grace = grace
            self.eventsMaxLength = eventsMaxLength
        }

        /// Checks every value.
        ///
        /// - Throws: ``StepwiseError`` with code ``StepwiseError/Code/invalidConfiguration`` naming the value.
        public func validate() throws(StepwiseError) {
            let idOK =
                (1...100).contains(workerID.utf8.count)
                && workerID.utf8.allSatisfy { b in
                    (b >= 0x30 && b <= 0x39) || (b >= 0x41 && b <= 0x5A) || (b >= 0x61 && b <= 0x7A) || b == 0x5F
                        || b == 0x2D || b == 0x2E
                }
            func bad(_ m: String) -> StepwiseError { StepwiseError(.invalidConfiguration, m) }
            guard idOK else { throw bad("invalid worker id '\(workerID)': use 1-100 characters from A-Z a-z 0-9 _ - .") }
            guard (1...1000).contains(concurrency) else { throw bad("concurrency \(concurrency) is out of range: use 1-1000") }
            guard blockTimeout >= .milliseconds(10), blockTimeout <= .seconds(30) else {
                throw bad("block timeout must be 10 ms to 30 s")
            }
            guard heartbeatTTL >= .seconds(1) else { throw bad("heartbeat TTL must be at least 1 s") }
            guard reaperInterval >= .milliseconds(100) else { throw bad("reaper interval must be at least 100 ms") }
            guard grace >= .zero else { throw bad("grace must not be negative") }
            guard eventsMaxLength >= 10 else { throw bad("events max length must be at least 10") }
        }
    }

    /// `hostname-pid-xxxx`, unique enough for a pool.
    public static func defaultID() -> String { defaultWorkerID() }

    public let configuration: Configuration
    public let redis: RedisConnection.Configuration
    public let keys: KeySpace
    public let agents: AgentRegistry
    public let logger: Logger
    private let state = Mutex(RunState())

    private struct RunState: Sendable {
        var stopping = false
        /// Jobs a slot is working on: the orphan scan leaves these alone.
        var active: Set<String> = []
        /// In-flight entries seen without an owner slot at the last scan.
        var suspects: Set<String> = []
    }

    /// Creates a worker; nothing connects until ``run()``.
    public init(
        configuration: Configuration, redis: RedisConnection.Configuration, keys: KeySpace, agents: AgentRegistry,
        logger: Logger
    ) {
        self.configuration = configuration
        self.redis = redis
        self.keys = keys
        self.agents = agents
        var logger = logger
        logger[metadataKey: LogKeys.workerID] = .string(configuration.workerID)
        self.logger = logger
    }

    private var stopping: Bool { state.withLock { $0.stopping } }

    @inline(never)
    private func connection(_ role: String) -> RedisConnection {
        var config = redis
        config.clientName = "stepwise:\(configuration.workerID):\(role)"
        return RedisConnection(configuration: config, logger: logger)
    }

    private var inflightKey: String { keys.inflight(worker: configuration.workerID) }

    /// Runs until graceful shutdown or cancellation.
    ///
    /// - Throws: ``RedisError`` when Redis cannot be reached at start; later connection errors are
    ///   retried with backoff and never end the worker.
    public func run() async throws {
        try configuration.validate()
        let control = connection("control")
        try await control.connect()
        try await beat(control)
        logger.info("worker started", metadata: [LogKeys.count: .stringConvertible(configuration.concurrency)])

        await withGracefulShutdownHandler {
            await withTaskGroup(of: WorkerTaskKind.self) { group in
                group.addTask {
                    await self.maintenance(control)
                    return .maintenance
                }
                for i in 0..<configuration.concurrency {
                    group.addTask {
                        await self.slot(i)
                        return .slot
                    }
                }
                group.addTask {
                    // Grace deadline: armed when shutdown starts, then cancels unfinished steps.
                    while !self.stopping {
                        do { try await Task.sleep(for: .milliseconds(100)) } catch { return .deadline }
                    }
                    try? await Task.sleep(for: self.configuration.grace)
                    return .deadline
                }
                var slotsLeft = configuration.concurrency
                while let finished = await group.next() {
                    switch finished {
                    case .slot:
                        slotsLeft -= 1
                        if slotsLeft == 0 { group.cancelAll() }
                    case .deadline:
                        if slotsLeft > 0 {
                            logger.info("grace period over, cancelling running steps")
                        }
                        group.cancelAll()
                    case .maintenance:
                        break
                    }
                }
            }
        } onGracefulShutdown: {
            self.state.withLock { $0.stopping = true }
        }
        await deregister(control)
        logger.info("worker stopped")
    }

    // MARK: Slots

    private func slot(_ index: Int) async {
        let conn = connection("slot\(index)")
        var next: Claim?
        var failures = 0
        while !Task.isCancelled {
            do {
                var claim = next
                next = nil
                if claim == nil {
                    if stopping { break }
                    claim = try await fetch(conn)
                }
                guard let claim else { continue }
                next = try await process(claim, on: conn)
                failures = 0
            } catch is CancellationError {
                break
            } catch {
                failures += 1
                if failures == 1 || failures % 20 == 0 {
                    logger.warning("slot redis error, retrying", metadata: [LogKeys.error: "\(error)"])
                }
                let delay = Duration.milliseconds(min(2000, 25 << min(failures, 7)))
                do { try await Task.sleep(for: delay) } catch { break }
            }
        }
        if let next {
            // Claimed by the last commit but never started: give it back at once.
            try? await release(next, on: conn, reason: "shutdown")
        }
        await conn.close()
    }

    /// Claims the next job: non-blocking first, then one `BLMOVE` with a bounded timeout.
    private func fetch(_ conn: RedisConnection) async throws -> Claim? {
        let reply = try await claim(jobID: "", on: conn)
        if !reply.isNull { return Claim(reply) }
        // `BLMOVE ready inflight LEFT RIGHT timeout`: blocks server-side up to `blockTimeout`;
        // the socket timeout is raised by the same amount for this call.
        let popped = try await conn.send(
            [
                "BLMOVE", RedisArgument(keys.ready), RedisArgument(inflightKey), "LEFT", "RIGHT",
                RedisArgument(String(format: "%.3f", Double(configuration.blockTimeout.milliseconds) / 1000)),
            ], blockingFor: configuration.blockTimeout)
        try popped.throwingServerError()
        guard let jid = popped.string, !popped.isNull else { return nil }
        state.withLock { _ = $0.active.insert(jid) }
        defer { state.withLock { _ = $0.active.remove(jid) } }
        return Claim(try await claim(jobID: jid, on: conn))
    }

    /// Runs the claim script for `jobID` (already in our in-flight list), or for the next ready
    /// job when `jobID` is empty.
    private func claim(jobID: String, on conn: RedisConnection) async throws -> RESPValue {
        try await conn.evalScript(
            Scripts.claim, keys: [RedisArgument(keys.ready), RedisArgument(inflightKey)],
            arguments: [
                RedisArgument(keys.prefix), RedisArgument(configuration.workerID), RedisArgument(Dispatcher.nowMillis()),
                RedisArgument(jobID), RedisArgument(configuration.eventsMaxLength),
            ]
        ).throwingServerError()
    }

    /// Runs one claimed step and commits it; returns the next claim when the commit brought one.
    private func process(_ claim: Claim, on conn: RedisConnection) async throws -> Claim? {
        guard case .run(let job) = claim else { return nil }
        state.withLock { _ = $0.active.insert(job.jobID) }
        defer { state.withLock { _ = $0.active.remove(job.jobID) } }
        var log = logger
        log[metadataKey: LogKeys.jobID] = .string(job.jobID)
        log[metadataKey: LogKeys.sessionID] = .string(job.sessionID)
        log[metadataKey: LogKeys.step] = .stringConvertible(job.step)
        log[metadataKey: LogKeys.attempt] = .stringConvertible(job.attempt)

        let outcome: (kind: String, state: String, payload: String)
        do {
            let result = try await runStep(job, logger: log, conn: conn)
            switch result.outcome {
            case .next(let input): outcome = ("continue", result.state.jsonString, input.jsonString)
            case .waitForInput: outcome = ("wait", result.state.jsonString, "")
            case .done(let value): outcome = ("done", result.state.jsonString, value.jsonString)
            case .fail(let reason): outcome = ("fail", result.state.jsonString, JSONValue.string(reason).jsonString)
            }
        } catch is CancellationError {
            try? await release(claim, on: conn, reason: "cancelled")
            throw CancellationError()
        } catch {
            log.info("step failed", metadata: [LogKeys.error: "\(error)"])
            // The state is left as it was; the failure is committed so the session moves on.
            outcome = ("fail", job.state, JSONValue.string("\(error)").jsonString)
        }
        return try await commit(job, outcome: outcome, on: conn, logger: log)
    }

    private func runStep(_ job: Claim.Job, logger: Logger, conn: RedisConnection) async throws -> StepResult {
        guard let agent = agents[job.agent] else {
            throw StepwiseError(.unknownAgent, "this worker has no agent '\(job.agent)'")
        }
        let sessionID = try SessionID(job.sessionID)
        let state = try JSONValue(parsing: job.state, what: "session state")
        let input = try JSONValue(parsing: job.input, what: "step input")
        let options = try JSONValue(parsing: job.options, what: "session options")
        let eventsKey = keys.events(sessionID)
        let maxLength = configuration.eventsMaxLength
        let context = StepContext(
            sessionID: sessionID, jobID: job.jobID, step: job.step, attempt: job.attempt, options: options,
            logger: logger,
            emitter: { message, data in
                let reply = try await conn.send([
                    "XADD", RedisArgument(eventsKey), "MAXLEN", "~", RedisArgument(maxLength), "*",
                    "type", "step.progress", "session", RedisArgument(job.sessionID), "job", RedisArgument(job.jobID),
                    "step", RedisArgument(job.step), "attempt", RedisArgument(job.attempt),
                    "time", RedisArgument(Dispatcher.nowMillis()), "message", RedisArgument(message),
                    "data", RedisArgument(data.jsonString),
                ])
                try reply.throwingServerError()
            })
        return try await agent.step(state: state, input: input, context: context)
    }

    private func commit(
        _ job: Claim.Job, outcome: (kind: String, state: String, payload: String), on conn: RedisConnection,
        logger: Logger
    ) async throws -> Claim? {
        let fetchNext = !stopping && !Task.isCancelled
        let reply = try await conn.evalScript(
            Scripts.commit, keys: [RedisArgument(keys.ready), RedisArgument(inflightKey)],
            arguments: [
                RedisArgument(keys.prefix), RedisArgument(configuration.workerID), RedisArgument(Dispatcher.nowMillis()),
                RedisArgument(configuration.eventsMaxLength), RedisArgument(job.jobID), RedisArgument(job.holder),
                RedisArgument(outcome.kind), RedisArgument(outcome.state), RedisArgument(outcome.payload),
                fetchNext ? "1" : "0",
            ])
        try reply.throwingServerError()
        guard let parts = reply.array, let status = parts.first?.string else {
            throw StepwiseError(.unexpectedReply, "commit script returned \(reply)")
        }
        if status == "stale" {
            logger.warning("commit rejected: this worker no longer holds the session")
        }
        if parts.count > 3 { return Claim(parts[3]) }
        return nil
    }

    private func release(_ claim: Claim, on conn: RedisConnection, reason: String) async throws {
        guard case .run(let job) = claim else { return }
        _ = try await conn.evalScript(
            Scripts.release, keys: [RedisArgument(keys.ready), RedisArgument(inflightKey)],
            arguments: [
                RedisArgument(keys.prefix), RedisArgument(job.jobID), RedisArgument(job.holder),
                RedisArgument(Dispatcher.nowMillis()), RedisArgument(configuration.eventsMaxLength),
                RedisArgument(reason),
            ])
    }

    // MARK: Heartbeat, reaper, orphan scan

    private func beat(_ conn: RedisConnection) async throws {
        let replies = try await conn.pipeline([
            [
                "SET", RedisArgument(keys.heartbeat(worker: configuration.workerID)), "1", "PX",
                RedisArgument(configuration.heartbeatTTL.milliseconds),
            ],
            ["ZADD", RedisArgument(keys.workers), RedisArgument(Dispatcher.nowMillis()), RedisArgument(configuration.workerID)],
        ])
        for r in replies { try r.throwingServerError() }
    }

    private func maintenance(_ conn: RedisConnection) async {
        let beatEvery = configuration.heartbeatTTL / 3
        let tick = min(Duration.milliseconds(500), beatEvery, configuration.reaperInterval)
        var lastBeat = ContinuousClock.now
        var lastReap = ContinuousClock.now
        while !Task.isCancelled {
            do { try await Task.sleep(for: tick) } catch { return }
            do {
                if ContinuousClock.now - lastBeat >= beatEvery {
                    lastBeat = .now
                    try await beat(conn)
                }
                if ContinuousClock.now - lastReap >= configuration.reaperInterval {
                    lastReap = .now
                    try await reapDeadWorkers(conn)
                    try await scanOrphans(conn)
                }
            } catch {
                logger.warning("heartbeat or reaper failed, retrying", metadata: [LogKeys.error: "\(error)"])
            }
        }
    }

    /// Runs the reap script for every registered worker whose heartbeat key is gone.
    func reapDeadWorkers(_ conn: RedisConnection) async throws {
        let members = try await conn.send(["ZRANGE", RedisArgument(keys.workers), 0, -1]).throwingServerError()
        let others = (members.array ?? []).compactMap(\.string).filter { $0 != configuration.workerID }
        guard !others.isEmpty else { return }
        let alive = try await conn.pipeline(others.map { ["EXISTS", RedisArgument(keys.heartbeat(worker: $0))] })
        for (id, exists) in zip(others, alive) where exists.int == 0 {
            let n = try await reap(id, on: conn)
            if n > 0 {
                logger.info(
                    "recovered jobs of a dead worker",
                    metadata: ["stepwise.dead_worker": .string(id), LogKeys.count: .stringConvertible(n)])
            }
        }
    }

    private func reap(_ id: String, on conn: RedisConnection) async throws -> Int {
        let reply = try await conn.evalScript(
            Scripts.reap,
            keys: [
                RedisArgument(keys.ready), RedisArgument(keys.inflight(worker: id)),
                RedisArgument(keys.heartbeat(worker: id)), RedisArgument(keys.workers),
            ],
            arguments: [
                RedisArgument(keys.prefix), RedisArgument(id), RedisArgument(Dispatcher.nowMillis()),
                RedisArgument(configuration.eventsMaxLength),
            ])
        try reply.throwingServerError()
        return reply.int ?? 0
    }

    /// Gives back in-flight entries that no slot of this process works on (for example after a
    /// connection broke between `BLMOVE` and the claim). An entry must be seen unowned on two
    /// scans in a row, so a job just popped is never mistaken for an orphan.
    private func scanOrphans(_ conn: RedisConnection) async throws {
        let listed = try await conn.send(["LRANGE", RedisArgument(inflightKey), 0, -1]).throwingServerError()
        let ids = Set((listed.array ?? []).compactMap(\.string))
        let orphans: [String] = state.withLock { s in
            let unowned = ids.subtracting(s.active)
            let confirmed = unowned.intersection(s.suspects)
            s.suspects = unowned.subtracting(confirmed)
            return Array(confirmed)
        }
        for jid in orphans {
            // No slot holds this job, so the session's current holder token (if any) is stale from
            // this process's point of view: release through it, with the release script's checks.
            guard let sid = jid.split(separator: ":").first, let id = try? SessionID(String(sid)) else {
                _ = try await conn.send(["LREM", RedisArgument(inflightKey), 1, RedisArgument(jid)])
                continue
            }
            let holder = try await conn.send(["HGET", RedisArgument(keys.session(id)), "holder"]).string ?? ""
            _ = try await conn.evalScript(
                Scripts.release, keys: [RedisArgument(keys.ready), RedisArgument(inflightKey)],
                arguments: [
                    RedisArgument(keys.prefix), RedisArgument(jid), RedisArgument(holder),
                    RedisArgument(Dispatcher.nowMillis()), RedisArgument(configuration.eventsMaxLength), "orphan",
                ])
            logger.info("released an orphaned in-flight job", metadata: [LogKeys.jobID: .string(jid)])
        }
    }

    private func deregister(_ conn: RedisConnection) async {
        do {
            _ = try await conn.send(["DEL", RedisArgument(keys.heartbeat(worker: configuration.workerID))])
            _ = try await reap(configuration.workerID, on: conn)
        } catch {
            logger.warning("could not deregister; the reaper will", metadata: [LogKeys.error: "\(error)"])
        }
        await conn.close()
    }
}

/// A claim script reply, decoded.
enum Claim: Sendable {
    struct Job: Sendable {
        var jobID, sessionID, agent, options, state: String
        var version, step, attempt: Int
        var input, holder: String
        var submittedAt: Int64?
    }
    case run(Job)
    case skip(String)

    init?(_ reply: RESPValue) {
        guard let p = reply.array, let kind = p.first?.string else { return nil }
        if kind == "skip" {
            self = .skip(p.count > 1 ? (p[1].string ?? "") : "")
            return
        }
        guard kind == "run", p.count >= 12 else { return nil }
        let s = p.map { $0.string ?? "" }
        self = .run(
            Job(
                jobID: s[1], sessionID: s[2], agent: s[3], options: s[4], state: s[5], version: Int(s[6]) ?? 0,
                step: Int(s[7]) ?? 0, attempt: Int(s[8]) ?? 0, input: s[9], holder: s[10], submittedAt: Int64(s[11])))
    }
}

/// `hostname-pid-xxxx`, unique enough for a pool.
public func defaultWorkerID() -> String {
    let host = ProcessInfo.processInfo.hostName.split(separator: ".").first.map(String.init) ?? "host"
    let safeHost = String(host.unicodeScalars.filter { CharacterSet.alphanumerics.contains($0) || $0 == "-" })
    let suffix = String(UInt16.random(in: .min ... .max), radix: 16)
    return "\(safeHost.isEmpty ? "host" : safeHost)-\(ProcessInfo.processInfo.processIdentifier)-\(suffix)"
}

/// Which child of a worker's task group finished.
private enum WorkerTaskKind: Sendable { case slot, deadline, maintenance }
