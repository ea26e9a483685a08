/// The place a sealed value belongs to: part of its associated data, so a ciphertext moved to
/// another field (or another session) does not open.
public struct SealedField: Sendable, Hashable, CustomStringConvertible {
    /// The field's name as bound into the associated data.
    public let name: String

    public init(_ name: String) { self.name = name }

    /// The session hash's `state`.
    public static let state = SealedField("state")
    /// The session hash's `options`.
    public static let options = SealedField("options")
    /// A pending job's input (jobs hash, field `N`).
    public static let input = SealedField("input")
    /// The session hash's `dead_error` (a dead letter's last error).
    public static let deadError = SealedField("dead_error")

    /// A field of an event: `data`, `message` or `error` of an event of type `type`.
    public static func event(_ type: String, _ field: String) -> SealedField { SealedField("event:" + type + ":" + field) }

    public var description: String { name }
}

/// One session's data key: seals and opens that session's payloads with AES-256-GCM.
///
/// A cipher is bound to its session: the associated data of every value is the session id and
/// the ``SealedField``, so a value sealed for one session or field does not open in another.
public protocol SessionCipher: Sendable {
    /// The session this key belongs to.
    var session: SessionID { get }
    /// The data key wrapped by a keyring key, as stored in the session hash (`dk`): `<key id>:<sealed key>`.
    var wrappedKey: String { get }
    /// Seals `plaintext` for `field`: the result starts with ``SealedText/prefix``. An empty
    /// string stays empty (it says only that there is nothing).
    func seal(_ plaintext: String, as field: SealedField) throws -> String
    /// Opens a value sealed for `field`.
    ///
    /// - Throws: ``StepwiseError`` ``StepwiseError/Code/sealedDataInvalid`` when it does not open.
    func open(_ sealed: String, as field: SealedField) throws -> String
}

/// A keyring: makes and unwraps per-session data keys. The engine uses it through this protocol
/// only; `StepwiseEncryption` implements it with swift-crypto, so the core links no crypto.
///
/// Requirements' implementations may cache unwrapped keys (bounded), since every step of a
/// session opens the same key.
public protocol SessionSealer: Sendable {
    /// The id of the key that wraps new data keys.
    var activeKeyID: String { get }
    /// A new random data key for `session`, wrapped by the active key.
    func makeKey(for session: SessionID) throws -> any SessionCipher
    /// The cipher of a stored wrapped key.
    ///
    /// - Throws: ``StepwiseError`` ``StepwiseError/Code/keyUnavailable`` when the keyring lacks the
    ///   wrapping key, ``StepwiseError/Code/sealedDataInvalid`` when the wrapped key does not open.
    func cipher(for session: SessionID, wrappedKey: String) throws -> any SessionCipher
    /// The same data key wrapped by the active key, or `nil` when it already is.
    func rewrapped(_ wrappedKey: String, for session: SessionID) throws -> String?
}

/// How sealed values look in Redis: ``prefix`` then base64 of nonce, ciphertext and tag.
public enum SealedText {
    /// Marks a sealed value. No JSON document starts with it.
    public static let prefix = "$sw1$"

    public static func isSealed(_ text: String) -> Bool { text.hasPrefix(prefix) }

    /// The key id a wrapped data key names (the text before its first `:`).
    public static func keyID(ofWrapped wrapped: String) -> String {
        String(wrapped.prefix(while: { $0 != ":" }))
    }

    /// The cipher for a session's stored wrapped key: `nil` for a session that is not encrypted.
    ///
    /// - Throws: ``StepwiseError`` ``StepwiseError/Code/keyUnavailable`` when the session is
    ///   encrypted and there is no keyring, or the keyring lacks its key.
    public static func cipher(_ sealer: (any SessionSealer)?, session: SessionID, wrappedKey: String?) throws -> (any SessionCipher)? {
        guard let wrappedKey, !wrappedKey.isEmpty else { return nil }
        guard let sealer else {
            throw StepwiseError(
                .keyUnavailable,
                "session \(session) is encrypted (key '\(keyID(ofWrapped: wrappedKey))'): configure its keyring with --keyring-file, "
                    + "STEPWISE_KEYRING_FILE or STEPWISE_KEYRING")
        }
        return try sealer.cipher(for: session, wrappedKey: wrappedKey)
    }

    /// `value` opened when it is sealed, as it is otherwise (data written without encryption).
    ///
    /// - Throws: ``StepwiseError`` when it is sealed and `cipher` is `nil` or it does not open.
    public static func open(_ value: String, as field: SealedField, with cipher: (any SessionCipher)?, session: String) throws
        -> String
    {
        guard isSealed(value) else { return value }
        guard let cipher else {
            throw StepwiseError(
                .keyUnavailable,
                "session \(session) holds encrypted data but has no data key (it was forgotten or its key removed)")
        }
        return try cipher.open(value, as: field)
    }

    /// Fields of an event that may be sealed.
    public static let eventFields = ["data", "message", "error"]

    /// Whether any of the events has a sealed field.
    public static func anySealed(_ events: [StepEvent]) -> Bool {
        events.contains { e in eventFields.contains { e.fields[$0].map(isSealed) ?? false } }
    }
}

extension StepEvent {
    /// This event with its sealed fields (`data`, `message`, `error`) opened.
    public func opened(with cipher: (any SessionCipher)?) throws -> StepEvent {
        var e = self
        for f in SealedText.eventFields {
            if let v = e.fields[f], SealedText.isSealed(v) {
                e.fields[f] = try SealedText.open(v, as: .event(type, f), with: cipher, session: session)
            }
        }
        return e
    }
}
