import CHiredis
import Foundation
import Logging

/// One hiredis connection, owned by one actor whose executor is one dedicated thread.
///
/// Every method that talks to Redis runs synchronously on the connection's own thread: there is
/// no suspension between `redisAppendCommandArgv` and `redisGetReply`, so actor reentrancy can
/// never interleave replies, and Swift's cooperative pool never blocks on a socket.
///
/// A process that uses it must ignore `SIGPIPE` (`signal(SIGPIPE, SIG_IGN)`, as the `stepwise`
/// executable does): hiredis writes with `write(2)`, and a write to a socket the server closed
/// would otherwise kill the process instead of failing with `EPIPE`.
///
/// After any I/O error the context is freed; the next call reconnects, waiting first with
/// exponential backoff when the previous attempts failed. Every new context gets the socket
/// timeout and TCP keep-alive again (hiredis does not keep them across reconnects), then `AUTH`,
/// `SELECT` and `CLIENT SETNAME` in one round trip.
public actor RedisConnection {
    /// Connection settings.
    public struct Configuration: Sendable {
        /// Where to connect, and the credentials.
        public var endpoint: RedisEndpoint
        /// How long to wait for the TCP or Unix connect.
        public var connectTimeout: Duration
        /// Socket read/write timeout for ordinary commands. Blocking commands get their block
        /// time plus this timeout (at least 1 s), so the socket always outlasts the
        /// server-side block.
        public var commandTimeout: Duration
        /// First reconnect delay after a failure; doubles up to ``maxBackoff``.
        public var initialBackoff: Duration
        /// Longest reconnect delay.
        public var maxBackoff: Duration
        /// Sent as `CLIENT SETNAME` so `CLIENT LIST` shows who is who (no spaces allowed).
        public var clientName: String?
        /// Coalesce every non-blocking call (``RedisConnection/send(_:blockingFor:)``,
        /// ``RedisConnection/pipeline(_:)``, ``RedisConnection/evalScript(_:keys:arguments:)``)
        /// with the calls other tasks make meanwhile, as
        /// ``RedisConnection/evalScriptCoalesced(_:keys:arguments:)`` does: for a connection
        /// that many concurrent tasks share (a gateway's HTTP requests).
        public var coalesceCalls = false
        /// Told of each round trip's latency and of each reconnect (metrics); nil: nothing is measured.
        public var observer: RedisObserver?

        /// Creates a configuration with defaulted timeouts.
        public init(
            endpoint: RedisEndpoint,
            connectTimeout: Duration = .seconds(2),
            commandTimeout: Duration = .seconds(5),
            initialBackoff: Duration = .milliseconds(50),
            maxBackoff: Duration = .seconds(2),
            clientName: String? = nil
        ) {
            self.endpoint = endpoint
            self.connectTimeout = connectTimeout
            self.commandTimeout = commandTimeout
            self.initialBackoff = initialBackoff
            self.maxBackoff = maxBackoff
            self.clientName = clientName
        }
    }

    /// The configuration this connection was made with.
    public nonisolated let configuration: Configuration
    private let executor: ThreadExecutor
    private let logger: Logger
    private let handle = ContextHandle()
    private var context: UnsafeMutablePointer<redisContext>? {
        get { handle.pointer }
        set { handle.pointer = newValue }
    }
    private var consecutiveFailures = 0
    private var nextAttempt: ContinuousClock.Instant?
    private var scriptSHAs: [String: String] = [:]
    /// The server's `CLIENT ID` of the current context, usable with `CLIENT UNBLOCK`.
    public private(set) var clientID: Int?
    /// How many times a context was (re)established.
    public private(set) var connectCount = 0

    public nonisolated var unownedExecutor: UnownedSerialExecutor { executor.asUnownedSerialExecutor() }

    /// Creates a connection; nothing is sent until the first command or ``connect()``.
    public init(configuration: Configuration, logger: Logger = Logger(label: "stepwise.redis")) {
        self.configuration = configuration
        self.logger = logger
        self.executor = ThreadExecutor(name: "redis-\(configuration.clientName ?? "conn")")
    }

    deinit {
        // `handle` frees the context when it is released with the actor; nothing else can
        // reference the context by then. (An `isolated deinit` would say this more directly but
        // crashes the 6.3 optimizer with "circular reference".)
        executor.shutdown()
    }

    /// Connects now (if not connected), so that an unreachable server is reported early.
    ///
    /// - Throws: ``RedisError`` with code ``RedisError/Code/connectionRefused`` naming the address,
    ///   or ``RedisError/Code/rejected`` when the server refuses `AUTH`, `SELECT` or `CLIENT SETNAME`.
    public func connect() async throws {
        try await ensureConnected()
    }

    /// Closes the context. A later command reconnects.
    public func close() {
        if let context { redisFree(context) }
        context = nil
        clientID = nil
    }

    /// Connects and returns the connection's socket descriptor, for a connection used for
    /// nothing else: a crash handler's last write (see `CStepwiseCrash`). Sending commands on
    /// the connection afterwards would interleave with such a write.
    public func rawDescriptor() async throws -> Int32 {
        try await ensureConnected()
        guard let ctx = context else { throw RedisError(.io, "not connected", address: address) }
        return chiredis_fd(ctx)
    }

    /// What a blocking command's socket timeout adds to its block time: the command timeout, but
    /// never less than 5 s. Redis answers an expired block from its event loop, and that loop
    /// stalls: up to `1/hz` (100 ms) normally, and for seconds when an AOF `write` waits behind a
    /// busy disk's `fsync` ("Asynchronous AOF fsync is taking too long"). CI showed a 1 s margin
    /// running out on a loaded machine. A margin too short turns a server-side timeout (a nil
    /// reply) into a socket timeout that kills the context; a long one only delays noticing a
    /// server that vanished without closing the socket, which TCP keep-alive also covers.
    var blockingMargin: Duration { max(configuration.commandTimeout, .seconds(5)) }

    /// Sends one command and returns its reply (error replies are returned, not thrown).
    ///
    /// - Parameters:
    ///   - arguments: the command and its arguments, binary-safe.
    ///   - blockingFor: for a blocking command (`BLMOVE`, `XREAD BLOCK`), how long the server may
    ///     block; the socket timeout is raised by that much for this command only.
    /// - Throws: ``RedisError`` when the connection fails; the context is then dropped.
    public func send(_ arguments: [RedisArgument], blockingFor: Duration? = nil) async throws -> RESPValue {
        if blockingFor == nil, configuration.coalesceCalls { return try await enqueue(commands: [arguments], script: nil)[0] }
        try await ensureConnected()
        return try sendNow(arguments, blockingFor: blockingFor)
    }

    /// Sends several commands in one write and reads all replies: one round trip.
    ///
    /// - Returns: one reply per command, in order; error replies are returned in place.
    /// - Throws: ``RedisError`` when the connection fails; the context is then dropped.
    public func pipeline(_ commands: [[RedisArgument]]) async throws -> [RESPValue] {
        if configuration.coalesceCalls { return try await enqueue(commands: commands, script: nil) }
        try await ensureConnected()
        return try pipelineNow(commands)
    }

    /// Runs a Lua script by SHA (`EVALSHA`), loading it first when this connection has not yet,
    /// and again when the server answers `NOSCRIPT` (after a restart or `SCRIPT FLUSH`).
    ///
    /// See <https://redis.io/docs/latest/commands/evalsha/>.
    /// - Returns: the script's reply; error replies are returned, not thrown.
    public func evalScript(_ script: RedisScript, keys: [RedisArgument], arguments: [RedisArgument]) async throws
        -> RESPValue
    {
        if configuration.coalesceCalls { return try await evalScriptCoalesced(script, keys: keys, arguments: arguments) }
        try await ensureConnected()
        let sha = try loadedSHA(script)
        let command: [RedisArgument] = ["EVALSHA", RedisArgument(sha), RedisArgument(keys.count)] + keys + arguments
        let reply = try sendNow(command, blockingFor: nil)
        if case .error(let message) = reply, message.hasPrefix("NOSCRIPT") {
            scriptSHAs[script.name] = nil
            let sha = try loadedSHA(script)
            return try sendNow(
                ["EVALSHA", RedisArgument(sha), RedisArgument(keys.count)] + keys + arguments, blockingFor: nil)
        }
        return reply
    }

    /// Runs a script like ``evalScript(_:keys:arguments:)``, coalescing it with the calls other
    /// tasks make on this connection meanwhile: every call queued by the time the connection's
    /// thread gets to them goes out in one write, and the replies are read in order.
    ///
    /// Many tasks sharing one connection this way (a worker's slots committing steps) cost one
    /// write, one thread wake-up and one server read per batch instead of per call. The calls are
    /// independent: not a transaction, and a failed connection fails every call of the batch.
    /// Never use it for blocking commands.
    ///
    /// - Returns: the script's reply; error replies are returned, not thrown.
    public func evalScriptCoalesced(_ script: RedisScript, keys: [RedisArgument], arguments: [RedisArgument]) async throws
        -> RESPValue
    {
        try await enqueue(commands: [[RedisArgument(keys.count)] + keys + arguments], script: script)[0]
    }

    /// Queues a call (commands sent back to back, or one script invocation) for the next
    /// coalesced write.
    private func enqueue(commands: [[RedisArgument]], script: RedisScript?) async throws -> [RESPValue] {
        guard !commands.isEmpty else { return [] }
        return try await withCheckedThrowingContinuation { continuation in
            coalesced.append(CoalescedCall(script: script, commands: commands, continuation: continuation))
            if !flushScheduled {
                flushScheduled = true
                // Runs on this actor's thread after the jobs already queued there, which may add
                // their calls to the same batch.
                Task { await self.flushCoalesced() }
            }
        }
    }

    private struct CoalescedCall {
        /// Set for a script call: `commands` is then one command, `numkeys`, the keys, then the
        /// arguments, sent as `EVALSHA <sha> …`.
        var script: RedisScript?
        var commands: [[RedisArgument]]
        var continuation: CheckedContinuation<[RESPValue], any Error>

        func command(_ i: Int, sha: String?) -> [RedisArgument] {
            guard let sha else { return commands[i] }
            return ["EVALSHA", RedisArgument(sha)] + commands[i]
        }
    }
    private var coalesced: [CoalescedCall] = []
    private var flushScheduled = false

    private func flushCoalesced() async {
        flushScheduled = false
        let batch = coalesced
        coalesced.removeAll(keepingCapacity: true)
        guard !batch.isEmpty else { return }
        do {
            try await ensureConnected()
            guard let ctx = context else { throw RedisError(.io, "not connected", address: address) }
            var shas: [String?] = []
            shas.reserveCapacity(batch.count)
            for call in batch { shas.append(try call.script.map { try loadedSHA($0) }) }
            let start = configuration.observer.map { _ in ContinuousClock.now }
            var total = 0
            for (call, sha) in zip(batch, shas) {
                for i in call.commands.indices { try append(ctx, call.command(i, sha: sha)) }
                total += call.commands.count
            }
            var replies: [RESPValue] = []
            replies.reserveCapacity(total)
            for _ in 0..<total {
                guard let c = context else { throw RedisError(.io, "not connected", address: address) }
                replies.append(try readReply(c))
            }
            if let start { configuration.observer?.roundTrip(ContinuousClock.now - start) }
            var next = 0
            for call in batch {
                var mine = Array(replies[next..<next + call.commands.count])
                next += call.commands.count
                if let script = call.script, case .error(let message) = mine[0], message.hasPrefix("NOSCRIPT") {
                    // The server lost its scripts (restart, SCRIPT FLUSH): load and run this one again.
                    do {
                        scriptSHAs[script.name] = nil
                        mine[0] = try sendNow(call.command(0, sha: try loadedSHA(script)), blockingFor: nil)
                    } catch {
                        call.continuation.resume(throwing: error)
                        continue
                    }
                }
                call.continuation.resume(returning: mine)
            }
        } catch {
            // A reply that never arrived may still have run: callers treat this like any lost
            // reply (the worker's orphan scan and the commit's fencing cover it).
            for call in batch { call.continuation.resume(throwing: error) }
        }
    }

    /// Runs several invocations of one script in one round trip, in order, as one transaction.
    ///
    /// The calls are wrapped in `MULTI`/`EXEC`, so no other client (a `SCRIPT FLUSH`, say) can
    /// run between them: either every call finds the script, or none does and the whole batch is
    /// loaded and sent again. Retrying only the failed calls would reorder them after later ones.
    ///
    /// - Returns: one reply per invocation, in order.
    public func evalScriptPipelined(_ script: RedisScript, calls: [(keys: [RedisArgument], arguments: [RedisArgument])])
        async throws -> [RESPValue]
    {
        try await ensureConnected()
        for _ in 0..<2 {
            let sha = try loadedSHA(script)
            let commands: [[RedisArgument]] =
                [["MULTI"]]
                + calls.map { ["EVALSHA", RedisArgument(sha), RedisArgument($0.keys.count)] + $0.keys + $0.arguments }
                + [["EXEC"]]
            let replies = try pipelineNow(commands)
            guard let exec = replies.last else { break }
            if case .error = exec {
                // EXECABORT: each queued command's own refusal (an OOM, say) tells why, so return
                // that rather than the bare EXECABORT.
                let queued = replies.dropFirst().dropLast()
                guard queued.count == calls.count else { return Array(repeating: exec, count: calls.count) }
                return queued.map { reply in if case .error = reply { reply } else { exec } }
            }
            guard let results = exec.array, results.count == calls.count else {
                throw RedisServerError("ERR unexpected EXEC reply \(exec)")
            }
            let noScript = results.contains { if case .error(let m) = $0 { m.hasPrefix("NOSCRIPT") } else { false } }
            if !noScript { return results }
            scriptSHAs[script.name] = nil
        }
        throw RedisServerError("NOSCRIPT script \(script.name) vanished twice while a batch ran")
    }

    // MARK: - Internals (all synchronous on the connection thread)

    private func loadedSHA(_ script: RedisScript) throws -> String {
        if let sha = scriptSHAs[script.name] { return sha }
        let reply = try sendNow(["SCRIPT", "LOAD", RedisArgument(script.source)], blockingFor: nil)
        try reply.throwingServerError()
        guard let sha = reply.string, !sha.isEmpty, case .bulk = reply else {
            throw RedisServerError("ERR SCRIPT LOAD \(script.name) returned \(reply)")
        }
        scriptSHAs[script.name] = sha
        return sha
    }

    private var address: String { configuration.endpoint.description }

    private func ensureConnected() async throws {
        if context != nil { return }
        if let next = nextAttempt {
            let now = ContinuousClock.now
            if next > now { try await Task.sleep(until: next, clock: .continuous) }
            if context != nil { return }  // another caller connected while we slept
        }
        do {
            try connectNow()
            consecutiveFailures = 0
            nextAttempt = nil
        } catch {
            consecutiveFailures += 1
            let shift = min(consecutiveFailures - 1, 10)
            var delay = configuration.initialBackoff * (1 << shift)
            if delay > configuration.maxBackoff { delay = configuration.maxBackoff }
            nextAttempt = ContinuousClock.now + delay
            throw error
        }
    }

    private func connectNow() throws {
        let config = configuration
        let tv = chiredis_timeval_ms(config.connectTimeout.milliseconds)
        let ctx: UnsafeMutablePointer<redisContext>?
        switch config.endpoint.address {
        case .tcp(let host, let port): ctx = redisConnectWithTimeout(host, Int32(port), tv)
        case .unix(let path): ctx = redisConnectUnixWithTimeout(path, tv)
        }
        guard let ctx else {
            throw RedisError(.outOfMemory, "cannot allocate a hiredis context", address: address)
        }
        if chiredis_err(ctx) != 0 {
            let message = String(cString: chiredis_errstr(ctx))
            redisFree(ctx)
            throw RedisError(.connectionRefused, "cannot connect: \(message)", address: address)
        }
        redisSetTimeout(ctx, chiredis_timeval_ms(config.commandTimeout.milliseconds))
        // TCP keep-alive only over TCP: on a unix socket hiredis 0.14.1 fails to set TCP_KEEPIDLE
        // (EOPNOTSUPP) and marks the context as failed, so no command could ever be sent.
        if case .tcp = config.endpoint.address { redisEnableKeepAlive(ctx) }
        context = ctx
        var setup: [[RedisArgument]] = []
        if let password = config.endpoint.password {
            if let user = config.endpoint.username {
                setup.append(["AUTH", RedisArgument(user), RedisArgument(password)])
            } else {
                setup.append(["AUTH", RedisArgument(password)])
            }
        }
        if config.endpoint.database != 0 { setup.append(["SELECT", RedisArgument(config.endpoint.database)]) }
        if let name = config.clientName { setup.append(["CLIENT", "SETNAME", RedisArgument(name)]) }
        setup.append(["CLIENT", "ID"])
        let replies: [RESPValue]
        do {
            replies = try pipelineNow(setup)
        } catch {
            close()
            throw RedisError(.connectionRefused, "connected but the handshake failed: \(error)", address: address)
        }
        for (command, reply) in zip(setup, replies) {
            if case .error(let message) = reply {
                close()
                let name = String(decoding: command[0].bytes, as: UTF8.self)
                let user = config.endpoint.username.map { " for user '\($0)'" } ?? ""
                throw RedisError(.rejected, "\(name) rejected\(user): \(message)", address: address)
            }
        }
        clientID = replies.last?.int
        scriptSHAs.removeAll()
        connectCount += 1
        if connectCount > 1 {
            configuration.observer?.reconnected()
            logger.info("redis reconnected", metadata: ["stepwise.redis": .string(address)])
        }
    }

    private func sendNow(_ arguments: [RedisArgument], blockingFor: Duration?) throws -> RESPValue {
        guard let ctx = context else {
            throw RedisError(.io, "not connected", address: address)
        }
        if let blockingFor {
            redisSetTimeout(ctx, chiredis_timeval_ms((blockingFor + blockingMargin).milliseconds))
        }
        defer {
            if blockingFor != nil, let c = context {
                redisSetTimeout(c, chiredis_timeval_ms(configuration.commandTimeout.milliseconds))
            }
        }
        let start = configuration.observer.map { _ in ContinuousClock.now }
        try append(ctx, arguments)
        let reply = try readReply(ctx)
        // A blocking command's wait is not a round trip.
        if let start, blockingFor == nil { configuration.observer?.roundTrip(ContinuousClock.now - start) }
        return reply
    }

    private func pipelineNow(_ commands: [[RedisArgument]]) throws -> [RESPValue] {
        guard let ctx = context else {
            throw RedisError(.io, "not connected", address: address)
        }
        let start = configuration.observer.map { _ in ContinuousClock.now }
        for command in commands { try append(ctx, command) }
        var replies: [RESPValue] = []
        replies.reserveCapacity(commands.count)
        for _ in commands { replies.append(try readReply(ctx)) }
        if let start { configuration.observer?.roundTrip(ContinuousClock.now - start) }
        return replies
    }

    private func append(_ ctx: UnsafeMutablePointer<redisContext>, _ arguments: [RedisArgument]) throws {
        let argc = arguments.count
        var lengths = [Int](repeating: 0, count: argc)
        var flat: [UInt8] = []
        flat.reserveCapacity(arguments.reduce(0) { $0 + $1.bytes.count } + 1)
        var offsets = [Int](repeating: 0, count: argc)
        for (i, a) in arguments.enumerated() {
            offsets[i] = flat.count
            lengths[i] = a.bytes.count
            flat.append(contentsOf: a.bytes)
        }
        flat.append(0)  // never read by hiredis (lengths are explicit); keeps the base pointer valid
        let status = flat.withUnsafeBufferPointer { buffer -> Int32 in
            let base = UnsafeRawPointer(buffer.baseAddress!).assumingMemoryBound(to: CChar.self)
            var argv = offsets.map { Optional(base + $0) }
            return argv.withUnsafeMutableBufferPointer { argvBuf in
                lengths.withUnsafeBufferPointer { lenBuf in
                    redisAppendCommandArgv(ctx, Int32(argc), argvBuf.baseAddress, lenBuf.baseAddress)
                }
            }
        }
        if status != REDIS_OK { throw failure(ctx) }
    }

    private func readReply(_ ctx: UnsafeMutablePointer<redisContext>) throws -> RESPValue {
        guard let reply = chiredis_get_reply(ctx) else { throw failure(ctx) }
        defer { freeReplyObject(reply) }
        return Self.decode(reply)
    }

    /// Maps the context's error, drops the context, and returns the error to throw.
    private func failure(_ ctx: UnsafeMutablePointer<redisContext>) -> RedisError {
        let savedErrno = errno
        let err = chiredis_err(ctx)
        let message = String(cString: chiredis_errstr(ctx))
        let code: RedisError.Code
        switch err {
        case REDIS_ERR_IO: code = (savedErrno == EAGAIN || savedErrno == EWOULDBLOCK) ? .timeout : .io
        case REDIS_ERR_EOF: code = .eof
        case REDIS_ERR_PROTOCOL: code = .protocolError
        case REDIS_ERR_OOM: code = .outOfMemory
        default: code = .other
        }
        close()
        logger.debug(
            "redis connection failed",
            metadata: ["stepwise.redis": .string(address), "stepwise.error": .string(message)])
        return RedisError(code, message.isEmpty ? "connection error \(err)" : message, address: address)
    }

    private static func decode(_ r: UnsafeMutablePointer<redisReply>) -> RESPValue {
        switch r.pointee.type {
        case REDIS_REPLY_STRING:
            let n = r.pointee.len
            guard n > 0, let str = r.pointee.str else { return .bulk([]) }
            return .bulk(Array(UnsafeRawBufferPointer(start: str, count: n)))
        case REDIS_REPLY_STATUS:
            return .simple(Self.text(r))
        case REDIS_REPLY_ERROR:
            return .error(Self.text(r))
        case REDIS_REPLY_INTEGER:
            return .integer(Int64(r.pointee.integer))
        case REDIS_REPLY_ARRAY:
            var items: [RESPValue] = []
            items.reserveCapacity(r.pointee.elements)
            if let elements = r.pointee.element {
                for i in 0..<r.pointee.elements {
                    if let e = elements[i] { items.append(decode(e)) } else { items.append(.null) }
                }
            }
            return .array(items)
        default:
            return .null
        }
    }

    private static func text(_ r: UnsafeMutablePointer<redisReply>) -> String {
        guard let str = r.pointee.str, r.pointee.len > 0 else { return "" }
        return String(decoding: UnsafeRawBufferPointer(start: str, count: r.pointee.len), as: UTF8.self)
    }
}

extension Duration {
    /// Whole milliseconds, rounded down.
    package var milliseconds: Int64 {
        let (s, atto) = components
        return s * 1000 + atto / 1_000_000_000_000_000
    }
}

/// Owns a hiredis context pointer and frees it on release.
///
/// Only its ``RedisConnection`` actor touches it, on the actor's thread; its deinit runs when the
/// actor is destroyed, after which no thread can reach it.
private final class ContextHandle {
    var pointer: UnsafeMutablePointer<redisContext>?
    deinit {
        if let pointer { redisFree(pointer) }
    }
}

/// A Lua script run by SHA.
///
/// The SHA is obtained from the server with `SCRIPT LOAD`, per connection, and reloaded on
/// `NOSCRIPT`; the source is the only thing a caller provides.
public struct RedisScript: Sendable, Hashable {
    /// A stable name, used as the cache key for the SHA.
    public var name: String
    /// The Lua source.
    public var source: String

    /// Creates a script.
    public init(name: String, source: String) {
        self.name = name
        self.source = source
    }
}
