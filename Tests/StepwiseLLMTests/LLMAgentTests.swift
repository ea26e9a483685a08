import Foundation
import StepwiseAgents
import StepwiseCore
import StepwiseLLM
import StepwiseRedis
import StepwiseTesting
import Testing

/// The `llm` agent and the model-written quiz, run by real worker processes of the built binary
/// against the test redis-server and the repo's OpenAI-compatible test server
/// (`Tests/llm/fake_openai.py`), which streams chunks as the hosted API does and injects faults
/// chosen by directives in the model name.
@Suite(
    "llm agent: streamed tokens, tools, faults, cancel, idempotent tools, model-written quiz",
    .enabled(if: TestRedis.url != nil && TestRedis.binary != nil, "needs STEPWISE_TEST_REDIS_URL and STEPWISE_BIN: run `make test`"),
    .serialized,
    .timeLimit(.minutes(5))
)
struct LLMAgentTests {
    /// One test's world: a namespace, a worker, the fake server.
    struct Harness {
        let keys: KeySpace
        let conn: RedisConnection
        let pool: WorkerPool
        let fake: FakeOpenAI
        let dispatcher: Dispatcher
        let worker: ChildProcess

        /// A model name unique to this test, with fault directives.
        func model(_ directives: String...) -> String { (["m\(UUID().uuidString.prefix(8))"] + directives).joined(separator: "+") }

        func submit(_ id: SessionID, agent: String = "llm", input: JSONValue, options: JSONValue, maxAttempts: Int? = nil) async throws
            -> String
        {
            var s = Submission(session: id, agent: agent, input: input, options: options)
            s.maxAttempts = maxAttempts
            return try await dispatcher.submit([s]).receipts()[0].jobID
        }

        /// Waits until the session's status is one of `statuses`; returns it.
        func settle(_ id: SessionID, in statuses: Set<String> = ["waiting", "done", "failed"], timeout: Duration = .seconds(30))
            async throws -> String?
        {
            var status: String?
            _ = await eventually(timeout: timeout, interval: .milliseconds(25)) {
                status = try? await session(conn, keys, id).status
                return status.map(statuses.contains) ?? false
            }
            return status
        }
    }

