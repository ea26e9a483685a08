import Foundation
import StepwiseRedis
import StepwiseTesting
import Testing

@Suite(
    "hiredis client against a real redis-server",
    .enabled(if: TestRedis.url != nil, "needs STEPWISE_TEST_REDIS_URL: run `make test`"),
    .timeLimit(.minutes(2))
)
struct RedisClientTests {
    let prefix = "t:\(UUID().uuidString):"

    @Test func pipelinesManyCommandsInOrder() async throws {
        let conn = try TestRedis.connection()
        let n = 2000
        var commands: [[RedisArgument]] = (0..<n).map { ["RPUSH", RedisArgument(prefix + "list"), RedisArgument($0)] }
        commands.append(["LRANGE", RedisArgument(prefix + "list"), 0, -1])
        let replies = try await conn.pipeline(commands)
        #expect(replies.count == n + 1)
        #expect(replies[n - 1].int == n)
        #expect(replies[n].array?.compactMap(\.int) == Array(0..<n))
        _ = try await conn.send(["DEL", RedisArgument(prefix + "list")])
    }

    @Test func argumentsAreBinarySafe() async throws {
        let conn = try TestRedis.connection()
        let value: [UInt8] = [0, 13, 10, 0x2A, 0xFF, 0xFE, 0, 36, 13, 10]
        let key = RedisArgument(bytes: Array((prefix + "bin\r\n\0key").utf8))
        #expect(try await conn.send(["SET", key, RedisArgument(bytes: value)]) == .simple("OK"))
        #expect(try await conn.send(["GET", key]) == .bulk(value))
        #expect(try await conn.send(["STRLEN", key]).int == value.count)
        _ = try await conn.send(["DEL", key])
    }

    @Test func errorRepliesAreValuesAndTypedHelpersThrow() async throws {
        let conn = try TestRedis.connection()
        _ = try await conn.send(["SET", RedisArgument(prefix + "s"), "x"])
        let reply = try await conn.send(["LPUSH", RedisArgument(prefix + "s"), "y"])
        guard case .error(let message) = reply else {
            Issue.record("expected an error reply, got \(reply)")
            return
        }
        #expect(message.hasPrefix("WRONGTYPE"))
        #expect(throws: RedisServerError.self) { try reply.throwingServerError() }
        // The connection is still usable after an error reply.
        #expect(try await conn.send(["PING"]) == .simple("PONG"))
        _ = try await conn.send(["DEL", RedisArgument(prefix + "s")])
    }

    @Test func connectionRefusedNamesTheAddress() async throws {
        let conn = RedisConnection(configuration: .init(endpoint: try RedisEndpoint(parsing: "redis://127.0.0.1:1")))
        do {
            try await conn.connect()
            Issue.record("expected connection refused")
        } catch let error as RedisError {
            #expect(error.code == .connectionRefused)
            #expect(error.description.contains("127.0.0.1:1"))
        }
    }

    @Test func reconnectsAfterClientKill() async throws {
        let conn = try TestRedis.connection(name: "victim")
        let killer = try TestRedis.connection(name: "killer")
        try await conn.connect()
        let id = try #require(await conn.clientID)
        #expect(try await killer.send(["CLIENT", "KILL", "ID", RedisArgument(id)]).int == 1)
        // The next command sees the dead socket and fails; the one after reconnects.
        var failed = false
        do { _ = try await conn.send(["PING"]) } catch is RedisError { failed = true }
        #expect(failed)
        let recovered = await eventually(timeout: .seconds(5)) { (try? await conn.send(["PING"])) == .simple("PONG") }
        #expect(recovered)
        #expect(await conn.connectCount == 2)
        #expect(await conn.clientID != id)
    }

