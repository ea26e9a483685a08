import Foundation
import StepwiseCore
import StepwiseRedis
import StepwiseTesting
import Testing

/// Issue 12, points 5-7: logs carry no payloads, passwords are shown nowhere, each role's Redis
/// user (`deploy/users.acl`) can do its job and no more, and Redis is reachable over TLS through
/// stunnel or over a unix socket.
@Suite(
    "security: no payloads or passwords in output, least-privilege Redis users, TLS through stunnel",
    .enabled(if: TestRedis.url != nil && TestRedis.binary != nil, "needs STEPWISE_TEST_REDIS_URL and STEPWISE_BIN: run `make test`"),
    .serialized,
    .timeLimit(.minutes(3))
)
struct SecurityTests {
    /// The repository root, from this file's path.
    static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent()

    /// A marker no code or log line could contain by accident.
    static func marker(_ what: String) -> String { "SECRET-\(what)-" + UUID().uuidString.prefix(8) }

    static func temporaryDirectory() throws -> URL {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("stepwise-sec-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        return dir
    }

    // MARK: - passwords

    @Test func noHelpOrValidationErrorShowsThePassword() async throws {
        let password = Self.marker("PW")
        let env = ["REDIS_URL": "redis://worker:\(password)@127.0.0.1:6379"]
        let commands: [[String]] = [
            ["worker"], ["submit"], ["watch"], ["status"], ["sessions"], ["queue"], ["cancel"], ["touch"], ["dead", "list"],
            ["dead", "show"], ["loadtest"], [],
        ]
        for command in commands {
            let r = try await runBinary(command + ["--help"], environment: env)
            #expect(r.status == 0, "\(command) --help: \(r.stderr)")
            #expect(r.stdout.contains("REDIS_URL") || command.isEmpty, "\(command) --help names the variable")
            #expect(!(r.stdout + r.stderr).contains(password), "\(command) --help shows the password")
        }
        // Bad URLs, in the flag and in the environment: the error names the problem, masks the password.
        let bad: [(args: [String], env: [String: String])] = [
            (["status", "s", "--redis", "redis://worker:\(password)@host:abc"], [:]),
            (["status", "s"], ["REDIS_URL": "redis://worker:\(password)@host:99999"]),
            (["status", "s", "--redis", "rediss://:\(password)@host"], [:]),
            (["status", "s", "--redis", "redis://\(password)@host/x"], [:]),
            (["status", "s", "--redis", "redis://u:\(password)%zz@host"], [:]),
            (["status", "s", "--redis", password], [:]),
            // argument-parser quotes unexpected arguments: a URL among them is redacted too.
            (["status", "s", "y", "redis://worker:\(password)@host"], [:]),
            (["queue", "--json=redis://worker:\(password)@host"], [:]),
        ]
        for c in bad {
            let r = try await runBinary(c.args, environment: c.env)
            #expect(r.status == 64, "\(c.args): \(r.stderr)")
            #expect(r.stderr.contains("--redis") || r.stderr.contains("redis://worker:***@host"), "\(r.stderr)")
            #expect(!(r.stdout + r.stderr).contains(password), "the error shows the password: \(r.stderr)")
        }
        // A password file with a URL that carries a password too is refused, naming neither value.
        let dir = try Self.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: dir) }
        let file = dir.appendingPathComponent("pw")
        try Data((password + "\n").utf8).write(to: file)
        let both = try await runBinary(
            ["status", "s", "--redis", "redis://u:other-\(password)@127.0.0.1:1", "--redis-password-file", file.path])
        #expect(both.status == 64 && both.stderr.contains("password file"), "\(both.stderr)")
        #expect(!both.stderr.contains(password))
        for (content, expected) in [("", "is empty"), ("a\nb\n", "more than one line")] {
            try Data(content.utf8).write(to: file)
            let r = try await runBinary(["status", "s", "--redis-password-file", file.path])
            #expect(r.status == 64 && r.stderr.contains(expected), "\(r.stderr)")
        }
        let missing = try await runBinary(["status", "s"], environment: ["REDIS_PASSWORD_FILE": dir.path + "/nope"])
        #expect(missing.status == 64 && missing.stderr.contains("does not exist"), "\(missing.stderr)")
    }

    // MARK: - least-privilege users

    /// `deploy/users.acl` with a fresh password per role, plus a test-only `testroot` user for the
    /// server's own start and stop probes.
    struct ACLServer {
        var server: RedisServerProcess
        var passwords: [String: String]
        var directory: URL

        static func start() async throws -> ACLServer {
            let template = try String(contentsOf: SecurityTests.root.appendingPathComponent("deploy/users.acl"), encoding: .utf8)
            var text = template
            var passwords: [String: String] = [:]
            for role in ["worker", "gateway", "operator", "admin"] {
                let placeholder = "#CHANGE-ME-sha256-of-the-\(role)-password"
                #expect(template.contains(placeholder), "deploy/users.acl defines \(role) with a placeholder password")
                let password = SecurityTests.marker("PW-\(role)")
                passwords[role] = password
                text = text.replacingOccurrences(of: placeholder, with: ">" + password)
            }
            passwords["testroot"] = SecurityTests.marker("PW-root")
            text += "\nuser testroot on >\(passwords["testroot"]!) ~* &* +@all\n"
            let dir = try SecurityTests.temporaryDirectory()
            let aclFile = dir.appendingPathComponent("users.acl")
            try Data(text.utf8).write(to: aclFile)
            for (role, password) in passwords {
                try Data((password + "\n").utf8).write(to: dir.appendingPathComponent("\(role).pw"))
            }
            let server = try await RedisServerProcess.start(
                extraArguments: ["--aclfile", aclFile.path], probeUsername: "testroot", probePassword: passwords["testroot"])
            return ACLServer(server: server, passwords: passwords, directory: dir)
        }

        /// `--redis redis://<role>@host:port --redis-password-file <role>.pw`.
        func arguments(_ role: String) -> [String] {
            ["--redis", "redis://\(role)@127.0.0.1:\(server.port)", "--redis-password-file", passwordFile(role)]
        }

        func passwordFile(_ role: String) -> String { directory.appendingPathComponent("\(role).pw").path }

        func connection(_ role: String) -> RedisConnection {
            let endpoint = RedisEndpoint(
                address: .tcp(host: "127.0.0.1", port: server.port), username: role, password: passwords[role])
            return RedisConnection(configuration: .init(endpoint: endpoint, clientName: "test-\(role)"))
        }

        func stop() async {
            await server.stop()
            try? FileManager.default.removeItem(at: directory)
        }
    }

    @Test func eachRoleRunsItsRealPathsAndNoMore() async throws {
        let acl = try await ACLServer.start()
        defer { acl.server.terminate() }
        let binary = try #require(TestRedis.binary)

        // The worker user runs a worker (password from a file, trace-level logs).
        let worker = try ChildProcess(
            binary: binary,
            arguments: [
                "worker", "--concurrency", "2", "--worker-id", "acl-w", "--log-level", "trace", "--heartbeat-ttl", "2",
                "--reaper-interval", "0.5", "--retry-delay", "0.05",
            ] + acl.arguments("worker"))
        defer { if worker.isRunning { worker.signal(SIGKILL) } }

        // The gateway user submits (password in REDIS_URL), follows with XREAD BLOCK, touches and cancels.
        let gatewayEnv = ["REDIS_URL": "redis://gateway:\(acl.passwords["gateway"]!)@127.0.0.1:\(acl.server.port)"]
        let submit = try await runBinary(
            ["submit", "--session", "acl1", "--agent", "counter", "--input", #"{"n":1}"#, "--wait"], environment: gatewayEnv)
        #expect(submit.status == 0, "gateway submit --wait: \(submit.stdout) \(submit.stderr) worker: \(worker.output.suffix(2000))")
        #expect(submit.stdout.contains("step.completed"))
        let touch = try await runBinary(["touch", "acl1", "--ttl", "600"], environment: gatewayEnv)
        #expect(touch.status == 0, "gateway touch: \(touch.stderr)")
        let hang = try await runBinary(
            ["submit", "--session", "acl2", "--agent", "fault", "--input", #"{"fault":"hang","ms":30000}"#], environment: gatewayEnv)
        #expect(hang.status == 0, "\(hang.stderr)")
        let cancel = try await runBinary(["cancel", "acl2", "--reason", "test"], environment: gatewayEnv)
        #expect(cancel.status == 0, "gateway cancel: \(cancel.stderr)")
        // A step that throws once: the worker retries it (delayed set, promote script).
        let retried = try await runBinary(
            ["submit", "--session", "acl5", "--agent", "fault", "--input", #"{"fault":"throw-once"}"#, "--wait"], environment: gatewayEnv)
        #expect(retried.status == 0 && retried.stdout.contains("step.retrying"), "\(retried.stdout) \(retried.stderr)")

        // The admin user submits a step that dead-letters, and retries and purges dead letters.
        let admin = acl.arguments("admin")
        let dead = try await runBinary(
            ["submit", "--session", "acl3", "--agent", "fault", "--input", #"{"fault":"throw"}"#, "--max-attempts", "1", "--wait"]
                + admin)
        #expect(dead.status == 1 && dead.stdout.contains("step.dead"), "admin submit: \(dead.stdout) \(dead.stderr)")

        // The operator user reads: status, watch, queue, sessions, dead list and show, top.
        let op = acl.arguments("operator")
        let status = try await runBinary(["status", "acl1", "--json"] + op)
        #expect(status.status == 0, "operator status: \(status.stderr)")
        #expect(try JSONValue(parsing: status.stdout)["state"]?["count"]?.intValue == 1)
        let watch = try await runBinary(["watch", "acl2"] + op)
        #expect(watch.status == 0 && watch.stdout.contains("session.cancelled"), "operator watch: \(watch.stdout) \(watch.stderr)")
        let queue = try await runBinary(["queue", "--json"] + op)
        #expect(queue.status == 0, "operator queue: \(queue.stderr)")
        let workers = try JSONValue(parsing: queue.stdout)["workers"]?.arrayValue ?? []
        #expect(workers.contains { $0["worker"] == "acl-w" && $0["alive"] == true }, "\(queue.stdout)")
        let sessions = try await runBinary(["sessions"] + op)
        #expect(sessions.status == 0 && sessions.stdout.contains("acl1"), "operator sessions: \(sessions.stderr)")
        let deadList = try await runBinary(["dead", "list", "--json"] + op)
        #expect(deadList.status == 0 && deadList.stdout.contains("acl3:"), "operator dead list: \(deadList.stderr)")
        let deadJob = try #require(try JSONValue(parsing: String(deadList.stdout.split(separator: "\n")[0]))["job"]?.stringValue)
        let show = try await runBinary(["dead", "show", deadJob] + op)
        #expect(show.status == 0, "operator dead show: \(show.stderr)")
        // The operator runs `top --once --json`; what it shows of the worker comes from the report
        // the worker user writes (and the pool-metrics lease it takes) every second.
        var top: JSONValue = .null
        let reported = await eventually(timeout: .seconds(10), interval: .milliseconds(200)) {
            guard let r = try? await runBinary(["top", "--once", "--json", "--interval", "0.2"] + op), r.status == 0,
                let json = try? JSONValue(parsing: r.stdout)
            else { return false }
            top = json
            return json["workers"]?.arrayValue?.first?["slots"]?.intValue == 2
        }
        #expect(reported, "operator top: \(top)")
        #expect(top["queues"]?["dead"]?.intValue == 1)
        let adminConn = acl.connection("admin")
        let lease = try await adminConn.send(["GET", "sw:metrics:lease"])
        #expect(lease.string == "acl-w", "the worker user holds the pool-metrics lease: \(lease)")
        await adminConn.close()

        // The operator may not write: a submit is refused with one clear line.
        let opSubmit = try await runBinary(["submit", "--session", "acl4", "--agent", "echo"] + op)
        #expect(
            opSubmit.status == 1 && opSubmit.stderr.contains("may not do this") && opSubmit.stderr.contains("NOPERM"), "\(opSubmit.stderr)")
        let opRetry = try await runBinary(["dead", "retry", deadJob] + op)
        #expect(opRetry.status == 1 && opRetry.stderr.contains("NOPERM"), "\(opRetry.stderr)")
        let retry = try await runBinary(["dead", "purge", deadJob] + admin)
        #expect(retry.status == 0, "admin dead purge: \(retry.stderr)")

        // Nobody but testroot may run server commands, touch keys outside the namespace (also from
        // inside a script: Redis 7 checks a script's keys against its caller), or, for the gateway,
        // touch worker keys.
        for role in ["worker", "gateway", "operator", "admin"] {
            let conn = acl.connection(role)
            for command: [RedisArgument] in [
                ["FLUSHALL"], ["CONFIG", "GET", "*"], ["KEYS", "*"], ["SET", "other:x", "1"], ["SCRIPT", "FLUSH"],
                ["FUNCTION", "FLUSH"], ["MONITOR"], ["SLOWLOG", "GET"], ["ACL", "LIST"], ["CLIENT", "KILL", "ID", "1"],
            ] {
                let reply = try await conn.send(command)
                guard case .error(let message) = reply else {
                    Issue.record("\(role) may run \(command.map { String(decoding: $0.bytes, as: UTF8.self) })")
                    continue
                }
                #expect(message.hasPrefix("NOPERM"), "\(role): \(message)")
            }
            await conn.close()
        }
        let gateway = acl.connection("gateway")
        let fake = try await gateway.send(["SET", "sw:worker:fake", "1"])
        if case .error(let message) = fake {
            #expect(message.hasPrefix("NOPERM"), "\(message)")
        } else {
            Issue.record("the gateway may write a worker's heartbeat key: \(fake)")
        }
        let sneaky = try await gateway.evalScript(
            RedisScript(name: "sneaky", source: "return redis.call('SET', 'other:y', '1')"), keys: [], arguments: [])
        guard case .error(let scriptError) = sneaky else {
            Issue.record("a gateway script wrote outside the namespace: \(sneaky)")
            return
        }
        #expect(RedisServerError(scriptError).isPermissionDenied, "\(scriptError)")
        await gateway.close()

        // No connection's name, and no output, carries a password.
        let root = acl.connection("testroot")
        let clients = try await root.send(["CLIENT", "LIST"]).string ?? ""
        await root.close()
        #expect(clients.contains("name=stepwise:acl-w:"), "\(clients)")

        // Recovery as the worker user: the worker dies (kill -9) holding a step, and another
        // worker's reaper recovers it and runs it.
        let held = try await runBinary(
            ["submit", "--session", "acl6", "--agent", "fault", "--input", #"{"fault":"hang","ms":1000}"#], environment: gatewayEnv)
        #expect(held.status == 0, "\(held.stderr)")
        let root2 = acl.connection("testroot")
        let running = await eventually(timeout: .seconds(10)) {
            (try? await root2.send(["HGET", "sw:s:{acl6}", "status"]))?.string == "running"
        }
        #expect(running, "the step runs on the first worker")
        worker.signal(SIGKILL)
        _ = await worker.wait(timeout: .seconds(5))
        let rescuer = try ChildProcess(
            binary: binary,
            arguments: ["worker", "--concurrency", "1", "--worker-id", "acl-w2", "--heartbeat-ttl", "2", "--reaper-interval", "0.5"]
                + acl.arguments("worker"))
        defer { if rescuer.isRunning { rescuer.signal(SIGKILL) } }
        let recovered = await eventually(timeout: .seconds(20), interval: .milliseconds(100)) {
            (try? await root2.send(["HGET", "sw:s:{acl6}", "steps"]))?.int == 1
        }
        #expect(recovered, "the reaper recovered the step as the worker user: \(rescuer.output.suffix(2000))")
        let stats = try await root2.send(["HGET", "sw:stats", "reaped"])
        #expect((stats.int ?? 0) >= 1, "reaped: \(stats)")
        await root2.close()
        #expect(await rescuer.stop() == 0, "worker exits 0: \(rescuer.output.suffix(1000))")
        let everything =
            [
                clients, worker.output, rescuer.output, submit.stdout, submit.stderr, status.stderr, queue.stdout, opSubmit.stderr,
                show.stderr,
            ]
            .joined(separator: "\n")
        for (role, password) in acl.passwords where role != "testroot" {
            #expect(!everything.contains(password), "the \(role) password shows somewhere")
        }
        await acl.stop()
    }

    @Test func aWorkerWithTheWrongUserOrPasswordExitsAtOnceWithOneClearLine() async throws {
        let acl = try await ACLServer.start()
        defer { acl.server.terminate() }
        let binary = try #require(TestRedis.binary)
        let wrong = try Self.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: wrong) }
        let wrongPassword = Self.marker("WRONG")
        try Data(wrongPassword.utf8).write(to: wrong.appendingPathComponent("pw"))
        let cases: [(args: [String], expected: String)] = [
            (acl.arguments("operator"), "lacks a permission every worker needs"),
            (
                [
                    "--redis", "redis://worker@127.0.0.1:\(acl.server.port)", "--redis-password-file",
                    wrong.appendingPathComponent("pw").path,
                ],
                "WRONGPASS"
            ),
            (["--redis", "redis://127.0.0.1:\(acl.server.port)"], "NOAUTH"),
        ]
        for c in cases {
            let worker = try ChildProcess(binary: binary, arguments: ["worker", "--worker-id", "acl-bad", "--log-level", "trace"] + c.args)
            defer { if worker.isRunning { worker.signal(SIGKILL) } }
            let status = await worker.wait(timeout: .seconds(15))
            #expect(status == 78, "exits 78 (EX_CONFIG), not a retry loop: \(String(describing: status)) \(worker.output.suffix(1500))")
            let lines = worker.output.split(separator: "\n").filter { $0.hasPrefix("error: ") }
            #expect(lines.count == 1 && lines[0].contains(c.expected), "one clear line: \(worker.output.suffix(1500))")
            #expect(!worker.output.contains("Fatal error") && !worker.output.contains("Stack dump"), "no crash")
            #expect(!worker.output.contains(wrongPassword) && !worker.output.contains(acl.passwords["operator"]!))
        }
        await acl.stop()
    }

    // MARK: - logs carry no payloads

    @Test func noPayloadReachesAnyLogAtTraceLevel() async throws {
        let keys = try TestRedis.uniqueKeys()
        let binary = try #require(TestRedis.binary)
        let url = try #require(TestRedis.url)
        let common = ["--redis", url, "--namespace", keys.namespace, "--log-level", "trace"]
        let m = (
            input: Self.marker("INPUT"), result: Self.marker("RESULT"), error: Self.marker("ERROR"),
            progress: Self.marker("PROGRESS"), option: Self.marker("OPTION"), idem: Self.marker("IDEM"),
            owner: Self.marker("TICKET")
        )
        let worker = try ChildProcess(
            binary: binary, arguments: ["worker", "--concurrency", "2", "--retry-delay", "0.05", "--worker-id", "logs-w"] + common)
        defer { if worker.isRunning { worker.signal(SIGKILL) } }

        var quiet: [(String, String)] = []  // (what, output) that must hold no marker
        var shown: [String] = []  // stdout of the commands whose job is to display session data
        func cli(_ args: [String], displays: Bool = false, expect code: Int32 = 0) async throws {
            let r = try await runBinary(args + common)
            #expect(r.status == code, "\(args): \(r.stdout) \(r.stderr)")
            quiet.append(("stderr of \(args)", r.stderr))
            if displays { shown.append(r.stdout) } else { quiet.append(("stdout of \(args)", r.stdout)) }
        }
        // Input (and the counter's state, which records it), options and idempotency key.
        try await cli(
            [
                "submit", "--session", "logs1", "--agent", "counter", "--input", "{\"secret\":\"\(m.input)\"}", "--option",
                "api_key=\(m.option)", "--idempotency-key", m.idem,
            ])
        // A result, a progress event's data, and a step error that quotes its input (retried, then dead).
        try await cli(["submit", "--session", "logs2", "--agent", "echo", "--input", "{\"token\":\"\(m.result)\"}"])
        try await cli(["submit", "--session", "logs3", "--agent", "quiz", "--input", "{\"topic\":\"\(m.progress)\",\"questions\":1}"])
        try await cli(
            [
                "submit", "--session", "logs4", "--agent", "fault", "--input", "{\"fault\":\"throw\",\"message\":\"\(m.error)\"}",
                "--max-attempts", "2", "--owner", m.owner, "--wait",
            ], displays: true, expect: 1)
        try await cli(["submit", "--session", "logs4", "--agent", "fault", "--input", "{\"x\":1}", "--owner", "other"], expect: 1)
        for s in ["logs1", "logs2", "logs3"] { try await cli(["watch", s], displays: true) }
        for s in ["logs1", "logs2", "logs3", "logs4"] { try await cli(["status", s, "--json"], displays: true) }
        try await cli(["queue"])
        try await cli(["sessions"])
        try await cli(["dead", "list"], displays: true)
        try await cli(["dead", "show", "logs4:4"], displays: true, expect: 1)  // not the dead job: a clear miss
        try await cli(["touch", "logs1"])
        try await cli(["cancel", "logs2"])
        #expect(await worker.stop() == 0, "worker exits 0: \(worker.output.suffix(1000))")
        quiet.append(("worker output", worker.output))

        let markers = [m.input, m.result, m.error, m.progress, m.option, m.idem, m.owner]
        for (what, text) in quiet {
            for marker in markers { #expect(!text.contains(marker), "\(what) shows \(marker): \(text.suffix(2000))") }
        }
        // The check can fail: the markers did reach Redis, and the commands that display data show them.
        let displayed = shown.joined(separator: "\n")
        for marker in [m.input, m.result, m.error, m.progress, m.option] {
            #expect(displayed.contains(marker), "\(marker) never reached Redis, so its absence from the logs proves nothing")
        }
        // Logs were written at trace level, naming the steps, and the failure by its type only.
        #expect(worker.output.contains("worker started") && worker.output.contains("logs4:"), "\(worker.output.suffix(2000))")
        #expect(worker.output.contains("InjectedFault (text withheld"), "\(worker.output.suffix(2000))")
    }

    @Test func logPayloadsPrintsPayloadsWithConfiguredFieldsMasked() async throws {
        let keys = try TestRedis.uniqueKeys()
        let binary = try #require(TestRedis.binary)
        let url = try #require(TestRedis.url)
        let common = ["--redis", url, "--namespace", keys.namespace]
        let visible = Self.marker("VISIBLE")
        let password = Self.marker("PASSWORD")
        let custom = Self.marker("CUSTOM")
        let worker = try ChildProcess(
            binary: binary,
            arguments: ["worker", "--concurrency", "1", "--log-payloads", "--mask-fields", "password,pin"] + common)
        defer { if worker.isRunning { worker.signal(SIGKILL) } }
        let input = "{\"note\":\"\(visible)\",\"Password\":\"\(password)\",\"deep\":[{\"user_pin\":\"\(custom)\"}]}"
        let r = try await runBinary(["submit", "--session", "lp1", "--agent", "echo", "--input", input, "--wait"] + common)
        #expect(r.status == 0, "\(r.stderr)")
        // Progress data is logged too (the quiz plans its questions in a progress event).
        let topic = Self.marker("TOPIC")
        let quiz = try await runBinary(
            ["submit", "--session", "lp2", "--agent", "quiz", "--input", "{\"topic\":\"\(topic)\",\"questions\":1}", "--wait"]
                + common)
        #expect(quiz.status == 0, "\(quiz.stderr)")
        #expect(await worker.stop() == 0)
        let log = worker.output
        #expect(log.contains("--log-payloads is on"), "a warning says payloads are logged")
        #expect(log.contains(visible), "the payload is logged: \(log.suffix(2000))")
        #expect(log.contains("step progress (--log-payloads)") && log.contains(topic), "progress data is logged")
        #expect(log.contains("***"), "masked fields show as ***")
        #expect(!log.contains(password) && !log.contains(custom), "masked fields never show: \(log.suffix(2000))")
    }

    @Test func payloadMaskingIsCaseInsensitiveAndReachesEveryDepth() {
        let logging = PayloadLogging(enabled: true)
        let value: JSONValue = ["a": ["API_KEY": "x", "list": [["refresh_token": "y", "n": 1]]], "ok": "z"]
        let masked = logging.masked(value)
        #expect(masked["a"]?["API_KEY"] == "***")
        #expect(masked["a"]?["list"]?.arrayValue?.first?["refresh_token"] == "***")
        #expect(masked["a"]?["list"]?.arrayValue?.first?["n"]?.intValue == 1)
        #expect(masked["ok"] == "z")
    }

    // MARK: - TLS and unix sockets

    @Test func aWorkerRunsThroughAStunnelTLSTunnel() async throws {
        let stunnel = try #require(
            ["/usr/bin/stunnel4", "/usr/bin/stunnel"].first { FileManager.default.isExecutableFile(atPath: $0) },
            "stunnel4 is installed by scripts/ensure-deps.sh")
        let binary = try #require(TestRedis.binary)
        let redis = try TestRedis.endpoint
        guard case .tcp(_, let redisPort) = redis.address else {
            Issue.record("the test server is not on TCP")
            return
        }
        let dir = try Self.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: dir) }
        let cert = dir.appendingPathComponent("redis.crt").path
        let key = dir.appendingPathComponent("redis.key").path
        // A throwaway self-signed certificate (EC P-256, one day).
        let openssl = try ChildProcess(
            binary: "/usr/bin/openssl",
            arguments: [
                "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", key,
                "-out", cert, "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
            ])
        defer { if openssl.isRunning { openssl.signal(SIGKILL) } }
        #expect(await openssl.wait(timeout: .seconds(20)) == 0, "openssl: \(openssl.output)")

        let tlsPort = try RedisServerProcess.freeLoopbackPort()
        let clientPort = try RedisServerProcess.freeLoopbackPort()
        // The server end, in front of redis-server: TLS in, plain TCP to Redis on loopback.
        let serverConf = """
            foreground = yes
            pid =
            [redis-tls]
            accept = 127.0.0.1:\(tlsPort)
            connect = 127.0.0.1:\(redisPort)
            cert = \(cert)
            key = \(key)
            """
        // The client end, next to the worker: plain TCP in on loopback, TLS out, the server's
        // certificate verified against the pinned one.
        let clientConf = """
            foreground = yes
            pid =
            [redis-client]
            client = yes
            accept = 127.0.0.1:\(clientPort)
            connect = 127.0.0.1:\(tlsPort)
            verifyPeer = yes
            CAfile = \(cert)
            checkIP = 127.0.0.1
            """
        try Data(serverConf.utf8).write(to: dir.appendingPathComponent("server.conf"))
        try Data(clientConf.utf8).write(to: dir.appendingPathComponent("client.conf"))
        let tunnelServer = try ChildProcess(binary: stunnel, arguments: [dir.appendingPathComponent("server.conf").path])
        defer { if tunnelServer.isRunning { tunnelServer.signal(SIGKILL) } }
        let tunnelClient = try ChildProcess(binary: stunnel, arguments: [dir.appendingPathComponent("client.conf").path])
        defer { if tunnelClient.isRunning { tunnelClient.signal(SIGKILL) } }

        let tunnelled = "redis://127.0.0.1:\(clientPort)"
        let up = await eventually(timeout: .seconds(10), interval: .milliseconds(100)) {
            guard tunnelServer.isRunning, tunnelClient.isRunning else { return true }
            let probe = RedisConnection(
                configuration: .init(
                    endpoint: RedisEndpoint(address: .tcp(host: "127.0.0.1", port: clientPort)), connectTimeout: .milliseconds(500)))
            let pong = (try? await probe.send(["PING"]))?.string == "PONG"
            await probe.close()
            return pong
        }
        #expect(up && tunnelServer.isRunning && tunnelClient.isRunning, "tunnel up: \(tunnelServer.output) \(tunnelClient.output)")

        // The TLS port speaks only TLS: a plain-text client gets no answer from Redis.
        let plain = RedisConnection(
            configuration: .init(endpoint: RedisEndpoint(address: .tcp(host: "127.0.0.1", port: tlsPort)), commandTimeout: .seconds(2)))
        let plainReply = try? await plain.send(["PING"])
        await plain.close()
        #expect(plainReply?.string != "PONG", "plain text through the TLS port must not reach Redis")

        let keys = try TestRedis.uniqueKeys()
        let common = ["--redis", tunnelled, "--namespace", keys.namespace]
        let worker = try ChildProcess(binary: binary, arguments: ["worker", "--concurrency", "2"] + common)
        defer { if worker.isRunning { worker.signal(SIGKILL) } }
        let r = try await runBinary(
            ["submit", "--session", "tls1", "--agent", "quiz", "--input", #"{"topic":"TLS","questions":1}"#] + common)
        #expect(r.status == 0, "\(r.stderr)")
        let watch = try await runBinary(["watch", "tls1"] + common)
        #expect(watch.status == 0 && watch.stdout.contains("step.completed"), "\(watch.stdout) \(watch.stderr)")
        let status = try await runBinary([
            "status", "tls1", "--json", "--redis", try #require(TestRedis.url), "--namespace", keys.namespace,
        ])
        #expect(try JSONValue(parsing: status.stdout)["status"] == "done", "the steps ran through the tunnel: \(status.stdout)")
        #expect(await worker.stop() == 0, "worker exits 0: \(worker.output.suffix(1000))")
        for tunnel in [tunnelClient, tunnelServer] {
            tunnel.signal(SIGTERM)
            if await tunnel.wait(timeout: .seconds(5)) == nil { tunnel.signal(SIGKILL) }
            #expect(await tunnel.wait(timeout: .seconds(5)) != nil, "stunnel stopped")
        }
    }

    @Test func aWorkerRunsOverAUnixSocketWithAPasswordFile() async throws {
        let dir = try Self.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: dir) }
        let socket = dir.appendingPathComponent("redis.sock").path
        let password = Self.marker("SOCKPW")
        try Data(password.utf8).write(to: dir.appendingPathComponent("pw"))
        let server = try await RedisServerProcess.start(
            extraArguments: ["--unixsocket", socket, "--unixsocketperm", "700", "--requirepass", password],
            probeUsername: "default", probePassword: password)
        defer { server.terminate() }
        let binary = try #require(TestRedis.binary)
        let common = ["--redis", "unix://\(socket)", "--redis-password-file", dir.appendingPathComponent("pw").path]
        let worker = try ChildProcess(binary: binary, arguments: ["worker", "--concurrency", "1"] + common)
        defer { if worker.isRunning { worker.signal(SIGKILL) } }
        let r = try await runBinary(["submit", "--session", "sock1", "--agent", "echo", "--input", "1", "--wait"] + common)
        #expect(r.status == 0 && r.stdout.contains("step.completed"), "\(r.stdout) \(r.stderr)")
        #expect(await worker.stop() == 0, "worker exits 0: \(worker.output.suffix(1000))")
        #expect(!worker.output.contains(password) && !r.stderr.contains(password))
        await server.stop()
    }
}
