/// A JSON number, kept exactly as it was written.
///
/// A state store must give back what it was given, so a number is its JSON text, not a `Double`:
/// `9007199254740993`, `18446744073709551615`, `123456789012345678901234567890`, `2.50`, `-0` and
/// `1e400` all survive parsing and writing byte for byte. The text always follows the JSON number
/// grammar (`-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?`); there is no NaN or infinity.
///
/// Equality and hashing compare the text: `1`, `1.0` and `1e0` are three different numbers, as
/// written. Compare ``int64`` or ``double`` to compare values.
public struct JSONNumber: Sendable, Hashable, CustomStringConvertible, ExpressibleByIntegerLiteral, ExpressibleByFloatLiteral {
    /// The number's JSON text.
    public let text: String

    /// A number whose text the caller has already checked against the grammar.
    init(uncheckedText text: String) { self.text = text }

    /// The number written as `text`, or `nil` when `text` is not exactly one JSON number (no
    /// surrounding spaces, no `+1`, `01`, `1.`, `.5`, `1e`, `NaN` or `Infinity`).
    public init?(text: String) {
        let bytes = Array(text.utf8)
        guard !bytes.isEmpty else { return nil }
        let scan = JSONText.scanNumber(bytes, at: 0)
        guard scan.error == nil, scan.end == bytes.count else { return nil }
        self.text = text
    }

    /// The integer in decimal digits; exact for any width.
    public init(_ value: some BinaryInteger) { text = String(value) }

    /// The integer `value`.
    public init(integerLiteral value: Int64) { text = String(value) }

    /// The shortest text that reads back as exactly `value` (Swift's `description`), without a
    /// trailing `.0`: `0.1`, `2.5`, `3`, `-0`, `1e-07`, `1e+16`. `nil` for NaN and infinities,
    /// which JSON cannot hold.
    public init?(_ value: Double) {
        guard value.isFinite else { return nil }
        let d = value.description
        text = d.hasSuffix(".0") ? String(d.dropLast(2)) : d
    }

    /// A float literal. Its text is that of the `Double` it denotes, as for `init(_: Double)`: a literal
    /// with more digits than a `Double` holds loses them; use ``init(text:)`` for those.
    public init(floatLiteral value: Double) {
        guard let n = JSONNumber(value) else { preconditionFailure("\(value) is not a JSON number") }
        self = n
    }

    public var description: String { text }

    /// The value as an `Int64`, only when it is exactly an integer in range: `42`, `-0` (0),
    /// `1.0`, `2.50e1` (25) and `1e2` (100) are integers; `1.5`, `1e-1`, `1e400` and
    /// `9223372036854775808` are not (`nil`).
    public var int64: Int64? {
        if let v = Int64(text) { return v }  // plain integer syntax: the common case
        guard let (negative, magnitude) = integerParts() else { return nil }
        if negative {
            if magnitude == UInt64(Int64.max) + 1 { return Int64.min }
            return magnitude <= UInt64(Int64.max) ? -Int64(magnitude) : nil
        }
        return magnitude <= UInt64(Int64.max) ? Int64(magnitude) : nil
    }

    /// The value as a `UInt64`, only when it is exactly a non-negative integer in range (as
    /// ``int64`` decides; `-0` is 0).
    public var uint64: UInt64? {
        if let v = UInt64(text) { return v }
        guard let (negative, magnitude) = integerParts(), !negative || magnitude == 0 else { return nil }
        return magnitude
    }

    /// The nearest `Double`: rounded when the text has more precision, `±infinity` past
    /// `Double`'s range (`1e400`), `±0` below it.
    public var double: Double {
        // The grammar is a subset of what `Double(_:)` reads, so this does not fail.
        Double(text) ?? .nan
    }

    /// Sign and magnitude when the text denotes an integer that fits 64 bits of magnitude.
    ///
    /// The value is `digits × 10^exponent`, where `digits` are the integer and fraction digits
    /// together and `exponent` is the written exponent minus the number of fraction digits.
    private func integerParts() -> (negative: Bool, magnitude: UInt64)? {
        let bytes = Array(text.utf8)
        var i = 0
        let negative = bytes.first == UInt8(ascii: "-")
        if negative { i += 1 }
        var digits: [UInt8] = []
        while i < bytes.count, JSONText.isDigit(bytes[i]) {
            digits.append(bytes[i] - 0x30)
            i += 1
        }
        var fractionDigits = 0
        if i < bytes.count, bytes[i] == UInt8(ascii: ".") {
            i += 1
            while i < bytes.count, JSONText.isDigit(bytes[i]) {
                digits.append(bytes[i] - 0x30)
                fractionDigits += 1
                i += 1
            }
        }
        var written = 0
        var writtenNegative = false
        if i < bytes.count, bytes[i] == UInt8(ascii: "e") || bytes[i] == UInt8(ascii: "E") {
            i += 1
            if i < bytes.count, bytes[i] == UInt8(ascii: "+") || bytes[i] == UInt8(ascii: "-") {
                writtenNegative = bytes[i] == UInt8(ascii: "-")
                i += 1
            }
            while i < bytes.count, JSONText.isDigit(bytes[i]) {
                // Past a million the answer no longer depends on the exact exponent.
                if written < 1_000_000 { written = written * 10 + Int(bytes[i] - 0x30) }
                i += 1
            }
        }
        var exponent = (writtenNegative ? -written : written) - fractionDigits
        guard let first = digits.firstIndex(where: { $0 != 0 }) else { return (negative, 0) }  // zero
        var end = digits.count
        while digits[end - 1] == 0 {
            end -= 1
            exponent += 1
        }
        // UInt64.max has 20 digits.
        guard exponent >= 0, end - first + exponent <= 20 else { return nil }
        var magnitude: UInt64 = 0
        for d in digits[first..<end] + repeatElement(0, count: exponent) {
            let (times10, o1) = magnitude.multipliedReportingOverflow(by: 10)
            let (sum, o2) = times10.addingReportingOverflow(UInt64(d))
            guard !o1, !o2 else { return nil }
            magnitude = sum
        }
        return (negative, magnitude)
    }
}
