import Crypto
import Foundation
import StepwiseCore

/// The keys that wrap sessions' data keys: key ids with 256-bit keys, and which one is active.
///
/// Its text form (a file for `--keyring-file`/`STEPWISE_KEYRING_FILE`, or the value of
/// `STEPWISE_KEYRING`) is one JSON object:
///
/// ```json
/// {"active": "2026-12", "keys": {"2026-11": "<base64 of 32 bytes>", "2026-12": "<base64 of 32 bytes>"}}
/// ```
///
/// New data keys are wrapped by the active key; the others still unwrap the data keys of sessions
/// created (or last rewrapped) under them, until `stepwise keys rewrap` moves those to the active key.
public struct Keyring: Sendable {
    /// The key ids and their keys.
    let keys: [String: SymmetricKey]
    /// The id of the key that wraps new data keys.
    public let activeKeyID: String

    /// All key ids, sorted.
    public var keyIDs: [String] { keys.keys.sorted() }

    /// Parses a keyring's text. Errors name what is wrong, never key material.
    ///
    /// - Parameter source: where the text came from, for messages (`--keyring-file /etc/…`).
    /// - Throws: ``StepwiseError`` with code ``StepwiseError/Code/invalidConfiguration``.
    public init(parsing text: String, source: String) throws(StepwiseError) {
        func bad(_ what: String) -> StepwiseError {
            StepwiseError(
                .invalidConfiguration,
                "\(source): \(what) (a keyring is {\"active\": \"<id>\", \"keys\": {\"<id>\": \"<base64 of 32 random bytes>\", …}}; "
                    + "`stepwise keys generate` writes one)")
        }
        let doc: JSONValue
        do { doc = try JSONValue(parsing: text, what: "keyring") } catch { throw bad("not a JSON object") }
        guard let root = doc.objectValue else { throw bad("not a JSON object") }
        if let extra = root.keys.first(where: { $0 != "active" && $0 != "keys" }) { throw bad("unknown field '\(extra.prefix(40))'") }
        guard let entries = root["keys"]?.objectValue, !entries.isEmpty else { throw bad("no \"keys\" object with at least one key") }
        guard let active = root["active"]?.stringValue else { throw bad("no \"active\" key id") }
        var keys: [String: SymmetricKey] = [:]
        for (id, value) in entries {
            guard Self.isValidKeyID(id) else {
                throw bad("key id '\(id.prefix(64))' is invalid: use 1-64 characters from A-Z a-z 0-9 _ - .")
            }
            guard let b64 = value.stringValue, let data = Data(base64Encoded: b64) else {
                throw bad("key '\(id)' is not base64 text")
            }
            guard data.count == 32 else { throw bad("key '\(id)' is \(data.count) bytes: a key is 32 bytes (256 bits)") }
            keys[id] = SymmetricKey(data: data)
        }
        guard keys[active] != nil else { throw bad("the active key '\(active.prefix(64))' is not among the keys") }
        self.keys = keys
        self.activeKeyID = active
    }

    private init(keys: [String: SymmetricKey], active: String) {
        self.keys = keys
        self.activeKeyID = active
    }

    /// Whether `id` may name a key: 1-64 characters from `A-Z a-z 0-9 _ - .` (no `:`, which ends
    /// the key id in a wrapped data key).
    public static func isValidKeyID(_ id: String) -> Bool {
        (1...64).contains(id.utf8.count)
            && id.utf8.allSatisfy { b in
                (b >= 0x30 && b <= 0x39) || (b >= 0x41 && b <= 0x5A) || (b >= 0x61 && b <= 0x7A) || b == 0x5F || b == 0x2D || b == 0x2E
            }
    }

    /// This keyring with a new random key `id`, active when `activate` is set.
    ///
    /// - Throws: ``StepwiseError`` when `id` is invalid or already taken.
    public func adding(id: String, activate: Bool) throws(StepwiseError) -> Keyring {
        guard Self.isValidKeyID(id) else {
            throw StepwiseError(.invalidConfiguration, "key id '\(id.prefix(64))' is invalid: use 1-64 characters from A-Z a-z 0-9 _ - .")
        }
        guard keys[id] == nil else { throw StepwiseError(.invalidConfiguration, "the keyring already has a key '\(id)'") }
        var k = keys
        k[id] = SymmetricKey(size: .bits256)
        return Keyring(keys: k, active: activate ? id : activeKeyID)
    }

    /// A keyring with one new random key `id`, active.
    public static func generated(id: String) throws(StepwiseError) -> Keyring {
        guard isValidKeyID(id) else {
            throw StepwiseError(.invalidConfiguration, "key id '\(id.prefix(64))' is invalid: use 1-64 characters from A-Z a-z 0-9 _ - .")
        }
        return Keyring(keys: [id: SymmetricKey(size: .bits256)], active: id)
    }

    /// This keyring without key `id` (destroying it: whatever only it wraps can no longer be read).
    ///
    /// - Throws: ``StepwiseError`` when there is no such key or it is the active one.
    public func removing(id: String) throws(StepwiseError) -> Keyring {
        guard keys[id] != nil else { throw StepwiseError(.invalidConfiguration, "the keyring has no key '\(id.prefix(64))'") }
        guard id != activeKeyID else {
            throw StepwiseError(.invalidConfiguration, "key '\(id)' is the active key: activate another one first")
        }
        var k = keys
        k[id] = nil
        return Keyring(keys: k, active: activeKeyID)
    }

    /// This keyring with `id` active.
    public func activating(id: String) throws(StepwiseError) -> Keyring {
        guard keys[id] != nil else { throw StepwiseError(.invalidConfiguration, "the keyring has no key '\(id.prefix(64))'") }
        return Keyring(keys: keys, active: id)
    }

    /// The keyring's text form (holds the keys: write it only to a file of mode 0600).
    public var text: String {
        let entries = keyIDs.compactMap { id in
            keys[id].map { key in
                let b64 = key.withUnsafeBytes { Data($0) }.base64EncodedString()
                return "    \(JSONValue.string(id).jsonString): \(JSONValue.string(b64).jsonString)"
            }
        }
        return "{\n  \"active\": \(JSONValue.string(activeKeyID).jsonString),\n  \"keys\": {\n" + entries.joined(separator: ",\n")
            + "\n  }\n}\n"
    }
}
