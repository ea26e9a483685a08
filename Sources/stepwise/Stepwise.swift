import ArgumentParser
import Foundation
import Logging
import StepwiseAgents
import StepwiseCore
import StepwiseRedis
import Synchronization
import UnixSignals

@main
struct Stepwise: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "stepwise",
        abstract: "Run AI-agent sessions step by step on a pool of stateless workers, with all state in Redis.",
        subcommands: [
            WorkerCommand.self, SubmitCommand.self, WatchCommand.self, StatusCommand.self, SessionsCommand.self,
            QueueCommand.self, TopCommand.self, CancelCommand.self, TouchCommand.self, DeadCommand.self, LoadTestCommand.self,
            GatewayCommand.self, TokenCommand.self, KeysCommand.self, ForgetCommand.self,
        ]
    )

    /// Rejects arguments that are not valid UTF-8 before parsing (Swift would silently repair
    /// them), then runs the command. All output, argument-parser's help and errors included,
    /// goes through ``Console``: a closed or broken stdout or stderr ends the command with
    /// status 74, never with a trap.
    static func main() async {
        // hiredis writes with write(2): a write to a socket Redis already closed (CLIENT KILL, a
        // restart) would raise SIGPIPE, whose default action kills the process. Ignored, the
        // write fails with EPIPE and the connection reconnects like after any I/O error.
        signal(SIGPIPE, SIG_IGN)
        // A worker traps SIGTERM and SIGINT before anything else, so one that comes while it is
        // still starting stops it gracefully (WorkerCommand.run()), not by the default action.
        if CommandLine.arguments.dropFirst().first == "worker" {
            let signals = await UnixSignalsSequence(trapping: .sigterm, .sigint)
            WorkerCommand.earlySignals.withLock { $0 = signals }
        }
        for i in 1..<Int(CommandLine.argc) {
            guard let raw = CommandLine.unsafeArgv[i], String(validatingCString: raw) != nil else {
                printError("argument \(i) is not valid UTF-8: pass text in UTF-8 (JSON escapes like \\u00e9 work in --input)")
                Foundation.exit(Console.exitStatus(ExitCode.validationFailure.rawValue))
            }
        }
        Foundation.exit(Console.exitStatus(await runCommand()))
    }

    /// argument-parser's `main`, with its messages written through ``Console`` (it prints help
    /// with `print` and errors with `putc`, whose failures go unnoticed).
    ///
    /// - Returns: the exit status.
    private static func runCommand() async -> Int32 {
        do {
            var command = try await asyncParseAsRoot()
            if var asyncCommand = command as? any AsyncParsableCommand {
                try await asyncCommand.run()
            } else {
                try command.run()
            }
            return ExitCode.success.rawValue
        } catch is OutputFailed {
            return Console.outputFailedStatus
        } catch {
            let code = exitCode(for: error)
            // argument-parser quotes unexpected arguments, and one may be a Redis URL.
            let text = redactingCredentials(fullMessage(for: error))
            // Help (and other clean exits) go to stdout with status 0, as argument-parser does.
            if !text.isEmpty { Console.write(text + "\n", to: code == .success ? .stdout : .stderr) }
            return code.rawValue
        }
    }

    /// `text` with every command-line argument (or `--option=value` value) that looks like a URL
    /// with credentials replaced by its redacted form (``RedisEndpoint/redacted(_:)``).
    static func redactingCredentials(_ text: String, arguments: [String] = CommandLine.arguments) -> String {
        var text = text
        for argument in arguments.dropFirst() {
            let candidates = [argument] + argument.split(separator: "=", maxSplits: 1).dropFirst().map(String.init)
            for candidate in candidates where candidate.contains("://") && candidate.contains("@") {
                text = text.replacingOccurrences(of: candidate, with: RedisEndpoint.redacted(candidate))
            }
        }
        return text
    }
}

/// Runs `body`, turning engine and Redis errors into one line on stderr and exit code 1.
func reportingFailures<T>(_ body: () async throws -> T) async throws -> T {
    do {
        return try await body()
    } catch let error as RedisError where error.code == .rejected {
        printError(
            "Redis at \(error.address) refused this client: \(error.message) (check the user and password: --redis or "
                + "REDIS_URL, --redis-password-file or REDIS_PASSWORD_FILE; users: deploy/users.acl)")
        throw ExitCode.failure
    } catch let error as RedisError {
        printError("cannot reach Redis at \(error.address): \(error.message) (check --redis or REDIS_URL, and that redis-server runs)")
        throw ExitCode.failure
    } catch let error as RedisServerError where error.isPermissionDenied {
        printError(
            "the Redis user may not do this: \(error.message) (each role needs its own user: see deploy/users.acl and docs/SECURITY.md)")
        throw ExitCode.failure
    } catch let error as StepwiseError {
        printError(error.message)
        throw ExitCode.failure
    } catch let error as RedisServerError {
        printError("redis replied with an error: \(error.message)")
        throw ExitCode.failure
    }
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
