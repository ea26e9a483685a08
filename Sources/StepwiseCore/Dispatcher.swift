import Foundation
import StepwiseRedis
import Synchronization

/// One step to submit.
public struct Submission: Sendable, Hashable {
    public var session: SessionID
    /// The agent; required when the session is new, checked against the session otherwise.
    public var agent: String?
    /// Who submits: recorded as the owner of a new session. A session that has an owner takes
    /// submits only from that owner (a submit without an owner is refused too) unless
    /// ``asOperator`` is set; a refused submit changes nothing (neither TTL nor options).
    public var owner: String?
    /// An operator's submit (the `stepwise` CLI with `--as-operator`): skips the owner check.
    public var asOperator: Bool
    /// The step's input.
    public var input: JSONValue
    /// Per-session settings; replaces the stored ones when given.
    public var options: JSONValue?
    /// A key that makes re-submits return the first job id and enqueue nothing.
    public var idempotencyKey: String?
    /// The session's idle TTL, replacing the stored one (or the dispatcher's default for a new
    /// session); `.zero` keeps the session until it is deleted.
    public var ttl: Duration?
    /// How many failed attempts this step may have before it is dead-lettered, overriding the
    /// agent's and the worker's setting.
    public var maxAttempts: Int?

    public init(
        session: SessionID, agent: String? = nil, owner: String? = nil, input: JSONValue = .null,
        options: JSONValue? = nil, idempotencyKey: String? = nil, ttl: Duration? = nil, maxAttempts: Int? = nil,
        asOperator: Bool = false
    ) {
        self.asOperator = asOperator
        self.session = session
        self.agent = agent
        self.owner = owner
        self.input = input
        self.options = options
        self.idempotencyKey = idempotencyKey
        self.ttl = ttl
        self.maxAttempts = maxAttempts
    }
}

/// Accepts steps: creates sessions, enqueues step jobs and returns at once.
public struct Dispatcher: Sendable {
    /// Limits checked before anything reaches Redis.
    public struct Configuration: Sendable {
        /// Largest accepted input, in bytes of its JSON text.
        public var maxInputBytes: Int
        /// Idle time after which all of a new session's keys expire; `nil` keeps sessions forever.
        public var sessionTTL: Duration?
        /// Approximate cap (`MAXLEN ~`) of each session's event stream, for the events the
        /// dispatcher writes (`session.cancelled`).
        public var eventsMaxLength: Int
        /// Largest accepted session options, in bytes of their JSON text.
        public var maxOptionsBytes: Int

        public init(
            maxInputBytes: Int = 256 * 1024, sessionTTL: Duration? = .seconds(30 * 60), eventsMaxLength: Int = 1000,
            maxOptionsBytes: Int = Submission.defaultMaxOptionsBytes
        ) {
            self.maxInputBytes = maxInputBytes
            self.sessionTTL = sessionTTL
            self.eventsMaxLength = eventsMaxLength
            self.maxOptionsBytes = maxOptionsBytes
        }
    }

    public let connection: RedisConnection
    public let keys: KeySpace
    public let agents: AgentRegistry
    /// The agent names accepted for a new session when ``agents`` does not link them; `nil`
    /// accepts only the linked agents.
    public let agentNames: Set<String>?
    public let configuration: Configuration
    /// The keyring: with one, a new session gets its own data key and every input, option and
    /// initial state is sealed with it; without one, sessions are stored in plain text.
    public let sealer: (any SessionSealer)?
    /// The wrapped data keys of encrypted sessions this dispatcher (or a copy) submitted to, so a
    /// later submit is sealed once with the right key instead of being refused and sent again.
    private let knownKeys = KnownKeys()

    /// Creates a dispatcher.
    ///
    /// - Parameter agents: the agents workers know; used to reject unknown names at submit and to
    ///   build a new session's initial state.
    public init(
        connection: RedisConnection, keys: KeySpace, agents: AgentRegistry, configuration: Configuration = .init(),
        sealer: (any SessionSealer)? = nil
    ) {
        self.connection = connection
        self.keys = keys
        self.agents = agents
        self.agentNames = nil
        self.configuration = configuration
        self.sealer = sealer
    }

    /// Creates a dispatcher that links no agent code: it accepts new sessions for the agents
    /// named in `agentNames`, and the worker builds a new session's initial state on its first step.
    ///
    /// This is what a gateway or an app uses to enqueue steps for agents that run elsewhere.
    public init(
        connection: RedisConnection, keys: KeySpace, agentNames: Set<String>, configuration: Configuration = .init(),
        sealer: (any SessionSealer)? = nil
    ) {
        self.connection = connection
        self.keys = keys
        self.agents = AgentRegistry()
        self.agentNames = agentNames
        self.configuration = configuration
        self.sealer = sealer
    }

