import Foundation
import Logging
import StepwiseRedis
import Synchronization

/// A worker's slots: each takes a job, runs the agent's step, and commits it.
extension Worker {
    /// The fetcher: the one task that takes jobs for this worker. It claims as many ready jobs as
    /// there are free slots in one script call (on the shared `steps` connection), and when
    /// `ready` is empty it waits in one `BLMOVE` on its own connection. Each claimed job runs as a
    /// step task; a step task's commit claims the next ready job itself, so a busy worker needs the
    /// fetcher only to fill free slots. The worker's Redis connections do not grow with its
    /// concurrency: fetch, steps, control and crash marker.
    func fetcher() async {
        let conn = connection("fetch")
        await withTaskGroup(of: Void.self) { stepTasks in
            var poll = true
            var failures = 0
            var slotChanges = slotSignal.makeAsyncIterator()
            while !Task.isCancelled, !stopping {
                let free = await freeSlots(&slotChanges)
                guard free > 0 else { break }
                do {
                    var claimed: [Claim.Job] = []
                    if poll {
                        claimed = try await claimReady(count: min(free, 64))
                    }
                    if claimed.isEmpty {
                        // `ready` was empty: wait for a job (the claim follows at once).
                        let job = try await waitForJob(conn)
                        poll = job != nil
                        if let job { claimed = [job] }
                    }
                    for job in claimed {
                        stepTasks.addTask { await self.runChain(job) }
                    }
                    failures = 0
                } catch is CancellationError {
                    break
                } catch {
                    failures += 1
                    noteRedisError(error)
                    if failures == 1 || failures % 20 == 0 {
                        logger.warning("fetching jobs failed, retrying", metadata: [LogKeys.error: "\(error)"])
                    }
                    let delay = Duration.milliseconds(min(2000, 25 << min(failures, 7)))
                    do { try await Task.sleep(for: delay) } catch { break }
                }
            }
            await stepTasks.waitForAll()
        }
        await conn.close()
    }

    /// Free slots, once there is at least one and no quarantined step is waiting to run alone (0
    /// when the worker stops or is cancelled).
    private func freeSlots(_ changes: inout AsyncStream<Void>.Iterator) async -> Int {
        while !Task.isCancelled, !stopping {
            let free = state.withLock { s in
                (!s.soloQueue.isEmpty || s.soloRunning) ? 0 : configuration.concurrency - s.busy
            }
            if free > 0 { return free }
            // nil: this task was cancelled.
            guard await changes.next() != nil else { return 0 }
        }
        return 0
    }

    /// Takes up to `count` jobs from `ready` and claims them, in one script call; the slots of the
    /// claims that run are counted busy.
    private func claimReady(count: Int) async throws -> [Claim.Job] {
        let reply = try await steps.run(
            scripts.claim(
                worker: workerID, jobID: nil, now: Dispatcher.nowMillis(), activeLimit: configuration.maxActiveSessions,
                count: count, stateAbove: stateAbove),
            coalesced: true)
        state.withLock { $0.redisFull = false }
        var jobs: [Claim.Job] = []
        for item in reply.array ?? [] {
            switch Claim(item) {
            case .run(let job): jobs.append(job)
            case .unregistered: try await reRegister()
            default: break
            }
        }
        // Owned from the moment the reply is in: the orphan scan leaves them alone.
        state.withLock { s in
            s.busy += jobs.count
            for job in jobs { s.active.insert(job.jobID) }
        }
        return jobs
    }

