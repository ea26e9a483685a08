import StepwiseRedis

/// Reads sessions, the queue and event streams: everything `status`, `sessions`, `queue` and
/// `watch` show.
public struct SessionStore: Sendable {
    public let connection: RedisConnection
    public let keys: KeySpace
    /// The keyring that opens encrypted sessions; without one, reading an encrypted session's
    /// state or sealed events fails with ``StepwiseError/Code/keyUnavailable``.
    public let sealer: (any SessionSealer)?

    public init(connection: RedisConnection, keys: KeySpace, sealer: (any SessionSealer)? = nil) {
        self.connection = connection
        self.keys = keys
        self.sealer = sealer
    }

    /// The cipher of a session's data key: `nil` when the session is not encrypted (or is gone).
    /// `HGET <session> dk`.
    ///
    /// - Throws: ``StepwiseError`` ``StepwiseError/Code/keyUnavailable`` when the keyring lacks its key.
    public func cipher(for id: SessionID) async throws -> (any SessionCipher)? {
        let reply = try await connection.send(["HGET", RedisArgument(keys.session(id)), "dk"]).throwingServerError()
        return try SealedText.cipher(sealer, session: id, wrappedKey: reply.string)
    }

    /// `events` with their sealed fields opened (one `HGET` for the key when any is sealed).
    ///
    /// - Throws: ``StepwiseError`` when a sealed field does not open (no keyring, an unknown key,
    ///   a forgotten session): never garbage.
    public func opened(_ events: [StepEvent], of id: SessionID) async throws -> [StepEvent] {
        guard SealedText.anySealed(events) else { return events }
        let cipher = try await cipher(for: id)
        return try events.map { try $0.opened(with: cipher) }
    }

    /// The session, or `nil` when it does not exist (or expired). One round trip.
    ///
    /// - Throws: ``StepwiseError`` ``StepwiseError/Code/keyUnavailable`` for an encrypted session
    ///   whose key this process lacks, ``StepwiseError/Code/sealedDataInvalid`` when its state
    ///   does not open.
    public func session(_ id: SessionID) async throws -> SessionSnapshot? {
        let replies = try await connection.pipeline([
            [
                "HMGET", RedisArgument(keys.session(id)), "agent", "owner", "status", "version", "steps", "created",
                "active", "options", "state", "cancelled", "blocked", "exp", "dk",
            ],
            ["LLEN", RedisArgument(keys.inbox(id))],
        ])
        for r in replies { try r.throwingServerError() }
        guard let f = replies[0].array, f.count == 13, let agent = f[0].string else { return nil }
        let cipher = try SealedText.cipher(sealer, session: id, wrappedKey: f[12].string)
        func json(_ v: RESPValue, _ field: SealedField) throws -> JSONValue {
            guard let b = v.bytes, !b.isEmpty else { return .null }
            let text = try SealedText.open(String(decoding: b, as: UTF8.self), as: field, with: cipher, session: id.rawValue)
            return (try? JSONValue(parsing: text)) ?? .string(text)
        }
        return SessionSnapshot(
            id: id, agent: agent, owner: f[1].string ?? "",
            status: f[2].string.flatMap(SessionStatus.init(rawValue:)) ?? .idle,
            version: f[3].int ?? 0, steps: f[4].int ?? 0,
            createdAt: Int64(f[5].int ?? 0), lastActiveAt: Int64(f[6].int ?? 0),
            options: try json(f[7], .options), state: try json(f[8], .state), queued: replies[1].int ?? 0, cancelReason: f[9].string,
            deadLetter: f[10].string.flatMap { $0.isEmpty ? nil : $0 }, expiresAt: f[11].string.flatMap { Int64($0) })
    }

    /// The most recently active sessions, newest first, with status and step count.
    public func recentSessions(limit: Int) async throws -> [(id: String, lastActiveAt: Int64, status: String, steps: Int)] {
        let reply = try await connection.send(["ZREVRANGE", RedisArgument(keys.sessions), 0, RedisArgument(limit - 1), "WITHSCORES"])
            .throwingServerError()
        let items = reply.array ?? []
        var rows: [(String, Int64)] = []
        var i = 0
        while i + 1 < items.count {
            if let id = items[i].string { rows.append((id, Int64(items[i + 1].string.flatMap { Double($0) } ?? 0))) }
            i += 2
        }
        let valid = rows.compactMap { row in (try? SessionID(row.0)).map { ($0, row.1) } }
        guard !valid.isEmpty else { return [] }
        let details = try await connection.pipeline(
            valid.map { ["HMGET", RedisArgument(keys.session($0.0)), "status", "steps", "active"] })
        // The index is refreshed at most every few seconds per session; the hash has the exact time.
        return zip(valid, details).map { row, d in
            let f = d.array ?? []
            let active = f.count > 2 ? f[2].int.map(Int64.init) : nil
            return (row.0.rawValue, active ?? row.1, f.first?.string ?? "expired", f.count > 1 ? (f[1].int ?? 0) : 0)
        }.sorted { $0.1 > $1.1 }
    }