    /// Submits one step and returns as soon as Redis accepted it (one round trip).
    ///
    /// - Throws: ``StepwiseError`` for an unknown agent, an oversized input, an invalid owner or
    ///   options (``Submission/validateOwner(_:)``, ``Submission/validateOptions(_:maxBytes:)``), an agent or
    ///   owner mismatch, or a missing session without an agent; ``RedisError`` when Redis is unreachable;
    ///   ``RedisServerError`` with the `OOM` reply when Redis is out of memory.
    public func submit(_ submission: Submission) async throws -> SubmitReceipt {
        try await submit([submission])[0].get()
    }

    /// Submits several steps in one round trip, in order, and returns one result per submission:
    /// its receipt, or the error that rejected it.
    ///
    /// What is atomic: each submission on its own (one script call: the session, the job and its
    /// idempotency key are written together or not at all). The batch is sent as one `MULTI`/`EXEC`
    /// transaction, so no other client's command runs between its submissions, but a submission
    /// rejected by validation (here or in the script) does not undo the others. When Redis refuses
    /// the whole transaction (out of memory), every submission gets that error and none was
    /// enqueued. When the connection fails, every submission that was sent gets the
    /// ``RedisError``: the transaction may or may not have run, so check with
    /// ``SessionStore`` or re-submit with an idempotency key.
    ///
    /// With a ``sealer``, a submission to a session this dispatcher has no key for goes out sealed
    /// with a fresh data key; when the session already exists, the script writes nothing and
    /// answers its stored key, and those submissions are sealed again and sent in a second round
    /// trip, still in order.
    public func submit(_ submissions: [Submission]) async -> [Result<SubmitReceipt, any Error>] {
        let now = Self.nowMillis()
        var results = [Result<SubmitReceipt, any Error>?](repeating: nil, count: submissions.count)
        var prepared: [Int: ScriptCalls.SubmitArguments] = [:]
        for (i, s) in submissions.enumerated() {
            do {
                prepared[i] = try arguments(for: s)
            } catch {
                results[i] = .failure(error)
            }
        }
        var pending = prepared.keys.sorted()
        // The data key each session's submissions of this batch are sealed with.
        var batchKeys: [String: BatchKey] = [:]
        var keyErrors: [String: any Error] = [:]
        for _ in 0..<4 where !pending.isEmpty {
            var calls: [ScriptCall] = []
            var sent: [Int] = []
            for i in pending {
                guard var a = prepared[i] else { continue }
                let sid = a.session.rawValue
                if let error = keyErrors[sid] {
                    results[i] = .failure(error)
                    continue
                }
                do {
                    if let sealer {
                        let key =
                            try batchKeys[sid] ?? knownKey(a.session, sealer: sealer)
                            ?? BatchKey(cipher: try sealer.makeKey(for: a.session), fresh: true)
                        batchKeys[sid] = key
                        if let cipher = key.cipher {
                            a = try Self.sealed(a, with: cipher)
                            a.freshKey = key.fresh
                        }
                    }
                    calls.append(scripts.submit(a, now: now))
                    sent.append(i)
                } catch {
                    results[i] = .failure(error)
                }
            }
            pending = []
            guard !calls.isEmpty else { break }
            do {
                let script = Scripts.submit
                let replies = try await connection.evalScriptPipelined(script, calls: calls.map { ($0.keys, $0.arguments) })
                var rekeyed: Set<String> = []
                for (i, reply) in zip(sent, replies) {
                    guard let stored = Self.storedKey(in: reply), let session = prepared[i]?.session else {
                        results[i] = Self.receipt(from: reply)
                        if case .success = results[i], let sid = prepared[i]?.session.rawValue,
                            let wrapped = batchKeys[sid]?.cipher?.wrappedKey
                        {
                            knownKeys.remember(wrapped, for: sid)
                        }
                        continue
                    }
                    knownKeys.forget(session.rawValue)
                    pending.append(i)
                    guard rekeyed.insert(session.rawValue).inserted else { continue }
                    do {
                        if stored == "-" {
                            batchKeys[session.rawValue] = BatchKey(cipher: try sealer?.makeKey(for: session), fresh: true)
                        } else {
                            let cipher = try SealedText.cipher(sealer, session: session, wrappedKey: stored)
                            batchKeys[session.rawValue] = BatchKey(cipher: cipher, fresh: false)
                        }
                    } catch {
                        keyErrors[session.rawValue] = error
                    }
                }
            } catch {
                for i in sent { results[i] = .failure(error) }
            }
        }
        for i in pending where results[i] == nil {
            results[i] = .failure(StepwiseError(.unexpectedReply, "the session's data key kept changing during the submit: submit again"))
        }
        return results.map { $0 ?? .failure(StepwiseError(.unexpectedReply, "no reply for a submission")) }
    }