    /// One `BLMOVE` with a bounded timeout, then the claim of the job it moved; nil on timeout or
    /// when the claim did not run it.
    private func waitForJob(_ conn: RedisConnection) async throws -> Claim.Job? {
        // `BLMOVE ready inflight LEFT RIGHT timeout`: blocks server-side up to `blockTimeout`;
        // the socket timeout is raised by the same amount for this call.
        let popped = try await conn.send(
            [
                "BLMOVE", RedisArgument(keys.ready), RedisArgument(inflightKey), "LEFT", "RIGHT",
                RedisArgument(String(format: "%.3f", Double(configuration.blockTimeout.milliseconds) / 1000)),
            ], blockingFor: configuration.blockTimeout)
        try popped.throwingServerError()
        guard let jid = popped.string, !popped.isNull else { return nil }
        state.withLock { _ = $0.active.insert(jid) }
        var keep = false
        defer { if !keep { state.withLock { _ = $0.active.remove(jid) } } }
        let reply = try await steps.run(
            scripts.claim(
                worker: workerID, jobID: jid, now: Dispatcher.nowMillis(), activeLimit: configuration.maxActiveSessions,
                stateAbove: stateAbove),
            coalesced: true)
        state.withLock { $0.redisFull = false }
        switch Claim(reply) {
        case .run(let job):
            state.withLock { $0.busy += 1 }
            keep = true
            return job
        case .unregistered:
            try await reRegister()
            return nil
        default:
            return nil
        }
    }

    /// Runs a claimed step, then each next step its commit claims, until a commit brings none;
    /// the slot is busy throughout.
    private func runChain(_ first: Claim.Job) async {
        var next: Claim.Job? = first
        // Steps of one session in a row on this slot (sticky claims of a large state's session).
        var streak = 0
        var previous = ""
        while let job = next {
            next = nil
            streak = job.sessionID == previous ? streak + 1 : 0
            previous = job.sessionID
            do {
                let result = try await process(job, sticky: streak < Self.stickyLimit)
                if case .run(let n)? = result { next = n }
            } catch is CancellationError {
                break
            } catch {
                // The step's claim is left to the orphan scan, which releases it.
                noteRedisError(error)
                logger.warning("step could not be committed", metadata: [LogKeys.jobID: .string(job.jobID), LogKeys.error: "\(error)"])
            }
            if let n = next, stopping || Task.isCancelled {
                // Claimed by the last commit but never started: give it back at once.
                try? await release(n, reason: .shutdown)
                state.withLock { _ = $0.active.remove(n.jobID) }
                next = nil
            }
        }
        leaveBusy()
    }

    func leaveBusy() {
        state.withLock { $0.busy -= 1 }
        slotChanged.yield()
    }

    /// What a worker commits for a step.
    struct Outcome {
        var kind: CommitOutcome
        var state: String
        /// The next input, result, failure reason, or error text.
        var payload: String
        var retryDelay: Duration = .zero
        var deadReason: String = ""
        /// Attempts to record on a dead letter, when not this delivery's number.
        var attempts: Int?
        /// The session was cancelled while the step ran (counted as `cancelled`, committed as `fail`).
        var cancelled = false
        /// How long the agent's step ran (zero when it never ran).
        var ran: Duration = .zero
    }

    /// Most steps of one session a slot runs in a row by claiming them sticky (see ``process(_:sticky:)``).
    static let stickyLimit = 16

