import Foundation
import StepwiseCore

extension AgentRegistry {
    /// The built-in agents: `echo`, `counter`, `sleep`, `quiz` and `fault`.
    public static var builtIn: AgentRegistry {
        AgentRegistry([EchoAgent(), CounterAgent(), SleepAgent(), QuizAgent(), FaultAgent()])
    }
}

/// Returns its input as the result and finishes (status `done`).
public struct EchoAgent: Agent {
    public let name = "echo"
    public init() {}
    public func step(state: JSONValue, input: JSONValue, context: StepContext) async throws -> StepResult {
        StepResult(state: ["last": input], outcome: .done(input))
    }
}

/// Counts steps and records each input in applied order: state `{"count": N, "inputs": [...]}`.
///
/// The ledger the tests and the benchmark check: `inputs` must equal what was submitted, in order.
public struct CounterAgent: Agent {
    public let name = "counter"
    public init() {}
    public func initialState(options: JSONValue) -> JSONValue { ["count": 0, "inputs": []] }
    public func step(state: JSONValue, input: JSONValue, context: StepContext) async throws -> StepResult {
        let count = state["count"]?.intValue ?? 0
        let inputs = state["inputs"]?.arrayValue ?? []
        if let ms = context.options["ms"]?.intValue, ms > 0 { try await Task.sleep(for: .milliseconds(ms)) }
        var next: [String: JSONValue] = ["count": .int(count + 1), "inputs": .array(inputs + [input])]
        // Option `pad`: keep that many bytes of filler in the state (a large state, for benchmarks).
        if let pad = context.options["pad"]?.intValue, pad > 0 {
            next["pad"] =
                state["pad"].flatMap { $0.stringValue?.utf8.count == min(pad, 4_000_000) ? $0 : nil }
                ?? .string(String(repeating: "x", count: min(pad, 4_000_000)))
        }
        return StepResult(state: .object(next), outcome: .waitForInput)
    }
}

/// A `counter` that misbehaves on demand, for fault drills and the fault test suite.
///
/// Each input is recorded like `counter` does (state `{"count": N, "inputs": [...]}`), unless the
/// input's `fault` field asks for trouble first:
/// - `"throw"`: throws on every attempt (retried, then dead-lettered), quoting the input's
///   `message` in the error's text when it has one (as an agent that quotes its input would);
/// - `"throw-once"`: throws on attempt 1 only;
/// - `"crash"`: crashes its own worker process (a trap, as a failed precondition would) on every
///   delivery: a poison step;
/// - `"crash-once"`: crashes the worker that way on attempt 1 only;
/// - `"kill-once"`: kills its own worker with SIGKILL on attempt 1 only (as an operator or the OOM
///   killer would: not the step's fault, never blamed on it);
/// - `"hang"`: sleeps `ms` (default 60 000) milliseconds, cancellably, then records the input;
/// - `"garbage"`: returns a state document of 5 MiB (over the worker's default 4 MiB state limit).
public struct FaultAgent: Agent {
    public let name = "fault"
    public init() {}
    public func initialState(options: JSONValue) -> JSONValue { ["count": 0, "inputs": []] }

    /// The error `"throw"` and `"throw-once"` raise.
    public struct InjectedFault: Error, CustomStringConvertible {
        public var description: String
    }

    public func step(state: JSONValue, input: JSONValue, context: StepContext) async throws -> StepResult {
        switch input["fault"]?.stringValue {
        case "throw":
            let detail = input["message"]?.stringValue.map { ": " + $0 } ?? ""
            throw InjectedFault(description: "injected fault (attempt \(context.attempt))\(detail)")
        case "throw-once" where context.attempt == 1:
            throw InjectedFault(description: "injected fault on the first attempt")
        case "crash":
            fatalError("injected crash (attempt \(context.attempt))")
        case "crash-once" where context.attempt == 1:
            fatalError("injected crash on the first attempt")
        case "kill-once" where context.attempt == 1:
            kill(getpid(), SIGKILL)
            try await Task.sleep(for: .seconds(60))
        case "hang":
            try await Task.sleep(for: .milliseconds(input["ms"]?.intValue ?? 60_000))
        case "garbage":
            return StepResult(state: .string(String(repeating: "x", count: 5 << 20)), outcome: .waitForInput)
        default:
            break
        }
        return try await CounterAgent().step(state: state, input: input, context: context)
    }
}

/// Waits `ms` milliseconds (from the input's `ms`, else the option `ms`, else 100), standing in
/// for an LLM call; cancellable.
public struct SleepAgent: Agent {
    public let name = "sleep"
    public init() {}
    public func step(state: JSONValue, input: JSONValue, context: StepContext) async throws -> StepResult {
        let ms = input["ms"]?.intValue ?? input.intValue ?? context.options["ms"]?.intValue ?? 100
        guard (0...3_600_000).contains(ms) else { return StepResult(state: state, outcome: .fail("ms \(ms) is out of range 0-3600000")) }
        try await Task.sleep(for: .milliseconds(ms))
        let slept = (state["slept_ms"]?.intValue ?? 0) + ms
        return StepResult(state: ["slept_ms": .int(slept), "steps": .int(context.step)], outcome: .waitForInput)
    }
}

