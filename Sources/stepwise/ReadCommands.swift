import ArgumentParser
import Foundation
import StepwiseCore
import StepwiseGateway
import StepwiseRedis

struct WatchCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "watch",
        abstract: "Print a session's events live; exit when it is settled with nothing queued, or on Ctrl-C.")

    @OptionGroup var connection: ConnectionOptions

    @Argument(help: "The session id.")
    var session: String

    @Option(help: "Resume after this event id (as printed with --json); default: from the start of the stream.")
    var from: String = "0"

    @Flag(help: "One JSON object per event per line.")
    var json = false

    func validate() throws {
        _ = try parseSessionID(session, flag: "SESSION")
        let parts = from.split(separator: "-", omittingEmptySubsequences: false)
        guard (1...2).contains(parts.count), parts.allSatisfy({ !$0.isEmpty && UInt64($0) != nil }) else {
            throw ValidationError("--from '\(from)' is not an event id: use the 'id' of an event, like 1764079000123-0")
        }
    }

    func run() async throws {
        // Ctrl-C ends a watch normally (exit 0); nothing is left half-written.
        signal(SIGINT) { _ in _exit(0) }
        let logger = connection.makeLogger()
        let conn = try await connection.connect(name: "stepwise:watch", logger: logger)
        let id = try parseSessionID(session, flag: "SESSION")
        try await reportingFailures {
            let store = SessionStore(connection: conn, keys: connection.keys, sealer: connection.makeSealer())
            var start = from
            // A resume point the stream no longer has (trimmed, a re-created session) or never had
            // (a future id) is said out loud: never a silent gap.
            let bounds = try await GatewayStore(connection: conn, keys: connection.keys).streamBounds(id)
            if let resumeFrom = EventID(from), let reason = EventFeed.resetReason(after: resumeFrom, bounds: bounds) {
                guard let snapshot = try await store.session(id) else {
                    throw StepwiseError(.sessionNotFound, "session \(id) does not exist (or expired)")
                }
                start = bounds.end.description
                if json {
                    try output(
                        JSONValue.object([
                            "type": "reset", "reason": .string(reason), "session": snapshot.json, "resumeFrom": .string(start),
                        ]).jsonString)
                } else {
                    try output(
                        "reset (\(reason)): no events after \(from) in this stream; the session is \(snapshot.status.rawValue) at version \(snapshot.version) after \(snapshot.steps) steps; following from \(start)"
                    )
                }
            }
            try await follow(store: store, session: id, from: start, json: json)
        }
    }
}

struct StatusCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "status", abstract: "Show one session: status, version, steps and state.")

    @OptionGroup var connection: ConnectionOptions

    @Argument(help: "The session id.")
    var session: String

    @Flag(help: "Print one JSON object.")
    var json = false

    func validate() throws { _ = try parseSessionID(session, flag: "SESSION") }

    func run() async throws {
        let logger = connection.makeLogger()
        let conn = try await connection.connect(name: "stepwise:status", logger: logger)
        let id = try parseSessionID(session, flag: "SESSION")
        let snapshot = try await reportingFailures {
            try await SessionStore(connection: conn, keys: connection.keys, sealer: connection.makeSealer()).session(id)
        }
        guard let s = snapshot else {
            printError("session \(id) does not exist (or expired): check the id and --namespace")
            throw ExitCode.failure
        }
        if json {
            try output(s.json.jsonString)
            return
        }
        try output("session   \(s.id)")
        try output("agent     \(s.agent)")
        if !s.owner.isEmpty { try output("owner     \(s.owner)") }
        try output("status    \(s.status.rawValue)")
        if let reason = s.cancelReason { try output("cancelled \(reason)") }
        if let job = s.deadLetter { try output("blocked   by dead letter \(job): see `stepwise dead show \(job)`") }
        try output("version   \(s.version)")
        try output("steps     \(s.steps)")
        try output("queued    \(s.queued)")
        try output("created   \(formatTime(s.createdAt))")
        try output("active    \(formatTime(s.lastActiveAt))")
        try output("expires   \(s.expiresAt.map(formatTime) ?? "never")")
        try output("options   \(s.options.jsonString)")
        try output("state     \(s.state.jsonString)")
    }
}

