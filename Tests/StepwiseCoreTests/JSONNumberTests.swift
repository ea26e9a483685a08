import Foundation
import Testing

@testable import StepwiseCore

/// Numbers that a `Double` cannot carry as written; each one came back changed before numbers
/// kept their text.
let exactNumbers = [
    "9007199254740993",  // 2^53 + 1: a Double gives 9007199254740992
    "-9223372036854775808",  // Int64.min
    "9223372036854775807",  // Int64.max
    "18446744073709551615",  // UInt64.max
    "123456789012345678901234567890",  // beyond 64 bits
    "1234567890123456789",  // a 19-digit id: a Double gives 1.2345678901234568e+18
    "1.2345678901234567890123",  // more digits than a Double holds
    "0.1", "-0", "-0.0", "1e400", "-1e400", "1e-400", "1E-7", "2.50", "1.0", "1e2", "1E+2", "0e0", "-1.5e-3",
]

@Suite struct JSONNumberTests {
    @Test(arguments: exactNumbers)
    func numberRoundTripsByteForByte(_ text: String) throws {
        let v = try JSONValue(parsing: text)
        #expect(v.jsonString == text)
        #expect(v.numberValue?.text == text)
        #expect(try #require(JSONNumber(text: text)).text == text)
    }

    @Test(arguments: exactNumbers)
    func numberRoundTripsInsideArraysAndObjects(_ text: String) throws {
        let doc = #"{"a":[\#(text),{"n":\#(text)}],"n":\#(text)}"#
        let v = try JSONValue(parsing: doc)
        #expect(v.jsonString == doc)
        #expect(v["n"]?.numberValue?.text == text)
        #expect(try JSONValue(parsing: v.jsonString) == v)
        // Spaces around the number do not end up in it.
        let spaced = try JSONValue(parsing: "[ \(text) ,\n\t\(text) ]")
        #expect(spaced.jsonString == "[\(text),\(text)]")
    }

    @Test(arguments: [
        "01", "-01", "00", "1.", ".5", "+1", "1e", "1e+", "1E-", "-", "NaN", "nan", "Infinity", "-Infinity", "0x10", "1.e5", "1..2",
        "1e5.5", "--1", "1-", "1e5e5",
    ])
    func invalidNumberGrammarIsRejected(_ text: String) {
        #expect(JSONNumber(text: text) == nil)
        #expect(stepwiseErrorCode { try JSONValue(parsing: "[\(text)]") } == .invalidJSON)
        #expect(stepwiseErrorCode { try JSONValue(parsing: text) } == .invalidJSON)
    }

    @Test(arguments: ["1 ", " 1", "", "1,2", "[1]"])
    func numberTextIsOneNumberAndNothingElse(_ text: String) {
        #expect(JSONNumber(text: text) == nil)
    }

    @Test(arguments: [
        ("0", Int64(0)), ("-0", 0), ("42", 42), ("-42", -42), ("1.0", 1), ("2.50e1", 25), ("1e2", 100), ("1E+2", 100),
        ("12300e-2", 123), ("0.000e5", 0), ("-9223372036854775808", Int64.min), ("9223372036854775807", Int64.max),
        ("-922337203685477580.8e1", Int64.min), ("9007199254740993", 9_007_199_254_740_993), ("0e999999999999999999", 0),
    ])
    func int64IsExact(_ text: String, _ expected: Int64) throws {
        #expect(try #require(JSONNumber(text: text)).int64 == expected)
    }

    @Test(arguments: [
        "1.5", "1e-1", "0.1", "1e400", "-1e400", "1e19", "9223372036854775808", "-9223372036854775809",
        "18446744073709551615", "123456789012345678901234567890", "1e999999999999999999", "1.00000000000000000001",
    ])
    func int64IsNilWhenNotAnIntegerInRange(_ text: String) throws {
        #expect(try #require(JSONNumber(text: text)).int64 == nil)
        #expect(try JSONValue(parsing: text).intValue == nil)
    }