/// Writes a quiz: plans, writes one question per step (with progress events), then summarises.
///
/// Input of the first step: `{"topic": "...", "questions": N}` (or just a topic string); N is
/// 1-20, default 3. By default deterministic and offline: the "LLM" is a template
/// (``TemplateQuizWriter``). The option `ms` adds a simulated model latency to each step. With the
/// option `llm` set to `true`, a model writes it (``modelWriter``, given by the worker; see
/// StepwiseLLM's `ModelQuizWriter`); the result has the same shape either way:
/// `{"topic", "plan": [...], "questions": [{"q", "choices": [4 strings], "answer": 0-3}], "summary"}`.
public struct QuizAgent: Agent {
    public let name = "quiz"
    /// The writer of `llm=true` sessions, or `nil` when this worker has no model.
    public let modelWriter: (any QuizWriter)?

    /// Creates the agent; `modelWriter` serves sessions with the option `llm=true`.
    public init(modelWriter: (any QuizWriter)? = nil) { self.modelWriter = modelWriter }

    public func step(state: JSONValue, input: JSONValue, context: StepContext) async throws -> StepResult {
        let writer: any QuizWriter
        switch context.options["llm"] {
        case nil, .bool(false)?, .string("false")?:
            writer = TemplateQuizWriter()
            if let ms = context.options["ms"]?.intValue, ms > 0 { try await Task.sleep(for: .milliseconds(min(ms, 60_000))) }
        case .bool(true)?, .string("true")?:
            guard let modelWriter else {
                return StepResult(
                    state: state,
                    outcome: .fail(
                        "this worker has no model for llm=true quizzes: start it with --llm-base-url (see README, The llm agent)"))
            }
            writer = modelWriter
        default:
            return StepResult(state: state, outcome: .fail("option llm must be true or false"))
        }
        let phase = input["phase"]?.stringValue ?? "plan"
        switch phase {
        case "plan":
            let topic = input["topic"]?.stringValue ?? input.stringValue ?? ""
            guard !topic.isEmpty else {
                return StepResult(state: state, outcome: .fail("quiz needs a topic: --input '{\"topic\":\"Swift\",\"questions\":3}'"))
            }
            let n = input["questions"]?.intValue ?? 3
            guard (1...20).contains(n) else {
                return StepResult(state: state, outcome: .fail("questions must be 1-20, got \(n)"))
            }
            let written: [String]
            do {
                written = try await writer.plan(topic: topic, count: n, context: context)
            } catch let error as QuizWriterRefusal {
                return StepResult(state: state, outcome: .fail(error.message))
            }
            let plan = written.map { JSONValue.string($0) }
            try await context.progress("planned \(n) questions", data: ["plan": .array(plan)])
            return StepResult(
                state: ["topic": .string(topic), "plan": .array(plan), "questions": []],
                outcome: .next(["phase": "question", "index": 0]))
        case "question":
            let index = input["index"]?.intValue ?? 0
            let plan = state["plan"]?.arrayValue ?? []
            var questions = state["questions"]?.arrayValue ?? []
            guard index >= 0, index < plan.count, let angle = plan[index].stringValue else {
                return StepResult(state: state, outcome: .fail("question index \(index) is outside the plan"))
            }
            try await context.progress("writing question \(index + 1) of \(plan.count)", data: ["index": .int(index)])
            let question: QuizQuestion
            do {
                question = try await writer.question(
                    topic: state["topic"]?.stringValue ?? "", angle: angle, index: index, count: plan.count, context: context)
            } catch let error as QuizWriterRefusal {
                return StepResult(state: state, outcome: .fail(error.message))
            }
            questions.append(question.json)
            var next = state.objectValue ?? [:]
            next["questions"] = .array(questions)
            let outcome: StepOutcome =
                index + 1 < plan.count ? .next(["phase": "question", "index": .int(index + 1)]) : .next(["phase": "summary"])
            return StepResult(state: .object(next), outcome: outcome)
        case "summary":
            let questions = (state["questions"]?.arrayValue ?? []).compactMap(QuizQuestion.init(stored:))
            let topic = state["topic"]?.stringValue ?? ""
            try await context.progress("summarising", data: .null)
            let text: String
            do {
                text = try await writer.summary(topic: topic, questions: questions, context: context)
            } catch let error as QuizWriterRefusal {
                return StepResult(state: state, outcome: .fail(error.message))
            }
            var next = state.objectValue ?? [:]
            let summary = JSONValue.string(text)
            next["summary"] = summary
            return StepResult(state: .object(next), outcome: .done(["summary": summary, "questions": .int(questions.count)]))
        default:
            return StepResult(state: state, outcome: .fail("unknown quiz phase '\(phase)'"))
        }
    }
}
