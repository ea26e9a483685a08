import StepwiseAgents
import StepwiseRedis
import StepwiseTesting

@testable import StepwiseCore

/// What most engine suites start from: a fresh namespace on the test server, a connection, a
/// dispatcher with the built-in agents, and a session store.
struct EngineFixture {
    let keys: KeySpace
    let conn: RedisConnection
    let dispatcher: Dispatcher
    let store: SessionStore

    init() throws {
        keys = try TestRedis.uniqueKeys()
        conn = try TestRedis.connection()
        dispatcher = Dispatcher(connection: conn, keys: keys, agents: .builtIn)
        store = SessionStore(connection: conn, keys: keys)
    }
}

/// A suite built on an ``EngineFixture``, which reaches its parts by their usual names.
protocol EngineSuite {
    var engine: EngineFixture { get }
}

extension EngineSuite {
    var keys: KeySpace { engine.keys }
    var conn: RedisConnection { engine.conn }
    var dispatcher: Dispatcher { engine.dispatcher }
    var store: SessionStore { engine.store }
}