    /// Runs one claimed step and commits it; returns the next claim when the commit brought one.
    /// The job is in `active` from its claim (the fetcher or the last commit put it there) until
    /// this returns.
    ///
    /// - Parameter sticky: when this step's state is large enough to be cached, its commit may
    ///   claim the session's own next job (so it finds the state here) instead of `ready`'s head.
    func process(_ sealedJob: Claim.Job, sticky: Bool) async throws -> Claim? {
        state.withLock { _ = $0.active.insert(sealedJob.jobID) }
        metrics.started(jobID: sealedJob.jobID, agent: sealedJob.agent)
        defer {
            state.withLock { _ = $0.active.remove(sealedJob.jobID) }
            metrics.finished(jobID: sealedJob.jobID)
        }
        // One assignment, not four: a handler may format its metadata on every change
        // (swift-log's StreamLogHandler does), and this runs once per step.
        var log = logger
        var metadata = log.handler.metadata
        metadata[LogKeys.jobID] = .string(sealedJob.jobID)
        metadata[LogKeys.sessionID] = .string(sealedJob.sessionID)
        metadata[LogKeys.step] = .stringConvertible(sealedJob.step)
        metadata[LogKeys.attempt] = .stringConvertible(sealedJob.attempt)
        log.handler.metadata = metadata

        // A large state the claim left out: from the cache, or read here.
        var sealedJob = sealedJob
        if sealedJob.stateOmitted { sealedJob.state = try await omittedState(of: sealedJob) }

        // An encrypted session's documents open with its data key, or the step does not run.
        let cipher: (any SessionCipher)?
        let job: Claim.Job
        do {
            cipher = try SealedText.cipher(sealer, session: try SessionID(sealedJob.sessionID), wrappedKey: sealedJob.wrappedKey)
        } catch {
            log.error("step cannot run: its session's data key is unavailable, dead-lettered", metadata: [LogKeys.error: "\(error)"])
            let outcome = Outcome(kind: .dead, state: "", payload: "\(error)", deadReason: "key unavailable")
            return try await commit(sealedJob, outcome: outcome, cipher: nil, fetchNext: true, logger: log)
        }
        do {
            job = try Self.opened(sealedJob, with: cipher)
        } catch {
            log.error("step cannot run: its sealed data does not open, dead-lettered", metadata: [LogKeys.error: "\(error)"])
            let outcome = Outcome(kind: .dead, state: "", payload: "\(error)", deadReason: "invalid job")
            return try await commit(sealedJob, outcome: outcome, cipher: cipher, fetchNext: true, logger: log)
        }

        let agent = agents[job.agent]
        let maxAttempts = job.maxAttempts ?? agent?.maxAttempts ?? configuration.maxAttempts
        let outcome: Outcome
        var solo = false
        defer {
            if solo {
                state.withLock { $0.soloRunning = false }
                slotChanged.yield()
            }
        }
        if job.failures >= maxAttempts {
            // Its worker crashed while running it alone, as often as attempts allow: never run it again.
            outcome = Outcome(
                kind: .dead, state: job.state,
                payload: "crashed its worker \(job.failures) times (failed attempts, counting crashes that were its alone)",
                deadReason: "poison", attempts: job.attempt - 1)
        } else {
            if job.quarantined {
                try await runAlone(job, logger: log)
                solo = true
            }
            let start = ContinuousClock.now
            var ran = try await run(job, agent: agent, maxAttempts: maxAttempts, cipher: cipher, logger: log)
            ran.ran = ContinuousClock.now - start
            outcome = ran
        }
        return try await commit(job, outcome: outcome, cipher: cipher, fetchNext: !solo, sticky: sticky, logger: log)
    }

    /// What claims ask of the state cache: leave out states longer than the threshold (0 when
    /// the cache is off: every claim carries its state).
    var stateAbove: Int { configuration.stateCacheBytes > 0 ? max(1, configuration.stateCacheThreshold) : 0 }

    /// The state a claim left out (as stored): the cached one at the claim's incarnation and
    /// version, or else read from the session hash, which this worker's claim holds: no commit
    /// can change it meanwhile.
    ///
    /// - Throws: ``StepwiseError`` when the session no longer has this claim (it was removed or
    ///   created again): the step is not run, and the orphan scan releases its entry.
    func omittedState(of job: Claim.Job) async throws -> String {
        if let state = stateCache.state(session: job.sessionID, incarnation: job.incarnation, version: job.version) {
            return state
        }
        let key = keys.session(try SessionID(job.sessionID))
        let reply = try await steps.command(["HMGET", RedisArgument(key), "state", "holder", "inc", "version"]).throwingServerError()
        let f = (reply.array ?? []).map { $0.string }
        guard f.count == 4, let state = f[0], f[1] == job.holder, (f[2] ?? "") == job.incarnation, f[3] == String(job.version) else {
            throw StepwiseError(.unexpectedReply, "session \(job.sessionID) no longer holds this claim: its state was not read")
        }
        return state
    }

