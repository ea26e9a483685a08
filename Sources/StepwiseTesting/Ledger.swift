import StepwiseCore
import StepwiseRedis

/// The ledger check of the fault suite: every accepted step applied exactly once, in submission
/// order, with complete events, and nothing left in flight.
///
/// It reads `counter`/`fault` sessions straight from Redis (no engine code in between):
/// - the session hash's `state` has `inputs` equal to exactly the expected inputs, in order, and
///   `count` equal to their number;
/// - the event stream has exactly one `step.completed` per applied step, with step numbers
///   1...N in order (or only strictly increasing, see ``StepNumbering``), each from a distinct job
///   whose sequence number rises, each preceded by a `step.started` of the same job and attempt;
/// - the session's `steps` field matches the last completed step, and its inbox is empty;
/// - every `<ns>:inflight:*` list is empty (found with `SCAN MATCH`).
///
/// The check returns every problem it finds instead of stopping at the first, so one failed test
/// run shows the whole picture.
public enum Ledger {
    /// How the step numbers of completed steps must run.
    public enum StepNumbering: Sendable {
        /// Exactly 1, 2, ..., N.
        case contiguous
        /// Strictly increasing; gaps allowed (a dead-lettered step may use up a number).
        case increasing
    }

    /// What a ledger check found.
    public struct Report: Sendable, CustomStringConvertible {
        /// Every violation found, one line each; empty when the ledger holds.
        public var problems: [String] = []
        /// Each checked session's whole event stream, for further assertions.
        public var events: [SessionID: [StepEvent]] = [:]
        /// In-flight list name → length, for every list found (empty or not).
        public var inflight: [String: Int] = [:]

        /// Whether the ledger holds.
        public var isClean: Bool { problems.isEmpty }

        public var description: String {
            problems.isEmpty ? "ledger holds" : "ledger broken:\n  " + problems.prefix(40).joined(separator: "\n  ")
        }
    }

    /// Checks the ledger of `sessions` against the inputs each was expected to apply.
    ///
    /// - Parameters:
    ///   - keys: the namespace under test.
    ///   - conn: a connection to the server holding it.
    ///   - sessions: the sessions to check, in report order.
    ///   - expected: the inputs each session must have applied, in order. A session missing here
    ///     is reported as a problem.
    ///   - numbering: how step numbers of completed steps must run (default 1...N).
    ///   - allowFailedSteps: whether `step.failed` events are tolerated (never for plain ledgers).
    ///   - requireEmptyInbox: whether the session's inbox must be empty (everything accepted ran).
    ///   - sealer: the keyring that opens encrypted sessions' state.
    /// - Returns: the report; `report.isClean` when the ledger holds.
    /// - Throws: ``RedisError`` when Redis cannot be read.
    public static func check(
        keys: KeySpace, conn: RedisConnection, sessions: [SessionID], expected: [SessionID: [JSONValue]],
        numbering: StepNumbering = .contiguous, allowFailedSteps: Bool = false, requireEmptyInbox: Bool = true,
        sealer: (any SessionSealer)? = nil
    ) async throws -> Report {
        var report = Report()
        for id in sessions {
            guard let want = expected[id] else {
                report.problems.append("\(id): no expected inputs given to the ledger check")
                continue
            }
            let replies = try await conn.pipeline([
                ["HMGET", RedisArgument(keys.session(id)), "status", "steps", "version", "state", "dk"],
                ["LLEN", RedisArgument(keys.inbox(id))],
                ["XRANGE", RedisArgument(keys.events(id)), "-", "+", "COUNT", 100_000],
            ])
            for r in replies { try r.throwingServerError() }
            let fields = replies[0].array ?? []
            guard fields.count == 5, let storedState = fields[3].string else {
                report.problems.append("\(id): session hash is missing (or has no state)")
                continue
            }
            // An encrypted session's state opens with its data key (`sealer`).
            let stateBytes: [UInt8]
            do {
                let cipher = try SealedText.cipher(sealer, session: id, wrappedKey: fields[4].string)
                stateBytes = Array(try SealedText.open(storedState, as: .state, with: cipher, session: id.rawValue).utf8)
            } catch {
                report.problems.append("\(id): state does not open: \(error)")
                continue
            }
            let events = (replies[2].array ?? []).compactMap { StepEvent(entry: $0) }
            report.events[id] = events
            report.problems += checkState(id, stateBytes: stateBytes, want: want)
            report.problems += checkEvents(
                id, events: events, want: want.count, numbering: numbering, allowFailedSteps: allowFailedSteps)
            let steps = fields[1].int ?? 0
            let lastStep = events.last { $0.type == "step.completed" }?.step ?? 0
            if steps != lastStep {
                report.problems.append("\(id): session field steps is \(steps) but the last step.completed is step \(lastStep)")
            }
            if requireEmptyInbox, let queued = replies[1].int, queued != 0 {
                report.problems.append("\(id): inbox still holds \(queued) job(s)")
            }
        }
        report.inflight = try await inflightLengths(keys: keys, conn: conn)
        for (list, length) in report.inflight.sorted(by: { $0.key < $1.key }) where length != 0 {
            report.problems.append("in-flight list \(list) still holds \(length) job(s)")
        }
        return report
    }

