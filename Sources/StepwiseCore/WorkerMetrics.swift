import CoreMetrics
import Foundation
import StepwiseRedis
import Synchronization

/// A worker's metrics: swift-metrics handles made once, when the worker is created, so a step
/// only increments and records (no lookup, no Redis round trip), plus the small figures the
/// worker's report (``WorkerReport``) carries for `stepwise top`.
///
/// Names follow Prometheus conventions (`_total` counters, `_seconds` histograms); labels are
/// bounded: `agent` is one of the worker's registered agents or `other`, `outcome` one of
/// ``outcomes``, `role` one of the worker's four connection roles. No session or job id is ever a
/// label. With no metrics backend bootstrapped (`MetricsSystem`'s default), every handle is a no-op.
public final class WorkerMetrics: Sendable {
    /// Step outcomes counted by `stepwise_steps_total`: the commit outcomes, plus `stale` (the
    /// commit was rejected) and `cancelled` (the session was cancelled while the step ran).
    public static let outcomes = ["continue", "wait", "done", "fail", "retry", "dead", "stale", "cancelled"]
    /// Bucket bounds (seconds) of the step duration and overhead histograms, in the Prometheus
    /// export and in the worker's report.
    public static let durationBuckets: [Double] = [
        0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60,
    ]
    /// Bucket bounds (seconds) of the Redis round-trip histogram.
    public static let redisBuckets: [Double] = [
        0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1,
    ]
    /// Metric names, for exporters that set per-histogram buckets.
    public enum Name {
        public static let steps = "stepwise_steps_total"
        public static let stepDuration = "stepwise_step_duration_seconds"
        public static let overhead = "stepwise_step_overhead_seconds"
        public static let retries = "stepwise_retries_total"
        public static let deadLetters = "stepwise_dead_letters_total"
        public static let reaped = "stepwise_reaped_jobs_total"
        public static let staleCommits = "stepwise_stale_commits_total"
        public static let cancels = "stepwise_cancelled_steps_total"
        public static let inFlight = "stepwise_jobs_in_flight"
        public static let slots = "stepwise_slots"
        public static let slotsBusy = "stepwise_slots_busy"
        public static let redisOutOfMemory = "stepwise_redis_out_of_memory"
        public static let redisRoundTrip = "stepwise_redis_round_trip_seconds"
        public static let redisReconnects = "stepwise_redis_reconnects_total"
        public static let poolReady = "stepwise_pool_ready_jobs"
        public static let poolDelayed = "stepwise_pool_delayed_jobs"
        public static let poolParked = "stepwise_pool_parked_jobs"
        public static let poolDead = "stepwise_pool_dead_letters"
        public static let poolActiveSessions = "stepwise_pool_active_sessions"
        public static let poolWorkersAlive = "stepwise_pool_workers_alive"
        public static let poolReporter = "stepwise_pool_reporter"
    }

    let factory: any MetricsFactory
    private let steps: [String: [String: Counter]]
    private let durations: [String: CoreMetrics.Timer]
    private let overhead: CoreMetrics.Timer
    private let retries: Counter
    private let deadLetters: Counter
    private let reapedJobs: Counter
    private let staleCommits: Counter
    private let cancels: Counter
    let inFlight: Gauge
    let slots: Gauge
    let slotsBusy: Gauge
    /// 1 while Redis refuses this worker's writes for lack of memory, else 0.
    let redisOutOfMemory: Gauge
    private let report = Mutex(ReportFigures())

    /// Figures kept for the worker's report (`stepwise top`).
    struct ReportFigures: Sendable {
        var steps = 0
        /// Step durations, counts per ``durationBuckets`` bound plus one for +Inf (not cumulative).
        var buckets = [Int](repeating: 0, count: WorkerMetrics.durationBuckets.count + 1)
        /// Jobs being worked on: agent and start (ms since 1970).
        var running: [String: (agent: String, since: Int64)] = [:]
        /// The newest failures (retry, dead, stale), newest last, at most ``recentLimit``.
        var recent: [WorkerReport.Failure] = []
    }
    static let recentLimit = 10