    /// The job with its input, options and state opened (as they are for a plain session).
    static func opened(_ job: Claim.Job, with cipher: (any SessionCipher)?) throws -> Claim.Job {
        var j = job
        j.input = try SealedText.open(job.input, as: .input, with: cipher, session: job.sessionID)
        j.options = try SealedText.open(job.options, as: .options, with: cipher, session: job.sessionID)
        j.state = try SealedText.open(job.state, as: .state, with: cipher, session: job.sessionID)
        return j
    }

    /// What the commit script gets for an outcome: each document sealed for its field with the
    /// session's data key (as it is, for a plain session). The state goes only with outcomes
    /// that write it; the payload's second copy only with those that store one.
    static func sealed(_ o: Outcome, with cipher: (any SessionCipher)?) throws -> (state: String, payload: String, second: String) {
        guard let cipher else { return (o.state, o.payload, "") }
        func seal(_ text: String, _ field: SealedField) throws -> String { text.isEmpty ? "" : try cipher.seal(text, as: field) }
        switch o.kind {
        case .continue:
            return (
                try seal(o.state, .state), try seal(o.payload, .event("step.completed", "data")), try seal(o.payload, .input)
            )
        case .wait, .done: return (try seal(o.state, .state), try seal(o.payload, .event("step.completed", "data")), "")
        case .fail: return (try seal(o.state, .state), try seal(o.payload, .event("step.failed", "data")), "")
        case .retry: return ("", try seal(o.payload, .event("step.retrying", "error")), "")
        case .dead: return ("", try seal(o.payload, .event("step.dead", "error")), try seal(o.payload, .deadError))
        }
    }

    /// A step that was in flight with others when its worker crashed runs alone: this slot waits
    /// for the worker's other steps to end while no new ones start, then marks the run as solo in
    /// Redis, so a crash now is blamed on this step only.
    private func runAlone(_ job: Claim.Job, logger: Logger) async throws {
        state.withLock { s in
            s.busy -= 1
            s.soloQueue.append(job.jobID)
        }
        logger.info("step was in flight when its worker crashed: running it alone")
        do {
            while true {
                let go = state.withLock { s in
                    guard s.soloQueue.first == job.jobID, s.busy == 0, !s.soloRunning else { return false }
                    s.soloQueue.removeFirst()
                    s.soloRunning = true
                    s.busy += 1
                    return true
                }
                if go { break }
                try await Task.sleep(for: .milliseconds(5))
            }
        } catch {
            state.withLock { s in
                s.soloQueue.removeAll { $0 == job.jobID }
                s.busy += 1
            }
            slotChanged.yield()
            throw error
        }
        do {
            _ = try await steps.run(
                scripts.progress(
                    jobID: job.jobID, holder: job.holder, step: job.step, attempt: job.attempt, now: Dispatcher.nowMillis(),
                    message: "running alone: it was in flight when its worker crashed", data: "null", solo: true),
                coalesced: true)
        } catch {
            state.withLock { $0.soloRunning = false }
            slotChanged.yield()
            throw error
        }
    }

