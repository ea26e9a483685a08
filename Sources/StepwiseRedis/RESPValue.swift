/// A reply from Redis, decoded from RESP2.
///
/// The raw layer returns error replies as ``RESPValue/error(_:)`` values; typed helpers
/// turn them into ``RedisServerError`` with ``RESPValue/throwingServerError()``.
public enum RESPValue: Sendable, Hashable {
    /// A simple string reply such as `OK`.
    case simple(String)
    /// An error reply such as `WRONGTYPE Operation against a key...`.
    case error(String)
    /// An integer reply.
    case integer(Int64)
    /// A bulk string reply, kept as raw bytes (it may not be UTF-8).
    case bulk([UInt8])
    /// A nil bulk or nil array reply.
    case null
    /// An array reply.
    case array([RESPValue])

    /// The reply as text: simple and bulk strings (decoded as UTF-8, invalid bytes repaired) and integers.
    public var string: String? {
        switch self {
        case .simple(let s): return s
        case .bulk(let b): return String(decoding: b, as: UTF8.self)
        case .integer(let i): return String(i)
        default: return nil
        }
    }

    /// The reply as an integer: integer replies and strings that hold a decimal integer.
    public var int: Int? {
        switch self {
        case .integer(let i): return Int(i)
        case .bulk, .simple: return string.flatMap { Int($0) }
        default: return nil
        }
    }

    /// The elements of an array reply, or `nil` for any other reply.
    public var array: [RESPValue]? {
        if case .array(let a) = self { return a }
        return nil
    }

    /// The raw bytes of a bulk string reply.
    public var bytes: [UInt8]? {
        switch self {
        case .bulk(let b): return b
        case .simple(let s): return Array(s.utf8)
        default: return nil
        }
    }

    /// Whether this is a nil reply.
    public var isNull: Bool {
        if case .null = self { return true }
        return false
    }

    /// Returns `self`, or throws the ``RedisServerError`` that an error reply carries.
    ///
    /// - Throws: ``RedisServerError`` when the reply is ``RESPValue/error(_:)``.
    @discardableResult
    public func throwingServerError() throws(RedisServerError) -> RESPValue {
        if case .error(let message) = self { throw RedisServerError(message) }
        return self
    }
}

/// One argument of a Redis command, sent as a binary-safe bulk string.
///
/// Arguments are always sent through `redisAppendCommandArgv` with explicit lengths, so NUL,
/// CR and LF bytes travel unchanged and no format string is ever built from data.
public struct RedisArgument: Sendable, Hashable, ExpressibleByStringLiteral, ExpressibleByIntegerLiteral {
    /// The bytes sent to Redis.
    public var bytes: [UInt8]

    /// Creates an argument from raw bytes.
    public init(bytes: [UInt8]) { self.bytes = bytes }
    /// Creates an argument from the UTF-8 bytes of a string.
    public init(_ string: String) { self.bytes = Array(string.utf8) }
    /// Creates an argument from the decimal text of an integer.
    public init<I: BinaryInteger>(_ value: I) { self.bytes = Array(String(value).utf8) }
    public init(stringLiteral value: String) { self.init(value) }
    public init(integerLiteral value: Int) { self.init(value) }
}

extension RESPValue: CustomStringConvertible {
    /// The reply's shape, never the content of a bulk string: `bulk(12 bytes)`, `array(3)[…]`.
    ///
    /// Bulk strings carry session data (states, inputs, results), so an error message that shows
    /// an unexpected reply (`"… returned \(reply)"`) must not print them. Simple strings, error
    /// replies and integers are shown as they are: Redis writes those itself.
    public var description: String {
        switch self {
        case .simple(let s): return "simple(\(s))"
        case .error(let e): return "error(\(e))"
        case .integer(let i): return "integer(\(i))"
        case .bulk(let b): return "bulk(\(b.count) bytes)"
        case .null: return "null"
        case .array(let items):
            let shown = items.prefix(8).map(\.description).joined(separator: ", ")
            return "array(\(items.count))[\(shown)\(items.count > 8 ? ", …" : "")]"
        }
    }
}
