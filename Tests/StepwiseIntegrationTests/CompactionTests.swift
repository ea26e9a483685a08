import Foundation
import StepwiseAgents
import StepwiseRedis
import StepwiseTesting
import Testing

@testable import StepwiseCore

/// Compaction of idle sessions (`compact.lua`): the event stream of a session with nothing queued
/// or running, idle for the configured time, is removed; the session keeps the stream's last id
/// (`evlast`), so readers can tell a gap from an up-to-date position, and the next event's id
/// continues after it.
@Suite(
    "compaction: idle sessions' event streams",
    .enabled(if: TestRedis.url != nil, "needs STEPWISE_TEST_REDIS_URL: run `make test`"),
    .timeLimit(.minutes(2))
)
struct CompactionTests: EngineSuite {
    let engine: EngineFixture

    init() throws { engine = try EngineFixture() }

    var scripts: ScriptCalls { ScriptCalls(keys: keys, eventsMaxLength: 100) }

    func config() -> Worker.Configuration {
        Worker.Configuration(
            workerID: "cp-\(UUID().uuidString.prefix(8))", concurrency: 4, blockTimeout: .milliseconds(200),
            reaperInterval: .milliseconds(200), grace: .seconds(5), compactAfter: nil)
    }

    /// `XINFO STREAM` fields as a dictionary of strings and integers.
    func info(_ id: SessionID) async throws -> [String: RESPValue] {
        let items = try await conn.send(["XINFO", "STREAM", RedisArgument(keys.events(id))]).throwingServerError().array ?? []
        var out: [String: RESPValue] = [:]
        var i = 0
        while i + 1 < items.count {
            if let k = items[i].string { out[k] = items[i + 1] }
            i += 2
        }
        return out
    }

    func runSteps(_ ids: [SessionID], count: Int) async throws {
        for id in ids { _ = try await dispatcher.submit(Submission(session: id, agent: "counter", input: 1)) }
        for _ in 1..<count { for id in ids { _ = try await dispatcher.submit(Submission(session: id, input: 1)) } }
        let done = try await withRunningWorker(keys: keys, agents: .builtIn, configuration: config()) {
            await eventually(timeout: .seconds(30)) {
                var all = true
                for id in ids where (try? await store.session(id))?.steps != count { all = false }
                return all
            }
        }
        #expect(done)
    }

    func streamExists(_ id: SessionID) async throws -> Bool {
        try await conn.send(["EXISTS", RedisArgument(keys.events(id))]).int == 1
    }

    func evlast(_ id: SessionID) async throws -> String? {
        try await conn.send(["HGET", RedisArgument(keys.session(id)), "evlast"]).string
    }

    func compact(idleMs: Int64, batch: Int = 500) async throws -> Int {
        try #require(try await conn.run(scripts.compact(idleMilliseconds: idleMs, batch: batch)).int)
    }

    @Test func anIdleSessionsStreamIsRemovedAndItsNextEventContinuesAfterItsLastID() async throws {
        let id = try SessionID("idle")
        try await runSteps([id], count: 3)
        let before = try await info(id)
        #expect(before["length"]?.int == 6)
        let lastOld = try #require(before["last-generated-id"]?.string)
        // Not idle long enough: nothing happens.
        #expect(try await compact(idleMs: 3_600_000) == 0)
        #expect(try await info(id)["length"]?.int == 6)
        try await Task.sleep(for: .milliseconds(50))
        #expect(try await compact(idleMs: 10) == 1)
        #expect(try await streamExists(id) == false)
        #expect(try await evlast(id) == lastOld)
        // The session itself is untouched.
        let s = try #require(try await store.session(id))
        #expect(s.steps == 3 && s.state["count"]?.intValue == 3)
        #expect(try await compact(idleMs: 10) == 0, "idempotent")
        _ = try await dispatcher.submit(Submission(session: id, input: 1))
        let resumed = try await withRunningWorker(keys: keys, agents: .builtIn, configuration: config()) {
            await eventually(timeout: .seconds(20)) { (try? await store.session(id))?.steps == 4 }
        }
        #expect(resumed)
        let events = try await store.events(of: id, after: "0", count: 100)
        #expect(events.map(\.type) == ["step.started", "step.completed"])
        #expect(events.allSatisfy { compareIDs($0.id, lastOld) > 0 })
        #expect(try await evlast(id) == nil, "consumed by the first event")
        let ttl = try await conn.send(["PTTL", RedisArgument(keys.events(id))]).int ?? 0
        #expect(ttl > 0, "the new stream expires with its session")
    }

