import Foundation
import StepwiseCore
import Synchronization

/// Worker processes of the built binary for one namespace, started and stopped by a test.
///
/// Every process started through the pool is remembered, so ``killAll()`` (synchronous, for a
/// `defer`) never leaves one behind, including replacements started by ``keepAlive(_:next:)``.
public final class WorkerPool: Sendable {
    /// The fast settings of the fault suite: presume a worker dead after 2 s of silence, look for
    /// dead workers every 0.5 s, give running steps 5 s at SIGTERM.
    public static let fastSettings = ["--heartbeat-ttl", "2", "--reaper-interval", "0.5", "--grace", "5"]

    /// One started worker process.
    public struct Member: Sendable {
        /// Its `--worker-id`.
        public var id: String
        /// The process.
        public var process: ChildProcess
    }

    /// The `stepwise` binary.
    public let binary: String
    /// `--redis` of every worker and CLI call.
    public let redisURL: String
    /// `--namespace` of every worker and CLI call.
    public let namespace: String
    /// Worker flags added to every start (``fastSettings`` by default).
    public let workerArguments: [String]
    private let members = Mutex<[Member]>([])

    /// Creates an empty pool; nothing starts until ``start(id:concurrency:extra:)``.
    public init(binary: String, redisURL: String, namespace: String, workerArguments: [String] = WorkerPool.fastSettings) {
        self.binary = binary
        self.redisURL = redisURL
        self.namespace = namespace
        self.workerArguments = workerArguments
    }

    /// `--redis URL --namespace NS`, for CLI calls.
    public var connectionArguments: [String] { ["--redis", redisURL, "--namespace", namespace] }

    /// Starts `stepwise worker` with the pool's settings plus `extra`.
    @discardableResult
    public func start(id: String, concurrency: Int = 2, extra: [String] = []) throws -> ChildProcess {
        let process = try ChildProcess(
            binary: binary,
            arguments: ["worker"] + connectionArguments + ["--concurrency", "\(concurrency)", "--worker-id", id]
                + workerArguments + extra)
        members.withLock { $0.append(Member(id: id, process: process)) }
        return process
    }

    /// Every worker started so far, in start order.
    public var all: [Member] { members.withLock { $0 } }

    /// The most recent process started with this worker id.
    public func process(_ id: String) -> ChildProcess? { members.withLock { $0.last { $0.id == id }?.process } }

    /// The workers that still run.
    public var running: [Member] { all.filter { $0.process.isRunning } }

    /// Restarts exited workers so that `count` run, each with a new id from `next` (a fresh id, so
    /// the dead one's in-flight list is left for the reaper).
    ///
    /// - Returns: how many workers it started.
    @discardableResult
    public func keepAlive(_ count: Int, concurrency: Int = 1, extra: [String] = [], next: () -> String) throws -> Int {
        let missing = max(0, count - running.count)
        for _ in 0..<missing { try start(id: next(), concurrency: concurrency, extra: extra) }
        return missing
    }

    /// The workers that have exited, with their exit status (`terminationStatus`: the exit code,
    /// or the signal number for a process killed by a signal).
    public func exited() async -> [(id: String, status: Int32)] {
        var result: [(id: String, status: Int32)] = []
        for m in all where !m.process.isRunning {
            if let status = await m.process.wait(timeout: .zero) { result.append((m.id, status)) }
        }
        return result
    }

    /// SIGTERMs every running worker and waits for each (SIGKILL after `timeout`).
    ///
    /// - Returns: worker id → exit status (`nil` if it could not be stopped).
    @discardableResult
    public func stopAll(timeout: Duration = .seconds(15)) async -> [String: Int32?] {
        var result: [String: Int32?] = [:]
        // A worker started a moment ago (a restart after a crash) may not have reached `main`,
        // where it traps SIGTERM, and the default action would kill it: wait, bounded, until it has.
        for member in running {
            _ = await eventually(timeout: .seconds(5), interval: .milliseconds(10)) {
                !member.process.isRunning || member.process.catches(SIGTERM)
            }
        }
        for member in running { member.process.signal(SIGTERM) }
        for member in all { result[member.id] = await member.process.stop(timeout: timeout) }
        return result
    }

    /// Backstop for `defer`: SIGCONT (in case a test stopped it) and SIGKILL every worker still
    /// running, then delete the workers' log files (failure messages already quote them).
    /// Synchronous and idempotent.
    public func killAll() {
        for member in all where member.process.isRunning {
            member.process.signal(SIGCONT)
            member.process.signal(SIGKILL)
        }
        for member in all { try? FileManager.default.removeItem(atPath: member.process.logPath) }
    }

    /// The logs of every worker started, headed by their ids (for failure messages).
    public func logs(suffix: Int = 2000) -> String {
        all.map { "--- \($0.id) (pid \($0.process.pid)) ---\n\($0.process.output.suffix(suffix))" }.joined(separator: "\n")
    }

    /// Runs one CLI command against this pool's Redis and namespace.
    public func cli(_ arguments: [String], timeout: Duration = .seconds(30)) async throws -> CLIResult {
        let r = try await runBinary(arguments + connectionArguments, timeout: timeout)
        return CLIResult(status: r.status, stdout: r.stdout, stderr: r.stderr)
    }
}

/// The outcome of one CLI run.
public struct CLIResult: Sendable, CustomStringConvertible {
    /// The exit status.
    public var status: Int32
    /// Everything written to stdout.
    public var stdout: String
    /// Everything written to stderr.
    public var stderr: String

    /// stdout parsed as JSON, or `nil`.
    public var json: JSONValue? { try? JSONValue(parsing: stdout.trimmingCharacters(in: .whitespacesAndNewlines)) }

    /// stdout as a list of JSON objects: a JSON array, one object, or one object per line.
    public var jsonObjects: [JSONValue] {
        if let whole = json {
            if let items = whole.arrayValue { return items }
            return [whole]
        }
        return stdout.split(whereSeparator: \.isNewline).compactMap { try? JSONValue(parsing: String($0)) }
    }

    public var description: String { "exit \(status), stdout: \(stdout.suffix(600)), stderr: \(stderr.suffix(600))" }
}
