import ArgumentParser
import Foundation
import Logging
import StepwiseCore
import StepwiseRedis
import StepwiseTesting
import Synchronization
import UnixSignals

struct LoadTestCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "loadtest",
        abstract: "Measure steps/s and latency with 1..N worker processes, and check that nothing was lost, duplicated or reordered.",
        discussion: """
            For each count in --workers, starts that many `stepwise worker` processes (unless --external), \
            submits sessions x steps into a fresh namespace, waits until every step is committed, checks \
            every session's event stream (one step end per step, in order, nothing missing or duplicated) \
            and, for --agent counter, its ledger (the state's inputs equal what was submitted, in order), \
            prints one result row, stops the workers and deletes the namespace. With --kill-every it also \
            kill -9s a random worker on that period and starts a new one. Exits 1 when any check fails or \
            the time limit passes.

            --memory 10000,100000 measures instead the Redis memory per idle session: it creates that many \
            one-step counter sessions through the real path and reports the used_memory delta per session \
            and a per-key breakdown.
            """)

    @OptionGroup var connection: ConnectionOptions

    @Option(help: "Comma-separated worker process counts to run, e.g. 1,2,4,8 (each 1-64).")
    var workers: String = "1,2"

    @Option(help: "Number of sessions (1-1000000).")
    var sessions: Int = 200

    @Option(help: "Steps per session (1-100000).")
    var steps: Int = 50

    @Option(help: "Steps run at once per worker process (1-1000).")
    var concurrency: Int = 16

    @Option(help: "Simulated step latency in milliseconds (an LLM call), 0 for none (counter and sleep agents).")
    var stepMs: Int = 0

    @Option(help: "Bytes of filler text in each step input (0-200000).")
    var inputBytes: Int = 0

    @Option(help: "The workers' --state-cache-mb (MiB of large states kept between a session's steps; 0 turns the cache off).")
    var stateCacheMb: Int = 64

    @Flag(help: "The workers' --state-deltas (commit a large state as the part that changed).")
    var stateDeltas = false

    @Option(
        help: ArgumentHelp(
            "Agent that runs the steps: counter, sleep or echo.",
            discussion: """
                Every agent gets the event-stream checks (one step end per step, steps 1..N in job order). \
                Only counter also gets the ledger check of its state (its inputs must equal what was \
                submitted, in order), so use counter to prove ordering of applied state.
                """))
    var agent: String = "counter"

    @Option(help: "Submit at this many steps/s, spread over the sessions (0: submit everything at once).")
    var rate: Double = 0

    @Option(help: "Seconds each worker count may take before the run is declared failed.")
    var timeLimit: Double = 300

    @Option(
        help: ArgumentHelp(
            "kill -9 a random worker process this often (seconds) and start a new one; not with --external.",
            discussion: """
                Keep it above --heartbeat-ttl + --reaper-interval + 0.5 s + one step: recovered steps wait \
                that long, and with a shorter period (and few workers) the worker that picks them up may \
                be killed before it finishes them, so the round makes no progress until its time limit.
                """))
    var killEvery: Double?

    @Option(
        help: ArgumentHelp(
            "Inject random faults while steps are submitted: a comma-separated list of kill, pause, term, client-kill, redis-restart, oom.",
            discussion: """
                kill: kill -9 of a random worker, and a new one. pause: SIGSTOP of a random worker for heartbeat \
                TTL + 1-3 s, then SIGCONT. term: SIGTERM (graceful), and a new one. client-kill: CLIENT KILL of \
                a random worker's connections. redis-restart (needs --start-redis): kill -9 of redis-server \
                (appendfsync always, so nothing acknowledged is lost) and a restart from its append-only file. \
                oom: maxmemory just below used_memory (noeviction) for 2-4 s. Kinds come from a shuffled bag: \
                every kind once, then a new shuffle. Faults stop when the last step is submitted (or at \
                --chaos-until), every one is undone, and the round must then finish within the settle bound; \
                it fails on any lost, twice-applied or reordered step, stuck session, accepted stale commit, \
                or dead letter. Not with --external or --kill-every.
                """))
    var chaos: String?

    @Option(help: "Mean seconds between two --chaos faults; each gap is uniform in 0.5-1.5x this (>= 0.1).")
    var chaosEvery: Double = 2

    @Option(help: "Seconds after a round's start when --chaos stops (default: when the last step is submitted; required with --rate 0).")
    var chaosUntil: Double?

    @Option(help: "Seed of the --chaos choices (kinds, gaps, victims), printed in the header so a run can be repeated (default: random).")
    var seed: UInt64?

    @Flag(
        help: """
            Start a private redis-server for the run (127.0.0.1, a free port, a temporary directory, appendonly yes, \
            appendfsync always) and stop it at the end; --chaos redis-restart needs it. Not with --redis or --external.
            """)
    var startRedis = false

    @Option(help: "--heartbeat-ttl of the started workers (default: the worker's 10 s, or 2 s with --kill-every or --chaos).")
    var heartbeatTTL: Double?

    @Option(help: "--reaper-interval of the started workers (default: the worker's 4 s, or 0.5 s with --kill-every or --chaos).")
    var reaperInterval: Double?

    @Option(help: "Directory for results.json and chart.svg (created if missing).")
    var out: String?

    @Option(help: "Instead of the scaling run: measure Redis memory per idle session at these session counts, e.g. 10000,100000.")
    var memory: String?

    @Option(
        help:
            "Approximate size in bytes of each session's state document (0-4000000; default 256 with --memory, else 0): the counter agent keeps that much filler in its state, as an LLM conversation has a large one."
    )
    var stateBytes: Int?

    /// `--state-bytes`, or its default for the kind of run.
    var stateSize: Int { stateBytes ?? (memory == nil ? 0 : 256) }

    @Option(
        help:
            "With --memory: seconds idle before the workers compact a session's event stream (their --compact-after); the reading waits for it. 0 measures sessions that are not compacted."
    )
    var compactAfter: Double = 1

    @Flag(help: "Drive workers that already run against the same --redis and --namespace instead of starting them (one round only).")
    var external = false

    @Flag(help: "Print each result row as one JSON object.")
    var json = false

    var workerCounts: [Int] { parseCounts(workers) ?? [] }
    var memoryCounts: [Int] { memory.flatMap(parseCounts) ?? [] }

    private func parseCounts(_ text: String) -> [Int]? {
        let parts = text.split(separator: ",", omittingEmptySubsequences: false).map { Int($0.trimmingCharacters(in: .whitespaces)) }
        guard !parts.isEmpty, parts.allSatisfy({ $0 != nil }) else { return nil }
        return parts.compactMap { $0 }
    }

    func validate() throws {
        guard let counts = parseCounts(workers), counts.allSatisfy({ (1...64).contains($0) }) else {
            throw ValidationError("--workers '\(workers)' must be comma-separated counts 1-64, e.g. 1,2,4,8")
        }
        guard (1...1_000_000).contains(sessions) else { throw ValidationError("--sessions must be 1-1000000, got \(sessions)") }
        guard (1...100_000).contains(steps) else { throw ValidationError("--steps must be 1-100000, got \(steps)") }
        guard sessions * steps <= 10_000_000 else {
            throw ValidationError("--sessions x --steps must be at most 10000000, got \(sessions * steps): lower one of them")
        }
        guard (1...1000).contains(concurrency) else { throw ValidationError("--concurrency must be 1-1000, got \(concurrency)") }
        guard (0...60_000).contains(stepMs) else { throw ValidationError("--step-ms must be 0-60000, got \(stepMs)") }
        guard (0...200_000).contains(inputBytes) else { throw ValidationError("--input-bytes must be 0-200000, got \(inputBytes)") }
        guard (0...65_536).contains(stateCacheMb) else { throw ValidationError("--state-cache-mb must be 0-65536, got \(stateCacheMb)") }
        if stateSize > 0, memory == nil, agent != "counter" { throw ValidationError("--state-bytes needs --agent counter") }
        guard LoadTestAgent(rawValue: agent) != nil else {
            throw ValidationError("--agent '\(agent)' is not supported by loadtest: use counter, sleep or echo")
        }
        if agent == "echo" && stepMs > 0 {
            throw ValidationError("--step-ms needs --agent counter or sleep: echo has no simulated latency")
        }
        guard rate.isFinite, rate >= 0, rate <= 1_000_000 else { throw ValidationError("--rate must be 0-1000000 steps/s, got \(rate)") }
        _ = try seconds(timeLimit, flag: "--time-limit", min: 1)
        if let killEvery {
            _ = try seconds(killEvery, flag: "--kill-every", min: 0.1)
            if external { throw ValidationError("--kill-every kills workers the load test started: it cannot be used with --external") }
        }
        if let chaos {
            let kinds = try ChaosKind.parse(chaos)
            _ = try seconds(chaosEvery, flag: "--chaos-every", min: 0.1)
            if let chaosUntil { _ = try seconds(chaosUntil, flag: "--chaos-until", min: 0.1) }
            if external {
                throw ValidationError("--chaos injects faults into workers the load test started: it cannot be used with --external")
            }
            if killEvery != nil { throw ValidationError("--kill-every and --chaos both kill workers: give --chaos kill instead") }
            if memory != nil { throw ValidationError("--memory and --chaos are separate runs: give one of them") }
            if rate == 0 && chaosUntil == nil {
                throw ValidationError(
                    "--chaos needs an end: with --rate 0 every step is submitted at once, so give --rate (faults stop at the last submit) or --chaos-until SECONDS"
                )
            }
            if kinds.contains(.redisRestart) && !startRedis {
                throw ValidationError(
                    "--chaos redis-restart restarts a redis-server the load test started itself: add --start-redis (a server given with --redis is never restarted)"
                )
            }
        } else if chaosUntil != nil || seed != nil {
            throw ValidationError("--chaos-until and --seed only apply to --chaos runs: add --chaos")
        }
        if startRedis {
            if external {
                throw ValidationError("--start-redis starts a new, empty server: not with --external (whose workers use another one)")
            }
            if CommandLine.arguments.contains(where: { $0 == "--redis" || $0.hasPrefix("--redis=") }) {
                throw ValidationError("--start-redis starts its own server: do not give --redis too")
            }
        }
        if let heartbeatTTL { _ = try seconds(heartbeatTTL, flag: "--heartbeat-ttl", min: 1) }
        if let reaperInterval { _ = try seconds(reaperInterval, flag: "--reaper-interval", min: 0.1) }
        if external {
            if counts.count != 1 { throw ValidationError("--external runs one round: give one --workers value (the pool's size)") }
            if heartbeatTTL != nil || reaperInterval != nil {
                throw ValidationError("--heartbeat-ttl and --reaper-interval set the workers loadtest starts: not with --external")
            }
        }
        if let memory {
            guard let m = parseCounts(memory), m.allSatisfy({ (1...1_000_000).contains($0) }) else {
                throw ValidationError("--memory '\(memory)' must be comma-separated session counts 1-1000000, e.g. 10000,100000")
            }
            if external { throw ValidationError("--memory starts its own workers in a fresh namespace: not with --external") }
            if killEvery != nil { throw ValidationError("--memory and --kill-every are separate runs: give one of them") }
        }
        _ = try seconds(compactAfter, flag: "--compact-after")
        guard (0...4_000_000).contains(stateSize) else { throw ValidationError("--state-bytes must be 0-4000000, got \(stateSize)") }
        if let out { try Self.prepareOutputDirectory(out) }
    }

    /// Creates `path` if needed and proves it is a writable directory, or throws one clear line.
    static func prepareOutputDirectory(_ path: String) throws {
        let fm = FileManager.default
        var isDir: ObjCBool = false
        if fm.fileExists(atPath: path, isDirectory: &isDir) {
            guard isDir.boolValue else { throw ValidationError("--out '\(path)' exists and is not a directory: give a directory path") }
        } else {
            do { try fm.createDirectory(atPath: path, withIntermediateDirectories: true) } catch {
                throw ValidationError("--out '\(path)' cannot be created (\(error.localizedDescription)): give a writable directory")
            }
        }
        let probe = (path as NSString).appendingPathComponent(".stepwise-write-probe-\(getpid())")
        guard fm.createFile(atPath: probe, contents: Data()) else {
            throw ValidationError("--out '\(path)' is not writable: give a directory you can write to")
        }
        try? fm.removeItem(atPath: probe)
    }

    mutating func run() async throws {
        let logger = connection.makeLogger(label: "stepwise.loadtest")
        if chaos != nil && seed == nil { seed = UInt64.random(in: 0...UInt64.max) }
        var server: RedisServerProcess?
        if startRedis {
            do {
                server = try await RedisServerProcess.start(appendfsync: "always")
            } catch {
                printError("--start-redis: \(error)")
                throw ExitCode.failure
            }
            connection.redisURL = server?.url ?? connection.redisURL
        }
        defer { server?.terminate() }
        // With faults to undo or a server to stop, the first SIGINT/SIGTERM ends the round
        // cleanly (faults undone, workers stopped, namespace deleted); a second exits at once.
        var interrupt: InterruptFlag?
        var watcher: Task<Void, Never>?
        if chaos != nil || startRedis {
            let flag = InterruptFlag()
            interrupt = flag
            let signals = await UnixSignalsSequence(trapping: .sigint, .sigterm)
            watcher = Task {
                for await _ in signals {
                    if flag.isSet { _exit(130) }
                    flag.set()
                    printError("interrupted: undoing the faults and stopping the workers (again to exit at once)")
                }
            }
        }
        defer { watcher?.cancel() }
        do {
            try await runRounds(logger: logger, server: server, interrupt: interrupt)
        } catch {
            await server?.stop()
            throw error
        }
        await server?.stop()
    }

    private func runRounds(logger: Logger, server: RedisServerProcess?, interrupt: InterruptFlag?) async throws {
        let conn = try await connection.connect(name: "stepwise:loadtest", logger: logger)
        let started = Date()
        let machine = try await reportingFailures { try await MachineInfo.collect(conn) }
        if !memoryCounts.isEmpty {
            let rows = try await reportingFailures { try await runMemory(conn: conn, logger: logger) }
            if let out {
                let doc = LoadTestReport.resultsDocument(command: self, machine: machine, date: started, rounds: [], memory: rows)
                try writeOutput(doc, chart: nil, to: out)
            }
            if rows.contains(where: { !$0.errors.isEmpty }) { throw ExitCode.failure }
            return
        }
        let params = LoadTestParameters(command: self)
        if !json {
            try output(LoadTestReport.header(params, endpoint: connection.endpoint.description, machine: machine))
            if let server {
                try output("# --start-redis: redis-server pid \(server.process?.pid ?? 0) on \(server.url), dir \(server.directory)")
            }
            if let c = params.chaos { try output(LoadTestReport.chaosHeader(c, params: params)) }
            try output(LoadTestReport.tableHeader(kills: killEvery != nil))
        }
        var rows: [RoundResult] = []
        var baseline: Double?
        for count in workerCounts {
            // Stdout gone (a reader that quit): stop before starting more workers.
            try Console.checkStdout()
            var result = try await reportingFailures {
                try await LoadTestRound(
                    params: params, connection: connection, conn: conn, json: json, redisServer: server, interrupt: interrupt
                ).run(
                    workers: count)
            }
            if interrupt?.isSet == true {
                try output(json ? JSONValue.object(result.json).jsonString : LoadTestReport.tableRow(result, kills: killEvery != nil))
                printError(result.errors.joined(separator: "; "))
                throw ExitCode.failure
            }
            if baseline == nil { baseline = result.stepsPerSecond / Double(count) }
            result.scalingEfficiency = result.stepsPerSecond / ((baseline ?? 1) * Double(count))
            rows.append(result)
            try output(json ? JSONValue.object(result.json).jsonString : LoadTestReport.tableRow(result, kills: killEvery != nil))
            if !json, let c = result.chaos { try output(LoadTestReport.chaosBlock(c)) }
        }
        if !json, rows.contains(where: { !$0.errors.isEmpty }) {
            for r in rows where !r.errors.isEmpty { printError("\(r.workers) workers: \(r.errors.joined(separator: "; "))") }
        }
        if let out {
            let doc = LoadTestReport.resultsDocument(command: self, machine: machine, date: started, rounds: rows, memory: [])
            let chart = LoadTestChart(
                rows: rows, title: "Stepwise load test", subtitle: LoadTestReport.chartSubtitle(params, machine: machine, date: started))
            try writeOutput(doc, chart: chart.svg(), to: out)
        }
        if rows.contains(where: { !$0.errors.isEmpty }) { throw ExitCode.failure }
    }

    private func writeOutput(_ doc: JSONValue, chart: String?, to dir: String) throws {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
        do {
            try encoder.encode(doc).write(to: URL(fileURLWithPath: dir).appendingPathComponent("results.json"))
            if let chart { try Data(chart.utf8).write(to: URL(fileURLWithPath: dir).appendingPathComponent("chart.svg")) }
        } catch {
            printError("cannot write results to '\(dir)': \(error.localizedDescription)")
            throw ExitCode.failure
        }
        if !json { try output("# wrote \(dir)/results.json\(chart == nil ? "" : " and \(dir)/chart.svg")") }
    }
}

