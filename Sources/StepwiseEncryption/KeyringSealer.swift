import Crypto
import Foundation
import StepwiseCore
import Synchronization

/// ``SessionSealer`` with a ``Keyring`` and AES-256-GCM (swift-crypto).
///
/// - A data key is 32 random bytes, wrapped with AES-GCM by a keyring key; the associated data
///   binds it to its key id and session id. Stored as `<key id>:<base64 of nonce, ciphertext, tag>`.
/// - A value is sealed with AES-GCM under its session's data key, a random 96-bit nonce per value,
///   and the associated data `stepwise/v1`, the session id and the ``SealedField``. Stored as
///   ``SealedText/prefix`` followed by base64 of nonce, ciphertext and tag (28 bytes more than
///   the plaintext, before base64).
/// - Unwrapped data keys are cached, at most ``cacheLimit`` of them (least recently used go first),
///   so a session's steps unwrap its key once per process.
public final class KeyringSealer: SessionSealer {
    public let keyring: Keyring
    /// How many unwrapped data keys are kept in memory.
    public let cacheLimit: Int
    private let cache: Mutex<Cache>

    struct CacheEntry {
        let session: SessionID
        let key: SymmetricKey
        var used: UInt64
    }

    struct Cache: ~Copyable {
        var entries: [String: CacheEntry] = [:]
        var clock: UInt64 = 0
    }

    public init(keyring: Keyring, cacheLimit: Int = 10_000) {
        self.keyring = keyring
        self.cacheLimit = max(1, cacheLimit)
        self.cache = Mutex(Cache())
    }

    public var activeKeyID: String { keyring.activeKeyID }

    public func makeKey(for session: SessionID) throws -> any SessionCipher {
        let dataKey = SymmetricKey(size: .bits256)
        let wrapped = try wrap(dataKey, for: session, under: keyring.activeKeyID)
        remember(wrapped, session: session, key: dataKey)
        return Cipher(session: session, wrappedKey: wrapped, key: dataKey)
    }

    public func cipher(for session: SessionID, wrappedKey: String) throws -> any SessionCipher {
        if let key = cached(wrappedKey, session: session) { return Cipher(session: session, wrappedKey: wrappedKey, key: key) }
        let key = try unwrap(wrappedKey, for: session)
        remember(wrappedKey, session: session, key: key)
        return Cipher(session: session, wrappedKey: wrappedKey, key: key)
    }

    public func rewrapped(_ wrappedKey: String, for session: SessionID) throws -> String? {
        guard SealedText.keyID(ofWrapped: wrappedKey) != keyring.activeKeyID else { return nil }
        return try wrap(try unwrap(wrappedKey, for: session), for: session, under: keyring.activeKeyID)
    }

    /// Number of unwrapped data keys in memory (for tests).
    public var cachedKeys: Int { cache.withLock { $0.entries.count } }

    // MARK: wrapping

    private static func wrapAD(keyID: String, session: SessionID) -> Data {
        Data("stepwise/dk/v1\u{0}\(keyID)\u{0}\(session.rawValue)".utf8)
    }

    private func wrap(_ dataKey: SymmetricKey, for session: SessionID, under keyID: String) throws -> String {
        guard let kek = keyring.keys[keyID] else {
            throw StepwiseError(.keyUnavailable, "the keyring has no key '\(keyID)'")
        }
        let box = try dataKey.withUnsafeBytes { raw in
            try AES.GCM.seal(Data(raw), using: kek, authenticating: Self.wrapAD(keyID: keyID, session: session))
        }
        guard let combined = box.combined else { throw StepwiseError(.unexpectedReply, "AES-GCM gave no combined box") }
        return keyID + ":" + combined.base64EncodedString()
    }

