import Foundation
import StepwiseAgents
import StepwiseCore
import StepwiseRedis
import StepwiseTesting
import Testing

/// Issue 11, point 3: `stepwise top`, driven under tmux (a real terminal) and read back with
/// `capture-pane`, and `--once --json` for scripts.
@Suite(
    "stepwise top",
    .enabled(if: TestRedis.url != nil && TestRedis.binary != nil, "needs STEPWISE_TEST_REDIS_URL and STEPWISE_BIN: run `make test`"),
    .timeLimit(.minutes(2)),
    .serialized
)
struct TopCommandTests {
    /// A pool with one worker: a step hanging (running now), a dead letter, and a few steps done.
    private func scene(_ name: String) async throws -> (KeySpace, WorkerPool, RedisConnection) {
        let keys = try TestRedis.uniqueKeys()
        let conn = try TestRedis.connection(name: name)
        let pool = WorkerPool(binary: try #require(TestRedis.binary), redisURL: try #require(TestRedis.url), namespace: keys.namespace)
        try pool.start(id: "\(name)-w1", concurrency: 4)
        let dispatcher = Dispatcher(connection: conn, keys: keys, agents: .builtIn)
        _ = try await dispatcher.submit(
            [
                Submission(session: try SessionID("top-hang"), agent: "fault", input: ["fault": "hang", "ms": 30_000]),
                Submission(session: try SessionID("top-dead"), agent: "fault", input: ["fault": "throw"], maxAttempts: 1),
            ] + (1...5).map { Submission(session: try SessionID("top-ok"), agent: "counter", input: .int($0)) }
        ).receipts()
        let store = SessionStore(connection: conn, keys: keys)
        let settled = await eventually(timeout: .seconds(20), interval: .milliseconds(100)) {
            let ok = (try? await store.session(try SessionID("top-ok")))??.steps == 5
            let dead = (try? await DeadLetterQueue(connection: conn, keys: keys).list())?.count == 1
            return ok && dead
        }
        #expect(settled, "the scene is set: \(pool.logs())")
        return (keys, pool, conn)
    }

    private func teardown(_ keys: KeySpace, _ pool: WorkerPool, _ conn: RedisConnection) async throws {
        let dispatcher = Dispatcher(connection: conn, keys: keys, agents: .builtIn)
        _ = try? await dispatcher.cancel(try SessionID("top-hang"), reason: "test over")
        _ = await pool.stopAll()
    }

    @Test func onceJSONIsOneSnapshot() async throws {
        let (keys, pool, conn) = try await scene("topjson")
        defer { pool.killAll() }
        var snapshot: JSONValue = .null
        // The worker's report arrives within a second of the scene.
        let seen = await eventually(timeout: .seconds(10), interval: .milliseconds(200)) {
            guard
                let r = try? await runBinary(
                    ["top", "--once", "--json", "--interval", "0.2", "--redis", TestRedis.url ?? "", "--namespace", keys.namespace]),
                r.status == 0, let json = try? JSONValue(parsing: r.stdout)
            else { return false }
            snapshot = json
            return json["sessionsRunning"]?.arrayValue?.count == 1 && json["workers"]?.arrayValue?.first?["alive"] == true
        }
        #expect(seen, "\(snapshot)")
        #expect(snapshot["committed"]?.intValue == 5)
        #expect(snapshot["queues"]?["dead"]?.intValue == 1)
        #expect(snapshot["queues"]?["ready"]?.intValue == 0)
        let workers = snapshot["workers"]?.arrayValue ?? []
        #expect(workers.count == 1)
        #expect(workers.first?["slots"]?.intValue == 4 && workers.first?["busy"]?.intValue == 1 && workers.first?["alive"] == true)
        #expect(snapshot["sessionsRunning"]?.arrayValue?.first?["session"]?.stringValue == "top-hang")
        #expect(snapshot["sessionsRunning"]?.arrayValue?.first?["agent"]?.stringValue == "fault")
        let failures = snapshot["recentFailures"]?.arrayValue ?? []
        #expect(failures.contains { $0["kind"]?.stringValue == "dead" && $0["session"]?.stringValue == "top-dead" }, "\(failures)")
        // The 5 counter steps took well under a second each: the latency percentiles say so.
        let p99 = snapshot["latencySeconds"]?["p99"]?.doubleValue ?? -1
        #expect(p99 >= 0 && p99 < 1, "\(snapshot["latencySeconds"] ?? .null)")
        #expect(snapshot["stepsPerSecond"]?.doubleValue != nil)
        try await teardown(keys, pool, conn)
    }

    @Test func badUseIsAUsageError() async throws {
        // --json without --once, and the live view without a terminal (stdin is /dev/null here).
        for args in [["top", "--json"], ["top"], ["top", "--once", "--interval", "0"]] {
            let r = try await runBinary(args + ["--redis", try #require(TestRedis.url)])
            #expect(r.status == 64, "\(args): \(r.stderr)")
        }
    }

    /// tmux runs `top` on a 120x40 terminal; capture-pane reads what a person would see.
    @Test func liveViewUnderTmuxRefreshesInPlaceAndQuitsCleanly() async throws {
        let (keys, pool, conn) = try await scene("toptmux")
        defer { pool.killAll() }
        let socket = "stepwise-top-\(UUID().uuidString.prefix(8))"
        // A ChildProcess (posix_spawn, reaped with waitpid), output captured in a file: the tmux
        // client forks the server, which must not hold up the client's end.
        func tmux(_ args: [String]) async throws -> (status: Int32, stdout: String, stderr: String) {
            let client = try ChildProcess(
                binary: "/usr/bin/tmux", arguments: ["-L", socket, "-f", "/dev/null"] + args, environment: ["TERM": "xterm-256color"])
            var status = await client.wait(timeout: .seconds(10))
            if status == nil { status = await client.stop(timeout: .seconds(2)) }
            defer { try? FileManager.default.removeItem(atPath: client.logPath) }
            return (status ?? -1, client.output, "")
        }
        defer {
            // Whatever happened, the tmux server (and the top it runs) goes away.
            let kill = Process()
            kill.executableURL = URL(fileURLWithPath: "/usr/bin/env")
            kill.arguments = ["tmux", "-L", socket, "kill-server"]
            kill.standardError = FileHandle.nullDevice
            try? kill.run()
            kill.waitUntilExit()
        }
        let binary = try #require(TestRedis.binary)
        let url = try #require(TestRedis.url)
        for quitKey in ["q", "C-c"] {
            // After top exits: its status, and whether the terminal is back in canonical mode with echo.
            let command =
                "'\(binary)' top --interval 0.3 --redis '\(url)' --namespace \(keys.namespace); echo TOP-EXITED=$?; "
                + "stty -a | tr ' ' '\\n' | grep -x -e icanon -e -icanon -e echo -e -echo | tr '\\n' ' '; echo; sleep 60"
            let started = try await tmux(["new-session", "-d", "-s", "top", "-x", "120", "-y", "40", command])
            #expect(started.status == 0, "\(started.stderr)")
            var screen = ""
            let shown = await eventually(timeout: .seconds(15), interval: .milliseconds(200)) {
                screen = (try? await tmux(["capture-pane", "-p", "-t", "top"]))?.stdout ?? ""
                return screen.contains("RUNNING NOW (1)") && screen.contains("top-hang") && screen.contains("top-dead")
            }
            #expect(shown, "screen:\n\(screen)")
            let lines = screen.split(separator: "\n", omittingEmptySubsequences: false)
            #expect(lines.first?.hasPrefix("stepwise top - ") == true, "the view starts at the top-left corner:\n\(screen)")
            #expect(screen.contains("WORKERS (1 alive of 1)") && screen.contains("toptmux-w1"))
            #expect(screen.contains("steps/s") && screen.contains("latency p50"))
            #expect(screen.contains("dead") && screen.contains("dead 1"))
            // Refreshing in place: the header's clock moves on while the view stays at the top,
            // with exactly one header on the screen (nothing scrolled).
            let firstHeader = lines.first.map(String.init) ?? ""
            var later = ""
            let moved = await eventually(timeout: .seconds(5), interval: .milliseconds(200)) {
                later = (try? await tmux(["capture-pane", "-p", "-t", "top"]))?.stdout ?? ""
                return later.split(separator: "\n").first.map(String.init) != firstHeader
            }
            #expect(moved, "the header refreshes:\n\(later)")
            #expect(later.components(separatedBy: "stepwise top - ").count == 2, "one header:\n\(later)")
            #expect(later.split(separator: "\n").first?.hasPrefix("stepwise top - ") == true)

            _ = try await tmux(["send-keys", "-t", "top", quitKey])
            var after = ""
            let exited = await eventually(timeout: .seconds(10), interval: .milliseconds(200)) {
                after = (try? await tmux(["capture-pane", "-p", "-t", "top"]))?.stdout ?? ""
                // Its status, then the terminal's modes, which the shell prints just after.
                return after.contains("TOP-EXITED=") && after.contains("icanon")
            }
            #expect(exited, "\(quitKey) quits:\n\(after)")
            #expect(after.contains("TOP-EXITED=0"), "\(after)")
            // The alternate screen is gone (the view's lines are not on the normal screen), and
            // the terminal has its line editing and echo back.
            #expect(!after.contains("WORKERS ("), "\(after)")
            #expect(after.contains("icanon echo") && !after.contains("-icanon") && !after.contains("-echo"), "\(after)")
            _ = try await tmux(["kill-session", "-t", "top"])
        }
        try await teardown(keys, pool, conn)
    }
}
