import Logging
import ServiceLifecycle
import StepwiseCore
import StepwiseRedis
import Synchronization

/// Follows the event streams of every session that has a subscriber, over a fixed number of Redis
/// connections, and fans each event out to that session's subscribers.
///
/// Each reader owns one ``RedisConnection`` (so one OS thread: blocking hiredis calls never run on
/// Swift's cooperative pool) and reads all the streams assigned to it with one
/// `XREAD COUNT n BLOCK ms STREAMS k1 k2 … id1 id2 …`. A session is assigned to a reader by a hash
/// of its id. When a stream is added while its reader blocks, the hub sends `CLIENT UNBLOCK` from
/// the control connection, so the new stream is read at once.
///
/// Each subscriber has a bounded buffer. A subscriber whose buffer is full is dropped (its
/// stream finishes and ``Subscription/overflowed`` is `true`), so a slow client never slows the
/// others; it resumes with the id of the last event it received.
public final class SubscriptionHub: Service, Sendable {
    /// Hub settings.
    public struct Configuration: Sendable {
        /// Reader connections (1-3; with the control connection the hub uses at most 4).
        public var readers: Int
        /// How long one `XREAD` blocks.
        public var block: Duration
        /// Entries read per stream per `XREAD`.
        public var count: Int
        /// Deliveries a subscriber may have waiting before it is dropped.
        public var bufferLimit: Int
        /// How often every subscriber gets a keep-alive tick.
        public var keepAlive: Duration

        public init(
            readers: Int = 2, block: Duration = .seconds(1), count: Int = 100, bufferLimit: Int = 512,
            keepAlive: Duration = .seconds(15)
        ) {
            self.readers = readers
            self.block = block
            self.count = count
            self.bufferLimit = bufferLimit
            self.keepAlive = keepAlive
        }
    }

    /// What a subscriber receives.
    public enum Delivery: Sendable {
        /// New events of the session, in stream order.
        case events([StepEvent])
        /// Nothing happened for a while: time to send a keep-alive.
        case keepAlive
    }

    /// One subscriber's feed. Iterate ``deliveries``; call ``SubscriptionHub/unsubscribe(_:)`` when done.
    public final class Subscription: Sendable {
        let id: UInt64
        let session: SessionID
        let stream: String
        let continuation: AsyncStream<Delivery>.Continuation
        /// The live deliveries, after the position the subscription was registered at.
        public let deliveries: AsyncStream<Delivery>
        /// Where the hub stood on this stream when the subscription was registered: every event
        /// after it is delivered here.
        public let registeredAt: EventID
        private let dropped = Atomic<Bool>(false)

        init(id: UInt64, session: SessionID, stream: String, registeredAt: EventID, bufferLimit: Int) {
            self.id = id
            self.session = session
            self.stream = stream
            self.registeredAt = registeredAt
            (deliveries, continuation) = AsyncStream.makeStream(of: Delivery.self, bufferingPolicy: .bufferingOldest(bufferLimit))
        }

        /// Whether the hub dropped this subscriber because its buffer was full.
        public var overflowed: Bool { dropped.load(ordering: .acquiring) }

        /// Delivers; returns false when the buffer was full (the subscriber is then finished).
        func deliver(_ d: Delivery) -> Bool {
            if case .dropped = continuation.yield(d) {
                dropped.store(true, ordering: .releasing)
                continuation.finish()
                return false
            }
            return true
        }
    }

    struct Follow {
        var position: EventID
        var subscribers: [UInt64: Subscription] = [:]
    }

    struct ReaderState {
        var streams: [String: Follow] = [:]
        /// Bumped whenever the set of streams changes.
        var generation: UInt64 = 0
        /// The generation the reader's current `XREAD` was built from, while it blocks.
        var blockedOn: UInt64?
        var clientID: Int?
        var wake: AsyncStream<Void>.Continuation?
    }

    final class Reader: Sendable {
        let index: Int
        let connection: RedisConnection
        let state = Mutex(ReaderState())
        init(index: Int, connection: RedisConnection) {
            self.index = index
            self.connection = connection
        }
    }

