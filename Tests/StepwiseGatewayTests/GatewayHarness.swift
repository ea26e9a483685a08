import Foundation
import StepwiseCore
import StepwiseGateway
import StepwiseRedis
import StepwiseTesting
import Testing

/// A gateway process (and optionally worker processes) of the built binary on a free loopback
/// port, in its own key namespace; requests go through curl, like a client would send them.
final class GatewayHarness: Sendable {
    static let secret = "test-signing-key-0123456789abcdef-0123456789"
    let keys: KeySpace
    let port: Int
    let gateway: ChildProcess
    let workers: [ChildProcess]
    let tokens: TokenAuthority
    let common: [String]

    var base: String { "http://127.0.0.1:\(port)" }

    init(workers count: Int = 1, gatewayArguments: [String] = [], workerArguments extra: [String] = [], logLevel: String = "info")
        async throws
    {
        let binary = try #require(TestRedis.binary)
        let url = try #require(TestRedis.url)
        keys = try TestRedis.uniqueKeys()
        common = ["--redis", url, "--namespace", keys.namespace]
        tokens = try TokenAuthority(secret: Array(Self.secret.utf8))
        let env = ["STEPWISE_TOKEN_KEY": Self.secret]
        // A free port can be taken by another test before the gateway binds it: try up to 3.
        var started: (Int, ChildProcess)?
        var lastOutput = ""
        for _ in 0..<3 where started == nil {
            let port = try RedisServerProcess.freeLoopbackPort()
            let process = try ChildProcess(
                binary: binary,
                arguments: ["gateway", "--listen", "127.0.0.1:\(port)", "--log-level", logLevel] + common + gatewayArguments,
                environment: env)
            let up = await eventually(timeout: .seconds(20), interval: .milliseconds(50)) {
                guard process.isRunning else { return true }
                return (try? await Self.curl(["-s", "-o", "/dev/null", "-w", "%{http_code}", "http://127.0.0.1:\(port)/healthz"]))?.output
                    == "200"
            }
            if up && process.isRunning {
                started = (port, process)
            } else {
                lastOutput = process.output
                process.signal(SIGKILL)
            }
        }
        let up = started != nil
        port = started?.0 ?? 0
        gateway = try started?.1 ?? ChildProcess(binary: "/bin/true", arguments: [])
        let workerArguments = ["worker", "--concurrency", "4"] + common + extra
        workers = try (0..<(up ? count : 0)).map { _ in try ChildProcess(binary: binary, arguments: workerArguments) }
        try #require(up, "gateway answers /healthz: \(lastOutput.suffix(800))")
    }

    func stop() {
        for p in [gateway] + workers where p.isRunning { p.signal(SIGKILL) }
    }

    func token(_ owner: String, ttl: Duration = .seconds(3600)) throws -> String {
        try tokens.issue(owner: owner, ttl: ttl).token
    }

    /// Runs curl to completion; `output` is what it printed.
    static func curl(_ arguments: [String], timeout: Duration = .seconds(20)) async throws -> (status: Int32, output: String) {
        let p = try ChildProcess(binary: "/usr/bin/curl", arguments: arguments)
        guard let status = await p.wait(timeout: timeout) else {
            p.signal(SIGKILL)
            throw TestSupportError("curl \(arguments) did not finish")
        }
        return (status, p.output)
    }

    /// One request: the status and the JSON body.
    func request(
        _ method: String, _ path: String, token: String? = nil, body: String? = nil, headers: [String: String] = [:]
    ) async throws -> (status: Int, json: JSONValue) {
        let out = FileManager.default.temporaryDirectory.appendingPathComponent("gw-\(UUID().uuidString).json").path
        defer { try? FileManager.default.removeItem(atPath: out) }
        var args = ["-s", "-X", method, "-o", out, "-w", "%{http_code}"]
        if let token { args += ["-H", "Authorization: Bearer \(token)"] }
        for (k, v) in headers { args += ["-H", "\(k): \(v)"] }
        if let body {
            let file = out + ".in"
            try Data(body.utf8).write(to: URL(fileURLWithPath: file))
            args += ["-H", "Content-Type: application/json", "--data-binary", "@" + file]
        }
        let (rc, code) = try await Self.curl(args + [base + path])
        try? FileManager.default.removeItem(atPath: out + ".in")
        #expect(rc == 0, "curl exit \(rc)")
        let text = (try? String(contentsOfFile: out, encoding: .utf8)) ?? ""
        return (Int(code) ?? 0, (try? JSONValue(parsing: text)) ?? .string(text))
    }

    /// Starts an SSE client (curl -N); its output grows as events arrive.
    func stream(_ path: String, headers: [String: String] = [:], maxTime: Int = 60) throws -> ChildProcess {
        var args = ["-s", "-N", "--max-time", "\(maxTime)", "-H", "Accept: text/event-stream"]
        for (k, v) in headers { args += ["-H", "\(k): \(v)"] }
        return try ChildProcess(binary: "/usr/bin/curl", arguments: args + [base + path])
    }

    /// Creates a quiz session as `token`'s owner.
    func createQuiz(token: String, questions: Int = 2, ms: Int = 0) async throws -> String {
        let body = #"{"agent":"quiz","input":{"topic":"Swift","questions":\#(questions)},"options":{"ms":\#(ms)}}"#
        let r = try await request("POST", "/v1/sessions", token: token, body: body)
        #expect(r.status == 201, "create: \(r.json)")
        return try #require(r.json["session"]?.stringValue)
    }
}

/// One parsed Server-Sent Event.
struct SSEEvent: Equatable {
    var id: String?
    var event: String
    var data: String
}

/// Parses the text of an SSE stream (complete events only).
func parseSSE(_ text: String) -> [SSEEvent] {
    var result: [SSEEvent] = []
    for block in text.components(separatedBy: "\n\n").dropLast() {
        var id: String?
        var event = "message"
        var data: [String] = []
        for line in block.split(separator: "\n", omittingEmptySubsequences: true) {
            if line.hasPrefix("id: ") { id = String(line.dropFirst(4)) }
            if line.hasPrefix("event: ") { event = String(line.dropFirst(7)) }
            if line.hasPrefix("data: ") { data.append(String(line.dropFirst(6))) }
        }
        if !data.isEmpty { result.append(SSEEvent(id: id, event: event, data: data.joined(separator: "\n"))) }
    }
    return result
}
