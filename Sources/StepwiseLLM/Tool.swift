import Logging
import StepwiseCore

/// A function the model may call (OpenAI "tools" of type `function`).
///
/// The `llm` agent offers every registered tool to the model with its ``name``, ``description``
/// and JSON-schema ``parameters``; when the model calls one, the agent runs ``call(arguments:context:)``
/// and feeds the result back within the same step.
///
/// - Important: A step may run more than once (a retry after an error, a crash, a dropped
///   stream), and the model then usually makes the same calls again. A tool with a side effect
///   outside Stepwise must make it at most once per ``ToolContext/idempotencyKey``: pass the key to
///   an API that de-duplicates, or record it with the effect and skip a key seen before.
public protocol Tool: Sendable {
    /// The function name the model calls: 1-64 characters from `a-z A-Z 0-9 _ -`.
    var name: String { get }
    /// What the tool does, for the model.
    var description: String { get }
    /// A JSON schema of the arguments object.
    var parameters: JSONValue { get }
    /// Runs the tool.
    ///
    /// - Parameters:
    ///   - arguments: the model's arguments, parsed (always a JSON object).
    ///   - context: the idempotency key of this call, the step's identity and a logger.
    /// - Returns: the result the model sees (a string is passed as is, anything else as JSON).
    /// - Throws: an error the model is told about (`error: ...`), which does not fail the step;
    ///   `CancellationError` ends the step.
    func call(arguments: JSONValue, context: ToolContext) async throws -> JSONValue
}

/// What a tool call can see.
public struct ToolContext: Sendable {
    /// `<job id>/tool/<n>`: the step's ``StepContext/idempotencyKey`` and the call's index among
    /// the step's tool calls (0, 1, ...). The same for every attempt of the step that makes the same
    /// calls in the same order; never the same for another step.
    public var idempotencyKey: String
    /// The call's index among the step's tool calls.
    public var index: Int
    /// The id the model gave the call.
    public var callID: String
    /// The session.
    public var sessionID: SessionID
    /// The attempt of the step (1 on first delivery).
    public var attempt: Int
    /// A logger with the step's metadata (never log arguments or results: they are session data).
    public var logger: Logger

    /// Creates a context (the agent does; tests of a tool can too).
    public init(idempotencyKey: String, index: Int, callID: String, sessionID: SessionID, attempt: Int, logger: Logger) {
        self.idempotencyKey = idempotencyKey
        self.index = index
        self.callID = callID
        self.sessionID = sessionID
        self.attempt = attempt
        self.logger = logger
    }

    /// The key of the `index`-th tool call of the step with idempotency key `stepKey`.
    public static func idempotencyKey(step stepKey: String, index: Int) -> String { "\(stepKey)/tool/\(index)" }
}

/// A tool's refusal of its arguments, told to the model as `error: <message>`.
public struct ToolError: Error, Sendable, CustomStringConvertible {
    /// What is wrong.
    public var message: String
    /// Creates an error.
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}
