import Foundation
import StepwiseAgents
import StepwiseEncryption
import StepwiseRedis
import StepwiseTesting
import Testing

@testable import StepwiseCore

/// Issue 12, points 1-3: encryption at rest with per-session data keys, rotation, and
/// crypto-shredding (including what a backup taken before a forget can still open).
@Suite(
    "encryption at rest: sealed session data, rotation, crypto-shredding",
    .enabled(if: TestRedis.url != nil, "needs STEPWISE_TEST_REDIS_URL: run `make test`"),
    .timeLimit(.minutes(3))
)
struct EncryptionTests {
    static func marker(_ what: String) -> String { "SECRET-\(what)-" + UUID().uuidString.prefix(8) }

    static func sealer(_ ids: [String], active: String) throws -> KeyringSealer {
        var keyring = try Keyring.generated(id: ids[0])
        for id in ids.dropFirst() { keyring = try keyring.adding(id: id, activate: false) }
        return KeyringSealer(keyring: try keyring.activating(id: active))
    }

    static let fast = Worker.Configuration(
        concurrency: 4, blockTimeout: .milliseconds(200), heartbeatTTL: .seconds(5), reaperInterval: .seconds(1),
        retryDelay: .milliseconds(20), maxRetryDelay: .milliseconds(40))

    /// Every value of every key of the namespace, read raw (strings, hash fields and values, list
    /// and set members, stream entries), and each key's `DUMP`, as one text to search.
    static func everything(_ keys: KeySpace, _ conn: RedisConnection) async throws -> (raw: String, dump: String, keyCount: Int) {
        var cursor = "0"
        var names: [String] = []
        repeat {
            let r = try await conn.send(["SCAN", RedisArgument(cursor), "MATCH", RedisArgument(keys.prefix + "*"), "COUNT", 1000])
            let parts = try #require(r.array)
            cursor = parts[0].string ?? "0"
            names += (parts[1].array ?? []).compactMap(\.string)
        } while cursor != "0"
        var raw = ""
        var dump = ""
        func flat(_ v: RESPValue) -> String {
            if let a = v.array { return a.map(flat).joined(separator: "\n") }
            return v.string ?? ""
        }
        for name in names {
            let key = RedisArgument(name)
            let type = try await conn.send(["TYPE", key]).string ?? ""
            let read: [RedisArgument] =
                switch type {
                case "string": ["GET", key]
                case "hash": ["HGETALL", key]
                case "list": ["LRANGE", key, 0, -1]
                case "set": ["SMEMBERS", key]
                case "zset": ["ZRANGE", key, 0, -1]
                case "stream": ["XRANGE", key, "-", "+"]
                default: ["TYPE", key]
                }
            raw += name + "\n" + flat(try await conn.send(read)) + "\n"
            dump += String(decoding: try await conn.send(["DUMP", key]).bytes ?? [], as: UTF8.self)
        }
        return (raw, dump, names.count)
    }

    /// Runs sessions that put markers in every kind of payload (input, options, state, result,
    /// progress message and data, a thrown error, a dead letter), then reads every key.
    static func runMarkedSessions(keys: KeySpace, sealer: KeyringSealer?) async throws -> (
        markers: [String], read: String, raw: String, dump: String
    ) {
        let conn = try TestRedis.connection()
        let m = ["topic", "option", "echo", "error"].map(marker)
        let dispatcher = Dispatcher(connection: conn, keys: keys, agents: .builtIn, sealer: sealer)
        let quiz = try SessionID("quiz")
        let echo = try SessionID("echo")
        let fault = try SessionID("fault")
        try await withRunningWorker(keys: keys, agents: .builtIn, configuration: fast, sealer: sealer) {
            _ = try await dispatcher.submit([
                Submission(
                    session: quiz, agent: "quiz", input: ["topic": .string(m[0]), "questions": 2], options: ["note": .string(m[1])]),
                Submission(session: echo, agent: "echo", input: ["say": .string(m[2])]),
                Submission(session: fault, agent: "fault", input: ["fault": "throw", "message": .string(m[3])], maxAttempts: 2),
            ]).receipts()
            let store = SessionStore(connection: conn, keys: keys, sealer: sealer)
            let settled = try await eventually(timeout: .seconds(30)) {
                let q = try await store.session(quiz)
                let e = try await store.session(echo)
                let f = try await store.session(fault)
                return q?.status == .done && e?.status == .done && f?.status == .failed
            }
            #expect(settled, "the three sessions settle")
            // Echo waits for nothing more: a second step of the echo session (existing session: rekey path).
            _ = try await dispatcher.submit(Submission(session: echo, input: ["again": .string(m[2])]))
            let ok1 = try await eventually(timeout: .seconds(10)) { (try await store.session(echo))?.steps == 2 }
            #expect(ok1)
        }
        // What the keyring's holder reads: every marker is there (so the search below can fail).
        let store = SessionStore(connection: conn, keys: keys, sealer: sealer)
        var read = ""
        for id in [quiz, echo, fault] {
            let s = try #require(try await store.session(id))
            read += s.state.jsonString + s.options.jsonString
            read += try await store.events(of: id, after: "0", count: 1000).map { $0.json.jsonString }.joined()
        }
        let dead = try await DeadLetterQueue(connection: conn, keys: keys, sealer: sealer).list()
        read += dead.map { $0.json.jsonString }.joined()
        let all = try await everything(keys, conn)
        #expect(all.keyCount >= 10, "the namespace holds the sessions' keys")
        return (m, read, all.raw, all.dump)
    }