    private let readers: [Reader]
    private let control: RedisConnection
    private let configuration: Configuration
    private let logger: Logger
    private let nextID = Atomic<UInt64>(1)
    private let count = Atomic<Int>(0)

    /// Creates a hub.
    ///
    /// - Parameters:
    ///   - makeConnection: opens one reader connection (called ``Configuration/readers`` times);
    ///     the connections must not be shared with anything else, since they block.
    ///   - control: a connection for `CLIENT UNBLOCK` (may be shared with other short commands).
    public init(
        configuration: Configuration = .init(), control: RedisConnection, logger: Logger,
        makeConnection: (Int) -> RedisConnection
    ) {
        let n = min(max(configuration.readers, 1), 3)
        self.configuration = configuration
        self.control = control
        self.logger = logger
        readers = (0..<n).map { Reader(index: $0, connection: makeConnection($0)) }
    }

    /// How many subscriptions are open.
    public var subscriberCount: Int { count.load(ordering: .relaxed) }

    /// How many streams the hub follows.
    public var followedStreams: Int { readers.reduce(0) { n, r in n + r.state.withLock { $0.streams.count } } }

    /// Registers a subscriber for the stream `stream` of `session`, positioned at `position`
    /// (the last event it already has).
    ///
    /// Events after ``Subscription/registeredAt`` arrive in ``Subscription/deliveries``; when that is
    /// later than `position`, the caller reads the gap itself (``GatewayStore/events(of:after:through:count:)``)
    /// and skips duplicates by id.
    public func subscribe(session: SessionID, stream: String, position: EventID) async -> Subscription {
        let reader = readers[Self.shard(session.rawValue, readers.count)]
        let id = nextID.add(1, ordering: .relaxed).oldValue
        let (subscription, unblock) = reader.state.withLock { s -> (Subscription, (Int, UInt64)?) in
            var follow = s.streams[stream] ?? Follow(position: position)
            let isNew = follow.subscribers.isEmpty && s.streams[stream] == nil
            let sub = Subscription(
                id: id, session: session, stream: stream, registeredAt: follow.position, bufferLimit: configuration.bufferLimit)
            follow.subscribers[id] = sub
            s.streams[stream] = follow
            guard isNew else { return (sub, nil) }
            s.generation &+= 1
            s.wake?.yield(())
            if s.blockedOn != nil, let cid = s.clientID { return (sub, (cid, s.generation)) }
            return (sub, nil)
        }
        count.add(1, ordering: .relaxed)
        if let (cid, generation) = unblock { await interrupt(reader, clientID: cid, generation: generation) }
        return subscription
    }

    /// Removes a subscriber at once; a stream nobody follows is dropped from its reader's next `XREAD`.
    public func unsubscribe(_ subscription: Subscription) {
        let reader = readers[Self.shard(subscription.session.rawValue, readers.count)]
        let removed = reader.state.withLock { s -> Bool in
            guard var follow = s.streams[subscription.stream], follow.subscribers.removeValue(forKey: subscription.id) != nil
            else { return false }
            if follow.subscribers.isEmpty {
                s.streams[subscription.stream] = nil
                s.generation &+= 1
            } else {
                s.streams[subscription.stream] = follow
            }
            return true
        }
        subscription.continuation.finish()
        if removed { count.subtract(1, ordering: .relaxed) }
    }

    /// Runs the readers and the keep-alive ticker until cancelled or shut down gracefully.
    public func run() async throws {
        await withDiscardingTaskGroup { group in
            for reader in readers {
                group.addTask { await self.read(reader) }
            }
            group.addTask { await self.tick() }
        }
    }

    private func tick() async {
        while !Self.stopping {
            // A graceful shutdown ends the wait at once, not after up to one keep-alive interval.
            let interval = configuration.keepAlive
            do { try await cancelWhenGracefulShutdown { try await Task.sleep(for: interval) } } catch { return }
            for reader in readers {
                let subs = reader.state.withLock { s in s.streams.values.flatMap { $0.subscribers.values } }
                for sub in subs where !sub.deliver(.keepAlive) { unsubscribe(sub) }
            }
        }
    }

