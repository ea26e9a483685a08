import Foundation
import Logging
import StepwiseAgents
import StepwiseRedis
import StepwiseTesting
import Testing

@testable import StepwiseCore

/// Whole-engine guarantees: a full Redis never makes live workers look dead, and expired
/// sessions leave no keys behind.
@Suite(
    "guarantees: redis out of memory, no orphan keys",
    .enabled(if: TestRedis.url != nil && TestRedis.binary != nil, "needs STEPWISE_TEST_REDIS_URL and STEPWISE_BIN: run `make test`"),
    .timeLimit(.minutes(3))
)
struct GuaranteeTests {
    /// Redis runs out of memory (`maxmemory 1`, `noeviction`) for longer than two heartbeat TTLs
    /// while steps run: workers stop claiming and say so (log and `stepwise queue`), no live worker
    /// is reaped, a submit gets the OOM error itself, and once memory is back every session
    /// finishes with a clean ledger.
    @Test func redisOutOfMemoryStopsClaimsReapsNobodyAndRecovers() async throws {
        let server = try await RedisServerProcess.start()
        defer { server.terminate() }
        let keys = try KeySpace(namespace: "oom")
        let conn = RedisConnection(configuration: .init(endpoint: server.endpoint))
        let pool = WorkerPool(binary: try #require(TestRedis.binary), redisURL: server.url, namespace: keys.namespace)
        defer { pool.killAll() }
        for i in 0..<2 { _ = try pool.start(id: "oom-w\(i)", concurrency: 2) }
        let dispatcher = Dispatcher(connection: conn, keys: keys, agents: .builtIn)
        let sessions = try (0..<4).map { try SessionID("oom-\($0)") }
        var expected: [SessionID: [JSONValue]] = [:]
        for id in sessions {
            let inputs: [JSONValue] = (0..<6).map { ["n": .int($0)] }
            expected[id] = inputs
            _ = try await dispatcher.submit(inputs.map { Submission(session: id, agent: "counter", input: $0, options: ["ms": 150]) })
                .receipts()
        }
        let running = await eventually(timeout: .seconds(20)) {
            ((try? await conn.send(["HGET", RedisArgument(keys.stats), "committed"]).int) ?? 0) >= 2
        }
        try #require(running, "\(pool.logs())")
        _ = try await conn.send(["CONFIG", "SET", "maxmemory", "1"]).throwingServerError()
        // A submit now reports the OOM refusal itself, alone or in a batch.
        let refused = await dispatcher.submit([
            Submission(session: sessions[0], input: ["n": 99]), Submission(session: sessions[1], input: ["n": 99]),
        ])
        for r in refused {
            guard case .failure(let e as RedisServerError) = r else {
                Issue.record("expected the OOM refusal, got \(r)")
                continue
            }
            #expect(e.prefix == "OOM", "\(e)")
        }
        // Longer than two heartbeat TTLs (2 s with the pool's fast settings).
        let reported = await eventually(timeout: .seconds(10)) {
            let q = try? await pool.cli(["queue"] + pool.connectionArguments)
            return q?.stdout.contains("OUT OF MEMORY") == true
        }
        #expect(reported, "stepwise queue says Redis is full: \(pool.logs())")
        try await Task.sleep(for: .seconds(5))
        let reapedDuring = try await conn.send(["HGET", RedisArgument(keys.stats), "reaped"]).int ?? 0
        _ = try await conn.send(["CONFIG", "SET", "maxmemory", "0"]).throwingServerError()
        #expect(pool.logs().contains("redis is out of memory"), "workers log it")
        let done = await eventually(timeout: .seconds(40)) {
            guard let replies = try? await conn.pipeline(sessions.map { ["HGET", RedisArgument(keys.session($0)), "steps"] }) else {
                return false
            }
            return replies.allSatisfy { $0.int == 6 }
        }
        #expect(done, "every session finished by itself once memory was back: \(pool.logs())")
        #expect(reapedDuring == 0, "no live worker was reaped while Redis was full")
        #expect(try await conn.send(["HGET", RedisArgument(keys.stats), "reaped"]).int ?? 0 == 0)
        #expect(pool.running.count == 2, "both workers lived through it")
        let report = try await Ledger.check(keys: keys, conn: conn, sessions: sessions, expected: expected)
        #expect(report.isClean, "\(report)")
        for (id, status) in await pool.stopAll() { #expect(status == 0, "\(id) exits 0") }
        await conn.close()
    }

    /// After every session of a run has expired (one mid-step, one cancelled, dead letters purged
    /// and left), the namespace holds only pool-wide keys.
    @Test func expiredSessionsLeaveOnlyPoolWideKeys() async throws {
        let keys = try TestRedis.uniqueKeys()
        let conn = try TestRedis.connection(name: "orphans")
        let dispatcher = Dispatcher(connection: conn, keys: keys, agents: .builtIn)
        let dead = DeadLetterQueue(connection: conn, keys: keys)
        let p = ProtocolDriver(conn: conn, keys: keys)
        // Short enough that everything expires within the test, long enough that a busy machine
        // still dead-letters (and the test purges) a step before its session expires.
        let ttl = Duration.seconds(2)
        func submit(_ id: String, _ input: JSONValue, maxAttempts: Int? = nil) async throws -> String {
            try await dispatcher.submit(
                Submission(session: try SessionID(id), agent: "fault", input: input, ttl: ttl, maxAttempts: maxAttempts)
            ).jobID
        }
        var config = Worker.Configuration(
            workerID: "orphans-w", concurrency: 4, blockTimeout: .milliseconds(100), heartbeatTTL: .seconds(3),
            reaperInterval: .milliseconds(200), grace: .seconds(1))
        config.maxAttempts = 1
        let cleared = try await withRunningWorker(keys: keys, agents: .builtIn, configuration: config) {
            // The sessions live 1 s: submit only once the worker runs, so a slow start on a busy
            // machine cannot let the mid-step session expire before its step is even claimed.
            let up = await eventually(timeout: .seconds(10), interval: .milliseconds(20)) {
                (try? await conn.send(["EXISTS", RedisArgument(keys.heartbeat(worker: "orphans-w"))]))?.int == 1
            }
            #expect(up, "the worker started")
            _ = try await submit("plain", ["n": 1])
            // Expires while its step runs (the step outlives the 2 s TTL plus its 1 s margin).
            _ = try await submit("mid-step", ["n": 1, "fault": "hang", "ms": 4500])
            _ = try await submit("cancelled", ["n": 1, "fault": "hang", "ms": 400])
            _ = try await submit("cancelled", ["n": 2])
            let purged = try await submit("purged", ["n": 1, "fault": "throw"])
            _ = try await submit("purged", ["n": 2])
            _ = try await submit("left-dead", ["n": 1, "fault": "throw"])
            _ = try await dispatcher.cancel(try SessionID("cancelled"), reason: "test")
            let isDead = await eventually(timeout: .seconds(10)) { (try? await dead.show(jobID: purged)) != nil }
            #expect(isDead)
            try await dead.purge(jobID: purged)
            // The worker must still run when the mid-step session's step ends (4.5 s), or a
            // graceful stop releases that step instead of committing it late.
            _ = await eventually(timeout: .seconds(10), interval: .milliseconds(100)) {
                ((try? await p.stat("stale_commits")) ?? 0) >= 1
            }
            return await eventually(timeout: .seconds(25), interval: .milliseconds(200)) {
                let left = (try? await p.allKeys()) ?? ["?"]
                return left.allSatisfy {
                    // The worker's own keys while it runs (heartbeat, report, the pool-metrics lease).
                    ["stats", "seq", "cancels", "workers", "worker:orphans-w", "report:orphans-w", "metrics:lease"]
                        .contains(String($0.dropFirst(keys.prefix.count)))
                }
            }
        }
        let left = try await p.allKeys().map { String($0.dropFirst(keys.prefix.count)) }
        #expect(cleared, "only pool-wide keys are left: \(left)")
        // The pool-metrics lease outlives the worker by its TTL (5 s) at most.
        #expect(Set(left).isSubset(of: ["stats", "seq", "cancels", "metrics:lease"]), "\(left)")
        let leaseTTL = try await conn.send(["PTTL", RedisArgument(keys.metricsLease)]).int ?? -1
        #expect(leaseTTL == -2 || (0...5000).contains(leaseTTL), "lease gone or expiring: PTTL \(leaseTTL)")
        #expect(try await p.stat("stale_commits") >= 1, "the mid-step session's late commit was rejected")
    }
}