    @Test func redisHoldsNoPlaintextOfAnEncryptedSession() async throws {
        let keys = try TestRedis.uniqueKeys()
        let r = try await Self.runMarkedSessions(keys: keys, sealer: try Self.sealer(["k1"], active: "k1"))
        for marker in r.markers {
            #expect(r.read.contains(marker), "the keyring holder reads \(marker)")
            #expect(!r.raw.contains(marker), "\(marker) is stored in plain text")
            #expect(!r.dump.contains(marker), "\(marker) shows in a DUMP")
        }
        #expect(r.raw.contains(SealedText.prefix), "payloads are sealed")
        #expect(r.raw.contains("k1:"), "the wrapped data key names its key id")
    }

    @Test func withoutAKeyringEverythingIsPlainTextAsBefore() async throws {
        // The control: the same search finds every marker when no keyring is configured.
        let keys = try TestRedis.uniqueKeys()
        let r = try await Self.runMarkedSessions(keys: keys, sealer: nil)
        for marker in r.markers { #expect(r.raw.contains(marker), "\(marker) is plain text without a keyring") }
        #expect(!r.raw.contains(SealedText.prefix))
    }

    @Test func aCiphertextMovedToAnotherSessionOrFieldDoesNotOpen() async throws {
        let sealer = try Self.sealer(["k1"], active: "k1")
        let a = try SessionID("a")
        let b = try SessionID("b")
        let ca = try sealer.makeKey(for: a)
        let sealed = try ca.seal("{\"secret\":1}", as: .state)
        #expect(try ca.open(sealed, as: .state) == "{\"secret\":1}")
        let moved = #expect(throws: StepwiseError.self) { try ca.open(sealed, as: .input) }
        #expect(moved?.code == .sealedDataInvalid)
        let cb = try sealer.makeKey(for: b)
        #expect(throws: StepwiseError.self) { try cb.open(sealed, as: .state) }
        // A's wrapped key copied to B does not unwrap (it is bound to its session), even with the same key.
        let wrongSession = #expect(throws: StepwiseError.self) {
            try KeyringSealer(keyring: sealer.keyring).cipher(for: b, wrappedKey: ca.wrappedKey)
        }
        #expect(wrongSession?.code == .sealedDataInvalid)
        // A tampered byte does not open.
        var bytes = Array(sealed.utf8)
        bytes[bytes.count - 5] = bytes[bytes.count - 5] == UInt8(ascii: "A") ? UInt8(ascii: "B") : UInt8(ascii: "A")
        #expect(throws: StepwiseError.self) { try ca.open(String(decoding: bytes, as: UTF8.self), as: .state) }

        // In Redis: session y's state replaced by session x's sealed state (same keyring) does not
        // open, and the worker does not run a step on it: it is dead-lettered as an invalid job.
        let keys = try TestRedis.uniqueKeys()
        let conn = try TestRedis.connection()
        let dispatcher = Dispatcher(connection: conn, keys: keys, agents: .builtIn, sealer: sealer)
        let x = try SessionID("x")
        let y = try SessionID("y")
        _ = try await dispatcher.submit([
            Submission(session: x, agent: "counter", input: 1), Submission(session: y, agent: "counter", input: 2),
        ])
        .receipts()
        let xState = try #require(try await conn.send(["HGET", RedisArgument(keys.session(x)), "state"]).string)
        _ = try await conn.send(["HSET", RedisArgument(keys.session(y)), "state", RedisArgument(xState)])
        let store = SessionStore(connection: conn, keys: keys, sealer: sealer)
        let refused = await #expect(throws: StepwiseError.self) { _ = try await store.session(y) }
        #expect(refused?.code == .sealedDataInvalid, "\(String(describing: refused))")
        try await withRunningWorker(keys: keys, agents: .builtIn, configuration: Self.fast, sealer: sealer) {
            let ok2 = try await eventually(timeout: .seconds(10)) { (try await store.session(x))?.steps == 1 }
            #expect(ok2)
            let dead = try await eventually(timeout: .seconds(10)) {
                try await conn.send(["HGET", RedisArgument(keys.session(y)), "dead_reason"]).string == "invalid job"
            }
            #expect(dead, "the step on a moved state is dead-lettered, not run")
        }
        #expect(try await conn.send(["HGET", RedisArgument(keys.session(y)), "steps"]).int == 0, "no step applied")
    }

