import ServiceLifecycle
import StepwiseCore
import StepwiseRedis

/// What a subscriber is sent, in order: at most one reset, the events, then `end` (or `overflow`).
public enum FeedMessage: Sendable {
    /// A stream event.
    case event(StepEvent)
    /// The resume point is gone (trimmed, a re-created session, or an id the stream never had):
    /// here is the session as it is now; the events after `resumeFrom` follow.
    case reset(reason: String, session: SessionSnapshot, resumeFrom: EventID)
    /// The session is settled with nothing queued: no more events come unless someone submits.
    case end(SessionSnapshot)
    /// The subscriber could not keep up and was dropped; it resumes after `lastEventID`.
    case overflow(lastEventID: EventID)
    /// Nothing happened for a while.
    case keepAlive
}

/// Follows one session's stream for one subscriber: catch-up from the resume point, then live
/// events from the hub, with reset detection and the `end` of a settled session.
public struct EventFeed: Sendable {
    let hub: SubscriptionHub
    let store: GatewayStore
    /// Events read per catch-up `XRANGE`.
    var pageSize = 500

    public init(hub: SubscriptionHub, store: GatewayStore) {
        self.hub = hub
        self.store = store
    }

    /// Step events after which the session may be settled.
    static func mayEnd(_ e: StepEvent) -> Bool {
        switch e.type {
        case "step.completed", "step.failed": e.fields["outcome"] != "continue"
        case "step.dead", "session.cancelled", "step.cancelled", "step.discarded": true
        default: false
        }
    }

    static func isSettled(_ s: SessionSnapshot) -> Bool {
        s.status.isSettled && (s.queued == 0 || s.status == .failed || s.status == .cancelled)
    }

    /// Where a resume point stands against the stream: `nil` when it is fine, else the reset
    /// reason: `trimmed` (older than the stream's first entry: trimmed away, or the session was
    /// re-created; from the start: the stream no longer holds its first events) or
    /// `unknown_event_id` (later than any id the stream generated).
    public static func resetReason(after: EventID, bounds: StreamBounds) -> String? {
        guard after != .zero else { return bounds.trimmed ? "trimmed" : nil }
        guard let generated = bounds.lastGenerated else { return "unknown_event_id" }
        if after > generated { return "unknown_event_id" }
        if let first = bounds.first, after < first {
            // The entry right before `first` may have been trimmed, or the stream re-created.
            return "trimmed"
        }
        if bounds.first == nil, after < generated { return "trimmed" }
        return nil
    }

    /// Runs the feed until the session ends, the subscriber overflows, `send` throws (the client is
    /// gone) or the task is cancelled; always unsubscribes from the hub.
    ///
    /// - Parameters:
    ///   - session: the session, already checked to belong to the caller.
    ///   - after: the last event the client has (`.zero` for all).
    ///   - follow: `false` returns after the catch-up (a plain read).
    ///   - stopAtEnd: `false` keeps following after `end` (a WebSocket client may submit again).
    public func run(
        session id: SessionID, snapshot: SessionSnapshot, after: EventID, follow: Bool = true, stopAtEnd: Bool = true,
        send: (FeedMessage) async throws -> Void
    ) async throws {
        let sessions = store.sessions
        var position = after
        // The session's data key, fetched once when a sealed event first comes (again if one
        // does not open with it: the session was forgotten and created anew).
        var cipher: (any SessionCipher)??
        func opened(_ events: [StepEvent]) async throws -> [StepEvent] {
            guard SealedText.anySealed(events) else { return events }
            if let c = cipher, let done = try? events.map({ try $0.opened(with: c) }) { return done }
            let c = try await sessions.cipher(for: id)
            cipher = .some(c)
            return try events.map { try $0.opened(with: c) }
        }
        let bounds = try await store.streamBounds(id)
        if let reason = Self.resetReason(after: after, bounds: bounds) {
            // Bounds first, then the snapshot: the snapshot includes at least every event up to
            // `last`, so nothing after the reset point is lost.
            let now = try await sessions.session(id) ?? snapshot
            position = bounds.end
            try await send(.reset(reason: reason, session: now, resumeFrom: position))
        }
        var ended = false
        // Where the last `end` was sent: one `end` per settled position, never two in a row.
        var endAt: EventID?
        func deliver(_ sealed: [StepEvent]) async throws {
            let events = try await opened(sealed)
            for e in events {
                guard let eid = EventID(e.id), position < eid else { continue }
                position = eid
                try await send(.event(e))
                if follow, Self.mayEnd(e), let now = try await sessions.session(id), Self.isSettled(now) {
                    endAt = position
                    try await send(.end(now))
                    if stopAtEnd {
                        ended = true
                        return
                    }
                }
            }
        }
        // Catch-up, page by page (the stream is capped, so this is bounded).
        while !ended {
            let page = try await store.events(of: id, after: position, count: pageSize)
            try await deliver(page)
            if page.count < pageSize { break }
        }
        guard follow, !ended else { return }
        if let now = try await sessions.session(id), Self.isSettled(now) {
            // Drain what was written between the last read and the check, then end.
            try await deliver(try await store.events(of: id, after: position, count: pageSize))
            if !ended && endAt != position {
                endAt = position
                try await send(.end(now))
            }
            if stopAtEnd { return }
        }
        let subscription = await hub.subscribe(session: id, stream: store.keys.events(id), position: position)
        defer { hub.unsubscribe(subscription) }
        if position < subscription.registeredAt {
            try await deliver(try await store.events(of: id, after: position, through: subscription.registeredAt, count: 10_000))
        }
        // A graceful shutdown ends the stream (the client resumes elsewhere with its last id).
        for await delivery in subscription.deliveries.cancelOnGracefulShutdown() {
            try Task.checkCancellation()
            switch delivery {
            case .events(let events): try await deliver(events)
            case .keepAlive: try await send(.keepAlive)
            }
            if ended { return }
        }
        if subscription.overflowed { try await send(.overflow(lastEventID: position)) }
    }
}