/// The agents the load test knows how to drive and check.
enum LoadTestAgent: String, Sendable {
    case counter, sleep, echo
}

/// The load test's knobs, resolved from the command line.
struct LoadTestParameters: Sendable {
    var sessions: Int
    var steps: Int
    var concurrency: Int
    var stepMs: Int
    var inputBytes: Int
    var stateBytes: Int
    var stateCacheMb: Int
    var stateDeltas: Bool
    var agent: LoadTestAgent
    var rate: Double
    var timeLimit: Duration
    var killEvery: Duration?
    var chaos: ChaosParameters?
    var heartbeatTTL: Double?
    var reaperInterval: Double?
    var external: Bool
    var workerCounts: [Int]

    init(command c: LoadTestCommand) {
        sessions = c.sessions
        steps = c.steps
        concurrency = c.concurrency
        stepMs = c.stepMs
        inputBytes = c.inputBytes
        stateBytes = c.stateSize
        stateCacheMb = c.stateCacheMb
        stateDeltas = c.stateDeltas
        agent = LoadTestAgent(rawValue: c.agent) ?? .counter
        rate = c.rate
        timeLimit = .milliseconds(Int64(c.timeLimit * 1000))
        killEvery = c.killEvery.map { .milliseconds(Int64($0 * 1000)) }
        chaos = c.chaos.flatMap { try? ChaosKind.parse($0) }.map {
            ChaosParameters(kinds: $0, every: c.chaosEvery, until: c.chaosUntil, seed: c.seed ?? 0)
        }
        let fastRecovery = c.killEvery != nil || chaos != nil
        heartbeatTTL = c.heartbeatTTL ?? (fastRecovery ? 2 : nil)
        reaperInterval = c.reaperInterval ?? (fastRecovery ? 0.5 : nil)
        external = c.external
        workerCounts = c.workerCounts
    }

