import StepwiseCore

/// A demo tool: evaluates an arithmetic expression (`+ - * /`, parentheses, decimals, unary minus).
///
/// Pure: calling it twice does no harm.
public struct CalculatorTool: Tool {
    public let name = "calculator"
    public let description = "Evaluates an arithmetic expression with + - * / and parentheses, e.g. (2+3)*4.5"
    public let parameters: JSONValue = [
        "type": "object",
        "properties": ["expression": ["type": "string", "description": "the expression, e.g. 2+3*4"]],
        "required": ["expression"],
        "additionalProperties": false,
    ]
    public init() {}

    public func call(arguments: JSONValue, context: ToolContext) async throws -> JSONValue {
        guard let text = arguments["expression"]?.stringValue else { throw ToolError("expression (a string) is required") }
        guard text.utf8.count <= 1000 else { throw ToolError("expression is longer than 1000 characters") }
        var parser = Parser(Array(text.utf8))
        let value = try parser.expression()
        parser.skipSpaces()
        guard parser.atEnd else { throw ToolError("unexpected character at offset \(parser.offset)") }
        guard value.isFinite else { throw ToolError("the result is not a finite number (division by zero?)") }
        return ["expression": .string(text), "value": .double(value)]
    }

    /// Recursive descent over `expr := term (('+'|'-') term)*`, `term := factor (('*'|'/') factor)*`,
    /// `factor := '-' factor | number | '(' expr ')'`; nesting is bounded.
    private struct Parser {
        let bytes: [UInt8]
        var offset = 0
        var depth = 0
        init(_ bytes: [UInt8]) { self.bytes = bytes }
        var atEnd: Bool { offset >= bytes.count }

        mutating func skipSpaces() { while offset < bytes.count, bytes[offset] == UInt8(ascii: " ") { offset += 1 } }
        mutating func peek() -> UInt8? {
            skipSpaces()
            return atEnd ? nil : bytes[offset]
        }

        mutating func expression() throws -> Double {
            var value = try term()
            while let c = peek(), c == UInt8(ascii: "+") || c == UInt8(ascii: "-") {
                offset += 1
                let rhs = try term()
                value = c == UInt8(ascii: "+") ? value + rhs : value - rhs
            }
            return value
        }

        mutating func term() throws -> Double {
            var value = try factor()
            while let c = peek(), c == UInt8(ascii: "*") || c == UInt8(ascii: "/") {
                offset += 1
                let rhs = try factor()
                value = c == UInt8(ascii: "*") ? value * rhs : value / rhs
            }
            return value
        }

        mutating func factor() throws -> Double {
            depth += 1
            defer { depth -= 1 }
            guard depth < 100 else { throw ToolError("expression is nested too deeply") }
            guard let c = peek() else { throw ToolError("expression ends early") }
            if c == UInt8(ascii: "-") {
                offset += 1
                return -(try factor())
            }
            if c == UInt8(ascii: "(") {
                offset += 1
                let value = try expression()
                guard peek() == UInt8(ascii: ")") else { throw ToolError("missing ) at offset \(offset)") }
                offset += 1
                return value
            }
            let start = offset
            while offset < bytes.count,
                (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(bytes[offset]) || bytes[offset] == UInt8(ascii: ".")
            {
                offset += 1
            }
            guard offset > start, let value = Double(String(decoding: bytes[start..<offset], as: UTF8.self)) else {
                throw ToolError("expected a number at offset \(start)")
            }
            return value
        }
    }
}