    private func read(_ reader: Reader) async {
        let (wakes, wake) = AsyncStream.makeStream(of: Void.self, bufferingPolicy: .bufferingNewest(1))
        reader.state.withLock { $0.wake = wake }
        var wakeIterator = wakes.makeAsyncIterator()
        var backoff = Duration.milliseconds(50)
        let blockMS = max(1, configuration.block.milliseconds)
        while !Self.stopping {
            do {
                if reader.state.withLock({ $0.clientID }) == nil {
                    let cid = try await reader.connection.send(["CLIENT", "ID"]).throwingServerError().int
                    reader.state.withLock { $0.clientID = cid }
                }
                let (keys, ids, generation) = reader.state.withLock { s -> ([RedisArgument], [RedisArgument], UInt64) in
                    let entries = s.streams.map { ($0.key, $0.value.position) }
                    if !entries.isEmpty { s.blockedOn = s.generation }
                    return (entries.map { RedisArgument($0.0) }, entries.map { RedisArgument($0.1.description) }, s.generation)
                }
                if keys.isEmpty {
                    // Nothing to follow: wait for a subscriber (or shutdown).
                    _ = await withTaskCancellationOrGracefulShutdownHandler {
                        await wakeIterator.next()
                    } onCancelOrGracefulShutdown: {
                        wake.finish()
                    }
                    continue
                }
                let command: [RedisArgument] =
                    ["XREAD", "COUNT", RedisArgument(configuration.count), "BLOCK", RedisArgument(blockMS), "STREAMS"] + keys + ids
                let reply = try await reader.connection.send(command, blockingFor: configuration.block)
                reader.state.withLock { s in if s.blockedOn == generation { s.blockedOn = nil } }
                _ = try reply.throwingServerError()
                dispatch(reply, reader: reader)
                backoff = .milliseconds(50)
            } catch {
                reader.state.withLock { s in
                    s.blockedOn = nil
                    s.clientID = nil
                }
                logger.info("hub reader error", metadata: ["stepwise.error": "\(error)", "stepwise.reader": "\(reader.index)"])
                do { try await Task.sleep(for: backoff) } catch { return }
                backoff = min(backoff * 2, .seconds(2))
            }
        }
        wake.finish()
    }

    private func dispatch(_ reply: RESPValue, reader: Reader) {
        guard let streams = reply.array else { return }
        for item in streams {
            guard let pair = item.array, pair.count == 2, let key = pair[0].string, let entries = pair[1].array else { continue }
            let events = entries.compactMap { StepEvent(entry: $0) }
            guard let lastText = events.last?.id, let last = EventID(lastText) else { continue }
            let subs = reader.state.withLock { s -> [Subscription] in
                guard var follow = s.streams[key] else { return [] }
                if follow.position < last { follow.position = last }
                s.streams[key] = follow
                return Array(follow.subscribers.values)
            }
            for sub in subs where !sub.deliver(.events(events)) { unsubscribe(sub) }
        }
    }

    /// Interrupts the reader's blocking `XREAD` so it picks up a new stream at once. The command
    /// may reach Redis before the `XREAD` does; then it is retried for a few milliseconds.
    private func interrupt(_ reader: Reader, clientID: Int, generation: UInt64) async {
        for _ in 0..<20 {
            let stillBlocked = reader.state.withLock { s in s.blockedOn.map { $0 < generation } ?? false }
            guard stillBlocked else { return }
            let reply = try? await control.send(["CLIENT", "UNBLOCK", RedisArgument(clientID)])
            if reply?.int == 1 { return }
            do { try await Task.sleep(for: .milliseconds(2)) } catch { return }
        }
    }

    private static var stopping: Bool { Task.isCancelled || Task<Never, Never>.isShuttingDownGracefully }

    static func shard(_ key: String, _ n: Int) -> Int {
        var h: UInt64 = 14_695_981_039_346_656_037
        for b in key.utf8 {
            h ^= UInt64(b)
            h &*= 1_099_511_628_211
        }
        return Int(h % UInt64(n))
    }
}
