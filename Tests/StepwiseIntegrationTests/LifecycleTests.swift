import Foundation
import StepwiseAgents
import StepwiseRedis
import StepwiseTesting
import Testing

@testable import StepwiseCore

/// Retries, dead letters, cancel, touch and expiry, with in-process workers (fast, precise).
/// The fault suite (`FaultTests`) drives the same paths through worker processes.
@Suite(
    "lifecycle: retries, dead letters, cancel, expiry",
    .enabled(if: TestRedis.url != nil, "needs STEPWISE_TEST_REDIS_URL: run `make test`"),
    .timeLimit(.minutes(3))
)
struct LifecycleTests {
    let keys: KeySpace
    let conn: RedisConnection
    let dispatcher: Dispatcher
    let store: SessionStore
    let dead: DeadLetterQueue

    init() throws {
        keys = try TestRedis.uniqueKeys()
        conn = try TestRedis.connection()
        dispatcher = Dispatcher(connection: conn, keys: keys, agents: .builtIn)
        store = SessionStore(connection: conn, keys: keys)
        dead = DeadLetterQueue(connection: conn, keys: keys)
    }

    func config(maxAttempts: Int = 3) -> Worker.Configuration {
        Worker.Configuration(
            workerID: "lc-\(UUID().uuidString.prefix(8))", concurrency: 2, blockTimeout: .milliseconds(200),
            reaperInterval: .milliseconds(200), grace: .seconds(5), maxAttempts: maxAttempts,
            retryDelay: .milliseconds(50), maxRetryDelay: .milliseconds(200))
    }

    func events(_ id: SessionID) async throws -> [StepEvent] { try await store.events(of: id, after: "0", count: 1000) }

    @Test func aThrowingStepIsRetriedThenDeadLetteredAndBlocksItsSessionUntilPurged() async throws {
        let id = try SessionID("retry")
        _ = try await dispatcher.submit(Submission(session: id, agent: "fault", input: ["n": 0]))
        let job = try await dispatcher.submit(Submission(session: id, input: ["n": 1, "fault": "throw"])).jobID
        _ = try await dispatcher.submit(Submission(session: id, input: ["n": 2]))
        let blocked = try await withRunningWorker(keys: keys, agents: .builtIn, configuration: config(maxAttempts: 3)) {
            await eventually(timeout: .seconds(20)) { (try? await store.session(id))?.deadLetter != nil }
        }
        #expect(blocked)
        let s = try #require(try await store.session(id))
        #expect(s.status == .failed)
        #expect(s.deadLetter == job)
        #expect(s.queued == 2, "the dead step and the one held behind it")
        #expect(s.state["inputs"]?.arrayValue?.compactMap { $0["n"]?.intValue } == [0])
        let types = try await events(id).filter { $0.jobID == job }.map(\.type)
        #expect(types == ["step.started", "step.retrying", "step.started", "step.retrying", "step.started", "step.dead"])
        let letter = try #require(try await dead.show(jobID: job))
        #expect(letter.attempts == 3)
        #expect(letter.reason == "attempts exhausted")
        #expect(letter.error.contains("injected fault"))
        #expect(letter.heldSteps == 1)
        #expect(try await dead.list().map(\.jobID) == [job])

        try await dead.purge(jobID: job)
        #expect(try await dead.list().isEmpty)
        let resumed = try await withRunningWorker(keys: keys, agents: .builtIn, configuration: config()) {
            await eventually(timeout: .seconds(20)) { (try? await store.session(id))?.steps == 2 }
        }
        #expect(resumed)
        let after = try #require(try await store.session(id))
        #expect(after.state["inputs"]?.arrayValue?.compactMap { $0["n"]?.intValue } == [0, 2], "the purged step is never applied")
        #expect(after.status == .waiting)
        let notDead = await #expect(throws: StepwiseError.self) { try await dead.retry(jobID: job) }
        #expect(notDead?.code == .notDeadLetter)
    }

