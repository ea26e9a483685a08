import Foundation
import StepwiseAgents
import StepwiseRedis
import StepwiseTesting
import Testing

@testable import StepwiseCore

/// A worker's cost does not grow with its slots: one fetcher feeds all step tasks.
@Suite(
    "worker footprint",
    .enabled(if: TestRedis.url != nil && TestRedis.binary != nil, "needs STEPWISE_TEST_REDIS_URL and STEPWISE_BIN: run `make test`"),
    .timeLimit(.minutes(2))
)
struct WorkerFootprintTests {
    /// At `--concurrency 1000`, running 400 one-second steps at once (long enough that a loaded
    /// machine still has hundreds in flight together), a worker holds at most 4 Redis
    /// connections and at most 4 threads of its own (its connections' threads).
    @Test func aThousandSlotsUseFourConnectionsAndFourThreads() async throws {
        let keys = try TestRedis.uniqueKeys()
        let conn = try TestRedis.connection(name: "footprint")
        let pool = WorkerPool(binary: try #require(TestRedis.binary), redisURL: try #require(TestRedis.url), namespace: keys.namespace)
        defer { pool.killAll() }
        let worker = try pool.start(id: "fp-\(UUID().uuidString.prefix(6))", concurrency: 1000)
        let id = pool.all[0].id
        let dispatcher = Dispatcher(connection: conn, keys: keys, agents: .builtIn)
        let sessions = try (0..<400).map { try SessionID("fp-\($0)") }
        _ = try await dispatcher.submit(
            sessions.flatMap { s in (0..<3).map { Submission(session: s, agent: "sleep", input: ["ms": 1000, "n": .int($0)]) } }
        ).receipts()
        var maxRunning = 0
        var maxConnections = 0
        var maxThreads = 0
        let done = await eventually(timeout: .seconds(60), interval: .milliseconds(100)) {
            let clients = (try? await conn.send(["CLIENT", "LIST"]).string) ?? ""
            let mine = clients.split(separator: "\n").filter { $0.contains("name=stepwise:\(id):") }
            maxConnections = max(maxConnections, mine.count)
            let tasks = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(worker.pid)/task")) ?? []
            let own = tasks.filter { t in
                let comm = (try? String(contentsOfFile: "/proc/\(worker.pid)/task/\(t)/comm", encoding: .utf8)) ?? ""
                return comm.hasPrefix("redis-")
            }
            maxThreads = max(maxThreads, own.count)
            let running = (try? await conn.send(["LLEN", RedisArgument(keys.inflight(worker: id))]).int) ?? 0
            maxRunning = max(maxRunning, running)
            guard let replies = try? await conn.pipeline(sessions.map { ["HGET", RedisArgument(keys.session($0)), "steps"] }) else {
                return false
            }
            return replies.allSatisfy { $0.int == 3 }
        }
        #expect(done, "every step ran: \(worker.output.suffix(1500))")
        #expect(maxRunning >= 300, "hundreds of steps ran at once (saw \(maxRunning))")
        #expect((1...4).contains(maxConnections), "Redis connections of the worker: \(maxConnections)")
        #expect((1...4).contains(maxThreads), "threads of the worker's own (its connections'): \(maxThreads)")
        #expect(await worker.stop() == 0)
    }
}
