import ArgumentParser
import Foundation
import StepwiseCore
import StepwiseEncryption
import StepwiseRedis

/// `stepwise keys …`: the encryption keyring (docs/SECURITY.md, "Rotation and shredding").
struct KeysCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "keys", abstract: "Manage the encryption keyring: generate, remove and list keys, rewrap sessions.",
        subcommands: [Generate.self, Remove.self, List.self, Rewrap.self])

    /// Writes a keyring file atomically with mode 0600 (it holds keys).
    static func write(_ keyring: Keyring, to path: String) throws {
        let url = URL(fileURLWithPath: path)
        let temp = url.deletingLastPathComponent().appendingPathComponent(".\(url.lastPathComponent).\(getpid()).tmp")
        guard FileManager.default.createFile(atPath: temp.path, contents: Data(keyring.text.utf8), attributes: [.posixPermissions: 0o600])
        else { throw ValidationError("cannot write \(temp.path): check that its directory exists and is writable") }
        guard rename(temp.path, path) == 0 else {
            let reason = String(cString: strerror(errno))
            unlink(temp.path)
            throw ValidationError("cannot replace \(path): \(reason)")
        }
    }

    /// Reads a keyring file for editing.
    static func read(_ path: String) throws -> Keyring {
        guard let data = FileManager.default.contents(atPath: path), let text = String(data: data, encoding: .utf8) else {
            throw ValidationError("--file \(path) is not a readable UTF-8 file")
        }
        do { return try Keyring(parsing: text, source: "--file \(path)") } catch { throw ValidationError(error.message) }
    }

    struct Generate: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Add a new random 256-bit key to a keyring file (made, mode 0600, when missing), or print a new keyring.",
            discussion: """
                With --file, the key is added to that keyring and becomes the active one (new sessions get data keys \
                wrapped by it; running sessions keep theirs until `stepwise keys rewrap`). Without --file, a new keyring \
                holding just this key is printed, e.g. for STEPWISE_KEYRING.
                """)

        @Option(help: "The new key's id: 1-64 characters from A-Z a-z 0-9 _ - . (e.g. a period: 2026-12).")
        var id: String

        @Option(help: "The keyring file to add the key to.")
        var file: String?

        @Flag(help: "Add the key without making it active.")
        var noActivate = false

        func validate() throws {
            guard Keyring.isValidKeyID(id) else { throw ValidationError("--id must be 1-64 characters from A-Z a-z 0-9 _ - .") }
        }

        func run() throws {
            guard let file else {
                try output(String(try Keyring.generated(id: id).text.dropLast()))
                return
            }
            let keyring: Keyring
            if FileManager.default.fileExists(atPath: file) {
                do { keyring = try KeysCommand.read(file).adding(id: id, activate: !noActivate) } catch let e as StepwiseError {
                    throw ValidationError(e.message)
                }
            } else {
                keyring = try Keyring.generated(id: id)
            }
            try KeysCommand.write(keyring, to: file)
            try output("key \(id) added to \(file); active key: \(keyring.activeKeyID)")
        }
    }

    struct Remove: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Destroy a key: remove it from a keyring file.",
            discussion: """
                Run `stepwise keys rewrap` with the full keyring first: a session still under this key can no longer be \
                read, and neither can any backup whose sessions were wrapped by it (that is how shredding reaches backups).
                """)

        @Option(help: "The id of the key to remove (not the active one).")
        var id: String

        @Option(help: "The keyring file.")
        var file: String

        func run() throws {
            let keyring: Keyring
            do { keyring = try KeysCommand.read(file).removing(id: id) } catch let e as StepwiseError { throw ValidationError(e.message) }
            try KeysCommand.write(keyring, to: file)
            try output("key \(id) removed from \(file); keys left: \(keyring.keyIDs.joined(separator: ", "))")
        }
    }

    struct List: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "List the configured keyring's key ids (never the keys).")

        @OptionGroup var connection: ConnectionOptions

        func run() throws {
            guard let keyring = try connection.loadKeyring() else {
                throw ValidationError("no keyring: pass --keyring-file, or set STEPWISE_KEYRING_FILE or STEPWISE_KEYRING")
            }
            for id in keyring.keyIDs { try output(id + (id == keyring.activeKeyID ? " (active)" : "")) }
        }
    }

    struct Rewrap: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Re-wrap every session's data key under the keyring's active key (payloads untouched).",
            discussion: """
                Needs the keyring with the old keys and the new active one, and a Redis user that may SCAN and run \
                scripts (admin). Resumable: run it again after an interruption; sessions already under the active key \
                are skipped. Exits 1 when some session's key is not in the keyring.
                """)

        @OptionGroup var connection: ConnectionOptions

        func run() async throws {
            guard let sealer = connection.makeSealer() else {
                throw ValidationError("no keyring: pass --keyring-file, or set STEPWISE_KEYRING_FILE or STEPWISE_KEYRING")
            }
            let logger = connection.makeLogger()
            let conn = try await connection.connect(name: "stepwise:rewrap", logger: logger)
            let report = try await reportingFailures {
                try await KeyRotation(connection: conn, keys: connection.keys, sealer: sealer).rewrapAll()
            }
            try output(
                "rewrapped \(report.rewrapped) session(s) to key \(sealer.activeKeyID); \(report.alreadyActive) already under it, "
                    + "\(report.plain) not encrypted, \(report.changedMeanwhile) changed meanwhile (left as they are)")
            if report.unreadableCount > 0 {
                printError(
                    "\(report.unreadableCount) session(s) are under keys this keyring lacks and were left as they are: "
                        + report.unreadable.joined(separator: ", ") + (report.unreadableCount > report.unreadable.count ? ", …" : ""))
                throw ExitCode.failure
            }
        }
    }
}

