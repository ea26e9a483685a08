import StepwiseRedis

/// The Lua scripts that make every state change of the protocol atomic, one `.lua` file each in
/// `Sources/StepwiseCore/Lua/` (compiled into the binary). Each file begins with its KEYS/ARGV
/// contract; ``ScriptCalls`` is the one place in Swift that builds each script's arguments.
///
/// Session keys are derived inside the scripts from the namespace prefix and the job id
/// (`<session>:<number>`), because a worker learns the session only from the job it popped. So the
/// scripts touch both pool-wide and per-session keys: they run on a single Redis (or a primary
/// with replicas), not across Cluster slots.
enum Scripts {
    /// Shared helpers (`prelude.lua`), put right after each script's shebang line.
    static let prelude = String(decoding: PackageResources.prelude_lua, as: UTF8.self)

    static let submit = load("submit", PackageResources.submit_lua)
    static let claim = load("claim", PackageResources.claim_lua)
    static let commit = load("commit", PackageResources.commit_lua)
    static let release = load("release", PackageResources.release_lua)
    static let reap = load("reap", PackageResources.reap_lua)
    static let heartbeat = load("heartbeat", PackageResources.heartbeat_lua)
    static let progress = load("progress", PackageResources.progress_lua)
    static let promote = load("promote", PackageResources.promote_lua)
    static let cancel = load("cancel", PackageResources.cancel_lua)
    static let touch = load("touch", PackageResources.touch_lua)
    static let deadLetter = load("dead_letter", PackageResources.dead_letter_lua)
    static let sweep = load("sweep", PackageResources.sweep_lua)
    static let compact = load("compact", PackageResources.compact_lua)
    static let forget = load("forget", PackageResources.forget_lua)
    static let rewrap = load("rewrap", PackageResources.rewrap_lua)

    /// Every script, for tests and `SCRIPT LOAD` checks.
    static let all: [RedisScript] = [
        submit, claim, commit, release, reap, heartbeat, progress, promote, cancel, touch, deadLetter, sweep, compact, forget,
        rewrap,
    ]

    /// The script's shebang line (Redis 7 flags: without `allow-oom`, a script is refused as a
    /// whole while Redis is out of memory), then the prelude, then the script's body.
    static func load(_ name: String, _ bytes: [UInt8]) -> RedisScript {
        let text = String(decoding: bytes, as: UTF8.self)
        let lines = text.split(separator: "\n", maxSplits: 1, omittingEmptySubsequences: false)
        let shebang = lines.first.map(String.init) ?? ""
        let body = lines.count > 1 ? String(lines[1]) : ""
        guard shebang.hasPrefix("#!lua") else {
            // Every file starts with one; a file without it still runs, as a legacy script.
            return RedisScript(name: name, source: prelude + "\n" + text)
        }
        return RedisScript(name: name, source: shebang + "\n" + prelude + "\n" + body)
    }
}
