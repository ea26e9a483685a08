import StepwiseRedis

/// The Lua scripts that make every state change atomic. `docs/ARCHITECTURE.md` states each contract.
///
/// Session keys are derived inside the scripts from the namespace prefix and the job id
/// (`<session>:<seq>`), because a worker learns the session only from the job it popped. So the
/// scripts touch both pool-wide and per-session keys: they run on a single Redis (or a primary
/// with replicas), not across Cluster slots.
enum Scripts {
    /// Shared Lua helpers: key derivation, expiry refresh, slot accounting, events, and the
    /// claim of one job.
    private static let prelude = #"""
        local function split_job(jid)
          return string.match(jid, '^([A-Za-z0-9_%-]+):(%d+)$')
        end
        local function session_keys(P, sid)
          local s = P .. 's:{' .. sid .. '}'
          return {session = s, inbox = s .. ':inbox', jobs = s .. ':jobs', idem = s .. ':idem', events = s .. ':events'}
        end
        -- Milliseconds since 1970 by the Redis server's clock: expiry and retry times use it, so
        -- a client with a skewed clock cannot expire a session early or delay a retry.
        local function server_ms()
          local t = redis.call('TIME')
          return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
        end
        local function event(k, maxlen, ...)
          return redis.call('XADD', k.events, 'MAXLEN', '~', maxlen, '*', ...)
        end
        -- Refreshes the session's idle expiry and index entries when due (or when forced): every
        -- key of the session gets the same PEXPIREAT, so they expire together. Refreshing at most
        -- every min(ttl/10, 60 s) keeps this off the hot path; the expiry is set that much later
        -- than ttl, so a session never expires early.
        local function refresh(P, k, sid, now, ttl, last, force)
          ttl = tonumber(ttl) or 0
          now = tonumber(now)
          local due = 60000
          if ttl > 0 then due = math.min(math.max(math.floor(ttl / 10), 1000), 60000) end
          if (not force) and now - (tonumber(last) or 0) < due then return end
          redis.call('ZADD', P .. 'sessions', now, sid)
          local exp = ''
          if ttl > 0 then
            exp = server_ms() + ttl + due
            for _, key in ipairs({k.session, k.inbox, k.jobs, k.idem, k.events}) do
              redis.call('PEXPIREAT', key, exp)
            end
            redis.call('ZADD', P .. 'expiry', exp, sid)
          elseif force then
            for _, key in ipairs({k.session, k.inbox, k.jobs, k.idem, k.events}) do redis.call('PERSIST', key) end
            redis.call('ZREM', P .. 'expiry', sid)
          end
          redis.call('HSET', k.session, 'refreshed', now, 'exp', exp)
        end
        -- Frees the session's active slot (when the pool has a limit) and lets the longest
        -- waiting parked job take it: it goes to the front of `ready`.
        local function free_slot(P, sid, limit)
          if tonumber(limit) > 0 then
            redis.call('SREM', P .. 'active', sid)
            if redis.call('SCARD', P .. 'active') < tonumber(limit) then
              redis.call('LMOVE', P .. 'parked', P .. 'ready', 'LEFT', 'LEFT')
            end
          end
        end
        -- Drops a cancelled session's job that is its inbox head.
        local function drop_cancelled(k, sid, jid, seq, now, maxlen, attempt, steps)
          if redis.call('LINDEX', k.inbox, 0) == jid then
            redis.call('LPOP', k.inbox)
            redis.call('HDEL', k.jobs, seq, seq .. ':a', seq .. ':t', seq .. ':m')
            redis.call('HSET', k.session, 'holder', '')
            event(k, maxlen, 'type', 'step.cancelled', 'job', jid, 'step', (tonumber(steps) or 0) + 1, 'attempt', attempt or '0', 'time', now)
          end
        end
        -- Claims a job that is already in this worker's in-flight list. Returns the step to run,
        -- or {'skip', jid} when the job is stale (already committed, session gone, cancelled or
        -- blocked, not the head) or was parked because the pool's active-session limit is reached.
        local function claim(P, inflight, worker, now, maxlen, limit, jid)
          local sid, seq = split_job(jid)
          if not sid then
            redis.call('LREM', inflight, 1, jid)
            return {'skip', jid}
          end
          local k = session_keys(P, sid)
          local j = redis.call('HMGET', k.jobs, seq, seq .. ':a', seq .. ':t', seq .. ':m')
          local s = redis.call('HMGET', k.session, 'agent', 'options', 'state', 'version', 'steps', 'cancelled', 'blocked', 'exp')
          if s[6] then
            redis.call('LREM', inflight, 1, jid)
            drop_cancelled(k, sid, jid, seq, now, maxlen, j[2], s[5])
            return {'skip', jid}
          end
          if (not j[1]) or (not s[1]) or s[7] or redis.call('LINDEX', k.inbox, 0) ~= jid then
            redis.call('LREM', inflight, 1, jid)
            redis.call('HINCRBY', P .. 'stats', 'skipped', 1)
            return {'skip', jid}
          end
          if tonumber(limit) > 0 and redis.call('SCARD', P .. 'active') >= tonumber(limit)
              and redis.call('SISMEMBER', P .. 'active', sid) == 0 then
            redis.call('LREM', inflight, 1, jid)
            redis.call('RPUSH', P .. 'parked', jid)
            return {'skip', jid}
          end
          if tonumber(limit) > 0 then redis.call('SADD', P .. 'active', sid) end
          local attempt = tonumber(j[2] or '0') + 1
          redis.call('HSET', k.jobs, seq .. ':a', attempt)
          local step = tonumber(s[5]) + 1
          local holder = worker .. '/' .. attempt
          redis.call('HSET', k.session, 'status', 'running', 'holder', holder, 'active', now)
          event(k, maxlen, 'type', 'step.started', 'job', jid, 'step', step, 'attempt', attempt, 'time', now)
          if step == 1 and s[8] and s[8] ~= '' then
            -- The session's first event creates its stream: give it the session's expiry.
            redis.call('PEXPIREAT', k.events, s[8])
          end
          return {'run', jid, sid, s[1], s[2], s[3], s[4], tostring(step), tostring(attempt), j[1], holder, j[3] or '', j[4] or ''}
        end
        """#

    /// Creates the session if new, de-duplicates by idempotency key, appends the job to the
    /// session's inbox, and releases it to `ready` when the inbox was empty.
    ///
    /// KEYS: session, inbox, jobs, idem, ready, events.
    /// ARGV: prefix, sid, agent, owner, options ('' keeps), input, idempotency key (''), now ms,
    ///       ttl ms ('' keeps; for a new session '' means the default), initial state,
    ///       max attempts (''), default ttl ms.
    /// Returns `{job id, 1}` when enqueued, `{job id, 0}` for a duplicate; errors start with `STEPWISE`.
    static let submit = RedisScript(
        name: "submit",
        source: prelude + "\n" + #"""
            local P, sid, agent, owner, options, input, idem, now, ttl = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7], ARGV[8], ARGV[9]
            local k = {session = KEYS[1], inbox = KEYS[2], jobs = KEYS[3], idem = KEYS[4], events = KEYS[6]}
            local cur = redis.call('HMGET', KEYS[1], 'agent', 'owner', 'ttl', 'refreshed', 'cancelled', 'exp')
            local new = not cur[1]
            local fields = {'active', now}
            local ttl_changed = false
            if new then
              if agent == '' then
                return redis.error_reply('STEPWISE session_not_found session ' .. sid .. ' does not exist: pass --agent to create it')
              end
              if options == '' then options = '{}' end
              if ttl == '' then ttl = ARGV[12] end
              redis.call('HSET', KEYS[1], 'agent', agent, 'owner', owner, 'status', 'idle', 'version', 0, 'steps', 0,
                'created', now, 'options', options, 'state', ARGV[10], 'seq', 0, 'holder', '', 'ttl', ttl)
            else
              if agent ~= '' and cur[1] ~= agent then
                return redis.error_reply('STEPWISE agent_mismatch session ' .. sid .. ' runs agent ' .. cur[1] .. ', not ' .. agent)
              end
              if owner ~= '' and cur[2] ~= '' and cur[2] ~= owner then
                return redis.error_reply('STEPWISE not_owner session ' .. sid .. ' belongs to another owner')
              end
              if cur[5] then
                return redis.error_reply('STEPWISE cancelled session ' .. sid .. ' was cancelled (' .. cur[5] .. '): start a new session')
              end
              if ttl == '' then
                ttl = cur[3]
              else
                table.insert(fields, 'ttl')
                table.insert(fields, ttl)
                ttl_changed = true
              end
              if options ~= '' then table.insert(fields, 'options'); table.insert(fields, options) end
            end
            if idem ~= '' then
              local existing = redis.call('HGET', KEYS[4], idem)
              if existing then return {existing, 0} end
            end
            local seq = redis.call('HINCRBY', KEYS[1], 'seq', 1)
            local jid = sid .. ':' .. seq
            if ARGV[11] ~= '' then
              redis.call('HSET', KEYS[3], seq, input, seq .. ':t', now, seq .. ':m', ARGV[11])
            else
              redis.call('HSET', KEYS[3], seq, input, seq .. ':t', now)
            end
            if idem ~= '' then redis.call('HSET', KEYS[4], idem, jid) end
            local queued = redis.call('RPUSH', KEYS[2], jid)
            if queued == 1 then
              redis.call('RPUSH', KEYS[5], jid)
              table.insert(fields, 'status')
              table.insert(fields, 'queued')
            end
            redis.call('HSET', KEYS[1], unpack(fields))
            local force = new or idem ~= '' or ttl_changed
            if (not force) and queued == 1 and cur[6] and cur[6] ~= '' then
              -- New inbox and jobs keys: give them the session's current expiry.
              redis.call('PEXPIREAT', KEYS[2], cur[6])
              redis.call('PEXPIREAT', KEYS[3], cur[6])
            end
            refresh(P, k, sid, now, ttl, cur[4], force)
            return {jid, 1}
            """#)

    /// Claims a job for this worker: the given one (already moved by `BLMOVE`), or the next one
    /// from `ready` (moved with `LMOVE`). Marks the session running under a fencing token
    /// (`worker/attempt`) and appends `step.started`.
    ///
    /// KEYS: ready, inflight. ARGV: prefix, worker, now, job id or '', maxlen, active limit (0 = none).
    /// Returns nil when `ready` is empty, `{'skip', jid}` for a stale or parked job, else the claim
    /// `{'run', jid, sid, agent, options, state, version, step, attempt, input, holder, submitted, max attempts}`.
    static let claim = RedisScript(
        name: "claim",
        source: prelude + "\n" + #"""
            local jid = ARGV[4]
            if jid == '' then
              jid = redis.call('LMOVE', KEYS[1], KEYS[2], 'LEFT', 'RIGHT')
              if not jid then return false end
            end
            return claim(ARGV[1], KEYS[2], ARGV[2], ARGV[3], ARGV[5], ARGV[6], jid)
            """#)

    /// Ends one step, if and only if this worker still holds the session with this token.
    ///
    /// - `continue|wait|done|fail`: writes the state at version + 1, appends `step.completed`
    ///   (`step.failed` for `fail`), removes the job from the inbox and the in-flight list,
    ///   enqueues a continuation first in the inbox, and releases the session's next job.
    /// - `retry`: keeps the job at the head of its session, appends `step.retrying`, and parks it
    ///   in the `delayed` set until now + delay.
    /// - `dead`: keeps the job at the head of its session, which is blocked (`failed`) until the
    ///   dead letter is retried or purged; records reason, error and attempts; `step.dead`.
    /// - any outcome on a cancelled session: drops the job (`step.cancelled`).
    /// Optionally claims the next ready job in the same call, so a busy worker needs one round
    /// trip per step.
    ///
    /// KEYS: ready, inflight. ARGV: prefix, worker, now, maxlen, jid, holder, outcome, state,
    /// payload (next input, result, reason or error), fetch next ('1'|'0'), active limit,
    /// retry delay ms, dead-letter reason, attempts to record on a dead letter ('' = this one).
    /// Returns `{'ok'|'retry'|'dead'|'cancelled'|'stale', event id, version, next claim or nil}`.
    static let commit = RedisScript(
        name: "commit",
        source: prelude + "\n" + #"""
            local P, worker, now, maxlen, jid, holder, outcome = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7]
            local limit = ARGV[11]
            local result
            local sid, seq = split_job(jid)
            local k = sid and session_keys(P, sid)
            local cur = k and redis.call('HMGET', k.session, 'holder', 'version', 'steps', 'ttl', 'refreshed', 'cancelled', 'exp')
            local j = k and redis.call('HMGET', k.jobs, seq .. ':a', seq .. ':t', seq .. ':m')
            if (not cur) or cur[1] ~= holder or redis.call('LINDEX', k.inbox, 0) ~= jid then
              redis.call('LREM', KEYS[2], 1, jid)
              redis.call('HINCRBY', P .. 'stats', 'stale_commits', 1)
              result = {'stale', '', 0}
            else
              redis.call('LREM', KEYS[2], 1, jid)
              free_slot(P, sid, limit)
              local attempt = j[1] or '1'
              if cur[6] then
                drop_cancelled(k, sid, jid, seq, now, maxlen, attempt, cur[3])
                result = {'cancelled', '', tonumber(cur[2])}
              elseif outcome == 'retry' then
                local delay = tonumber(ARGV[12])
                redis.call('HSET', k.session, 'holder', '', 'status', 'queued', 'active', now)
                redis.call('ZADD', P .. 'delayed', server_ms() + delay, jid)
                local eid = event(k, maxlen, 'type', 'step.retrying', 'job', jid, 'step', tonumber(cur[3]) + 1,
                  'attempt', attempt, 'time', now, 'delay', delay, 'error', ARGV[9])
                result = {'retry', eid, tonumber(cur[2])}
              elseif outcome == 'dead' then
                if ARGV[14] and ARGV[14] ~= '' then attempt = ARGV[14] end
                redis.call('HSET', k.session, 'holder', '', 'status', 'failed', 'active', now, 'blocked', jid,
                  'dead_reason', ARGV[13], 'dead_error', ARGV[9], 'dead_attempts', attempt, 'dead_at', now)
                redis.call('ZADD', P .. 'dead', now, sid)
                redis.call('HINCRBY', P .. 'stats', 'dead', 1)
                local eid = event(k, maxlen, 'type', 'step.dead', 'job', jid, 'step', tonumber(cur[3]) + 1,
                  'attempt', attempt, 'time', now, 'reason', ARGV[13], 'error', ARGV[9])
                result = {'dead', eid, tonumber(cur[2])}
              else
                local version = tonumber(cur[2]) + 1
                local step = tonumber(cur[3]) + 1
                redis.call('HDEL', k.jobs, seq, seq .. ':a', seq .. ':t', seq .. ':m')
                redis.call('LPOP', k.inbox)
                local etype = 'step.completed'
                if outcome == 'fail' then etype = 'step.failed' end
                local eid = event(k, maxlen, 'type', etype, 'job', jid, 'step', step, 'attempt', attempt,
                  'time', now, 'outcome', outcome, 'version', version, 'submitted', j[2] or '', 'data', ARGV[9])
                if outcome == 'continue' then
                  local nseq = redis.call('HINCRBY', k.session, 'seq', 1)
                  if j[3] then
                    -- A continuation inherits its submit's attempt limit.
                    redis.call('HSET', k.jobs, nseq, ARGV[9], nseq .. ':t', now, nseq .. ':m', j[3])
                  else
                    redis.call('HSET', k.jobs, nseq, ARGV[9], nseq .. ':t', now)
                  end
                  if redis.call('LPUSH', k.inbox, sid .. ':' .. nseq) == 1 and cur[7] and cur[7] ~= '' then
                    -- New inbox and jobs keys: give them the session's current expiry.
                    redis.call('PEXPIREAT', k.inbox, cur[7])
                    redis.call('PEXPIREAT', k.jobs, cur[7])
                  end
                end
                local head = redis.call('LINDEX', k.inbox, 0)
                local status
                if head then
                  redis.call('RPUSH', KEYS[1], head)
                  status = 'queued'
                elseif outcome == 'done' then status = 'done'
                elseif outcome == 'fail' then status = 'failed'
                else status = 'waiting' end
                redis.call('HSET', k.session, 'state', ARGV[8], 'version', version, 'steps', step, 'holder', '',
                  'active', now, 'status', status)
                redis.call('HINCRBY', P .. 'stats', 'committed', 1)
                result = {'ok', eid, version}
              end
              refresh(P, k, sid, now, cur[4], cur[5], false)
            end
            if ARGV[10] == '1' then
              local next = redis.call('LMOVE', KEYS[1], KEYS[2], 'LEFT', 'RIGHT')
              if next then result[4] = claim(P, KEYS[2], worker, now, maxlen, limit, next) end
            end
            return result
            """#)

    /// Puts one in-flight job back at the front of `ready` without committing, if the caller
    /// still holds the session (graceful shutdown of an unfinished step, or an orphan). A
    /// graceful release does not count the delivery as an attempt.
    ///
    /// KEYS: ready, inflight. ARGV: prefix, jid, holder, now, maxlen, reason, active limit,
    /// uncount ('1': the delivery does not count as an attempt).
    /// Returns 1 when released, 0 when the hold was already lost.
    static let release = RedisScript(
        name: "release",
        source: prelude + "\n" + #"""
            local P, jid, holder, now, maxlen = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
            redis.call('LREM', KEYS[2], 1, jid)
            local sid, seq = split_job(jid)
            if not sid then return 0 end
            local k = session_keys(P, sid)
            local s = redis.call('HMGET', k.session, 'holder', 'steps', 'cancelled')
            if s[1] ~= holder or redis.call('LINDEX', k.inbox, 0) ~= jid then return 0 end
            free_slot(P, sid, ARGV[7])
            local attempt = redis.call('HGET', k.jobs, seq .. ':a') or '0'
            if holder ~= '' and ARGV[8] == '1' then
              -- A graceful release (shutdown) gives back a delivery the claim counted. An orphan
              -- release does not: its run may have crashed with a previous process.
              redis.call('HINCRBY', k.jobs, seq .. ':a', -1)
            end
            if s[3] then
              drop_cancelled(k, sid, jid, seq, now, maxlen, attempt, s[2])
              return 1
            end
            redis.call('HSET', k.session, 'holder', '', 'status', 'queued')
            redis.call('LPUSH', KEYS[1], jid)
            event(k, maxlen, 'type', 'step.released', 'job', jid, 'step', tonumber(s[2]) + 1,
              'attempt', attempt, 'time', now, 'reason', ARGV[6])
            return 1
            """#)

    /// Recovers the in-flight jobs of a worker whose heartbeat key expired: each job that is
    /// still its session's inbox head goes back to the front of `ready` and the session's hold
    /// and active slot are freed. Safe to run from several workers at once: it does nothing while
    /// the heartbeat exists, and the in-flight list is emptied in the same atomic call.
    ///
    /// KEYS: ready, dead worker's inflight, dead worker's heartbeat, workers zset.
    /// ARGV: prefix, dead worker id, now, maxlen, active limit.
    /// Returns the number of jobs put back, or -1 when the worker is alive.
    static let reap = RedisScript(
        name: "reap",
        source: prelude + "\n" + #"""
            if redis.call('EXISTS', KEYS[3]) == 1 then return -1 end
            local P, dead, now, maxlen = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
            local n = 0
            for _ = 1, 100000 do
              local jid = redis.call('RPOP', KEYS[2])
              if not jid then break end
              local sid, seq = split_job(jid)
              if sid then
                local k = session_keys(P, sid)
                local s = redis.call('HMGET', k.session, 'holder', 'steps', 'cancelled')
                local holder = s[1] or ''
                local mine = string.sub(holder, 1, #dead + 1) == dead .. '/' or holder == ''
                if redis.call('LINDEX', k.inbox, 0) == jid and redis.call('HEXISTS', k.jobs, seq) == 1 and mine then
                  free_slot(P, sid, ARGV[5])
                  local attempt = redis.call('HGET', k.jobs, seq .. ':a') or '0'
                  if s[3] then
                    drop_cancelled(k, sid, jid, seq, now, maxlen, attempt, s[2])
                  else
                    redis.call('HSET', k.session, 'holder', '', 'status', 'queued')
                    redis.call('LPUSH', KEYS[1], jid)
                    event(k, maxlen, 'type', 'step.recovered', 'job', jid, 'step', tonumber(s[2]) + 1,
                      'attempt', attempt, 'time', now, 'worker', dead)
                    n = n + 1
                  end
                end
              end
            end
            redis.call('ZREM', KEYS[4], dead)
            redis.call('HINCRBY', P .. 'stats', 'reaped', n)
            return n
            """#)

    /// Moves retries whose delay is over from `delayed` to the front of `ready` (skipping jobs of
    /// cancelled sessions or jobs no longer at their session's head).
    ///
    /// KEYS: delayed, ready. ARGV: prefix. Due times are by the Redis server's clock.
    /// Returns `{moved, ms until the next retry is due, or ''}`.
    static let promote = RedisScript(
        name: "promote",
        source: prelude + "\n" + #"""
            local P = ARGV[1]
            local now = server_ms()
            local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, 100)
            local moved = 0
            for i = #due, 1, -1 do
              local jid = due[i]
              redis.call('ZREM', KEYS[1], jid)
              local sid = split_job(jid)
              if sid then
                local k = session_keys(P, sid)
                local s = redis.call('HMGET', k.session, 'cancelled', 'holder')
                if (not s[1]) and s[2] == '' and redis.call('LINDEX', k.inbox, 0) == jid then
                  redis.call('LPUSH', KEYS[2], jid)
                  moved = moved + 1
                end
              end
            end
            local nxt = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
            local wait = ''
            if nxt[2] then wait = tostring(math.max(0, tonumber(nxt[2]) - now)) end
            return {moved, wait}
            """#)

    /// Cancels a session: a durable mark, queued steps dropped (from the inbox, `ready`,
    /// `delayed` and `parked`), a dead letter discarded, `session.cancelled` appended, and the
    /// session announced on the `cancels` set that workers watch to cancel a running step.
    ///
    /// KEYS: none (all derived). ARGV: prefix, sid, reason, now, maxlen.
    /// Returns `{1, dropped, running job or ''}`, `{0, 0, ''}` when already cancelled; errors start with `STEPWISE`.
    static let cancel = RedisScript(
        name: "cancel",
        source: prelude + "\n" + #"""
            local P, sid, reason, now, maxlen = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
            local k = session_keys(P, sid)
            local s = redis.call('HMGET', k.session, 'agent', 'holder', 'cancelled')
            if not s[1] then
              return redis.error_reply('STEPWISE session_not_found session ' .. sid .. ' does not exist (or expired)')
            end
            if s[3] then return {0, 0, ''} end
            local ids = redis.call('LRANGE', k.inbox, 0, -1)
            local running = ''
            if s[2] ~= '' and ids[1] then running = ids[1] end
            local dropped = 0
            for i, jid in ipairs(ids) do
              if jid ~= running then
                local _, seq = split_job(jid)
                if seq then redis.call('HDEL', k.jobs, seq, seq .. ':a', seq .. ':t', seq .. ':m') end
                if i == 1 then
                  -- Only the head is ever dispatched: it may wait in ready, parked or delayed.
                  redis.call('LREM', P .. 'ready', 1, jid)
                  redis.call('LREM', P .. 'parked', 1, jid)
                  redis.call('ZREM', P .. 'delayed', jid)
                end
                dropped = dropped + 1
              end
            end
            redis.call('DEL', k.inbox)
            if running ~= '' then redis.call('RPUSH', k.inbox, running) end
            redis.call('HSET', k.session, 'status', 'cancelled', 'cancelled', reason, 'active', now)
            redis.call('HDEL', k.session, 'blocked', 'dead_reason', 'dead_error', 'dead_attempts', 'dead_at')
            redis.call('ZREM', P .. 'dead', sid)
            local cseq = redis.call('HINCRBY', P .. 'stats', 'cancel_seq', 1)
            redis.call('ZADD', P .. 'cancels', cseq, sid)
            redis.call('ZREMRANGEBYRANK', P .. 'cancels', 0, -1001)
            event(k, maxlen, 'type', 'session.cancelled', 'session', sid, 'time', now, 'reason', reason, 'dropped', dropped,
              'running', running)
            local cur = redis.call('HMGET', k.session, 'ttl', 'refreshed')
            refresh(P, k, sid, now, cur[1], cur[2], true)
            return {1, dropped, running}
            """#)

    /// Refreshes a session's idle expiry now (a UI heartbeat), optionally with a new TTL.
    ///
    /// ARGV: prefix, sid, now, ttl ms ('' keeps).
    /// Returns the new expiry time in ms ('' when the session never expires), or an error when it does not exist.
    static let touch = RedisScript(
        name: "touch",
        source: prelude + "\n" + #"""
            local P, sid, now, ttl = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
            local k = session_keys(P, sid)
            local cur = redis.call('HMGET', k.session, 'agent', 'ttl')
            if not cur[1] then
              return redis.error_reply('STEPWISE session_not_found session ' .. sid .. ' does not exist (or expired)')
            end
            if ttl == '' then ttl = cur[2] else redis.call('HSET', k.session, 'ttl', ttl) end
            redis.call('HSET', k.session, 'active', now)
            refresh(P, k, sid, now, ttl, 0, true)
            return redis.call('HGET', k.session, 'exp')
            """#)

    /// Acts on a session's dead letter (its blocked head job).
    ///
    /// ARGV: prefix, job id, action (`retry` | `purge`), now, maxlen.
    /// - `retry`: clears the dead letter, resets the attempt count, and releases the job to `ready`.
    /// - `purge`: discards the job (never applied) and releases the session's next job, if any.
    /// Returns 1, or an error when the job is not a dead letter.
    static let deadLetter = RedisScript(
        name: "dead_letter",
        source: prelude + "\n" + #"""
            local P, jid, action, now, maxlen = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
            local sid, seq = split_job(jid)
            if not sid then return redis.error_reply('STEPWISE not_dead ' .. jid .. ' is not a job id (session:sequence)') end
            local k = session_keys(P, sid)
            if redis.call('HGET', k.session, 'blocked') ~= jid or redis.call('LINDEX', k.inbox, 0) ~= jid then
              return redis.error_reply('STEPWISE not_dead job ' .. jid .. ' is not in the dead-letter list (see stepwise dead list)')
            end
            redis.call('HDEL', k.session, 'blocked', 'dead_reason', 'dead_error', 'dead_attempts', 'dead_at')
            redis.call('ZREM', P .. 'dead', sid)
            if action ~= 'retry' and action ~= 'purge' then
              return redis.error_reply('STEPWISE not_dead unknown dead-letter action ' .. action)
            end
            if action == 'retry' then
              redis.call('HSET', k.jobs, seq .. ':a', 0)
              redis.call('HSET', k.session, 'status', 'queued', 'active', now)
              redis.call('RPUSH', P .. 'ready', jid)
              event(k, maxlen, 'type', 'step.retried', 'job', jid, 'time', now)
            else
              redis.call('LPOP', k.inbox)
              redis.call('HDEL', k.jobs, seq, seq .. ':a', seq .. ':t', seq .. ':m')
              event(k, maxlen, 'type', 'step.discarded', 'job', jid, 'time', now)
              local head = redis.call('LINDEX', k.inbox, 0)
              if head then
                redis.call('RPUSH', P .. 'ready', head)
                redis.call('HSET', k.session, 'status', 'queued', 'active', now)
              end
            end
            local cur = redis.call('HMGET', k.session, 'ttl', 'refreshed')
            refresh(P, k, sid, now, cur[1], cur[2], true)
            return 1
            """#)

    /// Index upkeep, run by every worker on the reaper's schedule (idempotent): removes the index
    /// entries (`sessions`, `expiry`, `dead`, `cancels`) of sessions whose keys expired, and frees
    /// active slots whose session no longer holds a step (a config change or a crash between
    /// scripts), letting parked jobs take them.
    ///
    /// ARGV: prefix, now (unused: the server clock decides), active limit.
    /// Returns the number of expired sessions swept.
    static let sweep = RedisScript(
        name: "sweep",
        source: prelude + "\n" + #"""
            local P, limit = ARGV[1], ARGV[3]
            local due = redis.call('ZRANGEBYSCORE', P .. 'expiry', '-inf', server_ms(), 'LIMIT', 0, 500)
            local n = 0
            for _, sid in ipairs(due) do
              local exp = redis.call('HGET', P .. 's:{' .. sid .. '}', 'exp')
              if exp and exp ~= '' then
                redis.call('ZADD', P .. 'expiry', exp, sid)
              else
                redis.call('ZREM', P .. 'expiry', sid)
                if not exp then
                  redis.call('ZREM', P .. 'sessions', sid)
                  redis.call('ZREM', P .. 'dead', sid)
                  redis.call('ZREM', P .. 'cancels', sid)
                  redis.call('SREM', P .. 'active', sid)
                  n = n + 1
                end
              end
            end
            for _, sid in ipairs(redis.call('SRANDMEMBER', P .. 'active', 100)) do
              local holder = redis.call('HGET', P .. 's:{' .. sid .. '}', 'holder')
              if (not holder) or holder == '' then redis.call('SREM', P .. 'active', sid) end
            end
            -- Without a limit (say, the pool was restarted without one) parked jobs all go.
            for _ = 1, 1000 do
              if tonumber(limit) > 0 and redis.call('SCARD', P .. 'active') >= tonumber(limit) then break end
              if not redis.call('LMOVE', P .. 'parked', P .. 'ready', 'LEFT', 'RIGHT') then break end
            end
            return n
            """#)
}
