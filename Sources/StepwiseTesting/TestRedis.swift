import Foundation
import Logging
import ServiceLifecycle
import StepwiseAgents
import StepwiseCore
import StepwiseRedis

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

/// A child process (a worker of the built binary), stopped on demand.
public final class ChildProcess: Sendable {
    private let process: Process
    /// The process id.
    public let pid: Int32
    /// Path of the file that captures stdout and stderr.
    public let logPath: String

    /// Starts `binary` with `arguments` and `environment` added to this process's own.
    public init(binary: String, arguments: [String], environment: [String: String] = [:]) throws {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: binary)
        process.arguments = arguments
        process.environment = ProcessInfo.processInfo.environment.merging(environment) { _, new in new }
        let log = FileManager.default.temporaryDirectory.appendingPathComponent("stepwise-child-\(UUID().uuidString).log")
        _ = FileManager.default.createFile(atPath: log.path, contents: nil)
        let handle = try FileHandle(forWritingTo: log)
        process.standardOutput = handle
        process.standardError = handle
        process.standardInput = FileHandle.nullDevice
        try process.run()
        self.process = process
        self.pid = process.processIdentifier
        self.logPath = log.path
    }

    /// Sends a signal.
    public func signal(_ sig: Int32) { kill(pid, sig) }

    /// Whether the process still runs.
    public var isRunning: Bool { process.isRunning }

    /// Waits up to `timeout` for the process to exit; returns its status or nil.
    public func wait(timeout: Duration) async -> Int32? {
        let ok = await eventually(timeout: timeout, interval: .milliseconds(20)) { !process.isRunning }
        return ok ? process.terminationStatus : nil
    }

    /// SIGTERM, wait, then SIGKILL if needed: never leaves a process behind.
    public func stop(timeout: Duration = .seconds(10)) async -> Int32? {
        guard process.isRunning else { return process.terminationStatus }
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
    let process = Process()
    process.executableURL = URL(fileURLWithPath: binary)
    process.arguments = arguments
    process.environment = ProcessInfo.processInfo.environment.merging(environment) { _, new in new }
    let out = Pipe()
    let err = Pipe()
    process.standardOutput = out
    process.standardError = err
    process.standardInput = FileHandle.nullDevice
    try process.run()
    let finished = await eventually(timeout: timeout, interval: .milliseconds(10)) { !process.isRunning }
    if !finished { process.terminate() }
    let stdout = String(decoding: out.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
    let stderr = String(decoding: err.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
    process.waitUntilExit()
    return (process.terminationStatus, stdout, stderr)
}

/// Runs an in-process ``Worker`` while `body` runs, then shuts it down gracefully and waits.
public func withRunningWorker<T: Sendable>(
    keys: KeySpace, agents: AgentRegistry, configuration: Worker.Configuration,
    _ body: () async throws -> T
) async throws -> T {
    let worker = Worker(
        configuration: configuration, redis: .init(endpoint: try TestRedis.endpoint), keys: keys, agents: agents,
        logger: Logger(label: "test.worker"))
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
