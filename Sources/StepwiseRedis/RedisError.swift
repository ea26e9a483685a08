/// A failure of the client or the connection, as opposed to an error reply from the server.
///
/// After any ``RedisError`` the hiredis context is unusable; ``RedisConnection`` drops it and
/// reconnects (with backoff) on the next command.
public struct RedisError: Error, Sendable, CustomStringConvertible {
    /// The kind of failure.
    public struct Code: Sendable, Hashable, CustomStringConvertible {
        private enum Base: Sendable, Hashable {
            case io, eof, protocolError, outOfMemory, timeout, connectionRefused, rejected, other
        }
        private let base: Base
        private init(_ base: Base) { self.base = base }

        /// A read or write failed (`REDIS_ERR_IO`).
        public static let io = Code(.io)
        /// The server closed the connection (`REDIS_ERR_EOF`).
        public static let eof = Code(.eof)
        /// The reply could not be parsed (`REDIS_ERR_PROTOCOL`).
        public static let protocolError = Code(.protocolError)
        /// hiredis ran out of memory (`REDIS_ERR_OOM`).
        public static let outOfMemory = Code(.outOfMemory)
        /// The socket timeout elapsed (`EAGAIN`).
        public static let timeout = Code(.timeout)
        /// The server could not be reached at all.
        public static let connectionRefused = Code(.connectionRefused)
        /// The server answered but refused the handshake: a wrong user or password (`WRONGPASS`),
        /// a user without a permission the handshake needs (`NOPERM`), or a bad database number.
        public static let rejected = Code(.rejected)
        /// Anything else hiredis reports (`REDIS_ERR_OTHER`).
        public static let other = Code(.other)

        public var description: String {
            switch base {
            case .io: "io"
            case .eof: "eof"
            case .protocolError: "protocol"
            case .outOfMemory: "out-of-memory"
            case .timeout: "timeout"
            case .connectionRefused: "connection-refused"
            case .rejected: "rejected"
            case .other: "other"
            }
        }
    }

    /// The kind of failure.
    public var code: Code
    /// hiredis' `errstr` or our own explanation.
    public var message: String
    /// The address the connection was talking to.
    public var address: String

    /// Creates an error.
    public init(_ code: Code, _ message: String, address: String) {
        self.code = code
        self.message = message
        self.address = address
    }

    public var description: String { "redis \(address): \(message) (\(code))" }
}

/// An error reply from the server, such as `WRONGTYPE`, `NOSCRIPT` or `ERR`.
public struct RedisServerError: Error, Sendable, Hashable, CustomStringConvertible {
    /// The first word of the reply, for example `ERR`, `WRONGTYPE` or `NOSCRIPT`.
    public var prefix: String
    /// The whole error reply.
    public var message: String

    /// Parses an error reply.
    public init(_ message: String) {
        self.message = message
        self.prefix = String(message.prefix(while: { $0 != " " }))
    }

    public var description: String { message }
}

extension RedisServerError {
    /// Whether the server refused for lack of an ACL permission: `NOPERM` for a command or key the
    /// user may not use directly, or the error a script gets when it calls one (Redis 7 checks
    /// commands and keys inside scripts against the calling user).
    public var isPermissionDenied: Bool {
        prefix == "NOPERM" || message.contains("The user executing the script can't")
    }
}
