import ArgumentParser
import Foundation
import Logging
import StepwiseCore
import StepwiseEncryption
import StepwiseRedis

/// Connection and namespace options shared by every subcommand.
///
/// The Redis password is never a default shown by `--help` (the URL's default comes from
/// `REDIS_URL` at run time, not at parse time) and never appears in an error message
/// (``RedisEndpoint/redacted(_:)``).
struct ConnectionOptions: ParsableArguments {
    static let defaultRedisURL = "redis://127.0.0.1:6379"

    @Option(
        name: .customLong("redis"),
        help: ArgumentHelp(
            "Redis URL: redis://[user[:password]@]host:port[/db] or unix:///path.sock (default: $REDIS_URL, else \(defaultRedisURL)). A password given here shows in ps: prefer REDIS_URL or --redis-password-file.",
            valueName: "url"))
    var redisFlag: String?

    @Option(
        name: .customLong("redis-password-file"),
        help: ArgumentHelp(
            "File holding the Redis password, one line (default: $REDIS_PASSWORD_FILE). The URL then names only the user: redis://worker@host:6379.",
            valueName: "path"))
    var passwordFileFlag: String?

    @Option(
        name: .customLong("keyring-file"),
        help: ArgumentHelp(
            "File holding the encryption keyring (default: $STEPWISE_KEYRING_FILE, else the keyring text in $STEPWISE_KEYRING). Without a keyring, session data is stored in plain text (docs/SECURITY.md).",
            valueName: "path"))
    var keyringFileFlag: String?

    @Option(help: "Key namespace: every key starts with '<namespace>:' (env STEPWISE_NAMESPACE).")
    var namespace: String = ProcessInfo.processInfo.environment["STEPWISE_NAMESPACE"] ?? "sw"

    @Option(help: "Log level: trace, debug, info, notice, warning, error, critical (default: info for worker, warning otherwise).")
    var logLevel: String?

    /// The Redis URL: `--redis`, else `$REDIS_URL`, else the local default. Setting it sets `--redis`.
    var redisURL: String {
        get {
            if let redisFlag { return redisFlag }
            if let env = ProcessInfo.processInfo.environment["REDIS_URL"], !env.isEmpty { return env }
            return Self.defaultRedisURL
        }
        set { redisFlag = newValue }
    }

    /// The password file: `--redis-password-file`, else `$REDIS_PASSWORD_FILE` (when not empty).
    var passwordFile: String? {
        if let passwordFileFlag { return passwordFileFlag }
        if let env = ProcessInfo.processInfo.environment["REDIS_PASSWORD_FILE"], !env.isEmpty { return env }
        return nil
    }

    /// The keyring file: `--keyring-file`, else `$STEPWISE_KEYRING_FILE` (when not empty).
    var keyringFile: String? {
        if let keyringFileFlag { return keyringFileFlag }
        if let env = ProcessInfo.processInfo.environment["STEPWISE_KEYRING_FILE"], !env.isEmpty { return env }
        return nil
    }

