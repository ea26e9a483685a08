import Foundation
import StepwiseRedis

/// One protocol script invocation: the script, its keys and its arguments.
struct ScriptCall: Sendable {
    var script: RedisScript
    var keys: [RedisArgument]
    var arguments: [RedisArgument]
}

/// The typed Swift side of the protocol's Lua scripts: each function builds one script's call, so
/// each argument's position is written here once (and in the script's header). Replies are
/// decoded by the types below; `STEPWISE <code>` errors become ``StepwiseError``s.
struct ScriptCalls: Sendable {
    let keys: KeySpace
    /// Approximate cap (`MAXLEN ~`) of each session's event stream.
    let eventsMaxLength: Int

    private var prefix: RedisArgument { RedisArgument(keys.prefix) }
    private var maxlen: RedisArgument { RedisArgument(eventsMaxLength) }

    struct SubmitArguments: Sendable {
        var session: SessionID
        var agent: String?
        var owner: String?
        var options: String?
        var input: String
        var idempotencyKey: String?
        var ttlMilliseconds: Int64?
        var initialState: String
        var maxAttempts: Int?
        var defaultTTLMilliseconds: Int64
        var asOperator: Bool = false
        /// The session's wrapped data key; empty for a client without a keyring.
        var wrappedKey: String = ""
        /// `wrappedKey` was just made: only such a key may start a new session.
        var freshKey: Bool = false
    }

    func submit(_ a: SubmitArguments, now: Int64) -> ScriptCall {
        ScriptCall(
            script: Scripts.submit, keys: [],
            arguments: [
                prefix, RedisArgument(a.session.rawValue), RedisArgument(a.agent ?? ""), RedisArgument(a.owner ?? ""),
                RedisArgument(a.options ?? ""), RedisArgument(a.input), RedisArgument(a.idempotencyKey ?? ""),
                RedisArgument(now), RedisArgument(a.ttlMilliseconds.map(String.init) ?? ""), RedisArgument(a.initialState),
                RedisArgument(a.maxAttempts.map(String.init) ?? ""), RedisArgument(a.defaultTTLMilliseconds),
                RedisArgument(a.asOperator ? "1" : ""), RedisArgument(a.wrappedKey), RedisArgument(a.freshKey ? "1" : ""),
            ])
    }

    /// Claims `jobID` (already moved into the worker's in-flight list); with `jobID` nil, takes up
    /// to `count` jobs from `ready` and claims each (the reply is then a list of claims).
    /// - Parameter stateAbove: a state longer than this is left out of the claim (0: always sent).
    func claim(worker: String, jobID: String?, now: Int64, activeLimit: Int, count: Int = 1, stateAbove: Int = 0) -> ScriptCall {
        ScriptCall(
            script: Scripts.claim, keys: [RedisArgument(keys.ready), RedisArgument(keys.inflight(worker: worker))],
            arguments: [
                prefix, RedisArgument(worker), RedisArgument(now), RedisArgument(jobID ?? ""), maxlen, RedisArgument(activeLimit),
                RedisArgument(count), RedisArgument(stateAbove),
            ])
    }

    struct CommitArguments: Sendable {
        var worker: String
        var jobID: String
        var holder: String
        var outcome: CommitOutcome
        var state: String
        var payload: String
        var fetchNext: Bool
        var activeLimit: Int
        var retryDelay: Duration = .zero
        var deadReason: String = ""
        var deadAttempts: Int?
        /// The payload's second copy (a continuation's input, a dead letter's error), sealed for
        /// its own field; empty: the same text as `payload`.
        var secondPayload: String = ""
        /// For the next claim: a state longer than this is left out (0: always sent).
        var stateAbove: Int = 0
        /// With `fetchNext`: claim the session's own next job, when this commit releases one.
        var sticky = false
        /// `state` is only the changed middle of the stored state (see ``StateDelta``); nil: the whole state.
        var delta: StateDelta?
        /// What the claim read of the job (its attempt, submit time and attempt limit), so the
        /// commit need not read it again; nil: the script reads it from the jobs hash.
        var claimed: ClaimedJob?
    }

    /// The job facts a claim reply carries that a commit writes into events and continuations.
    struct ClaimedJob: Sendable {
        var attempt: Int
        var submittedAt: Int64?
        var maxAttempts: Int?
    }

