import StepwiseCore

/// One chat-completions request: the conversation and what the model may do.
public struct ChatRequest: Sendable {
    /// The messages, oldest first (the system prompt of the options goes in front of them).
    public var messages: [JSONValue]
    /// The tools offered.
    public var tools: [any Tool]
    /// `tool_choice: "none"`: the model must answer in text (the last round).
    public var forbidTools: Bool
    /// A `response_format` object, or `nil`.
    public var responseFormat: JSONValue?

    /// Creates a request.
    public init(messages: [JSONValue], tools: [any Tool] = [], forbidTools: Bool = false, responseFormat: JSONValue? = nil) {
        self.messages = messages
        self.tools = tools
        self.forbidTools = forbidTools
        self.responseFormat = responseFormat
    }
}

/// What happens while a request runs, for progress events.
public enum ChatStreamEvent: Sendable {
    /// A piece of the answer's text.
    case content(String)
    /// The request failed with this status (nil: no connection) and is tried again after `delay`.
    case retrying(status: Int?, delay: Duration, attempt: Int)
}