    /// Queue depth and what each registered worker holds.
    public func queueInfo() async throws -> QueueInfo {
        let head = try await connection.pipeline([
            ["LLEN", RedisArgument(keys.ready)],
            ["ZRANGE", RedisArgument(keys.workers), 0, -1, "WITHSCORES"],
            ["HGETALL", RedisArgument(keys.stats)],
            ["ZCARD", RedisArgument(keys.delayed)],
            ["LLEN", RedisArgument(keys.parked)],
            ["ZCARD", RedisArgument(keys.dead)],
            ["SCARD", RedisArgument(keys.active)],
        ])
        for r in head { try r.throwingServerError() }
        var workers: [(String, Int64)] = []
        let w = head[1].array ?? []
        var i = 0
        while i + 1 < w.count {
            workers.append((w[i].string ?? "", Int64(w[i + 1].string.flatMap { Double($0) } ?? 0)))
            i += 2
        }
        var stats: [String: Int] = [:]
        let s = head[2].array ?? []
        i = 0
        while i + 1 < s.count {
            stats[s[i].string ?? ""] = s[i + 1].int ?? 0
            i += 2
        }
        var rows: [QueueInfo.WorkerRow] = []
        if !workers.isEmpty {
            let details = try await connection.pipeline(
                workers.flatMap {
                    [
                        ["LLEN", RedisArgument(keys.inflight(worker: $0.0))], ["PTTL", RedisArgument(keys.heartbeat(worker: $0.0))],
                        ["GET", RedisArgument(keys.heartbeat(worker: $0.0))],
                    ]
                })
            for (n, wk) in workers.enumerated() {
                rows.append(
                    .init(
                        id: wk.0, lastHeartbeatAt: wk.1, inflight: details[3 * n].int ?? 0, alive: (details[3 * n + 1].int ?? -2) > 0,
                        status: details[3 * n + 2].string ?? ""))
            }
        }
        return QueueInfo(
            ready: head[0].int ?? 0, workers: rows, stats: stats, delayed: head[3].int ?? 0, parked: head[4].int ?? 0,
            dead: head[5].int ?? 0, active: head[6].int ?? 0)
    }

    /// Events after `after` (exclusive; `"0"` for all), waiting up to `block` when there are none.
    ///
    /// `XREAD [BLOCK ms] COUNT n STREAMS key id`: see <https://redis.io/docs/latest/commands/xread/>.
    /// The socket timeout is raised for the block, so it never cuts the wait short.
    public func events(of id: SessionID, after: String, count: Int = 100, block: Duration? = nil) async throws -> [StepEvent] {
        var command: [RedisArgument] = ["XREAD", "COUNT", RedisArgument(count)]
        if let block { command += ["BLOCK", RedisArgument(max(1, block.milliseconds))] }
        command += ["STREAMS", RedisArgument(keys.events(id)), RedisArgument(after)]
        let reply = try await connection.send(command, blockingFor: block).throwingServerError()
        guard let streams = reply.array, let first = streams.first?.array, first.count == 2, let entries = first[1].array else {
            return []
        }
        return try await opened(entries.compactMap { StepEvent(entry: $0, session: id.rawValue) }, of: id)
    }
}

/// The state of the queue, for `stepwise queue`.
public struct QueueInfo: Sendable {
    /// One worker process registered in the pool.
    public struct WorkerRow: Sendable {
        public var id: String
        public var lastHeartbeatAt: Int64
        public var inflight: Int
        public var alive: Bool
        /// What the worker's last heartbeat said: `ok`, `oom` (Redis refused its writes for lack
        /// of memory: it claims nothing until Redis has room) or `stopping`; empty when dead.
        public var status: String
    }
    /// Jobs waiting in the ready list.
    public var ready: Int
    public var workers: [WorkerRow]
    /// Pool-wide counters (`committed`, `stale_commits`, `reaped`, `skipped`, `dead`).
    public var stats: [String: Int]
    /// Retries waiting for their delay.
    public var delayed: Int
    /// Jobs waiting for an active-session slot.
    public var parked: Int
    /// Dead letters (each blocks its session).
    public var dead: Int
    /// Sessions holding an active-session slot (only counted when the pool has a limit).
    public var active: Int
}
