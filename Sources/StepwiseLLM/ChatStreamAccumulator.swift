import StepwiseCore

/// Builds a ``ChatCompletion`` from `chat.completion.chunk` events.
///
/// Follows the streaming protocol: the first delta carries the role, later ones `content` pieces
/// or `tool_calls` pieces keyed by `index` (the first piece of a call has its `id` and `name`,
/// later ones only more `arguments` text), one chunk carries `finish_reason`, and with
/// `stream_options.include_usage` a last chunk has `choices: []` and the `usage`.
public struct ChatStreamAccumulator: Sendable {
    private var content = ""
    private var calls: [Int: ToolCall] = [:]
    private var finishReason: String?
    private var usage: JSONValue?
    private var chunks = 0

    public init() {}

    /// Applies one event's data; returns the content text it added, if any.
    ///
    /// - Throws: ``LLMError`` (``LLMError/Code/malformedChunk``) for data that is not a chunk
    ///   object, and (``LLMError/Code/serverError``) for an `error` object sent mid-stream.
    public mutating func apply(_ data: String) throws -> String? {
        chunks += 1
        let chunk: JSONValue
        do {
            chunk = try JSONValue(parsing: data)
        } catch {
            throw LLMError(.malformedChunk, "streamed chunk \(chunks) is not valid JSON (\(data.utf8.count) bytes)")
        }
        guard chunk.objectValue != nil else { throw LLMError(.malformedChunk, "streamed chunk \(chunks) is not a JSON object") }
        if let error = chunk["error"], error != .null {
            let message = error["message"]?.stringValue ?? "no message"
            throw LLMError(.serverError, "the endpoint reported an error mid-stream: \(message.prefix(300))")
        }
        if let u = chunk["usage"], u.objectValue != nil { usage = u }
        guard let choices = chunk["choices"]?.arrayValue else {
            throw LLMError(.malformedChunk, "streamed chunk \(chunks) has no choices array")
        }
        var added: String?
        for choice in choices where (choice["index"]?.intValue ?? 0) == 0 {
            guard let delta = choice["delta"], delta.objectValue != nil else {
                if let reason = choice["finish_reason"]?.stringValue {
                    finishReason = reason
                    continue
                }
                throw LLMError(.malformedChunk, "streamed chunk \(chunks) has a choice without a delta object")
            }
            if let text = delta["content"]?.stringValue, !text.isEmpty {
                content += text
                added = (added ?? "") + text
            }
            if let pieces = delta["tool_calls"]?.arrayValue {
                for piece in pieces {
                    guard let index = piece["index"]?.intValue, (0..<128).contains(index) else {
                        throw LLMError(.malformedChunk, "streamed chunk \(chunks) has a tool call without a valid index")
                    }
                    var call = calls[index] ?? ToolCall(index: index, id: "", name: "", arguments: "")
                    if let id = piece["id"]?.stringValue, !id.isEmpty { call.id = id }
                    if let name = piece["function"]?["name"]?.stringValue, !name.isEmpty { call.name = name }
                    if let args = piece["function"]?["arguments"]?.stringValue { call.arguments += args }
                    calls[index] = call
                }
            }
            if let reason = choice["finish_reason"]?.stringValue { finishReason = reason }
        }
        return added
    }

    /// The answer so far.
    public var completion: ChatCompletion {
        let ordered = calls.keys.sorted().compactMap { calls[$0] }.map { call -> ToolCall in
            var c = call
            if c.id.isEmpty { c.id = "call_\(c.index)" }
            return c
        }
        return ChatCompletion(content: content, toolCalls: ordered, finishReason: finishReason, usage: usage, chunks: chunks)
    }
}
