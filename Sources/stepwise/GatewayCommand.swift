import ArgumentParser
import Foundation
import Hummingbird
import HummingbirdWebSocket
import Logging
import Metrics
import StepwiseAgents
import StepwiseCore
import StepwiseGateway
import StepwiseMetrics
import StepwiseRedis

/// Where the token signing key comes from: a file or an environment variable, never a flag value
/// (a flag shows in `ps`).
struct TokenKeyOptions: ParsableArguments {
    @Option(help: "File holding the token signing key (at least 32 bytes; env STEPWISE_TOKEN_KEY holds the key itself instead).")
    var tokenKeyFile: String?

    func secret() throws -> [UInt8] {
        var bytes: [UInt8]
        if let path = tokenKeyFile {
            guard let data = FileManager.default.contents(atPath: path) else {
                throw ValidationError("--token-key-file: cannot read \(path)")
            }
            bytes = Array(data)
        } else if let env = ProcessInfo.processInfo.environment["STEPWISE_TOKEN_KEY"] {
            bytes = Array(env.utf8)
        } else {
            throw ValidationError("no token key: pass --token-key-file PATH or set STEPWISE_TOKEN_KEY")
        }
        while let last = bytes.last, last == 10 || last == 13 || last == 32 { bytes.removeLast() }
        guard bytes.count >= 32 else { throw ValidationError("the token key must be at least 32 bytes") }
        return bytes
    }
}

struct GatewayCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "gateway",
        abstract: "Serve the HTTP API, live events (SSE, WebSocket) and the web page for token-authenticated owners.")

    @OptionGroup var connection: ConnectionOptions
    @OptionGroup var key: TokenKeyOptions

    @Option(help: "Address to listen on, host:port (loopback by default).")
    var listen: String = "127.0.0.1:8080"

    @Option(
        help: ArgumentHelp(
            "Serve Prometheus metrics on GET /metrics, and probes on /healthz and /readyz, at this host:port (off by default).",
            valueName: "host:port"))
    var metricsListen: String?

    @Option(help: "Agents a new session may run, comma-separated (default: the built-in agents).")
    var agents: String?

    @Option(help: "Hub reader connections (1-3); with the command connection the gateway uses at most 4 Redis connections.")
    var hubReaders: Int = 2

    @Option(help: "Open event streams per owner on this gateway; more get 429.")
    var maxSubscriptionsPerOwner: Int = 50

    @Option(help: "Deliveries a slow subscriber may have waiting before it is disconnected.")
    var subscriberBuffer: Int = 512

    @Option(help: "Seconds between keep-alive comments on idle event streams.")
    var keepAliveSeconds: Int = 15

    func validate() throws {
        guard (1...3600).contains(keepAliveSeconds) else { throw ValidationError("--keep-alive-seconds must be 1-3600") }
        _ = try parsedListen()
        _ = try key.secret()
        guard (1...3).contains(hubReaders) else { throw ValidationError("--hub-readers must be 1-3") }
        guard maxSubscriptionsPerOwner >= 1 else { throw ValidationError("--max-subscriptions-per-owner must be >= 1") }
        guard subscriberBuffer >= 8 else { throw ValidationError("--subscriber-buffer must be >= 8") }
    }

    func parsedListen() throws -> (String, Int) {
        guard let colon = listen.lastIndex(of: ":"), let port = Int(listen[listen.index(after: colon)...]), (0...65535).contains(port)
        else { throw ValidationError("--listen '\(listen)' must be host:port, like 127.0.0.1:8080") }
        return (String(listen[..<colon]), port)
    }

    func run() async throws {
        let logger = connection.makeLogger(label: "stepwise.gateway", defaultLevel: .info)
        let (host, port) = try parsedListen()
        let tokens = try TokenAuthority(secret: try key.secret())
        // Connection names carry the port, so `CLIENT LIST` tells this gateway's connections apart.
        // Every request shares this connection: calls made meanwhile go out in one write.
        let command = try await connection.connect(name: "stepwise:gateway@\(port)", logger: logger, coalesceCalls: true)
        let names =
            agents.map { Set($0.split(separator: ",").map { String($0).trimmingCharacters(in: .whitespaces) }) }
            ?? Set(AgentRegistry.known().names)
        let hub = SubscriptionHub(
            configuration: .init(readers: hubReaders, bufferLimit: subscriberBuffer, keepAlive: .seconds(keepAliveSeconds)),
            control: command, logger: logger
        ) { i in
            RedisConnection(configuration: connection.redisConfiguration(name: "stepwise:gateway@\(port)-hub-\(i)"), logger: logger)
        }
        let gateway = Gateway(
            connection: command, keys: connection.keys, tokens: tokens, hub: hub,
            configuration: .init(agentNames: names, maxSubscriptionsPerOwner: maxSubscriptionsPerOwner), logger: logger,
            sealer: connection.makeSealer())
        let router = Router(context: BasicWebSocketRequestContext.self)
        var metricsServer: MetricsServer?
        if let metricsListen {
            guard let (mhost, mport) = MetricsServer.parseAddress(metricsListen) else {
                throw ValidationError("--metrics-listen '\(metricsListen)' must be host:port, like 127.0.0.1:9465")
            }
            let export = PrometheusExport()
            // Only the executable bootstraps: Hummingbird's MetricsMiddleware uses the global factory.
            MetricsSystem.bootstrap(export.factory)
            router.add(middleware: MetricsMiddleware())
            metricsServer = MetricsServer(host: mhost, port: mport, export: export, logger: logger) {
                // Ready when Redis answers.
                (try? await command.send(["PING"]))?.string == "PONG"
            }
        }
        gateway.addRoutes(to: router)
        var app = Application(
            router: router, server: .http1WebSocketUpgrade(webSocketRouter: router),
            configuration: .init(address: .hostname(host, port: port), serverName: "stepwise"),
            logger: logger)
        app.addServices(hub)
        if let metricsServer { app.addServices(metricsServer) }
        // Hummingbird logs "Server started and listening on ..." at notice; say it once for scripts.
        logger.notice("gateway listening", metadata: ["stepwise.listen": "\(host):\(port)"])
        try await app.runService()
    }
}

