import StepwiseRedis

/// Re-wraps every session's data key under the keyring's active key (`stepwise keys rewrap`),
/// so older keyring keys can be retired. Payloads are not touched: only each session's `dk`.
///
/// Resumable and idempotent: sessions already under the active key are skipped, so a run that was
/// interrupted is simply started again. Each replacement is a compare-and-set (`rewrap.lua`): a
/// session forgotten, re-created or re-wrapped meanwhile keeps what the other writer left.
public struct KeyRotation: Sendable {
    public let connection: RedisConnection
    public let keys: KeySpace
    public let sealer: any SessionSealer

    public init(connection: RedisConnection, keys: KeySpace, sealer: any SessionSealer) {
        self.connection = connection
        self.keys = keys
        self.sealer = sealer
    }

    /// What a rewrap run did.
    public struct Report: Sendable, Hashable {
        /// Sessions whose data key is now wrapped by the active key (it was not before).
        public var rewrapped = 0
        /// Sessions already under the active key.
        public var alreadyActive = 0
        /// Sessions stored in plain text (no data key).
        public var plain = 0
        /// Sessions changed by someone else between the read and the compare-and-set (forgotten,
        /// re-created or re-wrapped): left as the other writer left them.
        public var changedMeanwhile = 0
        /// Sessions whose data key could not be unwrapped (its key id is not in the keyring), up to 20 ids.
        public var unreadable: [String] = []
        /// How many sessions could not be unwrapped.
        public var unreadableCount = 0
    }

    /// Walks every session hash of the namespace (`SCAN … MATCH <ns>:s:{*} TYPE hash`, `count`
    /// keys per call) and re-wraps those not under the active key.
    ///
    /// - Parameter progress: called after each batch with the report so far.
    public func rewrapAll(count: Int = 500, progress: (Report) -> Void = { _ in }) async throws -> Report {
        var report = Report()
        var cursor = "0"
        let calls = ScriptCalls(keys: keys, eventsMaxLength: 1000)
        let pattern = keys.prefix + "s:{*}"
        repeat {
            let reply = try await connection.send([
                "SCAN", RedisArgument(cursor), "MATCH", RedisArgument(pattern), "COUNT", RedisArgument(count), "TYPE", "hash",
            ]).throwingServerError()
            guard let parts = reply.array, parts.count == 2, let next = parts[0].string else {
                throw StepwiseError(.unexpectedReply, "SCAN returned \(reply)")
            }
            cursor = next
            let names = (parts[1].array ?? []).compactMap(\.string)
            let ids = names.compactMap { name -> SessionID? in
                guard name.hasPrefix(keys.prefix + "s:{"), name.hasSuffix("}") else { return nil }
                return try? SessionID(String(name.dropFirst(keys.prefix.count + 3).dropLast()))
            }
            guard !ids.isEmpty else { continue }
            let wrapped = try await connection.pipeline(ids.map { ["HGET", RedisArgument(keys.session($0)), "dk"] })
            for (id, reply) in zip(ids, wrapped) {
                try reply.throwingServerError()
                guard let old = reply.string, !old.isEmpty else {
                    report.plain += 1
                    continue
                }
                let new: String?
                do {
                    new = try sealer.rewrapped(old, for: id)
                } catch {
                    report.unreadableCount += 1
                    if report.unreadable.count < 20 { report.unreadable.append(id.rawValue) }
                    continue
                }
                guard let new else {
                    report.alreadyActive += 1
                    continue
                }
                if try await connection.run(calls.rewrap(session: id, old: old, new: new)).int == 1 {
                    report.rewrapped += 1
                } else {
                    report.changedMeanwhile += 1
                }
            }
            progress(report)
        } while cursor != "0"
        return report
    }
}
