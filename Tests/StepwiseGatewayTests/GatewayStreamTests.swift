import Foundation
import HummingbirdWSClient
import Logging
import StepwiseGateway
import StepwiseRedis
import StepwiseTesting
import Synchronization
import Testing

@testable import StepwiseCore

@Suite(
    "gateway: live events over SSE and WebSocket",
    .enabled(if: TestRedis.url != nil && TestRedis.binary != nil, "needs STEPWISE_TEST_REDIS_URL and STEPWISE_BIN: run `make test`"),
    .timeLimit(.minutes(5))
)
struct GatewayStreamTests {
    /// Runs a quiz to the end over SSE; returns the session and the events received.
    func finishedQuiz(_ gw: GatewayHarness, token: String, questions: Int = 2) async throws -> (String, [SSEEvent]) {
        let id = try await gw.createQuiz(token: token, questions: questions, ms: 20)
        let client = try gw.stream("/v1/sessions/\(id)/events", headers: ["Authorization": "Bearer \(token)"])
        defer { client.signal(SIGKILL) }
        let ended = await eventually(timeout: .seconds(60)) { client.output.contains("event: end") }
        #expect(ended, "the stream ends: \(client.output.suffix(600))")
        #expect(await client.wait(timeout: .seconds(5)) != nil, "the server closes the stream after end")
        return (id, parseSSE(client.output))
    }

    @Test func aQuizStreamsLiveWithStreamIDsAndEndsWhenSettled() async throws {
        let gw = try await GatewayHarness()
        defer { gw.stop() }
        let alice = try gw.token("alice")
        let (id, received) = try await finishedQuiz(gw, token: alice)
        let events = received.filter { $0.event == "message" }
        let ids = events.compactMap(\.id)
        #expect(ids.count == events.count && ids.count >= 8, "every event has an id: \(received.map(\.event))")
        #expect(zip(ids, ids.dropFirst()).allSatisfy { EventID($0)! < EventID($1)! }, "ids increase")
        #expect(received.last?.event == "end")
        let end = try JSONValue(parsing: received.last?.data ?? "")
        #expect(end["status"]?.stringValue == "done")
        // The same events as the plain JSON read, which are the Redis Stream entry ids.
        let read = try await gw.request("GET", "/v1/sessions/\(id)/events", token: alice)
        #expect(read.json["events"]?.arrayValue?.compactMap { $0["id"]?.stringValue } == ids)
        let raw = try await TestRedis.connection().send(["XRANGE", RedisArgument(gw.keys.events(try SessionID(id))), "-", "+"])
        #expect(raw.array?.compactMap { $0.array?.first?.string } == ids)
        let snapshot = try await gw.request("GET", "/v1/sessions/\(id)", token: alice)
        #expect(snapshot.json["state"]?["questions"]?.arrayValue?.count == 2 && snapshot.json["status"]?.stringValue == "done")
    }

    @Test func resumesWithLastEventIDOrAfterWithoutGapsOrRepeats() async throws {
        let gw = try await GatewayHarness()
        defer { gw.stop() }
        let alice = try gw.token("alice")
        let (id, received) = try await finishedQuiz(gw, token: alice)
        let ids = received.filter { $0.event == "message" }.compactMap(\.id)
        for k in [0, 3, ids.count - 1] {
            for headers in [["Last-Event-ID": ids[k]], [:]] {
                let query = headers.isEmpty ? "?after=\(ids[k])" : ""
                let client = try gw.stream(
                    "/v1/sessions/\(id)/events\(query)", headers: headers.merging(["Authorization": "Bearer \(alice)"]) { a, _ in a })
                defer { client.signal(SIGKILL) }
                #expect(await eventually(timeout: .seconds(20)) { client.output.contains("event: end") })
                let again = parseSSE(client.output)
                #expect(again.filter { $0.event == "message" }.compactMap(\.id) == Array(ids[(k + 1)...]), "resume after \(k)")
                #expect(!again.contains { $0.event == "reset" })
            }
        }
    }

