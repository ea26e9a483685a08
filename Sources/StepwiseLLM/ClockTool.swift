import Foundation
import StepwiseCore

/// A demo tool: the current date and time in UTC (ISO 8601). Pure.
public struct ClockTool: Tool {
    public let name = "clock"
    public let description = "Returns the current date and time in UTC"
    public let parameters: JSONValue = ["type": "object", "properties": [:], "additionalProperties": false]
    public init() {}

    public func call(arguments: JSONValue, context: ToolContext) async throws -> JSONValue {
        .string(Date().formatted(.iso8601))
    }
}