    /// Runs the agent's step as a child task that a session cancel can stop, and maps what it
    /// did to an outcome.
    private func run(_ job: Claim.Job, agent: (any Agent)?, maxAttempts: Int, cipher: (any SessionCipher)?, logger: Logger)
        async throws -> Outcome
    {
        let prepared: (any Agent, JSONValue, JSONValue, StepContext)
        do {
            prepared = try prepare(job, agent: agent, cipher: cipher, logger: logger)
        } catch {
            logger.warning("step cannot run, dead-lettered", metadata: [LogKeys.error: "\(error)"])
            return Outcome(kind: .dead, state: job.state, payload: "\(error)", deadReason: "invalid job")
        }
        let (agent, stateDoc, input, context) = prepared
        let task = Task { try await agent.step(state: stateDoc, input: input, context: context) }
        let cancelledAlready = state.withLock { s in
            s.running[job.jobID] = task
            // A cancel seen by the watcher before this step registered still stops it.
            guard s.recentCancels.contains(job.jobID) else { return false }
            s.cancelled.insert(job.jobID)
            return true
        }
        if cancelledAlready { task.cancel() }
        let result = await withTaskCancellationHandler {
            await task.result
        } onCancel: {
            task.cancel()
        }
        let sessionCancelled = state.withLock { s in
            s.running[job.jobID] = nil
            return s.cancelled.remove(job.jobID) != nil
        }
        let shuttingDown = Task.isCancelled
        switch result {
        case .success(let r):
            return validated(r, job: job, logger: logger)
        case .failure where shuttingDown && !sessionCancelled:
            // Shutdown: give the step back unfinished; the next delivery does not count it. (An
            // agent that throws CancellationError on its own is an ordinary failure, retried.)
            try? await release(job, reason: .shutdown)
            throw CancellationError()
        case .failure(let error):
            if sessionCancelled {
                logger.info("running step cancelled with its session")
                return Outcome(kind: .fail, state: job.state, payload: JSONValue.string("cancelled").jsonString, cancelled: true)
            }
            if let e = error as? StepwiseError, e.code == .holdLost {
                // Another worker has the step now: whatever we commit is rejected as stale.
                return Outcome(kind: .retry, state: job.state, payload: "\(error)")
            }
            // The error's text may quote session data: logs get its type only (PayloadLogging).
            let loggedError = PayloadLogging.loggable(stepError: error)
            if job.failures + 1 >= maxAttempts {
                logger.warning("step failed on its last attempt, dead-lettered", metadata: [LogKeys.error: loggedError])
                return Outcome(kind: .dead, state: job.state, payload: "\(error)", deadReason: "attempts exhausted")
            }
            let delay = configuration.retryDelay(afterAttempt: job.failures + 1)
            logger.info(
                "step failed, will retry",
                metadata: [LogKeys.error: loggedError, "stepwise.retry_ms": .stringConvertible(delay.milliseconds)])
            return Outcome(kind: .retry, state: job.state, payload: "\(error)", retryDelay: delay)
        }
    }

    /// Checks what an agent returned; an oversized document is a bug in the agent, not a
    /// transient failure, so it is dead-lettered at once.
    private func validated(_ result: StepResult, job: Claim.Job, logger: Logger) -> Outcome {
        let state = result.state.jsonString
        var outcome: Outcome
        switch result.outcome {
        case .next(let input): outcome = Outcome(kind: .continue, state: state, payload: input.jsonString)
        case .waitForInput: outcome = Outcome(kind: .wait, state: state, payload: result.reply?.jsonString ?? "")
        case .done(let value): outcome = Outcome(kind: .done, state: state, payload: value.jsonString)
        case .fail(let reason): outcome = Outcome(kind: .fail, state: state, payload: JSONValue.string(reason).jsonString)
        }
        let limit = configuration.maxStateBytes
        if state.utf8.count > limit || outcome.payload.utf8.count > limit {
            let what = state.utf8.count > limit ? "a state document" : "a payload"
            let size = max(state.utf8.count, outcome.payload.utf8.count)
            logger.warning("agent returned an oversized document, dead-lettered")
            outcome = Outcome(
                kind: .dead, state: job.state,
                payload: "agent '\(job.agent)' returned \(what) of \(size) bytes, over the limit of \(limit) bytes (--max-state-bytes)",
                deadReason: "invalid result")
        }
        return outcome
    }