    @Test func stayKeepsTheStreamOpenAfterEndForTheNextStep() async throws {
        let gw = try await GatewayHarness()
        defer { gw.stop() }
        let alice = try gw.token("alice")
        let create = try await gw.request("POST", "/v1/sessions", token: alice, body: #"{"agent":"echo","input":"one"}"#)
        let id = try #require(create.json["session"]?.stringValue)
        let client = try gw.stream("/v1/sessions/\(id)/events?stay=true", headers: ["Authorization": "Bearer \(alice)"])
        defer { client.signal(SIGKILL) }
        #expect(await eventually(timeout: .seconds(20)) { client.output.contains("event: end") })
        _ = try await gw.request("POST", "/v1/sessions/\(id)/steps", token: alice, body: #"{"input":"two"}"#)
        #expect(await eventually(timeout: .seconds(20)) { client.output.components(separatedBy: "event: end").count == 3 })
        #expect(client.isRunning, "still open after the second end")
        let completed = parseSSE(client.output).filter { $0.data.contains("\"step.completed\"") }
        #expect(completed.count == 2)
        let bad = try await gw.request(
            "GET", "/v1/sessions/\(id)/events?stay=maybe", token: alice, headers: ["Accept": "text/event-stream"])
        #expect(bad.status == 400 && bad.json["error"]?["code"]?.stringValue == "invalid_argument")
    }

    @Test func aTrimmedOrUnknownResumePointGetsAnExplicitReset() async throws {
        let gw = try await GatewayHarness()
        defer { gw.stop() }
        let alice = try gw.token("alice")
        let (id, received) = try await finishedQuiz(gw, token: alice, questions: 3)
        let ids = received.filter { $0.event == "message" }.compactMap(\.id)
        let conn = try TestRedis.connection()
        _ = try await conn.send(["XTRIM", RedisArgument(gw.keys.events(try SessionID(id))), "MAXLEN", "2"])
        let future = "\(UInt64(Date().timeIntervalSince1970 * 1000) + 3_600_000)-0"
        for (from, reason) in [(ids[0], "trimmed"), (future, "unknown_event_id")] {
            let client = try gw.stream("/v1/sessions/\(id)/events?after=\(from)", headers: ["Authorization": "Bearer \(alice)"])
            defer { client.signal(SIGKILL) }
            #expect(await eventually(timeout: .seconds(20)) { client.output.contains("event: end") })
            let got = parseSSE(client.output)
            #expect(got.first?.event == "reset", "\(got.map(\.event))")
            let reset = try JSONValue(parsing: got.first?.data ?? "")
            #expect(reset["reason"]?.stringValue == reason)
            #expect(reset["session"]?["status"]?.stringValue == "done" && reset["session"]?["state"]?["questions"]?.arrayValue?.count == 3)
            #expect(got.first?.id == ids.last, "after a reset the client resumes from the stream's end")
        }
        // The command line says the same.
        let watch = try await runBinary(["watch", id, "--from", ids[0]] + gw.common)
        #expect(watch.status == 0 && watch.stdout.contains("reset (trimmed)"), "\(watch)")
        let watchFuture = try await runBinary(["watch", id, "--from", future, "--json"] + gw.common)
        #expect(watchFuture.stdout.contains(#""type":"reset""#) && watchFuture.stdout.contains("unknown_event_id"), "\(watchFuture)")
    }

    @Test func aCompactedSessionGivesASnapshotFromTheStartAndNothingFromItsLastEvent() async throws {
        let gw = try await GatewayHarness()
        defer { gw.stop() }
        let alice = try gw.token("alice")
        let (id, received) = try await finishedQuiz(gw, token: alice, questions: 2)
        let ids = received.filter { $0.event == "message" }.compactMap(\.id)
        // Compaction of the idle session (CompactionTests covers the script itself).
        let conn = try TestRedis.connection()
        try await Task.sleep(for: .milliseconds(20))
        let compacted = try await conn.run(ScriptCalls(keys: gw.keys, eventsMaxLength: 100).compact(idleMilliseconds: 10, batch: 100))
        #expect(compacted.int == 1)
        let fromStart = try gw.stream("/v1/sessions/\(id)/events", headers: ["Authorization": "Bearer \(alice)"])
        defer { fromStart.signal(SIGKILL) }
        #expect(await eventually(timeout: .seconds(20)) { fromStart.output.contains("event: end") })
        let got = parseSSE(fromStart.output)
        #expect(got.map(\.event) == ["reset", "end"], "\(got.map(\.event))")
        let reset = try JSONValue(parsing: got.first?.data ?? "")
        #expect(reset["reason"]?.stringValue == "trimmed")
        #expect(reset["session"]?["state"]?["questions"]?.arrayValue?.count == 2, "the snapshot carries the result")
        #expect(got.first?.id == ids.last)
        let upToDate = try gw.stream("/v1/sessions/\(id)/events?after=\(ids.last ?? "")", headers: ["Authorization": "Bearer \(alice)"])
        defer { upToDate.signal(SIGKILL) }
        #expect(await eventually(timeout: .seconds(20)) { upToDate.output.contains("event: end") })
        #expect(parseSSE(upToDate.output).map(\.event) == ["end"], "nothing was missed: no reset")
        let watch = try await runBinary(["watch", id] + gw.common)
        #expect(watch.status == 0 && watch.stdout.contains("reset (trimmed)"), "\(watch)")
    }

    @Test func ticketsOpenTheStreamAndNeverReachTheLogs() async throws {
        let gw = try await GatewayHarness(workers: 1, gatewayArguments: ["--keep-alive-seconds", "1"], logLevel: "trace")
        defer { gw.stop() }
        let alice = try gw.token("alice")
        let id = try await gw.createQuiz(token: alice, questions: 1, ms: 1500)
        let ticket = try #require(try await gw.request("POST", "/v1/sessions/\(id)/tickets", token: alice).json["ticket"]?.stringValue)
        let client = try gw.stream("/v1/sessions/\(id)/events?ticket=\(ticket)")
        defer { client.signal(SIGKILL) }
        #expect(await eventually(timeout: .seconds(30)) { client.output.contains(": keep-alive") }, "keep-alive comments")
        #expect(await eventually(timeout: .seconds(60)) { client.output.contains("event: end") })
        let log = gw.gateway.output
        #expect(log.contains("request"), "the gateway logged requests at trace level")
        #expect(!log.contains(ticket) && !log.contains(alice), "no ticket or token in the logs")
        #expect(!log.contains(String(ticket.split(separator: ".")[2])) && !log.contains(String(alice.split(separator: ".")[2])))
    }

    @Test func aClientThatDisconnectsIsReleasedAtOnceAndRedisConnectionsStayFew() async throws {
        let gw = try await GatewayHarness(workers: 0)
        defer { gw.stop() }
        var clients: [ChildProcess] = []
        defer { for c in clients { c.signal(SIGKILL) } }
        // 40 subscribers on 40 sessions of 8 owners: nothing runs, so every stream stays open.
        for i in 0..<40 {
            let token = try gw.token("owner\(i % 8)")
            let id = try await gw.createQuiz(token: token)
            clients.append(try gw.stream("/v1/sessions/\(id)/events", headers: ["Authorization": "Bearer \(token)"]))
        }
        func health() async -> JSONValue? { try? await gw.request("GET", "/healthz").json }
        #expect(await eventually(timeout: .seconds(20)) { await health()?["subscribers"]?.intValue == 40 })
        #expect(await health()?["streams"]?.intValue == 40)
        // This gateway's connections carry its port in their names.
        let list = try await TestRedis.connection().send(["CLIENT", "LIST"]).string ?? ""
        let toRedis = list.split(separator: "\n").filter { $0.contains("name=stepwise:gateway@\(gw.port)") }
        #expect((1...4).contains(toRedis.count), "the gateway holds \(toRedis.count) Redis connections for 40 subscribers")
        // Disconnect 10: released at once, not at the next keep-alive.
        for c in clients.prefix(10) { c.signal(SIGKILL) }
        #expect(await eventually(timeout: .seconds(3)) { await health()?["subscribers"]?.intValue == 30 })
    }

    @Test func webSocketCarriesEventsAndTakesSubmitCancelTouch() async throws {
        let gw = try await GatewayHarness()
        defer { gw.stop() }
        let alice = try gw.token("alice")
        let create = try await gw.request("POST", "/v1/sessions", token: alice, body: #"{"agent":"echo","input":"one"}"#)
        let id = try #require(create.json["session"]?.stringValue)
        let ticket = try #require(try await gw.request("POST", "/v1/sessions/\(id)/tickets", token: alice).json["ticket"]?.stringValue)
        let seen = Mutex<[JSONValue]>([])
        let logger = Logger(label: "test.ws")
        try await WebSocketClient.connect(url: "ws://127.0.0.1:\(gw.port)/v1/sessions/\(id)/ws?ticket=\(ticket)", logger: logger) {
            inbound, outbound, _ in
            var sent = false
            for try await message in inbound.messages(maxSize: 1 << 20) {
                guard case .text(let text) = message, let value = try? JSONValue(parsing: text) else { continue }
                seen.withLock { $0.append(value) }
                if value["type"]?.stringValue == "event", value["event"]?["type"]?.stringValue == "step.completed", !sent {
                    sent = true
                    try await outbound.writeTextMessage(#"{"op":"touch","id":1}"#)
                    try await outbound.writeTextMessage(#"{"op":"submit","id":2,"input":"two","idempotencyKey":"w1"}"#)
                    try await outbound.writeTextMessage(#"{"op":"bogus","id":3}"#)
                    try await outbound.writeTextMessage("not json")
                }
                if value["type"]?.stringValue == "submitted" {
                    try await outbound.writeTextMessage(#"{"op":"cancel","id":4}"#)
                }
                // `end` tells the session settled; the socket stays open for more operations.
                if value["type"]?.stringValue == "end", seen.withLock({ $0.contains { $0["type"]?.stringValue == "cancelled" } }) {
                    break
                }
            }
        }
        let messages = seen.withLock { $0 }
        let types = messages.compactMap { $0["type"]?.stringValue }
        #expect(types.contains("touched") && types.contains("submitted") && types.contains("cancelled"), "\(types)")
        #expect(types.last == "end", "\(types)")
        let errors = messages.filter { $0["type"]?.stringValue == "error" }.compactMap { $0["code"]?.stringValue }
        #expect(errors.sorted() == ["invalid_argument", "invalid_json"], "\(errors)")
        let eventTypes = messages.compactMap { $0["event"]?["type"]?.stringValue }
        #expect(eventTypes.contains("session.cancelled") || eventTypes.filter { $0 == "step.completed" }.count == 2, "\(eventTypes)")
        // Another owner cannot open it.
        let bobTicket = gw.tokens.ticket(
            for: try gw.tokens.verifyToken(try gw.token("bob")), session: try SessionID(id), ttl: .seconds(60)
        ).ticket
        let refused = try await gw.request("GET", "/v1/sessions/\(id)/ws?ticket=\(bobTicket)")
        #expect(refused.status == 404)
    }
}

@Suite(
    "gateway: subscription hub",
    .enabled(if: TestRedis.url != nil, "needs STEPWISE_TEST_REDIS_URL: run `make test`"),
    .timeLimit(.minutes(2))
)
struct SubscriptionHubTests {
    @Test func aSlowSubscriberIsDroppedWithoutSlowingAFastOne() async throws {
        let keys = try TestRedis.uniqueKeys()
        let conn = try TestRedis.connection()
        let hub = SubscriptionHub(
            configuration: .init(readers: 1, block: .milliseconds(200), bufferLimit: 4), control: conn, logger: Logger(label: "test")
        ) { _ in try! TestRedis.connection(name: "hub") }
        let id = try SessionID("hub1")
        let stream = keys.events(id)
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { try await hub.run() }
            let slow = await hub.subscribe(session: id, stream: stream, position: .zero)
            let fast = await hub.subscribe(session: id, stream: stream, position: .zero)
            let received = Mutex<Int>(0)
            group.addTask {
                for await d in fast.deliveries {
                    if case .events(let e) = d { received.withLock { $0 += e.count } }
                }
            }
            for i in 0..<40 {
                _ = try await conn.send(["XADD", RedisArgument(stream), "*", "type", "step.progress", "n", RedisArgument(i)])
                try await Task.sleep(for: .milliseconds(5))
            }
            #expect(await eventually(timeout: .seconds(10)) { received.withLock { $0 } == 40 }, "the fast subscriber got all 40")
            #expect(slow.overflowed, "the slow one (never reading, 4 deliveries of room) was dropped")
            #expect(hub.subscriberCount == 1)
            hub.unsubscribe(fast)
            #expect(hub.subscriberCount == 0 && hub.followedStreams == 0)
            group.cancelAll()
        }
    }
}
