import Foundation
import Logging
import ServiceLifecycle
import StepwiseRedis
import Synchronization

/// A worker process's engine: runs up to `concurrency` steps at once, keeps a heartbeat, and
/// recovers the jobs of workers that died.
///
/// Each slot owns one Redis connection (one thread) for its blocking `BLMOVE` and its progress
/// events; the claim, commit and release scripts of all slots share one coalescing connection.
/// A slot moves a job from `ready` into this worker's in-flight list (`LMOVE`/`BLMOVE` inside the
/// claim script), runs the agent's step, then commits with one script that also claims the next
/// ready job, so a busy slot spends at most one round trip per step. Run it inside a `ServiceGroup`: graceful shutdown stops taking jobs,
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
        /// Deliveries of a step before it is dead-lettered, unless its agent or its submit says otherwise.
        public var maxAttempts: Int
        /// Delay before the first retry; each further retry doubles it (with jitter).
        public var retryDelay: Duration
        /// Upper bound of a retry delay.
        public var maxRetryDelay: Duration
        /// Pool-wide limit on sessions running a step at once; 0 for none. Give every worker of
        /// the pool the same value.
        public var maxActiveSessions: Int
        /// Largest state document (or next input) an agent may return, in bytes of JSON.
        public var maxStateBytes: Int
        /// Refuse to start when Redis can lose jobs (`maxmemory-policy` other than `noeviction`,
        /// or the append-only file off); without it, a warning is logged.
        public var strict: Bool

        public init(
            workerID: String = defaultWorkerID(), concurrency: Int = 8, blockTimeout: Duration = .seconds(1),
            heartbeatTTL: Duration = .seconds(10), reaperInterval: Duration = .seconds(4),
            grace: Duration = .seconds(25), eventsMaxLength: Int = 1000, maxAttempts: Int = 3,
            retryDelay: Duration = .seconds(1), maxRetryDelay: Duration = .seconds(60), maxActiveSessions: Int = 0,
            maxStateBytes: Int = 4 << 20, strict: Bool = false
        ) {
            self.workerID = workerID
            self.concurrency = concurrency
            self.blockTimeout = blockTimeout
            self.heartbeatTTL = heartbeatTTL
            self.reaperInterval = reaperInterval
            self.grace = grace
            self.eventsMaxLength = eventsMaxLength
            self.maxAttempts = maxAttempts
            self.retryDelay = retryDelay
            self.maxRetryDelay = maxRetryDelay
            self.maxActiveSessions = maxActiveSessions
            self.maxStateBytes = maxStateBytes
            self.strict = strict
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
            guard (1...1000).contains(maxAttempts) else { throw bad("max attempts \(maxAttempts) is out of range: use 1-1000") }
            guard retryDelay >= .milliseconds(10), maxRetryDelay >= retryDelay, maxRetryDelay <= .seconds(86_400) else {
                throw bad("retry delay must be at least 10 ms, and max retry delay between it and 1 day")
            }
            guard maxActiveSessions >= 0 else { throw bad("max active sessions must be 0 (no limit) or more") }
            guard maxStateBytes >= 1024 else { throw bad("max state bytes must be at least 1024") }
        }

        /// The delay before retrying after failed attempt `attempt` (1-based): exponential, capped,
        /// with "equal jitter" (half fixed, half random) so retries of many jobs spread out.
        public func retryDelay(afterAttempt attempt: Int) -> Duration {
            let base = Double(retryDelay.milliseconds) * pow(2, Double(max(0, min(attempt - 1, 30))))
            let capped = min(base, Double(maxRetryDelay.milliseconds))
            return .milliseconds(Int64(capped / 2 + Double.random(in: 0...(capped / 2))))
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
    /// The connection every slot's claim, commit and release scripts share: calls made while it
    /// is busy go out together (``RedisConnection/evalScriptCoalesced(_:keys:arguments:)``), so
    /// a busy worker spends one write and one thread wake-up per batch of steps, not per step.
    /// Each slot keeps its own connection for its blocking `BLMOVE` and progress events.
    private let steps: RedisConnection

    private struct RunState: Sendable {
        var stopping = false
        /// Jobs a slot is working on: the orphan scan leaves these alone.
        var active: Set<String> = []
        /// In-flight entries seen without an owner slot at the last scan.
        var suspects: Set<String> = []
        /// The running agent step of each session this process works on, to cancel it.
        var running: [String: Task<StepResult, any Error>] = [:]
        /// Sessions whose running step was cancelled because the session was cancelled.
        var cancelled: Set<String> = []
        /// Sessions the cancel watch saw cancelled (bounded): a step claimed just before the
        /// cancel and registered just after it is still stopped.
        var recentCancels: Set<String> = []
        /// The earliest retry this process scheduled and has not promoted yet (ms since 1970).
        var retryDue: Int64?
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
        var stepsConfig = redis
        stepsConfig.clientName = "stepwise:\(configuration.workerID):steps"
        self.steps = RedisConnection(configuration: stepsConfig, logger: logger)
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
        try await checkRedisConfiguration(control)
        try await beat(control)
        // Learn where the cancel sequence is before any slot runs, so no cancel is missed.
        let cancelSeq = try await watchCancels(control, after: nil)
        logger.info("worker started", metadata: [LogKeys.count: .stringConvertible(configuration.concurrency)])

        await withGracefulShutdownHandler {
            await withTaskGroup(of: WorkerTaskKind.self) { group in
                group.addTask {
                    await self.maintenance(control, cancelSeq: cancelSeq)
                    return .maintenance
                }
                group.addTask {
                    await self.promoter(control)
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
        await steps.close()
        logger.info("worker stopped")
    }

    // MARK: Slots

    private func slot(_ index: Int) async {
        let conn = connection("slot\(index)")
        var next: Claim?
        // Set when the last commit looked for a next job and `ready` was empty: the slot then
        // goes straight to `BLMOVE` instead of asking again (one round trip less per step when
        // the pool is not saturated).
        var readyWasEmpty = false
        var failures = 0
        while !Task.isCancelled {
            do {
                var claim = next
                next = nil
                if claim == nil {
                    if stopping { break }
                    claim = try await fetch(conn, poll: !readyWasEmpty)
                }
                readyWasEmpty = false
                guard let claim else { continue }
                (next, readyWasEmpty) = try await process(claim, on: conn)
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
            try? await release(next, reason: "shutdown")
        }
        await conn.close()
    }

    /// Claims the next job: non-blocking first, then one `BLMOVE` with a bounded timeout.
    private func fetch(_ conn: RedisConnection, poll: Bool) async throws -> Claim? {
        if poll {
            let reply = try await claim(jobID: "")
            if !reply.isNull { return Claim(reply) }
        }
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
        return Claim(try await claim(jobID: jid))
    }

    /// Runs the claim script for `jobID` (already in our in-flight list), or for the next ready
    /// job when `jobID` is empty.
    private func claim(jobID: String) async throws -> RESPValue {
        try await steps.evalScriptCoalesced(
            Scripts.claim, keys: [RedisArgument(keys.ready), RedisArgument(inflightKey)],
            arguments: [
                RedisArgument(keys.prefix), RedisArgument(configuration.workerID), RedisArgument(Dispatcher.nowMillis()),
                RedisArgument(jobID), RedisArgument(configuration.eventsMaxLength),
                RedisArgument(configuration.maxActiveSessions),
            ]
        ).throwingServerError()
    }

    /// What a worker commits for a step.
    struct Outcome {
        /// `continue`, `wait`, `done`, `fail`, `retry` or `dead`.
        var kind: String
        var state: String
        /// The next input, result, failure reason, or error text.
        var payload: String
        var retryDelay: Duration = .zero
        var deadReason: String = ""
        /// Attempts to record on a dead letter, when not this delivery's number.
        var attempts: Int?
    }

    /// Runs one claimed step and commits it; returns the next claim when the commit brought one,
    /// and whether the commit found `ready` empty.
    private func process(_ claim: Claim, on conn: RedisConnection) async throws -> (next: Claim?, readyWasEmpty: Bool) {
        guard case .run(let job) = claim else { return (nil, false) }
        state.withLock { _ = $0.active.insert(job.jobID) }
        defer { state.withLock { _ = $0.active.remove(job.jobID) } }
        var log = logger
        log[metadataKey: LogKeys.jobID] = .string(job.jobID)
        log[metadataKey: LogKeys.sessionID] = .string(job.sessionID)
        log[metadataKey: LogKeys.step] = .stringConvertible(job.step)
        log[metadataKey: LogKeys.attempt] = .stringConvertible(job.attempt)

        let agent = agents[job.agent]
        let maxAttempts = job.maxAttempts ?? agent?.maxAttempts ?? configuration.maxAttempts
        let outcome: Outcome
        if job.attempt > maxAttempts {
            // Delivered more often than allowed without ever finishing: the step kills or hangs
            // its worker. Never run it again; the dead letter records the deliveries that ran.
            outcome = Outcome(
                kind: "dead", state: job.state,
                payload: "delivered \(job.attempt - 1) times without finishing: the worker died or was stopped during each",
                deadReason: "poison", attempts: job.attempt - 1)
        } else {
            outcome = try await run(job, agent: agent, maxAttempts: maxAttempts, claim: claim, conn: conn, logger: log)
        }
        return try await commit(job, outcome: outcome, logger: log)
    }

    /// Runs the agent's step as a child task that a session cancel can stop, and maps what it
    /// did to an outcome.
    private func run(
        _ job: Claim.Job, agent: (any Agent)?, maxAttempts: Int, claim: Claim, conn: RedisConnection, logger: Logger
    ) async throws -> Outcome {
        let prepared: (any Agent, JSONValue, JSONValue, StepContext)
        do {
            prepared = try prepare(job, agent: agent, logger: logger, conn: conn)
        } catch {
            logger.warning("step cannot run, dead-lettered", metadata: [LogKeys.error: "\(error)"])
            return Outcome(kind: "dead", state: job.state, payload: "\(error)", deadReason: "invalid job")
        }
        let (agent, stateDoc, input, context) = prepared
        let task = Task { try await agent.step(state: stateDoc, input: input, context: context) }
        let cancelledAlready = state.withLock { s in
            s.running[job.sessionID] = task
            // A cancel seen by the watcher before this step registered still stops it.
            guard s.recentCancels.contains(job.sessionID) else { return false }
            s.cancelled.insert(job.sessionID)
            return true
        }
        if cancelledAlready { task.cancel() }
        let result = await withTaskCancellationHandler {
            await task.result
        } onCancel: {
            task.cancel()
        }
        let sessionCancelled = state.withLock { s in
            s.running[job.sessionID] = nil
            return s.cancelled.remove(job.sessionID) != nil
        }
        let shuttingDown = Task.isCancelled
        switch result {
        case .success(let r):
            return validated(r, job: job, logger: logger)
        case .failure where shuttingDown && !sessionCancelled:
            // Shutdown: give the step back unfinished; the next delivery does not count it. (An
            // agent that throws CancellationError on its own is an ordinary failure, retried.)
            try? await release(claim, reason: "cancelled")
            throw CancellationError()
        case .failure(let error):
            if sessionCancelled {
                logger.info("running step cancelled with its session")
                return Outcome(kind: "fail", state: job.state, payload: JSONValue.string("cancelled").jsonString)
            }
            if job.attempt >= maxAttempts {
                logger.warning("step failed on its last attempt, dead-lettered", metadata: [LogKeys.error: "\(error)"])
                return Outcome(kind: "dead", state: job.state, payload: "\(error)", deadReason: "attempts exhausted")
            }
            let delay = configuration.retryDelay(afterAttempt: job.attempt)
            logger.info(
                "step failed, will retry",
                metadata: [LogKeys.error: "\(error)", "stepwise.retry_ms": .stringConvertible(delay.milliseconds)])
            return Outcome(kind: "retry", state: job.state, payload: "\(error)", retryDelay: delay)
        }
    }

    /// Checks what an agent returned; an oversized document is a bug in the agent, not a
    /// transient failure, so it is dead-lettered at once.
    private func validated(_ result: StepResult, job: Claim.Job, logger: Logger) -> Outcome {
        let state = result.state.jsonString
        var outcome: Outcome
        switch result.outcome {
        case .next(let input): outcome = Outcome(kind: "continue", state: state, payload: input.jsonString)
        case .waitForInput: outcome = Outcome(kind: "wait", state: state, payload: "")
        case .done(let value): outcome = Outcome(kind: "done", state: state, payload: value.jsonString)
        case .fail(let reason): outcome = Outcome(kind: "fail", state: state, payload: JSONValue.string(reason).jsonString)
        }
        let limit = configuration.maxStateBytes
        if state.utf8.count > limit || outcome.payload.utf8.count > limit {
            let what = state.utf8.count > limit ? "a state document" : "a payload"
            let size = max(state.utf8.count, outcome.payload.utf8.count)
            logger.warning("agent returned an oversized document, dead-lettered")
            outcome = Outcome(
                kind: "dead", state: job.state,
                payload: "agent '\(job.agent)' returned \(what) of \(size) bytes, over the limit of \(limit) bytes (--max-state-bytes)",
                deadReason: "invalid result")
        }
        return outcome
    }

    /// Decodes what a step needs; throws for a job that can never run (unknown agent, corrupt
    /// state document).
    private func prepare(_ job: Claim.Job, agent: (any Agent)?, logger: Logger, conn: RedisConnection) throws -> (
        any Agent, JSONValue, JSONValue, StepContext
    ) {
        guard let agent else {
            throw StepwiseError(
                .unknownAgent, "this worker has no agent '\(job.agent)': known agents are \(agents.names.joined(separator: ", "))")
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
                    "type", "step.progress", "job", RedisArgument(job.jobID),
                    "step", RedisArgument(job.step), "attempt", RedisArgument(job.attempt),
                    "time", RedisArgument(Dispatcher.nowMillis()), "message", RedisArgument(message),
                    "data", RedisArgument(data.jsonString),
                ])
                try reply.throwingServerError()
            })
        return (agent, state, input, context)
    }

    private func commit(_ job: Claim.Job, outcome: Outcome, logger: Logger) async throws -> (next: Claim?, readyWasEmpty: Bool) {
        let fetchNext = !stopping && !Task.isCancelled
        let reply = try await steps.evalScriptCoalesced(
            Scripts.commit, keys: [RedisArgument(keys.ready), RedisArgument(inflightKey)],
            arguments: [
                RedisArgument(keys.prefix), RedisArgument(configuration.workerID), RedisArgument(Dispatcher.nowMillis()),
                RedisArgument(configuration.eventsMaxLength), RedisArgument(job.jobID), RedisArgument(job.holder),
                RedisArgument(outcome.kind), RedisArgument(outcome.state), RedisArgument(outcome.payload),
                fetchNext ? "1" : "0", RedisArgument(configuration.maxActiveSessions),
                RedisArgument(outcome.retryDelay.milliseconds), RedisArgument(outcome.deadReason),
                RedisArgument(outcome.attempts.map(String.init) ?? ""),
            ])
        try reply.throwingServerError()
        guard let parts = reply.array, let status = parts.first?.string else {
            throw StepwiseError(.unexpectedReply, "commit script returned \(reply)")
        }
        switch status {
        case "retry":
            let due = Dispatcher.nowMillis() + outcome.retryDelay.milliseconds
            state.withLock { $0.retryDue = min($0.retryDue ?? due, due) }
        case "stale": logger.warning("commit rejected: this worker no longer holds the session")
        case "dead": logger.warning("step dead-lettered", metadata: ["stepwise.reason": .string(outcome.deadReason)])
        default: break
        }
        if parts.count > 3 { return (Claim(parts[3]), false) }
        return (nil, fetchNext)
    }

    private func release(_ claim: Claim, reason: String) async throws {
        guard case .run(let job) = claim else { return }
        _ = try await steps.evalScriptCoalesced(
            Scripts.release, keys: [RedisArgument(keys.ready), RedisArgument(inflightKey)],
            arguments: [
                RedisArgument(keys.prefix), RedisArgument(job.jobID), RedisArgument(job.holder),
                RedisArgument(Dispatcher.nowMillis()), RedisArgument(configuration.eventsMaxLength),
                RedisArgument(reason), RedisArgument(configuration.maxActiveSessions), "1",
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

    private func maintenance(_ conn: RedisConnection, cancelSeq start: Double?) async {
        let beatEvery = configuration.heartbeatTTL / 3
        let tick = min(Duration.milliseconds(500), beatEvery, configuration.reaperInterval)
        var lastBeat = ContinuousClock.now
        var lastReap = ContinuousClock.now
        var cancelSeq = start
        while !Task.isCancelled {
            do { try await Task.sleep(for: tick) } catch { return }
            do {
                cancelSeq = try await watchCancels(conn, after: cancelSeq)
            } catch {
                logger.warning("watching for cancelled sessions failed, retrying", metadata: [LogKeys.error: "\(error)"])
            }
            do {
                if ContinuousClock.now - lastBeat >= beatEvery {
                    lastBeat = .now
                    try await beat(conn)
                }
                if ContinuousClock.now - lastReap >= configuration.reaperInterval {
                    lastReap = .now
                    try await reapDeadWorkers(conn)
                    try await scanOrphans(conn)
                    try await sweep(conn)
                }
            } catch {
                logger.warning("heartbeat or reaper failed, retrying", metadata: [LogKeys.error: "\(error)"])
            }
        }
    }

    /// Cancels the running step of every session cancelled since sequence number `after` (the
    /// `cancels` set is ordered by a counter, so no clock matters). The first call only learns
    /// where the sequence is.
    private func watchCancels(_ conn: RedisConnection, after: Double?) async throws -> Double? {
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
            if let sid = items[i].string {
                let task: Task<StepResult, any Error>? = state.withLock { s in
                    if s.recentCancels.count >= 10_000 { s.recentCancels.removeAll() }
                    s.recentCancels.insert(sid)
                    guard let t = s.running[sid] else { return nil }
                    s.cancelled.insert(sid)
                    return t
                }
                if let task {
                    task.cancel()
                    logger.info("cancelling a running step: its session was cancelled", metadata: [LogKeys.sessionID: .string(sid)])
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
    private func promoter(_ conn: RedisConnection) async {
        var nextCall = ContinuousClock.now
        while !Task.isCancelled {
            let now = Dispatcher.nowMillis()
            let localDue = state.withLock { $0.retryDue.map { $0 <= now } ?? false }
            if localDue || ContinuousClock.now >= nextCall {
                state.withLock { s in if let due = s.retryDue, due <= now { s.retryDue = nil } }
                var wait = Duration.seconds(1)
                do {
                    let reply = try await conn.evalScript(
                        Scripts.promote, keys: [RedisArgument(keys.delayed), RedisArgument(keys.ready)],
                        arguments: [RedisArgument(keys.prefix), RedisArgument(now)]
                    ).throwingServerError()
                    if let next = reply.array?.last?.string.flatMap({ Int64($0) }) {
                        wait = .milliseconds(max(5, min(1000, next)))
                    }
                } catch {
                    logger.warning("promoting retries failed, retrying", metadata: [LogKeys.error: "\(error)"])
                }
                nextCall = .now + wait + .milliseconds(Int64.random(in: 0...20))
            }
            do { try await Task.sleep(for: .milliseconds(10)) } catch { return }
        }
    }

    /// Index upkeep: drops index entries of expired sessions and frees stale active slots.
    private func sweep(_ conn: RedisConnection) async throws {
        let reply = try await conn.evalScript(
            Scripts.sweep, keys: [],
            arguments: [
                RedisArgument(keys.prefix), RedisArgument(Dispatcher.nowMillis()), RedisArgument(configuration.maxActiveSessions),
            ]
        ).throwingServerError()
        if let n = reply.int, n > 0 {
            logger.debug("swept expired sessions from the indexes", metadata: [LogKeys.count: .stringConvertible(n)])
        }
    }

    /// Warns (or, with ``Configuration/strict``, refuses to start) when Redis can lose jobs.
    private func checkRedisConfiguration(_ conn: RedisConnection) async throws {
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
                RedisArgument(configuration.eventsMaxLength), RedisArgument(configuration.maxActiveSessions),
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
                    RedisArgument(configuration.maxActiveSessions), "0",
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
        /// The submit's override of the attempt limit.
        var maxAttempts: Int?
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
                step: Int(s[7]) ?? 0, attempt: Int(s[8]) ?? 0, input: s[9], holder: s[10], submittedAt: Int64(s[11]),
                maxAttempts: p.count > 12 ? Int(s[12]) : nil))
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
