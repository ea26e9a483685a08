import Foundation
import StepwiseCore

/// Finds the JSON object in a model's reply when the reply is not just that object.
///
/// Small models wrap JSON in prose or a ```json fence, or leave a trailing comma. In order, it
/// tries: the whole text; the inside of the first fence; the first balanced `{...}`; and each of
/// those with trailing commas (`,}` and `,]` outside strings) removed.
public enum JSONRepair {
    /// The object and whether it needed repair, or `nil` when no object could be recovered.
    public static func object(in text: String) -> (value: JSONValue, repaired: Bool)? {
        let trimmed = text.trimmingCharacters(in: .whitespacesAndNewlines)
        if let v = try? JSONValue(parsing: trimmed), v.objectValue != nil { return (v, false) }
        var candidates: [String] = []
        if let fence = fenced(trimmed) { candidates.append(fence) }
        if let braces = balancedObject(trimmed) { candidates.append(braces) }
        for c in candidates + candidates.map(withoutTrailingCommas) {
            if let v = try? JSONValue(parsing: c), v.objectValue != nil { return (v, true) }
        }
        return nil
    }

    /// The text between the first ``` line (with or without a language) and the next ```.
    static func fenced(_ text: String) -> String? {
        guard let open = text.range(of: "```") else { return nil }
        let afterOpen = text[open.upperBound...]
        let body = afterOpen.firstIndex(of: "\n").map { afterOpen[afterOpen.index(after: $0)...] } ?? afterOpen
        guard let close = body.range(of: "```") else { return nil }
        return String(body[..<close.lowerBound])
    }

    /// The first `{` up to its matching `}`, skipping braces inside strings.
    static func balancedObject(_ text: String) -> String? {
        let chars = Array(text)
        guard let start = chars.firstIndex(of: "{") else { return nil }
        var depth = 0
        var inString = false
        var escaped = false
        for i in start..<chars.count {
            let c = chars[i]
            if inString {
                if escaped { escaped = false } else if c == "\\" { escaped = true } else if c == "\"" { inString = false }
                continue
            }
            switch c {
            case "\"": inString = true
            case "{": depth += 1
            case "}":
                depth -= 1
                if depth == 0 { return String(chars[start...i]) }
            default: break
            }
        }
        return nil
    }

    /// `text` without commas that directly precede `}` or `]` (outside strings).
    static func withoutTrailingCommas(_ text: String) -> String {
        let chars = Array(text)
        var out: [Character] = []
        var inString = false
        var escaped = false
        for (i, c) in chars.enumerated() {
            if inString {
                if escaped { escaped = false } else if c == "\\" { escaped = true } else if c == "\"" { inString = false }
                out.append(c)
                continue
            }
            if c == "\"" { inString = true }
            if c == "," {
                let rest = chars[(i + 1)...].first { !$0.isWhitespace }
                if rest == "}" || rest == "]" { continue }
            }
            out.append(c)
        }
        return String(out)
    }
}
