import Foundation
import StepwiseAgents
import StepwiseRedis
import StepwiseTesting
import Testing

@testable import StepwiseCore

@Suite(
    "dispatcher and worker against a real redis-server",
    .enabled(if: TestRedis.url != nil, "needs STEPWISE_TEST_REDIS_URL: run `make test`"),
    .timeLimit(.minutes(3))
)
struct EngineTests: EngineSuite {
    let engine: EngineFixture

    init() throws { engine = try EngineFixture() }

    func workerConfig(_ id: String = "w-\(UUID().uuidString.prefix(8))", concurrency: Int = 4) -> Worker.Configuration {
        Worker.Configuration(workerID: id, concurrency: concurrency, blockTimeout: .milliseconds(200), grace: .seconds(5))
    }

    @Test func submitCreatesTheSessionAndReturnsAtOnce() async throws {
        let id = try SessionID("s1")
        let receipt = try await dispatcher.submit(
            Submission(session: id, agent: "counter", owner: "ann", input: "hello", options: ["model": "small"]))
        #expect(receipt.jobID.hasPrefix("s1:"))
        #expect(receipt.enqueued)
        let s = try #require(try await store.session(id))
        #expect(s.status == .queued)
        #expect(s.agent == "counter")
        #expect(s.owner == "ann")
        #expect(s.options == ["model": "small"])
        #expect(s.state == ["count": 0, "inputs": []])
        #expect(s.queued == 1)
        #expect(try await conn.send(["LRANGE", RedisArgument(keys.ready), 0, -1]).array?.compactMap(\.string) == [receipt.jobID])
        // A second step of the same session is queued in its inbox, not released to `ready`.
        _ = try await dispatcher.submit(Submission(session: id, owner: "ann", input: "again"))
        #expect(try await conn.send(["LLEN", RedisArgument(keys.ready)]).int == 1)
        #expect(try await store.session(id)?.queued == 2)
    }

    @Test func idempotencyKeyReturnsTheFirstJobAndEnqueuesNothing() async throws {
        let id = try SessionID("idem")
        let first = try await dispatcher.submit(Submission(session: id, agent: "counter", input: 1, idempotencyKey: "k1"))
        let again = try await dispatcher.submit(Submission(session: id, agent: "counter", input: 2, idempotencyKey: "k1"))
        #expect(first.enqueued)
        #expect(!again.enqueued)
        #expect(again.jobID == first.jobID)
        #expect(try await store.session(id)?.queued == 1)
    }

