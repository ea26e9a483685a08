import Foundation
import StepwiseAgents
import StepwiseRedis
import StepwiseTesting
import Testing

@testable import StepwiseCore

/// Every protocol script validates its arguments before it writes: a bad argument is a typed
/// `invalidArgument` error and the namespace is left exactly as it was.
@Suite(
    "script contracts: validate before writing, typed errors",
    .enabled(if: TestRedis.url != nil, "needs STEPWISE_TEST_REDIS_URL: run `make test`"),
    .timeLimit(.minutes(2))
)
struct ScriptContractTests {
    let keys: KeySpace
    let conn: RedisConnection
    let dispatcher: Dispatcher
    let p: ProtocolDriver

    init() throws {
        keys = try TestRedis.uniqueKeys()
        conn = try TestRedis.connection()
        dispatcher = Dispatcher(connection: conn, keys: keys, agents: .builtIn)
        p = ProtocolDriver(conn: conn, keys: keys)
    }

    struct Case: Sendable, CustomTestStringConvertible {
        var name: String
        var make: @Sendable (ScriptCalls, KeySpace, _ job: String, _ holder: String) -> ScriptCall
        var testDescription: String { name }
    }

    /// Replaces argument `index` (0-based, in ARGV) of a call.
    static func with(_ call: ScriptCall, argument index: Int, _ value: String) -> ScriptCall {
        var c = call
        c.arguments[index] = RedisArgument(value)
        return c
    }

    static let cases: [Case] = [
        Case(name: "submit: ttl not a number") { s, _, _, _ in
            with(
                s.submit(
                    .init(
                        session: try! SessionID("x"), input: "1", initialState: "{}", defaultTTLMilliseconds: 0), now: 1),
                argument: 8, "soon")
        },
        Case(name: "submit: max attempts 0") { s, _, _, _ in
            with(
                s.submit(
                    .init(session: try! SessionID("x"), agent: "counter", input: "1", initialState: "{}", defaultTTLMilliseconds: 0), now: 1
                ), argument: 10, "0")
        },
        Case(name: "claim: worker id with a space") { s, _, _, _ in
            with(s.claim(worker: "w", jobID: nil, now: 1, activeLimit: 0), argument: 1, "w x")
        },
        Case(name: "claim: in-flight key of another worker") { s, k, _, _ in
            var c = s.claim(worker: "w", jobID: nil, now: 1, activeLimit: 0)
            c.keys[1] = RedisArgument(k.inflight(worker: "other"))
            return c
        },
        Case(name: "commit: unknown outcome") { s, _, job, holder in
            validCommit(s, job, holder).replacing(argument: 6, "explode")
        },
        Case(name: "commit: a token of another worker") { s, _, job, _ in validCommit(s, job, "other/1") },
        Case(name: "commit: negative retry delay") { s, _, job, holder in
            validCommit(s, job, holder, outcome: .retry).replacing(argument: 11, "-5")
        },
        Case(name: "commit: malformed state delta") { s, _, job, holder in
            validCommit(s, job, holder).replacing(argument: 17, "1 two 3")
        },
        Case(name: "commit: claimed attempt 0") { s, _, job, holder in
            validCommit(s, job, holder, claimed: .init(attempt: 1, submittedAt: 5, maxAttempts: nil)).replacing(argument: 18, "0")
        },
        Case(name: "commit: claimed submit time not a number") { s, _, job, holder in
            validCommit(s, job, holder, claimed: .init(attempt: 1, submittedAt: 5, maxAttempts: nil)).replacing(argument: 19, "soon")
        },
        Case(name: "release: unknown reason") { s, _, job, holder in
            s.release(worker: "w", jobID: job, holder: holder, reason: .shutdown, now: 1, activeLimit: 0, uncount: true).replacing(
                argument: 6, "why")
        },
        Case(name: "release: bad job id") { s, _, _, holder in
            s.release(worker: "w", jobID: "no-colon", holder: holder, reason: .shutdown, now: 1, activeLimit: 0, uncount: true)
        },
        Case(name: "reap: heartbeat key of another worker") { s, k, _, _ in
            var c = s.reap(deadWorker: "w", now: 1, activeLimit: 0, pruneAfter: .seconds(1))
            c.keys[2] = RedisArgument(k.heartbeat(worker: "other"))
            return c
        },
        Case(name: "heartbeat: unknown status") { s, _, _, _ in
            s.heartbeat(worker: "w", ttl: .seconds(1), status: .ok).replacing(argument: 3, "fine")
        },
        Case(name: "heartbeat: ttl 0") { s, _, _, _ in s.heartbeat(worker: "w", ttl: .seconds(1), status: .ok).replacing(argument: 2, "0")
        },
        Case(name: "progress: empty token") { s, _, job, _ in
            s.progress(jobID: job, holder: "", step: 1, attempt: 1, now: 1, message: "", data: "", solo: false)
        },
        Case(name: "promote: keys of another namespace") { s, _, _, _ in
            var c = s.promote()
            c.keys[0] = "elsewhere:delayed"
            return c
        },
        Case(name: "cancel: empty reason") { s, _, _, _ in s.cancel(session: try! SessionID("x"), reason: "", now: 1) },
        Case(name: "touch: ttl not a number") { s, _, _, _ in
            s.touch(session: try! SessionID("x"), now: 1, ttlMilliseconds: 5).replacing(argument: 3, "1h")
        },
        Case(name: "dead_letter: unknown action") { s, _, job, _ in
            s.deadLetter(jobID: job, action: .retry, now: 1).replacing(argument: 2, "resurrect")
        },
        Case(name: "sweep: limit not a number") { s, _, _, _ in s.sweep(activeLimit: 0).replacing(argument: 1, "many") },
    ]

