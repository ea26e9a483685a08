/// Where a session is in its life.
public enum SessionStatus: String, Sendable, Hashable, Codable, CaseIterable {
    /// Created, nothing queued yet.
    case idle
    /// A step is queued and waiting for a worker.
    case queued
    /// A worker is running one of its steps.
    case running
    /// The agent waits for user input.
    case waiting
    /// The agent finished with a result.
    case done
    /// The agent reported failure.
    case failed
    /// Cancelled by a user.
    case cancelled

    /// Whether nothing more happens unless someone submits a step.
    public var isSettled: Bool {
        switch self {
        case .queued, .running: false
        default: true
        }
    }
}

/// A session as stored in Redis, read in one round trip.
public struct SessionSnapshot: Sendable, Hashable {
    public var id: SessionID
    public var agent: String
    public var owner: String
    public var status: SessionStatus
    public var version: Int
    public var steps: Int
    /// Creation time, milliseconds since 1970.
    public var createdAt: Int64
    /// Last activity, milliseconds since 1970.
    public var lastActiveAt: Int64
    public var options: JSONValue
    public var state: JSONValue
    /// Steps waiting in the session's inbox (including one that is running).
    public var queued: Int
    /// Why the session was cancelled, when it was.
    public var cancelReason: String?
    /// The dead-lettered job that blocks the session, when there is one.
    public var deadLetter: String?
    /// When the session's keys expire unless it is active again (ms since 1970); `nil` for never.
    public var expiresAt: Int64?

    /// The JSON form printed by `stepwise status --json`.
    public var json: JSONValue {
        [
            "session": .string(id.rawValue), "agent": .string(agent), "owner": .string(owner),
            "status": .string(status.rawValue), "version": .int(version),
            "steps": .int(steps), "created": .int(createdAt),
            "lastActive": .int(lastActiveAt), "options": options, "state": state,
            "queued": .int(queued), "cancelReason": cancelReason.map { .string($0) } ?? .null,
            "deadLetter": deadLetter.map { .string($0) } ?? .null, "expires": expiresAt.map { .int($0) } ?? .null,
        ]
    }
}

/// What ``Dispatcher/submit(_:)`` returns at once: the job was accepted.
public struct SubmitReceipt: Sendable, Hashable {
    /// The job id, `<session>:<sequence>`.
    public var jobID: String
    /// `false` when an idempotency key matched an earlier submit: nothing was enqueued.
    public var enqueued: Bool
}