    private func unwrap(_ wrapped: String, for session: SessionID) throws -> SymmetricKey {
        let keyID = SealedText.keyID(ofWrapped: wrapped)
        guard let kek = keyring.keys[keyID] else {
            throw StepwiseError(
                .keyUnavailable,
                "the data key of session \(session) is wrapped by key '\(keyID.prefix(64))', which is not in the keyring (it has "
                    + "\(keyring.keyIDs.joined(separator: ", "))): add that key back, or the session's data cannot be read")
        }
        let body = wrapped.dropFirst(keyID.count + 1)
        do {
            guard let data = Data(base64Encoded: String(body)) else { throw CryptoKitError.incorrectParameterSize }
            let plain = try AES.GCM.open(
                try AES.GCM.SealedBox(combined: data), using: kek, authenticating: Self.wrapAD(keyID: keyID, session: session))
            guard plain.count == 32 else { throw CryptoKitError.incorrectKeySize }
            return SymmetricKey(data: plain)
        } catch {
            throw StepwiseError(
                .sealedDataInvalid,
                "the data key of session \(session) does not open with key '\(keyID)': it was altered or belongs to another session")
        }
    }

    // MARK: cache

    // Keyed by the wrapped key alone (one hash per lookup); the entry keeps its session, since
    // a wrapped key opens only for the session it was wrapped for.
    private func cached(_ wrapped: String, session: SessionID) -> SymmetricKey? {
        cache.withLock { c in
            guard let i = c.entries.index(forKey: wrapped), c.entries.values[i].session == session else { return nil }
            c.clock += 1
            c.entries.values[i].used = c.clock
            return c.entries.values[i].key
        }
    }

    private func remember(_ wrapped: String, session: SessionID, key: SymmetricKey) {
        let limit = cacheLimit
        cache.withLock { c in
            c.clock += 1
            c.entries[wrapped] = CacheEntry(session: session, key: key, used: c.clock)
            guard c.entries.count > limit else { return }
            // Evict the least recently used eighth at once, so eviction stays rare.
            let drop = max(1, c.entries.count - limit + limit / 8)
            for old in c.entries.sorted(by: { $0.value.used < $1.value.used }).prefix(drop) { c.entries[old.key] = nil }
        }
    }

    /// One session's data key.
    struct Cipher: SessionCipher {
        let session: SessionID
        let wrappedKey: String
        let key: SymmetricKey
        /// `stepwise/v1`, NUL, the session id, NUL: each value's associated data before its field.
        private let adPrefix: [UInt8]

        init(session: SessionID, wrappedKey: String, key: SymmetricKey) {
            self.session = session
            self.wrappedKey = wrappedKey
            self.key = key
            self.adPrefix = Array("stepwise/v1\u{0}\(session.rawValue)\u{0}".utf8)
        }

        private func ad(_ field: SealedField) -> [UInt8] { adPrefix + field.name.utf8 }

        func seal(_ plaintext: String, as field: SealedField) throws -> String {
            if plaintext.isEmpty { return "" }
            let box = try AES.GCM.seal(Array(plaintext.utf8), using: key, authenticating: ad(field))
            guard let combined = box.combined else { throw StepwiseError(.unexpectedReply, "AES-GCM gave no combined box") }
            return SealedText.prefix + combined.base64EncodedString()
        }

        func open(_ sealed: String, as field: SealedField) throws -> String {
            guard SealedText.isSealed(sealed) else { return sealed }
            do {
                guard let data = Data(base64Encoded: Data(sealed.utf8.dropFirst(SealedText.prefix.utf8.count))) else {
                    throw CryptoKitError.incorrectParameterSize
                }
                let plain = try AES.GCM.open(try AES.GCM.SealedBox(combined: data), using: key, authenticating: ad(field))
                return String(decoding: plain, as: UTF8.self)
            } catch {
                throw StepwiseError(
                    .sealedDataInvalid,
                    "the \(field) of session \(session) does not open with its data key: it was altered, or moved from another "
                        + "session or field")
            }
        }
    }
}
