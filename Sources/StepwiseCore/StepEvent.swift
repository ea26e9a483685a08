import StepwiseRedis

/// One entry of a session's event stream.
public struct StepEvent: Sendable, Hashable {
    /// The stream entry id (`<ms>-<seq>`), usable with `watch --from`.
    public var id: String
    /// `step.started`, `step.progress`, `step.completed`, `step.failed`, ...
    public var type: String
    public var session: String
    public var jobID: String
    public var step: Int
    public var attempt: Int
    /// Milliseconds since 1970, from the writer's clock.
    public var time: Int64
    /// The remaining fields (`outcome`, `data`, `message`, ...), as stored.
    public var fields: [String: String]

    /// Decodes a stream entry `[id, [field, value, ...]]`.
    ///
    /// Events do not store their session (the stream key names it, and a job id starts with
    /// it); it comes from `session`, else from the job id.
    public init?(entry: RESPValue, session: String? = nil) {
        guard let parts = entry.array, parts.count == 2, let id = parts[0].string, let kv = parts[1].array else {
            return nil
        }
        var fields: [String: String] = [:]
        var i = 0
        while i + 1 < kv.count {
            if let k = kv[i].string, let v = kv[i + 1].string { fields[k] = v }
            i += 2
        }
        self.id = id
        self.type = fields.removeValue(forKey: "type") ?? ""
        let job = fields["job"] ?? ""
        self.session =
            fields.removeValue(forKey: "session") ?? session ?? job.split(separator: ":").dropLast().joined(separator: ":")
        self.jobID = fields.removeValue(forKey: "job") ?? ""
        self.step = fields.removeValue(forKey: "step").flatMap { Int($0) } ?? 0
        self.attempt = fields.removeValue(forKey: "attempt").flatMap { Int($0) } ?? 0
        self.time = fields.removeValue(forKey: "time").flatMap { Int64($0) } ?? 0
        self.fields = fields
    }

    /// The event as one JSON object (`watch --json`). `data` is embedded as JSON when it parses.
    public var json: JSONValue {
        var o: [String: JSONValue] = [
            "id": .string(id), "type": .string(type), "session": .string(session), "job": .string(jobID),
            "step": .int(step), "attempt": .int(attempt), "time": .int(time),
        ]
        for (k, v) in fields {
            o[k] = (k == "data" ? (try? JSONValue(parsing: v)) : nil) ?? .string(v)
        }
        return .object(o)
    }

    /// Whether this event closes a step (the commit script wrote it).
    public var isStepEnd: Bool { type == "step.completed" || type == "step.failed" }
}
