import Foundation
import StepwiseCore

/// One screen of `stepwise top`: a snapshot, with rates and percentiles measured against the
/// previous snapshot.
struct TopView {
    struct Latency: Equatable {
        var p50: Double
        var p90: Double
        var p99: Double
        /// Steps the percentiles are computed over.
        var count: Int
    }

    var snapshot: PoolSnapshot
    /// Committed steps per second since the previous snapshot (nil on the first).
    var stepsPerSecond: Double?
    /// Step duration percentiles over the steps committed since the previous snapshot; over all
    /// steps the live workers reported when there is no previous one or no step since.
    var latency: Latency?
    /// Whether ``latency`` covers only the window since the previous snapshot.
    var latencyWindowed: Bool

    init(snapshot: PoolSnapshot, previous: PoolSnapshot?) {
        self.snapshot = snapshot
        let committed = snapshot.queue.stats["committed"] ?? 0
        if let previous, snapshot.at > previous.at {
            let done = committed - (previous.queue.stats["committed"] ?? 0)
            stepsPerSecond = Double(max(0, done)) / (Double(snapshot.at - previous.at) / 1000)
        }
        let now = Self.buckets(snapshot.reports.values)
        var window = now
        if let previous {
            // Per worker, so a worker that restarted (its counts went back) counts from zero.
            window = [Int](repeating: 0, count: now.count)
            for (id, report) in snapshot.reports {
                let before = previous.reports[id].map { $0.buckets } ?? []
                for i in report.buckets.indices where i < window.count {
                    let b = i < before.count && before[i] <= report.buckets[i] ? before[i] : 0
                    window[i] += report.buckets[i] - b
                }
            }
        }
        if previous != nil, window.reduce(0, +) > 0 {
            latency = Self.percentiles(window)
            latencyWindowed = true
        } else {
            latency = Self.percentiles(now)
            latencyWindowed = false
        }
    }

    static func buckets(_ reports: some Sequence<WorkerReport>) -> [Int] {
        var sum = [Int](repeating: 0, count: WorkerMetrics.durationBuckets.count + 1)
        for r in reports {
            for (i, c) in r.buckets.enumerated() where i < sum.count { sum[i] += c }
        }
        return sum
    }

    /// Percentiles from bucket counts, interpolated linearly inside a bucket as Prometheus's
    /// `histogram_quantile` does; a quantile in the +Inf bucket is the largest finite bound.
    static func percentiles(_ counts: [Int]) -> Latency? {
        let total = counts.reduce(0, +)
        guard total > 0 else { return nil }
        let bounds = WorkerMetrics.durationBuckets
        func q(_ quantile: Double) -> Double {
            let rank = quantile * Double(total)
            var seen = 0
            for (i, c) in counts.enumerated() {
                if Double(seen + c) >= rank, c > 0 {
                    guard i < bounds.count else { return bounds[bounds.count - 1] }
                    let lower = i == 0 ? 0 : bounds[i - 1]
                    return lower + (bounds[i] - lower) * (rank - Double(seen)) / Double(c)
                }
                seen += c
            }
            return bounds[bounds.count - 1]
        }
        return Latency(p50: q(0.5), p90: q(0.9), p99: q(0.99), count: total)
    }

    /// The sessions with a step running now, oldest first.
    var running: [(worker: String, job: WorkerReport.Running)] {
        snapshot.reports.flatMap { id, r in r.running.map { (id, $0) } }.sorted { $0.job.since < $1.job.since }
    }

    /// Recent failures: dead letters and the workers' recent retries, stale commits and `fail`s, newest first.
    var failures: [(at: Int64, kind: String, session: String, agent: String, detail: String)] {
        var all: [(at: Int64, kind: String, session: String, agent: String, detail: String)] = []
        for d in snapshot.deadLetters {
            all.append((d.time, "dead", d.session, d.agent, "\(d.reason), \(d.attempts) attempts"))
        }
        for (id, r) in snapshot.reports {
            for f in r.recent where f.outcome != "dead" {
                all.append((f.at, f.outcome, f.session, f.agent, "on \(id)"))
            }
        }
        return all.sorted { $0.at > $1.at }
    }

