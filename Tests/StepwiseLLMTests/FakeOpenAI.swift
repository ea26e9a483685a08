import Foundation
import StepwiseCore
import StepwiseLLM
import StepwiseRedis
import StepwiseTesting

#if canImport(FoundationNetworking)
    import FoundationNetworking
#endif

/// The repo's OpenAI-compatible test server (`Tests/llm/fake_openai.py`), started on a free
/// loopback port with its own API key, and always stopped (``stop()``; ``kill()`` in a `defer`).
final class FakeOpenAI: Sendable {
    let process: ChildProcess
    let port: Int
    /// The API key the server demands (`Authorization: Bearer`), in `keyFile`.
    let apiKey: String
    let keyFile: String
    let directory: String

    static var script: String {
        URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent("llm/fake_openai.py").path
    }

    init() async throws {
        directory = FileManager.default.temporaryDirectory.appendingPathComponent("stepwise-llm-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        apiKey = "sk-test-" + UUID().uuidString.replacingOccurrences(of: "-", with: "")
        keyFile = directory + "/api-key"
        try apiKey.write(toFile: keyFile, atomically: true, encoding: .utf8)
        let portFile = directory + "/port"
        let child = try ChildProcess(
            binary: "/usr/bin/env",
            arguments: ["python3", FakeOpenAI.script, "--port", "0", "--port-file", portFile, "--api-key-file", keyFile])
        var found: Int?
        _ = await eventually(timeout: .seconds(20), interval: .milliseconds(20)) {
            found = (try? String(contentsOfFile: portFile, encoding: .utf8)).flatMap { Int($0) }
            return found != nil || !child.isRunning
        }
        guard let found else {
            child.signal(SIGKILL)
            throw StepwiseError(.invalidConfiguration, "the fake OpenAI server did not start: \(child.output.suffix(2000))")
        }
        process = child
        port = found
    }

    /// `http://127.0.0.1:<port>/v1`.
    var baseURL: String { "http://127.0.0.1:\(port)/v1" }

    /// Worker flags pointing the `llm` agent at this server with its key.
    var workerFlags: [String] { ["--llm-base-url", baseURL, "--llm-api-key-file", keyFile] }

    /// What the server saw and did for `model` (`GET /_fake/requests`).
    func requests(model: String) async throws -> [JSONValue] {
        let encoded = model.addingPercentEncoding(withAllowedCharacters: .alphanumerics) ?? model
        let url = URL(string: "http://127.0.0.1:\(port)/_fake/requests?model=\(encoded)")!
        let (data, _) = try await URLSession.shared.data(from: url)
        return try JSONValue(parsing: Array(data)).arrayValue ?? []
    }

    /// SIGTERM, then SIGKILL; removes its files.
    func stop() async {
        _ = await process.stop(timeout: .seconds(5))
        try? FileManager.default.removeItem(atPath: directory)
    }

    /// Backstop for `defer`.
    func kill() {
        if process.isRunning { process.signal(SIGKILL) }
        try? FileManager.default.removeItem(atPath: process.logPath)
    }
}

/// A session's whole event stream.
func events(_ conn: RedisConnection, _ keys: KeySpace, _ id: SessionID) async throws -> [StepEvent] {
    let reply = try await conn.send(["XRANGE", RedisArgument(keys.events(id)), "-", "+"]).throwingServerError()
    return (reply.array ?? []).compactMap { StepEvent(entry: $0) }
}

/// A session's status and state.
func session(_ conn: RedisConnection, _ keys: KeySpace, _ id: SessionID) async throws -> (status: String?, state: JSONValue) {
    let reply = try await conn.send(["HMGET", RedisArgument(keys.session(id)), "status", "state"]).throwingServerError()
    let parts = reply.array ?? []
    let status = parts.first?.string
    let state = parts.count > 1 ? (parts[1].bytes.flatMap { try? JSONValue(parsing: $0) } ?? .null) : .null
    return (status, state)
}

/// The `data` of an event, parsed.
func data(_ event: StepEvent) -> JSONValue { event.fields["data"].flatMap { try? JSONValue(parsing: $0) } ?? .null }
