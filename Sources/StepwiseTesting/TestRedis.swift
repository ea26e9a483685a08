import Foundation
import Logging
import ServiceLifecycle
import StepwiseAgents
import StepwiseCore
import StepwiseRedis
import Synchronization

/// Test support: where the throwaway redis-server is, unique namespaces, bounded waits.
///
/// `make test` starts a redis-server on a free loopback port and exports
/// `STEPWISE_TEST_REDIS_URL`; integration suites are enabled only when it is set.
public enum TestRedis {
    /// The test server's URL, or `nil` when the suites should be skipped.
    public static let url: String? = ProcessInfo.processInfo.environment["STEPWISE_TEST_REDIS_URL"]

    /// The path of the built `stepwise` binary, from `STEPWISE_BIN`.
    public static let binary: String? = ProcessInfo.processInfo.environment["STEPWISE_BIN"]

    /// The parsed endpoint (only valid when ``url`` is set).
    public static var endpoint: RedisEndpoint {
        get throws { try RedisEndpoint(parsing: url ?? "redis://127.0.0.1:6379") }
    }

    /// A new connection to the test server.
    public static func connection(name: String = "test") throws -> RedisConnection {
        RedisConnection(configuration: .init(endpoint: try endpoint, clientName: name), logger: Logger(label: "test"))
    }

    /// A namespace no other test uses: `t<uuid>`.
    public static func uniqueKeys() throws -> KeySpace {
        try KeySpace(namespace: "t" + UUID().uuidString.replacingOccurrences(of: "-", with: "").prefix(16).lowercased())
    }
}

/// Polls `condition` every `interval` until it is true or `timeout` passes; never sleeps blindly.
///
/// A thin alias of ``StepwiseCore/poll(timeout:interval:until:)``, kept so test code reads naturally.
///
/// - Returns: whether the condition became true in time.
public func eventually(
    timeout: Duration, interval: Duration = .milliseconds(50), _ condition: () async throws -> Bool
) async rethrows -> Bool {
    try await poll(timeout: timeout, interval: interval, until: condition)
}

/// Sets `posix_spawn` attributes so the child starts with an empty signal mask and every signal
/// at its default action, as a process started by systemd or a shell would (not inheriting the
/// test runner's blocked or ignored signals).
public func setDefaultSignals(_ attributes: inout posix_spawnattr_t) {
    var none = sigset_t()
    sigemptyset(&none)
    posix_spawnattr_setsigmask(&attributes, &none)
    var every = sigset_t()
    sigfillset(&every)
    posix_spawnattr_setsigdefault(&attributes, &every)
    posix_spawnattr_setflags(&attributes, Int16(POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF))
}

/// A child process (a worker of the built binary), stopped on demand.
///
/// Started with `posix_spawn` and an empty signal mask with every signal at its default action,
/// as a shell or systemd would start it, so tests run workers (and redis-server) under the
/// signal settings of production. Foundation's `Process` passes on the test runner's own mask,
/// in which SIGTERM is blocked and SIGPIPE and SIGHUP are ignored.
public final class ChildProcess: Sendable {
    /// The process id.
    public let pid: Int32
    /// Path of the file that captures stdout and stderr.
    public let logPath: String
    /// The raw `waitpid` status, once the process was reaped.
    private let reaped = Mutex<Int32?>(nil)

    /// Starts `binary` with `arguments` and `environment` added to this process's own.
    public init(binary: String, arguments: [String], environment: [String: String] = [:]) throws {
        let log = FileManager.default.temporaryDirectory.appendingPathComponent("stepwise-child-\(UUID().uuidString).log")
        _ = FileManager.default.createFile(atPath: log.path, contents: nil)
        let env = ProcessInfo.processInfo.environment.merging(environment) { _, new in new }
        var attributes = posix_spawnattr_t()
        posix_spawnattr_init(&attributes)
        defer { posix_spawnattr_destroy(&attributes) }
        setDefaultSignals(&attributes)
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_addopen(&actions, 1, log.path, O_WRONLY | O_APPEND, 0)
        posix_spawn_file_actions_adddup2(&actions, 1, 2)
        let argv: [UnsafeMutablePointer<CChar>?] = ([binary] + arguments).map { strdup($0) } + [nil]
        let envp: [UnsafeMutablePointer<CChar>?] = env.map { strdup("\($0.key)=\($0.value)") } + [nil]
        defer { for p in argv + envp { free(p) } }
        var child: pid_t = 0
        let rc = posix_spawn(&child, binary, &actions, &attributes, argv, envp)
        guard rc == 0 else {
            throw StepwiseError(.invalidConfiguration, "cannot start \(binary): \(String(cString: strerror(rc)))")
        }
        self.pid = child
        self.logPath = log.path
    }

    /// Sends a signal.
    public func signal(_ sig: Int32) { kill(pid, sig) }

