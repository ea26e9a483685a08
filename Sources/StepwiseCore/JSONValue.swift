import Foundation

/// A JSON document: the agent state, step inputs, options and event payloads.
public enum JSONValue: Sendable, Hashable, Codable, CustomStringConvertible {
    case null
    case bool(Bool)
    case number(Double)
    case string(String)
    case array([JSONValue])
    case object([String: JSONValue])

    public init(from decoder: any Decoder) throws {
        let c = try decoder.singleValueContainer()
        if c.decodeNil() {
            self = .null
        } else if let b = try? c.decode(Bool.self) {
            self = .bool(b)
        } else if let n = try? c.decode(Double.self) {
            self = .number(n)
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
            if n.rounded() == n, abs(n) < 9.0e15 { try c.encode(Int64(n)) } else { try c.encode(n) }
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

    /// The value as an integer, when it is a whole number (or a string holding one).
    public var intValue: Int? {
        switch self {
        case .number(let n) where n.rounded() == n && abs(n) < 9.0e15: return Int(n)
        case .string(let s): return Int(s)
        default: return nil
        }
    }

    /// The value as a number, when it is one (or a string holding one).
    public var doubleValue: Double? {
        switch self {
        case .number(let n): return n
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
    public init(integerLiteral value: Int) { self = .number(Double(value)) }
    public init(floatLiteral value: Double) { self = .number(value) }
    public init(booleanLiteral value: Bool) { self = .bool(value) }
    public init(arrayLiteral elements: JSONValue...) { self = .array(elements) }
    public init(dictionaryLiteral elements: (String, JSONValue)...) {
        self = .object(Dictionary(elements, uniquingKeysWith: { _, last in last }))
    }
}
