import StepwiseCore
import StepwiseRedis

/// The gateway's own reads and writes in Redis: revoked tokens, each owner's session index, and
/// the stream reads a subscriber needs before it joins the hub.
public struct GatewayStore: Sendable {
    public let connection: RedisConnection
    public let keys: KeySpace
    /// The keyring that opens encrypted sessions' state and events.
    public let sealer: (any SessionSealer)?

    public init(connection: RedisConnection, keys: KeySpace, sealer: (any SessionSealer)? = nil) {
        self.connection = connection
        self.keys = keys
        self.sealer = sealer
    }

    /// Reads sessions with this store's connection and keyring.
    var sessions: SessionStore { SessionStore(connection: connection, keys: keys, sealer: sealer) }

    /// Revokes a token (and its tickets) until `until` (seconds since 1970, its expiry).
    ///
    /// `SET key 1 EXAT until`: see <https://redis.io/docs/latest/commands/set/>.
    public func revoke(tokenID: String, until: Int64) async throws {
        try await connection.send(["SET", RedisArgument(keys.revokedToken(tokenID)), "1", "EXAT", RedisArgument(until)])
            .throwingServerError()
    }

    /// Whether a token id was revoked. One `EXISTS`.
    public func isRevoked(tokenID: String) async throws -> Bool {
        try await connection.send(["EXISTS", RedisArgument(keys.revokedToken(tokenID))]).throwingServerError().int == 1
    }

    /// Records that `owner` created `session` at `now` (ms). Entries older than the longest session
    /// TTL (30 days) are dropped, and the index itself expires 30 days after its last write.
    public func addOwned(_ session: SessionID, owner: String, now: Int64) async throws {
        let key = RedisArgument(keys.ownerSessions(owner))
        let window: Int64 = 30 * 86_400_000
        for r in try await connection.pipeline([
            ["ZADD", key, RedisArgument(now), RedisArgument(session.rawValue)],
            ["ZREMRANGEBYSCORE", key, "-inf", RedisArgument("(" + String(now - window))],
            ["PEXPIRE", key, RedisArgument(window)],
        ]) { try r.throwingServerError() }
    }

    /// The sessions `owner` created, newest first, without the ones that expired (those are
    /// removed from the index as they are found).
    public func owned(by owner: String, limit: Int) async throws -> [SessionSnapshot] {
        let key = keys.ownerSessions(owner)
        let reply = try await connection.send(["ZREVRANGE", RedisArgument(key), 0, RedisArgument(max(0, limit - 1))])
            .throwingServerError()
        let ids = (reply.array ?? []).compactMap { $0.string }.compactMap { try? SessionID($0) }
        let store = sessions
        var result: [SessionSnapshot] = []
        var gone: [RedisArgument] = []
        for id in ids {
            let snapshot: SessionSnapshot?
            do {
                snapshot = try await store.session(id)
            } catch let e as StepwiseError where e.code == .keyUnavailable || e.code == .sealedDataInvalid {
                // Encrypted under a key this gateway lacks: left out of the list, kept in the index.
                continue
            }
            if let s = snapshot, s.owner == owner {
                result.append(s)
            } else {
                gone.append(RedisArgument(id.rawValue))
            }
        }
        if !gone.isEmpty { _ = try await connection.send(["ZREM", RedisArgument(key)] + gone) }
        return result
    }

    /// The bounds of a session's stream: its first and last entry ids and the last id it ever
    /// generated (`nil` each when the stream does not exist; for a compacted session, only the
    /// last generated id, and `trimmed`).
    ///
    /// `XINFO STREAM`: see <https://redis.io/docs/latest/commands/xinfo-stream/>.
    public func streamBounds(_ id: SessionID) async throws -> StreamBounds {
        let reply = try await connection.send(["XINFO", "STREAM", RedisArgument(keys.events(id))])
        if case .error(let message) = reply {
            if message.contains("no such key") {
                // Compaction removed an idle session's stream and kept its last id (compact.lua).
                let last = try await connection.send(["HGET", RedisArgument(keys.session(id)), "evlast"]).throwingServerError()
                guard let generated = last.string.flatMap(EventID.init) else {
                    return StreamBounds(first: nil, last: nil, lastGenerated: nil)
                }
                return StreamBounds(first: nil, last: nil, lastGenerated: generated, trimmed: true)
            }
            try reply.throwingServerError()
        }
        let items = reply.array ?? []
        var first: EventID?
        var last: EventID?
        var generated: EventID?
        var length = 0
        var added = 0
        var i = 0
        while i + 1 < items.count {
            switch items[i].string {
            case "first-entry": first = items[i + 1].array?.first?.string.flatMap(EventID.init)
            case "last-entry": last = items[i + 1].array?.first?.string.flatMap(EventID.init)
            case "last-generated-id": generated = items[i + 1].string.flatMap(EventID.init)
            case "length": length = items[i + 1].int ?? 0
            case "entries-added": added = items[i + 1].int ?? 0
            default: break
            }
            i += 2
        }
        return StreamBounds(first: first, last: last, lastGenerated: generated, trimmed: added > length)
    }

    /// Up to `count` events after `after` (exclusive) up to `through` (inclusive; `nil` = the end).
    ///
    /// `XRANGE key (after through COUNT n`: see <https://redis.io/docs/latest/commands/xrange/>.
    public func events(of id: SessionID, after: EventID, through: EventID? = nil, count: Int) async throws -> [StepEvent] {
        let reply = try await connection.send([
            "XRANGE", RedisArgument(keys.events(id)), RedisArgument("(" + after.description),
            RedisArgument(through?.description ?? "+"), "COUNT", RedisArgument(count),
        ]).throwingServerError()
        return try await sessions.opened((reply.array ?? []).compactMap { StepEvent(entry: $0, session: id.rawValue) }, of: id)
    }
}

/// The first, last and last-generated entry ids of a stream.
public struct StreamBounds: Sendable, Hashable {
    public var first: EventID?
    public var last: EventID?
    public var lastGenerated: EventID?
    /// Entries were removed from the front (`MAXLEN` trimming, or compaction of an idle session).
    public var trimmed = false

    /// Where a reader that has seen everything up to now continues.
    public var end: EventID { last ?? lastGenerated ?? .zero }
}

/// A Redis Stream entry id, `<ms>-<seq>`, ordered as Redis orders them.
public struct EventID: Sendable, Hashable, Comparable, CustomStringConvertible {
    public var milliseconds: UInt64
    public var sequence: UInt64

    /// The id before every entry (`0-0`).
    public static let zero = EventID(milliseconds: 0, sequence: 0)

    public init(milliseconds: UInt64, sequence: UInt64) {
        self.milliseconds = milliseconds
        self.sequence = sequence
    }

    /// Parses `<ms>-<seq>` or `<ms>`; `nil` for anything else.
    public init?(_ text: String) {
        guard text.utf8.count <= 41 else { return nil }
        let parts = text.split(separator: "-", omittingEmptySubsequences: false)
        guard (1...2).contains(parts.count), parts.allSatisfy({ !$0.isEmpty && $0.utf8.allSatisfy { $0 >= 48 && $0 <= 57 } }),
            let ms = UInt64(parts[0])
        else { return nil }
        let seq = parts.count == 2 ? UInt64(parts[1]) : 0
        guard let seq else { return nil }
        self.init(milliseconds: ms, sequence: seq)
    }

    public var description: String { "\(milliseconds)-\(sequence)" }

    public static func < (a: EventID, b: EventID) -> Bool {
        (a.milliseconds, a.sequence) < (b.milliseconds, b.sequence)
    }
}