    /// The key a submit to `session` used last, if this dispatcher knows one that opens.
    private func knownKey(_ session: SessionID, sealer: any SessionSealer) -> BatchKey? {
        guard let wrapped = knownKeys.wrappedKey(of: session.rawValue),
            let cipher = try? sealer.cipher(for: session, wrappedKey: wrapped)
        else { return nil }
        return BatchKey(cipher: cipher, fresh: false)
    }

    /// Session id → wrapped data key, shared by copies of a dispatcher. A stale entry (a
    /// re-created, forgotten or rewrapped session) costs one refused submit, as no entry does:
    /// the script answers the stored key and the submission is sealed again.
    private final class KnownKeys: Sendable {
        private let keys = Mutex<[String: String]>([:])
        /// Past this many sessions the map starts over (a cache, not a registry).
        static let limit = 100_000

        func wrappedKey(of session: String) -> String? { keys.withLock { $0[session] } }

        func remember(_ wrapped: String, for session: String) {
            keys.withLock { k in
                if k.count >= Self.limit { k.removeAll(keepingCapacity: true) }
                k[session] = wrapped
            }
        }

        func forget(_ session: String) { _ = keys.withLock { $0.removeValue(forKey: session) } }
    }

    /// A session's data key within one submit batch: `cipher` nil for a plain session.
    private struct BatchKey {
        var cipher: (any SessionCipher)?
        var fresh: Bool
    }

    /// The stored key of a `{'', 2, dk}` reply (the submit was not applied: seal with it and send again).
    private static func storedKey(in reply: RESPValue) -> String? {
        guard let parts = reply.array, parts.count == 3, parts[1].int == 2 else { return nil }
        return parts[2].string ?? ""
    }

    /// The submission's input, options and initial state sealed with `cipher`.
    private static func sealed(_ plain: ScriptCalls.SubmitArguments, with cipher: any SessionCipher) throws
        -> ScriptCalls.SubmitArguments
    {
        var a = plain
        a.input = try cipher.seal(plain.input, as: .input)
        if let options = plain.options { a.options = try cipher.seal(options, as: .options) }
        if plain.agent != nil { a.initialState = try cipher.seal(plain.initialState, as: .state) }
        a.wrappedKey = cipher.wrappedKey
        return a
    }

    private static func receipt(from reply: RESPValue) -> Result<SubmitReceipt, any Error> {
        if case .error(let message) = reply { return .failure(ScriptCalls.mapError(message)) }
        guard let parts = reply.array, parts.count == 2, let jid = parts[0].string, let flag = parts[1].int else {
            return .failure(StepwiseError(.unexpectedReply, "submit script returned \(reply)"))
        }
        return .success(SubmitReceipt(jobID: jid, enqueued: flag == 1))
    }

    private var scripts: ScriptCalls { ScriptCalls(keys: keys, eventsMaxLength: configuration.eventsMaxLength) }

    private func arguments(for s: Submission) throws -> ScriptCalls.SubmitArguments {
        try s.validateOwnerAndOptions(maxOptionsBytes: configuration.maxOptionsBytes)
        var initialState = JSONValue.object([:]).jsonString
        if let name = s.agent {
            if let agent = agents[name] {
                initialState = agent.initialState(options: s.options ?? .object([:])).jsonString
            } else if let names = agentNames, names.contains(name) {
                initialState = ""  // the worker builds it on the session's first step
            } else {
                let known = (agentNames.map { Array($0) } ?? agents.names).sorted()
                throw StepwiseError(.unknownAgent, "unknown agent '\(name)': known agents are \(known.joined(separator: ", "))")
            }
        }
        let input = s.input.jsonString
        guard input.utf8.count <= configuration.maxInputBytes else {
            throw StepwiseError(
                .inputTooLarge,
                "input is \(input.utf8.count) bytes, over the limit of \(configuration.maxInputBytes) bytes: send less, or raise --max-input-bytes"
            )
        }
        if let key = s.idempotencyKey, key.isEmpty || key.utf8.count > 200 {
            throw StepwiseError(.invalidConfiguration, "idempotency key must be 1-200 bytes")
        }
        if let n = s.maxAttempts, !(1...1000).contains(n) {
            throw StepwiseError(.invalidConfiguration, "max attempts \(n) is out of range: use 1-1000")
        }
        return ScriptCalls.SubmitArguments(
            session: s.session, agent: s.agent, owner: s.owner, options: s.options?.jsonString, input: input,
            idempotencyKey: s.idempotencyKey, ttlMilliseconds: try s.ttl.map { try Self.ttlMilliseconds($0) },
            initialState: initialState, maxAttempts: s.maxAttempts,
            defaultTTLMilliseconds: configuration.sessionTTL.map { $0.milliseconds } ?? 0, asOperator: s.asOperator)
    }

