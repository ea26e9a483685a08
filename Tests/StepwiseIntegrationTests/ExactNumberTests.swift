import Foundation
import StepwiseAgents
import StepwiseCore
import StepwiseRedis
import StepwiseTesting
import Testing

/// Numbers that a `Double` does not carry as written.
private let numbers = [
    "9007199254740993", "-9223372036854775808", "18446744073709551615", "123456789012345678901234567890",
    "1234567890123456789", "1.2345678901234567890123", "0.1", "-0", "-0.0", "1e400", "1E-7", "2.50", "1.0", "-1.5e-3",
]

/// The step input: compact with sorted keys, so its JSON text is what the engine writes back.
private let inputText = #"{"list":[\#(numbers.joined(separator: ","))],"nested":{"id":1234567890123456789,"price":2.50}}"#
private let optionsText = #"{"big":18446744073709551615,"small":-0.0}"#

@Suite(
    "exact numbers through submit, a worker step and status",
    .enabled(if: TestRedis.url != nil, "needs STEPWISE_TEST_REDIS_URL: run `make test`"),
    .timeLimit(.minutes(2))
)
struct ExactNumberTests {
    @Test func inputStateOptionsAndEventDataKeepEveryNumberAsWritten() async throws {
        let keys = try TestRedis.uniqueKeys()
        let conn = try TestRedis.connection()
        let dispatcher = Dispatcher(connection: conn, keys: keys, agents: .builtIn)
        let store = SessionStore(connection: conn, keys: keys)
        let id = try SessionID("exact")
        let input = try JSONValue(parsing: inputText)
        #expect(input.jsonString == inputText)

        _ = try await dispatcher.submit(
            Submission(session: id, agent: "echo", input: input, options: try JSONValue(parsing: optionsText)))
        let config = Worker.Configuration(workerID: "exact-w", concurrency: 1, blockTimeout: .milliseconds(200), grace: .seconds(5))
        let done = try await withRunningWorker(keys: keys, agents: .builtIn, configuration: config) {
            await eventually(timeout: .seconds(20)) { (try? await store.session(id))?.status == .done }
        }
        #expect(done)

        // What Redis holds: the worker wrote the state from the agent's JSONValue.
        let rawState = try await conn.send(["HGET", RedisArgument(keys.session(id)), "state"]).string
        #expect(rawState == #"{"last":\#(inputText)}"#)
        let rawOptions = try await conn.send(["HGET", RedisArgument(keys.session(id)), "options"]).string
        #expect(rawOptions == optionsText)

        // What a status read gives back.
        let s = try #require(try await store.session(id))
        #expect(s.state.jsonString == #"{"last":\#(inputText)}"#)
        #expect(s.options.jsonString == optionsText)
        let list = s.state["last"]?["list"]?.arrayValue ?? []
        #expect(list.count == numbers.count)
        for (i, text) in numbers.enumerated() {
            #expect(list.indices.contains(i) && list[i].numberValue?.text == text, "number \(i)")
        }
        #expect(s.state["last"]?["nested"]?["id"]?.numberValue?.int64 == 1_234_567_890_123_456_789)
        let status = s.json.jsonString
        #expect(status.contains(#""state":{"last":\#(inputText)}"#), "\(status)")
        #expect(status.contains(#""options":\#(optionsText)"#), "\(status)")

        // The result in the step.completed event.
        let events = try await store.events(of: id, after: "0")
        let completed = try #require(events.first { $0.type == "step.completed" })
        #expect(completed.fields["data"] == inputText)
        #expect(completed.json["data"]?.jsonString == inputText)
    }

    @Test(.enabled(if: TestRedis.binary != nil, "needs STEPWISE_BIN: run `make test`"))
    func commandLineSubmitWaitAndStatusKeepEveryNumberAsWritten() async throws {
        let keys = try TestRedis.uniqueKeys()
        let binary = try #require(TestRedis.binary)
        let url = try #require(TestRedis.url)
        let common = ["--redis", url, "--namespace", keys.namespace]
        let worker = try ChildProcess(binary: binary, arguments: ["worker", "--concurrency", "1"] + common)
        defer { if worker.isRunning { worker.signal(SIGKILL) } }

        let submit = try await runBinary(
            [
                "submit", "--session", "exact-cli", "--agent", "echo", "--input", inputText, "--option", "big=18446744073709551615",
                "--option", "small=-0.0", "--wait", "--json",
            ] + common)
        #expect(submit.status == 0, "\(submit.stderr)")
        let last = submit.stdout.split(separator: "\n").last.map(String.init) ?? ""
        #expect(last.contains(#""type":"step.completed""#), "\(submit.stdout)")
        #expect(last.contains(#""data":\#(inputText)"#), "\(last)")

        let status = try await runBinary(["status", "exact-cli", "--json"] + common)
        #expect(status.status == 0, "\(status.stderr)")
        #expect(status.stdout.contains(#""state":{"last":\#(inputText)}"#), "\(status.stdout)")
        #expect(status.stdout.contains(#""options":\#(optionsText)"#), "\(status.stdout)")
        #expect(await worker.stop() == 0)
    }
}
