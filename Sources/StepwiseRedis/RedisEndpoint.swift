/// Where and how to connect: parsed from one connection string.
///
/// Accepted forms:
/// - `redis://[user:password@]host[:port][/db]` (user may be empty: `redis://:password@host`)
/// - `unix:///path/to/redis.sock[?db=N]`
///
/// Credentials may be percent-encoded. TLS (`rediss://`) is not supported by hiredis 0.14.1 (use
/// stunnel: docs/SECURITY.md). Neither ``description`` nor any ``ParseError`` shows the password.
public struct RedisEndpoint: Sendable, Hashable, CustomStringConvertible {
    /// TCP host or Unix socket path.
    public enum Address: Sendable, Hashable {
        case tcp(host: String, port: Int)
        case unix(path: String)
    }

    /// Where the server is.
    public var address: Address
    /// The ACL user name, or `nil` for the default user.
    public var username: String?
    /// The password, or `nil` for no `AUTH`.
    public var password: String?
    /// The logical database selected after connecting.
    public var database: Int

    /// Creates an endpoint.
    public init(address: Address, username: String? = nil, password: String? = nil, database: Int = 0) {
        self.address = address
        self.username = username
        self.password = password
        self.database = database
    }

    /// The address without credentials, safe for logs and error messages.
    public var description: String {
        switch address {
        case .tcp(let host, let port):
            let h = host.contains(":") ? "[\(host)]" : host
            return "redis://\(h):\(port)\(database == 0 ? "" : "/\(database)")"
        case .unix(let path):
            return "unix://\(path)\(database == 0 ? "" : "?db=\(database)")"
        }
    }

    /// Parses a connection string.
    ///
    /// - Parameters:
    ///   - url: the connection string.
    ///   - password: a password obtained elsewhere (a password file), or `nil`. With it, a lone
    ///     user-info part names the ACL user (`redis://worker@host`) instead of being the password,
    ///     and a URL that carries a password of its own is refused.
    /// - Throws: ``RedisEndpoint/ParseError`` naming what is wrong and the accepted forms. Its
    ///   message shows the URL with any password replaced by `***` (``redacted(_:)``).
    public init(parsing url: String, password external: String? = nil) throws(ParseError) {
        let shown = Self.redacted(url)
        let hint = "expected redis://[user:password@]host:port[/db] or unix:///path.sock"
        if url.hasPrefix("unix://") {
            var rest = String(url.dropFirst("unix://".count))
            var db = 0
            if let q = rest.firstIndex(of: "?") {
                let query = rest[rest.index(after: q)...]
                rest = String(rest[..<q])
                for pair in query.split(separator: "&") {
                    let kv = pair.split(separator: "=", maxSplits: 1).map(String.init)
                    guard kv.count == 2, kv[0] == "db", let n = Int(kv[1]), n >= 0 else {
                        throw ParseError("invalid query in '\(shown)': only db=N is accepted")
                    }
                    db = n
                }
            }
            guard rest.hasPrefix("/"), rest.count > 1 else {
                throw ParseError("invalid unix socket URL '\(shown)': the path must be absolute; \(hint)")
            }
            self.init(address: .unix(path: rest), password: external, database: db)
            return
        }
        if url.hasPrefix("rediss://") {
            throw ParseError(
                "'\(shown)': TLS (rediss://) is not supported by hiredis 0.14.1; use redis:// or unix:// "
                    + "(TLS: stunnel, see docs/SECURITY.md)")
        }
        guard url.hasPrefix("redis://") else {
            throw ParseError("invalid Redis URL '\(shown)': \(hint)")
        }
        var rest = Substring(url.dropFirst("redis://".count))
        var username: String?
        var password: String?
        if let at = rest.lastIndex(of: "@") {
            let userinfo = rest[..<at]
            rest = rest[rest.index(after: at)...]
            if let colon = userinfo.firstIndex(of: ":") {
                let u = String(userinfo[..<colon])
                username = u.isEmpty ? nil : try Self.percentDecode(u, in: shown)
                let p = try Self.percentDecode(String(userinfo[userinfo.index(after: colon)...]), in: shown)
                if external != nil, !p.isEmpty {
                    throw ParseError("'\(shown)' carries a password and a password file is given too: use one of them")
                }
                password = p
            } else if !userinfo.isEmpty {
                if external != nil {
                    // With a password file, redis://user@host names the user.
                    username = try Self.percentDecode(String(userinfo), in: shown)
                } else {
                    // redis://password@host is the historical form: treat a lone userinfo as a password.
                    password = try Self.percentDecode(String(userinfo), in: shown)
                }
            }
        }
        if let external { password = external }
        var database = 0
        if let slash = rest.firstIndex(of: "/") {
            let dbText = rest[rest.index(after: slash)...]
            rest = rest[..<slash]
            if !dbText.isEmpty {
                guard let n = Int(dbText), n >= 0 else {
                    throw ParseError("invalid database '\(dbText)' in '\(shown)': use a number such as /0")
                }
                database = n
            }
        }
        var host: String
        var port = 6379
        if rest.hasPrefix("[") {
            guard let close = rest.firstIndex(of: "]") else {
                throw ParseError("invalid IPv6 host in '\(shown)': missing ']'")
            }
            host = String(rest[rest.index(after: rest.startIndex)..<close])
            let after = rest[rest.index(after: close)...]
            if after.hasPrefix(":") {
                guard let p = Int(after.dropFirst()), (1...65535).contains(p) else {
                    throw ParseError("invalid port '\(after.dropFirst())' in '\(shown)': use 1-65535")
                }
                port = p
            }
        } else if let colon = rest.lastIndex(of: ":") {
            host = String(rest[..<colon])
            let portText = rest[rest.index(after: colon)...]
            guard let p = Int(portText), (1...65535).contains(p) else {
                throw ParseError("invalid port '\(portText)' in '\(shown)': use 1-65535")
            }
            port = p
        } else {
            host = String(rest)
        }
        guard !host.isEmpty else { throw ParseError("missing host in '\(shown)': \(hint)") }
        self.init(
            address: .tcp(host: host, port: port), username: username, password: password, database: database)
    }