    /// A TTL in whole milliseconds: zero (no expiry) or 1 s to 30 days.
    static func ttlMilliseconds(_ ttl: Duration) throws(StepwiseError) -> Int64 {
        let ms = ttl.milliseconds
        guard ms == 0 || (1000...30 * 86_400_000).contains(ms) else {
            throw StepwiseError(.invalidConfiguration, "session TTL must be 0 (never expire) or 1 s to 30 days")
        }
        return ms
    }

    /// Cancels a session: queued steps are dropped, a running step is cancelled within a second
    /// by the worker that runs it, and later submits to the session are rejected. One round trip.
    ///
    /// - Returns: how many queued steps were dropped and the job that was running (if any), or
    ///   `nil` when the session was already cancelled.
    /// - Throws: ``StepwiseError`` with ``StepwiseError/Code/sessionNotFound`` when there is no such session.
    public func cancel(_ id: SessionID, reason: String) async throws -> (dropped: Int, running: String?)? {
        let reply = try await connection.run(scripts.cancel(session: id, reason: reason, now: Self.nowMillis()))
        guard let p = reply.array, p.count == 3, let done = p[0].int else {
            throw StepwiseError(.unexpectedReply, "cancel script returned \(reply)")
        }
        guard done == 1 else { return nil }
        let running = p[2].string ?? ""
        return (p[1].int ?? 0, running.isEmpty ? nil : running)
    }

    /// Refreshes a session's idle expiry now (a UI heartbeat), optionally with a new TTL.
    ///
    /// - Returns: when the session's keys now expire (ms since 1970), or `nil` when it never expires.
    public func touch(_ id: SessionID, ttl: Duration? = nil) async throws -> Int64? {
        let ms = try ttl.map { try Self.ttlMilliseconds($0) }
        let reply = try await connection.run(scripts.touch(session: id, now: Self.nowMillis(), ttlMilliseconds: ms))
        return reply.string.flatMap { Int64($0) }
    }

    /// Forgets a session (crypto-shredding): deletes its data key with all of its keys. Sealed
    /// copies of its data that remain anywhere (the AOF, replicas) can no longer be opened; for
    /// backups, see docs/SECURITY.md. One round trip.
    ///
    /// - Parameters:
    ///   - owner: who asks: a session with an owner is forgotten only for that owner, unless
    ///   - asOperator: is set (the `stepwise forget` CLI).
    /// - Returns: whether the session was encrypted, or `nil` when there is no such session.
    /// - Throws: ``StepwiseError`` ``StepwiseError/Code/notOwner`` for another owner's session.
    public func forget(_ id: SessionID, owner: String? = nil, asOperator: Bool = false) async throws -> ForgetReceipt? {
        let reply = try await connection.run(scripts.forget(session: id, owner: owner, asOperator: asOperator))
        guard let p = reply.array, p.count == 2, let done = p[0].int else {
            throw StepwiseError(.unexpectedReply, "forget script returned \(reply)")
        }
        guard done == 1 else { return nil }
        return ForgetReceipt(encrypted: p[1].int == 1)
    }

    static func nowMillis() -> Int64 { Int64((Date().timeIntervalSince1970 * 1000).rounded()) }
}

/// What ``Dispatcher/forget(_:owner:asOperator:)`` did.
public struct ForgetReceipt: Sendable, Hashable {
    /// The session had a data key, now destroyed: its sealed data can no longer be opened. A
    /// plain session's keys were deleted, but copies in the AOF, replicas and backups stay readable.
    public var encrypted: Bool
}

extension Array where Element == Result<SubmitReceipt, any Error> {
    /// The receipts, when every submission was accepted; otherwise throws the first error.
    public func receipts() throws -> [SubmitReceipt] { try map { try $0.get() } }
}
