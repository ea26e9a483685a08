import Foundation

/// What a worker publishes about itself about once a second, for `stepwise top`: the key
/// `<ns>:report:<worker>` holds it as JSON with a TTL (a few seconds past the next report), so a
/// dead worker's report goes away by itself. Written by the worker's reporter task on its control
/// connection, never on the step path. It carries job and session ids (shown by `top`), never
/// inputs, states, results or error texts.
public struct WorkerReport: Codable, Sendable, Equatable {
    /// A recent step that did not go well.
    public struct Failure: Codable, Sendable, Equatable {
        public var job: String
        public var session: String
        public var agent: String
        /// `retry`, `dead`, `stale` or `fail` (the agent returned `.fail`).
        public var outcome: String
        /// When it was committed, ms since 1970.
        public var at: Int64
    }
    /// A job this worker is working on now.
    public struct Running: Codable, Sendable, Equatable {
        public var job: String
        public var session: String
        public var agent: String
        /// When its step started, ms since 1970.
        public var since: Int64
    }

    public var worker: String
    /// When this report was made, ms since 1970 (the worker's clock).
    public var at: Int64
    public var slots: Int
    public var busy: Int
    /// `ok`, `oom` (Redis is out of memory) or `stopping`.
    public var status: String
    /// Steps this process committed since it started.
    public var steps: Int
    /// Step durations since start: counts per ``WorkerMetrics/durationBuckets`` bound, then +Inf.
    public var buckets: [Int]
    public var running: [Running]
    public var recent: [Failure]

    /// The session id of a job id (`<session>:<n>`).
    static func session(ofJob job: String) -> String {
        guard let colon = job.lastIndex(of: ":") else { return job }
        return String(job[..<colon])
    }
}