    func commit(_ a: CommitArguments, now: Int64) -> ScriptCall {
        ScriptCall(
            script: Scripts.commit, keys: [RedisArgument(keys.ready), RedisArgument(keys.inflight(worker: a.worker))],
            arguments: [
                prefix, RedisArgument(a.worker), RedisArgument(now), maxlen, RedisArgument(a.jobID), RedisArgument(a.holder),
                RedisArgument(a.outcome.rawValue), RedisArgument(a.state), RedisArgument(a.payload), a.fetchNext ? "1" : "0",
                RedisArgument(a.activeLimit), RedisArgument(a.retryDelay.milliseconds), RedisArgument(a.deadReason),
                RedisArgument(a.deadAttempts.map(String.init) ?? ""), RedisArgument(a.secondPayload), RedisArgument(a.stateAbove),
                a.sticky ? "1" : "", RedisArgument(a.delta.map { "\($0.prefix) \($0.suffix) \($0.version)" } ?? ""),
                RedisArgument(a.claimed.map { String($0.attempt) } ?? ""),
                RedisArgument(a.claimed?.submittedAt.map(String.init) ?? ""),
                RedisArgument(a.claimed?.maxAttempts.map(String.init) ?? ""),
            ])
    }

    enum ReleaseReason: String, Sendable { case shutdown, orphan }

    /// Releases one of `worker`'s in-flight jobs: held with `holder`, or (holder nil) an orphan.
    func release(
        worker: String, jobID: String, holder: String?, reason: ReleaseReason, now: Int64, activeLimit: Int, uncount: Bool
    ) -> ScriptCall {
        ScriptCall(
            script: Scripts.release, keys: [RedisArgument(keys.ready), RedisArgument(keys.inflight(worker: worker))],
            arguments: [
                prefix, RedisArgument(worker), RedisArgument(jobID), RedisArgument(holder ?? ""), RedisArgument(now), maxlen,
                RedisArgument(reason.rawValue), RedisArgument(activeLimit), uncount ? "1" : "0",
            ])
    }

    func reap(deadWorker: String, now: Int64, activeLimit: Int, pruneAfter: Duration) -> ScriptCall {
        ScriptCall(
            script: Scripts.reap,
            keys: [
                RedisArgument(keys.ready), RedisArgument(keys.inflight(worker: deadWorker)),
                RedisArgument(keys.heartbeat(worker: deadWorker)), RedisArgument(keys.workers),
            ],
            arguments: [
                prefix, RedisArgument(deadWorker), RedisArgument(now), maxlen, RedisArgument(activeLimit),
                RedisArgument(pruneAfter.milliseconds),
            ])
    }

    enum WorkerStatus: String, Sendable { case ok, oom, stopping }

    func heartbeat(worker: String, ttl: Duration, status: WorkerStatus) -> ScriptCall {
        ScriptCall(
            script: Scripts.heartbeat, keys: [RedisArgument(keys.heartbeat(worker: worker)), RedisArgument(keys.workers)],
            arguments: [prefix, RedisArgument(worker), RedisArgument(ttl.milliseconds), RedisArgument(status.rawValue)])
    }

    /// A `step.progress` event; `solo` also marks the step as running alone (quarantine).
    func progress(
        jobID: String, holder: String, step: Int, attempt: Int, now: Int64, message: String, data: String, solo: Bool
    ) -> ScriptCall {
        ScriptCall(
            script: Scripts.progress, keys: [],
            arguments: [
                prefix, RedisArgument(jobID), RedisArgument(holder), maxlen, RedisArgument(step), RedisArgument(attempt),
                RedisArgument(now), RedisArgument(message), RedisArgument(data), solo ? "1" : "0",
            ])
    }

    func promote() -> ScriptCall {
        ScriptCall(script: Scripts.promote, keys: [RedisArgument(keys.delayed), RedisArgument(keys.ready)], arguments: [prefix])
    }

    func cancel(session: SessionID, reason: String, now: Int64) -> ScriptCall {
        ScriptCall(
            script: Scripts.cancel, keys: [],
            arguments: [prefix, RedisArgument(session.rawValue), RedisArgument(reason), RedisArgument(now), maxlen])
    }

    func touch(session: SessionID, now: Int64, ttlMilliseconds: Int64?) -> ScriptCall {
        ScriptCall(
            script: Scripts.touch, keys: [],
            arguments: [prefix, RedisArgument(session.rawValue), RedisArgument(now), RedisArgument(ttlMilliseconds.map(String.init) ?? "")])
    }

    enum DeadLetterAction: String, Sendable { case retry, purge }

    func deadLetter(jobID: String, action: DeadLetterAction, now: Int64) -> ScriptCall {
        ScriptCall(
            script: Scripts.deadLetter, keys: [],
            arguments: [prefix, RedisArgument(jobID), RedisArgument(action.rawValue), RedisArgument(now), maxlen])
    }

    func sweep(activeLimit: Int) -> ScriptCall {
        ScriptCall(script: Scripts.sweep, keys: [], arguments: [prefix, RedisArgument(activeLimit)])
    }

