/*
 * Stepwise job protocol: a model for the spin model checker.
 *
 * Every Lua script (and every plain Redis command the workers send) is one
 * d_step: Redis runs a script atomically, so no other client sees a state in
 * between. docs/MODEL.md maps each step to its script and explains the
 * abstraction. model/check.sh runs the configurations and the old variants.
 *
 * Old variants (each reverts one fix; see docs/MODEL.md):
 *   OLD_UNFENCED_CLAIM    claim checks only "job exists and heads its inbox"
 *   OLD_TOKENS            fencing token = worker/attempt, attempt per job
 *   OLD_JOBIDS            job id = session:<per-session counter>
 *   OLD_ORPHAN_HOLDER     orphan scan releases through the current holder
 *   OLD_REAP_UNREGISTERS  reap removes the dead worker from `workers`
 * Rules the model found necessary (see docs/MODEL.md, "Findings"):
 *   NO_KEEP_OWN           leaves out keep_own (shared in-flight list of a
 *                         worker's slots)
 *   SAME_ID               a crashed worker restarts with the same id ...
 *   SELF_REAP             ... and reaps its own in-flight list at startup
 * NOINV leaves out the auxiliary invariants (e) and (f), so a variant has to
 * break an end-to-end property (a)-(d) to fail.
 */

/* ---- configuration (override with spin -DNAME=value) ------------------ */
#ifndef NJ
#define NJ 3            /* jobs submitted in total (over both sessions) */
#endif
#ifndef SLOTS_A
#define SLOTS_A 1       /* slots (concurrency) of worker A */
#endif
#ifndef SLOTS_B
#define SLOTS_B 1       /* slots of worker B */
#endif
#define NSLOT (SLOTS_A + SLOTS_B)
#ifndef CRASHES
#define CRASHES 1       /* worker process crashes (kill -9) */
#endif
#ifndef HBLOSS
#define HBLOSS 1        /* heartbeat key of a live (paused, slow) worker expires */
#endif
#ifndef LOSTFETCH
#define LOSTFETCH 0     /* BLMOVE moved a job but the reply was lost (orphan) */
#endif
#ifndef LOSTREPLY
#define LOSTREPLY 0     /* a commit applied but its reply was lost: the worker retries */
#endif
#ifndef RELEASES
#define RELEASES 0      /* graceful release of a running step (shutdown) */
#endif
#ifndef RETRIES
#define RETRIES 0       /* commit outcome retry (job to `delayed`) */
#endif
#ifndef DEADS
#define DEADS 0         /* commit outcome dead (dead letter; operator retries or purges) */
#endif
#ifndef CANCELS
#define CANCELS 0
#endif
#ifndef EXPIRES
#define EXPIRES 0       /* a session's keys expire (at any time, even mid-step) */
#endif

#define NS 2            /* sessions */
#define NW 4            /* worker ids: A, B and fresh ids for restarts */
#define MAXL 4          /* capacity of a list in the model */
#define CAP 30          /* seq bound: ids and tokens are 5 bits */
#if defined(OLD_UNFENCED_CLAIM) || defined(OLD_TOKENS) || defined(OLD_JOBIDS) || defined(OLD_ORPHAN_HOLDER) || defined(OLD_REAP_UNREGISTERS)
#define OLD_VARIANT 1
#endif

/* ---- Redis state ------------------------------------------------------ */
typedef List { byte e[MAXL]; byte n };

/* One session incarnation. A job id is (session << 5) | n, n >= 1: the
 * session is part of the id, as in `<sid>:<n>`. A holder is (worker << 5) | t. */
