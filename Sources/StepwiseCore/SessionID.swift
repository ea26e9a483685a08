/// A validated session id: 1 to 64 characters from `[A-Za-z0-9_-]`.
///
/// Validation happens before any Redis key is built, so an id can never inject a hash tag
/// (`{`, `}`), a glob (`*`), a separator (`:`) or control characters into a key.
public struct SessionID: Sendable, Hashable, CustomStringConvertible {
    /// The id text.
    public let rawValue: String

    /// Validates an id.
    ///
    /// - Throws: ``StepwiseError`` with code ``StepwiseError/Code/invalidSessionID`` explaining the rule.
    public init(_ rawValue: String) throws(StepwiseError) {
        guard Self.isValid(rawValue) else {
            let shown = rawValue.count > 40 ? String(rawValue.prefix(40)) + "…" : rawValue
            let printable = shown.unicodeScalars.map { $0.properties.generalCategory == .control ? "?" : String($0) }
                .joined()
            throw StepwiseError(
                .invalidSessionID,
                "invalid session id '\(printable)' (\(rawValue.utf8.count) bytes): use 1-64 characters from A-Z a-z 0-9 _ -"
            )
        }
        self.rawValue = rawValue
    }

    /// Whether `text` is a valid session id.
    public static func isValid(_ text: String) -> Bool {
        let bytes = text.utf8
        guard (1...64).contains(bytes.count) else { return false }
        return bytes.allSatisfy { b in
            (b >= 0x30 && b <= 0x39) || (b >= 0x41 && b <= 0x5A) || (b >= 0x61 && b <= 0x7A) || b == 0x5F || b == 0x2D
        }
    }

    public var description: String { rawValue }
}
