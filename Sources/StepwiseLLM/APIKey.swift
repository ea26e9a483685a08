import Foundation

/// An API key that never prints itself: `description`, `debugDescription` and string
/// interpolation give `***`, so a key cannot reach a log line, an error or an event by accident.
public struct APIKey: Sendable, Hashable, CustomStringConvertible, CustomDebugStringConvertible {
    /// The key itself, for the `Authorization` header only.
    let secret: String

    /// Wraps `secret` (surrounding whitespace and newlines are dropped, as in a key file).
    ///
    /// - Throws: ``LLMError`` (``LLMError/Code/invalidOptions``) when nothing is left, or when the
    ///   key holds characters an HTTP header cannot carry.
    public init(_ secret: String) throws {
        let trimmed = secret.trimmingCharacters(in: .whitespacesAndNewlines)
        guard !trimmed.isEmpty else { throw LLMError(.invalidOptions, "the API key is empty") }
        guard trimmed.unicodeScalars.allSatisfy({ $0.value > 0x20 && $0.value < 0x7f }) else {
            throw LLMError(.invalidOptions, "the API key holds a space, a control or a non-ASCII character")
        }
        self.secret = trimmed
    }

    public var description: String { "***" }
    public var debugDescription: String { "APIKey(***)" }
}