    @Test(arguments: cases)
    func aBadArgumentIsATypedErrorAndWritesNothing(_ c: Case) async throws {
        // A session with a dead letter, so dead_letter has something it could (wrongly) mutate.
        let id = try SessionID("x")
        _ = try await dispatcher.submit(Submission(session: id, agent: "counter", input: 1))
        try await p.register("w")
        let job = try await p.claimRun("w")
        #expect(try await p.commit("w", job, outcome: .dead) == "dead")
        let before = try await p.snapshot()
        let call = c.make(ScriptCalls(keys: keys, eventsMaxLength: 100), keys, job.jobID, job.holder)
        let error = await #expect(throws: StepwiseError.self) { _ = try await conn.run(call) }
        #expect(error?.code == .invalidArgument, "\(String(describing: error))")
        #expect(error?.message.contains("script:") == false, "the Lua location is cut from the message")
        #expect(try await p.snapshot() == before, "nothing was written")
    }

    @Test func everyScriptFileStartsWithItsContract() {
        for script in Scripts.all {
            let body = script.source
            #expect(body.hasPrefix("#!lua"), "\(script.name)")
            let afterPrelude = body.components(separatedBy: Scripts.prelude).last ?? ""
            #expect(afterPrelude.contains("-- ARGV") || afterPrelude.contains("-- KEYS"), "\(script.name) states its KEYS/ARGV")
        }
        #expect(Scripts.heartbeat.source.hasPrefix("#!lua flags=allow-oom"))
        #expect(Scripts.all.filter { $0.source.contains("allow-oom") }.map(\.name) == ["heartbeat"])
    }
}

extension ScriptCall {
    func replacing(argument index: Int, _ value: String) -> ScriptCall { ScriptContractTests.with(self, argument: index, value) }
}

/// A well-formed commit of worker `w` (with `claimed`: also sending what its claim read, ARGV 19-21).
private func validCommit(
    _ s: ScriptCalls, _ job: String, _ holder: String, outcome: CommitOutcome = .wait,
    claimed: ScriptCalls.ClaimedJob? = nil
) -> ScriptCall {
    s.commit(
        .init(
            worker: "w", jobID: job, holder: holder, outcome: outcome, state: "{}", payload: "", fetchNext: false, activeLimit: 0,
            claimed: claimed),
        now: 1)
}