    func withHarness(workerFlags: [String] = [], _ body: (Harness) async throws -> Void) async throws {
        let keys = try TestRedis.uniqueKeys()
        let conn = try TestRedis.connection(name: "llm-tests")
        let pool = WorkerPool(binary: try #require(TestRedis.binary), redisURL: try #require(TestRedis.url), namespace: keys.namespace)
        defer { pool.killAll() }
        let fake = try await FakeOpenAI()
        defer { fake.kill() }
        let worker = try pool.start(
            id: "llm-w", concurrency: 2, extra: fake.workerFlags + ["--retry-delay", "0.05", "--max-retry-delay", "0.1"] + workerFlags)
        let dispatcher = Dispatcher(connection: conn, keys: keys, agents: AgentRegistry([LLMAgent(configuration: nil), QuizAgent()]))
        try await body(Harness(keys: keys, conn: conn, pool: pool, fake: fake, dispatcher: dispatcher, worker: worker))
        #expect(!worker.output.contains(fake.apiKey), "the worker's logs never carry the API key")
        #expect(await pool.stopAll()["llm-w"] == 0, "the worker exits 0 on SIGTERM: \(worker.output.suffix(1500))")
        await fake.stop()
    }

    // MARK: streaming

    @Test func tokensStreamAsCoalescedProgressEventsAndTheAnswerIsInTheState() async throws {
        try await withHarness { h in
            let id = try SessionID("stream")
            // 300 words, 3 ms apart: about 1 s of streaming, far more tokens than events.
            let model = h.model("words=300", "slow3")
            let options: JSONValue = ["model": .string(model), "temperature": 0.5, "system": "Be brief."]
            _ = try await h.submit(id, input: "count for me", options: options)
            var sawTokensWhileRunning = false
            _ = await eventually(timeout: .seconds(20), interval: .milliseconds(20)) {
                let all = (try? await events(h.conn, h.keys, id)) ?? []
                if all.contains(where: { $0.type == "step.progress" && $0.fields["message"] == "tokens" })
                    && !all.contains(where: { $0.type == "step.completed" })
                {
                    sawTokensWhileRunning = true
                }
                return sawTokensWhileRunning || all.contains { $0.type == "step.completed" }
            }
            #expect(sawTokensWhileRunning, "token events arrive while the step runs, before step.completed")
            #expect(try await h.settle(id) == "waiting", "\(h.worker.output.suffix(1500))")
            let all = try await events(h.conn, h.keys, id)
            let tokenEvents = all.filter { $0.type == "step.progress" && $0.fields["message"] == "tokens" }
            let expected = (1...300).map { "w\($0)" }.joined(separator: " ")
            let streamed = tokenEvents.map { data($0)["text"]?.stringValue ?? "" }.joined()
            #expect(streamed == expected, "the events' text is the whole answer, in order")
            let tokens = tokenEvents.compactMap { data($0)["tokens"]?.intValue }.reduce(0, +)
            #expect(tokens == 300, "every token is in exactly one event")
            #expect(tokenEvents.count >= 3 && tokenEvents.count <= 60, "coalesced: \(tokenEvents.count) events for 300 tokens")
            #expect(tokenEvents.allSatisfy { (data($0)["tokens"]?.intValue ?? 0) <= 32 }, "at most 32 tokens per event")
            let (_, state) = try await session(h.conn, h.keys, id)
            #expect(state["answer"]?.stringValue == expected)
            let completed = all.first { $0.type == "step.completed" }
            #expect(data(try #require(completed))["answer"]?.stringValue == expected, "the answer is in step.completed too")
            let messages = state["messages"]?.arrayValue ?? []
            #expect(messages.count == 2)
            #expect(messages.first?["role"] == "user" && messages.first?["content"] == "count for me")
            #expect(messages.last?["role"] == "assistant" && messages.last?["content"]?.stringValue == expected)
            #expect(state["usage"]?["completion_tokens"]?.intValue == 300, "the usage chunk is summed into the state: \(state)")
            let seen = try await h.fake.requests(model: model)
            try #require(seen.count == 1)
            #expect(seen[0]["authorized"] == true, "the API key from --llm-api-key-file was sent")
            #expect(seen[0]["stream"] == true && seen[0]["include_usage"] == true)
            #expect(seen[0]["temperature"]?.doubleValue == 0.5)
            #expect(seen[0]["messages"]?.arrayValue?.first?["content"] == "Be brief.", "the system prompt goes first")
            let everything = all.map { $0.json.jsonString }.joined() + state.jsonString
            #expect(!everything.contains(h.fake.apiKey), "the API key is in no event and not in the state")

            // A second turn carries the conversation.
            _ = try await h.submit(id, input: ["message": "and again"], options: ["model": .string(h.model())])
            _ = await eventually(timeout: .seconds(20)) { ((try? await session(h.conn, h.keys, id).state["turns"]?.intValue) ?? 0) == 2 }
            let second = try await session(h.conn, h.keys, id).state
            #expect(second["messages"]?.arrayValue?.count == 4)
            #expect(second["answer"] == "You said: and again")
        }
    }

    // MARK: tools

    @Test func toolCallsWithArgumentsSplitAcrossChunksRunAndTheirResultsGoBack() async throws {
        try await withHarness { h in
            let id = try SessionID("tools")
            let model = h.model()
            _ = try await h.submit(
                id, input: .string("/call calculator {\"expression\": \"(2+3)*4\"}\n/call clock {}"), options: ["model": .string(model)])
            #expect(try await h.settle(id) == "waiting", "\(h.worker.output.suffix(1500))")
            let all = try await events(h.conn, h.keys, id)
            let calls = all.filter { $0.fields["message"]?.hasPrefix("tool call ") == true }.map(data)
            let results = all.filter { $0.fields["message"]?.hasPrefix("tool result ") == true }.map(data)
            #expect(calls.map { $0["tool"] } == ["calculator", "clock"], "each call is an event")
            #expect(calls.first?["arguments"] == ["expression": "(2+3)*4"], "arguments reassembled from 3 chunks")
            #expect(calls.map { $0["call"] } == [0, 1])
            #expect(results.first?["result"]?["value"]?.doubleValue == 20)
            #expect(results.allSatisfy { $0["error"] == false }, "\(results)")
            let seen = try await h.fake.requests(model: model)
            try #require(seen.count == 2, "one request with the tool calls, one with their results")
            #expect(seen[0]["tools"]?.arrayValue?.compactMap(\.stringValue).sorted() == ["calculator", "clock"])
            let fedBack = seen[1]["messages"]?.arrayValue ?? []
            #expect(fedBack.filter { $0["role"] == "tool" }.count == 2)
            let (_, state) = try await session(h.conn, h.keys, id)
            let answer = state["answer"]?.stringValue ?? ""
            #expect(answer.hasPrefix("Tool results: {\"expression\":\"(2+3)*4\",\"value\":20}; 20"), "\(answer)")
            #expect(
                state["messages"]?.arrayValue?.map { $0["role"]?.stringValue ?? "" } == ["user", "assistant", "tool", "tool", "assistant"])
        }
    }

