/// Groups streamed tokens into progress events: one event per `interval` or per `maxTokens`
/// tokens, whichever comes first, so a fast model does not write an event per token.
///
/// The rule is checked when a token arrives: the first token after a quiet spell of `interval`
/// goes out at once; tokens that follow within `interval` wait for the next check or for
/// ``drain()`` at the end of the stream.
public struct TokenCoalescer: Sendable {
    /// The longest a token waits while more tokens keep arriving.
    public var interval: Duration
    /// The most tokens one event carries.
    public var maxTokens: Int
    private var pending = ""
    private var count = 0
    private var lastFlush: ContinuousClock.Instant?

    /// Creates a coalescer.
    public init(interval: Duration = .milliseconds(100), maxTokens: Int = 32) {
        self.interval = interval
        self.maxTokens = max(1, maxTokens)
    }

    /// Adds one token; returns the text to publish now (with its token count), if any.
    public mutating func add(_ token: String, now: ContinuousClock.Instant = .now) -> (text: String, tokens: Int)? {
        pending += token
        count += 1
        let due = lastFlush.map { now - $0 >= interval } ?? true
        guard due || count >= maxTokens else { return nil }
        lastFlush = now
        return drain()
    }

    /// Whatever is still pending (at the end of a stream), and resets.
    public mutating func drain() -> (text: String, tokens: Int)? {
        guard count > 0 else { return nil }
        defer {
            pending = ""
            count = 0
        }
        return (pending, count)
    }
}
