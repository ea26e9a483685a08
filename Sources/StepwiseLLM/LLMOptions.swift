import StepwiseCore

/// The per-session settings of the `llm` agent and the model-written quiz, read from the
/// session's options (`--option key=value`).
///
/// | key | default | |
/// |---|---|---|
/// | `base_url` | the worker's `--llm-base-url` | must be that one or one of `--llm-allow-base-url` |
/// | `model` | the worker's `--llm-model` | required when the worker has none |
/// | `temperature` | the endpoint's | 0-2 |
/// | `system` | none | the system prompt (at most 32 KiB) |
/// | `max_tokens` | the endpoint's | 1-1000000 |
/// | `max_tool_rounds` | 4 | 0-20: requests answered with tool calls per step |
/// | `step_timeout` | 120 | 1-3600 seconds for the whole step (every request, retry and tool) |
/// | `tools` | every tool of the worker | a list of tool names to offer |
/// | `response_format` (quiz) | `json_schema` | `json_schema`, `json_object`, `json_object_schema` (llama.cpp) or `none` |
/// | `repairs` (quiz) | 2 | 0-5: re-asks after output of the wrong shape |
public struct LLMOptions: Sendable, Hashable {
    public var baseURL: String
    public var model: String
    public var temperature: Double?
    public var system: String?
    public var maxTokens: Int?
    public var maxToolRounds: Int
    public var stepTimeout: Duration
    public var tools: [String]?
    public var responseFormat: String
    public var repairs: Int

    /// Reads and checks `options` against what the worker allows.
    ///
    /// - Throws: ``LLMError`` (``LLMError/Code/invalidOptions`` or ``LLMError/Code/notAllowed``)
    ///   naming the option and what it must be.
    public init(options: JSONValue, configuration: LLMConfiguration) throws {
        func bad(_ message: String) -> LLMError { LLMError(.invalidOptions, message) }
        let o = options.objectValue ?? [:]
        let allowed = try ([configuration.baseURL] + configuration.allowedBaseURLs).map(LLMConfiguration.normalized(baseURL:))
        if let raw = o["base_url"] {
            guard let s = raw.stringValue else { throw bad("option base_url must be a string") }
            let url = try LLMConfiguration.normalized(baseURL: s)
            guard allowed.contains(url) else {
                throw LLMError(
                    .notAllowed,
                    "option base_url is not one this worker may use (its --llm-base-url or an --llm-allow-base-url)")
            }
            baseURL = url
        } else {
            baseURL = allowed[0]
        }
        if let raw = o["model"] {
            guard let s = raw.stringValue, !s.isEmpty, s.utf8.count <= 256 else { throw bad("option model must be a name of 1-256 bytes") }
            model = s
        } else if let m = configuration.model {
            model = m
        } else {
            throw bad("no model: set the option model (--option model=NAME) or start the worker with --llm-model")
        }
        if let raw = o["temperature"] {
            guard let t = raw.doubleValue, (0...2).contains(t) else { throw bad("option temperature must be a number 0-2") }
            temperature = t
        }
        if let raw = o["system"] {
            guard let s = raw.stringValue, s.utf8.count <= 32_768 else { throw bad("option system must be a string of at most 32 KiB") }
            system = s.isEmpty ? nil : s
        }
        if let raw = o["max_tokens"] {
            guard let n = raw.intValue, (1...1_000_000).contains(n) else { throw bad("option max_tokens must be 1-1000000") }
            maxTokens = n
        }
        maxToolRounds = 4
        if let raw = o["max_tool_rounds"] {
            guard let n = raw.intValue, (0...20).contains(n) else { throw bad("option max_tool_rounds must be 0-20") }
            maxToolRounds = n
        }
        stepTimeout = .seconds(120)
        if let raw = o["step_timeout"] {
            guard let s = raw.doubleValue, (1...3600).contains(s) else { throw bad("option step_timeout must be 1-3600 seconds") }
            stepTimeout = .milliseconds(Int64(s * 1000))
        }
        if let raw = o["tools"] {
            guard let list = raw.arrayValue?.compactMap(\.stringValue), list.count == raw.arrayValue?.count else {
                throw bad("option tools must be a list of tool names")
            }
            let known = Set(configuration.tools.map(\.name))
            if let unknown = list.first(where: { !known.contains($0) }) {
                throw bad(
                    "option tools names '\(unknown)', which this worker does not have (it has: \(known.sorted().joined(separator: ", ")))")
            }
            tools = list
        }
        responseFormat = "json_schema"
        if let raw = o["response_format"] {
            guard let s = raw.stringValue, ["json_schema", "json_object", "json_object_schema", "none"].contains(s) else {
                throw bad("option response_format must be json_schema, json_object, json_object_schema or none")
            }
            responseFormat = s
        }
        repairs = 2
        if let raw = o["repairs"] {
            guard let n = raw.intValue, (0...5).contains(n) else { throw bad("option repairs must be 0-5") }
            repairs = n
        }
    }
}
