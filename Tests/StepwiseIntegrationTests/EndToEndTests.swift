import Foundation
import StepwiseAgents
import StepwiseCore
import StepwiseRedis
import StepwiseTesting
import Testing

@Suite(
    "worker processes of the built binary, end to end",
    .enabled(if: TestRedis.url != nil && TestRedis.binary != nil, "needs STEPWISE_TEST_REDIS_URL and STEPWISE_BIN: run `make test`"),
    .timeLimit(.minutes(5)),
    .serialized
)
struct EndToEndTests {
    @Test func threeWorkerProcessesRun200SessionsOf20CounterSteps() async throws {
        let keys = try TestRedis.uniqueKeys()
        let conn = try TestRedis.connection()
        let binary = try #require(TestRedis.binary)
        let url = try #require(TestRedis.url)
        let sessions = try (0..<200).map { try SessionID("e2e-\($0)") }
        let steps = 20

        var workers: [ChildProcess] = []
        for i in 0..<3 {
            workers.append(
                try ChildProcess(
                    binary: binary,
                    arguments: ["worker", "--redis", url, "--namespace", keys.namespace, "--concurrency", "8", "--worker-id", "e2e-\(i)"]))
        }
        defer { for w in workers where w.isRunning { w.signal(SIGKILL) } }

        // Submit while the workers run: step by step across all sessions, so sessions interleave.
        let dispatcher = Dispatcher(connection: conn, keys: keys, agents: .builtIn)
        for step in 0..<steps {
            let batch = sessions.map {
                Submission(session: $0, agent: "counter", input: ["n": .int(step), "s": .string($0.rawValue)])
            }
            let receipts = try await dispatcher.submit(batch).receipts()
            #expect(receipts.allSatisfy { $0.enqueued })
        }

        let stepKeys = sessions.map { ["HGET", RedisArgument(keys.session($0)), "steps"] as [RedisArgument] }
        let done = await eventually(timeout: .seconds(180), interval: .milliseconds(200)) {
            guard let replies = try? await conn.pipeline(stepKeys) else { return false }
            return replies.allSatisfy { $0.int == steps }
        }
        #expect(done, "all 4000 steps committed")

        for w in workers { #expect(await w.stop() == 0, "worker exits 0 on SIGTERM: \(w.output.suffix(500))") }

        let store = SessionStore(connection: conn, keys: keys)
        for id in sessions {
            let s = try #require(try await store.session(id))
            let inputs = s.state["inputs"]?.arrayValue ?? []
            #expect(inputs.map { $0["n"]?.intValue } == Array(0..<steps).map { Optional($0) }, "session \(id) inputs in order")
            #expect(inputs.allSatisfy { $0["s"]?.stringValue == id.rawValue })
            #expect(s.state["count"]?.intValue == steps)
            #expect(s.version == steps && s.steps == steps && s.queued == 0)
            let completed = try await store.events(of: id, after: "0", count: 10_000).filter(\.isStepEnd)
            #expect(completed.allSatisfy { $0.type == "step.completed" })
            #expect(completed.map(\.step) == Array(1...steps), "exactly one step.completed per step, in order")
        }
        let leftovers = try await conn.send(["KEYS", RedisArgument(keys.prefix + "inflight:*")])
        for key in leftovers.array ?? [] {
            #expect(try await conn.send(["LLEN", RedisArgument(key.string ?? "")]).int == 0, "in-flight list \(key) is empty")
        }
        #expect(try await conn.send(["LLEN", RedisArgument(keys.ready)]).int == 0)
        #expect(try await conn.send(["HGET", RedisArgument(keys.stats), "committed"]).int == sessions.count * steps)
    }

    @Test func submitWaitWatchAndStatusFromTheCommandLine() async throws {
        let keys = try TestRedis.uniqueKeys()
        let binary = try #require(TestRedis.binary)
        let url = try #require(TestRedis.url)
        let common = ["--redis", url, "--namespace", keys.namespace]
        let worker = try ChildProcess(binary: binary, arguments: ["worker", "--concurrency", "2"] + common)
        defer { if worker.isRunning { worker.signal(SIGKILL) } }

        let submit = try await runBinary(
            ["submit", "--session", "cli1", "--agent", "quiz", "--input", #"{"topic":"Swift","questions":2}"#, "--wait", "--json"] + common)
        #expect(submit.status == 0, "\(submit.stderr)")
        let lines = submit.stdout.split(separator: "\n")
        #expect(lines.first?.contains(#""job":"cli1:"#) == true)
        #expect(lines.last?.contains(#""type":"step.completed""#) == true)

        let watch = try await runBinary(["watch", "cli1", "--json"] + common, timeout: .seconds(30))
        #expect(watch.status == 0)
        let events = watch.stdout.split(separator: "\n").map { try? JSONValue(parsing: String($0)) }
        #expect(events.filter { $0?["type"]?.stringValue == "step.completed" }.count == 4, "plan, 2 questions, summary")
        // Resume from the last-but-one event: only the last one is printed again.
        let ids = events.compactMap { $0?["id"]?.stringValue }
        let resumed = try await runBinary(["watch", "cli1", "--json", "--from", ids[ids.count - 2]] + common)
        #expect(resumed.stdout.split(separator: "\n").count == 1)

        let status = try await runBinary(["status", "cli1", "--json"] + common)
        let s = try JSONValue(parsing: status.stdout)
        #expect(s["session"] == "cli1" && s["agent"] == "quiz" && s["status"] == "done")
        #expect(s["version"]?.intValue == 4 && s["steps"]?.intValue == 4)
        #expect(s["state"]?["questions"]?.arrayValue?.count == 2)

        let dup1 = try await runBinary(
            ["submit", "--session", "cli2", "--agent", "echo", "--input", "1", "--idempotency-key", "k", "--json"] + common)
        let dup2 = try await runBinary(
            ["submit", "--session", "cli2", "--agent", "echo", "--input", "2", "--idempotency-key", "k", "--json"] + common)
        #expect(try JSONValue(parsing: dup1.stdout)["job"] == JSONValue(parsing: dup2.stdout)["job"])
        #expect(try JSONValue(parsing: dup2.stdout)["enqueued"] == false)

        let queue = try await runBinary(["queue", "--json"] + common)
        #expect(try JSONValue(parsing: queue.stdout)["workers"]?.arrayValue?.count == 1)
        let list = try await runBinary(["sessions"] + common)
        #expect(list.stdout.contains("cli1"))
        #expect(await worker.stop() == 0)
    }

    @Test(arguments: [
        (["submit", "--session", "a{b}c", "--agent", "echo"], "invalid session id"),
        (["submit", "--session", "*", "--agent", "echo"], "invalid session id"),
        (["submit", "--session", "x\r\nFLUSHALL", "--agent", "echo"], "invalid session id"),
        (["submit", "--agent", "nope"], "unknown"),
        (["submit", "--agent", "echo", "--input", "{bad"], "not valid JSON"),
        (["submit", "--agent", "echo", "--option", "novalue"], "key=value"),
        (["worker", "--concurrency", "0"], "--concurrency"),
        (["watch", "s", "--from", "yesterday"], "--from"),
        (["status", "s", "--redis", "http://x"], "--redis"),
        (["sessions", "--limit", "0"], "--limit"),
        // A 1 MB id cannot pass through argv (128 KiB per argument); SessionIDTests covers it.
        (["submit", "--session", String(repeating: "x", count: 100_000), "--agent", "echo"], "invalid session id"),
        (
            ["submit", "--agent", "echo", "--max-input-bytes", "100", "--input", "\"" + String(repeating: "y", count: 200) + "\""],
            "over the limit"
        ),
        (["submit", "--agent", "echo", "--ttl", "0.5"], "--ttl"),
        (["submit", "--agent", "echo", "--max-attempts", "0"], "--max-attempts"),
        (["worker", "--max-attempts", "0"], "--max-attempts"),
        (["worker", "--retry-delay", "2", "--max-retry-delay", "1"], "--max-retry-delay"),
        (["worker", "--max-active-sessions", "-1"], "--max-active-sessions"),
        (["cancel", "a b"], "invalid session id"),
        (["touch", "s", "--ttl", "-1"], "--ttl"),
        (["dead", "show", "nojob"], "not a job id"),
        (["dead", "retry", "s:0"], "not a job id"),
        (["bogus"], "Unexpected argument"),
    ])
    func badInputGetsOneClearLineAndNonZeroExit(_ args: [String], _ expected: String) async throws {
        let r = try await runBinary(args)
        #expect(r.status != 0)
        let first = r.stderr.split(separator: "\n").first.map(String.init) ?? ""
        #expect(first.contains(expected), "stderr: \(r.stderr)")
    }

    @Test func aWorkerSignalledWhileStartingStillStopsCleanly() async throws {
        // SIGTERM at several moments of start-up (parsing, the Redis probe, registration): each
        // worker stops gracefully and exits 0, never killed by the signal's default action.
        let keys = try TestRedis.uniqueKeys()
        let binary = try #require(TestRedis.binary)
        let url = try #require(TestRedis.url)
        let delays = [100, 150, 200, 300, 400, 600]
        var workers: [ChildProcess] = []
        defer { for w in workers where w.isRunning { w.signal(SIGKILL) } }
        for (i, ms) in delays.enumerated() {
            let w = try ChildProcess(
                binary: binary, arguments: ["worker", "--redis", url, "--namespace", keys.namespace, "--worker-id", "early-\(i)"])
            workers.append(w)
            try await Task.sleep(for: .milliseconds(ms))
            w.signal(SIGTERM)
        }
        for (w, ms) in zip(workers, delays) {
            #expect(await w.wait(timeout: .seconds(15)) == 0, "SIGTERM after \(ms) ms: exit 0\n\(w.output.suffix(500))")
        }
    }

    @Test func childProcessesStartWithDefaultSignalSettings() async throws {
        // The test runner blocks or ignores some signals; its children must not inherit that.
        let child = try ChildProcess(binary: "/bin/sleep", arguments: ["30"])
        defer { child.signal(SIGKILL) }
        let status = try String(contentsOfFile: "/proc/\(child.pid)/status", encoding: .utf8)
        let fields = Dictionary(
            status.split(separator: "\n").compactMap { line -> (String, String)? in
                let kv = line.split(separator: ":", maxSplits: 1)
                return kv.count == 2 ? (String(kv[0]), kv[1].trimmingCharacters(in: .whitespaces)) : nil
            }, uniquingKeysWith: { a, _ in a })
        // Signals 1-31 (glibc keeps its own real-time signals 32 and 33 to itself).
        func standard(_ name: String) -> UInt64? { fields[name].flatMap { UInt64($0, radix: 16) }.map { $0 & 0x7fff_ffff } }
        #expect(standard("SigBlk") == 0, "nothing blocked: \(fields["SigBlk"] ?? "?")")
        #expect(standard("SigIgn") == 0, "nothing ignored: \(fields["SigIgn"] ?? "?")")
        #expect(await child.stop(timeout: .seconds(5)) == SIGTERM, "SIGTERM ends it: not blocked")
    }

    @Test func invalidUTF8ArgumentsAreRejectedBeforeAnythingRuns() async throws {
        let binary = try #require(TestRedis.binary)
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/bin/sh")
        // printf makes the raw byte 0xFF, which no Swift String can hold.
        process.arguments = ["-c", #""$0" submit --agent echo --input "$(printf '"\377"')" 2>&1"#, binary]
        let out = Pipe()
        process.standardOutput = out
        try process.run()
        process.waitUntilExit()
        let text = String(decoding: out.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        #expect(process.terminationStatus == 64)
        #expect(text.contains("not valid UTF-8"), "\(text)")
    }

    @Test func unreachableRedisIsOneLineNamingTheAddress() async throws {
        let r = try await runBinary(["status", "s1", "--redis", "redis://127.0.0.1:1"])
        #expect(r.status == 1)
        let lines = r.stderr.split(separator: "\n")
        #expect(lines.count == 1)
        #expect(lines.first?.contains("redis://127.0.0.1:1") == true)
        let w = try await runBinary(["worker", "--redis", "redis://127.0.0.1:1"])
        #expect(w.status == 1)
        #expect(w.stderr.contains("cannot reach Redis at redis://127.0.0.1:1"))
    }

    @Test func helpOnEveryCommand() async throws {
        for command in [
            ["worker"], ["submit"], ["watch"], ["status"], ["sessions"], ["queue"], ["loadtest"], ["cancel"], ["touch"],
            ["dead"], ["dead", "list"], ["dead", "show"], ["dead", "retry"], ["dead", "purge"],
        ] {
            let r = try await runBinary(command + ["--help"])
            #expect(r.status == 0)
            #expect(r.stdout.contains("USAGE"), "\(command) --help")
        }
    }
}