    func compact(idleMilliseconds: Int64, batch: Int) -> ScriptCall {
        ScriptCall(script: Scripts.compact, keys: [], arguments: [prefix, RedisArgument(idleMilliseconds), RedisArgument(batch)])
    }

    /// Deletes a session and its data key (crypto-shredding); `owner` nil with `asOperator`.
    func forget(session: SessionID, owner: String?, asOperator: Bool) -> ScriptCall {
        ScriptCall(
            script: Scripts.forget, keys: [],
            arguments: [prefix, RedisArgument(session.rawValue), RedisArgument(owner ?? ""), RedisArgument(asOperator ? "1" : "")])
    }

    /// Replaces a session's wrapped data key if it is still `old`.
    func rewrap(session: SessionID, old: String, new: String) -> ScriptCall {
        ScriptCall(
            script: Scripts.rewrap, keys: [], arguments: [prefix, RedisArgument(session.rawValue), RedisArgument(old), RedisArgument(new)])
    }

    /// Maps a script's error reply to a typed error: `STEPWISE <code> <text>` to ``StepwiseError``,
    /// anything else (OOM, a lost script) to ``RedisServerError``.
    static func mapError(_ message: String) -> any Error {
        guard message.hasPrefix("STEPWISE ") else { return RedisServerError(message) }
        var rest = Substring(message.dropFirst("STEPWISE ".count))
        // Errors raised with error() carry " script: <sha>, on @user_script:<line>." after the text.
        if let r = rest.range(of: " script: ", options: .backwards) { rest = rest[..<r.lowerBound] }
        let code = rest.prefix(while: { $0 != " " })
        let text = String(rest.dropFirst(code.count + 1))
        switch code {
        case "session_not_found": return StepwiseError(.sessionNotFound, text)
        case "agent_mismatch": return StepwiseError(.agentMismatch, text)
        case "not_owner": return StepwiseError(.notOwner, text)
        case "cancelled": return StepwiseError(.sessionCancelled, text)
        case "not_dead": return StepwiseError(.notDeadLetter, text)
        case "invalid_argument": return StepwiseError(.invalidArgument, text)
        case "encrypted": return StepwiseError(.sessionEncrypted, text)
        default: return StepwiseError(.unexpectedReply, String(rest))
        }
    }
}

/// How a step ends, as the commit script takes it.
enum CommitOutcome: String, Sendable {
    case `continue`, wait, done, fail, retry, dead
}

/// What a worker's step tasks need from Redis: the protocol's script calls and plain commands, on
/// a connection all of them share. ``RedisConnection`` is the real one; a test gives a scripted one,
/// so the step runner (claim decoding, the agent's step, sealing, the commit's arguments and the
/// reply's handling) runs without a server.
protocol StepChannel: Sendable {
    /// Runs a protocol script; a script error is thrown as a typed error.
    ///
    /// - Parameter coalesced: share the write with calls other tasks make meanwhile.
    func run(_ call: ScriptCall, coalesced: Bool) async throws -> RESPValue
    /// Sends one plain (non-blocking) command.
    func command(_ arguments: [RedisArgument]) async throws -> RESPValue
    /// Closes the connection.
    func close() async
}

extension StepChannel {
    func run(_ call: ScriptCall) async throws -> RESPValue { try await run(call, coalesced: false) }
}

extension RedisConnection: StepChannel {
    func command(_ arguments: [RedisArgument]) async throws -> RESPValue { try await send(arguments) }

    /// Runs a protocol script and returns its reply; a script error is thrown as a typed error
    /// (``ScriptCalls/mapError(_:)``).
    ///
    /// - Parameter coalesced: share the write with calls other tasks make meanwhile
    ///   (``evalScriptCoalesced(_:keys:arguments:)``).
    func run(_ call: ScriptCall, coalesced: Bool) async throws -> RESPValue {
        let reply =
            coalesced
            ? try await evalScriptCoalesced(call.script, keys: call.keys, arguments: call.arguments)
            : try await evalScript(call.script, keys: call.keys, arguments: call.arguments)
        if case .error(let message) = reply { throw ScriptCalls.mapError(message) }
        return reply
    }
}

extension Error {
    /// Whether Redis refused a write because it is out of memory (`maxmemory` with `noeviction`).
    var isRedisOutOfMemory: Bool {
        if let e = self as? RedisServerError { return e.message.hasPrefix("OOM") }
        if let e = self as? RedisError { return e.code == .outOfMemory }
        return false
    }
}

extension ScriptCalls.ClaimedJob {
    init(_ job: Claim.Job) { self.init(attempt: job.attempt, submittedAt: job.submittedAt, maxAttempts: job.maxAttempts) }
}
