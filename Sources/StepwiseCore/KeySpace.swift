import StepwiseRedis

/// Every Redis key Stepwise uses, built from one namespace.
///
/// Per-session keys carry the session id as a Redis Cluster hash tag (`sw:s:{id}…`), so all of a
/// session's keys live in one slot. Pool-wide keys (`ready`, in-flight lists, indexes) do not.
public struct KeySpace: Sendable, Hashable {
    /// The namespace, without the trailing colon.
    public let namespace: String
    /// `namespace + ":"`, the prefix of every key (also passed to scripts that derive session keys).
    public let prefix: String

    /// Creates a key space.
    ///
    /// - Throws: ``StepwiseError`` when the namespace is empty, longer than 64 bytes, or holds
    ///   characters other than `A-Z a-z 0-9 _ - .`.
    public init(namespace: String = "sw") throws(StepwiseError) {
        let ok =
            (1...64).contains(namespace.utf8.count)
            && namespace.utf8.allSatisfy { b in
                (b >= 0x30 && b <= 0x39) || (b >= 0x41 && b <= 0x5A) || (b >= 0x61 && b <= 0x7A) || b == 0x5F
                    || b == 0x2D || b == 0x2E
            }
        guard ok else {
            throw StepwiseError(
                .invalidConfiguration,
                "invalid namespace '\(namespace)': use 1-64 characters from A-Z a-z 0-9 _ - .")
        }
        self.namespace = namespace
        self.prefix = namespace + ":"
    }

    /// LIST of job ids ready to run: at most one per session, the head of its inbox.
    public var ready: String { prefix + "ready" }
    /// ZSET of worker ids, scored by their last heartbeat (ms).
    public var workers: String { prefix + "workers" }
    /// ZSET of session ids, scored by their last expiry refresh (ms).
    public var sessions: String { prefix + "sessions" }
    /// HASH of pool-wide counters (`committed`, `stale_commits`, `reaped`, `dead`, ...).
    public var stats: String { prefix + "stats" }
    /// ZSET of job ids waiting to be retried, scored by when they are due (ms).
    public var delayed: String { prefix + "delayed" }
    /// ZSET of session ids blocked by a dead-lettered job, scored by when it died (ms).
    public var dead: String { prefix + "dead" }
    /// SET of session ids running a step, kept only when the pool has an active-session limit.
    public var active: String { prefix + "active" }
    /// LIST of job ids waiting for an active-session slot, oldest first.
    public var parked: String { prefix + "parked" }
    /// ZSET of session ids with an idle TTL, scored by when their keys expire (ms): the sweep's index.
    public var expiry: String { prefix + "expiry" }
    /// ZSET of the job ids that were running when their session was cancelled, scored by a cancel
    /// sequence number that workers follow (the newest 1000 are kept).
    public var cancels: String { prefix + "cancels" }
    /// STRING counter that never goes back: job numbers, fencing tokens and incarnations come
    /// from it, so none of them repeats for a session id, ever.
    public var sequence: String { prefix + "seq" }
    /// STRING written by a worker's crash signal handler: the reaper then blames the crash on the
    /// step that worker ran alone, or held alone, and on no other.
    public func crashMarker(worker: String) -> String { prefix + "crash:" + worker }
    /// LIST of the job ids a worker process holds (the reliable-queue in-flight list).
    public func inflight(worker: String) -> String { prefix + "inflight:" + worker }
    /// STRING with a TTL that a live worker keeps refreshing.
    public func heartbeat(worker: String) -> String { prefix + "worker:" + worker }
    /// A worker's report for `stepwise top` (``WorkerReport`` as JSON, with a TTL).
    public func report(worker: String) -> String { prefix + "report:" + worker }
    /// The pool-metrics lease: the id of the worker that reports the pool-wide gauges.
    public var metricsLease: String { prefix + "metrics:lease" }
    /// HASH of a session: metadata, options and the agent's state document.
    public func session(_ id: SessionID) -> String { prefix + "s:{" + id.rawValue + "}" }
    /// LIST of the session's pending job ids, in the order they will apply.
    public func inbox(_ id: SessionID) -> String { session(id) + ":inbox" }
    /// HASH of the session's pending jobs, by job number N: `N` → input JSON, `N:a` → deliveries,
    /// `N:f` → failed attempts (errors and blamed crashes), `N:t` → submit time, `N:m` → the
    /// submit's attempt limit (only when given), `N:q` → quarantined (`1`, `solo` while it runs alone).
    public func jobs(_ id: SessionID) -> String { session(id) + ":jobs" }
    /// HASH of idempotency key → job id.
    public func idempotency(_ id: SessionID) -> String { session(id) + ":idem" }
    /// STREAM of the session's progress events.
    public func events(_ id: SessionID) -> String { session(id) + ":events" }
    /// A revoked gateway token, by its id (a string key that expires when the token would have).
    public func revokedToken(_ id: String) -> String { prefix + "revoked:" + id }
    /// ZSET of the sessions an owner created through the gateway, scored by creation time (ms).
    public func ownerSessions(_ owner: String) -> String { prefix + "owner:{" + owner + "}" }
}
