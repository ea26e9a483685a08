import Foundation
import StepwiseCore
import StepwiseRedis
import StepwiseTesting
import Testing

@Suite(
    "stepwise loadtest, run as the built binary",
    .enabled(if: TestRedis.url != nil && TestRedis.binary != nil, "needs STEPWISE_TEST_REDIS_URL and STEPWISE_BIN: run `make test`"),
    .timeLimit(.minutes(3)),
    .serialized
)
struct LoadTestTests {
    /// Keys left under `pattern` (bounded SCAN).
    private func keys(matching pattern: String, conn: RedisConnection) async throws -> [String] {
        var found: [String] = []
        var cursor = "0"
        for _ in 0..<10_000 {
            let reply = try await conn.send(["SCAN", RedisArgument(cursor), "MATCH", RedisArgument(pattern), "COUNT", 1000])
            let parts = try #require(reply.array)
            cursor = parts[0].string ?? "0"
            found += (parts[1].array ?? []).compactMap(\.string)
            if cursor == "0" { break }
        }
        return found
    }

    @Test func killingWorkersLosesNothingAndWritesResultsAndChart() async throws {
        let url = try #require(TestRedis.url)
        let ns = try TestRedis.uniqueKeys().namespace
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("stepwise-lt-\(UUID().uuidString)/out").path
        defer { try? FileManager.default.removeItem(atPath: (dir as NSString).deletingLastPathComponent) }

        // 20 sessions x 10 steps of 100 ms on 4 slots per worker: about 5 s with 1 worker, so
        // kill -9s land while steps are in flight. Heartbeat 1 s and reaper 0.2 s (0.5 s tick)
        // recover a killed worker's steps within 1.5 s, well inside the 2.5 s kill period.
        let r = try await runBinary(
            [
                "loadtest", "--redis", url, "--namespace", ns, "--workers", "1,2", "--sessions", "20", "--steps", "10",
                "--step-ms", "100", "--concurrency", "4", "--kill-every", "2.5", "--heartbeat-ttl", "1", "--reaper-interval", "0.2",
                "--time-limit", "60", "--out", dir,
            ], timeout: .seconds(120))
        #expect(r.status == 0, "stdout: \(r.stdout)\nstderr: \(r.stderr.suffix(2000))")

        let results = try JSONValue(parsing: try String(contentsOfFile: dir + "/results.json", encoding: .utf8))
        #expect(results["ok"] == true)
        #expect(results["parameters"]?["sessions"]?.intValue == 20)
        #expect(results["machine"]?["cores"]?.intValue ?? 0 >= 1)
        #expect(results["machine"]?["redisVersion"]?.stringValue?.isEmpty == false)
        let rounds = try #require(results["rounds"]?.arrayValue)
        #expect(rounds.map { $0["workers"]?.intValue } == [1, 2])
        var kills = 0
        for round in rounds {
            #expect(round["steps"]?.intValue == 200)
            #expect(round["errors"]?.arrayValue?.isEmpty == true, "\(round)")
            for check in ["orderViolations", "duplicates", "missing", "incompleteStreams", "failedSteps"] {
                #expect(round["checks"]?[check]?.intValue == 0, "\(check): \(round)")
            }
            #expect((round["stepsPerSecond"]?.doubleValue ?? 0) > 0)
            #expect(round["latencyMs"]?["p99"]?.intValue != nil)
            kills += round["kills"]?.intValue ?? 0
        }
        #expect(kills >= 2, "the 1-worker round alone takes over 5 s: \(rounds)")
        #expect(rounds.contains { ($0["recoveredSteps"]?.intValue ?? 0) > 0 }, "some steps were recovered from killed workers")

        let svg = try String(contentsOfFile: dir + "/chart.svg", encoding: .utf8)
        #expect(svg.hasPrefix("<svg"))
        #expect(svg.contains("worker processes") && svg.hasSuffix("</svg>\n"))

        let conn = try TestRedis.connection()
        #expect(try await keys(matching: ns + "-lt-*", conn: conn).isEmpty, "each round's namespace is deleted")
    }

    /// The one JSON row a one-round `loadtest --json` prints.
    private func onlyRow(_ stdout: String) throws -> JSONValue {
        let lines = stdout.split(separator: "\n").filter { $0.hasPrefix("{") }
        try #require(lines.count == 1, "one JSON row expected, got: \(stdout)")
        return try JSONValue(parsing: String(lines[0]))
    }