struct SessionsCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "sessions", abstract: "List the most recently active sessions.")

    @OptionGroup var connection: ConnectionOptions

    @Option(help: "How many sessions to list (1-10000).")
    var limit: Int = 20

    @Flag(help: "One JSON object per line.")
    var json = false

    func validate() throws {
        guard (1...10_000).contains(limit) else { throw ValidationError("--limit must be 1-10000, got \(limit)") }
    }

    func run() async throws {
        let logger = connection.makeLogger()
        let conn = try await connection.connect(name: "stepwise:sessions", logger: logger)
        let rows = try await reportingFailures {
            try await SessionStore(connection: conn, keys: connection.keys, sealer: connection.makeSealer()).recentSessions(limit: limit)
        }
        if !json { try output("SESSION".padding(toLength: 40, withPad: " ", startingAt: 0) + "STATUS    STEPS  LAST ACTIVE") }
        for r in rows {
            if json {
                try output(
                    JSONValue.object([
                        "session": .string(r.id), "status": .string(r.status), "steps": .int(r.steps),
                        "lastActive": .int(r.lastActiveAt),
                    ]).jsonString)
            } else {
                try output(
                    r.id.padding(toLength: 40, withPad: " ", startingAt: 0) + r.status.padding(toLength: 10, withPad: " ", startingAt: 0)
                        + String(r.steps).padding(toLength: 7, withPad: " ", startingAt: 0) + formatTime(r.lastActiveAt))
            }
        }
    }
}

struct QueueCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "queue", abstract: "Show the ready depth and what each worker holds in flight.")

    @OptionGroup var connection: ConnectionOptions

    @Flag(help: "Print one JSON object.")
    var json = false

    func run() async throws {
        let logger = connection.makeLogger()
        let conn = try await connection.connect(name: "stepwise:queue", logger: logger)
        let info = try await reportingFailures {
            try await SessionStore(connection: conn, keys: connection.keys, sealer: connection.makeSealer()).queueInfo()
        }
        if json {
            let workers: [JSONValue] = info.workers.map {
                [
                    "worker": .string($0.id), "inflight": .int($0.inflight), "alive": .bool($0.alive),
                    "lastHeartbeat": .int($0.lastHeartbeatAt), "status": .string($0.status),
                ]
            }
            let stats = JSONValue.object(info.stats.mapValues { .int($0) })
            try output(
                JSONValue.object([
                    "ready": .int(info.ready), "delayed": .int(info.delayed),
                    "parked": .int(info.parked), "dead": .int(info.dead),
                    "active": .int(info.active), "workers": .array(workers), "stats": stats,
                ]).jsonString)
            return
        }
        try output("ready      \(info.ready)")
        try output("delayed    \(info.delayed)  (retries waiting for their backoff)")
        try output("parked     \(info.parked)  (waiting for an active-session slot; \(info.active) held)")
        try output("dead       \(info.dead)  (see stepwise dead list)")
        try output("workers    \(info.workers.count)")
        if info.workers.contains(where: { $0.alive && $0.status == "oom" }) {
            try output("redis      OUT OF MEMORY: workers claim nothing until it has room (raise maxmemory or free memory)")
        }
        for w in info.workers {
            let state =
                !w.alive
                ? (w.inflight > 0 ? "DEAD (reaper will recover its jobs)" : "gone (nothing held; listed until pruned)")
                : w.status == "oom" ? "alive, redis full: not claiming" : w.status == "stopping" ? "alive, stopping" : "alive"
            try output("  \(w.id.padding(toLength: 40, withPad: " ", startingAt: 0)) inflight \(w.inflight)  \(state)")
        }
        let width = info.stats.keys.map(\.count).max() ?? 10
        for (k, v) in info.stats.sorted(by: { $0.key < $1.key }) {
            try output("\(k.padding(toLength: width, withPad: " ", startingAt: 0)) \(v)")
        }
    }
}