    /// Every `<ns>:inflight:*` list and its length (`SCAN MATCH`, bounded).
    public static func inflightLengths(keys: KeySpace, conn: RedisConnection) async throws -> [String: Int] {
        let names = try await scan(conn: conn, match: keys.prefix + "inflight:*")
        guard !names.isEmpty else { return [:] }
        let lengths = try await conn.pipeline(names.map { ["LLEN", RedisArgument($0)] })
        var result: [String: Int] = [:]
        for (name, length) in zip(names, lengths) { result[name] = try length.throwingServerError().int ?? -1 }
        return result
    }

    /// All key names matching a glob pattern, by `SCAN` (at most 10 000 cursor rounds).
    ///
    /// See <https://redis.io/docs/latest/commands/scan/>. `SCAN` may return a key more than once,
    /// so the result is de-duplicated.
    public static func scan(conn: RedisConnection, match pattern: String) async throws -> [String] {
        var cursor = "0"
        var found = Set<String>()
        for _ in 0..<10_000 {
            let reply = try await conn.send(["SCAN", RedisArgument(cursor), "MATCH", RedisArgument(pattern), "COUNT", 1000])
                .throwingServerError()
            guard let parts = reply.array, parts.count == 2, let next = parts[0].string else {
                throw StepwiseError(.unexpectedReply, "SCAN returned \(reply)")
            }
            for key in parts[1].array ?? [] { if let k = key.string { found.insert(k) } }
            cursor = next
            if cursor == "0" { break }
        }
        return found.sorted()
    }

    private static func checkState(_ id: SessionID, stateBytes: [UInt8], want: [JSONValue]) -> [String] {
        guard let state = try? JSONValue(parsing: stateBytes, what: "state") else {
            return ["\(id): state is not valid JSON: \(String(decoding: stateBytes.prefix(200), as: UTF8.self))"]
        }
        var problems: [String] = []
        let inputs = state["inputs"]?.arrayValue ?? []
        if inputs != want {
            problems.append("\(id): inputs differ from the accepted ones: \(describeDifference(got: inputs, want: want))")
        }
        if state["count"]?.intValue != want.count {
            problems.append("\(id): count is \(state["count"].map(\.jsonString) ?? "missing"), expected \(want.count)")
        }
        return problems
    }

    private static func checkEvents(
        _ id: SessionID, events: [StepEvent], want: Int, numbering: StepNumbering, allowFailedSteps: Bool
    ) -> [String] {
        var problems: [String] = []
        let completed = events.filter { $0.type == "step.completed" }
        if completed.count != want {
            problems.append("\(id): \(completed.count) step.completed events, expected exactly \(want)")
        }
        let steps = completed.map(\.step)
        switch numbering {
        case .contiguous:
            if steps != Array(stride(from: 1, through: want, by: 1)) {
                problems.append("\(id): completed step numbers are \(abbreviated(steps)), expected 1...\(want)")
            }
        case .increasing:
            if zip(steps, steps.dropFirst()).contains(where: { $0 >= $1 }) || steps.contains(where: { $0 < 1 }) {
                problems.append("\(id): completed step numbers are not strictly increasing: \(abbreviated(steps))")
            }
        }
        if !allowFailedSteps {
            let failed = events.filter { $0.type == "step.failed" }
            if !failed.isEmpty {
                problems.append("\(id): \(failed.count) step.failed event(s), first: job \(failed[0].jobID) \(failed[0].fields)")
            }
        }
        var seenJobs = Set<String>()
        var lastSeq = 0
        for (index, event) in events.enumerated() where event.type == "step.completed" {
            let context = "\(id): step.completed of job '\(event.jobID)' (step \(event.step))"
            if event.session != id.rawValue { problems.append("\(context) names session '\(event.session)'") }
            if event.attempt < 1 { problems.append("\(context) has attempt \(event.attempt)") }
            if event.time <= 0 { problems.append("\(context) has no time") }
            if !seenJobs.insert(event.jobID).inserted { problems.append("\(context) is the job's second completion") }
            let seq = event.jobID.split(separator: ":").last.flatMap { Int($0) } ?? 0
            if seq <= lastSeq { problems.append("\(context): job sequence \(seq) does not rise (previous \(lastSeq))") }
            lastSeq = seq
            let started = events[..<index].contains {
                $0.type == "step.started" && $0.jobID == event.jobID && $0.attempt == event.attempt && $0.step == event.step
            }
            if !started { problems.append("\(context) has no step.started of attempt \(event.attempt) before it") }
        }
        return problems
    }

    private static func describeDifference(got: [JSONValue], want: [JSONValue]) -> String {
        let n = got.map { $0["n"].map(\.jsonString) ?? $0.jsonString }
        let w = want.map { $0["n"].map(\.jsonString) ?? $0.jsonString }
        if let i = zip(got, want).enumerated().first(where: { $0.element.0 != $0.element.1 })?.offset {
            return "first difference at index \(i): got \(got[i].jsonString), expected \(want[i].jsonString) "
                + "(n got \(abbreviated(n)), expected \(abbreviated(w)))"
        }
        return "got \(got.count) inputs, expected \(want.count) (n got \(abbreviated(n)), expected \(abbreviated(w)))"
    }

    private static func abbreviated<T>(_ items: [T]) -> String {
        items.count <= 40 ? "\(items)" : "\(Array(items.prefix(20))) … \(Array(items.suffix(10))) (\(items.count) items)"
    }
}
