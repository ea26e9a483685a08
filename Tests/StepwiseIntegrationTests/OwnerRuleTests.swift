import Foundation
import StepwiseAgents
import StepwiseCore
import StepwiseRedis
import StepwiseTesting
import Testing

@Suite(
    "owners: only a session's owner (or an operator) submits to it; dispatchers without agent code",
    .enabled(if: TestRedis.url != nil, "needs STEPWISE_TEST_REDIS_URL: run `make test`"),
    .timeLimit(.minutes(2))
)
struct OwnerRuleTests: EngineSuite {
    let engine: EngineFixture

    init() throws { engine = try EngineFixture() }

    @Test func aSubmitWithoutTheOwnerIsRefusedAndChangesNeitherTTLNorOptions() async throws {
        let id = try SessionID("owned")
        _ = try await dispatcher.submit(
            Submission(session: id, agent: "echo", owner: "alice", input: 1, options: ["model": "a"], ttl: .seconds(600)))
        let ttlBefore = try #require(try await conn.send(["PTTL", RedisArgument(keys.session(id))]).int)
        for owner in [nil, "", "bob"] as [String?] {
            let code = await stepwiseErrorCode {
                _ = try await dispatcher.submit(
                    Submission(session: id, owner: owner, input: 2, options: ["model": "evil"], ttl: .seconds(1)))
            }
            // An empty owner is refused before Redis (not a valid owner); the others by the script.
            #expect(code == (owner == "" ? .invalidOwner : .notOwner), "owner \(String(describing: owner))")
        }
        let s = try #require(try await store.session(id))
        #expect(s.queued == 1 && s.options["model"]?.stringValue == "a")
        let ttlAfter = try #require(try await conn.send(["PTTL", RedisArgument(keys.session(id))]).int)
        #expect(ttlAfter > 500_000 && ttlAfter <= ttlBefore, "TTL untouched: \(ttlBefore) → \(ttlAfter)")
        // The owner and an explicit operator call are accepted.
        #expect(try await dispatcher.submit(Submission(session: id, owner: "alice", input: 3)).enqueued)
        #expect(try await dispatcher.submit(Submission(session: id, input: 4, asOperator: true)).enqueued)
        #expect(try await store.session(id)?.queued == 3)
        // A session without an owner stays open to every submit.
        let open = try SessionID("open")
        _ = try await dispatcher.submit(Submission(session: open, agent: "echo", input: 1))
        #expect(try await dispatcher.submit(Submission(session: open, owner: "bob", input: 2)).enqueued)
    }

    @Test func theCommandLineIsTheOperatorsToolOnlyWithAsOperator() async throws {
        let url = try #require(TestRedis.url)
        _ = try #require(TestRedis.binary)
        let common = ["--redis", url, "--namespace", keys.namespace]
        let made = try await runBinary(
            ["submit", "--session", "cli-owned", "--agent", "echo", "--owner", "alice", "--input", "1"] + common)
        #expect(made.status == 0, "\(made.stderr)")
        let anonymous = try await runBinary(["submit", "--session", "cli-owned", "--input", "2", "--ttl", "1"] + common)
        #expect(anonymous.status == 1 && anonymous.stderr.contains("belongs to another owner"), "\(anonymous)")
        let asAlice = try await runBinary(["submit", "--session", "cli-owned", "--owner", "alice", "--input", "3"] + common)
        #expect(asAlice.status == 0, "\(asAlice.stderr)")
        let op = try await runBinary(["submit", "--session", "cli-owned", "--as-operator", "--input", "4"] + common)
        #expect(op.status == 0, "\(op.stderr)")
        #expect(try await store.session(try SessionID("cli-owned"))?.queued == 3)
    }

    @Test func aDispatcherWithoutAgentCodeEnqueuesAndTheWorkerBuildsTheInitialState() async throws {
        let light = Dispatcher(connection: conn, keys: keys, agentNames: ["counter"])
        let id = try SessionID("light")
        #expect(await stepwiseErrorCode { _ = try await light.submit(Submission(session: id, agent: "quiz", input: 1)) } == .unknownAgent)
        _ = try await light.submit(Submission(session: id, agent: "counter", input: "a"))
        _ = try await light.submit(Submission(session: id, input: "b"))
        #expect(try await store.session(id)?.state == .null, "no state until the first step")
        let config = Worker.Configuration(workerID: "w-light", concurrency: 2, blockTimeout: .milliseconds(200), grace: .seconds(5))
        let done = try await withRunningWorker(keys: keys, agents: .builtIn, configuration: config) {
            await eventually(timeout: .seconds(20)) { (try? await store.session(id))?.steps == 2 }
        }
        #expect(done)
        let s = try #require(try await store.session(id))
        let expected = try await {
            // What the same two steps give when the initial state was built at submit.
            let full = try SessionID("full")
            _ = try await dispatcher.submit(Submission(session: full, agent: "counter", input: "a"))
            _ = try await dispatcher.submit(Submission(session: full, input: "b"))
            _ = try await withRunningWorker(keys: keys, agents: .builtIn, configuration: config) {
                await eventually(timeout: .seconds(20)) { (try? await store.session(full))?.steps == 2 }
            }
            return try #require(try await store.session(full)).state
        }()
        #expect(s.state["count"]?.intValue == 2 && s.state == expected, "\(s.state) vs \(expected)")
    }
}