    @Test func toolRoundsAreBoundedByMaxToolRounds() async throws {
        try await withHarness { h in
            let id = try SessionID("rounds")
            let model = h.model("loop")
            _ = try await h.submit(id, input: "go", options: ["model": .string(model), "max_tool_rounds": 2])
            #expect(try await h.settle(id) == "waiting", "\(h.worker.output.suffix(1500))")
            let all = try await events(h.conn, h.keys, id)
            #expect(all.filter { $0.fields["message"] == "tool call calculator" }.count == 2, "2 rounds of tool calls")
            let seen = try await h.fake.requests(model: model)
            #expect(seen.count == 3, "2 tool rounds, then one request that forbids tools")
        }
    }

    // MARK: faults

    @Test func rateLimitsAndServerErrorsAreRetriedHonouringRetryAfter() async throws {
        try await withHarness { h in
            let limited = try SessionID("r429")
            let model429 = h.model("429x2", "ra=1")
            _ = try await h.submit(limited, input: "hi", options: ["model": .string(model429)])
            let failing = try SessionID("r500")
            let model500 = h.model("500x2")
            _ = try await h.submit(failing, input: "hi", options: ["model": .string(model500)])
            #expect(try await h.settle(limited) == "waiting", "\(h.worker.output.suffix(1500))")
            #expect(try await h.settle(failing) == "waiting")
            let seen = try await h.fake.requests(model: model429)
            #expect(seen.map { $0["outcome"]?.stringValue ?? "" } == ["429", "429", "ok"])
            let gaps = zip(seen.dropFirst(), seen).map { ($0["started"]?.doubleValue ?? 0) - ($1["started"]?.doubleValue ?? 0) }
            #expect(gaps.allSatisfy { $0 >= 0.95 && $0 < 5 }, "each retry waited the Retry-After of 1 s: \(gaps)")
            let retries = try await events(h.conn, h.keys, limited).filter { $0.fields["message"] == "HTTP 429, retrying" }.map(data)
            #expect(retries.map { $0["delay_ms"] } == [1000, 1000])
            #expect(try await session(h.conn, h.keys, limited).state["answer"] == "You said: hi")
            #expect(try await h.fake.requests(model: model500).map { $0["outcome"]?.stringValue ?? "" } == ["500", "500", "ok"])
            let steps = try await events(h.conn, h.keys, failing).filter { $0.type == "step.started" }
            #expect(steps.count == 1, "retried within the step, not by the worker")

            // A Retry-After over --llm-max-retry-after (default 30 s) fails the attempt at once.
            let long = try SessionID("r429long")
            let modelLong = h.model("429x9", "ra=60")
            _ = try await h.submit(long, input: "hi", options: ["model": .string(modelLong)], maxAttempts: 1)
            #expect(try await h.settle(long, in: ["failed"]) == "failed")
            let dead = try await events(h.conn, h.keys, long).first { $0.type == "step.dead" }
            #expect(dead?.fields["error"]?.contains("Retry-After") == true, "\(String(describing: dead))")
            #expect(try await h.fake.requests(model: modelLong).count == 1)
        }
    }

