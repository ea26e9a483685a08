/// What a ``RedisConnection`` tells its observer (for metrics): each round trip's latency and
/// each reconnect. The callbacks run on the connection's own thread, so they must be quick and
/// must not block (recording into a metrics handler is fine).
public struct RedisObserver: Sendable {
    /// Called after each round trip (one command, one pipeline, or one coalesced batch of script
    /// calls) with the time from the first write to the last reply. Blocking commands (`BLMOVE`
    /// with a block time) are not reported: their wait is not a round trip.
    public var roundTrip: @Sendable (Duration) -> Void
    /// Called each time a context is established again after the first.
    public var reconnected: @Sendable () -> Void

    public init(roundTrip: @escaping @Sendable (Duration) -> Void, reconnected: @escaping @Sendable () -> Void) {
        self.roundTrip = roundTrip
        self.reconnected = reconnected
    }
}