    var json: JSONValue {
        let q = snapshot.queue
        func num(_ d: Double?) -> JSONValue { d.map { .double(($0 * 1_000_000).rounded() / 1_000_000) } ?? .null }
        let workers: [JSONValue] = q.workers.map { w in
            let r = snapshot.reports[w.id]
            return .object([
                "id": .string(w.id), "alive": .bool(w.alive), "status": .string(w.status.isEmpty ? (w.alive ? "ok" : "dead") : w.status),
                "inflight": .int(w.inflight), "slots": r.map { .int($0.slots) } ?? .null, "busy": r.map { .int($0.busy) } ?? .null,
                "steps": r.map { .int($0.steps) } ?? .null,
                "running": .array(
                    (r?.running ?? []).map {
                        .object([
                            "job": .string($0.job), "session": .string($0.session), "agent": .string($0.agent), "since": .int($0.since),
                        ])
                    }),
            ])
        }
        return .object([
            "at": .int(snapshot.at),
            "stepsPerSecond": num(stepsPerSecond),
            "committed": .int(q.stats["committed"] ?? 0),
            "latencySeconds": latency.map {
                .object([
                    "p50": num($0.p50), "p90": num($0.p90), "p99": num($0.p99), "steps": .int($0.count),
                    "window": .string(latencyWindowed ? "since previous snapshot" : "since the workers started"),
                ])
            } ?? .null,
            "queues": .object([
                "ready": .int(q.ready), "delayed": .int(q.delayed), "parked": .int(q.parked), "dead": .int(q.dead),
                "active": .int(q.active),
            ]),
            "workers": .array(workers),
            "sessionsRunning": .array(
                running.map {
                    .object([
                        "session": .string($0.job.session), "job": .string($0.job.job), "agent": .string($0.job.agent),
                        "worker": .string($0.worker), "since": .int($0.job.since),
                    ])
                }),
            "recentFailures": .array(
                failures.prefix(20).map {
                    .object([
                        "at": .int($0.at), "kind": .string($0.kind), "session": .string($0.session), "agent": .string($0.agent),
                        "detail": .string($0.detail),
                    ])
                }),
        ])
    }

    /// The screen's lines for a terminal of `rows`.
    func lines(rows: Int, namespace: String, redis: String, live: Bool) -> [String] {
        let q = snapshot.queue
        func ms(_ s: Double) -> String { s >= 1 ? String(format: "%.2fs", s) : String(format: "%.1fms", s * 1000) }
        let time = Date(timeIntervalSince1970: Double(snapshot.at) / 1000)
        let clock = ISO8601DateFormatter.string(from: time, timeZone: .gmt, formatOptions: [.withTime, .withColonSeparatorInTime])
        var out: [String] = []
        out.append("stepwise top - \(clock) UTC - \(redis) ns \(namespace)" + (live ? " - q or Ctrl-C quits" : ""))
        let rate = stepsPerSecond.map { String(format: "%.1f", $0) } ?? "-"
        var lat = "latency -"
        if let l = latency {
            lat = "latency p50 \(ms(l.p50)) p90 \(ms(l.p90)) p99 \(ms(l.p99)) (\(l.count) steps\(latencyWindowed ? "" : ", since start"))"
        }
        out.append("steps/s \(rate)   committed \(q.stats["committed"] ?? 0)   \(lat)")
        out.append(
            "queues: ready \(q.ready)  delayed \(q.delayed)  parked \(q.parked)  dead \(q.dead)  active \(q.active)   "
                + "reaped \(q.stats["reaped"] ?? 0)  stale commits \(q.stats["stale_commits"] ?? 0)")
        out.append("")
        let alive = q.workers.filter(\.alive).count
        out.append("WORKERS (\(alive) alive of \(q.workers.count))")
        out.append(pad("ID", 36) + pad("STATUS", 9) + pad("SLOTS", 7) + pad("BUSY", 6) + pad("INFLIGHT", 10) + "STEPS")
        for w in q.workers {
            let r = snapshot.reports[w.id]
            let status = w.alive ? (w.status.isEmpty ? "ok" : w.status) : "dead"
            out.append(
                pad(w.id, 36) + pad(status, 9) + pad(r.map { "\($0.slots)" } ?? "-", 7) + pad(r.map { "\($0.busy)" } ?? "-", 6)
                    + pad("\(w.inflight)", 10) + (r.map { "\($0.steps)" } ?? "-"))
        }
        out.append("")
        let run = running
        out.append("RUNNING NOW (\(run.count))")
        out.append(pad("SESSION", 28) + pad("AGENT", 10) + pad("FOR", 10) + "WORKER")
        let failureRows = failures
        let room = max(2, rows - out.count - 4 - min(failureRows.count, 6))
        for (worker, job) in run.prefix(room) {
            let secs = Double(max(0, snapshot.at - job.since)) / 1000
            out.append(pad(job.session, 28) + pad(job.agent, 10) + pad(ms(secs), 10) + worker)
        }
        if run.count > room { out.append("... \(run.count - room) more") }
        out.append("")
        out.append("RECENT FAILURES")
        for f in failureRows.prefix(max(1, rows - out.count)) {
            let when = ISO8601DateFormatter.string(
                from: Date(timeIntervalSince1970: Double(f.at) / 1000), timeZone: .gmt,
                formatOptions: [.withTime, .withColonSeparatorInTime])
            out.append("\(when)  " + pad(f.kind, 7) + pad(f.session, 28) + pad(f.agent, 10) + f.detail)
        }
        if failureRows.isEmpty { out.append("none") }
        return out
    }

    private func pad(_ s: String, _ width: Int) -> String {
        s.count >= width ? String(s.prefix(width - 1)) + " " : s + String(repeating: " ", count: width - s.count)
    }
}