    @Test func aStreamCutMidwayIsRetriedByTheWorker() async throws {
        try await withHarness { h in
            let id = try SessionID("drop")
            let model = h.model("dropx1")
            _ = try await h.submit(id, input: "one two three four five", options: ["model": .string(model)])
            #expect(try await h.settle(id) == "waiting", "\(h.worker.output.suffix(1500))")
            let all = try await events(h.conn, h.keys, id)
            let retrying = all.first { $0.type == "step.retrying" }
            #expect(retrying?.fields["error"]?.contains("streamInterrupted") == true, "\(all.map(\.fields))")
            #expect(all.filter { $0.type == "step.started" }.map(\.attempt) == [1, 2])
            #expect(try await session(h.conn, h.keys, id).state["answer"] == "You said: one two three four five")
            #expect(try await h.fake.requests(model: model).map { $0["outcome"]?.stringValue ?? "" } == ["dropped", "ok"])
        }
    }

    @Test func aMalformedChunkIsAClearError() async throws {
        try await withHarness { h in
            let id = try SessionID("malformed")
            _ = try await h.submit(id, input: "hello there", options: ["model": .string(h.model("malformedx1"))])
            #expect(try await h.settle(id) == "waiting", "\(h.worker.output.suffix(1500))")
            let retrying = try await events(h.conn, h.keys, id).first { $0.type == "step.retrying" }
            let error = retrying?.fields["error"] ?? ""
            #expect(error.contains("malformedChunk") && error.contains("streamed chunk 3 is not valid JSON"), "\(error)")
            #expect(try await session(h.conn, h.keys, id).state["answer"] == "You said: hello there")
        }
    }

    @Test func aStepPastItsTimeoutFails() async throws {
        try await withHarness { h in
            let id = try SessionID("timeout")
            let start = ContinuousClock.now
            _ = try await h.submit(
                id, input: "x", options: ["model": .string(h.model("words=100", "slow100")), "step_timeout": 1], maxAttempts: 1)
            #expect(try await h.settle(id, in: ["failed"]) == "failed", "\(h.worker.output.suffix(1500))")
            #expect(ContinuousClock.now - start < .seconds(6))
            let dead = try await events(h.conn, h.keys, id).first { $0.type == "step.dead" }
            #expect(dead?.fields["error"]?.contains("step_timeout of 1.0 s") == true, "\(String(describing: dead))")
        }
    }

    @Test func cancelStopsTheHTTPStreamWithinASecond() async throws {
        try await withHarness { h in
            let id = try SessionID("cancel")
            let model = h.model("words=600", "slow100")
            _ = try await h.submit(id, input: "talk", options: ["model": .string(model)])
            let streaming = await eventually(timeout: .seconds(20), interval: .milliseconds(20)) {
                ((try? await events(h.conn, h.keys, id)) ?? []).contains { $0.fields["message"] == "tokens" }
            }
            try #require(streaming, "\(h.worker.output.suffix(1500))")
            let cancelledAt = Date().timeIntervalSince1970
            let cancel = try await h.pool.cli(["cancel", id.rawValue, "--reason", "impatient"])
            #expect(cancel.status == 0, "\(cancel)")
            var closedAt: Double?
            _ = await eventually(timeout: .seconds(5), interval: .milliseconds(20)) {
                closedAt = (try? await h.fake.requests(model: model))?.first?["closed_at"]?.doubleValue
                return closedAt != nil
            }
            let took = try #require(closedAt, "the server saw the client close the stream") - cancelledAt
            print("[llm cancel] stepwise cancel → HTTP stream closed at the server in \(Int(took * 1000)) ms")
            #expect(took < 1.0, "stream closed \(took) s after the cancel")
            #expect(try await h.settle(id, in: ["cancelled"]) == "cancelled")
            #expect(try await h.fake.requests(model: model).count == 1)
        }
    }

