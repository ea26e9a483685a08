import Foundation
import Logging
import StepwiseRedis
import Synchronization

#if canImport(Glibc)
    import Glibc
#elseif canImport(Darwin)
    import Darwin
#endif

/// A failure of the test-support helpers themselves (a server that never came up, a missing
/// binary): never an engine result.
public struct TestSupportError: Error, Sendable, CustomStringConvertible {
    /// What went wrong.
    public var message: String

    /// Creates an error with a message.
    public init(_ message: String) { self.message = message }

    public var description: String { message }
}

/// A private `redis-server` for tests that must crash or restart Redis without touching the shared
/// test server: loopback only, a free port, its own temporary directory, append-only file on.
///
/// It runs in the foreground (`--daemonize no`) as a ``ChildProcess``, so the test owns its pid.
/// ``kill9()`` and ``restart()`` simulate a crash and a restart on the same port and directory;
/// ``stop()`` ends it and removes the directory. Call ``terminate()`` in a `defer` as a backstop:
/// it never leaves the server behind, even when a test fails half-way.
///
/// The settings follow `scripts/redis-local.sh`: `--appendonly yes --appendfsync everysec
/// --save '' --maxmemory-policy noeviction`. With `everysec`, an acknowledged write is in the
/// AOF file (written, not yet fsynced) before the reply is sent, so a `kill -9` of the server
/// process (unlike a power loss) loses nothing acknowledged.
public final class RedisServerProcess: Sendable {
    /// The TCP port on 127.0.0.1.
    public let port: Int
    /// The data directory (AOF lives in `appendonlydir/` below it).
    public let directory: String
    /// The `redis-server` executable.
    public let binary: String
    /// The `appendfsync` setting: `everysec` (the default) or `always`.
    public let appendfsync: String
    /// More `redis-server` arguments, after the defaults (an `--aclfile`, say).
    public let extraArguments: [String]
    /// The user and password of this object's own probes (`PING`, `SHUTDOWN`), for a server whose
    /// default user is off; `nil` for the default user.
    private let probeUser: (name: String, password: String)?
    private let current = Mutex<ChildProcess?>(nil)
    /// Every server process started, for the backstop kill.
    private let started = Mutex<[ChildProcess]>([])

    /// `redis://127.0.0.1:<port>`.
    public var url: String { "redis://127.0.0.1:\(port)" }

    /// The endpoint of this server.
    public var endpoint: RedisEndpoint { RedisEndpoint(address: .tcp(host: "127.0.0.1", port: port)) }

    /// The running server process, if any.
    public var process: ChildProcess? { current.withLock { $0 } }

    private init(
        port: Int, directory: String, binary: String, appendfsync: String, extraArguments: [String],
        probeUser: (name: String, password: String)?
    ) {
        self.port = port
        self.directory = directory
        self.binary = binary
        self.appendfsync = appendfsync
        self.extraArguments = extraArguments
        self.probeUser = probeUser
    }

    /// The endpoint with the probe user's credentials.
    private var probeEndpoint: RedisEndpoint {
        var e = endpoint
        e.username = probeUser?.name
        e.password = probeUser?.password
        return e
    }

