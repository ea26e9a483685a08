import ArgumentParser
import Foundation
import StepwiseLLM

/// The worker's `--llm-*` flags: the endpoint, key and tools of the `llm` agent and the
/// model-written quiz. The API key comes from `--llm-api-key-file` or `STEPWISE_LLM_API_KEY`;
/// it is never a flag value (it would show in `ps`) and never a `--help` default.
struct LLMWorkerOptions: ParsableArguments {
    @Option(
        name: .customLong("llm-base-url"),
        help: ArgumentHelp(
            "OpenAI-compatible endpoint of the llm agent and of llm=true quizzes, e.g. https://api.openai.com/v1 (default: none; model steps then fail saying so).",
            valueName: "url"))
    var baseURL: String?

    @Option(
        name: .customLong("llm-allow-base-url"),
        help: ArgumentHelp(
            "Another base URL sessions may choose with the option base_url (repeatable); the API key goes to these too.", valueName: "url"))
    var allowedBaseURLs: [String] = []

    @Option(name: .customLong("llm-model"), help: ArgumentHelp("Model of sessions that set no option model.", valueName: "name"))
    var model: String?

    @Option(
        name: .customLong("llm-api-key-file"),
        help: ArgumentHelp(
            "File holding the endpoint's API key (one line); else the environment variable STEPWISE_LLM_API_KEY; else no key.",
            valueName: "path"))
    var apiKeyFile: String?

    @Option(
        name: .customLong("llm-notes-file"),
        help: ArgumentHelp(
            "Offer the save_note demo tool, which appends notes to this file (JSON lines), once per idempotency key.", valueName: "path"))
    var notesFile: String?

    @Option(name: .customLong("llm-http-attempts"), help: "Attempts of a request answered 429 or 5xx, or unreachable (1-20).")
    var httpAttempts: Int = 4

    @Option(name: .customLong("llm-max-retry-after"), help: "Longest Retry-After honoured, in seconds; a longer one fails the attempt.")
    var maxRetryAfter: Double = 30

    @Option(name: .customLong("llm-coalesce-ms"), help: "Token events: at most one per this many milliseconds ...")
    var coalesceMilliseconds: Int = 100

    @Option(name: .customLong("llm-coalesce-tokens"), help: "... or per this many tokens.")
    var coalesceTokens: Int = 32

    func validate() throws {
        guard (1...20).contains(httpAttempts) else { throw ValidationError("--llm-http-attempts must be 1-20, got \(httpAttempts)") }
        guard maxRetryAfter >= 0, maxRetryAfter <= 3600 else { throw ValidationError("--llm-max-retry-after must be 0-3600 seconds") }
        guard (1...60_000).contains(coalesceMilliseconds) else { throw ValidationError("--llm-coalesce-ms must be 1-60000") }
        guard (1...10_000).contains(coalesceTokens) else { throw ValidationError("--llm-coalesce-tokens must be 1-10000") }
        if baseURL == nil, !allowedBaseURLs.isEmpty || model != nil || apiKeyFile != nil || notesFile != nil {
            throw ValidationError("--llm-allow-base-url, --llm-model, --llm-api-key-file and --llm-notes-file need --llm-base-url")
        }
        for url in [baseURL].compactMap({ $0 }) + allowedBaseURLs {
            do { _ = try LLMConfiguration.normalized(baseURL: url) } catch let e as LLMError {
                throw ValidationError("\(url): \(e.message)")
            }
        }
        if let model, model.isEmpty || model.utf8.count > 256 { throw ValidationError("--llm-model must be 1-256 bytes") }
    }

    /// The configuration, or `nil` without `--llm-base-url`; reads the key file or the environment.
    func configuration() throws -> LLMConfiguration? {
        guard let baseURL else { return nil }
        var key: APIKey?
        do {
            if let apiKeyFile {
                guard let text = try? String(contentsOfFile: apiKeyFile, encoding: .utf8) else {
                    throw ValidationError("--llm-api-key-file \(apiKeyFile) cannot be read as UTF-8 text")
                }
                key = try APIKey(text)
            } else if let env = ProcessInfo.processInfo.environment["STEPWISE_LLM_API_KEY"], !env.isEmpty {
                key = try APIKey(env)
            }
        } catch let error as LLMError {
            throw ValidationError(
                "the llm API key (\(apiKeyFile.map { "--llm-api-key-file \($0)" } ?? "STEPWISE_LLM_API_KEY")): \(error.message)")
        }
        var tools: [any Tool] = [CalculatorTool(), ClockTool()]
        if let notesFile { tools.append(NotesTool(path: notesFile)) }
        let configuration = LLMConfiguration(
            baseURL: baseURL, allowedBaseURLs: allowedBaseURLs, model: model, apiKey: key, tools: tools, maxHTTPAttempts: httpAttempts,
            maxRetryAfter: .milliseconds(Int64(maxRetryAfter * 1000)), coalesceInterval: .milliseconds(coalesceMilliseconds),
            coalesceTokens: coalesceTokens)
        do { try configuration.validate() } catch let e as LLMError { throw ValidationError(e.message) }
        return configuration
    }
}