    @Test func aRetriedStepNeverRepeatsAToolsSideEffect() async throws {
        let notes = FileManager.default.temporaryDirectory.appendingPathComponent("stepwise-notes-\(UUID().uuidString).jsonl").path
        defer {
            try? FileManager.default.removeItem(atPath: notes)
            try? FileManager.default.removeItem(atPath: notes + ".lock")
        }
        try await withHarness(workerFlags: ["--llm-notes-file", notes]) { h in
            let id = try SessionID("once")
            // The stream that carries the tool's result back is cut on the first attempt: the worker
            // runs the whole step again, and the model calls the tool again.
            let model = h.model("droptoolx1")
            let job = try await h.submit(id, input: "/call save_note {\"text\":\"buy milk\"}", options: ["model": .string(model)])
            #expect(try await h.settle(id) == "waiting", "\(h.worker.output.suffix(1500))")
            let all = try await events(h.conn, h.keys, id)
            #expect(all.filter { $0.type == "step.started" }.map(\.attempt) == [1, 2], "the step ran twice")
            let results = all.filter { $0.fields["message"] == "tool result save_note" }
            #expect(results.map(\.attempt) == [1, 2], "the tool was called on both attempts")
            #expect(results.map { data($0)["result"]?["saved"] } == [true, false])
            #expect(results.map { data($0)["result"]?["duplicate"] } == [false, true])
            let lines = try String(contentsOfFile: notes, encoding: .utf8).split(separator: "\n")
            #expect(lines.count == 1, "exactly one effect: \(lines)")
            let entry = try JSONValue(parsing: String(lines.first ?? ""))
            #expect(entry["key"]?.stringValue == "\(job)/tool/0", "keyed by the step's idempotency key and the call index")
            #expect(entry["text"] == "buy milk")
        }
    }

    @Test func badOptionsFailTheSessionWithAClearMessageAndSendNothing() async throws {
        try await withHarness { h in
            let hot = try SessionID("hot")
            _ = try await h.submit(hot, input: "x", options: ["model": .string(h.model()), "temperature": 5])
            #expect(try await h.settle(hot) == "failed")
            let failed = try await events(h.conn, h.keys, hot).first { $0.type == "step.failed" }
            #expect(failed?.fields["data"]?.contains("option temperature must be a number 0-2") == true, "\(String(describing: failed))")
            let elsewhere = try SessionID("elsewhere")
            _ = try await h.submit(elsewhere, input: "x", options: ["model": "m", "base_url": "http://127.0.0.1:9/v1"])
            #expect(try await h.settle(elsewhere) == "failed")
            let refused = try await events(h.conn, h.keys, elsewhere).first { $0.type == "step.failed" }
            #expect(refused?.fields["data"]?.contains("not one this worker may use") == true, "the key is never sent elsewhere")
            let empty = try SessionID("empty")
            _ = try await h.submit(empty, input: "", options: ["model": "m"])
            #expect(try await h.settle(empty) == "failed")
        }
    }

    @Test func aRefusedKeyIsAClearErrorThatQuotesNoKey() async throws {
        let wrong = FileManager.default.temporaryDirectory.appendingPathComponent("stepwise-wrong-key-\(UUID().uuidString)").path
        let wrongKey = "sk-wrong-" + UUID().uuidString
        try wrongKey.write(toFile: wrong, atomically: true, encoding: .utf8)
        defer { try? FileManager.default.removeItem(atPath: wrong) }
        // The later --llm-api-key-file wins: this worker sends a key the server refuses (401).
        try await withHarness(workerFlags: ["--llm-api-key-file", wrong]) { h in
            let id = try SessionID("refused")
            let model = h.model()
            _ = try await h.submit(id, input: "hi", options: ["model": .string(model)], maxAttempts: 1)
            #expect(try await h.settle(id, in: ["failed"]) == "failed", "\(h.worker.output.suffix(1500))")
            let dead = try await events(h.conn, h.keys, id).first { $0.type == "step.dead" }
            let error = dead?.fields["error"] ?? ""
            #expect(error.contains("HTTP 401: the endpoint refused the API key"), "\(error)")
            let everything = try await events(h.conn, h.keys, id).map { $0.json.jsonString }.joined()
            #expect(!everything.contains(wrongKey) && !everything.contains("sk-wrong"), "no part of the key in any event")
            #expect(!h.worker.output.contains(wrongKey))
            #expect(try await h.fake.requests(model: model).map { $0["authorized"] } == [false])
        }
    }

    // MARK: the quiz, written by a model