typedef Sess {
  bool ex;              /* the session hash exists (an incarnation is alive) */
  bool canc;            /* cancelled */
  bool blk;             /* head is dead-lettered (blocked) */
  byte holder;          /* fencing token of the running claim, 0 = '' */
  byte committed;       /* token of the last accepted commit (idempotent retry) */
  byte n;               /* inbox length */
  byte q[NJ];           /* inbox: job ids, q[0] = head */
  byte att[NJ];         /* per-job attempt counter (only OLD_TOKENS reads it) */
  byte ctr;             /* per-session job counter (only OLD_JOBIDS reads it) */
  /* ghost */
  byte inst[NJ];        /* ghost: unique submission number of each inbox job */
  byte hrun;            /* ghost: run id of the current holder's claim */
  byte last;            /* ghost: last applied submission of this incarnation */
};

Sess S[NS];
List ready;
List delayed;           /* a zset: order is irrelevant, entries unique */
List IF[NW];            /* inflight:<worker> */
bool hb[NW];            /* heartbeat:<worker> exists */
bool reg[NW];           /* worker is in the `workers` registry */
byte seq;               /* global counter: job ids, tokens (and ghost run ids) */

/* ---- workers (local state, kept global so checks can read it) --------- */
#define IDLE    0
#define FETCHED 1       /* job moved to inflight, claim not yet sent */
#define RUN     2       /* claimed: the step runs locally */
#define RECOMMIT 3      /* commit was applied but its reply lost: retry it */
byte gw[2];             /* worker id of worker process group 0 (A) and 1 (B) */
byte ph[NSLOT];         /* phase of each slot */
byte cj[NSLOT];         /* job in hand */
byte ct[NSLOT];         /* token of its claim */
byte crun[NSLOT];       /* ghost: run id of its claim */
byte cand[2];           /* orphan-scan candidate of each group's maintenance task */
byte okept[2], okepth[2]; /* last orphan release that changed nothing, and the holder then */
byte nextw = 2;         /* next fresh worker id for a restart */

/* ---- fault budgets and ghost bookkeeping ------------------------------ */
byte submitted, crashes, hbloss, lostfetch, lostreply, releases, retries, deads, cancels, expires;
int appliedset;            /* ghost: bit i set = submission i applied */

hidden byte hi, hk, hr, hs, hj, ht, hw, hx;   /* scratch, not part of the state */
mtype = { claimed, unregistered, stale, skipped, cancelled, duplicate, ok_again, applied, retrying, dead_lettered, released, kept };
hidden mtype hres;      /* a script's reply, for the trail printouts */

#define GROUP(p)   ((p) < SLOTS_A -> 0 : 1)
#define SOF(j)     ((j) >> 5)
#define WOF(tok)   ((tok) >> 5)
#define HEAD(s, j) (S[s].ex && S[s].n > 0 && S[s].q[0] == (j))

/* ---- list primitives --------------------------------------------------- */
inline rpush(L, x) { assert(L.n < MAXL); L.e[L.n] = x; L.n++ }
inline lpush(L, x) {
  assert(L.n < MAXL); hi = L.n;
  do :: hi > 0 -> L.e[hi] = L.e[hi - 1]; hi-- :: else -> break od;
  L.e[0] = x; L.n++
}
inline ldel(L, k) {     /* delete index k */
  hi = k;
  do :: hi + 1 < L.n -> L.e[hi] = L.e[hi + 1]; hi++ :: else -> break od;
  L.n--; L.e[L.n] = 0
}
inline lrem(L, x, r) {  /* LREM L 1 x; r = number removed */
  r = 0; hk = 0;
  do
  :: hk < L.n && L.e[hk] != x -> hk++
  :: hk < L.n && L.e[hk] == x -> r = 1; ldel(L, hk); break
  :: hk >= L.n -> break
  od
}

