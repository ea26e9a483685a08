import Foundation
import StepwiseRedis

/// One step to submit.
public struct Submission: Sendable, Hashable {
    public var session: SessionID
    /// The agent; required when the session is new, checked against the session otherwise.
    public var agent: String?
    /// The owner recorded on a new session; when set, a submit to a session with another owner fails.
    public var owner: String?
    /// The step's input.
    public var input: JSONValue
    /// Per-session settings; replaces the stored ones when given.
    public var options: JSONValue?
    /// A key that makes re-submits return the first job id and enqueue nothing.
    public var idempotencyKey: String?

    public init(
        session: SessionID, agent: String? = nil, owner: String? = nil, input: JSONValue = .null,
        options: JSONValue? = nil, idempotencyKey: String? = nil
    ) {
        self.session = session
        self.agent = agent
        self.owner = owner
        self.input = input
        self.options = options
        self.idempotencyKey = idempotencyKey
    }
}

/// Accepts steps: creates sessions, enqueues step jobs and returns at once.
public struct Dispatcher: Sendable {
    /// Limits checked before anything reaches Redis.
    public struct Configuration: Sendable {
        /// Largest accepted input, in bytes of its JSON text.
        public var maxInputBytes: Int
        /// Idle time after which all of a session's keys expire; `nil` keeps sessions forever.
        public var sessionTTL: Duration?

        public init(maxInputBytes: Int = 256 * 1024, sessionTTL: Duration? = .seconds(30 * 60)) {
            self.maxInputBytes = maxInputBytes
            self.sessionTTL = sessionTTL
        }
    }

    public let connection: RedisConnection
    public let keys: KeySpace
    public let agents: AgentRegistry
    public let configuration: Configuration

    /// Creates a dispatcher.
    ///
    /// - Parameter agents: the agents workers know; used to reject unknown names at submit and to
    ///   build a new session's initial state.
    public init(
        connection: RedisConnection, keys: KeySpace, agents: AgentRegistry, configuration: Configuration = .init()
    ) {
        self.connection = connection
        self.keys = keys
        self.agents = agents
        self.configuration = configuration
    }

    /// Submits one step and returns as soon as Redis accepted it (one round trip).
    ///
    /// - Throws: ``StepwiseError`` for an unknown agent, an oversized input, an agent or owner
    ///   mismatch, or a missing session without an agent; ``RedisError`` when Redis is unreachable.
    public func submit(_ submission: Submission) async throws -> SubmitReceipt {
        try await submit([submission])[0]
    }

    /// Submits several steps in one pipelined round trip, in order.
    ///
    /// Validation runs on all of them first, so a bad one rejects the batch before anything is sent.
    public func submit(_ submissions: [Submission]) async throws -> [SubmitReceipt] {
        let now = Self.nowMillis()
        let calls = try submissions.map { s in try call(for: s, now: now) }
        let replies = try await connection.evalScriptPipelined(Scripts.submit, calls: calls)
        return try replies.map { reply in
            if case .error(let message) = reply { throw Self.mapError(message) }
            guard let parts = reply.array, parts.count == 2, let jid = parts[0].string, let flag = parts[1].int else {
                throw StepwiseError(.unexpectedReply, "submit script returned \(reply)")
            }
            return SubmitReceipt(jobID: jid, enqueued: flag == 1)
        }
    }

    private func call(for s: Submission, now: Int64) throws -> (keys: [RedisArgument], arguments: [RedisArgument]) {
        var initialState = JSONValue.object([:])
        if let name = s.agent {
            guard let agent = agents[name] else {
                throw StepwiseError(
                    .unknownAgent, "unknown agent '\(name)': known agents are \(agents.names.joined(separator: ", "))")
            }
            initialState = agent.initialState(options: s.options ?? .object([:]))
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
        let id = s.session
        let ttl = configuration.sessionTTL.map { $0.milliseconds } ?? 0
        return (
            keys: [
                RedisArgument(keys.session(id)), RedisArgument(keys.inbox(id)), RedisArgument(keys.jobs(id)),
                RedisArgument(keys.idempotency(id)), RedisArgument(keys.ready), RedisArgument(keys.sessions),
                RedisArgument(keys.events(id)),
            ],
            arguments: [
                RedisArgument(id.rawValue), RedisArgument(s.agent ?? ""), RedisArgument(s.owner ?? ""),
                RedisArgument(s.options?.jsonString ?? ""), RedisArgument(input),
                RedisArgument(s.idempotencyKey ?? ""), RedisArgument(now), RedisArgument(ttl),
                RedisArgument(initialState.jsonString),
            ]
        )
    }

    static func mapError(_ message: String) -> any Error {
        guard message.hasPrefix("STEPWISE ") else { return RedisServerError(message) }
        let rest = message.dropFirst("STEPWISE ".count)
        let code = rest.prefix(while: { $0 != " " })
        let text = String(rest.dropFirst(code.count + 1))
        switch code {
        case "session_not_found": return StepwiseError(.sessionNotFound, text)
        case "agent_mismatch": return StepwiseError(.agentMismatch, text)
        case "not_owner": return StepwiseError(.notOwner, text)
        default: return StepwiseError(.unexpectedReply, String(rest))
        }
    }

    static func nowMillis() -> Int64 { Int64((Date().timeIntervalSince1970 * 1000).rounded()) }
}
