import Foundation
import Logging
import StepwiseAgents
import StepwiseRedis
import StepwiseTesting
import Synchronization
import Testing

@testable import StepwiseCore

/// The worker's state cache: a large state the worker committed is not sent back with the
/// session's next claim, and is used only at the exact incarnation and version it was committed at.
@Suite(
    "state cache: large states stay in the worker between a session's steps",
    .enabled(if: TestRedis.url != nil, "needs STEPWISE_TEST_REDIS_URL: run `make test`"),
    .timeLimit(.minutes(2))
)
struct StateCacheTests: EngineSuite {
    let engine: EngineFixture

    init() throws { engine = try EngineFixture() }

    func worker(cacheBytes: Int = 1 << 20, deltas: Bool = false) throws -> Worker {
        var c = Worker.Configuration(
            workerID: "sc-\(UUID().uuidString.prefix(8))", concurrency: 2, blockTimeout: .milliseconds(200),
            reaperInterval: .milliseconds(200), grace: .seconds(5), compactAfter: nil)
        c.stateCacheBytes = cacheBytes
        c.stateCacheThreshold = 512
        c.stateDeltas = deltas
        return Worker(
            configuration: c, redis: .init(endpoint: try TestRedis.endpoint), keys: keys, agents: .builtIn,
            logger: Logger(label: "test.worker"))
    }

    func steps(_ id: SessionID, equal n: Int) async -> Bool {
        await eventually(timeout: .seconds(30)) { (try? await store.session(id))?.steps == n }
    }

    /// The stored state: its count, its inputs' `n`, and the length of its filler.
    func stored(_ id: SessionID) async throws -> (count: Int?, inputs: [Int], pad: Int) {
        let text = try #require(try await conn.send(["HGET", RedisArgument(keys.session(id)), "state"]).string)
        let state = try JSONValue(parsing: text)
        let inputs = (state["inputs"]?.arrayValue ?? []).compactMap { $0["n"]?.intValue }
        return (state["count"]?.intValue, inputs, state["pad"]?.stringValue?.utf8.count ?? 0)
    }

    @Test func consecutiveStepsOfALargeSessionClaimWithoutItsState() async throws {
        let id = try SessionID("big")
        let w = try worker(deltas: true)
        _ = try await dispatcher.submit(Submission(session: id, agent: "counter", input: ["n": 1], options: ["pad": 4000]))
        for n in 2...6 { _ = try await dispatcher.submit(Submission(session: id, input: ["n": .int(n)])) }
        let done = try await withRunning(w) { await steps(id, equal: 6) }
        #expect(done)
        let s = try await stored(id)
        #expect(s.count == 6)
        #expect(s.inputs == [1, 2, 3, 4, 5, 6])
        #expect(s.pad == 4000)
        // Steps 2-6 were claimed by the commit before them, without the state: each found it cached.
        let stats = w.stateCache.statistics
        #expect(stats.hits >= 5, "\(stats)")
        #expect(stats.misses == 0, "\(stats)")
        #expect(stats.entries == 1)
        // Steps 2-6 sent back only what changed (the count and the inputs, not the filler), and
        // the script rebuilt the state the assertions above read.
        #expect(w.deltaCommits.load(ordering: .relaxed) == 5)
    }