    @Test func aSessionWhoseKeyIsUnknownFailsWithAClearError() async throws {
        let keys = try TestRedis.uniqueKeys()
        let conn = try TestRedis.connection()
        let k1 = try Self.sealer(["k1"], active: "k1")
        let other = try Self.sealer(["k9"], active: "k9")
        let id = try SessionID("s")
        let marker = Self.marker("input")
        _ = try await Dispatcher(connection: conn, keys: keys, agents: .builtIn, sealer: k1).submit(
            Submission(session: id, agent: "echo", input: .string(marker)))
        // Readers without the key: a clear error, never garbage.
        for sealer in [nil, other] as [KeyringSealer?] {
            let e = await #expect(throws: StepwiseError.self) {
                _ = try await SessionStore(connection: conn, keys: keys, sealer: sealer).session(id)
            }
            #expect(e?.code == .keyUnavailable)
            #expect(e?.message.contains("k1") == true, "\(String(describing: e))")
        }
        // A client without a keyring cannot submit to it.
        let plain = await #expect(throws: StepwiseError.self) {
            _ = try await Dispatcher(connection: conn, keys: keys, agents: .builtIn).submit(Submission(session: id, input: 1))
        }
        #expect(plain?.code == .sessionEncrypted)
        // A worker with the wrong keyring does not run the step: it is dead-lettered, reason `key unavailable`.
        try await withRunningWorker(keys: keys, agents: .builtIn, configuration: Self.fast, sealer: other) {
            let dead = try await eventually(timeout: .seconds(10)) {
                try await conn.send(["HGET", RedisArgument(keys.session(id)), "dead_reason"]).string == "key unavailable"
            }
            #expect(dead)
        }
        let letter = try #require(try await DeadLetterQueue(connection: conn, keys: keys, sealer: k1).list().first)
        #expect(letter.error.contains("'k1'") && letter.error.contains("not in the keyring"), "\(letter.error)")
        #expect(letter.input.contains(marker), "the input is intact for a retry with the right keyring")
        // With the right keyring, the dead letter is retried and runs.
        try await DeadLetterQueue(connection: conn, keys: keys).retry(jobID: letter.jobID)
        try await withRunningWorker(keys: keys, agents: .builtIn, configuration: Self.fast, sealer: k1) {
            let store = SessionStore(connection: conn, keys: keys, sealer: k1)
            let ok3 = try await eventually(timeout: .seconds(10)) { (try await store.session(id))?.status == .done }
            #expect(ok3)
            let last = (try await store.session(id))?.state["last"]?.stringValue
            #expect(last == marker)
        }
    }

    @Test func rotationRewrapsEveryDataKeyAndTheOldKeyCanGo() async throws {
        let keys = try TestRedis.uniqueKeys()
        let conn = try TestRedis.connection()
        // One keyring's history: k1; k1 and k2 (active); k2 alone.
        let ring1 = try Keyring.generated(id: "k1")
        let ring12 = try ring1.adding(id: "k2", activate: true)
        let k1 = KeyringSealer(keyring: ring1)
        let both = KeyringSealer(keyring: ring12)
        let onlyK2 = KeyringSealer(keyring: try ring12.removing(id: "k1"))
        let old = try (0..<5).map { try SessionID("old\($0)") }
        let plain = try SessionID("plain")
        _ = try await Dispatcher(connection: conn, keys: keys, agents: .builtIn, sealer: k1).submit(
            old.map { Submission(session: $0, agent: "counter", input: 1) }
        ).receipts()
        _ = try await Dispatcher(connection: conn, keys: keys, agents: .builtIn).submit(
            Submission(session: plain, agent: "counter", input: 1))
        let store = SessionStore(connection: conn, keys: keys, sealer: both)
        try await withRunningWorker(keys: keys, agents: .builtIn, configuration: Self.fast, sealer: k1) {
            let done1 = try await eventually(timeout: .seconds(10)) { try await Self.allHave(1, steps: old, in: store) }
            #expect(done1)
        }
        // k2 added and active: running sessions go on unchanged (their data keys stay under k1),
        // new sessions get data keys under k2.
        let fresh = try SessionID("fresh")
        let dispatcher = Dispatcher(connection: conn, keys: keys, agents: .builtIn, sealer: both)
        _ = try await dispatcher.submit(
            old.map { Submission(session: $0, input: 2) } + [Submission(session: fresh, agent: "counter", input: 1)]
        )
        .receipts()
        func dk(_ id: SessionID) async throws -> String {
            try await conn.send(["HGET", RedisArgument(keys.session(id)), "dk"]).string ?? ""
        }
        let oldKey = try await dk(old[0])
        let freshKey = try await dk(fresh)
        #expect(oldKey.hasPrefix("k1:") && freshKey.hasPrefix("k2:"))
        try await withRunningWorker(keys: keys, agents: .builtIn, configuration: Self.fast, sealer: both) {
            let done2 = try await eventually(timeout: .seconds(10)) { try await Self.allHave(2, steps: old, in: store) }
            #expect(done2)
        }
        let payloadsBefore = try await conn.send(["HGET", RedisArgument(keys.session(old[0])), "state"]).string

        let rotation = KeyRotation(connection: conn, keys: keys, sealer: both)
        // Compare-and-set: a rewrap whose old value is not the stored one changes nothing.
        let stale = try await conn.run(ScriptCalls(keys: keys, eventsMaxLength: 100).rewrap(session: old[0], old: "k1:stale", new: "k2:x"))
        #expect(stale.int == 0)
        let first = try await rotation.rewrapAll(count: 2)
        #expect(first.rewrapped == 5 && first.alreadyActive == 1 && first.plain == 1 && first.unreadableCount == 0, "\(first)")
        // Resumable: a second run (as after an interruption) finds nothing left to do.
        let second = try await rotation.rewrapAll()
        #expect(second.rewrapped == 0 && second.alreadyActive == 6, "\(second)")
        #expect(try await conn.send(["HGET", RedisArgument(keys.session(old[0])), "state"]).string == payloadsBefore, "payloads untouched")

        // k1 removed: everything still opens and runs under k2 alone.
        let k2Store = SessionStore(connection: conn, keys: keys, sealer: onlyK2)
        for id in old { #expect((try await k2Store.session(id))?.state["count"]?.intValue == 2) }
        _ = try await Dispatcher(connection: conn, keys: keys, agents: .builtIn, sealer: onlyK2).submit(
            old.map { Submission(session: $0, input: 3) }
        )
        .receipts()
        try await withRunningWorker(keys: keys, agents: .builtIn, configuration: Self.fast, sealer: onlyK2) {
            let done3 = try await eventually(timeout: .seconds(10)) { try await Self.allHave(3, steps: old, in: k2Store) }
            #expect(done3)
        }
        let report = try await Ledger.check(
            keys: keys, conn: conn, sessions: old, expected: Dictionary(uniqueKeysWithValues: old.map { ($0, [1, 2, 3] as [JSONValue]) }),
            sealer: onlyK2)
        #expect(report.isClean, "\(report.description)")
        // A session under a key the keyring lacks is reported, not touched.
        let k1Again = KeyRotation(connection: conn, keys: keys, sealer: try Self.sealer(["k3"], active: "k3"))
        let lacking = try await k1Again.rewrapAll()
        #expect(lacking.unreadableCount == 6 && lacking.rewrapped == 0, "\(lacking)")
    }

    @Test func aDispatcherSealsASubmitToASessionItKnowsOnceWithItsKey() async throws {
        // A private server: `INFO commandstats` counts every client's scripts.
        let server = try await RedisServerProcess.start()
        defer { server.terminate() }
        let conn = RedisConnection(configuration: .init(endpoint: server.endpoint))
        let keys = try KeySpace(namespace: "known")
        let sealer = try Self.sealer(["k1"], active: "k1")
        let dispatcher = Dispatcher(connection: conn, keys: keys, agents: .builtIn, sealer: sealer)
        func scriptCalls() async throws -> Int {
            let info = try await conn.send(["INFO", "commandstats"]).throwingServerError().string ?? ""
            let line = info.split(whereSeparator: \.isNewline).first { $0.hasPrefix("cmdstat_evalsha:") } ?? ""
            return Int(line.split(separator: ",").first?.split(separator: "=").last ?? "") ?? 0
        }
        let id = try SessionID("known")
        _ = try await dispatcher.submit(Submission(session: id, agent: "counter", input: 1))
        let before = try await scriptCalls()
        let receipts = await dispatcher.submit((2...4).map { Submission(session: id, input: .int($0)) })
        #expect(receipts.allSatisfy { (try? $0.get()) != nil })
        #expect(try await scriptCalls() - before == 3, "one script call per submission: none refused and sent again")
        // A copy of the dispatcher shares what it knows; another dispatcher learns it in one refusal.
        let other = Dispatcher(connection: conn, keys: keys, agents: .builtIn, sealer: sealer)
        let mid = try await scriptCalls()
        _ = try await other.submit(Submission(session: id, input: 5))
        #expect(try await scriptCalls() - mid == 2, "refused once with the stored key, then sealed with it")
        let store = SessionStore(connection: conn, keys: keys, sealer: sealer)
        #expect(try await store.session(id)?.queued == 5)
    }

    @Test func forgetDestroysTheDataKeyAndAllData() async throws {
        let keys = try TestRedis.uniqueKeys()
        let conn = try TestRedis.connection()
        let sealer = try Self.sealer(["k1"], active: "k1")
        let dispatcher = Dispatcher(connection: conn, keys: keys, agents: .builtIn, sealer: sealer)
        let id = try SessionID("gone")
        let keep = try SessionID("kept")
        _ = try await dispatcher.submit([
            Submission(session: id, agent: "counter", owner: "alice", input: 1), Submission(session: keep, agent: "counter", input: 1),
        ]).receipts()
        let sealedState = try #require(try await conn.send(["HGET", RedisArgument(keys.session(id)), "state"]).string)
        let notOwner = await #expect(throws: StepwiseError.self) { _ = try await dispatcher.forget(id, owner: "mallory") }
        #expect(notOwner?.code == .notOwner)
        let receipt = try await dispatcher.forget(id, owner: "alice")
        #expect(receipt?.encrypted == true)
        #expect(try await dispatcher.forget(id, owner: "alice") == nil, "a second forget finds nothing")
        for key in [keys.session(id), keys.inbox(id), keys.jobs(id), keys.events(id), keys.idempotency(id)] {
            #expect(try await conn.send(["EXISTS", RedisArgument(key)]).int == 0, "\(key) deleted")
        }
        // The copy an attacker kept (as the AOF would) no longer opens: the data key is gone, and
        // a new incarnation under the same id gets a new one.
        _ = try await dispatcher.submit(Submission(session: id, agent: "counter", input: 1))
        let cipher = try #require(try await SessionStore(connection: conn, keys: keys, sealer: sealer).cipher(for: id))
        #expect(throws: StepwiseError.self) { try cipher.open(sealedState, as: .state) }
        // The other session is untouched, and the queue skips the forgotten job.
        try await withRunningWorker(keys: keys, agents: .builtIn, configuration: Self.fast, sealer: sealer) {
            let store = SessionStore(connection: conn, keys: keys, sealer: sealer)
            let ok4 = try await eventually(timeout: .seconds(10)) { (try await store.session(keep))?.steps == 1 }
            #expect(ok4)
            let ok5 = try await eventually(timeout: .seconds(10)) { (try await store.session(id))?.steps == 1 }
            #expect(ok5)
        }
    }

    @Test func keyringTextIsCheckedWithClearErrorsThatShowNoKey() throws {
        let good = try Keyring.generated(id: "k1").adding(id: "k2", activate: true)
        let parsed = try Keyring(parsing: good.text, source: "test")
        #expect(parsed.activeKeyID == "k2" && parsed.keyIDs == ["k1", "k2"])
        let key = String(good.text.split(separator: "\"").first { $0.count == 44 } ?? "")
        #expect(key.count == 44)
        let cases: [(String, String)] = [
            ("not json", "not a JSON object"),
            ("[]", "not a JSON object"),
            ("{\"keys\": {}}", "no \"keys\" object"),
            ("{\"keys\": {\"a\": \"\(key)\"}}", "no \"active\""),
            ("{\"active\": \"b\", \"keys\": {\"a\": \"\(key)\"}}", "not among the keys"),
            ("{\"active\": \"a\", \"keys\": {\"a\": \"c2hvcnQ=\"}}", "is 5 bytes"),
            ("{\"active\": \"a\", \"keys\": {\"a\": \"%%%\"}}", "not base64"),
            ("{\"active\": \"a:b\", \"keys\": {\"a:b\": \"\(key)\"}}", "is invalid"),
            ("{\"active\": \"a\", \"keys\": {\"a\": \"\(key)\"}, \"extra\": 1}", "unknown field"),
        ]
        for (text, expected) in cases {
            let e = #expect(throws: StepwiseError.self) { try Keyring(parsing: text, source: "--keyring-file x") }
            #expect(e?.message.contains(expected) == true, "\(text): \(String(describing: e))")
            #expect(e?.message.contains("--keyring-file x") == true)
            #expect(e?.message.contains(key) == false, "the error shows key material")
        }
        #expect(throws: StepwiseError.self) { try good.removing(id: "k2") }
        #expect(try good.removing(id: "k1").keyIDs == ["k2"])
    }
}