    @Test func aStepThatFailsOnceSucceedsOnItsSecondAttempt() async throws {
        let id = try SessionID("flaky")
        _ = try await dispatcher.submit(Submission(session: id, agent: "fault", input: ["n": 1, "fault": "throw-once"]))
        let ok = try await withRunningWorker(keys: keys, agents: .builtIn, configuration: config()) {
            await eventually(timeout: .seconds(20)) { (try? await store.session(id))?.steps == 1 }
        }
        #expect(ok)
        let done = try #require(try await events(id).first { $0.type == "step.completed" })
        #expect(done.attempt == 2)
        let retrying = try #require(try await events(id).first { $0.type == "step.retrying" })
        #expect(Int(retrying.fields["delay"] ?? "") ?? -1 >= 25, "equal jitter: at least half the 50 ms base")
    }

    @Test func aSubmitsMaxAttemptsOverridesTheWorkers() async throws {
        let id = try SessionID("once")
        let job = try await dispatcher.submit(Submission(session: id, agent: "fault", input: ["fault": "throw"], maxAttempts: 1)).jobID
        let isDead = try await withRunningWorker(keys: keys, agents: .builtIn, configuration: config(maxAttempts: 5)) {
            await eventually(timeout: .seconds(20)) { (try? await dead.show(jobID: job)) != nil }
        }
        #expect(isDead)
        #expect(try await events(id).filter { $0.type == "step.started" }.count == 1)
    }

    @Test func anOversizedResultIsDeadLetteredAtOnce() async throws {
        let id = try SessionID("garbage")
        let job = try await dispatcher.submit(Submission(session: id, agent: "fault", input: ["fault": "garbage"])).jobID
        let isDead = try await withRunningWorker(keys: keys, agents: .builtIn, configuration: config()) {
            await eventually(timeout: .seconds(20)) { (try? await dead.show(jobID: job)) != nil }
        }
        #expect(isDead)
        let letter = try #require(try await dead.show(jobID: job))
        #expect(letter.reason == "invalid result")
        #expect(letter.error.contains("over the limit"))
        #expect(letter.attempts == 1)
        #expect(try await store.session(id)?.state == ["count": 0, "inputs": []], "the state is untouched")
    }

