import Testing

@testable import StepwiseRedis

@Suite struct EndpointTests {
    @Test func parsesHostPortAndDatabase() throws {
        let e = try RedisEndpoint(parsing: "redis://10.1.2.3:6380/2")
        #expect(e.address == .tcp(host: "10.1.2.3", port: 6380))
        #expect(e.database == 2)
        #expect(e.username == nil && e.password == nil)
    }

    @Test func defaultsPortAndDatabase() throws {
        let e = try RedisEndpoint(parsing: "redis://localhost")
        #expect(e.address == .tcp(host: "localhost", port: 6379))
        #expect(e.database == 0)
    }

    @Test func parsesACLUserAndPercentEncodedPassword() throws {
        let e = try RedisEndpoint(parsing: "redis://worker:p%40ss%3Aw@127.0.0.1:7000/1")
        #expect(e.username == "worker")
        #expect(e.password == "p@ss:w")
        #expect(e.database == 1)
        #expect(!e.description.contains("p@ss"), "the description must never show the password")
    }

    @Test func parsesPasswordOnly() throws {
        let e = try RedisEndpoint(parsing: "redis://:secret@host:1")
        #expect(e.username == nil)
        #expect(e.password == "secret")
    }

    @Test func parsesUnixSocket() throws {
        let e = try RedisEndpoint(parsing: "unix:///run/redis/redis.sock?db=3")
        #expect(e.address == .unix(path: "/run/redis/redis.sock"))
        #expect(e.database == 3)
    }

    @Test func parsesIPv6() throws {
        let e = try RedisEndpoint(parsing: "redis://[::1]:6390")
        #expect(e.address == .tcp(host: "::1", port: 6390))
    }

    @Test(arguments: [
        "http://localhost:6379", "redis://", "redis://host:0", "redis://host:70000", "redis://host:abc",
        "redis://host/x", "unix://relative.sock", "rediss://host:6379", "redis://u:%zz@host",
    ])
    func rejectsBadURLs(_ url: String) {
        #expect(throws: RedisEndpoint.ParseError.self) { try RedisEndpoint(parsing: url) }
    }

    @Test(arguments: [
        ("redis://user:hunter2@host:1/2", "redis://user:***@host:1/2"),
        ("redis://hunter2@host", "redis://***@host"),
        ("redis://:hunter2@host", "redis://:***@host"),
        ("redis://u:pa/ss@hunter2@host", "redis://u:***@host"),
        ("redis://host:1", "redis://host:1"),
        ("hunter2", "<7 characters, not shown>"),
    ])
    func redactedMasksThePassword(_ url: String, _ expected: String) {
        #expect(RedisEndpoint.redacted(url) == expected)
    }

    @Test(arguments: [
        "redis://u:hunter2@host:abc", "redis://hunter2@host:0", "redis://u:hunter2@host/x", "rediss://u:hunter2@host",
        "redis://u:hunter2%zz@host", "hunter2", "http://u:hunter2@host",
    ])
    func parseErrorsNeverShowThePassword(_ url: String) {
        do {
            _ = try RedisEndpoint(parsing: url)
            Issue.record("\(url) parsed")
        } catch {
            #expect(!error.message.contains("hunter2"), "\(error.message)")
        }
    }

    @Test func aPasswordFromElsewhereMakesALoneUserInfoTheUser() throws {
        let e = try RedisEndpoint(parsing: "redis://worker@host:7000", password: "from-file")
        #expect(e.username == "worker" && e.password == "from-file")
        let bare = try RedisEndpoint(parsing: "redis://host", password: "from-file")
        #expect(bare.username == nil && bare.password == "from-file")
        let emptyInURL = try RedisEndpoint(parsing: "redis://worker:@host", password: "from-file")
        #expect(emptyInURL.username == "worker" && emptyInURL.password == "from-file")
        let unix = try RedisEndpoint(parsing: "unix:///run/redis.sock", password: "from-file")
        #expect(unix.password == "from-file")
        #expect(throws: RedisEndpoint.ParseError.self) { try RedisEndpoint(parsing: "redis://u:pw@host", password: "from-file") }
        // Without one, the historical form still reads a lone user-info part as the password.
        #expect(try RedisEndpoint(parsing: "redis://pw@host").password == "pw")
    }

    @Test func repliesDescribeTheirShapeNotTheirContent() {
        let reply = RESPValue.array([.bulk(Array("secret state".utf8)), .integer(3), .simple("OK"), .null])
        #expect(reply.description == "array(4)[bulk(12 bytes), integer(3), simple(OK), null]")
        #expect(!"\(reply)".contains("secret"))
    }

    @Test func serverErrorPrefix() {
        let e = RedisServerError("WRONGTYPE Operation against a key holding the wrong kind of value")
        #expect(e.prefix == "WRONGTYPE")
        #expect(throws: RedisServerError.self) { try RESPValue.error("ERR x").throwingServerError() }
    }

    @Test func replyAccessors() {
        #expect(RESPValue.bulk(Array("42".utf8)).int == 42)
        #expect(RESPValue.integer(7).string == "7")
        #expect(RESPValue.null.isNull)
        #expect(RESPValue.array([.integer(1)]).array?.count == 1)
        #expect(RESPValue.simple("OK").bytes == Array("OK".utf8))
    }
}
