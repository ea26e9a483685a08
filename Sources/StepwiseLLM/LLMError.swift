/// An error of the `llm` agent or its chat-completions client, with an opaque code.
///
/// A step that throws one is retried by its worker (with backoff) and dead-lettered after its last
/// attempt; the error's text goes to the `step.retrying`/`step.dead` event, never the API key.
public struct LLMError: Error, Sendable, CustomStringConvertible {
    /// What went wrong.
    public struct Code: Sendable, Hashable, CustomStringConvertible {
        private enum Base: String, Sendable, Hashable {
            case invalidOptions, notAllowed, missingAPIKey, http, unreachable, rateLimited, serverError, streamInterrupted
            case malformedChunk, timedOut, toolRounds, invalidToolCall, invalidModelOutput
        }
        private let base: Base
        private init(_ base: Base) { self.base = base }

        /// A session option is missing or out of range.
        public static let invalidOptions = Code(.invalidOptions)
        /// The session names a base URL the worker may not send its API key to.
        public static let notAllowed = Code(.notAllowed)
        /// The endpoint refused the request for want of a valid API key (401/403).
        public static let missingAPIKey = Code(.missingAPIKey)
        /// The endpoint answered with a status that is not retried (4xx other than 429).
        public static let http = Code(.http)
        /// The endpoint could not be reached (connect failed) on any attempt.
        public static let unreachable = Code(.unreachable)
        /// 429 after every retry, or a `Retry-After` longer than the client waits.
        public static let rateLimited = Code(.rateLimited)
        /// 5xx after every retry.
        public static let serverError = Code(.serverError)
        /// The connection closed before `data: [DONE]` (retryable: the worker runs the step again).
        public static let streamInterrupted = Code(.streamInterrupted)
        /// A streamed chunk that is not the JSON the protocol promises.
        public static let malformedChunk = Code(.malformedChunk)
        /// The step ran past its `step_timeout`.
        public static let timedOut = Code(.timedOut)
        /// The model still asked for tools after `max_tool_rounds` rounds.
        public static let toolRounds = Code(.toolRounds)
        /// A tool call names no registered tool or carries arguments that are not a JSON object.
        public static let invalidToolCall = Code(.invalidToolCall)
        /// The model's output did not have the shape asked for, even after repair and retries.
        public static let invalidModelOutput = Code(.invalidModelOutput)

        public var description: String { base.rawValue }
    }

    /// What went wrong.
    public var code: Code
    /// A sentence saying what is wrong (never the API key, never a request body).
    public var message: String

    /// Creates an error.
    public init(_ code: Code, _ message: String) {
        self.code = code
        self.message = message
    }

    public var description: String { "\(code): \(message)" }
}