    /// Events per session stream the started workers keep: enough that the checks see every step end.
    /// Under chaos a step may be started, recovered and released several times: keep more.
    var eventsMaxLength: Int { chaos == nil ? max(1000, steps * 4 + 100) : max(2000, steps * 10 + 1000) }

    var json: [String: JSONValue] {
        var o: [String: JSONValue] = [
            "sessions": .int(sessions), "steps": .int(steps), "concurrency": .int(concurrency),
            "stepMs": .int(stepMs), "inputBytes": .int(inputBytes), "stateBytes": .int(stateBytes),
            "stateCacheMb": .int(stateCacheMb), "stateDeltas": .bool(stateDeltas), "agent": .string(agent.rawValue),
            "rate": .double(rate), "timeLimitSeconds": .double(timeLimit.inSeconds), "external": .bool(external),
            "workers": .array(workerCounts.map { .int($0) }),
        ]
        o["killEverySeconds"] = killEvery.map { .double($0.inSeconds) } ?? .null
        o["chaos"] = chaos?.json ?? .null
        o["heartbeatTTLSeconds"] = heartbeatTTL.map { .double($0) } ?? .null
        o["reaperIntervalSeconds"] = reaperInterval.map { .double($0) } ?? .null
        return o
    }
}

extension Duration {
    var inSeconds: Double {
        let (s, atto) = components
        return Double(s) + Double(atto) / 1e18
    }
}

/// Set by the first SIGINT or SIGTERM of a `loadtest` run: the round's loop stops, undoes its
/// faults and stops its workers instead of dying with them half-done.
final class InterruptFlag: Sendable {
    private let flag = Atomic<Bool>(false)

    var isSet: Bool { flag.load(ordering: .relaxed) }

    func set() { flag.store(true, ordering: .relaxed) }
}
