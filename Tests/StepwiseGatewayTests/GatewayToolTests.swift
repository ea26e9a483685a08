import Foundation
import StepwiseCore
import StepwiseTesting
import Testing

/// The page in a real browser, and the API under a property-based run, both against a gateway
/// and workers of the built binary. `scripts/ensure-deps.sh` installs chromium, chromium-driver,
/// selenium and schemathesis.
@Suite(
    "gateway: real browser and schemathesis",
    .enabled(if: TestRedis.url != nil && TestRedis.binary != nil, "needs STEPWISE_TEST_REDIS_URL and STEPWISE_BIN: run `make test`"),
    .timeLimit(.minutes(5)),
    .serialized
)
struct GatewayToolTests {
    static var root: String {
        URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent().path
    }

    @Test func thePageRunsAQuizInHeadlessChromiumAcrossAReload() async throws {
        let gw = try await GatewayHarness(workers: 2)
        defer { gw.stop() }
        let token = try gw.token("browser-user")
        let shot = ProcessInfo.processInfo.environment["STEPWISE_SCREENSHOT"] ?? ""
        let p = try ChildProcess(
            binary: "/usr/bin/env",
            arguments: ["python3", Self.root + "/Tests/browser/page_test.py", gw.base, token] + (shot.isEmpty ? [] : [shot]))
        let status = await p.wait(timeout: .seconds(150))
        if status == nil { p.signal(SIGKILL) }
        #expect(status == 0, "\(p.output.suffix(3000))")
        #expect(p.output.contains("PASS"))
    }

    @Test func schemathesisFindsNoServerErrorAndNoResponseOutsideTheSchema() async throws {
        let gw = try await GatewayHarness(workers: 1)
        defer { gw.stop() }
        let token = try gw.token("fuzzer")
        // A session of the caller's, so generated ids sometimes hit a real one.
        _ = try await gw.createQuiz(token: token, questions: 1)
        let p = try ChildProcess(
            binary: "/usr/bin/env",
            arguments: [
                // In a scratch folder: schemathesis keeps a cache in its working directory.
                "-C", FileManager.default.temporaryDirectory.path, "schemathesis", "run", gw.base + "/openapi.json", "-H",
                "Authorization: Bearer \(token)",
                "--checks", "not_a_server_error,response_schema_conformance,status_code_conformance,content_type_conformance",
                "--max-examples", "20", "--request-timeout", "10", "--generation-deterministic", "--exclude-path", "/v1/sessions/{id}/ws",
            ], environment: ["SCHEMATHESIS_TELEMETRY": "false", "NO_COLOR": "1"])
        let status = await p.wait(timeout: .seconds(240))
        if status == nil { p.signal(SIGKILL) }
        #expect(status == 0, "\(p.output.suffix(4000))")
        #expect(!gw.gateway.output.contains("request failed"), "no 500 in the gateway's log: \(gw.gateway.output.suffix(1000))")
    }
}
