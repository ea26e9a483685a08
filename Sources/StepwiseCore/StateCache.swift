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