extension EncryptionTests {
    /// Whether every session in `ids` has committed `steps` steps.
    static func allHave(_ steps: Int, steps ids: [SessionID], in store: SessionStore) async throws -> Bool {
        for id in ids where (try await store.session(id))?.steps != steps { return false }
        return true
    }
}

/// Issue 12, point 3: what a backup taken before a forget still opens, and how the retirement of
/// the keyring key that wrapped it shreds the backup too. The real CLI against a private
/// redis-server with an append-only file (no RDB preamble, so the file is searchable text).
@Suite(
    "crypto-shredding reaches the AOF and older backups (CLI, private redis-server)",
    .enabled(if: TestRedis.url != nil && TestRedis.binary != nil, "needs STEPWISE_TEST_REDIS_URL and STEPWISE_BIN: run `make test`"),
    .serialized,
    .timeLimit(.minutes(3))
)
struct ShreddingBackupTests {
    static func files(under dir: String) -> String {
        let items = (try? FileManager.default.subpathsOfDirectory(atPath: dir)) ?? []
        return items.map { (try? String(contentsOfFile: dir + "/" + $0, encoding: .isoLatin1)) ?? "" }.joined(separator: "\n")
    }

    @Test func aBackupTakenBeforeAForgetOpensOnlyUntilItsKeyIsRetired() async throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("stepwise-shred-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let live = try await RedisServerProcess.start(extraArguments: ["--aof-use-rdb-preamble", "no"])
        defer { live.terminate() }
        let keyring = dir + "/keyring.json"
        let env = ["STEPWISE_KEYRING_FILE": keyring]
        let base = ["--redis", live.url, "--namespace", "shred"]

        let made = try await runBinary(["keys", "generate", "--id", "2026-11", "--file", keyring])
        #expect(made.status == 0, "\(made.stderr)")
        let mode = try FileManager.default.attributesOfItem(atPath: keyring)[.posixPermissions] as? Int
        #expect(mode == 0o600, "the keyring file is private")

        let binary = try #require(TestRedis.binary)
        let worker = try ChildProcess(binary: binary, arguments: ["worker"] + base, environment: env)
        defer { if worker.isRunning { worker.signal(SIGKILL) } }
        let gone = EncryptionTests.marker("forgotten")
        let kept = EncryptionTests.marker("kept")
        for (session, marker) in [("gone", gone), ("kept", kept)] {
            let r = try await runBinary(
                ["submit", "--session", session, "--agent", "echo", "--input", "{\"say\":\"\(marker)\"}", "--wait"] + base, environment: env
            )
            #expect(r.status == 0, "\(r.stderr)")
        }
        let conn = RedisConnection(configuration: .init(endpoint: live.endpoint))
        let wrapped = try #require(try await conn.send(["HGET", "shred:s:{gone}", "dk"]).string)
        #expect(wrapped.hasPrefix("2026-11:"))

        // A backup, as `redis-cli --rdb` takes it.
        let backup = dir + "/restore"
        try FileManager.default.createDirectory(atPath: backup, withIntermediateDirectories: true)
        let cli = Process()
        cli.executableURL = URL(fileURLWithPath: "/usr/bin/redis-cli")
        cli.arguments = ["-p", String(live.port), "--rdb", backup + "/dump.rdb"]
        cli.standardOutput = FileHandle.nullDevice
        try cli.run()
        cli.waitUntilExit()
        #expect(cli.terminationStatus == 0)

        // Forget. The live AOF held the wrapped key until now; the rewrite drops it.
        #expect(Self.files(under: live.directory).contains(wrapped), "the AOF holds the wrapped key before the forget")
        let forgot = try await runBinary(["forget", "gone", "--rewrite-aof"] + base, environment: env)
        #expect(forgot.status == 0 && forgot.stdout.contains("forgot session gone"), "\(forgot.stdout) \(forgot.stderr)")
        let status = try await runBinary(["status", "gone"] + base, environment: env)
        #expect(status.status == 1 && !status.stdout.contains(gone))
        let rewritten = try await eventually(timeout: .seconds(20), interval: .milliseconds(100)) {
            let info = try await conn.send(["INFO", "persistence"]).string ?? ""
            return info.contains("aof_rewrite_in_progress:0") && info.contains("aof_rewrite_scheduled:0")
                && !Self.files(under: live.directory).contains(wrapped)
        }
        #expect(rewritten, "after the rewrite the AOF no longer holds the wrapped key")
        let aof = Self.files(under: live.directory)
        #expect(!aof.contains(gone) && !aof.contains(kept), "the AOF never held plaintext")

        // The backup restored into a fresh server: while the key that wrapped it exists, it opens.
        let restored = try await RedisServerProcess.start(extraArguments: ["--appendonly", "no", "--dir", backup])
        defer { restored.terminate() }
        let old = ["--redis", restored.url, "--namespace", "shred"]
        let before = try await runBinary(["status", "gone", "--json"] + old, environment: env)
        #expect(before.status == 0 && before.stdout.contains(gone), "the backup opens with the current keyring: \(before.stderr)")

        // The key retirement: a new key, every live session rewrapped to it, the old key destroyed.
        #expect(try await runBinary(["keys", "generate", "--id", "2026-12", "--file", keyring]).status == 0)
        // Every process loads the new keyring before the rewrap (here: the worker is restarted).
        #expect(await worker.stop() == 0, "\(worker.output.suffix(500))")
        let worker2 = try ChildProcess(binary: binary, arguments: ["worker"] + base, environment: env)
        defer { if worker2.isRunning { worker2.signal(SIGKILL) } }
        let rewrap = try await runBinary(["keys", "rewrap"] + base, environment: env)
        #expect(rewrap.status == 0 && rewrap.stdout.contains("rewrapped 1 session(s) to key 2026-12"), "\(rewrap.stdout) \(rewrap.stderr)")
        let removed = try await runBinary(["keys", "remove", "--id", "2026-11", "--file", keyring])
        #expect(removed.status == 0, "\(removed.stderr)")

        // Now the backup's copy of the forgotten session cannot be opened, with a clear error...
        let after = try await runBinary(["status", "gone"] + old, environment: env)
        #expect(after.status == 1 && !after.stdout.contains(gone), "\(after.stdout)")
        #expect(after.stderr.contains("'2026-11'") && after.stderr.contains("not in the keyring"), "\(after.stderr)")
        // ...and neither can its other sessions: every backup older than the retirement is shredded.
        let keptOld = try await runBinary(["status", "kept"] + old, environment: env)
        #expect(keptOld.status == 1 && !keptOld.stdout.contains(kept))
        // The live session is read, and still runs, under the new key.
        let keptLive = try await runBinary(["status", "kept", "--json"] + base, environment: env)
        #expect(keptLive.status == 0 && keptLive.stdout.contains(kept), "\(keptLive.stderr)")
        let more = try await runBinary(
            ["submit", "--session", "kept", "--input", "{\"say\":\"again\"}", "--wait"] + base, environment: env)
        #expect(more.status == 0, "\(more.stdout) \(more.stderr)")
        #expect(await worker2.stop() == 0, "\(worker2.output.suffix(500))")
        for w in [worker, worker2] {
            #expect(!w.output.contains(gone) && !w.output.contains(kept), "the worker logged a payload")
        }
        await conn.close()
    }
}
