import ArgumentParser
import Foundation
import StepwiseCore
import StepwiseRedis

struct CancelCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "cancel",
        abstract: "Cancel a session: drop its queued steps, stop its running step within a second, refuse later submits.")

    @OptionGroup var connection: ConnectionOptions

    @Argument(help: "The session id.")
    var session: String

    @Option(help: "Why, recorded on the session and in its session.cancelled event.")
    var reason: String = "cancelled"

    @Flag(help: "Print one JSON object.")
    var json = false

    func validate() throws {
        _ = try parseSessionID(session, flag: "SESSION")
        guard (1...500).contains(reason.utf8.count) else { throw ValidationError("--reason must be 1-500 bytes") }
    }

    func run() async throws {
        let logger = connection.makeLogger()
        let conn = try await connection.connect(name: "stepwise:cancel", logger: logger)
        let id = try parseSessionID(session, flag: "SESSION")
        let result = try await reportingFailures {
            try await Dispatcher(connection: conn, keys: connection.keys, agents: .init()).cancel(id, reason: reason)
        }
        if json {
            try output(
                JSONValue.object([
                    "session": .string(id.rawValue), "cancelled": .bool(result != nil),
                    "dropped": .int(result?.dropped ?? 0), "running": result?.running.map { .string($0) } ?? .null,
                ]).jsonString)
        } else if let result {
            try output(
                "cancelled session \(id): \(result.dropped) queued step(s) dropped"
                    + (result.running.map { ", running job \($0) is being stopped" } ?? ""))
        } else {
            try output("session \(id) was already cancelled")
        }
    }
}

struct TouchCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "touch",
        abstract: "Keep an idle session alive: restart its idle TTL now (a UI heartbeat), optionally with a new TTL.")

    @OptionGroup var connection: ConnectionOptions

    @Argument(help: "The session id.")
    var session: String

    @Option(help: "New idle TTL in seconds (1-2592000), or 0 to never expire.")
    var ttl: Double?

    func validate() throws {
        _ = try parseSessionID(session, flag: "SESSION")
        if let ttl, !(ttl == 0 || (1...2_592_000).contains(ttl)) {
            throw ValidationError("--ttl must be 0 (never expire) or 1 to 2592000 seconds, got \(ttl)")
        }
    }

    func run() async throws {
        let logger = connection.makeLogger()
        let conn = try await connection.connect(name: "stepwise:touch", logger: logger)
        let id = try parseSessionID(session, flag: "SESSION")
        let expiry = try await reportingFailures {
            try await Dispatcher(connection: conn, keys: connection.keys, agents: .init())
                .touch(id, ttl: try ttl.map { try seconds($0, flag: "--ttl") })
        }
        try output(expiry.map { "session \(id) expires at \(formatTime($0)) unless active again" } ?? "session \(id) never expires")
    }
}

struct DeadCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "dead",
        abstract: "Dead letters: steps that ran out of attempts or could never run, each blocking its session.",
        discussion: """
            A dead letter stays at the head of its session, which is 'failed' and runs nothing more \
            (later submits wait behind it) until you retry it (run it again from attempt 1) or purge \
            it (discard it; the session's next steps run). Dead letters live as long as their session.
            """,
        subcommands: [List.self, Show.self, Retry.self, Purge.self])

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "List dead letters, newest first.")
        @OptionGroup var connection: ConnectionOptions
        @Option(help: "How many to list (1-10000).")
        var limit: Int = 100
        @Flag(help: "One JSON object per line.")
        var json = false

        func validate() throws {
            guard (1...10_000).contains(limit) else { throw ValidationError("--limit must be 1-10000, got \(limit)") }
        }

        func run() async throws {
            let logger = connection.makeLogger()
            let conn = try await connection.connect(name: "stepwise:dead", logger: logger)
            let letters = try await reportingFailures {
                try await DeadLetterQueue(connection: conn, keys: connection.keys, sealer: connection.makeSealer()).list(limit: limit)
            }
            if !json {
                try output("JOB".padding(toLength: 44, withPad: " ", startingAt: 0) + "ATTEMPTS  HELD  WHEN          REASON: ERROR")
            }
            for d in letters {
                if json {
                    try output(d.json.jsonString)
                } else {
                    let error = d.error.count > 80 ? String(d.error.prefix(80)) + "…" : d.error
                    try output(
                        d.jobID.padding(toLength: 44, withPad: " ", startingAt: 0)
                            + String(d.attempts).padding(toLength: 10, withPad: " ", startingAt: 0)
                            + String(d.heldSteps).padding(toLength: 6, withPad: " ", startingAt: 0) + formatTime(d.time)
                            + "  \(d.reason): \(error)")
                }
            }
        }
    }

    struct Show: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Show one dead letter: reason, last error, attempts, input.")
        @OptionGroup var connection: ConnectionOptions
        @Argument(help: "The job id (session:sequence), as `dead list` prints it.")
        var job: String
        @Flag(help: "Print one JSON object.")
        var json = false

        func validate() throws { try validateJobID(job) }

        func run() async throws {
            let logger = connection.makeLogger()
            let conn = try await connection.connect(name: "stepwise:dead", logger: logger)
            let letter = try await reportingFailures {
                try await DeadLetterQueue(connection: conn, keys: connection.keys, sealer: connection.makeSealer()).show(jobID: job)
            }
            guard let d = letter else {
                printError("job \(job) is not in the dead-letter list: see `stepwise dead list`")
                throw ExitCode.failure
            }
            if json {
                try output(d.json.jsonString)
                return
            }
            try output("job       \(d.jobID)")
            try output("session   \(d.session)  (agent \(d.agent), \(d.heldSteps) step(s) held behind it)")
            try output("reason    \(d.reason)")
            try output("error     \(d.error)")
            try output("attempts  \(d.attempts)")
            try output("when      \(formatTime(d.time))")
            try output("input     \(d.input)")
        }
    }

    struct Retry: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Run a dead letter again from attempt 1; its session's held steps follow.")
        @OptionGroup var target: DeadLetterTarget

        func run() async throws {
            try await target.act { try await $0.retry(jobID: $1) }
            try output("job \(target.job) is queued again")
        }
    }

    struct Purge: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Discard a dead letter (never applied); its session's next steps run.")
        @OptionGroup var target: DeadLetterTarget

        func run() async throws {
            try await target.act { try await $0.purge(jobID: $1) }
            try output("job \(target.job) discarded")
        }
    }
}

/// The connection and job id that `dead retry` and `dead purge` act on.
struct DeadLetterTarget: ParsableArguments {
    @OptionGroup var connection: ConnectionOptions
    @Argument(help: "The job id (session:sequence), as `dead list` prints it.")
    var job: String

    func validate() throws { try validateJobID(job) }

    func act(_ action: (DeadLetterQueue, String) async throws -> Void) async throws {
        let logger = connection.makeLogger()
        let conn = try await connection.connect(name: "stepwise:dead", logger: logger)
        try await reportingFailures {
            try await action(DeadLetterQueue(connection: conn, keys: connection.keys, sealer: connection.makeSealer()), job)
        }
    }
}

/// A job id is `<session id>:<sequence number>`.
func validateJobID(_ job: String) throws {
    let parts = job.split(separator: ":", omittingEmptySubsequences: false)
    guard parts.count == 2, (try? SessionID(String(parts[0]))) != nil, let n = UInt64(parts[1]), n > 0 else {
        throw ValidationError("'\(job)' is not a job id: use session:sequence as `stepwise dead list` prints it, e.g. chat-1:3")
    }
}
