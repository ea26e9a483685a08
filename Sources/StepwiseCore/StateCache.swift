import Synchronization

/// The large states a worker committed, kept between a session's steps so that the next claim of
/// that session need not carry the state back (docs/ARCHITECTURE.md, "State cache").
///
/// An entry is a session's state as stored (sealed, for an encrypted session) at one incarnation
/// and version. It is used only when the claim names exactly that incarnation and version: any
/// other writer (another worker's commit, a re-created session) moves the version or the
/// incarnation on, so a stale entry is never used, only missed. Bounded by total bytes; the least
/// recently used entries go first.
final class StateCache: Sendable {
    struct Entry {
        var incarnation: String
        var version: Int
        var state: String
        var used: UInt64
    }

    struct Store: ~Copyable {
        var entries: [String: Entry] = [:]
        var bytes = 0
        var clock: UInt64 = 0
        var hits = 0
        var misses = 0
    }

    /// Most bytes of state kept; 0 keeps nothing.
    let capacity: Int
    private let store = Mutex(Store())

    init(capacity: Int) { self.capacity = max(0, capacity) }

    /// The state of `session` at `incarnation` and `version`, when it is cached.
    func state(session: String, incarnation: String, version: Int) -> String? {
        store.withLock { s in
            guard let i = s.entries.index(forKey: session), s.entries.values[i].incarnation == incarnation,
                s.entries.values[i].version == version
            else {
                s.misses += 1
                return nil
            }
            s.hits += 1
            s.clock += 1
            s.entries.values[i].used = s.clock
            return s.entries.values[i].state
        }
    }

    /// Keeps `state` as `session`'s state at `incarnation` and `version` (replacing what was kept).
    func remember(session: String, incarnation: String, version: Int, state: String) {
        let size = state.utf8.count
        store.withLock { s in
            if let old = s.entries.removeValue(forKey: session) { s.bytes -= old.state.utf8.count }
            guard size <= capacity else { return }
            s.clock += 1
            s.entries[session] = Entry(incarnation: incarnation, version: version, state: state, used: s.clock)
            s.bytes += size
            guard s.bytes > capacity else { return }
            // Evict least recently used entries until an eighth of the capacity is free, so
            // eviction (a sort) stays rare.
            for (key, entry) in s.entries.sorted(by: { $0.value.used < $1.value.used }) {
                guard s.bytes > capacity - capacity / 8 else { break }
                s.entries[key] = nil
                s.bytes -= entry.state.utf8.count
            }
        }
    }

    /// The incarnation and version kept for `session`, without counting a hit or a miss (tests).
    func peek(session: String) -> (incarnation: String, version: Int)? {
        store.withLock { s in s.entries[session].map { ($0.incarnation, $0.version) } }
    }

    /// Forgets `session`'s entry.
    func forget(session: String) {
        store.withLock { s in
            if let old = s.entries.removeValue(forKey: session) { s.bytes -= old.state.utf8.count }
        }
    }

    /// Hits, misses, entries and bytes so far (tests, metrics).
    var statistics: (hits: Int, misses: Int, entries: Int, bytes: Int) {
        store.withLock { ($0.hits, $0.misses, $0.entries.count, $0.bytes) }
    }
}

/// A large state's commit as the part that changed: the new state is the stored one's first
/// `prefix` bytes, then the middle the commit carries, then its last `suffix` bytes. An LLM
/// conversation grows by a message at a time, so the middle is that message, not the whole
/// conversation (docs/ARCHITECTURE.md, "State cache").
struct StateDelta: Sendable, Equatable {
    /// Bytes kept from the start of the stored state.
    var prefix: Int
    /// Bytes kept from its end.
    var suffix: Int
    /// The version of the stored state it applies to (the claim's).
    var version: Int
    /// The changed middle of the new state.
    var middle: String

    /// The delta from `old` to `new`, when the changed middle is at most half of `new`; nil
    /// otherwise. The middle starts and ends on UTF-8 character boundaries.
    init?(from old: String, to new: String, version: Int) {
        var old = old
        var new = new
        let found: (Int, Int, String)? = old.withUTF8 { o in
            new.withUTF8 { n in
                let most = min(o.count, n.count)
                var p = 0
                while p < most, o[p] == n[p] { p += 1 }
                var s = 0
                while s < most - p, o[o.count - 1 - s] == n[n.count - 1 - s] { s += 1 }
                // Back off to character boundaries (a UTF-8 continuation byte is 0b10xxxxxx).
                while p > 0, p < n.count, n[p] & 0xC0 == 0x80 { p -= 1 }
                while s > 0, n[n.count - s] & 0xC0 == 0x80 { s -= 1 }
                let middle = n.count - p - s
                guard middle * 2 <= n.count else { return nil }
                return (p, s, String(decoding: UnsafeBufferPointer(rebasing: n[p..<(n.count - s)]), as: UTF8.self))
            }
        }
        guard let (p, s, middle) = found else { return nil }
        self.prefix = p
        self.suffix = s
        self.version = version
        self.middle = middle
    }
}