    @Test func blockingCommandOutlastsTheSocketTimeout() async throws {
        // Socket timeout 200 ms, block 600 ms: the socket timeout is raised for the block (by the
        // block plus at least 5 s, so a loaded machine's late answer still fits), so the pop times
        // out server-side (nil) and the connection survives.
        var config = RedisConnection.Configuration(endpoint: try TestRedis.endpoint, commandTimeout: .milliseconds(200))
        config.clientName = "blocker"
        let conn = RedisConnection(configuration: config)
        let reply = try await conn.send(
            ["BLMOVE", RedisArgument(prefix + "empty"), RedisArgument(prefix + "dst"), "LEFT", "RIGHT", "0.6"],
            blockingFor: .milliseconds(600))
        #expect(reply.isNull)
        #expect(await conn.connectCount == 1)
        #expect(try await conn.send(["PING"]) == .simple("PONG"))
    }

    @Test func scriptsRunBySHAAndReloadAfterFlush() async throws {
        let conn = try TestRedis.connection()
        let script = RedisScript(name: "test-add-\(UUID().uuidString)", source: "return tonumber(ARGV[1]) + tonumber(ARGV[2])")
        #expect(try await conn.evalScript(script, keys: [], arguments: [2, 3]).int == 5)
        let other = try TestRedis.connection()
        _ = try await other.send(["SCRIPT", "FLUSH"])
        #expect(try await conn.evalScript(script, keys: [], arguments: [4, 5]).int == 9)
    }

    @Test func coalescedScriptCallsFromManyTasksEachGetTheirOwnReply() async throws {
        let conn = try TestRedis.connection()
        let script = RedisScript(name: "test-echo-\(UUID().uuidString)", source: "return {KEYS[1], ARGV[1]}")
        func round() async throws -> Bool {
            try await withThrowingTaskGroup(of: Bool.self) { group in
                for i in 0..<300 {
                    group.addTask {
                        let reply = try await conn.evalScriptCoalesced(
                            script, keys: [RedisArgument("k\(i)")], arguments: [RedisArgument(i)])
                        return reply.array?.map(\.string) == ["k\(i)", "\(i)"]
                    }
                }
                return try await group.reduce(true) { $0 && $1 }
            }
        }
        #expect(try await round(), "300 concurrent calls, each its own reply")
        // The server forgets its scripts mid-life: the next batch reloads and still answers each call.
        _ = try await TestRedis.connection().send(["SCRIPT", "FLUSH"])
        #expect(try await round(), "after SCRIPT FLUSH")
        #expect(await conn.connectCount == 1, "no reconnects")
        // A connection that cannot connect fails every call of the batch, and recovers later.
        let dead = RedisConnection(configuration: .init(endpoint: try RedisEndpoint(parsing: "redis://127.0.0.1:1")))
        await #expect(throws: RedisError.self) { _ = try await dead.evalScriptCoalesced(script, keys: ["a"], arguments: [1]) }
    }

    @Test func authAndSelectFromTheURL() async throws {
        let admin = try TestRedis.connection()
        let user = "stepwise-test-\(UUID().uuidString.prefix(8))"
        #expect(try await admin.send(["ACL", "SETUSER", RedisArgument(user), "on", ">s3cret", "~*", "+@all"]) == .simple("OK"))
        guard case .tcp(let host, let port) = try TestRedis.endpoint.address else { return }
        let conn = RedisConnection(configuration: .init(endpoint: try RedisEndpoint(parsing: "redis://\(user):s3cret@\(host):\(port)/3")))
        #expect(try await conn.send(["ACL", "WHOAMI"]).string == user)
        let info = try await conn.send(["CLIENT", "INFO"]).string ?? ""
        #expect(info.contains("db=3"))
        let wrong = RedisConnection(configuration: .init(endpoint: try RedisEndpoint(parsing: "redis://\(user):nope@\(host):\(port)")))
        await #expect(throws: RedisError.self) { try await wrong.connect() }
        _ = try await admin.send(["ACL", "DELUSER", RedisArgument(user)])
    }
}