/* ---- session primitives ------------------------------------------------ */
inline wipe(s) {        /* all of the session's keys vanish */
  S[s].ex = 0; S[s].canc = 0; S[s].blk = 0; S[s].holder = 0; S[s].committed = 0;
  S[s].n = 0; S[s].ctr = 0; S[s].hrun = 0; S[s].last = 0;
  hi = 0;
  do :: hi < NJ -> S[s].q[hi] = 0; S[s].att[hi] = 0; S[s].inst[hi] = 0; hi++ :: else -> break od
}
inline popq(s) {        /* LPOP inbox (and the job's hash fields) */
  hi = 0;
  do
  :: hi + 1 < S[s].n -> S[s].q[hi] = S[s].q[hi + 1]; S[s].att[hi] = S[s].att[hi + 1];
     S[s].inst[hi] = S[s].inst[hi + 1]; hi++
  :: else -> break
  od;
  S[s].n--; S[s].q[S[s].n] = 0; S[s].att[S[s].n] = 0; S[s].inst[S[s].n] = 0
}
/* Drops a cancelled session's head (step.cancelled) and releases the next one. */
inline drop_cancelled(s) {
  popq(s); S[s].holder = 0; S[s].hrun = 0;
  if :: S[s].n > 0 -> rpush(ready, S[s].q[0]) :: else fi
}

/* ---- auxiliary invariants (e), (f) -------------------------------------- */
/* (e) single dispatch: a live session's head has at most one entry in ready,
 *     delayed and all in-flight lists together.
 * (f) a claimed head stays in its holder's in-flight list (so a crash of the
 *     holder is recovered by reap). */
inline count_in(L, x) {
  hk = 0;
  do :: hk < L.n -> if :: L.e[hk] == x -> hx++ :: else fi; hk++ :: else -> break od
}
inline check_dispatch() {
#ifndef NOINV
  hs = 0;
  do
  :: hs < NS ->
     if
     :: S[hs].ex && S[hs].n > 0 && !S[hs].blk ->
        hj = S[hs].q[0]; hx = 0;
        count_in(ready, hj); count_in(delayed, hj);
        hw = 0;
        do :: hw < NW -> count_in(IF[hw], hj); hw++ :: else -> break od;
        assert(hx <= 1);                                   /* (e) */
        if
        :: S[hs].holder != 0 -> hx = 0; count_in(IF[WOF(S[hs].holder)], hj);
           assert(hx == 1)                                 /* (f) */
        :: else
        fi
     :: else
     fi;
     hs++
  :: else -> break
  od;
#endif
  skip
}

/* keep_own(w, j): after a script removed an entry of j from inflight[w]
 * without claiming it, if the session's live holder is a claim of worker w
 * and no entry of j is left in inflight[w], the entry is put back. A worker's
 * slots share one in-flight list and entries are bare job ids, so the entry a
 * script removes may be the one that another slot's claim relies on (claim
 * duplicate / stale claim / stale commit / orphan release racing a re-fetch).
 * NO_KEEP_OWN leaves this rule out (a counterexample; see docs/MODEL.md). */
inline keep_own(w, j) {
#ifndef NO_KEEP_OWN
  hs = SOF(j);
  if
  :: HEAD(hs, j) && S[hs].holder != 0 && WOF(S[hs].holder) == w ->
     hx = 0; count_in(IF[w], j);
     if :: hx == 0 -> rpush(IF[w], j) :: else fi
  :: else
  fi
#else
  skip
#endif
}

/* ---- scripts ------------------------------------------------------------ */

/* submit: creates the session if it does not exist, appends a new job. */
inline submit(s) {
  if :: !S[s].ex -> wipe(s); S[s].ex = 1 :: else fi;
  seq++; assert(seq <= CAP); submitted++;
#ifdef OLD_JOBIDS
  S[s].ctr++; hj = (s << 5) | S[s].ctr;
#else
  hj = (s << 5) | seq;
#endif
  S[s].q[S[s].n] = hj; S[s].inst[S[s].n] = seq; S[s].att[S[s].n] = 0; S[s].n++;
  if :: S[s].n == 1 -> rpush(ready, hj) :: else fi
}