    @Test func badInputIsRejectedAtSubmitAndWritesNothing() async throws {
        let id = try SessionID("big")
        let big = JSONValue.string(String(repeating: "z", count: 300 * 1024))
        #expect(
            await stepwiseErrorCode { _ = try await dispatcher.submit(Submission(session: id, agent: "echo", input: big)) }
                == .inputTooLarge)
        #expect(
            await stepwiseErrorCode { _ = try await dispatcher.submit(Submission(session: id, agent: "nope", input: 1)) } == .unknownAgent)
        #expect(await stepwiseErrorCode { _ = try await dispatcher.submit(Submission(session: id, input: 1)) } == .sessionNotFound)
        #expect(try await store.session(id) == nil)
        #expect(try await conn.send(["EXISTS", RedisArgument(keys.inbox(id)), RedisArgument(keys.events(id))]).int == 0)
        // A batch answers each submission: the bad one gets its error and writes nothing, the good
        // ones are enqueued and keep their receipts.
        let results = await dispatcher.submit([
            Submission(session: id, agent: "echo", input: 1), Submission(session: id, agent: "echo", input: big),
            Submission(session: id, agent: "echo", input: 3),
        ])
        #expect(results.count == 3)
        let first = try results[0].get()
        let third = try results[2].get()
        #expect(first.enqueued && third.enqueued && first.jobID != third.jobID)
        #expect(throws: StepwiseError.self) { try results[1].get() }
        if case .failure(let error as StepwiseError) = results[1] {
            #expect(error.code == .inputTooLarge)
        } else {
            Issue.record("no typed error")
        }
        #expect(await stepwiseErrorCode { _ = try results.receipts() } == .inputTooLarge)
        let inbox = try await conn.send(["LRANGE", RedisArgument(keys.inbox(id)), 0, -1]).array?.compactMap(\.string)
        #expect(inbox == [first.jobID, third.jobID])
    }

    @Test func cancelDropsQueuedStepsAndRefusesLaterSubmits() async throws {
        let id = try SessionID("cancel")
        for n in 0..<3 { _ = try await dispatcher.submit(Submission(session: id, agent: "counter", input: ["n": .int(n)])) }
        let result = try #require(try await dispatcher.cancel(id, reason: "user left"))
        #expect(result.dropped == 3)
        #expect(result.running == nil)
        #expect(try await dispatcher.cancel(id, reason: "again") == nil, "cancelling twice changes nothing")
        let s = try #require(try await store.session(id))
        #expect(s.status == .cancelled && s.cancelReason == "user left" && s.queued == 0)
        #expect(try await conn.send(["LLEN", RedisArgument(keys.ready)]).int == 0)
        let cancelled = try #require(try await events(id).first { $0.type == "session.cancelled" })
        #expect(cancelled.fields["reason"] == "user left")
        #expect(
            await stepwiseErrorCode {
                _ = try await dispatcher.submit(Submission(session: id, input: 1))
            } == .sessionCancelled)
        #expect(
            await stepwiseErrorCode {
                _ = try await dispatcher.cancel(try SessionID("nobody"), reason: "x")
            } == .sessionNotFound)
    }

    @Test func aRunningStepIsCancelledWithItsSession() async throws {
        let id = try SessionID("running")
        _ = try await dispatcher.submit(Submission(session: id, agent: "fault", input: ["n": 1, "fault": "hang", "ms": 30_000]))
        _ = try await dispatcher.submit(Submission(session: id, input: ["n": 2]))
        let stopped = try await withRunningWorker(keys: keys, agents: .builtIn, configuration: config()) {
            let started = await eventually(timeout: .seconds(10)) { (try? await store.session(id))?.status == .running }
            #expect(started)
            _ = try await dispatcher.cancel(id, reason: "stop")
            // The worker's cancel watch runs every 500 ms; 10 s leaves room for a loaded machine.
            return await eventually(timeout: .seconds(10), interval: .milliseconds(20)) {
                (try? await events(id))?.contains { $0.type == "step.cancelled" } == true
            }
        }
        #expect(stopped)
        let types = try await events(id).map(\.type)
        #expect(try await events(id).first { $0.type == "step.cancelled" }?.step == 1)
        #expect(!types.contains("step.completed"))
        #expect(types.filter { $0 == "step.started" }.count == 1, "the queued step never runs")
        #expect(try await store.session(id)?.queued == 0)
    }

    @Test func touchExtendsAnIdleSessionAndExpiryRemovesEveryKeyAndIndexEntry() async throws {
        let id = try SessionID("ttl")
        let before = ContinuousClock.now
        _ = try await dispatcher.submit(Submission(session: id, agent: "counter", input: 1, ttl: .seconds(3)))
        let pttl = try await conn.send(["PTTL", RedisArgument(keys.session(id))]).int ?? -1
        // The expiry counts from the submit's clock reading: on a loaded machine some of the 3 s
        // have passed by the time PTTL runs, never more than the time since `before`.
        let since = ContinuousClock.now - before
        let elapsed = Int(since.components.seconds * 1000 + since.components.attoseconds / 1_000_000_000_000_000)
        #expect(
            (3000 - elapsed...4100).contains(pttl), "expires between ttl and ttl + 1 s, less the \(elapsed) ms since the submit: \(pttl)")
        let expiry = try #require(try await dispatcher.touch(id, ttl: .seconds(60)))
        #expect(expiry > Dispatcher.nowMillis() + 59_000)
        for key in [keys.inbox(id), keys.jobs(id)] {
            #expect((try await conn.send(["PTTL", RedisArgument(key)]).int ?? -1) > 59_000, "every key gets the same expiry: \(key)")
        }
        _ = try await dispatcher.touch(id, ttl: .seconds(1))
        let gone = try await withRunningWorker(keys: keys, agents: .builtIn, configuration: config()) {
            await eventually(timeout: .seconds(15), interval: .milliseconds(100)) {
                let found = try? await ProtocolDriver(conn: conn, keys: keys).allKeys().filter { $0.hasPrefix(keys.session(id)) }
                let index = try? await conn.send(["ZSCORE", RedisArgument(keys.sessions), RedisArgument(id.rawValue)])
                return found?.isEmpty == true && index?.isNull == true
            }
        }
        #expect(gone, "keys expired and the sweep removed the index entry")
        #expect(try await conn.send(["ZSCORE", RedisArgument(keys.expiry), RedisArgument(id.rawValue)]).isNull)
        #expect(await stepwiseErrorCode { _ = try await dispatcher.touch(id) } == .sessionNotFound)
    }
}
