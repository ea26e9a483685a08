import Foundation
import StepwiseCore

/// The `stepwise worker` processes one load-test round started: start, kill -9, stop.
///
/// Used only from the round's own task, one call at a time, so it needs no locking; it is
/// deliberately not `Sendable`.
final class LoadTestWorkerPool {
    struct Child {
        var id: String
        var process: Process
        var logPath: String
    }

    private let binary: String
    private let baseArguments: [String]
    private let environment: [String: String]
    private let idPrefix: String
    private(set) var children: [Child] = []
    private var started = 0
    /// kill -9 time (ms since 1970) of each killed worker id.
    private(set) var killedAt: [String: Int64] = [:]
    /// CPU seconds the killed processes had used when they were killed.
    private var killedCPU = 0.0
    /// Where each worker's stdout and stderr go: `<tmp>/stepwise-loadtest-<idPrefix>/<worker id>.log`.
    let logDirectory: String
    /// Workers that exited although nobody stopped them, with their exit status and last log lines.
    private(set) var unexpectedExits: [String] = []
    /// Workers sent SIGTERM by ``terminateRandom(using:)`` that have not exited yet.
    private var stopping: [Child] = []
    /// Workers stopped with SIGSTOP by ``pauseRandom(using:)`` and not yet resumed.
    private(set) var paused: Set<String> = []
    /// Workers that exited after ``terminateRandom(using:)``: how many exited with status 0.
    private(set) var cleanTerminations = 0

    /// - Parameters:
    ///   - arguments: `worker` flags shared by every process (`--namespace`, `--concurrency`, ...).
    ///   - connectionEnvironment: `REDIS_URL` (and `REDIS_PASSWORD_FILE`), passed in the
    ///     environment so a password never shows in `ps` (``ConnectionOptions/childEnvironment``).
    ///   - idPrefix: worker ids are `<idPrefix>-w<n>`, `n` counting every process started.
    init(arguments: [String], connectionEnvironment: [String: String], idPrefix: String) {
        binary = URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath().path
        baseArguments = arguments
        environment = ProcessInfo.processInfo.environment.merging(connectionEnvironment) { _, new in new }
        self.idPrefix = idPrefix
        logDirectory = FileManager.default.temporaryDirectory.appendingPathComponent("stepwise-loadtest-\(idPrefix)").path
    }

    deinit {
        for c in children + stopping where c.process.isRunning {
            kill(c.process.processIdentifier, SIGCONT)
            kill(c.process.processIdentifier, SIGKILL)
        }
    }

    /// Starts one more worker process with a new worker id.
    func start() throws {
        let id = "\(idPrefix)-w\(started)"
        started += 1
        let p = Process()
        p.executableURL = URL(fileURLWithPath: binary)
        p.arguments = ["worker"] + baseArguments + ["--worker-id", id]
        p.environment = environment
        p.standardInput = FileHandle.nullDevice
        try FileManager.default.createDirectory(atPath: logDirectory, withIntermediateDirectories: true)
        let logPath = logDirectory + "/\(id).log"
        _ = FileManager.default.createFile(atPath: logPath, contents: nil)
        let log = try FileHandle(forWritingTo: URL(fileURLWithPath: logPath))
        p.standardOutput = log
        p.standardError = log
        try p.run()
        try? log.close()
        children.append(Child(id: id, process: p, logPath: logPath))
    }

    /// Moves workers that exited on their own (a crash, or an exit on error) to ``unexpectedExits``.
    ///
    /// - Returns: how many were found this time.
    @discardableResult
    func collectUnexpectedExits() -> Int {
        let gone = children.filter { !$0.process.isRunning }
        guard !gone.isEmpty else { return 0 }
        children.removeAll { !$0.process.isRunning }
        for c in gone {
            paused.remove(c.id)
            let how = c.process.terminationReason == .uncaughtSignal ? "signal" : "status"
            let tail = ((try? String(contentsOfFile: c.logPath, encoding: .utf8)) ?? "").split(separator: "\n").suffix(3)
            unexpectedExits.append(
                "worker \(c.id) exited unexpectedly (\(how) \(c.process.terminationStatus))"
                    + (tail.isEmpty ? "" : ": " + tail.joined(separator: " | ")) + " (log: \(c.logPath))")
        }
        return gone.count
    }

    /// Deletes the log directory (after a round without errors).
    func removeLogs() {
        try? FileManager.default.removeItem(atPath: logDirectory)
    }

    /// kill -9 of one random running worker; returns its id.
    func killRandom() -> String? {
        var rng = SystemRandomNumberGenerator()
        return killRandom(using: &rng)
    }

