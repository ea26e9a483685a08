import Crypto
import Foundation
import StepwiseCore

/// Issues and verifies the gateway's bearer tokens and stream tickets.
///
/// Both are JSON Web Tokens signed with HMAC-SHA256 (`HS256`) under one secret key. A token names
/// its owner (`sub`), carries an id (`jti`) that revocation refers to, and expires (`exp`). A
/// ticket (`typ: "ticket"`) is short-lived and good for the event stream of one session only
/// (`sid`); it carries its token's id, so revoking a token also revokes its tickets.
///
/// - Important: the key never appears in a flag value, a log line or an error message; neither do
///   tokens and tickets.
public struct TokenAuthority: Sendable {
    /// What a verified token or ticket says.
    public struct Claims: Sendable, Hashable {
        /// The owner the token was issued to.
        public var owner: String
        /// The token's id (for a ticket: the id of the token it was issued with).
        public var tokenID: String
        /// Expiry, seconds since 1970.
        public var expiresAt: Int64
        /// For a ticket: the one session whose stream it opens.
        public var session: String?
    }

    /// Why a token was refused.
    public enum Failure: Error, Sendable, Hashable {
        /// Not a well-formed token, or a bad signature.
        case invalid
        /// Well-formed and signed, but past its expiry.
        case expired
        /// A token where a ticket was expected, or the other way round.
        case wrongKind
    }

    private let key: SymmetricKey

    /// Creates an authority from the secret key.
    ///
    /// - Throws: ``StepwiseError`` with ``StepwiseError/Code/invalidConfiguration`` for a key under
    ///   32 bytes.
    public init(secret: [UInt8]) throws {
        guard secret.count >= 32 else {
            throw StepwiseError(.invalidConfiguration, "the token key must be at least 32 bytes")
        }
        key = SymmetricKey(data: secret)
    }

    /// Whether `owner` is an acceptable owner name: 1-100 characters from A-Z a-z 0-9 _ . @ -.
    public static func isValidOwner(_ owner: String) -> Bool {
        !owner.isEmpty && owner.utf8.count <= 100
            && owner.utf8.allSatisfy { c in
                (c >= 48 && c <= 57) || (c >= 65 && c <= 90) || (c >= 97 && c <= 122) || c == 95 || c == 46 || c == 64 || c == 45
            }
    }

    /// Issues a bearer token for `owner`, valid for `ttl`.
    ///
    /// - Returns: the token and its claims (the id is what ``GatewayStore/revoke(tokenID:until:)`` takes).
    public func issue(owner: String, ttl: Duration, now: Date = Date()) throws -> (token: String, claims: Claims) {
        guard Self.isValidOwner(owner) else {
            throw StepwiseError(.invalidArgument, "owner must be 1-100 characters from A-Z a-z 0-9 _ . @ -")
        }
        let iat = Int64(now.timeIntervalSince1970)
        let exp = iat + max(1, ttl.components.seconds)
        let jti = Self.randomID()
        let payload: JSONValue = [
            "sub": .string(owner), "jti": .string(jti), "iat": .int(iat), "exp": .int(exp), "typ": "access",
        ]
        return (sign(payload), Claims(owner: owner, tokenID: jti, expiresAt: exp, session: nil))
    }

    /// Issues a ticket that opens the event stream of `session` for the holder of `token`.
    public func ticket(for token: Claims, session: SessionID, ttl: Duration, now: Date = Date()) -> (ticket: String, expiresAt: Int64) {
        let exp = min(token.expiresAt, Int64(now.timeIntervalSince1970) + max(1, ttl.components.seconds))
        let payload: JSONValue = [
            "sub": .string(token.owner), "jti": .string(token.tokenID), "exp": .int(exp), "typ": "ticket",
            "sid": .string(session.rawValue),
        ]
        return (sign(payload), exp)
    }

    /// Verifies a bearer token (not a ticket).
    public func verifyToken(_ token: String, now: Date = Date()) throws(Failure) -> Claims {
        let claims = try verify(token, now: now)
        guard claims.session == nil else { throw .wrongKind }
        return claims
    }

    /// Verifies a ticket for `session`.
    public func verifyTicket(_ ticket: String, session: SessionID, now: Date = Date()) throws(Failure) -> Claims {
        let claims = try verify(ticket, now: now)
        guard let sid = claims.session else { throw .wrongKind }
        guard sid == session.rawValue else { throw .invalid }
        return claims
    }

    private func verify(_ token: String, now: Date) throws(Failure) -> Claims {
        guard token.utf8.count <= 4096 else { throw .invalid }
        let parts = token.split(separator: ".", omittingEmptySubsequences: false)
        guard parts.count == 3, parts[0] == Self.header,
            let signature = Self.base64URLDecode(parts[2]),
            HMAC<SHA256>.isValidAuthenticationCode(signature, authenticating: Array("\(parts[0]).\(parts[1])".utf8), using: key),
            let body = Self.base64URLDecode(parts[1]),
            let payload = try? JSONValue(parsing: body),
            let owner = payload["sub"]?.stringValue, let jti = payload["jti"]?.stringValue,
            let exp = payload["exp"]?.intValue, let typ = payload["typ"]?.stringValue
        else { throw .invalid }
        guard Int64(exp) > Int64(now.timeIntervalSince1970) else { throw .expired }
        switch typ {
        case "access": return Claims(owner: owner, tokenID: jti, expiresAt: Int64(exp), session: nil)
        case "ticket":
            guard let sid = payload["sid"]?.stringValue else { throw .invalid }
            return Claims(owner: owner, tokenID: jti, expiresAt: Int64(exp), session: sid)
        default: throw .invalid
        }
    }

    /// Reads a token's claims after checking its signature, even when it has expired (for revocation).
    public func inspect(_ token: String) throws(Failure) -> Claims {
        try verify(token, now: Date(timeIntervalSince1970: 0))
    }

    private static let header = base64URLEncode(Array(#"{"alg":"HS256","typ":"JWT"}"#.utf8))

    private func sign(_ payload: JSONValue) -> String {
        let input = Self.header + "." + Self.base64URLEncode(Array(payload.jsonString.utf8))
        let mac = HMAC<SHA256>.authenticationCode(for: Array(input.utf8), using: key)
        return input + "." + Self.base64URLEncode(Array(mac))
    }

    static func randomID() -> String {
        var g = SystemRandomNumberGenerator()
        return (0..<16).map { _ in String(format: "%02x", UInt8.random(in: 0...255, using: &g)) }.joined()
    }

    static func base64URLEncode(_ bytes: [UInt8]) -> String {
        Data(bytes).base64EncodedString().replacingOccurrences(of: "+", with: "-").replacingOccurrences(of: "/", with: "_")
            .replacingOccurrences(of: "=", with: "")
    }

    static func base64URLDecode(_ text: Substring) -> [UInt8]? {
        guard text.utf8.allSatisfy({ c in (c >= 48 && c <= 57) || (c >= 65 && c <= 90) || (c >= 97 && c <= 122) || c == 45 || c == 95 })
        else { return nil }
        var s = text.replacingOccurrences(of: "-", with: "+").replacingOccurrences(of: "_", with: "/")
        while s.utf8.count % 4 != 0 { s += "=" }
        return Data(base64Encoded: s).map { Array($0) }
    }
}
