import ArgumentParser
import Foundation
import Logging
import ServiceLifecycle
import StepwiseAgents
import StepwiseCore
import StepwiseEncryption
import StepwiseMetrics
import StepwiseRedis
import Synchronization
import UnixSignals

struct WorkerCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "worker",
        abstract: "Run a worker process: take step jobs, run agents, commit state and events.",
        discussion: """
            SIGTERM or SIGINT starts a graceful shutdown: no new jobs are taken, running steps get \
            --grace seconds to finish, unfinished ones go back to the front of their session. A second \
            signal cancels running steps at once (they go back too); a third exits immediately.
            """)

    @OptionGroup var connection: ConnectionOptions

    @OptionGroup(title: "The llm agent and llm=true quizzes") var llm: LLMWorkerOptions

    @Option(help: "Steps run at once in this process (1-1000).")
    var concurrency: Int = 8

    @Option(help: "Worker id, unique in the pool (default: host-pid-random).")
    var workerID: String?

    @Option(help: "Seconds a worker may be silent before it is presumed dead and its jobs recovered.")
    var heartbeatTTL: Double = 10

    @Option(help: "Seconds between looks for dead workers.")
    var reaperInterval: Double = 4

    @Option(help: "Seconds running steps may take to finish after SIGTERM.")
    var grace: Double = 25

    @Option(help: "Approximate maximum number of events kept per session stream.")
    var eventsMaxLength: Int = 1000

    @Option(
        help:
            "Failed attempts of a step (errors, crashes blamed on it) before it is dead-lettered (1-1000), unless its agent or submit says otherwise."
    )
    var maxAttempts: Int = 3

    @Option(help: "Seconds before the first retry of a failed step; doubles each attempt, with jitter.")
    var retryDelay: Double = 1

    @Option(help: "Upper bound of a retry delay, in seconds.")
    var maxRetryDelay: Double = 60

    @Option(help: "Pool-wide limit on sessions running a step at once, 0 for none. Give every worker the same value.")
    var maxActiveSessions: Int = 0

    @Option(help: "Largest state document an agent may return, in bytes; a larger one is dead-lettered.")
    var maxStateBytes: Int = 4 << 20

    @Option(
        help:
            "Seconds a session must be idle (nothing queued or running) before its event stream is removed, keeping its last id (readers resuming from before it get a reset with a snapshot), and up to 8 idempotency keys fold into its hash; 0 never compacts."
    )
    var compactAfter: Double = 300

    @Option(
        help:
            "MiB of large states (over 8 KiB) the worker keeps between a session's steps, so the next claim of a session whose state it committed does not carry the state again; 0 turns the cache off."
    )
    var stateCacheMb: Int = 64

    @Flag(
        help:
            "Commit a large state (over 8 KiB, not encrypted) as the part that changed: a few KiB per step instead of the whole state, for Redis across a network; on one host it costs Redis more CPU than it saves."
    )
    var stateDeltas = false

    @Option(
        help: ArgumentHelp(
            "Serve Prometheus metrics on GET /metrics, and probes on /healthz and /readyz, at this host:port (off by default).",
            valueName: "host:port"))
    var metricsListen: String?

    @Flag(help: "Refuse to start when Redis may lose jobs (maxmemory-policy not noeviction, or append-only file off).")
    var strict = false

    @Flag(
        help:
            "Debugging only: log each step's input, state and result (at info), with --mask-fields masked, and the text of errors steps throw (env STEPWISE_LOG_PAYLOADS=1). Off, logs carry no session data."
    )
    var logPayloads = false

    @Option(
        help: ArgumentHelp(
            "With --log-payloads: comma-separated parts of JSON object keys whose values are logged as \"***\" (default: \(PayloadLogging.defaultMaskedFields.joined(separator: ","))).",
            valueName: "names"))
    var maskFields: String?

    /// `--log-payloads` or `STEPWISE_LOG_PAYLOADS=1`, with `--mask-fields` applied.
    var payloadLogging: PayloadLogging {
        let env = ProcessInfo.processInfo.environment["STEPWISE_LOG_PAYLOADS"]
        let fields = maskFields.map { $0.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) } }
        return PayloadLogging(
            enabled: logPayloads || env == "1" || env == "true", maskedFields: fields ?? PayloadLogging.defaultMaskedFields)
    }

    func validate() throws {
        guard (1...1000).contains(concurrency) else { throw ValidationError("--concurrency must be 1-1000, got \(concurrency)") }
        _ = try seconds(heartbeatTTL, flag: "--heartbeat-ttl", min: 1)
        _ = try seconds(reaperInterval, flag: "--reaper-interval", min: 0.1)
        _ = try seconds(grace, flag: "--grace")
        guard eventsMaxLength >= 10 else { throw ValidationError("--events-max-length must be at least 10") }
        guard (1...1000).contains(maxAttempts) else { throw ValidationError("--max-attempts must be 1-1000, got \(maxAttempts)") }
        _ = try seconds(retryDelay, flag: "--retry-delay", min: 0.01)
        _ = try seconds(maxRetryDelay, flag: "--max-retry-delay", min: retryDelay)
        guard maxRetryDelay <= 86_400 else { throw ValidationError("--max-retry-delay must be at most 86400 seconds") }
        guard maxActiveSessions >= 0 else { throw ValidationError("--max-active-sessions must be 0 (no limit) or more") }
        guard maxStateBytes >= 1024 else { throw ValidationError("--max-state-bytes must be at least 1024") }
        _ = try seconds(compactAfter, flag: "--compact-after")
        guard (0...65_536).contains(stateCacheMb) else {
            throw ValidationError("--state-cache-mb must be 0 (off) to 65536, got \(stateCacheMb)")
        }
        if let metricsListen, MetricsServer.parseAddress(metricsListen) == nil {
            throw ValidationError("--metrics-listen '\(metricsListen)' must be host:port, like 127.0.0.1:9464")
        }
        if let maskFields, maskFields.split(separator: ",").allSatisfy({ $0.trimmingCharacters(in: .whitespaces).isEmpty }) {
            throw ValidationError("--mask-fields must name at least one field, e.g. --mask-fields password,token")
        }
        if let workerID {
            var c = Worker.Configuration(workerID: workerID)
            c.concurrency = concurrency
            do { try c.validate() } catch { throw ValidationError("--worker-id: \(error.message)") }
        }
    }

    /// Connects once and lets the connection (and its thread) go at once.
    private func probeRedis(logger: Logger) async throws {
        let probe = RedisConnection(configuration: connection.redisConfiguration(name: "stepwise:probe"), logger: logger)
        try await reportingFailures { try await refusingBadCredentials { try await probe.connect() } }
        await probe.close()
    }

    /// SIGTERM and SIGINT, trapped by `Stepwise.main()` before the arguments are parsed.
    static let earlySignals = Mutex<UnixSignalsSequence?>(nil)

    func run() async throws {
        // SIGTERM and SIGINT are trapped from here on (from main, see earlySignals), before anything connects: a signal that
        // comes while the worker is still starting stops it gracefully too (exit 0), never by
        // the default action.
        let trapped = Self.earlySignals.withLock { $0 }
        let signals: UnixSignalsSequence
        if let trapped { signals = trapped } else { signals = await UnixSignalsSequence(trapping: .sigterm, .sigint) }
        let control = SignalControl()
        let logger = connection.makeLogger(label: "stepwise.worker", defaultLevel: .info)
        // The first signal starts the graceful shutdown (at once, or as soon as the service group
        // exists). A second one cancels the worker: running steps are cancelled and released to
        // the front of their sessions (an agent that ignores cancellation is covered by the
        // reaper after a third signal exits the process).
        let escalation = Task {
            for await _ in signals {
                let (count, group, run) = control.state.withLock { s in
                    s.signals += 1
                    return (s.signals, s.group, s.run)
                }
                if count == 1 {
                    await group?.triggerGracefulShutdown()
                } else if count == 2 {
                    logger.warning("second signal: stopping now, unfinished steps go back to their sessions")
                    run?.cancel()
                } else {
                    logger.warning("third signal: exiting at once; the reaper will recover in-flight steps")
                    _exit(1)
                }
            }
        }
        defer { escalation.cancel() }
        // The llm agent's endpoint and key (read from the key file or the environment) first: a bad
        // one is a usage error before anything connects.
        let llmConfiguration = try llm.configuration()
        let ttl = try seconds(heartbeatTTL, flag: "--heartbeat-ttl", min: 1)
        var config = Worker.Configuration(
            workerID: workerID ?? Worker.defaultID(), concurrency: concurrency,
            // At most half the heartbeat TTL (see Worker.Configuration.validate()).
            blockTimeout: min(.seconds(1), ttl / 2),
            heartbeatTTL: ttl,
            reaperInterval: try seconds(reaperInterval, flag: "--reaper-interval", min: 0.1),
            grace: try seconds(grace, flag: "--grace"), eventsMaxLength: eventsMaxLength, maxAttempts: maxAttempts,
            retryDelay: try seconds(retryDelay, flag: "--retry-delay", min: 0.01),
            maxRetryDelay: try seconds(maxRetryDelay, flag: "--max-retry-delay", min: retryDelay),
            maxActiveSessions: maxActiveSessions, maxStateBytes: maxStateBytes, strict: strict,
            compactAfter: compactAfter == 0 ? nil : max(.milliseconds(1), try seconds(compactAfter, flag: "--compact-after")))
        config.stateCacheBytes = stateCacheMb << 20
        config.stateDeltas = stateDeltas
        // Fail fast, with one clear line, when Redis is unreachable or refuses these credentials.
        try await probeRedis(logger: logger)
        let payloads = payloadLogging
        if payloads.enabled {
            logger.warning(
                "--log-payloads is on: step inputs, states, results and errors go to the logs",
                metadata: ["stepwise.masked_fields": .string(payloads.maskedFields.joined(separator: ","))])
        }
        let sealer = connection.makeSealer()
        if let sealer {
            logger.info("encryption at rest on", metadata: ["stepwise.active_key": .string(sealer.activeKeyID)])
        }
        let agents = AgentRegistry.known(llm: llmConfiguration).loggingPayloads(payloads)
        var services: [ServiceGroupConfiguration.ServiceConfiguration] = []
        var metrics: WorkerMetrics?
        var export: PrometheusExport?
        if metricsListen != nil {
            let e = PrometheusExport()
            export = e
            metrics = WorkerMetrics(agents: agents.names, factory: e.factory)
        }
        let worker = Worker(
            configuration: config, redis: connection.redisConfiguration(name: "stepwise"), keys: connection.keys,
            agents: agents, logger: logger, metrics: metrics, sealer: sealer)
        if let metricsListen, let export, let (host, port) = MetricsServer.parseAddress(metricsListen) {
            // Listed first: graceful shutdown stops services in reverse order, so probes and
            // /metrics keep answering (readiness: 503) while running steps finish.
            services.append(
                .init(service: MetricsServer(host: host, port: port, export: export, logger: logger) { worker.isReady }))
        }
        services.append(.init(service: worker))
        let group = ServiceGroup(
            configuration: .init(services: services, gracefulShutdownSignals: [], cancellationSignals: [], logger: logger))
        let signalled = control.state.withLock { s in
            s.group = group
            return s.signals > 0
        }
        // A signal before the group existed: the group starts, and shuts down gracefully at once.
        if signalled { await group.triggerGracefulShutdown() }
        let run = Task { try await group.run() }
        control.state.withLock { $0.run = run }
        try await reportingFailures { try await refusingBadCredentials { try await run.value } }
    }

    /// Exit status of a worker whose Redis user or password is wrong, or lacks a permission a
    /// worker needs: `EX_CONFIG`. Restarting cannot help, so the systemd unit does not
    /// (`RestartPreventExitStatus=78`).
    static let configurationFailure = ExitCode(78)

    /// Runs `body`; a refused handshake or a missing permission ends the worker with one line and
    /// ``configurationFailure``, not a retry loop.
    private func refusingBadCredentials<T>(_ body: () async throws -> T) async throws -> T {
        do {
            return try await body()
        } catch let error as RedisError where error.code == .rejected {
            printError(
                "Redis at \(error.address) refused the worker: \(error.message) (check the user and password: --redis or "
                    + "REDIS_URL, --redis-password-file or REDIS_PASSWORD_FILE)")
            throw Self.configurationFailure
        } catch let error as RedisServerError where error.isPermissionDenied {
            let user = connection.endpoint.username.map { "'\($0)'" } ?? "default"
            printError(
                "the Redis user \(user) lacks a permission every worker needs: \(error.message); "
                    + "run workers as the worker user of deploy/users.acl (docs/SECURITY.md)")
            throw Self.configurationFailure
        }
    }
}

/// What the worker command's signal task needs from its main flow: the service group and its run
/// task, once they exist, and how many signals came.
private final class SignalControl: Sendable {
    struct State {
        var group: ServiceGroup?
        var run: Task<Void, any Error>?
        var signals = 0
    }

    let state = Mutex(State())
}
