import Logging
import Testing

@testable import StepwiseAgents
@testable import StepwiseCore

@Suite struct SessionIDTests {
    @Test(arguments: ["a", "user-42_quiz", String(repeating: "x", count: 64), "ABC-def_019"])
    func acceptsValidIDs(_ id: String) throws {
        #expect(try SessionID(id).rawValue == id)
    }

    @Test(arguments: [
        "", "a{b}c", "*", "x\r\nFLUSHALL", "a:b", "a b", "ünï", String(repeating: "x", count: 65),
        String(repeating: "y", count: 1_000_000), "a\0b", "sess/1",
    ])
    func rejectsInvalidIDs(_ id: String) {
        #expect(stepwiseErrorCode { try SessionID(id) } == .invalidSessionID)
        #expect(!SessionID.isValid(id))
    }

    @Test func errorMessageSaysTheRuleAndHidesControlCharacters() {
        do {
            _ = try SessionID("x\r\nFLUSHALL")
            Issue.record("expected an error")
        } catch {
            #expect(error.code == .invalidSessionID)
            #expect(error.message.contains("A-Z a-z 0-9 _ -"))
            #expect(!error.message.contains("\r"))
        }
    }

    @Test func keysShareOneHashTag() throws {
        let keys = try KeySpace(namespace: "sw")
        let id = try SessionID("abc")
        for key in [keys.session(id), keys.inbox(id), keys.jobs(id), keys.idempotency(id), keys.events(id)] {
            #expect(key.hasPrefix("sw:s:{abc}"))
        }
        #expect(stepwiseErrorCode { try KeySpace(namespace: "a b") } == .invalidConfiguration)
        #expect(stepwiseErrorCode { try KeySpace(namespace: "") } == .invalidConfiguration)
    }
}

