import Logging
import StepwiseCore

/// The `llm` agent: a chat with any OpenAI-compatible chat-completions endpoint.
///
/// - State: the conversation, `{"messages": [...], "answer": "<last answer>", "turns": N,
///   "usage": {...}}`; the system prompt (option `system`) is sent in front of it, not stored.
/// - Input of a step: one user message, as a JSON string or `{"message": "..."}`.
/// - A step streams the answer (`step.progress` events `tokens`, coalesced), runs the tools the
///   model calls (events `tool call <name>` and `tool result <name>`) and feeds their results back,
///   up to `max_tool_rounds` rounds, then commits the conversation and waits for the next message;
///   the `step.completed` event carries `{"answer": ...}` (``StepResult/reply``).
/// - Settings: ``LLMOptions``. Errors of the endpoint are retried (``ChatCompletionClient``);
///   what is left throws, and the worker retries the step.
public struct LLMAgent: Agent {
    public let name = "llm"
    /// The worker's endpoint, key and tools; `nil` when the worker has none (its steps then fail,
    /// saying how to start the worker).
    public let configuration: LLMConfiguration?

    /// Creates the agent.
    public init(configuration: LLMConfiguration?) { self.configuration = configuration }

    public func initialState(options: JSONValue) -> JSONValue { ["messages": [], "turns": 0] }

    public func step(state: JSONValue, input: JSONValue, context: StepContext) async throws -> StepResult {
        guard let configuration else {
            return StepResult(
                state: state, outcome: .fail("this worker has no model endpoint: start it with --llm-base-url (README, The llm agent)"))
        }
        let options: LLMOptions
        do {
            options = try LLMOptions(options: context.options, configuration: configuration)
        } catch let error as LLMError {
            return StepResult(state: state, outcome: .fail(error.message))
        }
        guard let text = input.stringValue ?? input["message"]?.stringValue ?? input["content"]?.stringValue, !text.isEmpty else {
            return StepResult(state: state, outcome: .fail("llm needs a user message: --input '\"Hello\"' or '{\"message\":\"Hello\"}'"))
        }
        let history = state["messages"]?.arrayValue ?? []
        let conversation = Conversation(configuration: configuration, options: options, context: context)
        let result = try await withStepTimeout(options.stepTimeout) {
            try await conversation.run(history + [["role": "user", "content": .string(text)]])
        }
        var next = state.objectValue ?? [:]
        next["messages"] = .array(result.messages)
        next["answer"] = .string(result.answer)
        next["turns"] = .int((state["turns"]?.intValue ?? 0) + 1)
        next["usage"] = Conversation.add(state["usage"], result.usage)
        // The answer is in the state and in the step.completed event.
        return StepResult(state: .object(next), outcome: .waitForInput, reply: ["answer": .string(result.answer)])
    }
}

/// One step's exchange with the model: requests, streamed tokens, tool rounds.
struct Conversation: Sendable {
    let configuration: LLMConfiguration
    let options: LLMOptions
    let context: StepContext

    struct Result: Sendable {
        var messages: [JSONValue]
        var answer: String
        var usage: JSONValue
    }

    var offeredTools: [any Tool] {
        guard options.maxToolRounds > 0 else { return [] }
        guard let names = options.tools else { return configuration.tools }
        return configuration.tools.filter { names.contains($0.name) }
    }