    /// The configured keyring: from the file, else from `$STEPWISE_KEYRING`; `nil` for none.
    /// Errors name the source and what is wrong, never key material.
    func loadKeyring() throws -> Keyring? {
        if let path = keyringFile {
            let flag = "--keyring-file (or STEPWISE_KEYRING_FILE) \(path)"
            var isDirectory: ObjCBool = false
            guard FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory) else {
                throw ValidationError("\(flag) does not exist (`stepwise keys generate --id <id> --file <path>` makes one)")
            }
            guard !isDirectory.boolValue else { throw ValidationError("\(flag) is a directory, not a file") }
            guard let data = FileManager.default.contents(atPath: path) else {
                throw ValidationError("\(flag) is not readable by this user")
            }
            guard let text = String(data: data, encoding: .utf8) else { throw ValidationError("\(flag) is not UTF-8 text") }
            do { return try Keyring(parsing: text, source: flag) } catch { throw ValidationError(error.message) }
        }
        if let text = ProcessInfo.processInfo.environment["STEPWISE_KEYRING"], !text.isEmpty {
            do { return try Keyring(parsing: text, source: "STEPWISE_KEYRING") } catch { throw ValidationError(error.message) }
        }
        return nil
    }

    /// The sealer of the configured keyring (validated in ``validate()``); `nil`: plain text.
    func makeSealer() -> KeyringSealer? { (try? loadKeyring()).flatMap { $0.map { KeyringSealer(keyring: $0) } } }

    func validate() throws {
        _ = try loadKeyring()
        _ = try resolvedEndpoint()
        do { _ = try KeySpace(namespace: namespace) } catch { throw ValidationError("--namespace: \(error)") }
        if let logLevel, Logger.Level(rawValue: logLevel) == nil {
            throw ValidationError("--log-level '\(logLevel)' is unknown: use trace, debug, info, notice, warning, error or critical")
        }
    }

    /// The endpoint with the password file applied; errors never show the password.
    func resolvedEndpoint() throws -> RedisEndpoint {
        let password = try passwordFile.map(Self.readPassword(file:))
        do { return try RedisEndpoint(parsing: redisURL, password: password) } catch {
            throw ValidationError("--redis: \(error)")
        }
    }

    /// Reads a password file: one line, UTF-8, not empty; one trailing newline is dropped.
    static func readPassword(file path: String) throws -> String {
        let flag = "--redis-password-file (or REDIS_PASSWORD_FILE)"
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory) else {
            throw ValidationError("\(flag): \(path) does not exist")
        }
        guard !isDirectory.boolValue else { throw ValidationError("\(flag): \(path) is a directory, not a file") }
        guard let data = FileManager.default.contents(atPath: path) else {
            throw ValidationError("\(flag): \(path) is not readable by this user")
        }
        guard var text = String(data: data, encoding: .utf8) else {
            throw ValidationError("\(flag): \(path) is not UTF-8 text")
        }
        if text.hasSuffix("\r\n") {
            text.removeLast(2)
        } else if text.hasSuffix("\n") {
            text.removeLast()
        }
        guard !text.isEmpty else { throw ValidationError("\(flag): \(path) is empty: write the password on its first line") }
        guard !text.contains(where: \.isNewline) else {
            throw ValidationError("\(flag): \(path) holds more than one line: write only the password")
        }
        return text
    }

    var endpoint: RedisEndpoint { (try? resolvedEndpoint()) ?? RedisEndpoint(address: .tcp(host: "127.0.0.1", port: 6379)) }
    var keys: KeySpace { (try? KeySpace(namespace: namespace)) ?? (try! KeySpace()) }

    func redisConfiguration(name: String) -> RedisConnection.Configuration {
        RedisConnection.Configuration(endpoint: endpoint, clientName: name)
    }

    /// What child processes (loadtest workers) need in their environment to connect as this
    /// process does, without a password on their command line.
    var childEnvironment: [String: String] {
        var env = ["REDIS_URL": redisURL]
        if let passwordFile { env["REDIS_PASSWORD_FILE"] = passwordFile }
        if let keyringFile {
            env["STEPWISE_KEYRING_FILE"] = keyringFile
        } else if let text = ProcessInfo.processInfo.environment["STEPWISE_KEYRING"], !text.isEmpty {
            env["STEPWISE_KEYRING"] = text
        }
        return env
    }

    /// Bootstraps logging once per process, to stderr.
    func makeLogger(label: String = "stepwise", defaultLevel: Logger.Level = .warning) -> Logger {
        let level = logLevel.flatMap(Logger.Level.init(rawValue:)) ?? defaultLevel
        LoggingSystem.bootstrap { label in
            var handler = StreamLogHandler.standardError(label: label)
            handler.logLevel = level
            return handler
        }
        return Logger(label: label)
    }

    /// A connected connection, or a clear one-line failure naming the address.
    func connect(name: String, logger: Logger, coalesceCalls: Bool = false) async throws -> RedisConnection {
        var configuration = redisConfiguration(name: name)
        configuration.coalesceCalls = coalesceCalls
        let connection = RedisConnection(configuration: configuration, logger: logger)
        try await reportingFailures { try await connection.connect() }
        return connection
    }
}
