import ArgumentParser
import Foundation
import StepwiseAgents
import StepwiseCore
import StepwiseRedis

struct SubmitCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "submit",
        abstract: "Submit one step to a session (creating it when new) and return at once with the job id.")

    @OptionGroup var connection: ConnectionOptions

    @Option(help: "Session id, 1-64 characters from A-Z a-z 0-9 _ - (default: a new random id).")
    var session: String?

    @Option(help: "Agent name; required for a new session (built in: echo, counter, sleep, quiz, fault).")
    var agent: String?

    @Option(
        help: ArgumentHelp(
            "The step's input as JSON, e.g. '{\"topic\":\"Swift\"}' or '\"hello\"'; @path reads it from a file, - from standard input.",
            valueName: "json|@path|-"))
    var input: String = "null"

    @Option(name: .customLong("option"), help: "A session setting key=value (value parsed as JSON when it is JSON). Repeatable.")
    var options: [String] = []

    @Option(
        name: .customLong("options"),
        help: ArgumentHelp(
            "Session settings as one JSON object (at most 64 KiB); @path reads it from a file, - from standard input. --option pairs override its keys.",
            valueName: "json|@path|-"))
    var optionsDocument: String?

    @Option(
        help:
            "Submit as this owner (1-128 characters from A-Z a-z 0-9 _ . @ : -): a new session belongs to it, and a session with an owner takes submits only from that owner."
    )
    var owner: String?

    @Flag(help: "Submit as the operator: skip the owner check (the session's owner, TTL and options rules still apply otherwise).")
    var asOperator = false

    @Option(help: "Makes re-submits with the same key return the first job id and enqueue nothing.")
    var idempotencyKey: String?

    @Option(help: "Largest accepted input in bytes.")
    var maxInputBytes: Int = 256 * 1024

    @Option(
        help:
            "Seconds of inactivity after which the session's keys expire, 0 for never (default for a new session: 1800); given for an existing session, it replaces the stored TTL."
    )
    var ttl: Double?

    @Option(
        help:
            "Failed attempts of this step (errors, blamed crashes) before it is dead-lettered (1-1000; default: the agent's or the worker's --max-attempts)."
    )
    var maxAttempts: Int?

    @Flag(help: "Follow the session's events until this step finishes.")
    var wait = false

    @Flag(help: "Print JSON (one object per line with --wait).")
    var json = false

    func validate() throws {
        if let session { _ = try parseSessionID(session, flag: "--session") }
        if let agent, AgentRegistry.known()[agent] == nil {
            throw ValidationError("--agent '\(agent)' is unknown: use one of \(AgentRegistry.known().names.joined(separator: ", "))")
        }
        guard maxInputBytes > 0 else { throw ValidationError("--max-input-bytes must be positive") }
        if let ttl { _ = try ttlDuration(ttl) }
        if let maxAttempts, !(1...1000).contains(maxAttempts) {
            throw ValidationError("--max-attempts must be 1-1000, got \(maxAttempts)")
        }
        if JSONArgument.readsStandardInput(input), let optionsDocument, JSONArgument.readsStandardInput(optionsDocument) {
            throw ValidationError("--input - and --options - both read standard input: give one of them as @path or inline")
        }
        if let owner {
            do { try Submission.validateOwner(owner) } catch { throw ValidationError("--owner: \(error.message)") }
        }
        let size = try parsedInput().jsonString.utf8.count
        guard size <= maxInputBytes else {
            throw ValidationError(
                "--input is \(size) bytes, over the limit of \(maxInputBytes) bytes: send less, or raise --max-input-bytes")
        }
        _ = try parsedOptions()
        if let idempotencyKey, idempotencyKey.isEmpty || idempotencyKey.utf8.count > 200 {
            throw ValidationError("--idempotency-key must be 1-200 bytes")
        }
    }

    func ttlDuration(_ value: Double) throws -> Duration {
        let d = try seconds(value, flag: "--ttl")
        guard d == .zero || (d >= .seconds(1) && d <= .seconds(30 * 86_400)) else {
            throw ValidationError("--ttl must be 0 (never expire) or 1 to 2592000 seconds, got \(value)")
        }
        return d
    }

    /// The input, inline or read from a file or stdin (read once; reading stops at 4 x
    /// --max-input-bytes, room for formatting; the compact JSON must fit --max-input-bytes).
    func parsedInput() throws -> JSONValue {
        try JSONArgument.parse(
            input, flag: "--input", rawLimit: maxInputBytes > Int.max / 4 ? Int.max : maxInputBytes * 4,
            hint: " (quote strings: --input '\"text\"')",
            limitHint: "send less, or raise --max-input-bytes (a file or stdin may have up to 4 times --max-input-bytes for formatting)")
    }

    /// The session options: --options, then each --option pair over it; checked against the
    /// dispatcher's limits (a JSON object, keys not empty, at most 64 KiB).
    func parsedOptions() throws -> JSONValue? {
        guard optionsDocument != nil || !options.isEmpty else { return nil }
        let maxBytes = Dispatcher.Configuration().maxOptionsBytes
        var o: [String: JSONValue] = [:]
        if let optionsDocument {
            let document = try JSONArgument.parse(
                optionsDocument, flag: "--options", rawLimit: maxBytes * 4, limitHint: "session options may have at most \(maxBytes) bytes")
            guard let object = document.objectValue else {
                throw ValidationError("--options must be a JSON object, like '{\"model\":\"small\"}'")
            }
            o = object
        }
        for pair in options {
            guard let eq = pair.firstIndex(of: "="), eq != pair.startIndex else {
                // Not echoed: a malformed option may be a credential pasted without its key.
                throw ValidationError(
                    "--option must look like key=value, e.g. --option model=small (got \(pair.count) characters without a key)")
            }
            let value = String(pair[pair.index(after: eq)...])
            o[String(pair[..<eq])] = (try? JSONValue(parsing: value)) ?? .string(value)
        }
        do { try Submission.validateOptions(.object(o), maxBytes: maxBytes) } catch {
            throw ValidationError("\(optionsDocument == nil ? "--option" : "--options/--option"): \(error.message)")
        }
        return .object(o)
    }

    func run() async throws {
        let logger = connection.makeLogger()
        let conn = try await connection.connect(name: "stepwise:submit", logger: logger)
        let sealer = connection.makeSealer()
        let dispatcher = Dispatcher(
            connection: conn, keys: connection.keys, agents: .known(), configuration: .init(maxInputBytes: maxInputBytes),
            sealer: sealer)
        let sessionID =
            try session.map { try parseSessionID($0, flag: "--session") }
            ?? SessionID(String(UUID().uuidString.prefix(13)).lowercased())
        let receipt = try await reportingFailures {
            try await dispatcher.submit(
                Submission(
                    session: sessionID, agent: agent, owner: owner, input: try parsedInput(), options: try parsedOptions(),
                    idempotencyKey: idempotencyKey, ttl: try ttl.map(ttlDuration), maxAttempts: maxAttempts,
                    asOperator: asOperator))
        }
        if json {
            try output(
                JSONValue.object([
                    "job": .string(receipt.jobID), "session": .string(sessionID.rawValue), "enqueued": .bool(receipt.enqueued),
                ]).jsonString)
        } else {
            try output("\(receipt.enqueued ? "accepted" : "duplicate of") job \(receipt.jobID) (session \(sessionID))")
        }
        guard wait else { return }
        let store = SessionStore(connection: conn, keys: connection.keys, sealer: sealer)
        var failed = false
        try await reportingFailures {
            try await follow(store: store, session: sessionID, from: "0", json: json) { event in
                if event.type == "session.cancelled" {
                    failed = true
                    return true
                }
                guard event.jobID == receipt.jobID, event.isStepEnd || event.type == "step.dead" else { return false }
                failed = event.type != "step.completed"
                return true
            }
        }
        if failed { throw ExitCode.failure }
    }
}

