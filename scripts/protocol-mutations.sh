#!/usr/bin/env bash
# Puts each old protocol bug back into the Lua scripts, one at a time, and checks that the race
# test written for it fails; then restores the script. Proves the race tests can see the bugs
# they guard against. Usage: scripts/protocol-mutations.sh (needs what `make test` needs).
set -euo pipefail
cd "$(dirname "$0")/.."
lua=Sources/StepwiseCore/Lua
backup=$(mktemp -d)
cp "$lua"/*.lua "$backup"/
restore() { cp "$backup"/*.lua "$lua"/; rm -rf "$backup"; }
trap restore EXIT

# name | file | python expression turning the file text s into the buggy text | test filter
mutations=(
  "claim not fenced (no LREM check, no live-holder check)|prelude.lua|s.replace(\"if not moved and redis.call('LREM', inflight, 0, jid) == 0 then\", \"if false then\").replace(\"if s[9] ~= '' then\\n    -- Held\", \"if false then\\n    -- Held\")|aStalledWorkersLateClaim"
  "fencing tokens repeat (worker/attempt)|prelude.lua|s.replace(\"local holder = worker .. '/' .. next_seq(P)\", \"local holder = worker .. '/' .. attempt\")|fencingTokensNeverRepeat"
  "job ids repeat across incarnations (per-session counter)|submit.lua|s.replace(\"local seq = next_seq(P)\", \"local seq = redis.call('HINCRBY', k.session, 'jseq', 1)\")|anOldIncarnationsJob"
  "orphan release through another worker's hold|release.lua|s.replace(\"else mine = s[1] == '' or\", \"else mine = true or\")|anOrphanReleaseNever"
  "progress not fenced (plain XADD)|progress.lua|s.replace(\"if s[1] ~= holder then\", \"if false then\")|lateProgressChangesNothing"
  "a created key without the session's expiry|prelude.lua|s.replace(\"if redis.call('PTTL', key) == -1 then redis.call('PEXPIREAT', key, exp) end\", \"\")|keysCreatedMidSession"
  "release revives a dead letter|release.lua|s.replace(\"if (not s[1]) or s[4] or\", \"if (not s[1]) or\")|releaseNeverRevives"
  "a stale commit removes a newer claim's in-flight entry|commit.lua|s.replace(\"if head ~= jid or theirs then redis.call\", \"if true then redis.call\")|aStaleCallNeverRemovesTheEntry"
  "a claim after compaction leaves the new stream without expiry|prelude.lua|s.replace(\"if s[5] == '0' or s[10] then seal\", \"if s[5] == '0' then seal\")|anIdleSessionsStreamIsRemoved"
  "a commit drops the submit time its claim read|commit.lua|s.replace(\"j = {ARGV[19], ARGV[20], ARGV[21]}\", \"j = {ARGV[19], '', ARGV[21]}\")|aCommitCarriesWhatItsClaimRead"
  "dead_letter mutates before it validates|dead_letter.lua|s.replace(\"local action = oneof_arg(ARGV[3], 'action', {'retry', 'purge'})\", \"redis.call('HDEL', P .. 's:{x}', 'blocked')\\nlocal action = oneof_arg(ARGV[3], 'action', {'retry', 'purge'})\")|aBadArgumentIsATypedError"
)
failed=0
for m in "${mutations[@]}"; do
  IFS='|' read -r name file expr filter <<<"$m"
  cp "$backup/$file" "$lua/$file"
  python3 - "$lua/$file" "$expr" <<'PY'
import sys
path, expr = sys.argv[1], sys.argv[2]
s = open(path).read()
t = eval(expr, {"s": s})
if t == s:
    sys.exit("mutation did not apply to " + path)
open(path, "w").write(t)
PY
  if scripts/test.sh --filter "$filter" >/tmp/mutation.log 2>&1; then
    echo "NOT CAUGHT: $name (test $filter passed with the bug in)"; failed=1
  else
    echo "caught: $name (test $filter fails)"
  fi
  cp "$backup/$file" "$lua/$file"
done
exit $failed
