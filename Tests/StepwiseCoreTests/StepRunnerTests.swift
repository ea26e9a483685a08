import Logging
import StepwiseRedis
import Synchronization
import Testing

@testable import StepwiseAgents
@testable import StepwiseCore

/// A ``StepChannel`` with no server behind it: it records every script call and command, answers
/// a commit with `ok` at the claim's next version, and a state read with what it was given.
final class ScriptedChannel: StepChannel {
    let calls = Mutex<[ScriptCall]>([])
    let commands = Mutex<[[String]]>([])
    /// The reply to `HMGET <session> state holder inc version`.
    let stored: [String]

    init(stored: [String] = []) { self.stored = stored }

    func run(_ call: ScriptCall, coalesced: Bool) async throws -> RESPValue {
        calls.withLock { $0.append(call) }
        guard call.script.name == "commit" else { return .array([]) }
        return .array([.bulk(Array("ok".utf8)), .bulk(Array("1-0".utf8)), .integer(3)])
    }

    func command(_ arguments: [RedisArgument]) async throws -> RESPValue {
        commands.withLock { $0.append(arguments.map { String(decoding: $0.bytes, as: UTF8.self) }) }
        return .array(stored.map { .bulk(Array($0.utf8)) })
    }

    func close() async {}

    /// The commit calls' arguments, as text.
    var commits: [[String]] {
        calls.withLock { $0.filter { $0.script.name == "commit" }.map { $0.arguments.map { String(decoding: $0.bytes, as: UTF8.self) } } }
    }
}

/// The step runner (`Worker.process`): claim in, agent step, commit arguments out, with a scripted
/// channel instead of Redis.
@Suite struct StepRunnerTests {
    func worker(_ channel: ScriptedChannel, cacheThreshold: Int = 8 << 10) throws -> Worker {
        var c = Worker.Configuration(workerID: "unit")
        c.stateCacheThreshold = cacheThreshold
        return Worker(
            configuration: c, redis: .init(endpoint: try RedisEndpoint(parsing: "redis://127.0.0.1:1")),
            keys: try KeySpace(namespace: "unit"), agents: .builtIn, logger: Logger(label: "unit"), metrics: nil, sealer: nil,
            steps: channel)
    }

    func job(agent: String = "counter", state: String = #"{"count":2,"inputs":[1,2]}"#, input: String = "3", attempt: Int = 1)
        -> Claim.Job
    {
        Claim.Job(
            jobID: "s:5", sessionID: "s", agent: agent, options: "{}", state: state, version: 2, step: 3, attempt: attempt,
            input: input, holder: "unit/9", submittedAt: nil, maxAttempts: nil, failures: attempt - 1, quarantined: false,
            incarnation: "7")
    }

    // Commit arguments (ARGV, 0-based here): 4 job id, 5 holder, 6 outcome, 7 state, 8 payload,
    // 11 retry delay ms, 12 dead-letter reason.

    @Test func aStepCommitsItsNewStateUnderItsHoldersToken() async throws {
        let channel = ScriptedChannel()
        _ = try await worker(channel).process(job(), sticky: false)
        let commits = channel.commits
        try #require(commits.count == 1)
        #expect(commits[0][4] == "s:5")
        #expect(commits[0][5] == "unit/9")
        #expect(commits[0][6] == "wait", "\(commits[0][8]) \(commits[0][12])")
        let state = try JSONValue(parsing: commits[0][7])
        #expect(state["count"]?.intValue == 3)
        #expect(state["inputs"]?.arrayValue?.compactMap(\.intValue) == [1, 2, 3])
        #expect(channel.commands.withLock { $0.isEmpty }, "the claim carried the state: nothing read")
    }

    @Test func aThrowingStepCommitsARetryWithADelay() async throws {
        let channel = ScriptedChannel()
        _ = try await worker(channel).process(job(agent: "fault", input: #"{"fault":"throw-once"}"#), sticky: false)
        let commits = channel.commits
        try #require(commits.count == 1)
        #expect(commits[0][6] == "retry")
        #expect((Int(commits[0][11]) ?? 0) > 0)
    }

    @Test func anUnknownAgentOrACorruptStateIsDeadLettered() async throws {
        for j in [job(agent: "nope"), job(state: "{not json")] {
            let channel = ScriptedChannel()
            _ = try await worker(channel).process(j, sticky: false)
            let commits = channel.commits
            try #require(commits.count == 1)
            #expect(commits[0][6] == "dead")
            #expect(!commits[0][12].isEmpty, "the dead letter says why")
        }
    }

    @Test func aStateLeftOutOfTheClaimIsReadAndCheckedAgainstTheClaim() async throws {
        var omitted = job(state: "")
        omitted.stateOmitted = true
        // The session still holds this claim: its state is read, and the step runs on it.
        let holding = ScriptedChannel(stored: [#"{"count":40,"inputs":[]}"#, "unit/9", "7", "2"])
        _ = try await worker(holding, cacheThreshold: 1).process(omitted, sticky: false)
        #expect(holding.commands.withLock { $0.first?.first } == "HMGET")
        #expect(try JSONValue(parsing: try #require(holding.commits.first)[7])["count"]?.intValue == 41)
        // It does not (another holder): nothing runs and nothing is committed.
        let moved = ScriptedChannel(stored: [#"{"count":40,"inputs":[]}"#, "other/1", "7", "2"])
        await #expect(throws: StepwiseError.self) { _ = try await worker(moved, cacheThreshold: 1).process(omitted, sticky: false) }
        #expect(moved.commits.isEmpty)
    }
}
