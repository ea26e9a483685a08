import StepwiseRedis

/// A step that ran out of attempts (or could never run) and now blocks its session.
///
/// A dead letter stays at the head of its session, which is `failed` and runs nothing more until
/// the dead letter is retried or purged, so a session's steps never apply out of order. It lives
/// as long as its session (the idle TTL).
public struct DeadLetter: Sendable, Hashable {
    public var jobID: String
    public var session: String
    public var agent: String
    /// Why it was dead-lettered: `attempts exhausted`, `poison`, `invalid job` or `invalid result`.
    public var reason: String
    /// The last error, as text.
    public var error: String
    /// Deliveries made.
    public var attempts: Int
    /// When it was dead-lettered, milliseconds since 1970.
    public var time: Int64
    /// The step's input, as stored.
    public var input: String
    /// Steps queued behind it in its session.
    public var heldSteps: Int

    /// The JSON form printed by `stepwise dead list|show --json`.
    public var json: JSONValue {
        [
            "job": .string(jobID), "session": .string(session), "agent": .string(agent), "reason": .string(reason),
            "error": .string(error), "attempts": .int(attempts), "time": .int(time),
            "input": (try? JSONValue(parsing: input)) ?? .string(input), "held": .int(heldSteps),
        ]
    }
}

/// Lists, inspects, retries and purges dead letters (`stepwise dead ...`).
public struct DeadLetterQueue: Sendable {
    public let connection: RedisConnection
    public let keys: KeySpace
    /// Cap of each session's event stream for the events these actions append.
    public var eventsMaxLength: Int
    /// The keyring that opens an encrypted session's input and error.
    public let sealer: (any SessionSealer)?

    public init(connection: RedisConnection, keys: KeySpace, eventsMaxLength: Int = 1000, sealer: (any SessionSealer)? = nil) {
        self.connection = connection
        self.keys = keys
        self.eventsMaxLength = eventsMaxLength
        self.sealer = sealer
    }

    /// Dead letters, newest first (at most `limit`). Entries whose session expired meanwhile are skipped.
    public func list(limit: Int = 100) async throws -> [DeadLetter] {
        let reply = try await connection.send(["ZREVRANGE", RedisArgument(keys.dead), 0, RedisArgument(max(0, limit - 1))])
            .throwingServerError()
        let ids = (reply.array ?? []).compactMap(\.string).compactMap { try? SessionID($0) }
        var letters: [DeadLetter] = []
        for id in ids {
            if let letter = try await letter(of: id) { letters.append(letter) }
        }
        return letters
    }

    /// The dead letter with this job id, or `nil`.
    public func show(jobID: String) async throws -> DeadLetter? {
        guard let sid = jobID.split(separator: ":").first, let id = try? SessionID(String(sid)) else { return nil }
        guard let letter = try await letter(of: id), letter.jobID == jobID else { return nil }
        return letter
    }

    /// Clears the dead letter and runs the step again from attempt 1; the session's held steps follow.
    ///
    /// - Throws: ``StepwiseError`` with ``StepwiseError/Code/notDeadLetter`` when it is not a dead letter.
    public func retry(jobID: String) async throws { try await act(jobID: jobID, action: .retry) }

    /// Discards the dead step (it is never applied) and releases the session's next step.
    ///
    /// - Throws: ``StepwiseError`` with ``StepwiseError/Code/notDeadLetter`` when it is not a dead letter.
    public func purge(jobID: String) async throws { try await act(jobID: jobID, action: .purge) }

    private func act(jobID: String, action: ScriptCalls.DeadLetterAction) async throws {
        let call = ScriptCalls(keys: keys, eventsMaxLength: eventsMaxLength).deadLetter(
            jobID: jobID, action: action, now: Dispatcher.nowMillis())
        _ = try await connection.run(call)
    }

    private func letter(of id: SessionID) async throws -> DeadLetter? {
        let replies = try await connection.pipeline([
            [
                "HMGET", RedisArgument(keys.session(id)), "blocked", "agent", "dead_reason", "dead_error", "dead_attempts",
                "dead_at", "dk",
            ],
            ["LLEN", RedisArgument(keys.inbox(id))],
        ])
        for r in replies { try r.throwingServerError() }
        guard let f = replies[0].array, f.count == 7, let jid = f[0].string, !jid.isEmpty else { return nil }
        let seq = String(jid.split(separator: ":").last ?? "")
        let cipher = try SealedText.cipher(sealer, session: id, wrappedKey: f[6].string)
        let sealedInput = try await connection.send(["HGET", RedisArgument(keys.jobs(id)), RedisArgument(seq)]).string ?? ""
        let input = try SealedText.open(sealedInput, as: .input, with: cipher, session: id.rawValue)
        let error = try SealedText.open(f[3].string ?? "", as: .deadError, with: cipher, session: id.rawValue)
        return DeadLetter(
            jobID: jid, session: id.rawValue, agent: f[1].string ?? "", reason: f[2].string ?? "", error: error,
            attempts: f[4].int ?? 0, time: Int64(f[5].int ?? 0), input: input, heldSteps: max(0, (replies[1].int ?? 1) - 1))
    }
}
