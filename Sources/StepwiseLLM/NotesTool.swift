import Foundation
import StepwiseCore

/// A demo tool with a side effect: saves a note as one JSON line in a file, at most once per
/// idempotency key.
///
/// Each line is `{"key": <idempotency key>, "text": ..., "time": ...}`. Before it appends, the
/// tool takes an exclusive `flock` on `<file>.lock` (so worker processes on one machine agree)
/// and looks for its key; a key already there returns `{"saved": false, "duplicate": true}`
/// without writing. A step that runs again after its tool ran (a retry, a crash) therefore
/// saves its note once.
public struct NotesTool: Tool {
    public let name = "save_note"
    public let description = "Saves a short note for the user; returns whether it was saved"
    public let parameters: JSONValue = [
        "type": "object",
        "properties": ["text": ["type": "string", "description": "the note, at most 1000 characters"]],
        "required": ["text"],
        "additionalProperties": false,
    ]
    /// The notes file (JSON lines).
    public let path: String

    /// Creates the tool; the file is created on the first note.
    public init(path: String) { self.path = path }

    public func call(arguments: JSONValue, context: ToolContext) async throws -> JSONValue {
        guard let text = arguments["text"]?.stringValue, !text.isEmpty else { throw ToolError("text (a non-empty string) is required") }
        guard text.count <= 1000 else { throw ToolError("text is longer than 1000 characters") }
        let key = context.idempotencyKey
        // A short blocking section (a lock and a small file): bounded, not a network wait.
        let lock = open(path + ".lock", O_RDWR | O_CREAT | O_CLOEXEC, 0o600)
        guard lock >= 0 else { throw NotesError(message: "cannot open the notes lock file: \(String(cString: strerror(errno)))") }
        defer { close(lock) }
        guard flock(lock, LOCK_EX) == 0 else { throw NotesError(message: "cannot lock the notes file") }
        defer { flock(lock, LOCK_UN) }
        let existing = (try? String(contentsOfFile: path, encoding: .utf8)) ?? ""
        for line in existing.split(separator: "\n") {
            if let entry = try? JSONValue(parsing: String(line)), entry["key"]?.stringValue == key {
                return ["saved": false, "duplicate": true, "key": .string(key)]
            }
        }
        let entry: JSONValue = ["key": .string(key), "text": .string(text), "time": .string(Date().formatted(.iso8601))]
        let fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw NotesError(message: "cannot open the notes file: \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        let bytes = Array((entry.jsonString + "\n").utf8)
        let written = bytes.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
        guard written == bytes.count else { throw NotesError(message: "cannot write the notes file") }
        return ["saved": true, "duplicate": false, "key": .string(key)]
    }

    /// The notes file could not be used (a failure of the tool, not of the model's arguments).
    public struct NotesError: Error, Sendable, CustomStringConvertible {
        public var message: String
        public var description: String { message }
    }
}
