import ArgumentParser
import Foundation
import Logging
import StepwiseAgents
import StepwiseCore
import StepwiseRedis

@main
struct Stepwise: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "stepwise",
        abstract: "Run AI-agent sessions step by step on a pool of stateless workers, with all state in Redis.",
        subcommands: [
            WorkerCommand.self, SubmitCommand.self, WatchCommand.self, StatusCommand.self, SessionsCommand.self,
            QueueCommand.self, CancelCommand.self, TouchCommand.self, DeadCommand.self, LoadTestCommand.self,
            GatewayCommand.self, TokenCommand.self,
        ]
    )

    /// Rejects arguments that are not valid UTF-8 before parsing (Swift would silently repair
    /// them), then runs the command.
    static func main() async {
        // hiredis writes with write(2): a write to a socket Redis already closed (CLIENT KILL, a
        // restart) would raise SIGPIPE, whose default action kills the process. Ignored, the
        // write fails with EPIPE and the connection reconnects like after any I/O error.
        signal(SIGPIPE, SIG_IGN)
        for i in 1..<Int(CommandLine.argc) {
            guard let raw = CommandLine.unsafeArgv[i], String(validatingCString: raw) != nil else {
                printError("argument \(i) is not valid UTF-8: pass text in UTF-8 (JSON escapes like \\u00e9 work in --input)")
                Foundation.exit(ExitCode.validationFailure.rawValue)
            }
        }
        await main(nil)
    }
}

/// Connection and namespace options shared by every subcommand.
struct ConnectionOptions: ParsableArguments {
    @Option(
        name: .customLong("redis"),
        help: ArgumentHelp(
            "Redis URL: redis://[user:password@]host:port[/db] or unix:///path.sock (env REDIS_URL).",
            valueName: "url"))
    var redisURL: String = ProcessInfo.processInfo.environment["REDIS_URL"] ?? "redis://127.0.0.1:6379"

    @Option(help: "Key namespace: every key starts with '<namespace>:' (env STEPWISE_NAMESPACE).")
    var namespace: String = ProcessInfo.processInfo.environment["STEPWISE_NAMESPACE"] ?? "sw"

    @Option(help: "Log level: trace, debug, info, notice, warning, error, critical (default: info for worker, warning otherwise).")
    var logLevel: String?

    func validate() throws {
        do { _ = try RedisEndpoint(parsing: redisURL) } catch { throw ValidationError("--redis: \(error)") }
        do { _ = try KeySpace(namespace: namespace) } catch { throw ValidationError("--namespace: \(error)") }
        if let logLevel, Logger.Level(rawValue: logLevel) == nil {
            throw ValidationError("--log-level '\(logLevel)' is unknown: use trace, debug, info, notice, warning, error or critical")
        }
    }

    var endpoint: RedisEndpoint { (try? RedisEndpoint(parsing: redisURL)) ?? RedisEndpoint(address: .tcp(host: "127.0.0.1", port: 6379)) }
    var keys: KeySpace { (try? KeySpace(namespace: namespace)) ?? (try! KeySpace()) }

    func redisConfiguration(name: String) -> RedisConnection.Configuration {
        RedisConnection.Configuration(endpoint: endpoint, clientName: name)
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
    func connect(name: String, logger: Logger) async throws -> RedisConnection {
        let connection = RedisConnection(configuration: redisConfiguration(name: name), logger: logger)
        try await reportingFailures { try await connection.connect() }
        return connection
    }
}

/// Runs `body`, turning engine and Redis errors into one line on stderr and exit code 1.
func reportingFailures<T>(_ body: () async throws -> T) async throws -> T {
    do {
        return try await body()
    } catch let error as RedisError {
        printError("cannot reach Redis at \(error.address): \(error.message) (check --redis or REDIS_URL, and that redis-server runs)")
        throw ExitCode.failure
    } catch let error as StepwiseError {
        printError(error.message)
        throw ExitCode.failure
    } catch let error as RedisServerError {
        printError("redis replied with an error: \(error.message)")
        throw ExitCode.failure
    }
}

/// Writes one line to stdout at once (unbuffered), so live output is never held back.
func output(_ line: String) {
    FileHandle.standardOutput.write(Data((line + "\n").utf8))
}

func printError(_ message: String) {
    FileHandle.standardError.write(Data("error: \(message)\n".utf8))
}

/// Parses a duration given in seconds (fractions allowed).
func seconds(_ value: Double, flag: String, min: Double = 0) throws -> Duration {
    guard value.isFinite, value >= min else {
        throw ValidationError("\(flag) must be a number of seconds >= \(min), got \(value)")
    }
    return .milliseconds(Int64((value * 1000).rounded()))
}

func parseSessionID(_ text: String, flag: String) throws -> SessionID {
    do { return try SessionID(text) } catch { throw ValidationError("\(flag): \(error.message)") }
}

func formatTime(_ ms: Int64) -> String {
    let date = Date(timeIntervalSince1970: Double(ms) / 1000)
    let f = DateFormatter()
    f.dateFormat = "HH:mm:ss.SSS"
    f.timeZone = TimeZone.current
    return f.string(from: date)
}
