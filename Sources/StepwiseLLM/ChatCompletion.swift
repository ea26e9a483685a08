import StepwiseCore

/// One function call the model made, assembled from its streamed pieces.
public struct ToolCall: Sendable, Hashable {
    /// Its position in the response (`tool_calls[].index`).
    public var index: Int
    /// The id the model gave it; tool results quote it.
    public var id: String
    /// The function name.
    public var name: String
    /// The arguments as the model wrote them (JSON text, concatenated from every chunk).
    public var arguments: String

    /// The call as the assistant message's `tool_calls` entry.
    public var json: JSONValue {
        ["id": .string(id), "type": "function", "function": ["name": .string(name), "arguments": .string(arguments)]]
    }
}

/// A whole streamed answer.
public struct ChatCompletion: Sendable, Hashable {
    /// The text (empty when the model only called tools).
    public var content: String
    /// The tool calls, in index order.
    public var toolCalls: [ToolCall]
    /// `stop`, `length`, `tool_calls`, `content_filter`, ... (`nil` when the stream had none).
    public var finishReason: String?
    /// The usage chunk's `usage` object, when the endpoint sent one.
    public var usage: JSONValue?
    /// How many chunks (`data:` events before `[DONE]`) made it.
    public var chunks: Int

    /// The answer as an assistant message of the conversation.
    public var message: JSONValue {
        var m: [String: JSONValue] = ["role": "assistant", "content": content.isEmpty && !toolCalls.isEmpty ? .null : .string(content)]
        if !toolCalls.isEmpty { m["tool_calls"] = .array(toolCalls.map(\.json)) }
        return .object(m)
    }
}
