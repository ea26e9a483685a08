import Foundation
import StepwiseCore

/// Writes the parts of a quiz for ``QuizAgent``: the plan, each question, the summary.
///
/// ``TemplateQuizWriter`` writes canned text offline; StepwiseLLM's `ModelQuizWriter` asks a
/// model. A writer may throw: the step fails and the worker retries it (with backoff), except for
/// ``QuizWriterRefusal``, which fails the session at once with its message (bad options).
public protocol QuizWriter: Sendable {
    /// `count` angles of `topic`, one per question.
    func plan(topic: String, count: Int, context: StepContext) async throws -> [String]
    /// Question `index` (0-based) of `count`, on `angle`.
    func question(topic: String, angle: String, index: Int, count: Int, context: StepContext) async throws -> QuizQuestion
    /// One sentence about the finished quiz.
    func summary(topic: String, questions: [QuizQuestion], context: StepContext) async throws -> String
}

/// A writer's refusal that no retry can fix (a bad option): the session fails with `message`.
public struct QuizWriterRefusal: Error, Sendable, CustomStringConvertible {
    public var message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}

/// One multiple-choice question: the shape the gateway's web page renders.
public struct QuizQuestion: Sendable, Hashable {
    /// The question (1-500 characters).
    public var q: String
    /// Exactly 4 different, non-empty choices.
    public var choices: [String]
    /// The index of the right choice, 0-3.
    public var answer: Int

    /// A question, if the values have the quiz's shape (see ``problem(_:)``).
    public init?(q: String, choices: [String], answer: Int) {
        self.q = q
        self.choices = choices
        self.answer = answer
        guard QuizQuestion.problem(json) == nil else { return nil }
    }

    /// A question read from `{"q": ..., "choices": [...], "answer": N}`, if it has the quiz's shape.
    public init?(json: JSONValue) {
        guard QuizQuestion.problem(json) == nil, let q = json["q"]?.stringValue, let choices = json["choices"]?.arrayValue,
            let answer = json["answer"]?.intValue
        else { return nil }
        self.q = q
        self.choices = choices.compactMap(\.stringValue)
        self.answer = answer
    }

    /// A question as stored, without the checks (the template's own text, a stored document).
    init(unchecked q: String, choices: [String], answer: Int) {
        self.q = q
        self.choices = choices
        self.answer = answer
    }

    /// A stored question, read without the shape checks; `nil` when it is not one at all.
    init?(stored json: JSONValue) {
        guard let q = json["q"]?.stringValue, let choices = json["choices"]?.arrayValue, let answer = json["answer"]?.intValue else {
            return nil
        }
        self.init(unchecked: q, choices: choices.compactMap(\.stringValue), answer: answer)
    }

    /// The question as the quiz document stores it.
    public var json: JSONValue { ["q": .string(q), "choices": .array(choices.map { .string($0) }), "answer": .int(answer)] }

    /// What is wrong with `json` as a question, or `nil` when it has the quiz's shape.
    public static func problem(_ json: JSONValue) -> String? {
        guard json.objectValue != nil else { return "the question must be a JSON object" }
        guard let q = json["q"]?.stringValue, !q.trimmingCharacters(in: .whitespaces).isEmpty, q.count <= 500 else {
            return "\"q\" must be a question of 1-500 characters"
        }
        guard let choices = json["choices"]?.arrayValue, choices.count == 4 else {
            return "\"choices\" must be a list of exactly 4 strings"
        }
        let texts = choices.compactMap(\.stringValue)
        guard texts.count == 4, texts.allSatisfy({ !$0.trimmingCharacters(in: .whitespaces).isEmpty && $0.count <= 200 }) else {
            return "\"choices\" must be 4 non-empty strings of at most 200 characters"
        }
        guard Set(texts).count == 4 else { return "the 4 choices must differ" }
        guard let answer = json["answer"]?.intValue, (0...3).contains(answer) else {
            return "\"answer\" must be the index (0-3) of the right choice"
        }
        return nil
    }
}

/// The offline writer: templates, no model.
public struct TemplateQuizWriter: QuizWriter {
    public init() {}

    public func plan(topic: String, count: Int, context: StepContext) async throws -> [String] {
        let angles = ["basics", "history", "tools", "pitfalls", "practice", "trivia", "future"]
        return (0..<count).map { "\(topic): \(angles[$0 % angles.count])" }
    }

    public func question(topic: String, angle: String, index: Int, count: Int, context: StepContext) async throws -> QuizQuestion {
        let choices = (1...4).map { "option \($0) about \(angle)" }
        // Not checked against the model's limits: a long topic makes long template text, as before.
        return QuizQuestion(
            unchecked: "Question \(index + 1): what matters most in \(angle)?", choices: choices, answer: (index * 7 + 1) % 4)
    }

    public func summary(topic: String, questions: [QuizQuestion], context: StepContext) async throws -> String {
        "A \(questions.count)-question quiz on \(topic)."
    }
}
