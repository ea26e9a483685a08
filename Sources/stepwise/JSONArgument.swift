import ArgumentParser
import Foundation
import StepwiseCore
import Synchronization

/// A JSON value given on the command line inline, as `@path` (read from that file) or as `-`
/// (read from standard input). Neither `@` nor a lone `-` starts valid JSON, so the forms never
/// clash with inline text.
///
/// A file or stdin is read at most once per process (a command's `validate()` and `run()` both
/// resolve the argument), and at most `rawLimit` bytes of it: reading stops there, so a huge file or an
/// endless pipe cannot exhaust memory.
enum JSONArgument {
    /// An `errno` from opening or reading a source.
    struct ReadFailure: Error {
        let code: Int32
    }

    /// Sources already read (`-` or `@path`), so that validation and the run see the same bytes.
    private static let cache = Mutex<[String: [UInt8]]>([:])

    /// Whether `text` reads standard input.
    static func readsStandardInput(_ text: String) -> Bool { text == "-" }

    /// Parses `text` as JSON, or reads the file or stdin it names and parses that.
    ///
    /// - Parameters:
    ///   - flag: the option's name, for messages.
    ///   - rawLimit: the most bytes read from a file or stdin; more is an error.
    ///   - hint: appended to a JSON syntax error of inline text.
    ///   - limitHint: says how to raise `rawLimit`, for the message when a file or stdin is larger.
    /// - Throws: ``ValidationError`` with one clear line.
    static func parse(_ text: String, flag: String, rawLimit requested: Int, hint: String = "", limitHint: String) throws -> JSONValue {
        let rawLimit = min(max(requested, 0), Int.max / 2)  // readAll reads up to rawLimit + 1
        let what: String
        let bytes: [UInt8]
        if text == "-" {
            what = "\(flag) - (standard input)"
            bytes = try cachedRead(source: "-", flag: what, rawLimit: rawLimit, limitHint: limitHint) {
                readAll(fd: STDIN_FILENO, limit: rawLimit)
            }
        } else if text.hasPrefix("@") {
            let path = String(text.dropFirst())
            guard !path.isEmpty else { throw ValidationError("\(flag) @ needs a file path, like \(flag) @input.json") }
            what = "\(flag) @\(path)"
            bytes = try cachedRead(source: text, flag: what, rawLimit: rawLimit, limitHint: limitHint) {
                let fd = open(path, O_RDONLY | O_CLOEXEC)
                guard fd >= 0 else { return .failure(ReadFailure(code: errno)) }
                defer { close(fd) }
                return readAll(fd: fd, limit: rawLimit)
            }
        } else {
            do { return try JSONValue(parsing: text, what: flag) } catch let e as StepwiseError {
                throw ValidationError(e.message + hint)
            }
        }
        do { return try JSONValue(parsing: bytes, what: what) } catch let e as StepwiseError { throw ValidationError(e.message) }
    }

    private static func cachedRead(
        source: String, flag: String, rawLimit: Int, limitHint: String, _ load: () -> Result<[UInt8], ReadFailure>
    ) throws -> [UInt8] {
        let result = cache.withLock { cache -> Result<[UInt8], ReadFailure> in
            if let bytes = cache[source] { return .success(bytes) }
            let result = load()
            if case .success(let bytes) = result { cache[source] = bytes }
            return result
        }
        switch result {
        case .failure(let failure):
            throw ValidationError("\(flag): cannot read it: \(String(cString: strerror(failure.code)))")
        case .success(let bytes) where bytes.count > rawLimit:
            throw ValidationError("\(flag) is over \(rawLimit) bytes: \(limitHint)")
        case .success(let bytes):
            return bytes
        }
    }

    /// Reads `fd` to its end, or until more than `limit` bytes came (then returns `limit + 1` bytes).
    private static func readAll(fd: Int32, limit: Int) -> Result<[UInt8], ReadFailure> {
        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 64 * 1024)
        while bytes.count <= limit {
            let want = min(chunk.count, limit + 1 - bytes.count)
            let n = chunk.withUnsafeMutableBytes { buffer in
                read(fd, buffer.baseAddress, want)
            }
            if n > 0 {
                bytes.append(contentsOf: chunk[0..<n])
            } else if n == 0 {
                break
            } else if errno != EINTR {
                return .failure(ReadFailure(code: errno))
            }
        }
        return .success(bytes)
    }
}