    /// The connection string with its password replaced by `***`, safe for messages and logs.
    ///
    /// `redis://user:secret@host` becomes `redis://user:***@host`, and the historical
    /// `redis://secret@host` becomes `redis://***@host`. Text that is not a URL at all (no
    /// `://`) might be a password pasted into the wrong place, so it is not shown: only its length.
    public static func redacted(_ url: String) -> String {
        guard let scheme = url.firstRange(of: "://") else { return "<\(url.utf8.count) characters, not shown>" }
        let afterScheme = url[scheme.upperBound...]
        // The user-info part ends at the last '@', as the parser takes it (a password may hold '/').
        guard let at = afterScheme.lastIndex(of: "@") else { return url }
        let userinfo = afterScheme[..<at]
        let masked = userinfo.firstIndex(of: ":").map { userinfo[..<$0] + ":***" } ?? "***"
        return url[..<scheme.upperBound] + masked + afterScheme[at...]
    }

    private static func percentDecode(_ s: String, in shown: String) throws(ParseError) -> String {
        guard s.contains("%") else { return s }
        var out: [UInt8] = []
        var bytes = Array(s.utf8)[...]
        while let b = bytes.popFirst() {
            if b == UInt8(ascii: "%") {
                guard bytes.count >= 2,
                    let v = UInt8(String(decoding: bytes.prefix(2), as: UTF8.self), radix: 16)
                else { throw ParseError("invalid percent-encoding in the credentials of '\(shown)'") }
                out.append(v)
                bytes = bytes.dropFirst(2)
            } else {
                out.append(b)
            }
        }
        return String(decoding: out, as: UTF8.self)
    }

    /// A connection string that could not be parsed.
    public struct ParseError: Error, Sendable, CustomStringConvertible {
        /// What is wrong and which forms are accepted.
        public var message: String
        init(_ message: String) { self.message = message }
        public var description: String { message }
    }
}
