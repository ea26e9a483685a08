import Foundation
import StepwiseAgents
import StepwiseRedis
import StepwiseTesting
import Testing

@testable import StepwiseCore

/// The interleavings that broke exactly-once, each driven script by script against a real
/// redis-server. Each of these failed on the engine before the fenced protocol.
@Suite(
    "protocol races: fenced claims, fencing tokens, incarnations, orphans, expiry",
    .enabled(if: TestRedis.url != nil, "needs STEPWISE_TEST_REDIS_URL: run `make test`"),
    .timeLimit(.minutes(2))
)
struct ProtocolRaceTests {
    let keys: KeySpace
    let conn: RedisConnection
    let dispatcher: Dispatcher
    let store: SessionStore
    let p: ProtocolDriver

    init() throws {
        keys = try TestRedis.uniqueKeys()
        conn = try TestRedis.connection()
        dispatcher = Dispatcher(connection: conn, keys: keys, agents: .builtIn)
        store = SessionStore(connection: conn, keys: keys)
        p = ProtocolDriver(conn: conn, keys: keys)
    }

    /// A pops J, stalls past its heartbeat; B reaps A and puts J back; C claims and runs J; then A's
    /// delayed claim arrives. It must not run J, and J must stay watched in C's in-flight list.
    @Test func aStalledWorkersLateClaimNeverRunsAStepAnotherWorkerHas() async throws {
        let id = try SessionID("late-claim")
        let j = try await dispatcher.submit(Submission(session: id, agent: "counter", input: 1)).jobID
        for w in ["A", "B", "C"] { try await p.register(w) }
        #expect(try await p.pop("A") == j)
        try await p.expire("A")
        #expect(try await p.reap("A") == 1, "B's reaper puts J back")
        let c = try await p.claimRun("C")
        #expect(c.jobID == j)
        // A comes back (registered again by its heartbeat) and its claim of J finally runs.
        try await p.register("A")
        let late = try await p.claim("A", j)
        guard case .skip = late else {
            Issue.record("A's late claim must be skipped, got \(String(describing: late))")
            return
        }
        #expect(try await p.stat("stale_claims") == 1)
        #expect(try await p.inflight("C") == [j], "J stays in C's in-flight list while C runs it")
        #expect(try await p.inflight("A").isEmpty)
        #expect(try await p.sessionField(id, "holder") == c.holder, "C's hold is intact")
        #expect(try await p.commit("C", c) == "ok")
    }

    /// A duplicate copy of a held job (however it got into `ready`) is dropped at claim: the
    /// session has a live holder.
    @Test func aJobWithALiveHolderIsNeverClaimedTwice() async throws {
        let id = try SessionID("dup")
        let j = try await dispatcher.submit(Submission(session: id, agent: "counter", input: 1)).jobID
        for w in ["A", "B"] { try await p.register(w) }
        let a = try await p.claimRun("A")
        _ = try await conn.send(["RPUSH", RedisArgument(keys.ready), RedisArgument(j)])
        let b = try await p.claim("B")
        guard case .skip = b else {
            Issue.record("the duplicate must be skipped, got \(String(describing: b))")
            return
        }
        #expect(try await p.stat("duplicate_claims") == 1)
        #expect(try await p.inflight("B").isEmpty)
        #expect(try await p.commit("A", a) == "ok")
    }

    /// A worker whose heartbeat is gone cannot claim: the job goes back to `ready`.
    @Test func anUnregisteredWorkerCannotClaim() async throws {
        let id = try SessionID("unreg")
        let j = try await dispatcher.submit(Submission(session: id, agent: "counter", input: 1)).jobID
        #expect(try await p.pop("ghost") == j)
        let c = try await p.claim("ghost", j)
        guard case .unregistered = c else {
            Issue.record("expected unregistered, got \(String(describing: c))")
            return
        }
        #expect(try await p.ready == [j])
        #expect(try await p.inflight("ghost").isEmpty)
        #expect(try await p.sessionField(id, "holder") == "")
    }