    /// Decodes what a step needs; throws for a job that can never run (unknown agent, corrupt
    /// state document).
    private func prepare(_ job: Claim.Job, agent: (any Agent)?, cipher: (any SessionCipher)?, logger: Logger) throws -> (
        any Agent, JSONValue, JSONValue, StepContext
    ) {
        guard let agent else {
            throw StepwiseError(
                .unknownAgent, "this worker has no agent '\(job.agent)': known agents are \(agents.names.joined(separator: ", "))")
        }
        let sessionID = try SessionID(job.sessionID)
        let input = try JSONValue(parsing: job.input, what: "step input")
        let options = try JSONValue(parsing: job.options, what: "session options")
        // An empty state: the session was created by a dispatcher that links no agent code, so
        // the worker builds the initial state now.
        let state =
            job.state.isEmpty ? agent.initialState(options: options) : try JSONValue(parsing: job.state, what: "session state")
        let scripts = self.scripts
        let conn = steps
        let context = StepContext(
            sessionID: sessionID, jobID: job.jobID, step: job.step, attempt: job.attempt, options: options,
            logger: logger,
            emitter: { message, data in
                // Sealed for the event's own fields (as they are for a plain session).
                var message = message
                var data = data.jsonString
                if let cipher {
                    message = message.isEmpty ? "" : try cipher.seal(message, as: .event("step.progress", "message"))
                    data = try cipher.seal(data, as: .event("step.progress", "data"))
                }
                let call = scripts.progress(
                    jobID: job.jobID, holder: job.holder, step: job.step, attempt: job.attempt, now: Dispatcher.nowMillis(),
                    message: message, data: data, solo: false)
                let reply: RESPValue
                do {
                    reply = try await conn.run(call, coalesced: true)
                } catch  where error.isRedisOutOfMemory {
                    // Progress is best effort: a full Redis drops it rather than failing the step.
                    logger.debug("progress event dropped: redis is out of memory")
                    return
                }
                if reply.int == 0 {
                    throw StepwiseError(
                        .holdLost, "this worker no longer holds session \(job.sessionID): it was presumed dead and the step moved on")
                }
            })
        return (agent, state, input, context)
    }

    /// Commits a step. A commit whose reply is lost (a broken connection, Redis out of memory) is
    /// sent again until Redis answers: the script recognises its own token and answers the same
    /// status without applying twice.
    private func commit(
        _ job: Claim.Job, outcome: Outcome, cipher: (any SessionCipher)?, fetchNext wantNext: Bool, sticky: Bool = false,
        logger: Logger
    ) async throws -> Claim? {
        // Sealed once: a commit sent again carries the same text.
        let sealed = try Self.sealed(outcome, with: cipher)
        // A large plain state goes back as the part that changed (a sealed one changes throughout).
        var delta = stateDelta(job, sealedState: sealed.state, outcome: outcome, cipher: cipher)
        var failures = 0
        while true {
            let fetchNext = wantNext && !stopping && !Task.isCancelled && !soloPending
            let call = scripts.commit(
                ScriptCalls.CommitArguments(
                    worker: workerID, jobID: job.jobID, holder: job.holder, outcome: outcome.kind, state: delta?.middle ?? sealed.state,
                    payload: sealed.payload, fetchNext: fetchNext, activeLimit: configuration.maxActiveSessions,
                    retryDelay: outcome.retryDelay, deadReason: outcome.deadReason, deadAttempts: outcome.attempts,
                    secondPayload: sealed.second, stateAbove: stateAbove,
                    sticky: sticky && stateAbove > 0 && sealed.state.utf8.count > stateAbove, delta: delta, claimed: .init(job)),
                now: Dispatcher.nowMillis())
            let reply: RESPValue
            do {
                reply = try await steps.run(call, coalesced: true)
            } catch let error as StepwiseError {
                throw error
            } catch {
                failures += 1
                noteRedisError(error)
                if failures == 1 || failures % 20 == 0 {
                    logger.warning("commit failed, sending it again", metadata: [LogKeys.error: "\(error)"])
                }
                try await Task.sleep(for: .milliseconds(min(2000, 25 << min(failures, 7))))
                continue
            }
            state.withLock { $0.redisFull = false }
            guard let parts = reply.array, let status = parts.first?.string else {
                throw StepwiseError(.unexpectedReply, "commit script returned \(reply)")
            }
            if status == "delta" {
                // The stored state is not the one the delta was made from: send it whole.
                logger.notice("state delta did not apply: committing the whole state")
                delta = nil
                continue
            }
            if delta != nil, status == "ok" { deltaCommits.add(1, ordering: .relaxed) }
            let label = status == "stale" ? "stale" : (outcome.cancelled ? "cancelled" : outcome.kind.rawValue)
            metrics.committed(
                jobID: job.jobID, sessionID: job.sessionID, agent: job.agent, outcome: label, step: outcome.ran,
                total: ContinuousClock.now - job.claimedAt, failed: outcome.kind == .fail && !outcome.cancelled)
            rememberState(of: job, sealed: sealed.state, status: status, reply: parts)
            switch status {
            case "retry":
                let due = Dispatcher.nowMillis() + outcome.retryDelay.milliseconds
                state.withLock { $0.retryDue = min($0.retryDue ?? due, due) }
            case "stale": logger.warning("commit rejected: this worker no longer holds the session")
            case "dead": logger.warning("step dead-lettered", metadata: ["stepwise.reason": .string(outcome.deadReason)])
            default: break
            }
            if parts.count > 3, let next = Claim(parts[3]) {
                switch next {
                case .run(let n):
                    state.withLock { _ = $0.active.insert(n.jobID) }
                    return next
                case .unregistered:
                    try await reRegister()
                    return nil
                case .skip: return nil
                }
            }
            return nil
        }
    }

