import StepwiseRedis

/// The Lua scripts that make every state change atomic. `docs/ARCHITECTURE.md` states each contract.
///
/// Session keys are derived inside the scripts from the namespace prefix and the job id
/// (`<session>:<seq>`), because a worker learns the session only from the job it popped. So the
/// scripts touch both pool-wide and per-session keys: they run on a single Redis (or a primary
/// with replicas), not across Cluster slots.
enum Scripts {
    /// Shared Lua helpers: key derivation, TTL refresh and the claim of one job.
    private static let prelude = #"""
        local function split_job(jid)
          return string.match(jid, '^([A-Za-z0-9_%-]+):(%d+)$')
        end
        local function session_keys(P, sid)
          local s = P .. 's:{' .. sid .. '}'
          return {session = s, inbox = s .. ':inbox', jobs = s .. ':jobs', idem = s .. ':idem', events = s .. ':events'}
        end
        local function refresh_ttl(k, ttl)
          if ttl and tonumber(ttl) and tonumber(ttl) > 0 then
            for _, key in ipairs({k.session, k.inbox, k.jobs, k.idem, k.events}) do
              redis.call('PEXPIRE', key, ttl)
            end
          end
        end
        -- Claim a job that is already in this worker's in-flight list. Returns the step to run,
        -- or {'skip', jid} when the job is stale (already committed, session gone, not the head).
        local function claim(P, inflight, worker, now, maxlen, jid)
          local sid, seq = split_job(jid)
          if not sid then
            redis.call('LREM', inflight, 1, jid)
            return {'skip', jid}
          end
          local k = session_keys(P, sid)
          local input = redis.call('HGET', k.jobs, seq)
          local s = redis.call('HMGET', k.session, 'agent', 'options', 'state', 'version', 'steps')
          if (not input) or (not s[1]) or redis.call('LINDEX', k.inbox, 0) ~= jid then
            redis.call('LREM', inflight, 1, jid)
            redis.call('HINCRBY', P .. 'stats', 'skipped', 1)
            return {'skip', jid}
          end
          local attempt = redis.call('HINCRBY', k.jobs, seq .. ':a', 1)
          local step = tonumber(s[5]) + 1
          local holder = worker .. '/' .. attempt
          redis.call('HSET', k.session, 'status', 'running', 'holder', holder, 'active', now)
          redis.call('XADD', k.events, 'MAXLEN', '~', maxlen, '*', 'type', 'step.started', 'session', sid,
            'job', jid, 'step', step, 'attempt', attempt, 'time', now)
          local submitted = redis.call('HGET', k.jobs, seq .. ':t') or ''
          return {'run', jid, sid, s[1], s[2], s[3], s[4], tostring(step), tostring(attempt), input, holder, submitted}
        end
        """#

    /// Creates the session if new, de-duplicates by idempotency key, appends the job to the
    /// session's inbox, and releases it to `ready` when the inbox was empty.
    ///
    /// KEYS: session, inbox, jobs, idem, ready, sessions index, events.
    /// ARGV: sid, agent, owner, options ('' keeps), input, idempotency key (''), now ms, ttl ms,
    ///       initial state.
    /// Returns `{job id, 1}` when enqueued, `{job id, 0}` for a duplicate; errors start with `STEPWISE`.
    static let submit = RedisScript(
        name: "submit",
        source: prelude + "\n" + #"""
            local sid, agent, owner, options, input, idem, now, ttl = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7], ARGV[8]
            if redis.call('EXISTS', KEYS[1]) == 0 then
              if agent == '' then
                return redis.error_reply('STEPWISE session_not_found session ' .. sid .. ' does not exist: pass --agent to create it')
              end
              if options == '' then options = '{}' end
              redis.call('HSET', KEYS[1], 'agent', agent, 'owner', owner, 'status', 'idle', 'version', 0, 'steps', 0,
                'created', now, 'active', now, 'options', options, 'state', ARGV[9], 'seq', 0, 'holder', '', 'ttl', ttl)
            else
              local cur = redis.call('HMGET', KEYS[1], 'agent', 'owner', 'ttl')
              if agent ~= '' and cur[1] ~= agent then
                return redis.error_reply('STEPWISE agent_mismatch session ' .. sid .. ' runs agent ' .. cur[1] .. ', not ' .. agent)
              end
              if owner ~= '' and cur[2] ~= '' and cur[2] ~= owner then
                return redis.error_reply('STEPWISE not_owner session ' .. sid .. ' belongs to another owner')
              end
              ttl = cur[3]
            end
            if idem ~= '' then
              local existing = redis.call('HGET', KEYS[4], idem)
              if existing then return {existing, 0} end
            end
            if options ~= '' then redis.call('HSET', KEYS[1], 'options', options) end
            local seq = redis.call('HINCRBY', KEYS[1], 'seq', 1)
            local jid = sid .. ':' .. seq
            redis.call('HSET', KEYS[3], seq, input, seq .. ':t', now)
            if idem ~= '' then redis.call('HSET', KEYS[4], idem, jid) end
            if redis.call('RPUSH', KEYS[2], jid) == 1 then
              redis.call('RPUSH', KEYS[5], jid)
              redis.call('HSET', KEYS[1], 'status', 'queued')
            end
            redis.call('HSET', KEYS[1], 'active', now)
            redis.call('ZADD', KEYS[6], now, sid)
            refresh_ttl({session = KEYS[1], inbox = KEYS[2], jobs = KEYS[3], idem = KEYS[4], events = KEYS[7]}, ttl)
            return {jid, 1}
            """#)

    /// Claims a job for this worker: the given one (already moved by `BLMOVE`), or the next one
    /// from `ready` (moved with `LMOVE`). Marks the session running under a fencing token
    /// (`worker/attempt`) and appends `step.started`.
    ///
    /// KEYS: ready, inflight. ARGV: prefix, worker, now, job id or '', maxlen.
    /// Returns nil when `ready` is empty, `{'skip', jid}` for a stale job, else the claim
    /// `{'run', jid, sid, agent, options, state, version, step, attempt, input, holder, submitted}`.
    static let claim = RedisScript(
        name: "claim",
        source: prelude + "\n" + #"""
            local jid = ARGV[4]
            if jid == '' then
              jid = redis.call('LMOVE', KEYS[1], KEYS[2], 'LEFT', 'RIGHT')
              if not jid then return false end
            end
            return claim(ARGV[1], KEYS[2], ARGV[2], ARGV[3], ARGV[5], jid)
            """#)

    /// Commits one step, if and only if this worker still holds the session with this token:
    /// writes the state at version + 1, appends `step.completed`/`step.failed`, removes the job
    /// from the inbox and the in-flight list, enqueues a continuation first in the inbox, and
    /// releases the session's next job to `ready`. Optionally claims the next ready job in the
    /// same call, so a busy worker needs one round trip per step.
    ///
    /// KEYS: ready, inflight. ARGV: prefix, worker, now, maxlen, jid, holder, outcome
    /// (continue|wait|done|fail), state, payload, fetch next ('1'|'0').
    /// Returns `{'ok', event id, version, next claim or nil}` or `{'stale', '', 0, next claim or nil}`.
    static let commit = RedisScript(
        name: "commit",
        source: prelude + "\n" + #"""
            local P, worker, now, maxlen, jid, holder, outcome = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7]
            local result
            local sid, seq = split_job(jid)
            local k = sid and session_keys(P, sid)
            local cur = k and redis.call('HMGET', k.session, 'holder', 'version', 'steps', 'ttl')
            if (not cur) or cur[1] ~= holder or redis.call('LINDEX', k.inbox, 0) ~= jid
                or redis.call('HEXISTS', k.jobs, seq) == 0 then
              redis.call('LREM', KEYS[2], 1, jid)
              redis.call('HINCRBY', P .. 'stats', 'stale_commits', 1)
              result = {'stale', '', 0}
            else
              local version = tonumber(cur[2]) + 1
              local step = tonumber(cur[3]) + 1
              local attempt = redis.call('HGET', k.jobs, seq .. ':a') or '1'
              local submitted = redis.call('HGET', k.jobs, seq .. ':t') or ''
              redis.call('HDEL', k.jobs, seq, seq .. ':a', seq .. ':t')
              redis.call('LPOP', k.inbox)
              redis.call('LREM', KEYS[2], 1, jid)
              redis.call('HSET', k.session, 'state', ARGV[8], 'version', version, 'steps', step, 'holder', '', 'active', now)
              local etype = 'step.completed'
              if outcome == 'fail' then etype = 'step.failed' end
              local eid = redis.call('XADD', k.events, 'MAXLEN', '~', maxlen, '*', 'type', etype, 'session', sid,
                'job', jid, 'step', step, 'attempt', attempt, 'time', now, 'outcome', outcome, 'version', version,
                'submitted', submitted, 'data', ARGV[9])
              if outcome == 'continue' then
                local nseq = redis.call('HINCRBY', k.session, 'seq', 1)
                redis.call('HSET', k.jobs, nseq, ARGV[9], nseq .. ':t', now)
                redis.call('LPUSH', k.inbox, sid .. ':' .. nseq)
              end
              local head = redis.call('LINDEX', k.inbox, 0)
              local status
              if head then
                redis.call('RPUSH', KEYS[1], head)
                status = 'queued'
              elseif outcome == 'done' then status = 'done'
              elseif outcome == 'fail' then status = 'failed'
              else status = 'waiting' end
              redis.call('HSET', k.session, 'status', status)
              redis.call('ZADD', P .. 'sessions', now, sid)
              redis.call('HINCRBY', P .. 'stats', 'committed', 1)
              refresh_ttl(k, cur[4])
              result = {'ok', eid, version}
            end
            if ARGV[10] == '1' then
              local next = redis.call('LMOVE', KEYS[1], KEYS[2], 'LEFT', 'RIGHT')
              if next then result[4] = claim(P, KEYS[2], worker, now, maxlen, next) end
            end
            return result
            """#)

    /// Puts one in-flight job back at the front of `ready` without committing, if the caller
    /// still holds the session (graceful shutdown of an unfinished step).
    ///
    /// KEYS: ready, inflight. ARGV: prefix, jid, holder, now, maxlen, reason.
    /// Returns 1 when released, 0 when the hold was already lost.
    static let release = RedisScript(
        name: "release",
        source: prelude + "\n" + #"""
            local P, jid, holder, now, maxlen = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
            redis.call('LREM', KEYS[2], 1, jid)
            local sid, seq = split_job(jid)
            if not sid then return 0 end
            local k = session_keys(P, sid)
            if redis.call('HGET', k.session, 'holder') ~= holder or redis.call('LINDEX', k.inbox, 0) ~= jid then return 0 end
            redis.call('HSET', k.session, 'holder', '', 'status', 'queued')
            redis.call('LPUSH', KEYS[1], jid)
            redis.call('XADD', k.events, 'MAXLEN', '~', maxlen, '*', 'type', 'step.released', 'session', sid,
              'job', jid, 'attempt', redis.call('HGET', k.jobs, seq .. ':a') or '0', 'time', now, 'reason', ARGV[6])
            return 1
            """#)

    /// Recovers the in-flight jobs of a worker whose heartbeat key expired: each job that is
    /// still its session's inbox head goes back to the front of `ready` and the session's hold
    /// is cleared. Safe to run from several workers at once: it does nothing while the
    /// heartbeat exists, and the in-flight list is emptied in the same atomic call.
    ///
    /// KEYS: ready, dead worker's inflight, dead worker's heartbeat, workers zset.
    /// ARGV: prefix, dead worker id, now, maxlen.
    /// Returns the number of jobs put back, or -1 when the worker is alive.
    static let reap = RedisScript(
        name: "reap",
        source: prelude + "\n" + #"""
            if redis.call('EXISTS', KEYS[3]) == 1 then return -1 end
            local P, dead, now, maxlen = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
            local n = 0
            while true do
              local jid = redis.call('RPOP', KEYS[2])
              if not jid then break end
              local sid, seq = split_job(jid)
              if sid then
                local k = session_keys(P, sid)
                local holder = redis.call('HGET', k.session, 'holder') or ''
                if redis.call('LINDEX', k.inbox, 0) == jid and redis.call('HEXISTS', k.jobs, seq) == 1 then
                  if string.sub(holder, 1, #dead + 1) == dead .. '/' or holder == '' then
                    redis.call('HSET', k.session, 'holder', '', 'status', 'queued')
                  end
                  redis.call('LPUSH', KEYS[1], jid)
                  redis.call('XADD', k.events, 'MAXLEN', '~', maxlen, '*', 'type', 'step.recovered', 'session', sid,
                    'job', jid, 'attempt', redis.call('HGET', k.jobs, seq .. ':a') or '0', 'time', now, 'worker', dead)
                  n = n + 1
                end
              end
            end
            redis.call('ZREM', KEYS[4], dead)
            redis.call('HINCRBY', P .. 'stats', 'reaped', n)
            return n
            """#)
}
