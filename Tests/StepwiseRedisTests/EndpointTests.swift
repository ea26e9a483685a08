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
