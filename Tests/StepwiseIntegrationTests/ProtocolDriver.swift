import Foundation
import StepwiseRedis
import Testing

@testable import StepwiseCore

/// Drives the protocol's scripts one at a time, as a worker would, so a test can put them in any
/// order: the interleavings a real pool only hits by chance.
struct ProtocolDriver {
    let conn: RedisConnection
    let keys: KeySpace
    var scripts: ScriptCalls { ScriptCalls(keys: keys, eventsMaxLength: 100) }
    var now: Int64 { Dispatcher.nowMillis() }

    /// Registers a worker (its heartbeat, 60 s).
    func register(_ worker: String) async throws {
        _ = try await conn.run(scripts.heartbeat(worker: worker, ttl: .seconds(60), status: .ok))
    }

    /// The worker's heartbeat expires (it stalled, or died).
    func expire(_ worker: String) async throws {
        _ = try await conn.send(["DEL", RedisArgument(keys.heartbeat(worker: worker))])
    }

    /// `BLMOVE ready → inflight` as a slot does; returns the job id moved, if any.
    func pop(_ worker: String) async throws -> String? {
        try await conn.send(["LMOVE", RedisArgument(keys.ready), RedisArgument(keys.inflight(worker: worker)), "LEFT", "RIGHT"])
            .string
    }

    /// Runs the claim script; `jobID` nil claims from `ready` inside the script.
    func claim(_ worker: String, _ jobID: String? = nil) async throws -> Claim? {
        let reply = try await conn.run(scripts.claim(worker: worker, jobID: jobID, now: now, activeLimit: 0))
        guard jobID == nil else { return Claim(reply) }
        // From `ready`: a list of claims (one job asked for).
        return reply.array?.first.flatMap(Claim.init)
    }

    /// Takes up to `count` jobs from `ready` in one claim call; one reply per job taken.
    func claimAll(_ worker: String, count: Int) async throws -> [Claim] {
        let reply = try await conn.run(scripts.claim(worker: worker, jobID: nil, now: now, activeLimit: 0, count: count))
        return reply.array?.compactMap(Claim.init) ?? []
    }

    /// Claims the next ready job and expects to run it.
    func claimRun(_ worker: String, _ jobID: String? = nil) async throws -> Claim.Job {
        let c = try await claim(worker, jobID)
        guard case .run(let job) = c else { throw StepwiseError(.unexpectedReply, "expected a claim to run, got \(String(describing: c))") }
        return job
    }

    func commit(
        _ worker: String, _ job: Claim.Job, outcome: CommitOutcome = .wait, state: String = "{}", payload: String = "",
        delay: Duration = .zero, delta: StateDelta? = nil
    ) async throws -> String? {
        let reply = try await conn.run(
            scripts.commit(
                .init(
                    worker: worker, jobID: job.jobID, holder: job.holder, outcome: outcome, state: delta?.middle ?? state,
                    payload: payload, fetchNext: false, activeLimit: 0, retryDelay: delay,
                    deadReason: outcome == .dead ? "test" : "", delta: delta, claimed: .init(job)),
                now: now))
        return reply.array?.first?.string
    }

    func release(_ worker: String, _ jobID: String, holder: String?) async throws -> Int? {
        try await conn.run(
            scripts.release(
                worker: worker, jobID: jobID, holder: holder, reason: holder == nil ? .orphan : .shutdown, now: now, activeLimit: 0,
                uncount: holder != nil)
        ).int
    }

    func reap(_ worker: String, prune: Duration = .seconds(60)) async throws -> Int? {
        try await conn.run(scripts.reap(deadWorker: worker, now: now, activeLimit: 0, pruneAfter: prune)).int
    }

    func progress(_ job: Claim.Job, solo: Bool = false) async throws -> RESPValue {
        try await conn.run(
            scripts.progress(
                jobID: job.jobID, holder: job.holder, step: job.step, attempt: job.attempt, now: now, message: "m", data: "null",
                solo: solo))
    }

    func list(_ key: String) async throws -> [String] {
        try await conn.send(["LRANGE", RedisArgument(key), 0, -1]).array?.compactMap(\.string) ?? []
    }

    func inflight(_ worker: String) async throws -> [String] { try await list(keys.inflight(worker: worker)) }
    var ready: [String] { get async throws { try await list(keys.ready) } }

    func stat(_ field: String) async throws -> Int {
        try await conn.send(["HGET", RedisArgument(keys.stats), RedisArgument(field)]).int ?? 0
    }

    func jobField(_ id: SessionID, _ jobID: String, _ suffix: String) async throws -> String? {
        let seq = String(jobID.split(separator: ":").last ?? "")
        return try await conn.send(["HGET", RedisArgument(keys.jobs(id)), RedisArgument(seq + suffix)]).string
    }

    func sessionField(_ id: SessionID, _ field: String) async throws -> String? {
        try await conn.send(["HGET", RedisArgument(keys.session(id)), RedisArgument(field)]).string
    }

    /// Every key of this namespace with its type and content digest, to prove a call wrote nothing.
    func snapshot() async throws -> [String: String] {
        var out: [String: String] = [:]
        for key in try await allKeys() {
            var h = Hasher()
            h.combine(try await conn.send(["DUMP", RedisArgument(key)]).bytes ?? [])
            out[key] = String(h.finalize())
        }
        return out
    }

    /// Every key of the namespace, over every page of `SCAN`.
    func allKeys() async throws -> [String] {
        var cursor = "0"
        var found: Set<String> = []
        for _ in 0..<100_000 {
            let reply = try await conn.send(["SCAN", RedisArgument(cursor), "MATCH", RedisArgument(keys.prefix + "*"), "COUNT", 200])
            guard let parts = reply.array, parts.count == 2, let next = parts[0].string else { break }
            found.formUnion(parts[1].array?.compactMap(\.string) ?? [])
            cursor = next
            if cursor == "0" { break }
        }
        return found.sorted()
    }

    /// All a session's keys vanish, as when its idle TTL runs out.
    func expireSession(_ id: SessionID) async throws {
        _ = try await conn.send([
            "DEL", RedisArgument(keys.session(id)), RedisArgument(keys.inbox(id)), RedisArgument(keys.jobs(id)),
            RedisArgument(keys.idempotency(id)), RedisArgument(keys.events(id)),
        ])
    }
}

extension Claim.Job: CustomStringConvertible {
    public var description: String { "\(jobID) step \(step) attempt \(attempt) holder \(holder)" }
}
