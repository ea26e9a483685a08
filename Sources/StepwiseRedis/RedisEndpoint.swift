/// Where and how to connect: parsed from one connection string.
///
/// Accepted forms:
/// - `redis://[user:password@]host[:port][/db]` (user may be empty: `redis://:password@host`)
/// - `unix:///path/to/redis.sock[?db=N]`
///
/// Credentials may be percent-encoded. TLS (`rediss://`) is not supported by hiredis 0.14.1.
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
    /// - Throws: ``RedisEndpoint/ParseError`` naming what is wrong and the accepted forms.
    public init(parsing url: String) throws(ParseError) {
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
                        throw ParseError("invalid query '\(query)' in '\(url)': only db=N is accepted")
                    }
                    db = n
                }
            }
            guard rest.hasPrefix("/"), rest.count > 1 else {
                throw ParseError("invalid unix socket URL '\(url)': the path must be absolute; \(hint)")
            }
            self.init(address: .unix(path: rest), database: db)
            return
        }
        if url.hasPrefix("rediss://") {
            throw ParseError("'\(url)': TLS (rediss://) is not supported by hiredis 0.14.1; use redis:// or unix://")
        }
        guard url.hasPrefix("redis://") else {
            throw ParseError("invalid Redis URL '\(url)': \(hint)")
        }
        var rest = Substring(url.dropFirst("redis://".count))
        var username: String?
        var password: String?
        if let at = rest.lastIndex(of: "@") {
            let userinfo = rest[..<at]
            rest = rest[rest.index(after: at)...]
            if let colon = userinfo.firstIndex(of: ":") {
                let u = String(userinfo[..<colon])
                username = u.isEmpty ? nil : try Self.percentDecode(u, in: url)
                password = try Self.percentDecode(String(userinfo[userinfo.index(after: colon)...]), in: url)
            } else if !userinfo.isEmpty {
                // redis://password@host is the historical form: treat a lone userinfo as a password.
                password = try Self.percentDecode(String(userinfo), in: url)
            }
        }
        var database = 0
        if let slash = rest.firstIndex(of: "/") {
            let dbText = rest[rest.index(after: slash)...]
            rest = rest[..<slash]
            if !dbText.isEmpty {
                guard let n = Int(dbText), n >= 0 else {
                    throw ParseError("invalid database '\(dbText)' in '\(url)': use a number such as /0")
                }
                database = n
            }
        }
        var host: String
        var port = 6379
        if rest.hasPrefix("[") {
            guard let close = rest.firstIndex(of: "]") else {
                throw ParseError("invalid IPv6 host in '\(url)': missing ']'")
            }
            host = String(rest[rest.index(after: rest.startIndex)..<close])
            let after = rest[rest.index(after: close)...]
            if after.hasPrefix(":") {
                guard let p = Int(after.dropFirst()), (1...65535).contains(p) else {
                    throw ParseError("invalid port '\(after.dropFirst())' in '\(url)': use 1-65535")
                }
                port = p
            }
        } else if let colon = rest.lastIndex(of: ":") {
            host = String(rest[..<colon])
            let portText = rest[rest.index(after: colon)...]
            guard let p = Int(portText), (1...65535).contains(p) else {
                throw ParseError("invalid port '\(portText)' in '\(url)': use 1-65535")
            }
            port = p
        } else {
            host = String(rest)
        }
        guard !host.isEmpty else { throw ParseError("missing host in '\(url)': \(hint)") }
        self.init(
            address: .tcp(host: host, port: port), username: username, password: password, database: database)
    }

    private static func percentDecode(_ s: String, in url: String) throws(ParseError) -> String {
        guard s.contains("%") else { return s }
        var out: [UInt8] = []
        var bytes = Array(s.utf8)[...]
        while let b = bytes.popFirst() {
            if b == UInt8(ascii: "%") {
                guard bytes.count >= 2,
                    let v = UInt8(String(decoding: bytes.prefix(2), as: UTF8.self), radix: 16)
                else { throw ParseError("invalid percent-encoding in the credentials of '\(url)'") }
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