    @Test func theFirstEventAfterCompactionContinuesAfterALaterLastIDAsIfTheClockWentBack() async throws {
        let id = try SessionID("clock")
        try await runSteps([id], count: 1)
        try await Task.sleep(for: .milliseconds(50))
        #expect(try await compact(idleMs: 10) == 1)
        // A last id an hour ahead of the server's clock: the next ids must still come after it.
        let future = UInt64(Date().timeIntervalSince1970 * 1000) + 3_600_000
        _ = try await conn.send(["HSET", RedisArgument(keys.session(id)), "evlast", RedisArgument("\(future)-5")])
        let cancelled = try await dispatcher.cancel(id, reason: "test")
        #expect(cancelled != nil)
        let events = try await store.events(of: id, after: "0", count: 10)
        #expect(events.map(\.id) == ["\(future)-6"], "\(events.map(\.id))")
        #expect(try await evlast(id) == nil)
    }

    @Test func idempotencyKeysStillDeduplicateAfterTheyMoveIntoTheSessionHash() async throws {
        let id = try SessionID("idem")
        let first = try await dispatcher.submit(Submission(session: id, agent: "counter", input: 1, idempotencyKey: "msg-1"))
        let ran = try await withRunningWorker(keys: keys, agents: .builtIn, configuration: config()) {
            await eventually(timeout: .seconds(20)) { (try? await store.session(id))?.steps == 1 }
        }
        #expect(ran)
        try await Task.sleep(for: .milliseconds(50))
        #expect(try await compact(idleMs: 10) == 1)
        #expect(try await conn.send(["EXISTS", RedisArgument(keys.idempotency(id))]).int == 0)
        #expect(try await conn.send(["HGET", RedisArgument(keys.session(id)), "i:msg-1"]).string == first.jobID)
        let again = try await dispatcher.submit(Submission(session: id, input: 1, idempotencyKey: "msg-1"))
        #expect(again.jobID == first.jobID && again.enqueued == false)
        #expect(try await store.session(id)?.queued == 0, "nothing enqueued twice")
    }

    @Test func aBusySessionIsLeftAloneAndCompactedLater() async throws {
        let busy = try SessionID("busy")
        try await runSteps([busy], count: 1)
        // A queued step (no worker running) makes it busy.
        _ = try await dispatcher.submit(Submission(session: busy, input: 1))
        try await Task.sleep(for: .milliseconds(50))
        #expect(try await compact(idleMs: 10) == 0)
        #expect(try await info(busy)["length"]?.int == 2)
        let done = try await withRunningWorker(keys: keys, agents: .builtIn, configuration: config()) {
            await eventually(timeout: .seconds(20)) { (try? await store.session(busy))?.steps == 2 }
        }
        #expect(done)
        try await Task.sleep(for: .milliseconds(50))
        #expect(try await compact(idleMs: 10) == 1, "re-scored when it was busy, so it comes back")
        #expect(try await streamExists(busy) == false)
    }

    @Test func manySessionsWithTheSameScoreAreAllCompactedInBatches() async throws {
        let ids = try (0..<25).map { try SessionID("many-\($0)") }
        try await runSteps(ids, count: 1)
        // Give every session the same score: the cursor must count its place among equal scores.
        for id in ids { _ = try await conn.send(["ZADD", RedisArgument(keys.sessions), "1000", RedisArgument(id.rawValue)]) }
        try await Task.sleep(for: .milliseconds(50))
        var total = 0
        for _ in 0..<10 { total += try await compact(idleMs: 10, batch: 4) }
        #expect(total == 25)
        for id in ids { #expect(try await streamExists(id) == false) }
    }

    @Test func workersCompactOnTheirReaperSchedule() async throws {
        let id = try SessionID("by-worker")
        try await runSteps([id], count: 2)
        var c = config()
        c.compactAfter = .milliseconds(100)
        let compacted = try await withRunningWorker(keys: keys, agents: .builtIn, configuration: c) {
            await eventually(timeout: .seconds(10)) { (try? await streamExists(id)) == false }
        }
        #expect(compacted)
    }

    @Test func badArgumentsAreRefusedBeforeAnyWrite() async throws {
        for (idle, batch) in [(Int64(0), 10), (10, 0), (10, 10_001)] {
            let e = await #expect(throws: StepwiseError.self) { _ = try await compact(idleMs: idle, batch: batch) }
            #expect(e?.code == .invalidArgument)
        }
        #expect(try await conn.send(["EXISTS", RedisArgument(keys.prefix + "compact")]).int == 0)
    }
}

/// Orders two stream ids `<ms>-<seq>` numerically.
func compareIDs(_ a: String, _ b: String) -> Int {
    func parts(_ s: String) -> (UInt64, UInt64) {
        let p = s.split(separator: "-")
        return (UInt64(p.first ?? "0") ?? 0, UInt64(p.count > 1 ? p[1] : "0") ?? 0)
    }
    let (x, y) = (parts(a), parts(b))
    return x == y ? 0 : (x < y ? -1 : 1)
}
