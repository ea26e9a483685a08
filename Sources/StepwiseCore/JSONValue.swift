import Foundation

/// A JSON document: the agent state, step inputs, options and event payloads.
///
/// Numbers are exact: a ``JSONNumber`` keeps the text it was written with, so
/// `JSONValue(parsing:)` followed by ``jsonString`` gives back every number byte for byte (64-bit
/// and larger integers, decimals as written, `-0`, exponents). The engine reads and writes all
/// documents this way, never through Foundation's coders. The `Codable` conformance is for
/// callers' own use and is only as exact as Foundation allows (see ``init(from:)``).
public enum JSONValue: Sendable, Hashable, Codable, CustomStringConvertible {
    case null
    case bool(Bool)
    case number(JSONNumber)
    case string(String)
    case array([JSONValue])
    case object([String: JSONValue])

    /// Decodes through a Foundation decoder.
    ///
    /// Foundation hands over numbers as values, not text, so this is exact only as far as it can
    /// be: integers within 64 bits, and decimals of up to 38 significant digits (as `Decimal`),
    /// are kept exactly; others become the nearest `Double`. The text may be normalised (`2.50`
    /// becomes `2.5`, `1.0` becomes `1`, `-0` becomes `0`). Use `JSONValue(parsing:)`
    /// when the text must survive.
    public init(from decoder: any Decoder) throws {
        let c = try decoder.singleValueContainer()
        if c.decodeNil() {
            self = .null
        } else if let b = try? c.decode(Bool.self) {
            self = .bool(b)
        } else if let n = try? c.decode(Int64.self) {
            self = .number(JSONNumber(n))
        } else if let n = try? c.decode(UInt64.self) {
            self = .number(JSONNumber(n))
        } else if let d = try? c.decode(Double.self), let n = JSONNumber(d) {
            // A number (asking for `Decimal` first could take an object for a keyed `Decimal`
            // in decoders that do not special-case it); `Decimal` keeps up to 38 digits.
            if let exact = try? c.decode(Decimal.self), !exact.isNaN, let e = JSONNumber(text: exact.description) {
                self = .number(e)
            } else {
                self = .number(n)
            }
        } else if let s = try? c.decode(String.self) {
            self = .string(s)
        } else if let a = try? c.decode([JSONValue].self) {
            self = .array(a)
        } else {
            self = .object(try c.decode([String: JSONValue].self))
        }
    }

    public func encode(to encoder: any Encoder) throws {
        var c = encoder.singleValueContainer()
        switch self {
        case .null: try c.encodeNil()
        case .bool(let b): try c.encode(b)
        case .number(let n):
            // Foundation's encoders take values, not text: integers within 64 bits and decimals
            // of up to 38 significant digits stay exact; others are written as the nearest Double.
            if let i = Int64(n.text) {
                try c.encode(i)
            } else if let u = UInt64(n.text) {
                try c.encode(u)
            } else if let d = Decimal(string: n.text), !d.isNaN {
                try c.encode(d)
            } else if n.double.isFinite {
                try c.encode(n.double)
            } else {
                throw EncodingError.invalidValue(
                    self,
                    EncodingError.Context(codingPath: encoder.codingPath, debugDescription: "\(n) is out of range for a Foundation encoder")
                )
            }
        case .string(let s): try c.encode(s)
        case .array(let a): try c.encode(a)
        case .object(let o): try c.encode(o)
        }
    }

    /// Parses JSON text.
    ///
    /// - Throws: ``StepwiseError`` with code ``StepwiseError/Code/invalidJSON`` saying where the text is wrong.
    public init(parsing text: String, what: String = "JSON") throws {
        try self.init(parsing: Array(text.utf8), what: what)
    }

    /// Parses JSON bytes, rejecting invalid UTF-8.
    public init(parsing bytes: [UInt8], what: String = "JSON") throws {
        guard String(validating: bytes, as: UTF8.self) != nil else {
            throw StepwiseError(.invalidJSON, "\(what) is not valid UTF-8")
        }
        do {
            self = try JSONText.parse(bytes)
        } catch {
            throw StepwiseError(.invalidJSON, "\(what) is not valid JSON: \(error)")
        }
    }

    /// Compact JSON text with sorted keys.
    public var jsonString: String {
        var out: [UInt8] = []
        out.reserveCapacity(64)
        JSONText.write(self, into: &out)
        return String(decoding: out, as: UTF8.self)
    }

    public var description: String { jsonString }

    /// The member `key` of an object, or `nil`.
    public subscript(key: String) -> JSONValue? {
        if case .object(let o) = self { return o[key] }
        return nil
    }

    /// The value as a string, when it is one.
    public var stringValue: String? {
        if case .string(let s) = self { return s }
        return nil
    }

    /// An integer number; exact for any width.
    public static func int(_ value: some BinaryInteger) -> JSONValue { .number(JSONNumber(value)) }

    /// A floating-point number, written as the shortest text that reads back as `value` (see
    /// ``JSONNumber``); `null` for NaN and infinities, which JSON cannot hold.
    public static func double(_ value: Double) -> JSONValue { JSONNumber(value).map { .number($0) } ?? .null }

    /// The number, when the value is one.
    public var numberValue: JSONNumber? {
        if case .number(let n) = self { return n }
        return nil
    }

    /// The value as an integer, when it is a number that is exactly an integer in range (`3`,
    /// `3.0`, `3e0`; not `3.5`; see ``JSONNumber/int64``), or a string holding one.
    public var intValue: Int? {
        switch self {
        case .number(let n): return n.int64.flatMap { Int(exactly: $0) }
        case .string(let s): return Int(s)
        default: return nil
        }
    }

    /// The value as the nearest `Double`, when it is a number (or a string holding one).
    public var doubleValue: Double? {
        switch self {
        case .number(let n): return n.double
        case .string(let s): return Double(s)
        default: return nil
        }
    }

    /// The elements, when the value is an array.
    public var arrayValue: [JSONValue]? {
        if case .array(let a) = self { return a }
        return nil
    }

    /// The members, when the value is an object.
    public var objectValue: [String: JSONValue]? {
        if case .object(let o) = self { return o }
        return nil
    }
}

extension JSONValue: ExpressibleByStringLiteral, ExpressibleByIntegerLiteral, ExpressibleByBooleanLiteral,
    ExpressibleByArrayLiteral, ExpressibleByDictionaryLiteral, ExpressibleByFloatLiteral
{
    public init(stringLiteral value: String) { self = .string(value) }
    public init(integerLiteral value: Int64) { self = .number(JSONNumber(value)) }
    /// A float literal, as ``JSONNumber/init(floatLiteral:)`` writes it.
    public init(floatLiteral value: Double) { self = .number(JSONNumber(floatLiteral: value)) }
    public init(booleanLiteral value: Bool) { self = .bool(value) }
    public init(arrayLiteral elements: JSONValue...) { self = .array(elements) }
    public init(dictionaryLiteral elements: (String, JSONValue)...) {
        self = .object(Dictionary(elements, uniquingKeysWith: { _, last in last }))
    }
}