/* claim(w, j): the slot's job j is in inflight[w] (moved by BLMOVE). */
inline claim(p, w, j) {
  hs = SOF(j);
#ifndef OLD_UNFENCED_CLAIM
  if
  :: !hb[w] ->                      /* 'unregistered': give the job back */
     lrem(IF[w], j, hr);
     if
     :: hr && HEAD(hs, j) && S[hs].holder == 0 && !S[hs].blk && !S[hs].canc -> lpush(ready, j)
     :: else
     fi;
     ph[p] = IDLE; cj[p] = 0; hres = unregistered
  :: else ->
     lrem(IF[w], j, hr);
     if
     :: !hr -> ph[p] = IDLE; cj[p] = 0; hres = stale   /* stale claim: no-op */
     :: else ->
        if
        :: !HEAD(hs, j) || S[hs].blk -> ph[p] = IDLE; cj[p] = 0; hres = skipped
        :: else -> if
           :: S[hs].canc -> drop_cancelled(hs); ph[p] = IDLE; cj[p] = 0; hres = cancelled
           :: else -> if
              :: S[hs].holder != 0 -> ph[p] = IDLE; cj[p] = 0; hres = duplicate
              :: else ->
                 seq++; assert(seq <= CAP);
#ifdef OLD_TOKENS
                 S[hs].att[0]++; S[hs].holder = (w << 5) | S[hs].att[0];
#else
                 S[hs].holder = (w << 5) | seq;
#endif
                 S[hs].hrun = seq;
                 rpush(IF[w], j);                                   /* kept while claimed */
                 ct[p] = S[hs].holder; crun[p] = seq; ph[p] = RUN; hres = claimed
              fi
           fi
        fi
     fi
  fi;
  if :: ph[p] != RUN -> keep_own(w, j) :: else fi
#else
  /* as it was: no heartbeat check, no LREM == 1, no live-holder check */
  if
  :: HEAD(hs, j) && !S[hs].blk && S[hs].canc -> lrem(IF[w], j, hr); drop_cancelled(hs); ph[p] = IDLE; cj[p] = 0; hres = cancelled
  :: HEAD(hs, j) && !S[hs].blk && !S[hs].canc ->
     seq++; assert(seq <= CAP);
#ifdef OLD_TOKENS
     S[hs].att[0]++; S[hs].holder = (w << 5) | S[hs].att[0];
#else
     S[hs].holder = (w << 5) | seq;
#endif
     S[hs].hrun = seq; ct[p] = S[hs].holder; crun[p] = seq; ph[p] = RUN; hres = claimed
  :: else -> lrem(IF[w], j, hr); ph[p] = IDLE; cj[p] = 0; hres = skipped
  fi
#endif
}

/* commit(w, j, token, outcome). o: 0 ok, 1 retry, 2 dead. */
inline commit(p, w, j, o) {
  hs = SOF(j); ht = ct[p];
  if
#ifndef OLD_TOKENS
  :: S[hs].ex && S[hs].committed == ht -> hres = ok_again     /* idempotent 'ok' */
#endif
  :: else ->
     if
     :: !S[hs].ex || S[hs].holder != ht || !HEAD(hs, j) ->
        hres = stale;
#ifndef NO_KEEP_OWN
        /* j still heads its session, unclaimed or claimed by another slot
         * of this worker: the entry in inflight[w] is that slot's, not ours
         * (ours was reaped) */
        if
        :: HEAD(hs, j) && (S[hs].holder == 0 || WOF(S[hs].holder) == w) -> skip
        :: else -> lrem(IF[w], j, hr)
        fi
#else
        lrem(IF[w], j, hr)
#endif
     :: else ->
        assert(S[hs].hrun == crun[p]);                   /* (c) no stale commit accepted */
        lrem(IF[w], j, hr);
        if
        :: S[hs].canc -> drop_cancelled(hs); hres = cancelled
        :: !S[hs].canc && o == 0 -> hres = applied;
           hx = S[hs].inst[0];
           assert(((appliedset >> hx) & 1) == 0);           /* (a) applied at most once */
           assert(hx > S[hs].last);                      /* (b) in submit order */
           appliedset = appliedset | (1 << hx); S[hs].last = hx;
           popq(hs); S[hs].holder = 0; S[hs].hrun = 0; S[hs].committed = ht;
           if :: S[hs].n > 0 -> rpush(ready, S[hs].q[0]) :: else fi
        :: !S[hs].canc && o == 1 ->
           S[hs].holder = 0; S[hs].hrun = 0; rpush(delayed, j); hres = retrying
        :: !S[hs].canc && o == 2 ->
           S[hs].holder = 0; S[hs].hrun = 0; S[hs].blk = 1; hres = dead_lettered
        fi
     fi
  fi
}