    /// Fencing tokens never repeat for a session id: not across re-creation, dead retry, or a
    /// graceful release. A stale run's commit into a re-created session is rejected and the new
    /// step's input is kept.
    @Test func fencingTokensNeverRepeatAndAStaleCommitNeverLandsInANewIncarnation() async throws {
        let id = try SessionID("reborn")
        try await p.register("W")
        var tokens: Set<String> = []
        _ = try await dispatcher.submit(Submission(session: id, agent: "counter", input: 1))
        let old = try await p.claimRun("W")
        tokens.insert(old.holder)
        // The session expires mid-step and is created again under the same id.
        try await p.expireSession(id)
        let fresh = try await dispatcher.submit(Submission(session: id, agent: "counter", input: 2)).jobID
        #expect(fresh != old.jobID, "job ids never repeat across incarnations")
        let new = try await p.claimRun("W")
        #expect(new.jobID == fresh)
        #expect(!tokens.contains(new.holder))
        tokens.insert(new.holder)
        #expect(try await p.commit("W", old, state: #"{"stale":true}"#) == "stale")
        #expect(try await store.session(id)?.version == 0, "the stale commit changed nothing")
        // Graceful release, then a dead letter retried: each claim gets a new token.
        #expect(try await p.release("W", new.jobID, holder: new.holder) == 1)
        let again = try await p.claimRun("W")
        #expect(!tokens.contains(again.holder))
        tokens.insert(again.holder)
        #expect(try await p.commit("W", again, outcome: .dead) == "dead")
        try await DeadLetterQueue(connection: conn, keys: keys).retry(jobID: fresh)
        let retried = try await p.claimRun("W")
        #expect(!tokens.contains(retried.holder))
        #expect(try await p.commit("W", retried, state: #"{"count":1}"#) == "ok")
        #expect(try await p.commit("W", again, state: #"{"count":99}"#) == "stale")
        let s = try #require(try await store.session(id))
        #expect(s.version == 1)
        #expect(s.state == ["count": 1])
    }

    /// A job of an expired incarnation still waiting in `ready` never runs as one of the new
    /// incarnation, and `ready` never holds one job id twice.
    @Test func anOldIncarnationsJobNeverRunsInTheNewOne() async throws {
        let id = try SessionID("ghost-job")
        try await p.register("W")
        let old = try await dispatcher.submit(Submission(session: id, agent: "counter", input: "old")).jobID
        try await p.expireSession(id)
        let new = try await dispatcher.submit(Submission(session: id, agent: "counter", input: "new")).jobID
        #expect(old != new)
        #expect(try await p.ready == [old, new])
        // One claim call for one job: the old job is skipped on the way, the new one runs.
        let claims = try await p.claimAll("W", count: 1)
        #expect(claims.count == 2)
        guard claims.count == 2, case .skip(let skipped) = claims[0], case .run(let run) = claims[1] else {
            Issue.record("expected the old job skipped, then the new one run: \(claims)")
            return
        }
        #expect(skipped == old)
        #expect(run.jobID == new)
        #expect(run.input == #""new""#)
    }

    /// A re-created session does not inherit the old one's cancel: cancels name job ids.
    @Test func aCancelOfTheOldIncarnationDoesNotApplyToTheNew() async throws {
        let id = try SessionID("recancel")
        try await p.register("W")
        _ = try await dispatcher.submit(Submission(session: id, agent: "counter", input: 1))
        let running = try await p.claimRun("W")
        let cancelled = try #require(try await dispatcher.cancel(id, reason: "user"))
        #expect(cancelled.running == running.jobID)
        let members = try await conn.send(["ZRANGE", RedisArgument(keys.cancels), 0, -1]).array?.compactMap(\.string)
        #expect(members == [running.jobID], "the cancel names the running job, not the session")
        try await p.expireSession(id)
        let fresh = try await dispatcher.submit(Submission(session: id, agent: "counter", input: 2)).jobID
        #expect(members?.contains(fresh) == false)
        let run = try await p.claimRun("W")
        #expect(run.jobID == fresh)
    }

    /// The orphan scan releases only what its worker owns, never through another worker's hold.
    @Test func anOrphanReleaseNeverActsThroughAnotherWorkersHold() async throws {
        let id = try SessionID("orphan")
        let j = try await dispatcher.submit(Submission(session: id, agent: "counter", input: 1)).jobID
        for w in ["A", "B"] { try await p.register(w) }
        let a = try await p.claimRun("A")
        _ = try await conn.send(["RPUSH", RedisArgument(keys.inflight(worker: "B")), RedisArgument(j)])
        #expect(try await p.release("B", j, holder: nil) == 0)
        #expect(try await p.sessionField(id, "holder") == a.holder)
        #expect(try await p.ready.isEmpty)
        #expect(try await p.inflight("B").isEmpty)
        // A's own orphan (a hold its slot lost) is released.
        #expect(try await p.release("A", j, holder: nil) == 1)
        #expect(try await p.ready == [j])
    }