struct ForgetCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "forget",
        abstract: "Crypto-shred a session: destroy its data key and delete all of its data.",
        discussion: """
            An encrypted session's sealed data, wherever a copy remains (the append-only file, a replica), can no longer \
            be opened. Backups taken before hold the wrapped key until the keyring key that wrapped it is retired \
            (docs/SECURITY.md). A session stored in plain text is deleted, but its copies stay readable. Skips the \
            owner check (an operator's command).
            """)

    @OptionGroup var connection: ConnectionOptions

    @Argument(help: "The session id.")
    var session: String

    @Flag(help: "Print one JSON object.")
    var json = false

    @Flag(
        help: ArgumentHelp(
            "Then start an append-only file rewrite (BGREWRITEAOF), so the AOF no longer holds the session's wrapped data key either (needs the admin user of deploy/users.acl)."
        ))
    var rewriteAof = false

    func validate() throws { _ = try parseSessionID(session, flag: "SESSION") }

    func run() async throws {
        let logger = connection.makeLogger()
        let conn = try await connection.connect(name: "stepwise:forget", logger: logger)
        let id = try parseSessionID(session, flag: "SESSION")
        let receipt = try await reportingFailures {
            try await Dispatcher(connection: conn, keys: connection.keys, agents: .init()).forget(id, asOperator: true)
        }
        if receipt != nil && rewriteAof {
            // `BGREWRITEAOF`: the rewritten file holds only what the dataset holds now; Redis
            // deletes the old files once it is done. See https://redis.io/docs/latest/commands/bgrewriteaof/.
            _ = try await reportingFailures { try await conn.send(["BGREWRITEAOF"]).throwingServerError() }
        }
        if json {
            try output(
                JSONValue.object([
                    "session": .string(id.rawValue), "forgotten": .bool(receipt != nil), "encrypted": .bool(receipt?.encrypted ?? false),
                ]).jsonString)
        }
        guard let receipt else {
            if !json { printError("session \(id) does not exist (or expired)") }
            throw ExitCode.failure
        }
        guard !json else { return }
        if receipt.encrypted {
            try output("forgot session \(id): its data key is destroyed, so no remaining copy of its data can be opened")
        } else {
            try output(
                "deleted session \(id): it was not encrypted, so copies in the append-only file, replicas and backups stay readable")
        }
    }
}