    /// kill -9 of one random running worker that is not paused, chosen with `rng`; returns its id.
    func killRandom(using rng: inout some RandomNumberGenerator) -> String? {
        guard let index = randomVictim(using: &rng) else { return nil }
        let victim = children.remove(at: index)
        killedCPU += cpuSeconds(pid: victim.process.processIdentifier)
        kill(victim.process.processIdentifier, SIGKILL)
        killedAt[victim.id] = Int64(Date().timeIntervalSince1970 * 1000)
        return victim.id
    }

    /// SIGSTOP of one random running worker that is not paused yet; returns its id. It stays in
    /// the pool: ``resume(_:)`` continues it.
    func pauseRandom(using rng: inout some RandomNumberGenerator) -> String? {
        guard let index = randomVictim(using: &rng) else { return nil }
        let victim = children[index]
        kill(victim.process.processIdentifier, SIGSTOP)
        paused.insert(victim.id)
        return victim.id
    }

    /// SIGCONT of a worker ``pauseRandom(using:)`` stopped; returns whether it still ran.
    @discardableResult
    func resume(_ id: String) -> Bool {
        guard paused.remove(id) != nil, let c = children.first(where: { $0.id == id }) else { return false }
        kill(c.process.processIdentifier, SIGCONT)
        return c.process.isRunning
    }

    /// SIGCONT of every paused worker (the chaos driver's undo).
    func resumeAll() {
        for id in paused { resume(id) }
    }

    /// SIGTERM (graceful shutdown) of one random running worker that is not paused; returns its
    /// id. It leaves the pool; ``collectTerminated()`` checks that it exits with status 0.
    func terminateRandom(using rng: inout some RandomNumberGenerator) -> String? {
        guard let index = randomVictim(using: &rng) else { return nil }
        let victim = children.remove(at: index)
        killedCPU += cpuSeconds(pid: victim.process.processIdentifier)
        kill(victim.process.processIdentifier, SIGTERM)
        stopping.append(victim)
        return victim.id
    }

    /// Workers sent SIGTERM that have exited since the last call: a status other than 0 is an
    /// error in ``unexpectedExits``. With `force`, SIGKILLs the ones still running (an error too).
    func collectTerminated(force: Bool = false) {
        for c in stopping where !c.process.isRunning {
            if c.process.terminationReason == .exit && c.process.terminationStatus == 0 {
                cleanTerminations += 1
            } else {
                let how = c.process.terminationReason == .uncaughtSignal ? "signal" : "status"
                unexpectedExits.append("worker \(c.id) exited with \(how) \(c.process.terminationStatus) after SIGTERM (log: \(c.logPath))")
            }
        }
        stopping.removeAll { !$0.process.isRunning }
        if force {
            for c in stopping {
                kill(c.process.processIdentifier, SIGKILL)
                unexpectedExits.append("worker \(c.id) did not exit after SIGTERM: killed (log: \(c.logPath))")
            }
        }
    }

    /// Ids of the running workers that are not paused (the chaos driver's candidates).
    var activeIDs: [String] { children.map(\.id).filter { !paused.contains($0) } }

    private func randomVictim(using rng: inout some RandomNumberGenerator) -> Int? {
        let candidates = children.indices.filter { !paused.contains(children[$0].id) }
        guard !candidates.isEmpty else { return nil }
        return candidates[Int.random(in: 0..<candidates.count, using: &rng)]
    }

    /// CPU seconds (user + system) of every process this pool started, including killed ones.
    var cpuSeconds: Double { killedCPU + children.map { cpuSeconds(pid: $0.process.processIdentifier) }.reduce(0, +) }

    /// Ids of the workers running now.
    var runningIDs: Set<String> { Set(children.map(\.id)) }

    /// SIGTERM to every worker, then waits (bounded) for them to exit; SIGKILL for any left.
    func stopAll(timeout: Duration = .seconds(30)) async {
        resumeAll()
        for c in children where c.process.isRunning { kill(c.process.processIdentifier, SIGTERM) }
        _ = await poll(timeout: timeout, interval: .milliseconds(20)) { (children + stopping).allSatisfy { !$0.process.isRunning } }
        collectTerminated(force: true)
        for c in children where c.process.isRunning { kill(c.process.processIdentifier, SIGKILL) }
        _ = await poll(timeout: .seconds(5), interval: .milliseconds(20)) { children.allSatisfy { !$0.process.isRunning } }
    }

    /// utime + stime of a process, from /proc (Linux); 0 once it is gone.
    private func cpuSeconds(pid: Int32) -> Double {
        guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
            let close = stat.lastIndex(of: ")")
        else { return 0 }
        let fields = stat[stat.index(after: close)...].split(separator: " ")
        guard fields.count > 13, let u = Double(fields[11]), let s = Double(fields[12]) else { return 0 }
        return (u + s) / Double(sysconf(Int32(_SC_CLK_TCK)))
    }
}