    /// A stalled worker's late progress changes nothing, is counted, and never creates a stream
    /// for a session that has expired.
    @Test func lateProgressChangesNothingAndCreatesNoKeys() async throws {
        let id = try SessionID("late-progress")
        try await p.register("W")
        _ = try await dispatcher.submit(Submission(session: id, agent: "counter", input: 1))
        let job = try await p.claimRun("W")
        #expect(try await p.progress(job).string?.contains("-") == true, "accepted while held")
        try await p.expireSession(id)
        #expect(try await p.progress(job).int == 0)
        #expect(try await p.stat("stale_progress") == 1)
        #expect(try await conn.send(["EXISTS", RedisArgument(keys.events(id))]).int == 0)
    }

    /// Every key a script creates for a session carries the session's expiry.
    @Test func keysCreatedMidSessionGetTheSessionsExpiry() async throws {
        let id = try SessionID("ttl")
        try await p.register("W")
        _ = try await dispatcher.submit(Submission(session: id, agent: "counter", input: 1, ttl: .seconds(60)))
        let job = try await p.claimRun("W")
        _ = try await conn.send(["DEL", RedisArgument(keys.events(id))])
        _ = try await p.progress(job)
        #expect(try await conn.send(["PTTL", RedisArgument(keys.events(id))]).int ?? -1 > 0)
        #expect(try await p.commit("W", job, outcome: .continue, payload: "2") == "ok")
        for key in [keys.session(id), keys.inbox(id), keys.jobs(id), keys.events(id)] {
            #expect(try await conn.send(["PTTL", RedisArgument(key)]).int ?? -1 > 0, "\(key) has an expiry")
        }
    }

