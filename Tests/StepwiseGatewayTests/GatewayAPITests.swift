import Foundation
import StepwiseCore
import StepwiseGateway
import StepwiseRedis
import StepwiseTesting
import Testing

@Suite(
    "gateway: API, owners and tokens",
    .enabled(if: TestRedis.url != nil && TestRedis.binary != nil, "needs STEPWISE_TEST_REDIS_URL and STEPWISE_BIN: run `make test`"),
    .timeLimit(.minutes(5))
)
struct GatewayAPITests {
    static let v1Routes: [(String, String)] = [
        ("POST", "/v1/sessions"), ("GET", "/v1/sessions"), ("GET", "/v1/sessions/{id}"), ("POST", "/v1/sessions/{id}/steps"),
        ("POST", "/v1/sessions/{id}/cancel"), ("POST", "/v1/sessions/{id}/touch"), ("POST", "/v1/sessions/{id}/tickets"),
        ("GET", "/v1/sessions/{id}/events"), ("GET", "/v1/sessions/{id}/ws"), ("DELETE", "/v1/sessions/{id}"),
    ]

    @Test func deleteForgetsTheOwnersEncryptedSessionAndNobodyElses() async throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("gw-keyring-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let keyring = dir + "/keyring.json"
        let made = try await runBinary(["keys", "generate", "--id", "gw1", "--file", keyring])
        #expect(made.status == 0, "\(made.stderr)")
        let gw = try await GatewayHarness(
            workers: 1, gatewayArguments: ["--keyring-file", keyring], workerArguments: ["--keyring-file", keyring])
        defer { gw.stop() }
        let alice = try gw.token("alice")
        let bob = try gw.token("bob")
        let marker = "SECRET-topic-" + UUID().uuidString.prefix(8)
        let created = try await gw.request(
            "POST", "/v1/sessions", token: alice, body: #"{"agent":"quiz","input":{"topic":"\#(marker)","questions":1}}"#)
        let id = try #require(created.json["session"]?.stringValue)
        let done = try await eventually(timeout: .seconds(30), interval: .milliseconds(100)) {
            try await gw.request("GET", "/v1/sessions/\(id)", token: alice).json["status"]?.stringValue == "done"
        }
        #expect(done)
        let shown = try await gw.request("GET", "/v1/sessions/\(id)", token: alice)
        #expect(shown.json.jsonString.contains(marker), "the owner reads the state through the gateway: \(shown.json)")
        let conn = try TestRedis.connection()
        let stored = try await conn.send(["HGET", RedisArgument(gw.keys.session(try SessionID(id))), "state"]).string ?? ""
        #expect(stored.hasPrefix(SealedText.prefix) && !stored.contains(marker), "stored sealed")

        let theirs = try await gw.request("DELETE", "/v1/sessions/\(id)", token: bob)
        #expect(theirs.status == 404 && theirs.json["error"]?["code"]?.stringValue == "session_not_found")
        let mine = try await gw.request("DELETE", "/v1/sessions/\(id)", token: alice)
        #expect(mine.status == 200 && mine.json["forgotten"] == true && mine.json["encrypted"] == true, "\(mine)")
        #expect(try await gw.request("GET", "/v1/sessions/\(id)", token: alice).status == 404)
        #expect(try await gw.request("DELETE", "/v1/sessions/\(id)", token: alice).status == 404)
        let list = try await gw.request("GET", "/v1/sessions", token: alice)
        #expect(list.json["sessions"]?.arrayValue?.isEmpty == true, "\(list.json)")
        #expect(try await conn.send(["EXISTS", RedisArgument(gw.keys.session(try SessionID(id)))]).int == 0)
        await conn.close()
    }

    @Test func everyEndpointAnswers401WithoutAValidToken() async throws {
        let gw = try await GatewayHarness(workers: 0)
        defer { gw.stop() }
        let expired = try gw.tokens.issue(owner: "alice", ttl: .seconds(1), now: Date(timeIntervalSinceNow: -60)).token
        let otherKey = try TokenAuthority(secret: Array(repeating: 7, count: 32)).issue(owner: "alice", ttl: .seconds(60)).token
        for (method, path) in Self.v1Routes {
            let p = path.replacingOccurrences(of: "{id}", with: "s1")
            let none = try await gw.request(method, p, body: method == "POST" ? "{}" : nil)
            #expect(none.status == 401 && none.json["error"]?["code"]?.stringValue == "missing_token", "\(method) \(p): \(none)")
            let bad = try await gw.request(method, p, token: otherKey, body: method == "POST" ? "{}" : nil)
            #expect(bad.status == 401 && bad.json["error"]?["code"]?.stringValue == "invalid_token", "\(method) \(p): \(bad)")
            let old = try await gw.request(method, p, token: expired, body: method == "POST" ? "{}" : nil)
            #expect(old.status == 401 && old.json["error"]?["code"]?.stringValue == "token_expired", "\(method) \(p): \(old)")
        }
    }

    @Test func anotherOwnersSessionIsA404LikeAMissingOne() async throws {
        let gw = try await GatewayHarness(workers: 0)
        defer { gw.stop() }
        let alice = try gw.token("alice")
        let bob = try gw.token("bob")
        let id = try await gw.createQuiz(token: alice)
        for (method, path) in Self.v1Routes where path.contains("{id}") {
            let theirs = try await gw.request(
                method, path.replacingOccurrences(of: "{id}", with: id), token: bob, body: method == "POST" ? #"{"input":1}"# : nil)
            let missing = try await gw.request(
                method, path.replacingOccurrences(of: "{id}", with: "nosuch"), token: bob, body: method == "POST" ? #"{"input":1}"# : nil)
            #expect(theirs.status == 404 && theirs.json == missing.json, "\(method) \(path): \(theirs) vs \(missing)")
            #expect(theirs.json["error"]?["code"]?.stringValue == "session_not_found")
        }
        let mine = try await gw.request("GET", "/v1/sessions/\(id)", token: alice)
        #expect(mine.status == 200 && mine.json["session"]?.stringValue == id)
        let listA = try await gw.request("GET", "/v1/sessions", token: alice)
        #expect(listA.json["sessions"]?.arrayValue?.compactMap { $0["session"]?.stringValue } == [id])
        let listB = try await gw.request("GET", "/v1/sessions", token: bob)
        #expect(listB.json["sessions"]?.arrayValue?.isEmpty == true)
    }

    @Test func tokensFromTheCommandLineWorkAndCanBeRevoked() async throws {
        let gw = try await GatewayHarness(workers: 0)
        defer { gw.stop() }
        let env = ["STEPWISE_TOKEN_KEY": GatewayHarness.secret]
        let issued = try await runBinary(["token", "issue", "--owner", "carol", "--ttl", "1h", "--json"], environment: env)
        #expect(issued.status == 0, "\(issued.stderr)")
        let info = try JSONValue(parsing: issued.stdout.trimmingCharacters(in: .whitespacesAndNewlines))
        let token = try #require(info["token"]?.stringValue)
        let tokenID = try #require(info["id"]?.stringValue)
        #expect(try await gw.request("GET", "/v1/sessions", token: token).status == 200)
        let id = try await gw.createQuiz(token: token)
        let ticket = try #require(try await gw.request("POST", "/v1/sessions/\(id)/tickets", token: token).json["ticket"]?.stringValue)
        let revoked = try await runBinary(["token", "revoke", "--id", tokenID] + gw.common, environment: env)
        #expect(revoked.status == 0, "\(revoked.stderr)")
        let after = try await gw.request("GET", "/v1/sessions", token: token)
        #expect(after.status == 401 && after.json["error"]?["code"]?.stringValue == "token_revoked")
        // Its tickets die with it.
        let viaTicket = try await gw.request("GET", "/v1/sessions/\(id)/events?ticket=\(ticket)", headers: ["Accept": "text/event-stream"])
        #expect(viaTicket.status == 401 && viaTicket.json["error"]?["code"]?.stringValue == "token_revoked")
        // The key is never a flag: without it, issuing fails with a clear message.
        let noKey = try await runBinary(["token", "issue", "--owner", "carol"], environment: ["STEPWISE_TOKEN_KEY": "short"])
        #expect(noKey.status == 64 && noKey.stderr.contains("at least 32 bytes"), "\(noKey)")
    }

    @Test func badInputGetsAJSONErrorWithAStableCode() async throws {
        let gw = try await GatewayHarness(workers: 0, gatewayArguments: ["--max-subscriptions-per-owner", "1"])
        defer { gw.stop() }
        let alice = try gw.token("alice")
        let id = try await gw.createQuiz(token: alice, questions: 1)
        func code(_ r: (status: Int, json: JSONValue)) -> String { r.json["error"]?["code"]?.stringValue ?? "\(r.json)" }
        let cases: [(String, String, String?, [String: String], Int, String)] = [
            ("POST", "/v1/sessions", "{not json", [:], 400, "invalid_json"),
            ("POST", "/v1/sessions", "[1,2]", [:], 400, "invalid_json"),
            ("POST", "/v1/sessions", "", [:], 400, "invalid_json"),
            ("POST", "/v1/sessions", #"{"agent":"nope"}"#, [:], 400, "unknown_agent"),
            // Found by schemathesis: an options object with an empty key was a 500.
            ("POST", "/v1/sessions", #"{"agent":"echo","options":{"":1}}"#, [:], 400, "invalid_options"),
            ("POST", "/v1/sessions", #"{"agent":7}"#, [:], 400, "invalid_argument"),
            ("POST", "/v1/sessions", #"{"agent":"quiz","options":3}"#, [:], 400, "invalid_argument"),
            ("POST", "/v1/sessions", #"{"agent":"quiz","ttlSeconds":-1}"#, [:], 400, "invalid_argument"),
            (
                "POST", "/v1/sessions", #"{"agent":"quiz"}"#, ["Idempotency-Key": String(repeating: "k", count: 201)], 400,
                "invalid_idempotency_key"
            ),
            (
                "POST", "/v1/sessions", #"{"agent":"quiz","input":"\#(String(repeating: "x", count: 300_000))"}"#, [:], 413,
                "input_too_large"
            ),
            ("POST", "/v1/sessions", #"{"agent":"quiz","input":"\#(String(repeating: "x", count: 400_000))"}"#, [:], 413, "body_too_large"),
            ("GET", "/v1/sessions/\(String(repeating: "a", count: 65))", nil, [:], 400, "invalid_session_id"),
            ("GET", "/v1/sessions/a.b", nil, [:], 400, "invalid_session_id"),
            ("GET", "/v1/sessions?limit=0", nil, [:], 400, "invalid_argument"),
            ("POST", "/v1/sessions/\(id)/steps", #"{"input":1,"extra":2}"#, [:], 400, "invalid_argument"),
            ("GET", "/v1/sessions/\(id)/events?after=abc", nil, [:], 400, "invalid_event_id"),
            ("GET", "/v1/sessions/\(id)/events", nil, ["Last-Event-ID": "1-2-3"], 400, "invalid_event_id"),
            ("GET", "/v1/nothing-here", nil, [:], 404, "not_found"),
        ]
        for (method, path, body, headers, status, expected) in cases {
            let r = try await gw.request(method, path, token: alice, body: body, headers: headers)
            #expect(r.status == status && code(r) == expected, "\(method) \(path.prefix(80)): \(r.status) \(code(r))")
        }
        // Tickets: expired, for another session, or used as a bearer token.
        let claims = try gw.tokens.verifyToken(alice)
        let sid = try SessionID(id)
        let stale = gw.tokens.ticket(for: claims, session: sid, ttl: .seconds(1), now: Date(timeIntervalSinceNow: -30)).ticket
        let r1 = try await gw.request("GET", "/v1/sessions/\(id)/events?ticket=\(stale)", headers: ["Accept": "text/event-stream"])
        #expect(r1.status == 401 && code(r1) == "ticket_expired")
        let other = gw.tokens.ticket(for: claims, session: try SessionID("other"), ttl: .seconds(60)).ticket
        let r2 = try await gw.request("GET", "/v1/sessions/\(id)/events?ticket=\(other)", headers: ["Accept": "text/event-stream"])
        #expect(r2.status == 401 && code(r2) == "invalid_ticket")
        let fresh = gw.tokens.ticket(for: claims, session: sid, ttl: .seconds(60)).ticket
        let r3 = try await gw.request("GET", "/v1/sessions", token: fresh)
        #expect(r3.status == 401 && code(r3) == "invalid_token", "a ticket is not a token")

        // Too many subscriptions for one owner (limit 1 here): the second stream gets 429.
        let first = try gw.stream("/v1/sessions/\(id)/events", headers: ["Authorization": "Bearer \(alice)"])
        defer { first.signal(SIGKILL) }
        #expect(await eventually(timeout: .seconds(10)) { first.output.contains("retry:") })
        let second = try await gw.request("GET", "/v1/sessions/\(id)/events", token: alice, headers: ["Accept": "text/event-stream"])
        #expect(second.status == 429 && code(second) == "too_many_subscriptions")
        // Cancelled: later steps are refused with a conflict.
        #expect(try await gw.request("POST", "/v1/sessions/\(id)/cancel", token: alice, body: "{}").json["cancelled"] == .bool(true))
        let late = try await gw.request("POST", "/v1/sessions/\(id)/steps", token: alice, body: #"{"input":1}"#)
        #expect(late.status == 409 && code(late) == "session_cancelled")
    }

    @Test func idempotencyKeyDeduplicatesCreatesAndSteps() async throws {
        let gw = try await GatewayHarness(workers: 0)
        defer { gw.stop() }
        let alice = try gw.token("alice")
        let body = #"{"agent":"echo","input":"hi"}"#
        let a = try await gw.request("POST", "/v1/sessions", token: alice, body: body, headers: ["Idempotency-Key": "create-1"])
        let b = try await gw.request("POST", "/v1/sessions", token: alice, body: body, headers: ["Idempotency-Key": "create-1"])
        #expect(a.status == 201 && b.status == 200, "\(a) \(b)")
        #expect(a.json["session"] == b.json["session"] && a.json["job"] == b.json["job"] && b.json["enqueued"] == .bool(false))
        let id = try #require(a.json["session"]?.stringValue)
        let s1 = try await gw.request(
            "POST", "/v1/sessions/\(id)/steps", token: alice, body: #"{"input":2}"#, headers: ["Idempotency-Key": "k"])
        let s2 = try await gw.request(
            "POST", "/v1/sessions/\(id)/steps", token: alice, body: #"{"input":2}"#, headers: ["Idempotency-Key": "k"])
        #expect(s1.status == 202 && s2.status == 202 && s1.json["job"] == s2.json["job"])
        #expect(s1.json["enqueued"] == .bool(true) && s2.json["enqueued"] == .bool(false))
        let s = try await gw.request("GET", "/v1/sessions/\(id)", token: alice)
        #expect(s.json["queued"]?.intValue == 2, "one create and one step are queued (no worker runs): \(s.json)")
        let touched = try await gw.request("POST", "/v1/sessions/\(id)/touch", token: alice, body: #"{"ttlSeconds":600}"#)
        let expires = try #require(touched.json["expiresAt"]?.intValue)
        #expect(abs(expires - Int(Date().timeIntervalSince1970 * 1000) - 600_000) < 70_000, "touch sets the TTL: \(touched.json)")
    }

    @Test func openAPIDocumentListsExactlyTheServedRoutes() async throws {
        let gw = try await GatewayHarness(workers: 0)
        defer { gw.stop() }
        let doc = try await gw.request("GET", "/openapi.json")
        #expect(doc.status == 200 && doc.json["openapi"]?.stringValue == "3.0.3")
        let paths = try #require(doc.json["paths"]?.objectValue)
        var documented: Set<String> = []
        for (path, item) in paths {
            for method in (item.objectValue ?? [:]).keys { documented.insert("\(method.uppercased()) \(path)") }
        }
        let served = Set(Self.v1Routes.map { "\($0.0) \($0.1)" } + ["GET /openapi.json", "GET /healthz", "GET /"])
        #expect(
            documented == served,
            "documented but not served: \(documented.subtracting(served)); served but not documented: \(served.subtracting(documented))")
        // And each one is routed (an unrouted path answers 404 not_found).
        let alice = try gw.token("alice")
        let id = try await gw.createQuiz(token: alice, questions: 1)
        for entry in served {
            let parts = entry.split(separator: " ")
            let path = String(parts[1]).replacingOccurrences(of: "{id}", with: id)
            if path.hasSuffix("/events") || path.hasSuffix("/ws") { continue }  // streams: tested on their own
            let r = try await gw.request(String(parts[0]), path, token: alice, body: parts[0] == "POST" ? #"{"agent":"echo"}"# : nil)
            #expect(r.json["error"]?["code"]?.stringValue != "not_found", "\(entry) is routed: \(r.status)")
        }
    }

    @Test func thePageIsOneSelfContainedFileFromTheBinary() async throws {
        let gw = try await GatewayHarness(workers: 0)
        defer { gw.stop() }
        let out = FileManager.default.temporaryDirectory.appendingPathComponent("page-\(UUID().uuidString).html").path
        defer { try? FileManager.default.removeItem(atPath: out) }
        let (rc, headers) = try await GatewayHarness.curl(["-s", "-D", "-", "-o", out, gw.base + "/"])
        #expect(rc == 0 && headers.contains("200") && headers.lowercased().contains("content-type: text/html"))
        let html = try String(contentsOfFile: out, encoding: .utf8)
        #expect(html.contains("<script>") && html.contains("<style>") && html.contains("EventSource"))
        #expect(!html.contains("src=\"http") && !html.contains("href=\"http") && !html.contains("@import"), "nothing from a CDN")
        #expect(html.contains("/touch"), "the page sends the touch heartbeat")
    }

    @Test func sigtermStopsTheGatewayAtOnceEvenWithAnOpenStream() async throws {
        let gw = try await GatewayHarness(workers: 0)
        defer { gw.stop() }
        let alice = try gw.token("alice")
        let id = try await gw.createQuiz(token: alice)
        let client = try gw.stream("/v1/sessions/\(id)/events", headers: ["Authorization": "Bearer \(alice)"])
        defer { client.signal(SIGKILL) }
        #expect(await eventually(timeout: .seconds(10)) { (try? await gw.request("GET", "/healthz").json["subscribers"]?.intValue) == 1 })
        gw.gateway.signal(SIGTERM)
        #expect(await gw.gateway.wait(timeout: .seconds(5)) == 0, "\(gw.gateway.output.suffix(600))")
        #expect(await client.wait(timeout: .seconds(5)) != nil, "the stream was closed")
    }
}