/* release(w, j, token): graceful (token = the claim's) or orphan (token 0). */
inline release(w, j, tok, graceful) {
  hs = SOF(j); hres = kept;
  lrem(IF[w], j, hr);
  if
#ifdef OLD_ORPHAN_HOLDER
  :: HEAD(hs, j) && !S[hs].blk && S[hs].holder == tok ->      /* LREM result ignored */
#else
  :: hr && HEAD(hs, j) && !S[hs].blk && S[hs].holder == tok ->
#endif
     if :: graceful && tok != 0 && S[hs].att[0] > 0 -> S[hs].att[0]-- :: else fi;
     if
     :: S[hs].canc -> drop_cancelled(hs)
     :: else -> S[hs].holder = 0; S[hs].hrun = 0; lpush(ready, j)
     fi;
     hres = released
  :: else -> keep_own(w, j)
  fi
}

/* reap(w): w's heartbeat is gone; recover each job of inflight[w]. */
inline reap(w) {
  do
  :: IF[w].n > 0 ->
     IF[w].n--; hj = IF[w].e[IF[w].n]; IF[w].e[IF[w].n] = 0;     /* RPOP */
     hs = SOF(hj);
     if
     :: HEAD(hs, hj) && !S[hs].blk && (S[hs].holder == 0 || WOF(S[hs].holder) == w) ->
        if
        :: S[hs].canc -> drop_cancelled(hs)
        :: else -> S[hs].holder = 0; S[hs].hrun = 0; lpush(ready, hj)
        fi
     :: else
     fi
  :: else -> break
  od;
#ifdef OLD_REAP_UNREGISTERS
  reg[w] = 0
#else
  skip
#endif
}

/* promote: a due retry goes back to the front of ready if still runnable. */
inline promote(k) {
  hj = delayed.e[k]; ldel(delayed, k); hs = SOF(hj);
  if
  :: HEAD(hs, hj) && S[hs].holder == 0 && !S[hs].canc && !S[hs].blk -> lpush(ready, hj)
  :: else
  fi
}

/* cancel(s): queued jobs dropped, the running head left to its commit. */
inline cancel(s) {
  S[s].canc = 1; S[s].blk = 0;
  if
  :: S[s].holder != 0 && S[s].n > 0 ->          /* keep the running head */
     do :: S[s].n > 1 -> S[s].n--; S[s].q[S[s].n] = 0; S[s].att[S[s].n] = 0; S[s].inst[S[s].n] = 0
        :: else -> break od
  :: else ->
     if
     :: S[s].n > 0 -> hj = S[s].q[0]; lrem(ready, hj, hr); lrem(delayed, hj, hr)
     :: else
     fi;
     do :: S[s].n > 0 -> S[s].n--; S[s].q[S[s].n] = 0; S[s].att[S[s].n] = 0; S[s].inst[S[s].n] = 0
        :: else -> break od
  fi
}

/* dead_letter(s, retry | purge) */
inline dl_retry(s) { S[s].blk = 0; S[s].att[0] = 0; rpush(ready, S[s].q[0]) }
inline dl_purge(s) {
  S[s].blk = 0; popq(s);
  if :: S[s].n > 0 -> rpush(ready, S[s].q[0]) :: else fi
}