    /// Streams one answer, publishing coalesced `tokens` events and retries as progress.
    func complete(_ request: ChatRequest, round: Int) async throws -> ChatCompletion {
        let client = ChatCompletionClient(configuration: configuration)
        var coalescer = TokenCoalescer(interval: configuration.coalesceInterval, maxTokens: configuration.coalesceTokens)
        let context = self.context
        let completion = try await client.complete(request, options: options, logger: context.logger) { event in
            switch event {
            case .content(let piece):
                if let out = coalescer.add(piece) {
                    try await context.progress(
                        "tokens", data: ["text": .string(out.text), "tokens": .int(out.tokens), "round": .int(round)])
                }
            case .retrying(let status, let delay, let attempt):
                try await context.progress(
                    status.map { "HTTP \($0), retrying" } ?? "endpoint unreachable, retrying",
                    data: [
                        "status": status.map { .int($0) } ?? .null, "delay_ms": .int(delay.wholeMilliseconds), "attempt": .int(attempt),
                    ])
            }
        }
        if let out = coalescer.drain() {
            try await context.progress("tokens", data: ["text": .string(out.text), "tokens": .int(out.tokens), "round": .int(round)])
        }
        return completion
    }

    func run(_ start: [JSONValue]) async throws -> Result {
        var messages = start
        var usage: JSONValue = .null
        var callIndex = 0
        let tools = offeredTools
        for round in 0...options.maxToolRounds {
            let last = round == options.maxToolRounds
            let completion = try await complete(
                ChatRequest(messages: messages, tools: tools, forbidTools: last && !tools.isEmpty), round: round)
            usage = Conversation.add(usage, completion.usage)
            messages.append(completion.message)
            if completion.toolCalls.isEmpty { return Result(messages: messages, answer: completion.content, usage: usage) }
            guard !last else {
                throw LLMError(.toolRounds, "the model still called tools after max_tool_rounds (\(options.maxToolRounds)) rounds")
            }
            for call in completion.toolCalls {
                let content = try await run(call, index: callIndex, round: round, tools: tools)
                messages.append(["role": "tool", "tool_call_id": .string(call.id), "content": .string(content)])
                callIndex += 1
            }
        }
        throw LLMError(.toolRounds, "no answer after max_tool_rounds (\(options.maxToolRounds)) rounds")
    }

    /// Runs one tool call (one progress event before, one after) and returns what the model sees.
    func run(_ call: ToolCall, index: Int, round: Int, tools: [any Tool]) async throws -> String {
        let key = ToolContext.idempotencyKey(step: context.idempotencyKey, index: index)
        let parsed = call.arguments.isEmpty ? JSONValue.object([:]) : try? JSONValue(parsing: call.arguments)
        try await context.progress(
            "tool call \(call.name)",
            data: [
                "tool": .string(call.name), "call": .int(index), "id": .string(call.id), "round": .int(round),
                "arguments": parsed ?? .string(call.arguments),
            ])
        let result: JSONValue
        var failed = true
        if let tool = tools.first(where: { $0.name == call.name }) {
            if let arguments = parsed, arguments.objectValue != nil {
                do {
                    result = try await tool.call(
                        arguments: arguments,
                        context: ToolContext(
                            idempotencyKey: key, index: index, callID: call.id, sessionID: context.sessionID, attempt: context.attempt,
                            logger: context.logger))
                    failed = false
                } catch is CancellationError {
                    throw CancellationError()
                } catch {
                    context.logger.info("tool call failed", metadata: ["stepwise.tool": .string(call.name)])
                    result = .string("error: \(error)")
                }
            } else {
                result = .string("error: the arguments are not a JSON object")
            }
        } else {
            result = .string("error: there is no tool named '\(call.name)' (tools: \(tools.map(\.name).joined(separator: ", ")))")
        }
        try await context.progress(
            "tool result \(call.name)",
            data: ["tool": .string(call.name), "call": .int(index), "id": .string(call.id), "result": result, "error": .bool(failed)])
        return result.stringValue ?? result.jsonString
    }

    /// Adds two `usage` objects field by field (integer fields only).
    static func add(_ a: JSONValue?, _ b: JSONValue?) -> JSONValue {
        var sum: [String: JSONValue] = [:]
        for doc in [a, b] {
            for (k, v) in doc?.objectValue ?? [:] {
                guard let n = v.intValue else { continue }
                sum[k] = .int((sum[k]?.intValue ?? 0) + n)
            }
        }
        return sum.isEmpty ? .null : .object(sum)
    }
}