    @Test func submitRejectsMismatchesAndUnknownAgents() async throws {
        let id = try SessionID("mm")
        _ = try await dispatcher.submit(Submission(session: id, agent: "counter", owner: "ann", input: 1))
        #expect(await stepwiseErrorCode { try await dispatcher.submit(Submission(session: id, agent: "echo", input: 1)) } == .agentMismatch)
        #expect(await stepwiseErrorCode { try await dispatcher.submit(Submission(session: id, owner: "bob", input: 1)) } == .notOwner)
        #expect(
            await stepwiseErrorCode { try await dispatcher.submit(Submission(session: try SessionID("new"), input: 1)) } == .sessionNotFound
        )
        #expect(await stepwiseErrorCode { try await dispatcher.submit(Submission(session: id, agent: "nope", input: 1)) } == .unknownAgent)
        let big = JSONValue.string(String(repeating: "x", count: 300 * 1024))
        #expect(await stepwiseErrorCode { try await dispatcher.submit(Submission(session: id, input: big)) } == .inputTooLarge)
        #expect(try await store.session(id)?.queued == 1, "rejected submits enqueue nothing")
    }

    @Test func quizRunsToDoneWithOrderedEvents() async throws {
        let id = try SessionID("quiz")
        _ = try await dispatcher.submit(Submission(session: id, agent: "quiz", input: ["topic": "Redis", "questions": 3]))
        let done = try await withRunningWorker(keys: keys, agents: .builtIn, configuration: workerConfig()) {
            await eventually(timeout: .seconds(20)) { (try? await store.session(id))?.status == .done }
        }
        #expect(done)
        let s = try #require(try await store.session(id))
        #expect(s.steps == 5 && s.version == 5)
        #expect(s.state["questions"]?.arrayValue?.count == 3)
        let events = try await store.events(of: id, after: "0", count: 1000)
        let types = events.map(\.type)
        #expect(types.filter { $0 == "step.completed" }.count == 5)
        #expect(types.filter { $0 == "step.progress" }.count == 5)
        // Per step: started, progress, completed, in order, with rising step numbers.
        for step in 1...5 {
            let mine = events.filter { $0.step == step }.map(\.type)
            #expect(mine == ["step.started", "step.progress", "step.completed"], "step \(step): \(mine)")
        }
        #expect(events.allSatisfy { $0.session == "quiz" && $0.attempt == 1 && $0.time > 0 && !$0.jobID.isEmpty })
        let inflight = try await ProtocolDriver(conn: conn, keys: keys).allKeys().filter { $0.hasPrefix(keys.prefix + "inflight:") }
        #expect(inflight.isEmpty, "no worker holds a job after the session settled: \(inflight)")
    }

    @Test func stepsOfEachSessionApplyInSubmissionOrder() async throws {
        let sessions = try (0..<8).map { try SessionID("order\($0)") }
        let steps = 25
        var batch: [Submission] = []
        for step in 0..<steps {
            for s in sessions { batch.append(Submission(session: s, agent: "counter", input: .int(step))) }
        }
        _ = try await dispatcher.submit(batch).receipts()
        let finished = try await withRunningWorker(keys: keys, agents: .builtIn, configuration: workerConfig(concurrency: 6)) {
            await eventually(timeout: .seconds(60)) {
                var all = true
                for s in sessions where (try? await store.session(s))?.steps != steps { all = false }
                return all
            }
        }
        #expect(finished)
        for s in sessions {
            let snap = try #require(try await store.session(s))
            #expect(snap.state["inputs"]?.arrayValue?.compactMap(\.intValue) == Array(0..<steps))
            #expect(snap.state["count"]?.intValue == steps)
            #expect(snap.status == .waiting)
        }
    }

    @Test func staleCommitIsRejectedAndChangesNothing() async throws {
        let id = try SessionID("fence")
        let receipt = try await dispatcher.submit(Submission(session: id, agent: "counter", input: "x"))
        let p = ProtocolDriver(conn: conn, keys: keys)
        try await p.register("slow")
        try await p.register("fast")
        let slow = try await p.claimRun("slow")
        // The slow worker is presumed dead: a reaper puts its job back and another worker takes it.
        try await p.expire("slow")
        #expect(try await p.reap("slow") == 1)
        let fast = try await p.claimRun("fast")
        #expect(fast.jobID == receipt.jobID)
        #expect(fast.attempt == 2)
        #expect(fast.holder != slow.holder)
        #expect(try await p.commit("slow", slow, state: #"{"count":99,"inputs":["late"]}"#) == "stale")
        #expect(try await p.commit("fast", fast, state: #"{"count":1,"inputs":["x"]}"#) == "ok")
        let s = try #require(try await store.session(id))
        #expect(s.state == ["count": 1, "inputs": ["x"]])
        #expect(s.version == 1)
        #expect(try await p.stat("stale_commits") == 1)
    }

    @Test func corruptStateIsDeadLetteredWithoutStoppingTheWorker() async throws {
        let bad = try SessionID("corrupt")
        let good = try SessionID("healthy")
        _ = try await dispatcher.submit(Submission(session: bad, agent: "counter", input: 1))
        _ = try await conn.send(["HSET", RedisArgument(keys.session(bad)), "state", "{not json"])
        _ = try await dispatcher.submit(Submission(session: good, agent: "counter", input: 1))
        let ok = try await withRunningWorker(keys: keys, agents: .builtIn, configuration: workerConfig(concurrency: 1)) {
            await eventually(timeout: .seconds(20)) {
                let b = try? await store.session(bad)
                let g = try? await store.session(good)
                return b?.status == .failed && g?.status == .waiting
            }
        }
        #expect(ok)
        let events = try await store.events(of: bad, after: "0")
        let dead = try #require(events.first { $0.type == "step.dead" })
        #expect(dead.fields["error"]?.contains("session state is not valid JSON") == true)
        #expect(dead.fields["reason"] == "invalid job")
        #expect(!events.contains { $0.type == "step.retrying" }, "a job that can never run is not retried")
        let letters = try await DeadLetterQueue(connection: conn, keys: keys).list()
        #expect(letters.map(\.session) == ["corrupt"])
        #expect(letters.first?.attempts == 1)
    }
}