    /// Starts a server on a free loopback port in a new temporary directory and waits until it
    /// answers `PING`.
    ///
    /// - Parameters:
    ///   - binary: the `redis-server` path; by default `$STEPWISE_REDIS_SERVER`, else the
    ///     first `redis-server` on `$PATH`, else `/usr/bin/redis-server`.
    ///   - appendfsync: `everysec` (default) or `always` (fsync before every reply: nothing
    ///     acknowledged is lost even by a power loss).
    ///   - extraArguments: more `redis-server` arguments, such as `["--aclfile", path]`.
    ///   - probeUsername: the ACL user that this object's own `PING` and `SHUTDOWN` use, with
    ///     `probePassword`, when the server's default user is off.
    /// - Throws: ``TestSupportError`` when no port is free or the server does not answer in 10 s.
    public static func start(
        binary: String? = nil, appendfsync: String = "everysec", extraArguments: [String] = [],
        probeUsername: String? = nil, probePassword: String? = nil
    ) async throws -> RedisServerProcess {
        guard ["everysec", "always"].contains(appendfsync) else {
            throw TestSupportError("appendfsync must be everysec or always, got '\(appendfsync)'")
        }
        let executable = binary ?? locateBinary()
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("stepwise-redis-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        let port = try freeLoopbackPort()
        let server = RedisServerProcess(
            port: port, directory: dir, binary: executable, appendfsync: appendfsync, extraArguments: extraArguments,
            probeUser: probeUsername.map { ($0, probePassword ?? "") })
        do {
            try await server.launch()
        } catch {
            server.terminate()
            throw error
        }
        return server
    }

    /// Kills the server with SIGKILL (a crash: no shutdown save, no AOF rewrite) and waits until
    /// the process is gone.
    ///
    /// - Returns: whether the process exited within 5 s.
    @discardableResult
    public func kill9() async -> Bool {
        guard let child = process else { return true }
        child.signal(SIGKILL)
        let gone = await child.wait(timeout: .seconds(5)) != nil
        if gone { current.withLock { $0 = nil } }
        return gone
    }

    /// Starts the server again on the same port and directory (it loads its AOF) and waits until
    /// it answers `PING` (not `LOADING`).
    ///
    /// - Throws: ``TestSupportError`` when it is still running or does not answer in 10 s.
    public func restart() async throws {
        if let child = process, child.isRunning { throw TestSupportError("redis-server on port \(port) still runs") }
        try await launch()
    }

    /// Stops the server (`SHUTDOWN NOSAVE`, then SIGKILL after 5 s) and removes its directory.
    ///
    /// - Note: It does not rely on SIGTERM: children of the test process inherit its signal mask,
    ///   in which SIGTERM is blocked, and redis-server handles SIGTERM with a plain signal handler,
    ///   so it would never see it.
    public func stop() async {
        if let child = process, child.isRunning {
            let conn = RedisConnection(
                configuration: .init(endpoint: probeEndpoint, connectTimeout: .milliseconds(500), commandTimeout: .seconds(2)),
                logger: Logger(label: "test.redis-stop", factory: { _ in SwiftLogNoOpLogHandler() }))
            _ = try? await conn.send(["SHUTDOWN", "NOSAVE"])
            await conn.close()
            if await child.wait(timeout: .seconds(5)) == nil {
                child.signal(SIGKILL)
                _ = await child.wait(timeout: .seconds(5))
            }
        }
        current.withLock { $0 = nil }
        terminate()
    }

    /// Backstop for `defer`: SIGKILLs every server process this object started that still runs,
    /// and removes the directory and the server's log files. Synchronous and idempotent.
    public func terminate() {
        let children = started.withLock { $0 }
        for child in children where child.isRunning { child.signal(SIGKILL) }
        for child in children { try? FileManager.default.removeItem(atPath: child.logPath) }
        try? FileManager.default.removeItem(atPath: directory)
    }

    /// Whether the server answers `PING` with `PONG` right now (a fresh connection, 500 ms timeouts).
    public func ping() async -> Bool {
        let conn = RedisConnection(
            configuration: .init(
                endpoint: probeEndpoint, connectTimeout: .milliseconds(500), commandTimeout: .seconds(1),
                clientName: "test-probe"),
            logger: Logger(label: "test.redis-probe", factory: { _ in SwiftLogNoOpLogHandler() }))
        let reply = try? await conn.send(["PING"])
        await conn.close()
        return reply?.string == "PONG"
    }

    /// The server's log so far (its stdout and stderr).
    public var log: String { started.withLock { $0 }.map(\.output).joined(separator: "\n--- restart ---\n") }

    private func launch() async throws {
        let child = try ChildProcess(
            binary: binary,
            arguments: [
                "--port", "\(port)", "--bind", "127.0.0.1", "--protected-mode", "yes", "--dir", directory,
                "--appendonly", "yes", "--appendfsync", appendfsync, "--save", "", "--maxmemory-policy", "noeviction",
                "--daemonize", "no",
            ] + extraArguments)
        started.withLock { $0.append(child) }
        current.withLock { $0 = child }
        let up = await eventually(timeout: .seconds(10), interval: .milliseconds(50)) {
            guard child.isRunning else { return true }
            return await ping()
        }
        guard up, child.isRunning else {
            child.signal(SIGKILL)
            throw TestSupportError("redis-server did not answer on 127.0.0.1:\(port): \(child.output.suffix(1000))")
        }
    }

    /// `$STEPWISE_REDIS_SERVER`, else the first `redis-server` on `$PATH`, else `/usr/bin/redis-server`.
    public static func locateBinary() -> String {
        let env = ProcessInfo.processInfo.environment
        if let explicit = env["STEPWISE_REDIS_SERVER"], !explicit.isEmpty { return explicit }
        for dir in (env["PATH"] ?? "").split(separator: ":") {
            let candidate = "\(dir)/redis-server"
            if FileManager.default.isExecutableFile(atPath: candidate) { return candidate }
        }
        return "/usr/bin/redis-server"
    }

    /// A TCP port on 127.0.0.1 that was free a moment ago, below the kernel's ephemeral range.
    ///
    /// Not a port the kernel picks for `bind(0)`: that one comes from the ephemeral range, where
    /// every outgoing connection (a Redis client, a Prometheus scrape) also takes its local port,
    /// so one of them could take it before the server it is for binds it (a gateway in a test run
    /// failed with `EADDRINUSE` that way).
    public static func freeLoopbackPort() throws -> Int {
        let low = ephemeralRangeStart() ?? 32768
        let candidates = 10_000..<max(10_001, min(low, 65_536))
        for _ in 0..<500 {
            let port = Int.random(in: candidates)
            if try isFree(port) { return port }
        }
        throw TestSupportError("no free loopback port in \(candidates) after 500 tries")
    }

    /// The first port of `net.ipv4.ip_local_port_range`.
    static func ephemeralRangeStart() -> Int? {
        guard let text = try? String(contentsOfFile: "/proc/sys/net/ipv4/ip_local_port_range", encoding: .utf8) else { return nil }
        return text.split(whereSeparator: { $0 == " " || $0 == "\t" || $0 == "\n" }).first.flatMap { Int($0) }
    }

    /// Whether 127.0.0.1:`port` can be bound now.
    static func isFree(_ port: Int) throws -> Bool {
        #if canImport(Glibc)
            let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        #else
            let fd = socket(AF_INET, SOCK_STREAM, 0)
        #endif
        guard fd >= 0 else { throw TestSupportError("socket() failed: errno \(errno)") }
        defer { close(fd) }
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_port = UInt16(port).bigEndian
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        let bound = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        return bound == 0
    }
}