    @Test func aModelWritesTheQuizAndItsBadJSONIsRepaired() async throws {
        try await withHarness { h in
            let id = try SessionID("quiz")
            // Every reply is wrapped in prose and a ```json fence (repaired locally); the first
            // question has the wrong shape (3 choices, answer 7): the model is asked again.
            let model = h.model("fenced", "badjsonx1")
            _ = try await h.submit(
                id, agent: "quiz", input: ["topic": "Redis", "questions": 2], options: ["llm": true, "model": .string(model)])
            #expect(try await h.settle(id, in: ["done", "failed"]) == "done", "\(h.worker.output.suffix(2000))")
            let (_, state) = try await session(h.conn, h.keys, id)
            #expect(state["topic"] == "Redis")
            #expect(state["plan"] == ["angle 1 of the topic", "angle 2 of the topic"])
            let questions = state["questions"]?.arrayValue ?? []
            #expect(questions.count == 2)
            #expect(questions.allSatisfy { QuizQuestion.problem($0) == nil }, "every question has the page's shape: \(questions)")
            #expect(questions.first?["q"] == "Model question 1?")
            #expect(state["summary"] == "A model-written quiz.")
            let all = try await events(h.conn, h.keys, id)
            let rejected = all.filter { $0.fields["message"] == "model output rejected" }.map(data)
            #expect(rejected.count == 1 && rejected.first?["problem"]?.stringValue?.contains("exactly 4") == true, "\(rejected)")
            #expect(all.contains { $0.fields["message"] == "repaired the model's JSON" })
            #expect(all.contains { $0.fields["message"] == "tokens" }, "the model's tokens stream as events")
            let seen = try await h.fake.requests(model: model)
            let parts = seen.compactMap { $0["response_format"]?["json_schema"]?["name"]?.stringValue }
            #expect(parts == ["quiz_plan", "quiz_question", "quiz_question", "quiz_question", "quiz_summary"], "\(parts)")

            // llama-cpp-python's server takes the schema inside json_object (and refuses json_schema).
            let llama = try SessionID("quiz-llama")
            let llamaModel = h.model()
            _ = try await h.submit(
                llama, agent: "quiz", input: ["topic": "Swift", "questions": 1],
                options: ["llm": true, "model": .string(llamaModel), "response_format": "json_object_schema"])
            #expect(try await h.settle(llama, in: ["done", "failed"]) == "done", "\(h.worker.output.suffix(2000))")
            let formats = try await h.fake.requests(model: llamaModel).compactMap { $0["response_format"] }
            #expect(formats.count == 3 && formats.allSatisfy { $0["type"] == "json_object" && $0["schema"]?["properties"] != nil })
            #expect(try await session(h.conn, h.keys, llama).state["questions"]?.arrayValue?.count == 1)
        }
    }

    @Test func theTemplateQuizIsUnchangedAndLlmNeedsAConfiguredWorker() async throws {
        let keys = try TestRedis.uniqueKeys()
        let conn = try TestRedis.connection(name: "llm-tests")
        let pool = WorkerPool(binary: try #require(TestRedis.binary), redisURL: try #require(TestRedis.url), namespace: keys.namespace)
        defer { pool.killAll() }
        try pool.start(id: "plain", concurrency: 2)
        let dispatcher = Dispatcher(connection: conn, keys: keys, agents: AgentRegistry([LLMAgent(configuration: nil), QuizAgent()]))
        let template = try SessionID("template")
        let chat = try SessionID("chat")
        _ = try await dispatcher.submit([
            Submission(session: template, agent: "quiz", input: ["topic": "Swift", "questions": 2]),
            Submission(session: chat, agent: "llm", input: "hi"),
        ]).receipts()
        var done = false
        _ = await eventually(timeout: .seconds(20)) {
            let a = try? await session(conn, keys, template).status
            let b = try? await session(conn, keys, chat).status
            done = a == "done" && b == "failed"
            return done
        }
        #expect(done)
        let state = try await session(conn, keys, template).state
        #expect(state["questions"]?.arrayValue?.first?["choices"]?.arrayValue?.first == "option 1 about Swift: basics")
        #expect(state["summary"] == "A 2-question quiz on Swift.")
        let failed = try await events(conn, keys, chat).first { $0.type == "step.failed" }
        #expect(failed?.fields["data"]?.contains("--llm-base-url") == true)
        #expect(await pool.stopAll()["plain"] == 0)
    }
}
