import Foundation
import StepwiseAgents
import StepwiseCore

/// The quiz's model-backed writer (`--option llm=true`): asks the model for each part as JSON,
/// checks it against the quiz's shape, repairs it or asks again.
///
/// Each request streams its tokens as `tokens` progress events, like the `llm` agent, and asks
/// for JSON through `response_format` (option `response_format`: `json_schema` with the part's
/// schema, `json_object`, `json_object_schema` (the schema inside `json_object`, as llama.cpp's
/// Python server takes it) or `none`). A reply is accepted when its JSON object (found by
/// ``JSONRepair`` if the model wrapped it in prose or a fence) has the shape; otherwise the model
/// is told what is wrong and asked again, up to the option `repairs` (default 2) times, and then
/// the step throws (the worker retries it). The whole step is bounded by `step_timeout`.
public struct ModelQuizWriter: QuizWriter {
    public let configuration: LLMConfiguration

    /// Creates the writer.
    public init(configuration: LLMConfiguration) { self.configuration = configuration }

    public func plan(topic: String, count: Int, context: StepContext) async throws -> [String] {
        let schema: JSONValue = [
            "type": "object",
            "properties": ["plan": ["type": "array", "items": ["type": "string"], "minItems": .int(count), "maxItems": .int(count)]],
            "required": ["plan"], "additionalProperties": false,
        ]
        let prompt = """
            We are writing a multiple-choice quiz about \(topic) with \(count) questions. List \(count) different \
            subtopics of \(topic), one per question, each a few words long. Reply with only a JSON object whose key \
            "plan" holds the \(count) subtopics as strings.
            """
        return try await ask(name: "quiz_plan", schema: schema, prompt: prompt, context: context) { json in
            guard let items = json["plan"]?.arrayValue else { return .failure("\"plan\" must be a list of strings") }
            let angles = items.compactMap(\.stringValue).map { $0.trimmingCharacters(in: .whitespacesAndNewlines) }
            guard angles.count == items.count, angles.allSatisfy({ !$0.isEmpty && $0.count <= 200 }) else {
                return .failure("\"plan\" must hold non-empty strings of at most 200 characters")
            }
            guard angles.count == count else { return .failure("\"plan\" must hold exactly \(count) angles, not \(angles.count)") }
            return .success(angles)
        }
    }

    public func question(topic: String, angle: String, index: Int, count: Int, context: StepContext) async throws -> QuizQuestion {
        let schema: JSONValue = [
            "type": "object",
            "properties": [
                "q": ["type": "string"],
                "choices": ["type": "array", "items": ["type": "string"], "minItems": 4, "maxItems": 4],
                "answer": ["type": "integer", "minimum": 0, "maximum": 3],
            ],
            "required": ["q", "choices", "answer"], "additionalProperties": false,
        ]
        let prompt = """
            Write question \(index + 1) of \(count) of a multiple-choice quiz about \(topic), on this subtopic: \(angle). \
            Reply with only a JSON object with the keys "q" (the question about \(angle), ending in a question mark), \
            "choices" (4 different possible answers, exactly one of them right) and "answer" (the position, 0 to 3, of \
            the right answer in choices).
            """
        return try await ask(name: "quiz_question", schema: schema, prompt: prompt, context: context) { json in
            var fixed = json
            // A letter answer ("B") is a common slip: take it as its index.
            if let letter = json["answer"]?.stringValue?.uppercased(), let i = ["A", "B", "C", "D"].firstIndex(of: letter),
                case .object(var o) = json
            {
                o["answer"] = .int(i)
                fixed = .object(o)
            }
            if let problem = QuizQuestion.problem(fixed) { return .failure(problem) }
            guard let question = QuizQuestion(json: fixed) else { return .failure("not a question") }
            return .success(question)
        }
    }

    public func summary(topic: String, questions: [QuizQuestion], context: StepContext) async throws -> String {
        let schema: JSONValue = [
            "type": "object", "properties": ["summary": ["type": "string"]], "required": ["summary"], "additionalProperties": false,
        ]
        let list = questions.enumerated().map { "\($0.offset + 1). \($0.element.q)" }.joined(separator: "\n")
        let prompt = """
            Here are the questions of a quiz about \(topic):
            \(list)
            Describe the quiz in one sentence. Reply with only a JSON object whose key "summary" holds that sentence.
            """
        return try await ask(name: "quiz_summary", schema: schema, prompt: prompt, context: context) { json in
            guard let s = json["summary"]?.stringValue?.trimmingCharacters(in: .whitespacesAndNewlines), !s.isEmpty, s.count <= 1000 else {
                return .failure("\"summary\" must be a sentence of 1-1000 characters")
            }
            return .success(s)
        }
    }

    /// What a check of the model's JSON found.
    enum Check<T: Sendable>: Sendable {
        case success(T)
        case failure(String)
    }

    /// Asks until `check` accepts the reply's JSON object, at most `repairs` + 1 times.
    func ask<T: Sendable>(
        name: String, schema: JSONValue, prompt: String, context: StepContext, check: @escaping @Sendable (JSONValue) -> Check<T>
    ) async throws -> T {
        let options: LLMOptions
        do {
            options = try LLMOptions(options: context.options, configuration: configuration)
        } catch let error as LLMError {
            throw QuizWriterRefusal(error.message)
        }
        let format: JSONValue?
        switch options.responseFormat {
        case "json_schema": format = ["type": "json_schema", "json_schema": ["name": .string(name), "schema": schema]]
        case "json_object": format = ["type": "json_object"]
        // llama-cpp-python's server (and Anyscale's) take the schema inside json_object and
        // refuse the type json_schema.
        case "json_object_schema": format = ["type": "json_object", "schema": schema]
        default: format = nil
        }
        let conversation = Conversation(configuration: configuration, options: options, context: context)
        return try await withStepTimeout(options.stepTimeout) {
            var messages: [JSONValue] = [["role": "user", "content": .string(prompt)]]
            var problem = ""
            for round in 0...options.repairs {
                let completion = try await conversation.complete(ChatRequest(messages: messages, responseFormat: format), round: round)
                if let found = JSONRepair.object(in: completion.content) {
                    switch check(found.value) {
                    case .success(let value):
                        if found.repaired {
                            try await context.progress("repaired the model's JSON", data: ["part": .string(name), "round": .int(round)])
                        }
                        return value
                    case .failure(let why):
                        problem = why
                    }
                } else {
                    problem = "the reply holds no JSON object"
                }
                try await context.progress(
                    "model output rejected", data: ["part": .string(name), "problem": .string(problem), "round": .int(round)])
                messages.append(["role": "assistant", "content": .string(completion.content)])
                messages.append([
                    "role": "user",
                    "content": .string("That reply cannot be used: \(problem). Reply again with only the JSON object, as asked."),
                ])
            }
            throw LLMError(
                .invalidModelOutput, "the model's \(name) reply did not have the quiz's shape after \(options.repairs) repairs: \(problem)")
        }
    }
}
