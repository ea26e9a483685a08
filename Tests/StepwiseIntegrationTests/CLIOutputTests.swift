import Foundation
import StepwiseAgents
import StepwiseCore
import StepwiseRedis
import StepwiseTesting
import Testing

/// What a spawned command's stdout or stderr is connected to.
enum Sink: Sendable, CustomStringConvertible {
    /// A file, read back after the run.
    case capture
    /// A pipe whose read end was closed before the process started: every write fails with EPIPE.
    case brokenPipe
    /// No descriptor at all: every write fails with EBADF.
    case closed

    var description: String {
        switch self {
        case .capture: "captured"
        case .brokenPipe: "a pipe with no reader"
        case .closed: "closed"
        }
    }
}

/// How a spawned command ended.
struct Spawned: Sendable {
    /// The exit status, when it exited.
    var exitStatus: Int32?
    /// The signal that ended it, when one did (SIGILL 4 is a Swift trap, SIGABRT 6 a fatalError, SIGPIPE 13).
    var signal: Int32?
    var stdout: String
    var stderr: String
}

/// Runs the built binary with stdout and stderr connected as asked, stdin from `stdin` (or
/// /dev/null), under default signal actions (as a shell starts it), and waits for it.
func spawnBinary(
    _ arguments: [String], stdin: [UInt8]? = nil, stdout: Sink = .capture, stderr: Sink = .capture,
    timeout: Duration = .seconds(30)
) async throws -> Spawned {
    try await spawn(try #require(TestRedis.binary), arguments, stdin: stdin, stdout: stdout, stderr: stderr, timeout: timeout)
}

/// Runs `binary` like ``spawnBinary(_:stdin:stdout:stderr:timeout:)``, with `environment` added.
///
/// Started with `posix_spawn`, an empty signal mask and default actions: Foundation's `Process`
/// would pass on the test runner's mask, in which SIGCHLD and SIGTERM are blocked (a shell's
/// `wait` then never returns).
func spawn(
    _ binary: String, _ arguments: [String], environment: [String: String] = [:], stdin: [UInt8]? = nil,
    stdout: Sink = .capture, stderr: Sink = .capture, timeout: Duration = .seconds(30)
) async throws -> Spawned {
    let dir = FileManager.default.temporaryDirectory.appendingPathComponent("stepwise-cli-\(UUID().uuidString)")
    try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
    defer { try? FileManager.default.removeItem(at: dir) }
    let inPath = dir.appendingPathComponent("stdin").path
    let outPath = dir.appendingPathComponent("stdout").path
    let errPath = dir.appendingPathComponent("stderr").path
    for path in [outPath, errPath] { _ = FileManager.default.createFile(atPath: path, contents: nil) }
    if let stdin { _ = FileManager.default.createFile(atPath: inPath, contents: Data(stdin)) }

    var attributes = posix_spawnattr_t()
    posix_spawnattr_init(&attributes)
    defer { posix_spawnattr_destroy(&attributes) }
    setDefaultSignals(&attributes)
    var actions = posix_spawn_file_actions_t()
    posix_spawn_file_actions_init(&actions)
    defer { posix_spawn_file_actions_destroy(&actions) }
    posix_spawn_file_actions_addopen(&actions, 0, stdin == nil ? "/dev/null" : inPath, O_RDONLY, 0)
    var pipeWriteEnds: [Int32] = []
    defer { for fd in pipeWriteEnds { close(fd) } }
    for (fd, sink, path) in [(Int32(1), stdout, outPath), (Int32(2), stderr, errPath)] {
        switch sink {
        case .capture:
            posix_spawn_file_actions_addopen(&actions, fd, path, O_WRONLY | O_APPEND, 0)
        case .closed:
            posix_spawn_file_actions_addclose(&actions, fd)
        case .brokenPipe:
            // Close-on-exec at once, and the read end closed at once: a process another test
            // spawns meanwhile must not keep a reader alive (the pipe would then take the writes).
            var ends: [Int32] = [0, 0]
            guard pipe(&ends) == 0 else { throw POSIXError(.EMFILE) }
            close(ends[0])
            _ = fcntl(ends[1], F_SETFD, FD_CLOEXEC)
            pipeWriteEnds.append(ends[1])
            posix_spawn_file_actions_adddup2(&actions, ends[1], fd)
        }
    }
    let env = ProcessInfo.processInfo.environment.merging(environment) { _, new in new }
    let argv: [UnsafeMutablePointer<CChar>?] = ([binary] + arguments).map { strdup($0) } + [nil]
    let envp: [UnsafeMutablePointer<CChar>?] = env.map { strdup("\($0.key)=\($0.value)") } + [nil]
    defer { for p in argv + envp { free(p) } }
    var pid: pid_t = 0
    let rc = posix_spawn(&pid, binary, &actions, &attributes, argv, envp)
    try #require(rc == 0, "posix_spawn: \(String(cString: strerror(rc)))")
    for fd in pipeWriteEnds { close(fd) }
    pipeWriteEnds = []

    var raw: Int32 = 0
    let done = await eventually(timeout: timeout, interval: .milliseconds(10)) { waitpid(pid, &raw, WNOHANG) == pid }
    if !done {
        kill(pid, SIGKILL)
        _ = waitpid(pid, &raw, 0)
        Issue.record("\(arguments) did not finish within \(timeout)")
    }
    // WIFEXITED / WEXITSTATUS / WTERMSIG, which Swift cannot import as macros.
    let signaled = raw & 0x7f != 0
    return Spawned(
        exitStatus: signaled ? nil : (raw >> 8) & 0xff, signal: signaled ? raw & 0x7f : nil,
        stdout: (try? String(contentsOfFile: outPath, encoding: .utf8)) ?? "",
        stderr: (try? String(contentsOfFile: errPath, encoding: .utf8)) ?? "")
}

@Suite(
    "the CLI's output, input files and limits",
    .enabled(if: TestRedis.url != nil && TestRedis.binary != nil, "needs STEPWISE_TEST_REDIS_URL and STEPWISE_BIN: run `make test`"),
    .timeLimit(.minutes(3)),
    .serialized
)
struct CLIOutputTests {
    let keys: KeySpace
    let conn: RedisConnection
    let common: [String]

    init() throws {
        keys = try TestRedis.uniqueKeys()
        conn = try TestRedis.connection()
        common = ["--redis", try #require(TestRedis.url), "--namespace", keys.namespace]
    }

    /// Every key of this test's namespace.
    func namespaceKeys() async throws -> [String] {
        try await conn.send(["KEYS", RedisArgument(keys.prefix + "*")]).array?.compactMap(\.string).sorted() ?? []
    }

    /// How many jobs were ever enqueued for `session` (its sequence counter), 0 for no session.
    /// Jobs the session ever had queued: its inbox (nothing here runs them).
    func jobCount(_ session: String) async throws -> Int {
        try await conn.send(["LLEN", RedisArgument(keys.inbox(try SessionID(session)))]).int ?? 0
    }

    /// The session's only job id (nil unless it has exactly one).
    func onlyJob(_ session: String) async throws -> String? {
        let ids = try await conn.send(["LRANGE", RedisArgument(keys.inbox(try SessionID(session))), 0, -1]).array?.compactMap(\.string)
        return ids?.count == 1 ? ids?.first : nil
    }

    @Test(arguments: [Sink.brokenPipe, .closed])
    func submitWithBrokenStdoutEnqueuesOnceAndExitsWithoutATrap(_ sink: Sink) async throws {
        for json in [false, true] {
            let session = "out-\(json ? "json" : "text")-\(sink == .closed ? "closed" : "pipe")"
            let r = try await spawnBinary(
                ["submit", "--session", session, "--agent", "echo", "--input", #""hi""#] + (json ? ["--json"] : []) + common, stdout: sink)
            #expect(r.signal == nil, "stdout \(sink): killed by signal \(r.signal ?? 0) (4 is a trap); stderr: \(r.stderr)")
            #expect(r.exitStatus == 74, "stdout \(sink): exit status \(String(describing: r.exitStatus))")
            #expect(r.stderr.isEmpty, "quiet: \(r.stderr)")
            #expect(try await jobCount(session) == 1, "the submit happened, once")
            let job = try await onlyJob(session)
            #expect(job != nil)
            #expect(
                try await conn.send(["LRANGE", RedisArgument(keys.ready), 0, -1]).array?.compactMap(\.string).contains(job ?? "-") == true)
        }
        // The same command with stdout captured: exit 0 and the usual line (the status above is the broken stream's).
        let ok = try await spawnBinary(["submit", "--session", "out-ok", "--agent", "echo"] + common)
        let okJob = try await onlyJob("out-ok") ?? "-"
        #expect(ok.exitStatus == 0 && ok.stdout.hasPrefix("accepted job \(okJob)"), "\(ok)")
    }

    @Test func errorsWithBrokenStderrKeepTheirStatusAndNeverTrap() async throws {
        let first = try await spawnBinary(["submit", "--session", "owned", "--agent", "echo", "--owner", "ann"] + common)
        #expect(first.exitStatus == 0, "\(first.stderr)")
        let cases: [([String], Int32)] = [
            // Refused by the engine (another owner): a runtime error, 1.
            (["submit", "--session", "owned", "--owner", "bob", "--input", "1"], 1),
            // Refused by validation: argument-parser's usage error, 64.
            (["submit", "--session", "owned", "--agent", "nope"], 64),
            (["status", "no-such-session"], 1),
        ]
        for sink in [Sink.brokenPipe, .closed] {
            for (args, status) in cases {
                let r = try await spawnBinary(args + common, stderr: sink)
                #expect(r.signal == nil, "\(args), stderr \(sink): killed by signal \(r.signal ?? 0)")
                #expect(r.exitStatus == status, "\(args), stderr \(sink): exit status \(String(describing: r.exitStatus))")
            }
        }
        #expect(try await jobCount("owned") == 1, "the refused submits enqueued nothing")
        // Both streams gone at once.
        let both = try await spawnBinary(
            ["submit", "--session", "owned", "--owner", "bob"] + common, stdout: .brokenPipe, stderr: .brokenPipe)
        #expect(both.signal == nil && both.exitStatus == 1, "\(both)")
        // The same refusal, captured, says why on stderr.
        let said = try await spawnBinary(["submit", "--session", "owned", "--owner", "bob"] + common)
        #expect(said.exitStatus == 1 && said.stderr.contains("belongs to another owner"), "\(said)")
    }

    @Test func helpAndUsageErrorsToABrokenStreamDoNotTrap() async throws {
        let help = try await spawnBinary(["submit", "--help"], stdout: .brokenPipe)
        #expect(help.signal == nil && help.exitStatus == 74, "\(help)")
        let closed = try await spawnBinary(["--help"], stdout: .closed)
        #expect(closed.signal == nil && closed.exitStatus == 74, "\(closed)")
        let usage = try await spawnBinary(["bogus"], stderr: .brokenPipe)
        #expect(usage.signal == nil && usage.exitStatus == 64, "\(usage)")
        let fine = try await spawnBinary(["submit", "--help"])
        #expect(fine.exitStatus == 0 && fine.stdout.contains("--input <json|@path|->"), "\(fine)")
    }

    @Test func watchStopsQuietlyWhenStdoutBreaks() async throws {
        let id = try SessionID("watched")
        let dispatcher = Dispatcher(connection: conn, keys: keys, agents: .builtIn)
        let config = Worker.Configuration(workerID: "cli-\(UUID().uuidString.prefix(8))", concurrency: 1, blockTimeout: .milliseconds(200))
        try await withRunningWorker(keys: keys, agents: .builtIn, configuration: config) {
            _ = try await dispatcher.submit(Submission(session: id, agent: "counter", input: 1))
            let done = try await eventually(timeout: .seconds(20)) {
                try await SessionStore(connection: conn, keys: keys).session(id)?.steps == 1
            }
            try #require(done)
        }
        // A step queued with no worker: the session is not settled, so a watch would follow it forever.
        _ = try await dispatcher.submit(Submission(session: id, input: 2))
        let start = ContinuousClock.now
        let r = try await spawnBinary(["watch", "watched"] + common, stdout: .brokenPipe, timeout: .seconds(15))
        #expect(r.signal == nil && r.exitStatus == 74, "\(r)")
        #expect(ContinuousClock.now - start < .seconds(10), "stopped at the first failed write")
        #expect(r.stderr.isEmpty, "quiet: \(r.stderr)")

        // `watch --from <last but one> | head -n 1` on the idle session: the watch prints the last
        // event, head quits after it, and no new event ever comes. The watch still ends, within
        // about a second (its read timeout), without a write to fail on.
        let events = try await SessionStore(connection: conn, keys: keys).events(of: id, after: "0", count: 1000)
        try #require(events.count >= 2)
        let from = events[events.count - 2].id
        let binary = try #require(TestRedis.binary)
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("stepwise-head-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let pidFile = dir.appendingPathComponent("pid").path
        let statusFile = dir.appendingPathComponent("status").path
        let script = #"{ "$0" watch watched "$@" & echo $! > "$PID_FILE"; wait $!; echo $? > "$STATUS_FILE"; } | head -n 1"#
        let shell = try await spawn(
            "/bin/sh", ["-c", script, binary, "--from", from] + common, environment: ["PID_FILE": pidFile, "STATUS_FILE": statusFile],
            timeout: .seconds(10))
        if shell.exitStatus == nil, let text = try? String(contentsOfFile: pidFile, encoding: .utf8),
            let pid = Int32(text.trimmingCharacters(in: .whitespacesAndNewlines))
        {
            kill(pid, SIGKILL)  // the shell timed out (and was killed): do not leave the watch behind
        }
        #expect(shell.exitStatus == 0, "the pipeline ended after its reader quit: \(shell)")
        let status = (try? String(contentsOfFile: statusFile, encoding: .utf8))?.trimmingCharacters(in: .whitespacesAndNewlines)
        #expect(status == "74", "watch exit status \(status ?? "nil") (128+n is a signal)")
        #expect(shell.stdout.contains("step.") && shell.stdout.split(separator: "\n").count == 1, "head printed one event: \(shell.stdout)")
    }

    @Test func inputFromAFileAndFromStandardInput() async throws {
        let value: JSONValue = ["topic": "Swift", "list": [1, 2.5, "é\u{1F600}"], "nested": ["a": .null]]
        // Pretty-printed, with a trailing newline, as an editor would save it.
        let text = "{\n  \"topic\": \"Swift\",\n  \"list\": [1, 2.5, \"é😀\"],\n  \"nested\": {\"a\": null}\n}\n"
        let file = FileManager.default.temporaryDirectory.appendingPathComponent("stepwise-input-\(UUID().uuidString).json")
        try Data(text.utf8).write(to: file)
        defer { try? FileManager.default.removeItem(at: file) }

        let fromFile = try await spawnBinary(["submit", "--session", "in-file", "--agent", "echo", "--input", "@" + file.path] + common)
        #expect(fromFile.exitStatus == 0, "\(fromFile.stderr)")
        let fromStdin = try await spawnBinary(
            ["submit", "--session", "in-stdin", "--agent", "echo", "--input", "-"] + common, stdin: Array(text.utf8))
        #expect(fromStdin.exitStatus == 0, "\(fromStdin.stderr)")
        let inline = try await spawnBinary(["submit", "--session", "in-inline", "--agent", "echo", "--input", value.jsonString] + common)
        #expect(inline.exitStatus == 0, "\(inline.stderr)")
        for session in ["in-file", "in-stdin", "in-inline"] {
            let number = try await onlyJob(session)?.split(separator: ":").last.map(String.init) ?? "-"
            let stored = try await conn.send(["HGET", RedisArgument(keys.jobs(try SessionID(session))), RedisArgument(number)]).string
            #expect(try stored.map { try JSONValue(parsing: $0) } == value, "\(session): \(stored ?? "nil")")
        }

        // Options from a file, with --option pairs over them.
        let optionsFile = FileManager.default.temporaryDirectory.appendingPathComponent("stepwise-options-\(UUID().uuidString).json")
        try Data(#"{"model": "small", "ms": 5}"#.utf8).write(to: optionsFile)
        defer { try? FileManager.default.removeItem(at: optionsFile) }
        let opts = try await spawnBinary(
            ["submit", "--session", "in-opts", "--agent", "echo", "--options", "@" + optionsFile.path, "--option", "ms=7"] + common)
        #expect(opts.exitStatus == 0, "\(opts.stderr)")
        let stored = try await conn.send(["HGET", RedisArgument(keys.session(try SessionID("in-opts"))), "options"]).string
        #expect(stored.flatMap { try? JSONValue(parsing: $0) } == ["model": "small", "ms": 7], "\(stored ?? "nil")")
    }

    @Test func badInputFilesAreOneClearLineAndWriteNothing() async throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("stepwise-bad-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        func file(_ name: String, _ bytes: [UInt8]) throws -> String {
            let path = dir.appendingPathComponent(name).path
            try Data(bytes).write(to: URL(fileURLWithPath: path))
            return path
        }
        let bigPath = try file("big.json", Array("\"\(String(repeating: "x", count: 500))\"".utf8))
        let cases: [([String], [UInt8]?, String)] = [
            (["--input", "@" + dir.appendingPathComponent("missing.json").path], nil, "No such file or directory"),
            (["--input", "@" + dir.path], nil, "Is a directory"),
            (["--input", "@"], nil, "needs a file path"),
            (["--input", "@" + (try file("latin1.json", [0x22, 0xE9, 0x22]))], nil, "not valid UTF-8"),
            (["--input", "@" + (try file("bad.json", Array("{\"a\":".utf8)))], nil, "not valid JSON"),
            (["--input", "-"], Array("[1,".utf8), "not valid JSON"),
            (["--input", "-"], nil, "not valid JSON"),
            // 502 bytes, compact too: over --max-input-bytes 200 ...
            (["--input", "@" + bigPath, "--max-input-bytes", "200"], nil, "over the limit of 200 bytes"),
            // ... and over 4 x 100 raw bytes: reading stops there.
            (["--input", "@" + bigPath, "--max-input-bytes", "100"], nil, "is over 400 bytes"),
            (["--input", "-", "--max-input-bytes", "100"], Array(repeating: 0x20, count: 100_000), "is over 400 bytes"),
            (["--input", "-", "--options", "-"], Array("{}".utf8), "both read standard input"),
            (["--options", "@" + (try file("array.json", Array("[1]".utf8)))], nil, "must be a JSON object"),
        ]
        for (args, stdin, expected) in cases {
            let r = try await spawnBinary(["submit", "--session", "bad-in", "--agent", "echo"] + args + common, stdin: stdin)
            #expect(r.signal == nil && r.exitStatus == 64, "\(args): \(r)")
            let first = r.stderr.split(separator: "\n").first.map(String.init) ?? ""
            #expect(first.contains(expected), "\(args): stderr \(r.stderr)")
        }
        #expect(try await namespaceKeys() == [], "nothing written to Redis")
    }

    @Test func badOwnersAndOptionsAreRefusedBeforeRedis() async throws {
        let cases: [([String], String)] = [
            (["--owner", ""], "--owner: owner is empty"),
            (["--owner", String(repeating: "o", count: 129)], "over the limit of 128 bytes"),
            (["--owner", "ann smith"], "U+20"),
            (["--owner", "ann/1"], "'/'"),
            (["--owner", "ann\u{7F}"], "U+7F"),
            (["--option", "=1"], "key=value"),
            (["--options", #"{"":1}"#], "empty key"),
            (["--options", "[1]"], "must be a JSON object"),
            (["--options", "{bad"], "not valid JSON"),
            (["--options", #"{"k":""# + String(repeating: "x", count: 64 * 1024) + #""}"#], "over the limit of 65536 bytes"),
            (["--option", "k=" + String(repeating: "x", count: 64 * 1024)], "over the limit of 65536 bytes"),
        ]
        for (args, expected) in cases {
            let r = try await spawnBinary(["submit", "--session", "bad-limits", "--agent", "echo"] + args + common)
            #expect(r.signal == nil && r.exitStatus == 64, "\(args.map { $0.prefix(40) }): \(r.exitStatus.map(String.init) ?? "signal")")
            let first = r.stderr.split(separator: "\n").first.map(String.init) ?? ""
            #expect(first.contains(expected), "\(args.map { $0.prefix(40) }): stderr \(r.stderr.prefix(300))")
        }
        // At the limits: accepted.
        let ok = try await spawnBinary(
            ["submit", "--session", "good-limits", "--agent", "echo", "--owner", "u_1.x@y:z-" + String(repeating: "o", count: 118)]
                + ["--options", #"{"k":""# + String(repeating: "x", count: 64 * 1024 - 8) + #""}"#] + common)
        #expect(ok.exitStatus == 0, "\(ok.stderr.prefix(300))")
        #expect(try await namespaceKeys().contains { $0.contains("{bad-limits}") } == false, "nothing written for the refused ones")
        #expect(try await jobCount("good-limits") == 1)
    }

    @Test func theEngineRefusesBadOwnersAndOptionsForEveryCaller() async throws {
        let dispatcher = Dispatcher(connection: conn, keys: keys, agents: .builtIn, configuration: .init(maxOptionsBytes: 100))
        let id = try SessionID("lib-limits")
        let bad: [(Submission, StepwiseError.Code)] = [
            (Submission(session: id, agent: "echo", owner: "a b"), .invalidOwner),
            (Submission(session: id, agent: "echo", owner: ""), .invalidOwner),
            (Submission(session: id, agent: "echo", options: ["": 1]), .invalidOptions),
            (Submission(session: id, agent: "echo", options: "text"), .invalidOptions),
            (Submission(session: id, agent: "echo", options: ["k": .string(String(repeating: "x", count: 100))]), .invalidOptions),
        ]
        for (submission, code) in bad {
            do {
                _ = try await dispatcher.submit(submission)
                Issue.record("\(submission) was accepted")
            } catch let error as StepwiseError {
                #expect(error.code == code, "\(error.message)")
            }
        }
        #expect(try await namespaceKeys() == [], "nothing written to Redis")
        // In a batch, the bad one gets its error and is not sent; the good one is enqueued.
        let batch = await dispatcher.submit([
            Submission(session: id, agent: "echo"), Submission(session: id, agent: "echo", owner: "a/b"),
        ])
        #expect((try? batch[0].get()) != nil)
        #expect(await stepwiseErrorCode { _ = try batch[1].get() } == .invalidOwner)
        #expect(try await jobCount("lib-limits") == 1)
        _ = try await conn.send(["DEL", RedisArgument(keys.inbox(id)), RedisArgument(keys.session(id)), RedisArgument(keys.jobs(id))])
        _ = try await dispatcher.submit(Submission(session: id, agent: "echo", owner: "ann@x", options: ["k": "v"]))
        #expect(try await jobCount("lib-limits") == 1)
    }
}