    @Test func uint64CoversTheUpperHalf() throws {
        #expect(try #require(JSONNumber(text: "18446744073709551615")).uint64 == UInt64.max)
        #expect(try #require(JSONNumber(text: "1.8446744073709551615e19")).uint64 == UInt64.max)
        #expect(try #require(JSONNumber(text: "-0")).uint64 == 0)
        #expect(try #require(JSONNumber(text: "18446744073709551616")).uint64 == nil)
        #expect(try #require(JSONNumber(text: "-1")).uint64 == nil)
    }

    @Test func doubleIsTheNearestValue() throws {
        #expect(try #require(JSONNumber(text: "0.1")).double == 0.1)
        #expect(try #require(JSONNumber(text: "9007199254740993")).double == 9_007_199_254_740_992)
        #expect(try #require(JSONNumber(text: "1e400")).double == .infinity)
        #expect(try #require(JSONNumber(text: "-0")).double.sign == .minus)
        #expect(try JSONValue(parsing: "2.50").doubleValue == 2.5)
    }

    @Test(arguments: [
        (0.1, "0.1"), (2.5, "2.5"), (3.0, "3"), (-0.0, "-0"), (1e-7, "1e-07"), (1e16, "1e+16"),
        (9_007_199_254_740_992.0, "9007199254740992"), (1.2345678901234567, "1.2345678901234567"), (Double.leastNonzeroMagnitude, "5e-324"),
    ])
    func doubleGetsTheShortestTextThatReadsBack(_ value: Double, _ text: String) throws {
        let n = try #require(JSONNumber(value))
        #expect(n.text == text)
        #expect(n.double == value && n.double.sign == value.sign)
        #expect(JSONNumber(text: n.text) != nil, "valid JSON")
        #expect(JSONValue.double(value).jsonString == text)
    }

    @Test func nonFiniteDoublesAreNotNumbers() {
        #expect(JSONNumber(Double.nan) == nil)
        #expect(JSONNumber(Double.infinity) == nil)
        #expect(JSONNumber(-Double.infinity) == nil)
        #expect(JSONValue.double(.nan) == .null)
        #expect(JSONValue.double(.infinity).jsonString == "null")
    }

    @Test func integersOfAnyWidthAreExact() {
        #expect(JSONValue.int(Int64.min).jsonString == "-9223372036854775808")
        #expect(JSONValue.int(UInt64.max).jsonString == "18446744073709551615")
        #expect(JSONValue.int(-7).jsonString == "-7")
        #expect(JSONNumber(Int64.max).int64 == Int64.max)
        let literal: JSONValue = [9_223_372_036_854_775_807, -1, 2.5]
        #expect(literal.jsonString == "[9223372036854775807,-1,2.5]")
    }

    @Test func equalityIsByTextAsWritten() throws {
        let one = try JSONValue(parsing: "1")
        let onePointZero = try JSONValue(parsing: "1.0")
        #expect(one == 1)
        #expect(one != onePointZero)
        #expect(onePointZero.intValue == one.intValue)
        #expect(try JSONValue(parsing: "-0") != JSONValue(parsing: "0"))
        #expect(Set([one, onePointZero, try JSONValue(parsing: "1")]).count == 2)
    }

    @Test func foundationCodersKeepWhatTheyCan() throws {
        // Integers within 64 bits and decimals of up to 38 digits survive Foundation's coders.
        let text = #"[-9223372036854775808,18446744073709551615,123456789012345678901234567890,1.2345678901234567890123,0.1]"#
        let v = try JSONDecoder().decode(JSONValue.self, from: Data(text.utf8))
        #expect(v.jsonString == text)
        let encoded = String(decoding: try JSONEncoder().encode(try JSONValue(parsing: text)), as: UTF8.self)
        #expect(encoded == text)
        // Foundation cannot write numbers past a Double's range.
        #expect(throws: EncodingError.self) { try JSONEncoder().encode(try JSONValue(parsing: "[1e400]")) }
    }
}
