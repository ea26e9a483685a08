import Foundation
import StepwiseRedis

/// What `stepwise top` shows, read from Redis in a few pipelined round trips: the queue (as
/// `stepwise queue` reads it), each worker's ``WorkerReport``, and the newest dead letters.
public struct PoolSnapshot: Sendable {
    /// When it was read, ms since 1970 (this process's clock).
    public var at: Int64
    public var queue: QueueInfo
    /// The reports of the workers listed in the pool that have one (live ones, or just stopped).
    public var reports: [String: WorkerReport]
    /// The newest dead letters (newest first).
    public var deadLetters: [DeadLetter]
}

extension SessionStore {
    /// Reads a ``PoolSnapshot``; `deadLimit` caps the dead letters read.
    ///
    /// - Throws: ``RedisError`` or ``RedisServerError`` (for example `NOPERM` for a user that may not read).
    public func poolSnapshot(deadLimit: Int = 5) async throws -> PoolSnapshot {
        let queue = try await queueInfo()
        var reports: [String: WorkerReport] = [:]
        if !queue.workers.isEmpty {
            let replies = try await connection.pipeline(queue.workers.map { ["GET", RedisArgument(keys.report(worker: $0.id))] })
            let decoder = JSONDecoder()
            for (row, reply) in zip(queue.workers, replies) {
                try reply.throwingServerError()
                guard let text = reply.string, let report = try? decoder.decode(WorkerReport.self, from: Data(text.utf8)) else {
                    continue
                }
                reports[row.id] = report
            }
        }
        let dead = deadLimit > 0 ? try await DeadLetterQueue(connection: connection, keys: keys).list(limit: deadLimit) : []
        return PoolSnapshot(at: Dispatcher.nowMillis(), queue: queue, reports: reports, deadLetters: dead)
    }
}