/// Prints a session's events from `from` until `stop` says so, or (when `stop` never does)
/// until the session is settled with nothing queued.
func follow(
    store: SessionStore, session: SessionID, from: String, json: Bool,
    stop: (StepEvent) -> Bool = { _ in false }
) async throws {
    var last = from
    while true {
        try Console.checkStdout()
        let events = try await store.events(of: session, after: last, count: 200, block: .seconds(1))
        for event in events {
            last = event.id
            try output(json ? event.json.jsonString : describe(event))
            if stop(event) { return }
        }
        if events.isEmpty {
            guard let snapshot = try await store.session(session) else {
                throw StepwiseError(.sessionNotFound, "session \(session) does not exist (or expired)")
            }
            // A failed session with steps queued is blocked by a dead letter: nothing runs until
            // someone retries or purges it, so a watch ends there too.
            if snapshot.status.isSettled && (snapshot.queued == 0 || snapshot.status == .failed || snapshot.status == .cancelled) {
                // Drain anything written between the read and the status check, then stop.
                let tail = try await store.events(of: session, after: last, count: 1000)
                for event in tail { try output(json ? event.json.jsonString : describe(event)) }
                return
            }
        }
    }
}

func describe(_ e: StepEvent) -> String {
    var line = "\(formatTime(e.time))  \(e.type.padding(toLength: 17, withPad: " ", startingAt: 0)) step \(e.step)"
    if e.attempt > 1 { line += " (attempt \(e.attempt))" }
    if let m = e.fields["message"] { line += "  \(m)" }
    if let o = e.fields["outcome"] { line += "  outcome=\(o)" }
    // Streamed model text (the llm agent's `tokens` events) is shown as it arrives.
    if e.type == "step.progress", let d = e.fields["data"], let text = (try? JSONValue(parsing: d))?["text"]?.stringValue {
        line += "  \(JSONValue.string(text.count > 200 ? String(text.prefix(200)) + "…" : text).jsonString)"
    }
    if let d = e.fields["data"], !d.isEmpty, d != "null", e.type != "step.progress" {
        line += "  \(d.count > 200 ? String(d.prefix(200)) + "…" : d)"
    }
    if let r = e.fields["reason"] { line += "  reason=\(r)" }
    if let r = e.fields["error"] { line += "  error=\(r.count > 200 ? String(r.prefix(200)) + "…" : r)" }
    if let r = e.fields["delay"] { line += "  retry in \(r) ms" }
    return line
}