    /// The delta a commit sends instead of a large state (with ``Configuration/stateDeltas``):
    /// for a plain session's outcome that writes its state, when the stored state (the claim's)
    /// is longer than the state cache's threshold and at most half of the new one changed.
    func stateDelta(_ job: Claim.Job, sealedState: String, outcome: Outcome, cipher: (any SessionCipher)?) -> StateDelta? {
        guard configuration.stateDeltas, cipher == nil, stateAbove > 0, [.continue, .wait, .done, .fail].contains(outcome.kind),
            job.state.utf8.count > stateAbove, sealedState.utf8.count > stateAbove
        else { return nil }
        return StateDelta(from: job.state, to: sealedState, version: job.version)
    }

    /// After a commit that wrote a state: keeps a large one for the session's next claim (at the
    /// version the commit answered), and forgets the session's entry otherwise.
    private func rememberState(of job: Claim.Job, sealed state: String, status: String, reply: [RESPValue]) {
        guard stateAbove > 0 else { return }
        if status == "ok", state.utf8.count > stateAbove, reply.count > 2,
            let version = reply[2].int ?? reply[2].string.flatMap({ Int($0) })
        {
            stateCache.remember(session: job.sessionID, incarnation: job.incarnation, version: version, state: state)
        } else if status != "retry" {
            stateCache.forget(session: job.sessionID)
        }
    }

    /// A quarantined step waits to run, or runs, alone: claim nothing more meanwhile.
    private var soloPending: Bool { state.withLock { !$0.soloQueue.isEmpty || $0.soloRunning } }

    func release(_ job: Claim.Job, reason: ScriptCalls.ReleaseReason) async throws {
        _ = try await steps.run(
            scripts.release(
                worker: workerID, jobID: job.jobID, holder: job.holder, reason: reason, now: Dispatcher.nowMillis(),
                activeLimit: configuration.maxActiveSessions, uncount: true),
            coalesced: true)
    }

    /// Records a Redis out-of-memory refusal: the worker says so (once) in its log and its
    /// heartbeat until a claim or commit goes through again.
    func noteRedisError(_ error: any Error) {
        guard error.isRedisOutOfMemory else { return }
        let first = state.withLock { s in
            defer { s.redisFull = true }
            return !s.redisFull
        }
        if first {
            logger.error("redis is out of memory (maxmemory reached, noeviction): not claiming steps until it has room")
        }
    }
}