/* ---- processes ---------------------------------------------------------- */
/* Trail printouts: job s:n is session s's job n; worker w; token w/t. */
#define W(p)      gw[GROUP(p)]
#define SLOTDONE(p) ph[p] = IDLE; cj[p] = 0; ct[p] = 0; crun[p] = 0

/* One slot of a worker: fetch (BLMOVE), claim, run, commit or release. */
proctype Slot(byte p) {
end:
  do
  /* BLMOVE ready -> inflight[w] (blocks while ready is empty) */
  :: d_step { ph[p] == IDLE && ready.n > 0 ->
       hj = ready.e[0]; ldel(ready, 0); rpush(IF[W(p)], hj);
       cj[p] = hj; ph[p] = FETCHED;
       printf("MODEL slot %d worker %d: BLMOVE %d:%d\n", p, W(p), SOF(hj), hj & 31);
       check_dispatch() }
  :: d_step { ph[p] == IDLE && ready.n > 0 && lostfetch < LOSTFETCH ->   /* reply lost */
       lostfetch++;
       hj = ready.e[0]; ldel(ready, 0); rpush(IF[W(p)], hj);
       printf("MODEL slot %d worker %d: BLMOVE %d:%d, reply lost (orphan)\n", p, W(p), SOF(hj), hj & 31);
       check_dispatch() }
  :: d_step { ph[p] == FETCHED && seq < CAP ->
       hj = cj[p]; claim(p, W(p), hj);
       printf("MODEL slot %d worker %d: claim %d:%d -> %e (token %d/%d)\n", p, W(p), SOF(hj), hj & 31, hres, WOF(ct[p]), ct[p] & 31);
       check_dispatch() }
  :: d_step { ph[p] == RUN || ph[p] == RECOMMIT ->
       commit(p, W(p), cj[p], 0);
       printf("MODEL slot %d worker %d: commit %d:%d token %d/%d -> %e\n", p, W(p), SOF(cj[p]), cj[p] & 31, WOF(ct[p]), ct[p] & 31, hres);
       SLOTDONE(p); check_dispatch() }
  :: d_step { ph[p] == RUN && lostreply < LOSTREPLY ->
       lostreply++; commit(p, W(p), cj[p], 0); ph[p] = RECOMMIT;
       printf("MODEL slot %d worker %d: commit %d:%d token %d/%d -> %e, reply lost\n", p, W(p), SOF(cj[p]), cj[p] & 31, WOF(ct[p]), ct[p] & 31, hres);
       check_dispatch() }
  :: d_step { ph[p] == RUN && retries < RETRIES ->
       retries++; commit(p, W(p), cj[p], 1);
       printf("MODEL slot %d worker %d: commit(retry) %d:%d token %d/%d -> %e\n", p, W(p), SOF(cj[p]), cj[p] & 31, WOF(ct[p]), ct[p] & 31, hres);
       SLOTDONE(p); check_dispatch() }
  :: d_step { ph[p] == RUN && deads < DEADS ->
       deads++; commit(p, W(p), cj[p], 2);
       printf("MODEL slot %d worker %d: commit(dead) %d:%d token %d/%d -> %e\n", p, W(p), SOF(cj[p]), cj[p] & 31, WOF(ct[p]), ct[p] & 31, hres);
       SLOTDONE(p); check_dispatch() }
  :: d_step { ph[p] == RUN && releases < RELEASES ->                     /* graceful shutdown */
       releases++; release(W(p), cj[p], ct[p], 1);
       printf("MODEL slot %d worker %d: release %d:%d token %d/%d -> %e\n", p, W(p), SOF(cj[p]), cj[p] & 31, WOF(ct[p]), ct[p] & 31, hres);
       SLOTDONE(p); check_dispatch() }
  od
}

