import Logging

/// An agent: code that advances a session by one step.
///
/// A worker calls ``step(state:input:context:)`` with the session's current state document and
/// the step's input, and commits the returned state atomically. The worker may run a step again
/// after a crash (at-least-once execution), so side effects outside the returned state should
/// use ``StepContext/idempotencyKey``; the returned state is applied exactly once.
public protocol Agent: Sendable {
    /// The name sessions use to pick this agent (`--agent NAME`).
    var name: String { get }

    /// The state document of a new session. The default is an empty object.
    func initialState(options: JSONValue) -> JSONValue

    /// How many failed attempts (thrown errors, and crashes of its worker blamed on it) a step of
    /// this agent may have before it is dead-lettered;
    /// `nil` (the default) uses the worker's `--max-attempts`. A submit can override both.
    var maxAttempts: Int? { get }

    /// Runs one step.
    ///
    /// - Parameters:
    ///   - state: the session's state after the previous step.
    ///   - input: this step's input.
    ///   - context: progress reporting, cancellation, identity of the step.
    /// - Returns: the new state and what happens next.
    /// - Throws: any error fails this attempt: the worker retries the step with exponential
    ///   backoff and jitter, and dead-letters it after the last attempt. To fail the session
    ///   without retries, return ``StepOutcome/fail(_:)`` instead.
    func step(state: JSONValue, input: JSONValue, context: StepContext) async throws -> StepResult
}

extension Agent {
    public func initialState(options: JSONValue) -> JSONValue { .object([:]) }
    public var maxAttempts: Int? { nil }
}

/// What a step returns: the session's new state and what happens next.
public struct StepResult: Sendable, Hashable {
    /// The new state document, written at version + 1.
    public var state: JSONValue
    /// What happens next.
    public var outcome: StepOutcome
    /// With ``StepOutcome/waitForInput``: what the step answered (a chat's reply), carried as the
    /// `data` of its `step.completed` event; `nil` leaves it empty. Ignored for other outcomes,
    /// which carry their own payload.
    public var reply: JSONValue?

    public init(state: JSONValue, outcome: StepOutcome, reply: JSONValue? = nil) {
        self.state = state
        self.outcome = outcome
        self.reply = reply
    }
}

/// What happens after a step commits.
public enum StepOutcome: Sendable, Hashable {
    /// Run another step with this input, before any step submitted meanwhile.
    case next(JSONValue)
    /// Wait for the user's next submit (status `waiting`).
    case waitForInput
    /// Finished with a result (status `done`). A later submit reopens the session.
    case done(JSONValue)
    /// The agent gave up with a reason (status `failed`).
    case fail(String)
}

/// What a step can see and do besides its state and input.
public struct StepContext: Sendable {
    public var sessionID: SessionID
    public var jobID: String
    /// The step's ordinal among the session's applied steps (1-based).
    public var step: Int
    /// 1 on first delivery, higher when the step runs again after an error or a crash.
    public var attempt: Int
    /// The session's free-form settings (model, temperature, ...).
    public var options: JSONValue
    /// A logger with the session, job and step in its metadata.
    public var logger: Logger
    let emitter: @Sendable (String, JSONValue) async throws -> Void

    /// A key that is the same for every attempt of this job and different for every other job,
    /// for ever: the job id, whose number comes from a pool-wide counter that never goes back
    /// (not after `dead purge`, nor when a session id is created again). It only repeats if
    /// Redis itself loses that counter (a restart without persistence, or `FLUSHALL`).
    ///
    /// Pass it to external APIs that de-duplicate requests so a retried step does not act twice.
    public var idempotencyKey: String { jobID }

    /// Creates a context. Workers make these; tests of an agent can too.
    public init(
        sessionID: SessionID, jobID: String, step: Int, attempt: Int, options: JSONValue, logger: Logger,
        emitter: @escaping @Sendable (String, JSONValue) async throws -> Void
    ) {
        self.sessionID = sessionID
        self.jobID = jobID
        self.step = step
        self.attempt = attempt
        self.options = options
        self.logger = logger
        self.emitter = emitter
    }

    /// Publishes a `step.progress` event on the session's stream at once.
    ///
    /// - Parameters:
    ///   - message: a short human-readable line.
    ///   - data: any JSON detail for a UI.
    public func progress(_ message: String, data: JSONValue = .null) async throws {
        try await emitter(message, data)
    }

    /// Throws `CancellationError` when the step was cancelled; call it between units of work.
    public func checkCancellation() throws { try Task.checkCancellation() }
}

/// The agents a worker can run, by name.
public struct AgentRegistry: Sendable {
    private var agents: [String: any Agent] = [:]

    /// Creates a registry holding `agents`.
    public init(_ agents: [any Agent] = []) {
        for a in agents { register(a) }
    }

    /// Adds or replaces an agent.
    public mutating func register(_ agent: any Agent) { agents[agent.name] = agent }

    /// The agent with that name.
    public subscript(name: String) -> (any Agent)? { agents[name] }

    /// All names, sorted.
    public var names: [String] { agents.keys.sorted() }
}
