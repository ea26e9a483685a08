import Foundation
import Logging
import ServiceLifecycle
import StepwiseRedis
import Synchronization

/// A worker process's engine: runs up to `concurrency` steps at once, keeps a heartbeat, and
/// recovers the jobs of workers that died.
///
/// One fetcher task takes jobs: it claims as many ready jobs as there are free slots in one
/// script call, or waits for one in a bounded `BLMOVE`, and starts a step task for each. A step
/// task runs the agent's step, then commits with one script that also claims the next ready job,
/// so a busy worker spends one round trip per step. Claims, commits, releases and progress
/// events of all steps share one coalescing connection. A worker holds four Redis connections
/// (and four threads of its own) whatever its concurrency: fetch, steps, control, crash marker.
/// Run it inside a `ServiceGroup`: graceful shutdown stops taking jobs, waits up to
/// ``Configuration/grace`` for running steps, and puts unfinished ones back at the front of their
/// session.
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
        /// Failed attempts of a step (thrown errors, crashes blamed on it) before it is dead-lettered,
        /// unless its agent or its submit says otherwise.
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
        /// How long a session must be idle (nothing queued or running) before its event stream is
        /// compacted: trimmed to nothing, keeping its last id, so readers resuming from before it
        /// get an explicit reset with a snapshot. `nil` never compacts.
        public var compactAfter: Duration?
        /// Bytes of large states this worker keeps between a session's steps (as stored: sealed
        /// for an encrypted session); 0 turns the cache off. A state longer than
        /// ``stateCacheThreshold`` is then not sent with a claim when the worker has it at the
        /// session's current version (docs/ARCHITECTURE.md, "State cache").
        public var stateCacheBytes: Int = 64 << 20
        /// States up to this many bytes always travel with their claim (they cost less than a
        /// second round trip on a cache miss).
        public var stateCacheThreshold: Int = 8 << 10
        /// A commit of a large plain state (over ``stateCacheThreshold``) sends only the part
        /// that changed, which the commit script splices into the stored state (``StateDelta``).
        /// It cuts the bytes a step moves to a few KiB, at the cost of Redis's CPU copying the
        /// state inside the script: a gain when Redis is across a network, a loss on one host
        /// (docs/BENCHMARKS.md). Off by default.
        public var stateDeltas = false

        public init(
            workerID: String = defaultWorkerID(), concurrency: Int = 8, blockTimeout: Duration = .seconds(1),
            heartbeatTTL: Duration = .seconds(10), reaperInterval: Duration = .seconds(4),
            grace: Duration = .seconds(25), eventsMaxLength: Int = 1000, maxAttempts: Int = 3,
            retryDelay: Duration = .seconds(1), maxRetryDelay: Duration = .seconds(60), maxActiveSessions: Int = 0,
            maxStateBytes: Int = 4 << 20, strict: Bool = false, compactAfter: Duration? = .seconds(300)
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
            self.compactAfter = compactAfter
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
            // A BLMOVE sent just before the worker stalls is served within the block timeout; the
            // reaper comes at least 2/3 of the TTL later, so a job it moves is never left unwatched.
            guard blockTimeout * 2 <= heartbeatTTL else {
                throw bad("block timeout must be at most half the heartbeat TTL")
            }
            guard reaperInterval >= .milliseconds(100) else { throw bad("reaper interval must be at least 100 ms") }
            guard grace >= .zero else { throw bad("grace must not be negative") }
            guard eventsMaxLength >= 10 else { throw bad("events max length must be at least 10") }
            guard (1...1000).contains(maxAttempts) else { throw bad("max attempts \(maxAttempts) is out of range: use 1-1000") }
            guard retryDelay >= .milliseconds(10), maxRetryDelay >= retryDelay, maxRetryDelay <= .seconds(86_400) else {
                throw bad("retry delay must be at least 10 ms, and max retry delay between it and 1 day")
            }
            guard maxActiveSessions >= 0 else { throw bad("max active sessions must be 0 (no limit) or more") }
            guard maxStateBytes >= 1024 else { throw bad("max state bytes must be at least 1024") }
            if let compactAfter, compactAfter < .milliseconds(1) {
                throw bad("compact-after must be at least 1 ms (or off)")
            }
            guard stateCacheBytes >= 0 else { throw bad("state cache size must be 0 (off) or more") }
            guard stateCacheThreshold >= 0 else { throw bad("state cache threshold must not be negative") }
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
    /// This worker's metrics (no-ops unless a metrics backend is bootstrapped or given).
    public let metrics: WorkerMetrics
    let state = Mutex(RunState())
    /// The connection every step's claim, commit, release and progress scripts share: calls made
    /// while it is busy go out together (``RedisConnection/evalScriptCoalesced(_:keys:arguments:)``),
    /// so a busy worker spends one write and one thread wake-up per batch of steps, not per step.
    let steps: any StepChannel
    /// The typed calls of the protocol's scripts.
    let scripts: ScriptCalls
    /// Large states this worker committed, by session (``Configuration/stateCacheBytes``).
    let stateCache: StateCache
    /// Commits that sent a large state as its changed part (``StateDelta``) and were applied.
    let deltaCommits = Atomic<Int>(0)
    /// Told when a slot may have come free (a step task ended, a solo run ended, shutdown began,
    /// and every maintenance tick as a safety net); the fetcher waits on it when every slot is
    /// busy, instead of polling.
    let slotSignal: AsyncStream<Void>
    let slotChanged: AsyncStream<Void>.Continuation
    /// The keyring that opens encrypted sessions' data keys; `nil`: this worker runs plain
    /// sessions only (an encrypted session's step is dead-lettered as `key unavailable`).
    public let sealer: (any SessionSealer)?

    struct RunState: Sendable {
        var stopping = false
        /// Jobs a slot is working on: the orphan scan leaves these alone.
        var active: Set<String> = []
        /// In-flight entries seen without an owner step, and when they were first seen so.
        var suspects: [String: ContinuousClock.Instant] = [:]
        /// The running agent step of each job this process works on, to cancel it.
        var running: [String: Task<StepResult, any Error>] = [:]
        /// Jobs whose running step was cancelled because their session was cancelled.
        var cancelled: Set<String> = []
        /// Jobs the cancel watch saw cancelled (bounded): a step claimed just before the cancel
        /// and registered just after it is still stopped. Job ids never repeat, so a session
        /// created again under the same id is never mistaken for the cancelled one.
        var recentCancels: Set<String> = []
        /// The earliest retry this process scheduled and has not promoted yet (ms since 1970).
        var retryDue: Int64?
        /// Redis refused a write for lack of memory and no claim or commit has succeeded since.
        var redisFull = false
        /// Whether this worker's heartbeat has been seen alive since it started.
        var registered = false
        /// Steps claimed or running, not counting quarantined steps waiting to run alone.
        var busy = 0
        /// Quarantined steps waiting to run alone, in order.
        var soloQueue: [String] = []
        /// A quarantined step is running alone now.
        var soloRunning = false
        /// The connection the crash signal handler writes its marker to.
        var crashConnection: RedisConnection?
    }

    /// Creates a worker; nothing connects until ``run()``.
    ///
    /// - Parameter metrics: where its metrics go; by default handles made with the bootstrapped
    ///   `MetricsSystem` factory (no-ops when none is).
    public convenience init(
        configuration: Configuration, redis: RedisConnection.Configuration, keys: KeySpace, agents: AgentRegistry,
        logger: Logger, metrics: WorkerMetrics? = nil, sealer: (any SessionSealer)? = nil
    ) {
        self.init(
            configuration: configuration, redis: redis, keys: keys, agents: agents, logger: logger, metrics: metrics,
            sealer: sealer, steps: nil)
    }

    /// - Parameter steps: the channel the step tasks use; nil: a `steps` connection to `redis`.
    init(
        configuration: Configuration, redis: RedisConnection.Configuration, keys: KeySpace, agents: AgentRegistry,
        logger: Logger, metrics: WorkerMetrics?, sealer: (any SessionSealer)?, steps: (any StepChannel)?
    ) {
        let metrics = metrics ?? WorkerMetrics(agents: agents.names)
        self.metrics = metrics
        self.sealer = sealer
        self.configuration = configuration
        self.redis = redis
        self.keys = keys
        self.agents = agents
        var logger = logger
        logger[metadataKey: LogKeys.workerID] = .string(configuration.workerID)
        self.logger = logger
        var stepsConfig = redis
        stepsConfig.clientName = "stepwise:\(configuration.workerID):steps"
        stepsConfig.observer = metrics.redisObserver(role: "steps")
        self.steps = steps ?? RedisConnection(configuration: stepsConfig, logger: logger)
        self.scripts = ScriptCalls(keys: keys, eventsMaxLength: configuration.eventsMaxLength)
        (self.slotSignal, self.slotChanged) = AsyncStream.makeStream(bufferingPolicy: .bufferingNewest(1))
        self.stateCache = StateCache(capacity: configuration.stateCacheBytes)
    }

    var stopping: Bool { state.withLock { $0.stopping } }

    /// Ready to take steps: registered (heartbeat written), not shutting down, and Redis has not
    /// refused a write for lack of memory since the last claim or commit went through. The
    /// metrics server's readiness probe answers this.
    public var isReady: Bool { state.withLock { $0.registered && !$0.stopping && !$0.redisFull } }

    func connection(_ role: String) -> RedisConnection {
        var config = redis
        config.clientName = "stepwise:\(configuration.workerID):\(role)"
        if role != "crash" { config.observer = metrics.redisObserver(role: role) }
        return RedisConnection(configuration: config, logger: logger)
    }

    var inflightKey: String { keys.inflight(worker: configuration.workerID) }
    var workerID: String { configuration.workerID }

    /// Runs until graceful shutdown or cancellation.
    ///
    /// - Throws: ``RedisError`` when Redis cannot be reached at start; later connection errors are
    ///   retried with backoff and never end the worker.
    public func run() async throws {
        try configuration.validate()
        let control = connection("control")
        try await control.connect()
        try await checkRedisConfiguration(control)
        // A previous process under this id that died without deregistering: recover what it held
        // (blaming a step only if it crashed the process) before this one registers.
        try await whileRedisIsFull { try await self.recoverPreviousProcess(control) }
        try await armCrashMarker()
        _ = try await beat(control)
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
                group.addTask {
                    await self.reporter(control)
                    return .maintenance
                }
                group.addTask {
                    await self.fetcher()
                    return .slot
                }
                group.addTask {
                    // Grace deadline: armed when shutdown starts, then cancels unfinished steps.
                    while !self.stopping {
                        do { try await Task.sleep(for: .milliseconds(100)) } catch { return .deadline }
                    }
                    try? await Task.sleep(for: self.configuration.grace)
                    return .deadline
                }
                var stepsDone = false
                while let finished = await group.next() {
                    switch finished {
                    case .slot:
                        // The fetcher ends once shutdown starts and its steps are done.
                        stepsDone = true
                        group.cancelAll()
                    case .deadline:
                        if !stepsDone {
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
            self.slotChanged.yield()
        }
        await deregister(control)
        await steps.close()
        logger.info("worker stopped")
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
        /// Failed attempts so far: errors the step threw, and crashes of its worker blamed on it.
        var failures: Int
        /// The step was in flight with others when its worker crashed: it runs alone next.
        var quarantined: Bool
        /// When this process decoded the claim's reply (the start of the claim-to-commit overhead).
        var claimedAt: ContinuousClock.Instant = .now
        /// The session's wrapped data key; empty for a session stored in plain text.
        var wrappedKey: String = ""
        /// The session's incarnation (`inc`): a session created again under the same id has another.
        var incarnation: String = ""
        /// The claim left the state out (longer than the threshold sent): it comes from the
        /// worker's state cache, or from Redis.
        var stateOmitted = false
    }
    case run(Job)
    case skip(String)
    /// This worker's heartbeat had expired: the job went back to `ready`; register again.
    case unregistered(String)

    init?(_ reply: RESPValue) {
        guard let p = reply.array, let kind = p.first?.string else { return nil }
        let id = p.count > 1 ? (p[1].string ?? "") : ""
        switch kind {
        case "skip":
            self = .skip(id)
            return
        case "unregistered":
            self = .unregistered(id)
            return
        case "run" where p.count >= 15:
            break
        default:
            return nil
        }
        let s = p.map { $0.string ?? "" }
        self = .run(
            Job(
                jobID: s[1], sessionID: s[2], agent: s[3], options: s[4], state: s[5], version: Int(s[6]) ?? 0,
                step: Int(s[7]) ?? 0, attempt: Int(s[8]) ?? 0, input: s[9], holder: s[10], submittedAt: Int64(s[11]),
                maxAttempts: Int(s[12]), failures: Int(s[13]) ?? 0, quarantined: !s[14].isEmpty,
                wrappedKey: s.count > 15 ? s[15] : "", incarnation: s.count > 16 ? s[16] : "",
                stateOmitted: s.count > 17 && s[17] == "1"))
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