@Suite struct JSONTests {
    @Test func roundTripsAndSortsKeys() throws {
        let v = try JSONValue(parsing: #"{"b":[1,2.5,"x",null,true],"a":{}}"#)
        #expect(v.jsonString == #"{"a":{},"b":[1,2.5,"x",null,true]}"#)
    }

    @Test(arguments: ["{bad", "", "[1,", "{\"a\":}"])
    func rejectsMalformedJSON(_ text: String) {
        #expect(stepwiseErrorCode { try JSONValue(parsing: text) } == .invalidJSON)
    }

    @Test func handlesEscapesAndUnicode() throws {
        let v = try JSONValue(parsing: #"["a\"b\\c\n\u00e9\ud83d\ude00\/", -1.5e3, 0, true, false, null]"#)
        #expect(v == ["a\"b\\c\né😀/", .number(try #require(JSONNumber(text: "-1.5e3"))), 0, true, false, .null])
        #expect(v.arrayValue?[1].intValue == -1500)
        let back = try JSONValue(parsing: v.jsonString)
        #expect(back == v)
        #expect(JSONValue.string("\u{01}\t").jsonString == #""\u0001\t""#)
    }

    @Test(arguments: ["01", "1.", "-", "tru", "\"\\x\"", "\"\\ud800\"", "[1 2]", "{\"a\" 1}", "1 2", "\"a\nb\""])
    func rejectsInvalidSyntax(_ text: String) {
        #expect(stepwiseErrorCode { try JSONValue(parsing: text) } == .invalidJSON)
    }

    @Test func rejectsDeepNestingInsteadOfCrashing() {
        let deep = String(repeating: "[", count: 100_000) + String(repeating: "]", count: 100_000)
        #expect(stepwiseErrorCode { try JSONValue(parsing: deep) } == .invalidJSON)
    }

    @Test func rejectsInvalidUTF8() {
        #expect(stepwiseErrorCode { try JSONValue(parsing: [0x22, 0xFF, 0xFE, 0x22]) } == .invalidJSON)
    }
}

@Suite struct AgentTests {
    func context(step: Int, options: JSONValue = [:]) throws -> StepContext {
        StepContext(
            sessionID: try SessionID("s"), jobID: "s:\(step)", step: step, attempt: 1, options: options,
            logger: Logger(label: "test"), emitter: { _, _ in })
    }

    @Test func counterAppendsInOrder() async throws {
        let agent = CounterAgent()
        var state = agent.initialState(options: [:])
        for i in 1...5 {
            let r = try await agent.step(state: state, input: .int(i), context: try context(step: i))
            state = r.state
            #expect(r.outcome == .waitForInput)
        }
        #expect(state["count"]?.intValue == 5)
        #expect(state["inputs"] == [1, 2, 3, 4, 5])
    }

    @Test func quizPlansWritesQuestionsAndSummarises() async throws {
        let agent = QuizAgent()
        var state = agent.initialState(options: [:])
        var input: JSONValue = ["topic": "Swift", "questions": 2]
        var steps = 0
        var final: JSONValue?
        while steps < 10 {
            steps += 1
            let r = try await agent.step(state: state, input: input, context: try context(step: steps))
            state = r.state
            if case .next(let n) = r.outcome {
                input = n
            } else if case .done(let result) = r.outcome {
                final = result
                break
            } else {
                Issue.record("unexpected outcome \(r.outcome)")
                break
            }
        }
        #expect(steps == 4, "plan + 2 questions + summary")
        #expect(state["questions"]?.arrayValue?.count == 2)
        #expect(final?["questions"]?.intValue == 2)
    }

    @Test func quizRejectsBadInputAsFailure() async throws {
        let r = try await QuizAgent().step(state: [:], input: ["topic": "x", "questions": 99], context: try context(step: 1))
        guard case .fail(let reason) = r.outcome else {
            Issue.record("expected fail")
            return
        }
        #expect(reason.contains("1-20"))
    }

    @Test func workerConfigurationIsValidated() {
        #expect(stepwiseErrorCode { try Worker.Configuration(workerID: "a/b").validate() } == .invalidConfiguration)
        #expect(stepwiseErrorCode { try Worker.Configuration(concurrency: 0).validate() } == .invalidConfiguration)
        #expect(throws: Never.self) { try Worker.Configuration(workerID: "w-1").validate() }
    }
}

@Suite struct SubmissionLimitTests {
    @Test(arguments: ["a", "ann", "user-42_x.y@example.com", "tenant:7", String(repeating: "o", count: 128)])
    func acceptsValidOwners(_ owner: String) throws {
        try Submission.validateOwner(owner)
    }

    @Test(arguments: [
        ("", "empty"), (String(repeating: "o", count: 129), "over the limit of 128"), ("a b", "U+20"), ("a\nb", "U+A"),
        ("ünï", "U+FC"), ("a/b", "'/'"), ("a{b}", "'{'"), ("a\0b", "U+0"),
    ])
    func rejectsInvalidOwners(_ owner: String, _ expected: String) {
        do {
            try Submission.validateOwner(owner)
            Issue.record("owner \(owner.debugDescription) was accepted")
        } catch {
            #expect(error.code == .invalidOwner)
            #expect(error.message.contains(expected), "\(error.message)")
            #expect(!error.message.contains("\n") && !error.message.contains("\0"))
        }
    }

    @Test func optionsMustBeASmallObjectWithNamedKeys() throws {
        try Submission.validateOptions(["model": "small", "n": 2])
        try Submission.validateOptions(.object([:]))
        let limit = Submission.defaultMaxOptionsBytes
        #expect(limit == 64 * 1024)
        // {"k":"<pad>"} is 8 bytes plus the pad: exactly at the limit passes, one more byte fails.
        try Submission.validateOptions(["k": .string(String(repeating: "x", count: limit - 8))])
        let cases: [(JSONValue, String)] = [
            (["k": .string(String(repeating: "x", count: limit - 7))], "over the limit of \(limit) bytes"),
            (["": 1], "empty key"), ([1, 2], "JSON object"), ("text", "JSON object"), (.null, "JSON object"),
        ]
        for (options, expected) in cases {
            do {
                try Submission.validateOptions(options)
                Issue.record("options \(options) were accepted")
            } catch {
                #expect(error.code == .invalidOptions)
                #expect(error.message.contains(expected), "\(error.message)")
            }
        }
        #expect(throws: StepwiseError.self) { try Submission.validateOptions(["a": 1], maxBytes: 5) }
    }
}

extension StateDelta {
    /// `old` with this delta applied, as `commit.lua` splices it (bytes).
    func applied(to old: String) -> String {
        let o = Array(old.utf8)
        return String(decoding: o[..<prefix], as: UTF8.self) + middle + String(decoding: o[(o.count - suffix)...], as: UTF8.self)
    }
}

/// A large state's commit carries only what changed (`StateDelta`); the commit script rebuilds it.
@Suite struct StateDeltaTests {
    @Test(arguments: [
        (#"{"count":1,"pad":"xxxxxxxxxxxxxxxxxxxx"}"#, #"{"count":2,"pad":"xxxxxxxxxxxxxxxxxxxx"}"#),
        ("aaaaaaaaaaaaaaaaaaaa", "aaaaaaaaaaaaaaaaaaaaa"),
        ("aaaaaaaaaaaaaaaaaaaa", "aaaaaaaaaaaaaaaaaaa"),
        ("ééééééééééééééééééé", "éééééééééèéééééééé"),
        ("€€€€€€€€€€€€€€€€€€€€€€", "€€€€€€€€€€€€€€€€€€€€€€ü"),
        (String(repeating: "x", count: 50) + "😀", String(repeating: "x", count: 50) + "😁"),
    ])
    func aDeltaRebuildsTheNewStateAndCutsOnCharacters(_ old: String, _ new: String) throws {
        let d = try #require(StateDelta(from: old, to: new, version: 4))
        #expect(d.applied(to: old) == new)
        #expect(d.version == 4)
        #expect(d.prefix + d.suffix <= min(old.utf8.count, new.utf8.count))
        // The middle is whole characters: it is the new text between two boundaries.
        #expect(d.middle.utf8.count == new.utf8.count - d.prefix - d.suffix)
        #expect(String(decoding: Array(d.middle.utf8), as: UTF8.self) == d.middle)
        #expect(d.middle.utf8.count * 2 <= new.utf8.count)
    }

    @Test func aStateMostlyChangedGoesWhole() {
        #expect(StateDelta(from: "abcdefgh", to: "ABCDEFGH", version: 1) == nil)
        #expect(StateDelta(from: "", to: "abcdef", version: 1) == nil)
        #expect(StateDelta(from: "abcdef", to: "xyz", version: 1) == nil)
    }
}