/* Is job x in hand of a slot of group g? (up to 3 slots) */
#define OWNED1(g, x, i) (NSLOT > (i) && ph[(i) % NSLOT] != IDLE && cj[(i) % NSLOT] == (x) && GROUP((i) % NSLOT) == (g))
#define OWNED(g, x) (OWNED1(g, x, 0) || OWNED1(g, x, 1) || OWNED1(g, x, 2))
/* A scan does not pick again an entry whose release changed nothing while its
 * session's holder is unchanged: the repeat would change nothing either, and
 * without this an entry stuck for good would make the scan loop forever
 * instead of reaching an end state that Final checks. */
#define SCAN(g, k) :: d_step { cand[g] == 0 && IF[gw[g]].n > (k) && !OWNED(g, IF[gw[g]].e[k]) &&\
                     !(IF[gw[g]].e[k] == okept[g] && S[SOF(okept[g])].holder == okepth[g]) -> cand[g] = IF[gw[g]].e[k];\
                     printf("MODEL worker %d: orphan scan: %d:%d in flight, no slot has it\n", gw[g], SOF(cand[g]), cand[g] & 31) }

/* A worker's maintenance task: heartbeat and orphan scan. */
proctype Maint(byte g) {
end:
  do
  :: d_step { !hb[gw[g]] -> hb[gw[g]] = 1; reg[gw[g]] = 1;
       printf("MODEL worker %d: heartbeat\n", gw[g]) }
  SCAN(g, 0) SCAN(g, 1) SCAN(g, 2)          /* orphan scan: an entry seen unowned (twice) */
  :: d_step { cand[g] != 0 ->               /* ... released */
       hj = cand[g]; cand[g] = 0;
#ifdef OLD_ORPHAN_HOLDER
       ht = 0; if :: S[SOF(hj)].ex -> ht = S[SOF(hj)].holder :: else fi;
#else
       ht = 0;
#endif
       release(gw[g], hj, ht, 0);
       if
       :: hres == kept && hr == 1 -> okept[g] = hj; okepth[g] = S[SOF(hj)].holder  /* removed and put back */
       :: else -> okept[g] = 0; okepth[g] = 0
       fi;
       printf("MODEL worker %d: orphan release %d:%d token %d/%d -> %e\n", gw[g], SOF(hj), hj & 31, WOF(ht), ht & 31, hres);
       check_dispatch() }
  od
}

/* crash(g): worker process g dies (local state lost; Redis keeps its
 * in-flight list, and its heartbeat until the TTL) and restarts with a new id. */
inline crash(g) {
  hi = 0;
  do
  :: hi < NSLOT -> if :: GROUP(hi) == g -> SLOTDONE(hi) :: else fi; hi++
  :: else -> break
  od;
  cand[g] = 0; okept[g] = 0; okepth[g] = 0; crashes++;
#ifndef SAME_ID
  printf("MODEL worker %d: crash; restarts as worker %d\n", gw[g], nextw);
  /* its heartbeat key expiring later is folded in here: only reap reads a
   * dead worker's heartbeat, and reap is a separate step anyway */
  hb[gw[g]] = 0;
  assert(nextw < NW); gw[g] = nextw; nextw++;
#else
  /* restart with the same --worker-id before the heartbeat key expired */
  printf("MODEL worker %d: crash; restarts with the same id\n", gw[g]);
#ifdef SELF_REAP
  hb[gw[g]] = 0; reap(gw[g]);       /* startup: DEL heartbeat, reap itself */
#endif
#endif
  hb[gw[g]] = 1; reg[gw[g]] = 1
}

#ifdef OLD_REAP_UNREGISTERS
#define REAPABLE(w) (reg[w] && !hb[w])
#else
#define REAPABLE(w) (reg[w] && !hb[w] && IF[w].n > 0)
#endif
#define REAP(w)    :: d_step { REAPABLE(w) -> printf("MODEL reap worker %d (%d in flight)\n", w, IF[w].n); reap(w); check_dispatch() }
#define SUBMIT(s)  :: d_step { submitted < NJ && seq < CAP && (s == 0 || submitted > 0) && !(S[s].ex && S[s].canc) -> submit(s);\
                     printf("MODEL submit %d:%d\n", s, hj & 31); check_dispatch() }