    /// A state delta applies only to the stored state it was made from: made for another version,
    /// or longer than the stored state, the commit answers `delta` and changes nothing; the right
    /// one rebuilds the new state exactly.
    @Test func aStateDeltaAppliesOnlyToTheStateItWasMadeFrom() async throws {
        let id = try SessionID("delta")
        try await p.register("W")
        _ = try await dispatcher.submit(Submission(session: id, agent: "counter", input: 1))
        _ = try await dispatcher.submit(Submission(session: id, agent: "counter", input: 2))
        let base = #"{"count":1,"pad":""# + String(repeating: "é", count: 100) + #""}"#
        #expect(try await p.commit("W", try await p.claimRun("W"), state: base) == "ok")
        let job = try await p.claimRun("W")
        let next = base.replacingOccurrences(of: #""count":1"#, with: #""count":2,"new":"ü""#)
        let good = try #require(StateDelta(from: base, to: next, version: job.version))
        #expect(good.middle.utf8.count < 20)
        var other = good
        other.version += 1
        #expect(try await p.commit("W", job, delta: other) == "delta")
        var long = good
        long.suffix = base.utf8.count
        #expect(try await p.commit("W", job, delta: long) == "delta")
        #expect(try await p.sessionField(id, "state") == base)
        #expect(try await p.sessionField(id, "version") == String(job.version))
        #expect(try await p.commit("W", job, delta: good) == "ok")
        #expect(try await p.sessionField(id, "state") == next)
    }

    /// A commit whose reply was lost is sent again: it answers the same and applies nothing twice.
    @Test func aRepeatedCommitIsIdempotent() async throws {
        let id = try SessionID("again")
        try await p.register("W")
        _ = try await dispatcher.submit(Submission(session: id, agent: "counter", input: 1))
        let job = try await p.claimRun("W")
        #expect(try await p.commit("W", job, state: #"{"n":1}"#) == "ok")
        #expect(try await p.commit("W", job, state: #"{"n":2}"#) == "ok")
        let s = try #require(try await store.session(id))
        #expect(s.version == 1)
        #expect(s.state == ["n": 1])
        #expect(try await p.stat("committed") == 1)
    }

    /// Release never revives a dead-lettered job.
    @Test func releaseNeverRevivesADeadLetter() async throws {
        let id = try SessionID("dead")
        try await p.register("W")
        let j = try await dispatcher.submit(Submission(session: id, agent: "counter", input: 1)).jobID
        let job = try await p.claimRun("W")
        #expect(try await p.commit("W", job, outcome: .dead) == "dead")
        _ = try await conn.send(["RPUSH", RedisArgument(keys.inflight(worker: "W")), RedisArgument(j)])
        #expect(try await p.release("W", j, holder: nil) == 0)
        #expect(try await p.ready.isEmpty)
        #expect(try await p.sessionField(id, "blocked") == j)
    }

    /// The reaper blames a crash only on the step that ran alone: a crash marker and one held
    /// step counts against it; several held steps are quarantined instead; no marker, no blame.
    @Test func reapBlamesOnlyASoleSuspectOfACrash() async throws {
        let ids = try ["one", "two", "three"].map(SessionID.init)
        try await p.register("R")
        for id in ids { _ = try await dispatcher.submit(Submission(session: id, agent: "counter", input: 1)) }
        // Killed from outside (no marker) with one step: no blame.
        try await p.register("K")
        let k = try await p.claimRun("K")
        try await p.expire("K")
        #expect(try await p.reap("K") == 1)
        #expect(try await p.jobField(ids[0], k.jobID, ":f") == nil)
        // Crashed (marker) holding two steps: both quarantined, none blamed.
        try await p.register("C")
        let c1 = try await p.claimRun("C")
        let c2 = try await p.claimRun("C")
        _ = try await conn.send(["SET", RedisArgument(keys.crashMarker(worker: "C")), "1"])
        try await p.expire("C")
        #expect(try await p.reap("C") == 2)
        for job in [c1, c2] {
            let sid = try SessionID(String(job.jobID.split(separator: ":")[0]))
            #expect(try await p.jobField(sid, job.jobID, ":f") == nil)
            #expect(try await p.jobField(sid, job.jobID, ":q") == "1")
        }
        #expect(try await conn.send(["EXISTS", RedisArgument(keys.crashMarker(worker: "C"))]).int == 0)
        // The quarantined step runs alone (marked by progress) and crashes: it alone is blamed,
        // even with another step held at the time.
        try await p.register("S")
        var claims: [Claim.Job] = []
        for _ in 0..<3 { claims.append(try await p.claimRun("S")) }
        let solo = try #require(claims.first { $0.quarantined })
        _ = try await p.progress(solo, solo: true)
        _ = try await conn.send(["SET", RedisArgument(keys.crashMarker(worker: "S")), "1"])
        try await p.expire("S")
        #expect(try await p.reap("S") == 3)
        for job in claims {
            let sid = try SessionID(String(job.jobID.split(separator: ":")[0]))
            let failures = try await p.jobField(sid, job.jobID, ":f")
            #expect(failures == (job.jobID == solo.jobID ? "1" : nil), "\(job.jobID)")
        }
    }

    /// A reaped worker stays registered while it may still have a late `BLMOVE` in flight, so its
    /// list stays watched; a graceful deregistration (prune 0) removes it.
    @Test func aReapedWorkerStaysWatched() async throws {
        try await p.register("A")
        try await p.expire("A")
        #expect(try await p.reap("A") == 0)
        #expect(try await conn.send(["ZSCORE", RedisArgument(keys.workers), "A"]).isNull == false)
        #expect(try await p.reap("A", prune: .zero) == 0)
        #expect(try await conn.send(["ZSCORE", RedisArgument(keys.workers), "A"]).isNull)
    }

    /// A retry whose session moved on (expired and created again) is never promoted into the new
    /// incarnation; a due retry of a live session is.
    @Test func promoteMovesOnlyTheUnheldHeadOfALiveSession() async throws {
        let live = try SessionID("promote-live")
        let gone = try SessionID("promote-gone")
        try await p.register("W")
        let liveJob = try await dispatcher.submit(Submission(session: live, agent: "counter", input: 1)).jobID
        let goneJob = try await dispatcher.submit(Submission(session: gone, agent: "counter", input: 1)).jobID
        for _ in 0..<2 {
            let job = try await p.claimRun("W")
            #expect(try await p.commit("W", job, outcome: .retry, delay: .zero) == "retry")
        }
        try await p.expireSession(gone)
        let fresh = try await dispatcher.submit(Submission(session: gone, agent: "counter", input: 2)).jobID
        #expect(try await p.ready == [fresh])
        let reply = try await conn.run(p.scripts.promote())
        #expect(reply.array?.first?.int == 1, "only the live session's retry moves")
        #expect(try await p.ready == [liveJob, fresh])
        #expect(try await conn.send(["ZCARD", RedisArgument(keys.delayed)]).int == 0, "the stale retry is dropped")
        #expect(goneJob != fresh)
    }

    /// A worker's steps share its in-flight list of bare job ids: a stale commit or release of an
    /// older claim of this same worker (it was reaped, registered again and claimed the job anew)
    /// must not remove the entry the newer claim depends on, or a crash would lose the job.
    @Test func aStaleCallNeverRemovesTheEntryOfANewerClaimOfTheSameWorker() async throws {
        let id = try SessionID("same-worker")
        try await p.register("A")
        let j = try await dispatcher.submit(Submission(session: id, agent: "counter", input: 1)).jobID
        let old = try await p.claimRun("A")
        try await p.expire("A")
        #expect(try await p.reap("A") == 1)
        try await p.register("A")
        let new = try await p.claimRun("A")
        #expect(new.jobID == j && new.holder != old.holder)
        #expect(try await p.commit("A", old, state: #"{"stale":1}"#) == "stale")
        #expect(try await p.inflight("A") == [j], "the newer claim's entry stays after the stale commit")
        #expect(try await p.release("A", j, holder: old.holder) == 0)
        #expect(try await p.inflight("A") == [j], "and after the stale release")
        // A duplicate copy claimed by the same worker is dropped, the entry kept.
        _ = try await conn.send(["RPUSH", RedisArgument(keys.ready), RedisArgument(j)])
        let dup = try await p.claim("A")
        guard case .skip = dup else {
            Issue.record("the duplicate must be skipped, got \(String(describing: dup))")
            return
        }
        #expect(try await p.inflight("A") == [j], "and after a duplicate claim")
        // Reaped again, the job back in `ready`, and fetched afresh by this worker (not claimed
        // yet): the old step's late commit leaves that fresh entry alone, so the claim still works.
        try await p.expire("A")
        #expect(try await p.reap("A") == 1)
        try await p.register("A")
        #expect(try await p.pop("A") == j)
        #expect(try await p.commit("A", new, state: #"{"stale":2}"#) == "stale")
        #expect(try await p.inflight("A") == [j], "the fresh fetch's entry stays")
        let fresh = try await p.claimRun("A", j)
        #expect(fresh.holder != new.holder)
        // The worker now dies: the reaper finds the job.
        try await p.expire("A")
        #expect(try await p.reap("A") == 1)
        #expect(try await p.ready == [j])
    }
    /// A commit takes the job's attempt, submit time and attempt limit from the worker (what its
    /// claim read, fenced by the holder token) instead of reading the jobs hash again: the step's
    /// end event and a continuation carry the same values either way.
    @Test func aCommitCarriesWhatItsClaimReadOfTheJob() async throws {
        var ends: [[String: String]] = []
        var limits: [String?] = []
        for (n, fromClaim) in [(0, true), (1, false)] {
            let id = try SessionID("claimed-\(n)")
            _ = try await dispatcher.submit(Submission(session: id, agent: "counter", input: 1, maxAttempts: 7))
            try await p.register("W")
            let job = try await p.claimRun("W")
            #expect(job.attempt == 1 && job.maxAttempts == 7 && job.submittedAt != nil)
            let call = ScriptCalls(keys: keys, eventsMaxLength: 100).commit(
                .init(
                    worker: "W", jobID: job.jobID, holder: job.holder, outcome: .continue, state: "{}", payload: "2", fetchNext: false,
                    activeLimit: 0, claimed: fromClaim ? .init(job) : nil),
                now: p.now)
            #expect(try await conn.run(call).array?.first?.string == "ok")
            let end = try await store.events(of: id, after: "0").first { $0.type == "step.completed" }
            ends.append(["attempt": "\(end?.attempt ?? -1)", "submitted": end?.fields["submitted"] ?? "none"])
            #expect(end?.fields["submitted"] == job.submittedAt.map(String.init), "the event carries the claim's submit time")
            let next = try await p.claimRun("W")
            limits.append(next.maxAttempts.map(String.init))
        }
        #expect(ends.map { $0["attempt"] } == ["1", "1"])
        #expect(limits == ["7", "7"], "a continuation inherits the submit's attempt limit")
    }
}