    /// Whether the process has installed a handler for `sig` (Linux: `SigCgt` of `/proc/<pid>/status`).
    public func catches(_ sig: Int32) -> Bool {
        guard let status = try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8),
            let line = status.split(separator: "\n").first(where: { $0.hasPrefix("SigCgt:") }),
            let mask = UInt64(line.dropFirst("SigCgt:".count).trimmingCharacters(in: .whitespaces), radix: 16)
        else { return false }
        return mask & (1 << UInt64(sig - 1)) != 0
    }

    /// Whether the process still runs (reaps it when it has exited).
    public var isRunning: Bool { exitStatus == nil }

    /// The exit code, or the number of the signal that ended the process; `nil` while it runs.
    public var exitStatus: Int32? {
        reaped.withLock { status in
            if status == nil {
                var raw: Int32 = 0
                let r = waitpid(pid, &raw, WNOHANG)
                if r == pid { status = raw } else if r < 0 { status = 0 }
            }
            guard let raw = status else { return nil }
            // WIFEXITED / WEXITSTATUS / WTERMSIG, which Swift cannot import as macros.
            return raw & 0x7f == 0 ? (raw >> 8) & 0xff : raw & 0x7f
        }
    }

    /// Waits up to `timeout` for the process to exit; returns its status or nil.
    public func wait(timeout: Duration) async -> Int32? {
        let ok = await eventually(timeout: timeout, interval: .milliseconds(20)) { !isRunning }
        return ok ? exitStatus : nil
    }

    /// SIGTERM, wait, then SIGKILL if needed: never leaves a process behind.
    public func stop(timeout: Duration = .seconds(10)) async -> Int32? {
        if let status = exitStatus { return status }
        signal(SIGTERM)
        if let status = await wait(timeout: timeout) { return status }
        signal(SIGKILL)
        return await wait(timeout: .seconds(5))
    }

    /// The captured output so far.
    public var output: String { (try? String(contentsOfFile: logPath, encoding: .utf8)) ?? "" }
}

/// Runs the built binary to completion and captures its output.
public func runBinary(_ arguments: [String], environment: [String: String] = [:], timeout: Duration = .seconds(30)) async throws
    -> (status: Int32, stdout: String, stderr: String)
{
    guard let binary = TestRedis.binary else { throw StepwiseError(.invalidConfiguration, "STEPWISE_BIN is not set") }
    return try await runTool(binary, arguments, environment: environment, timeout: timeout)
}

/// Runs a program (a path, or a name looked up in `PATH`) to completion within `timeout` (then
/// it is terminated) and captures its output. The output goes to temporary files, not pipes, so a
/// program that leaves a daemon behind holding them (`tmux new-session -d`) cannot block the read.
public func runTool(
    _ program: String, _ arguments: [String], environment: [String: String] = [:], timeout: Duration = .seconds(30)
) async throws -> (status: Int32, stdout: String, stderr: String) {
    let process = Process()
    if program.contains("/") {
        process.executableURL = URL(fileURLWithPath: program)
    } else {
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = [program]
    }
    process.arguments = (process.arguments ?? []) + arguments
    process.environment = ProcessInfo.processInfo.environment.merging(environment) { _, new in new }
    let base = FileManager.default.temporaryDirectory.appendingPathComponent("stepwise-tool-\(UUID().uuidString)")
    let outURL = base.appendingPathExtension("out")
    let errURL = base.appendingPathExtension("err")
    _ = FileManager.default.createFile(atPath: outURL.path, contents: nil)
    _ = FileManager.default.createFile(atPath: errURL.path, contents: nil)
    defer {
        try? FileManager.default.removeItem(at: outURL)
        try? FileManager.default.removeItem(at: errURL)
    }
    let out = try FileHandle(forWritingTo: outURL)
    let err = try FileHandle(forWritingTo: errURL)
    defer {
        try? out.close()
        try? err.close()
    }
    process.standardOutput = out
    process.standardError = err
    process.standardInput = FileHandle.nullDevice
    try process.run()
    let finished = await eventually(timeout: timeout, interval: .milliseconds(10)) { !process.isRunning }
    if !finished { process.terminate() }
    process.waitUntilExit()
    let stdout = (try? String(contentsOf: outURL, encoding: .utf8)) ?? ""
    let stderr = (try? String(contentsOf: errURL, encoding: .utf8)) ?? ""
    return (process.terminationStatus, stdout, stderr)
}

/// Runs an in-process ``Worker`` while `body` runs, then shuts it down gracefully and waits.
public func withRunningWorker<T: Sendable>(
    keys: KeySpace, agents: AgentRegistry, configuration: Worker.Configuration, sealer: (any SessionSealer)? = nil,
    _ body: () async throws -> T
) async throws -> T {
    let worker = Worker(
        configuration: configuration, redis: .init(endpoint: try TestRedis.endpoint), keys: keys, agents: agents,
        logger: Logger(label: "test.worker"), sealer: sealer)
    return try await withRunning(worker, body)
}

/// Runs `worker` while `body` runs, then shuts it down gracefully and waits.
public func withRunning<T: Sendable>(_ worker: Worker, _ body: () async throws -> T) async throws -> T {
    let group = ServiceGroup(
        configuration: .init(services: [.init(service: worker)], gracefulShutdownSignals: [], logger: Logger(label: "test")))
    return try await withThrowingTaskGroup(of: Void.self) { tasks in
        tasks.addTask { try await group.run() }
        do {
            let result = try await body()
            await group.triggerGracefulShutdown()
            try await tasks.waitForAll()
            return result
        } catch {
            await group.triggerGracefulShutdown()
            try? await tasks.waitForAll()
            throw error
        }
    }
}