#define CANCEL(s)  :: d_step { cancels < CANCELS && S[s].ex && !S[s].canc -> cancels++; cancel(s);\
                     printf("MODEL cancel session %d\n", s); check_dispatch() }
#define EXPIRE(s)  :: d_step { expires < EXPIRES && S[s].ex -> expires++; wipe(s);\
                     printf("MODEL session %d expires\n", s); check_dispatch() }
#define DLR(s)     :: d_step { S[s].ex && S[s].blk -> dl_retry(s); printf("MODEL dead_letter retry session %d\n", s); check_dispatch() }
#define DLP(s)     :: d_step { S[s].ex && S[s].blk -> dl_purge(s); printf("MODEL dead_letter purge session %d\n", s); check_dispatch() }
#define HBLOST(g)  :: d_step { hbloss < HBLOSS && hb[gw[g]] -> hbloss++; hb[gw[g]] = 0;\
                     printf("MODEL heartbeat of live worker %d expires (paused)\n", gw[g]) }
#define PROMOTE(k) :: d_step { delayed.n > (k) -> printf("MODEL promote %d:%d\n", SOF(delayed.e[k]), delayed.e[k] & 31);\
                     promote(k); check_dispatch() }

/* Clients, operators, any live worker's reaper, timers and faults. */
proctype Env() {
end:
  do
  SUBMIT(0) SUBMIT(1)
  REAP(0) REAP(1) REAP(2) REAP(3)
  PROMOTE(0) PROMOTE(1)
  HBLOST(0) HBLOST(1)
  :: d_step { crashes < CRASHES -> crash(0); check_dispatch() }
  :: d_step { crashes < CRASHES -> crash(1); check_dispatch() }
  CANCEL(0) CANCEL(1)
  EXPIRE(0) EXPIRE(1)
  DLR(0) DLR(1) DLP(0) DLP(1)
  /* no more faults from here on: end states with budget left are checked too */
  :: d_step { crashes < CRASHES || hbloss < HBLOSS || lostfetch < LOSTFETCH || lostreply < LOSTREPLY ||
              releases < RELEASES || retries < RETRIES || deads < DEADS || cancels < CANCELS || expires < EXPIRES ->
       crashes = CRASHES; hbloss = HBLOSS; lostfetch = LOSTFETCH; lostreply = LOSTREPLY; releases = RELEASES;
       retries = RETRIES; deads = DEADS; cancels = CANCELS; expires = EXPIRES;
       printf("MODEL no more faults\n") }
  od
}

/* (d) no loss, no stuck state: when nothing can move any more (every
 * fault spent, every worker alive), every job of a live incarnation has been
 * applied (or dropped by cancel or a dead-letter purge) and every list is empty. */
proctype Final() {
  timeout ->
  d_step {
    printf("MODEL quiescent: checking (d)\n");
#ifdef OLD_VARIANT
    /* an old variant can loop (claim, get reaped, claim again) until the
     * seq bound stops it: such a state is not a real end state */
    if :: seq >= CAP -> goto done :: else fi;
#endif
    assert(seq < CAP);
    hs = 0;
    do
    :: hs < NS -> assert(!S[hs].ex || (S[hs].n == 0 && S[hs].holder == 0)); hs++
    :: else -> break
    od;
    assert(ready.n == 0 && delayed.n == 0);
    hw = 0;
    do :: hw < NW -> assert(IF[hw].n == 0); hw++ :: else -> break od;
done:
    skip
  }
}

init {
  atomic {
    gw[0] = 0; gw[1] = 1; hb[0] = 1; hb[1] = 1; reg[0] = 1; reg[1] = 1;
    hi = 0;
    do :: hi < NSLOT -> run Slot(hi); hi++ :: else -> break od;
    run Maint(0); run Maint(1); run Env(); run Final()
  }
}