struct TokenCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "token", abstract: "Issue and revoke the gateway's bearer tokens.",
        subcommands: [Issue.self, Revoke.self])

    struct Issue: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Print a bearer token for an owner.")
        @OptionGroup var key: TokenKeyOptions

        @Option(help: "The owner: 1-100 characters from A-Z a-z 0-9 _ . @ -")
        var owner: String

        @Option(help: "Validity, like 90s, 30m, 24h or 7d.")
        var ttl: String = "24h"

        @Flag(help: "Print JSON with the token, its id and expiry.")
        var json = false

        func validate() throws {
            guard TokenAuthority.isValidOwner(owner) else {
                throw ValidationError("--owner must be 1-100 characters from A-Z a-z 0-9 _ . @ -")
            }
            _ = try parseDuration(ttl, flag: "--ttl")
        }

        func run() async throws {
            let authority = try TokenAuthority(secret: try key.secret())
            let (token, claims) = try authority.issue(owner: owner, ttl: try parseDuration(ttl, flag: "--ttl"))
            if json {
                try output(
                    JSONValue.object([
                        "token": .string(token), "id": .string(claims.tokenID), "owner": .string(owner),
                        "expiresAt": .int(claims.expiresAt),
                    ]).jsonString)
            } else {
                try output(token)
            }
        }
    }

    struct Revoke: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Revoke a token (and its tickets) on every gateway: reads the token from stdin, or takes --id.")
        @OptionGroup var connection: ConnectionOptions
        @OptionGroup var key: TokenKeyOptions

        @Option(help: "The token's id (from 'token issue --json'); without it the token is read from stdin.")
        var id: String?

        @Option(help: "With --id: keep the revocation this long (the token's remaining validity), like 24h.")
        var ttl: String = "30d"

        func run() async throws {
            let logger = connection.makeLogger()
            let tokenID: String
            let until: Int64
            if let id {
                guard !id.isEmpty, id.utf8.count <= 64 else { throw ValidationError("--id must be 1-64 characters") }
                tokenID = id
                until = try Int64(Date().timeIntervalSince1970) + parseDuration(ttl, flag: "--ttl").components.seconds
            } else {
                let text = String(decoding: FileHandle.standardInput.readDataToEndOfFile(), as: UTF8.self)
                    .trimmingCharacters(in: .whitespacesAndNewlines)
                let authority = try TokenAuthority(secret: try key.secret())
                guard let claims = try? authority.inspect(text) else {
                    printError("stdin does not hold a token signed with this key")
                    throw ExitCode.failure
                }
                tokenID = claims.tokenID
                until = claims.expiresAt
            }
            let conn = try await connection.connect(name: "stepwise:token", logger: logger)
            try await reportingFailures {
                try await GatewayStore(connection: conn, keys: connection.keys).revoke(
                    tokenID: tokenID, until: max(until, Int64(Date().timeIntervalSince1970) + 1))
            }
            try output("revoked \(tokenID)")
        }
    }
}

/// Parses `90s`, `30m`, `24h`, `7d` (or a bare number of seconds).
func parseDuration(_ text: String, flag: String) throws -> Duration {
    let units: [Character: Int64] = ["s": 1, "m": 60, "h": 3600, "d": 86400]
    var number = Substring(text)
    var unit: Int64 = 1
    if let last = text.last, let u = units[last] {
        unit = u
        number = number.dropLast()
    }
    guard let n = Int64(number), n > 0, n <= 366 * 86400 / unit else {
        throw ValidationError("\(flag) '\(text)' must be like 90s, 30m, 24h or 7d (at most a year)")
    }
    return .seconds(n * unit)
}
