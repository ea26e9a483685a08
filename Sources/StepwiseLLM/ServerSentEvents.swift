/// Splits a `text/event-stream` body into the `data` of each event.
///
/// Bytes arrive in arbitrary pieces (a network read can end mid-line or mid-character); feed each
/// piece to ``feed(_:)`` and it returns the events completed so far. Lines end in `\n`, `\r\n` or
/// `\r`; an empty line ends an event; several `data:` lines of one event are joined with `\n`;
/// comments (`:` lines) and other fields (`event:`, `id:`, `retry:`) are ignored, as the
/// chat-completions stream carries everything in `data`.
public struct ServerSentEventParser: Sendable {
    private var line: [UInt8] = []
    private var data: [UInt8] = []
    private var hasData = false
    private var lastWasCR = false
    /// The longest event accepted, in bytes; a longer one is a malformed stream.
    public let maxEventBytes: Int

    /// Creates a parser that refuses events over `maxEventBytes` (default 4 MiB).
    public init(maxEventBytes: Int = 4 << 20) { self.maxEventBytes = maxEventBytes }

    /// Consumes `bytes` and returns the `data` of every event they complete, in order.
    ///
    /// - Throws: ``LLMError`` (``LLMError/Code/malformedChunk``) for an event over the size limit.
    public mutating func feed(_ bytes: some Sequence<UInt8>) throws -> [String] {
        var events: [String] = []
        for byte in bytes {
            if byte == UInt8(ascii: "\n") && lastWasCR {
                lastWasCR = false
                continue
            }
            lastWasCR = byte == UInt8(ascii: "\r")
            if byte == UInt8(ascii: "\n") || byte == UInt8(ascii: "\r") {
                if let event = endLine() { events.append(event) }
            } else {
                line.append(byte)
                if line.count + data.count > maxEventBytes {
                    throw LLMError(.malformedChunk, "a streamed event is longer than \(maxEventBytes) bytes")
                }
            }
        }
        return events
    }

    /// Whether bytes of an unfinished event are buffered (a stream that ends here was cut short).
    public var hasPartialEvent: Bool { !line.isEmpty || hasData }

    private mutating func endLine() -> String? {
        defer { line.removeAll(keepingCapacity: true) }
        if line.isEmpty {
            guard hasData else { return nil }
            let event = String(decoding: data, as: UTF8.self)
            data.removeAll(keepingCapacity: true)
            hasData = false
            return event
        }
        if line.first == UInt8(ascii: ":") { return nil }
        let colon = line.firstIndex(of: UInt8(ascii: ":")) ?? line.endIndex
        guard line[..<colon].elementsEqual("data".utf8) else { return nil }
        var value = line[colon...].dropFirst()
        if value.first == UInt8(ascii: " ") { value = value.dropFirst() }
        if hasData { data.append(UInt8(ascii: "\n")) }
        data.append(contentsOf: value)
        hasData = true
        return nil
    }
}