    /// Every chaos check of a row is zero, and the settle time is within its bound.
    private func expectChaosChecksHold(_ chaos: JSONValue?, _ context: String) {
        for check in ["lost", "appliedTwice", "reordered", "stuck", "staleCommitsAccepted", "deadLetters"] {
            #expect(chaos?["checks"]?[check]?.intValue == 0, "\(check): \(context)")
        }
        let settle = chaos?["settle"]?["settleSeconds"]?.doubleValue
        let bound = chaos?["settle"]?["bound"]?["seconds"]?.doubleValue
        #expect(
            settle != nil && bound != nil && settle! <= bound!,
            "settle \(String(describing: settle)) within \(String(describing: bound)): \(context)")
    }

    @Test func chaosInjectsEveryKindOfFaultAndTheLedgerHolds() async throws {
        // Its own redis-server (--start-redis), so redis-restart and oom never touch the shared
        // test server. 20 sessions x 20 steps submitted at 30 steps/s: faults for about 13 s,
        // a gap of 0.75-2.25 s each (seed 7), so the first shuffled bag of all six kinds is used
        // up well before the submits end.
        let r = try await runBinary(
            [
                "loadtest", "--start-redis", "--workers", "3", "--sessions", "20", "--steps", "20", "--step-ms", "20", "--rate", "30",
                "--chaos", "kill,pause,term,client-kill,oom,redis-restart", "--chaos-every", "1.5", "--seed", "7", "--time-limit", "60",
                "--json",
            ], timeout: .seconds(100))
        let context = "exit \(r.status)\nstdout: \(r.stdout)\nstderr: \(r.stderr.suffix(3000))"
        #expect(r.status == 0, "\(context)")
        let row = try onlyRow(r.stdout)
        #expect(row["steps"]?.intValue == 400, "\(context)")
        #expect(row["errors"]?.arrayValue?.isEmpty == true, "\(context)")
        for check in ["orderViolations", "duplicates", "missing", "incompleteStreams", "failedSteps"] {
            #expect(row["checks"]?[check]?.intValue == 0, "\(check): \(context)")
        }
        let chaos = try #require(row["chaos"], "\(context)")
        #expect(chaos["seed"]?.stringValue == "7")
        for kind in ["kill", "pause", "term", "client-kill", "oom", "redis-restart"] {
            #expect((chaos["injected"]?[kind]?.intValue ?? 0) > 0, "\(kind) injected: \(context)")
        }
        let recoveries = chaos["recoveries"]
        #expect((recoveries?["workersRestarted"]?.intValue ?? 0) >= 2, "a kill and a term each start a worker: \(context)")
        #expect((recoveries?["pausesResumed"]?.intValue ?? 0) >= 1, "\(context)")
        #expect((recoveries?["cleanTerminations"]?.intValue ?? 0) >= 1, "\(context)")
        #expect((recoveries?["connectionsKilled"]?.intValue ?? 0) >= 1, "\(context)")
        #expect((recoveries?["redisRestarts"]?.intValue ?? 0) >= 1, "\(context)")
        #expect((recoveries?["oomWindows"]?.intValue ?? 0) >= 1, "\(context)")
        #expect(chaos["errors"]?.arrayValue?.isEmpty == true, "\(context)")
        #expect((chaos["stats"]?["committed"]?.intValue ?? 0) >= 400, "\(context)")
        expectChaosChecksHold(chaos, context)
    }

    @Test func underFrequentKillsNothingIsDeadLetteredAndEverySessionFinishes() async throws {
        let url = try #require(TestRedis.url)
        let ns = try TestRedis.uniqueKeys().namespace
        // kill -9 every 0.1-0.3 s for about 20 s, far faster than the 2 s heartbeat TTL, while
        // 100 ms steps run: a step is often in flight on several killed workers in a row. The
        // counter agent never fails, so none may be dead-lettered as poison (a bystander of
        // someone else's kill), and every session must finish once the kills stop.
        let r = try await runBinary(
            [
                "loadtest", "--redis", url, "--namespace", ns, "--workers", "2", "--sessions", "10", "--steps", "20", "--step-ms", "100",
                "--concurrency", "4", "--rate", "10", "--chaos", "kill", "--chaos-every", "0.2", "--seed", "1", "--time-limit", "60",
                "--json",
            ], timeout: .seconds(100))
        let context = "exit \(r.status)\nstdout: \(r.stdout)\nstderr: \(r.stderr.suffix(3000))"
        #expect(r.status == 0, "\(context)")
        let row = try onlyRow(r.stdout)
        #expect(row["errors"]?.arrayValue?.isEmpty == true, "\(context)")
        let chaos = try #require(row["chaos"], "\(context)")
        #expect((chaos["injected"]?["kill"]?.intValue ?? 0) >= 40, "\(context)")
        expectChaosChecksHold(chaos, context)
        let conn = try TestRedis.connection()
        #expect(try await keys(matching: ns + "-lt-*", conn: conn).isEmpty, "the round's namespace is deleted")
    }

    @Test func externalModeCountsOnlyItsOwnSessionsOnAUsedNamespace() async throws {
        let url = try #require(TestRedis.url)
        let binary = try #require(TestRedis.binary)
        let keys = try TestRedis.uniqueKeys()
        let conn = try TestRedis.connection()
        // A namespace already in use: a session of someone else, and a large committed counter.
        let other = try SessionID("lt0")
        _ = try await conn.send(["HSET", RedisArgument(keys.stats), "committed", 1_000_000])
        let worker = try ChildProcess(
            binary: binary, arguments: ["worker", "--redis", url, "--namespace", keys.namespace, "--concurrency", "4"])
        defer { if worker.isRunning { worker.signal(SIGKILL) } }
        let submit = try await runBinary([
            "submit", "--redis", url, "--namespace", keys.namespace, "--session", other.rawValue, "--agent", "counter", "--wait",
        ])
        #expect(submit.status == 0, "\(submit.stderr)")

        let r = try await runBinary(
            [
                "loadtest", "--redis", url, "--namespace", keys.namespace, "--external", "--workers", "1", "--sessions", "10", "--steps",
                "3", "--json",
            ],
            timeout: .seconds(60))
        #expect(r.status == 0, "stdout: \(r.stdout)\nstderr: \(r.stderr)")
        let row = try JSONValue(parsing: String(r.stdout.split(separator: "\n").last ?? ""))
        #expect(row["steps"]?.intValue == 30 && row["errors"]?.arrayValue?.isEmpty == true, "\(row)")
        #expect(row["checks"]?["missing"]?.intValue == 0)

        // The other session is untouched; the run's own sessions are gone.
        #expect(try await conn.send(["HGET", RedisArgument(keys.session(other)), "steps"]).int == 1)
        #expect(try await self.keys(matching: keys.prefix + "s:{lt-*", conn: conn).isEmpty)
        #expect(await worker.stop() == 0)
    }

    @Test(arguments: [
        (["loadtest", "--external", "--kill-every", "1"], "--kill-every"),
        (["loadtest", "--workers", "1,x"], "--workers"),
        (["loadtest", "--agent", "quiz"], "--agent"),
        (["loadtest", "--agent", "echo", "--step-ms", "5"], "--step-ms"),
        (["loadtest", "--out", "/proc/version"], "--out"),
        (["loadtest", "--memory", "0"], "--memory"),
        (["loadtest", "--kill-every", "0"], "--kill-every"),
        (["loadtest", "--chaos", "kill,nope", "--rate", "5"], "unknown fault 'nope'"),
        (["loadtest", "--chaos", " , ", "--rate", "5"], "--chaos needs at least one fault"),
        (["loadtest", "--chaos", "kill"], "--chaos-until"),
        (["loadtest", "--chaos", "redis-restart", "--rate", "5"], "--start-redis"),
        (["loadtest", "--chaos", "kill", "--rate", "5", "--external", "--workers", "1"], "--external"),
        (["loadtest", "--chaos", "kill", "--rate", "5", "--kill-every", "3"], "--kill-every"),
        (["loadtest", "--chaos", "kill", "--rate", "5", "--chaos-every", "0"], "--chaos-every"),
        (["loadtest", "--seed", "3"], "--chaos"),
        (["loadtest", "--start-redis", "--redis", "redis://127.0.0.1:1"], "--start-redis"),
    ])
    func badLoadTestFlagsGetOneClearLine(_ args: [String], _ expected: String) async throws {
        let r = try await runBinary(args)
        #expect(r.status != 0)
        let first = r.stderr.split(separator: "\n").first.map(String.init) ?? ""
        #expect(first.contains(expected), "stderr: \(r.stderr)")
    }
}
