import CoreMetrics
import Foundation
import Logging
import StepwiseRedis
import Synchronization

/// The worker's reporter task: about once a second it sets the process gauges (slots, busy,
/// in flight), publishes this worker's ``WorkerReport`` for `stepwise top`, and, while it holds
/// the pool-metrics lease, measures the pool-wide gauges. All of it on the control connection,
/// never on the step path.
///
/// The lease (`<ns>:metrics:lease`, the holder's worker id, a few seconds' TTL) makes one worker
/// of the pool report the pool gauges, so summing them over workers never double counts. A worker
/// that loses the lease removes its pool gauges from its export.
extension Worker {
    /// How often the reporter runs.
    static let reportInterval: Duration = .seconds(1)
    /// How long the pool-metrics lease lasts without renewal.
    static let leaseTTL: Duration = .seconds(5)

    func reporter(_ conn: RedisConnection) async {
        var pool: PoolGauges?
        while !Task.isCancelled {
            do {
                try await publishReport(conn)
                if try await holdLease(conn) {
                    let gauges = pool ?? PoolGauges(factory: metrics.factory)
                    pool = gauges
                    try await measurePool(conn, into: gauges)
                } else if let gauges = pool {
                    gauges.destroy()
                    pool = nil
                }
            } catch {
                noteRedisError(error)
                if !error.isRedisOutOfMemory {
                    logger.debug("worker report failed, retrying", metadata: [LogKeys.error: "\(error)"])
                }
            }
            do { try await Task.sleep(for: Self.reportInterval) } catch { break }
        }
        pool?.destroy()
    }

    /// Sets the process gauges and writes this worker's report.
    func publishReport(_ conn: RedisConnection) async throws {
        let (busy, inFlight, status) = state.withLock { s in
            (s.busy, s.active.count, s.stopping ? "stopping" : (s.redisFull ? "oom" : "ok"))
        }
        metrics.slots.record(configuration.concurrency)
        metrics.slotsBusy.record(busy)
        metrics.inFlight.record(inFlight)
        metrics.redisOutOfMemory.record(status == "oom" ? 1 : 0)
        let figures = metrics.figures()
        let report = WorkerReport(
            worker: workerID, at: Dispatcher.nowMillis(), slots: configuration.concurrency, busy: busy, status: status,
            steps: figures.steps, buckets: figures.buckets,
            running: figures.running.sorted { $0.value.since < $1.value.since }.prefix(50).map {
                WorkerReport.Running(
                    job: $0.key, session: WorkerReport.session(ofJob: $0.key), agent: $0.value.agent, since: $0.value.since)
            },
            recent: figures.recent)
        let json = try JSONEncoder().encode(report)
        let ttl = max(Self.reportInterval * 5, configuration.heartbeatTTL)
        _ = try await conn.send([
            "SET", RedisArgument(keys.report(worker: workerID)), RedisArgument(String(decoding: json, as: UTF8.self)), "PX",
            RedisArgument(ttl.milliseconds),
        ])
        .throwingServerError()
    }

    /// Takes or renews the pool-metrics lease; true while this worker holds it.
    func holdLease(_ conn: RedisConnection) async throws -> Bool {
        let ttl = RedisArgument(Self.leaseTTL.milliseconds)
        // `SET NX GET` answers the previous holder (nil: the lease was free, and is now ours).
        let previous = try await conn.send(["SET", RedisArgument(keys.metricsLease), RedisArgument(workerID), "NX", "PX", ttl, "GET"])
            .throwingServerError()
        if previous.isNull { return true }
        guard previous.string == workerID else { return false }
        // Ours already: renew it. (Should it expire between the two commands and another worker
        // take it, both report for one interval; the next `SET NX GET` settles it.)
        _ = try await conn.send(["SET", RedisArgument(keys.metricsLease), RedisArgument(workerID), "XX", "PX", ttl])
            .throwingServerError()
        return true
    }

    /// Measures the pool-wide gauges: two pipelined round trips.
    func measurePool(_ conn: RedisConnection, into gauges: PoolGauges) async throws {
        let first = try await conn.pipeline([
            ["LLEN", RedisArgument(keys.ready)], ["ZCARD", RedisArgument(keys.delayed)], ["LLEN", RedisArgument(keys.parked)],
            ["ZCARD", RedisArgument(keys.dead)], ["ZRANGE", RedisArgument(keys.workers), 0, -1],
        ])
        for reply in first { try reply.throwingServerError() }
        let workers = (first[4].array ?? []).compactMap(\.string)
        var alive = 0
        var active = 0
        if !workers.isEmpty {
            let second = try await conn.pipeline(
                workers.map { ["EXISTS", RedisArgument(keys.heartbeat(worker: $0))] }
                    + workers.map { ["LLEN", RedisArgument(keys.inflight(worker: $0))] })
            for (i, reply) in second.enumerated() {
                try reply.throwingServerError()
                if i < workers.count { alive += reply.int ?? 0 } else { active += reply.int ?? 0 }
            }
        }
        gauges.ready.record(first[0].int ?? 0)
        gauges.delayed.record(first[1].int ?? 0)
        gauges.parked.record(first[2].int ?? 0)
        gauges.dead.record(first[3].int ?? 0)
        gauges.activeSessions.record(active)
        gauges.workersAlive.record(alive)
        gauges.reporter.record(1)
    }
}

/// The pool-wide gauges, present in a worker's export only while it holds the lease.
final class PoolGauges: Sendable {
    let ready, delayed, parked, dead, activeSessions, workersAlive, reporter: Gauge

    init(factory: any MetricsFactory) {
        typealias N = WorkerMetrics.Name
        ready = Gauge(label: N.poolReady, dimensions: [], factory: factory)
        delayed = Gauge(label: N.poolDelayed, dimensions: [], factory: factory)
        parked = Gauge(label: N.poolParked, dimensions: [], factory: factory)
        dead = Gauge(label: N.poolDead, dimensions: [], factory: factory)
        activeSessions = Gauge(label: N.poolActiveSessions, dimensions: [], factory: factory)
        workersAlive = Gauge(label: N.poolWorkersAlive, dimensions: [], factory: factory)
        reporter = Gauge(label: N.poolReporter, dimensions: [], factory: factory)
    }

    func destroy() {
        for gauge in [ready, delayed, parked, dead, activeSessions, workersAlive, reporter] { gauge.destroy() }
    }
}