    @Test func queuedStepsOfLargeSessionsStayOnTheWorkerThatHasTheirState() async throws {
        // Four large sessions with eight queued steps each, two workers of two slots: a commit
        // claims its own session's next step (not `ready`'s head, another session's), so every
        // step after a session's first finds the state in the cache of the worker that runs it.
        let ids = try (0..<4).map { try SessionID("sticky-\($0)") }
        for id in ids {
            _ = try await dispatcher.submit(Submission(session: id, agent: "counter", input: ["n": 1], options: ["pad": 4000]))
        }
        for n in 2...8 { for id in ids { _ = try await dispatcher.submit(Submission(session: id, input: ["n": .int(n)])) } }
        let a = try worker()
        let b = try worker()
        let done = try await withRunning(a) {
            try await withRunning(b) {
                await eventually(timeout: .seconds(30)) {
                    var all = true
                    for id in ids where (try? await store.session(id))?.steps != 8 { all = false }
                    return all
                }
            }
        }
        #expect(done)
        for id in ids { #expect(try await stored(id).inputs == Array(1...8)) }
        let hits = a.stateCache.statistics.hits + b.stateCache.statistics.hits
        let misses = a.stateCache.statistics.misses + b.stateCache.statistics.misses
        #expect(misses == 0, "a: \(a.stateCache.statistics), b: \(b.stateCache.statistics)")
        #expect(hits == 4 * 7, "a: \(a.stateCache.statistics), b: \(b.stateCache.statistics)")
        // Without --state-deltas every commit carries its whole state.
        #expect(a.deltaCommits.load(ordering: .relaxed) + b.deltaCommits.load(ordering: .relaxed) == 0)
    }

    @Test func anEntryAtAnotherVersionOrIncarnationIsNeverUsed() async throws {
        let id = try SessionID("moved")
        _ = try await dispatcher.submit(Submission(session: id, agent: "counter", input: ["n": 1], options: ["pad": 2000]))
        let w = try worker()
        let forged = #"{"count":100,"inputs":[],"pad":""}"#
        func seed(version: Int, incarnation: String) async throws {
            // The worker keeps its own commit's state just after Redis has it: wait for that
            // first, so the forged entry is not overwritten by it.
            let now = try await current().version
            #expect(await eventually(timeout: .seconds(10)) { w.stateCache.peek(session: id.rawValue)?.version == now })
            w.stateCache.remember(session: id.rawValue, incarnation: incarnation, version: version, state: forged)
        }
        func current() async throws -> (version: Int, inc: String) {
            let f = try await conn.send(["HMGET", RedisArgument(keys.session(id)), "version", "inc"]).array ?? []
            return (Int(f[0].string ?? "") ?? -1, f[1].string ?? "")
        }
        try await withRunning(w) {
            #expect(await steps(id, equal: 1))
            // Another writer moved the session on (as another worker's commit would): an entry at
            // the version before is missed, and the state is read from Redis.
            var (version, inc) = try await current()
            try await seed(version: version - 1, incarnation: inc)
            _ = try await dispatcher.submit(Submission(session: id, input: ["n": 2]))
            #expect(await steps(id, equal: 2))
            #expect(try await stored(id).count == 2)
            // The session was created again under the same id: same version, other incarnation.
            (version, inc) = try await current()
            try await seed(version: version, incarnation: inc + "-old")
            _ = try await dispatcher.submit(Submission(session: id, input: ["n": 3]))
            #expect(await steps(id, equal: 3))
            #expect(try await stored(id).count == 3)
            #expect(try await stored(id).inputs == [1, 2, 3])
            // Control: at the exact version and incarnation the entry is what the step runs on
            // (so the two checks above are what kept the forged state out).
            (version, inc) = try await current()
            try await seed(version: version, incarnation: inc)
            _ = try await dispatcher.submit(Submission(session: id, input: ["n": 4]))
            #expect(await steps(id, equal: 4))
            #expect(try await stored(id).count == 101)
        }
        #expect(w.stateCache.statistics.misses >= 2, "\(w.stateCache.statistics)")
    }

    @Test func smallStatesAndAnOffCacheAlwaysTravelWithTheClaim() async throws {
        let small = try SessionID("small")
        let big = try SessionID("off")
        _ = try await dispatcher.submit(Submission(session: small, agent: "counter", input: ["n": 1]))
        _ = try await dispatcher.submit(Submission(session: big, agent: "counter", input: ["n": 1], options: ["pad": 4000]))
        for n in 2...3 {
            _ = try await dispatcher.submit(Submission(session: small, input: ["n": .int(n)]))
            _ = try await dispatcher.submit(Submission(session: big, input: ["n": .int(n)]))
        }
        let on = try worker()
        let off = try worker(cacheBytes: 0)
        #expect(off.stateAbove == 0)
        let done = try await withRunning(off) { await steps(big, equal: 3) }
        #expect(done)
        #expect(off.stateCache.statistics.entries == 0)
        #expect(try await stored(big).inputs == [1, 2, 3])
        #expect(try await withRunning(on) { await steps(small, equal: 3) })
        #expect(on.stateCache.statistics.entries == 0, "a state under the threshold is not kept")
        #expect(on.stateCache.statistics.misses == 0)
    }

    @Test func theCacheKeepsItsByteBoundAndDropsTheLeastRecentlyUsed() {
        let cache = StateCache(capacity: 10_000)
        for i in 0..<20 { cache.remember(session: "s\(i)", incarnation: "1", version: 1, state: String(repeating: "x", count: 1000)) }
        let stats = cache.statistics
        #expect(stats.bytes <= 10_000)
        #expect(stats.entries <= 10)
        #expect(cache.state(session: "s19", incarnation: "1", version: 1) != nil)
        #expect(cache.state(session: "s0", incarnation: "1", version: 1) == nil)
        cache.remember(session: "huge", incarnation: "1", version: 1, state: String(repeating: "y", count: 20_000))
        #expect(cache.state(session: "huge", incarnation: "1", version: 1) == nil, "a state over the whole capacity is not kept")
    }
}