    /// Makes every handle now with `factory` (the bootstrapped `MetricsSystem.factory` by default).
    public init(agents: [String], factory: any MetricsFactory = MetricsSystem.factory) {
        self.factory = factory
        var steps: [String: [String: Counter]] = [:]
        var durations: [String: CoreMetrics.Timer] = [:]
        for agent in agents + ["other"] {
            var byOutcome: [String: Counter] = [:]
            for outcome in Self.outcomes {
                byOutcome[outcome] = Counter(
                    label: Name.steps, dimensions: [("agent", agent), ("outcome", outcome)], factory: factory)
            }
            steps[agent] = byOutcome
            durations[agent] = CoreMetrics.Timer(label: Name.stepDuration, dimensions: [("agent", agent)], factory: factory)
        }
        self.steps = steps
        self.durations = durations
        overhead = CoreMetrics.Timer(label: Name.overhead, dimensions: [], factory: factory)
        retries = Counter(label: Name.retries, dimensions: [], factory: factory)
        deadLetters = Counter(label: Name.deadLetters, dimensions: [], factory: factory)
        reapedJobs = Counter(label: Name.reaped, dimensions: [], factory: factory)
        staleCommits = Counter(label: Name.staleCommits, dimensions: [], factory: factory)
        cancels = Counter(label: Name.cancels, dimensions: [], factory: factory)
        inFlight = Gauge(label: Name.inFlight, dimensions: [], factory: factory)
        slots = Gauge(label: Name.slots, dimensions: [], factory: factory)
        slotsBusy = Gauge(label: Name.slotsBusy, dimensions: [], factory: factory)
        redisOutOfMemory = Gauge(label: Name.redisOutOfMemory, dimensions: [], factory: factory)
    }

    /// An observer for one of the worker's Redis connections (`role`: fetch, steps, control).
    func redisObserver(role: String) -> RedisObserver {
        let latency = CoreMetrics.Timer(label: Name.redisRoundTrip, dimensions: [("role", role)], factory: factory)
        let reconnects = Counter(label: Name.redisReconnects, dimensions: [("role", role)], factory: factory)
        return RedisObserver(
            roundTrip: { latency.recordNanoseconds(Int64($0.metricNanoseconds)) }, reconnected: { reconnects.increment() })
    }

    func started(jobID: String, agent: String) {
        let now = Dispatcher.nowMillis()
        report.withLock { $0.running[jobID] = (agent, now) }
    }

    /// Records a committed step: its outcome label, how long the agent ran, and the rest of the
    /// time from its claim to its commit's reply.
    func committed(
        jobID: String, sessionID: String, agent: String, outcome: String, step: Duration, total: Duration, failed: Bool
    ) {
        let agentLabel = steps[agent] == nil ? "other" : agent
        steps[agentLabel]?[outcome]?.increment()
        durations[agentLabel]?.recordNanoseconds(Int64(step.metricNanoseconds))
        overhead.recordNanoseconds(Int64(max(.zero, total - step).metricNanoseconds))
        switch outcome {
        case "retry": retries.increment()
        case "dead": deadLetters.increment()
        case "stale": staleCommits.increment()
        case "cancelled": cancels.increment()
        default: break
        }
        let seconds = step.metricSeconds
        let bucket = Self.durationBuckets.firstIndex { seconds <= $0 } ?? Self.durationBuckets.count
        let now = Dispatcher.nowMillis()
        report.withLock { r in
            r.steps += 1
            r.buckets[bucket] += 1
            r.running[jobID] = nil
            if failed || outcome == "retry" || outcome == "dead" || outcome == "stale" {
                r.recent.append(.init(job: jobID, session: sessionID, agent: agent, outcome: outcome, at: now))
                if r.recent.count > Self.recentLimit { r.recent.removeFirst(r.recent.count - Self.recentLimit) }
            }
        }
    }

    /// A job this worker took left without a commit of its own (released, given back).
    func finished(jobID: String) {
        report.withLock { _ = $0.running.removeValue(forKey: jobID) }
    }

    func reaped(_ count: Int) { if count > 0 { reapedJobs.increment(by: Int64(count)) } }

    func figures() -> ReportFigures { report.withLock { $0 } }
}

extension Duration {
    var metricNanoseconds: Int64 {
        let (s, atto) = components
        return s * 1_000_000_000 + atto / 1_000_000_000
    }
    var metricSeconds: Double { Double(components.seconds) + Double(components.attoseconds) / 1e18 }
}
