import AsyncHTTPClient
import Foundation

/// What a worker gives its `llm` agent (and the model-written quiz): the endpoint it may use, its
/// API key, the tools, and the retry and streaming policy. Sessions choose within it (``LLMOptions``).
public struct LLMConfiguration: Sendable {
    /// The base URL sessions use when they name none, e.g. `https://api.openai.com/v1`.
    public var baseURL: String
    /// Further base URLs a session may choose with the option `base_url`. The API key is sent
    /// only to ``baseURL`` and these: a session cannot send it elsewhere.
    public var allowedBaseURLs: [String]
    /// The model sessions use when they name none.
    public var model: String?
    /// The API key (`Authorization: Bearer`), or `nil` for an endpoint without one.
    public var apiKey: APIKey?
    /// The tools the model may call.
    public var tools: [any Tool]
    /// Attempts of one HTTP request that got 429 or 5xx or could not connect (≥ 1).
    public var maxHTTPAttempts: Int
    /// The first backoff between attempts; doubles each attempt, half of it random.
    public var initialBackoff: Duration
    /// The longest backoff between attempts.
    public var maxBackoff: Duration
    /// The longest `Retry-After` honoured; a longer one fails the attempt at once (the worker then
    /// retries the step with its own, longer backoff).
    public var maxRetryAfter: Duration
    /// Token events: at most one per this interval ...
    public var coalesceInterval: Duration
    /// ... or per this many tokens.
    public var coalesceTokens: Int
    /// The HTTP client (default: the process-wide shared one).
    public var httpClient: HTTPClient

    /// Creates a configuration.
    public init(
        baseURL: String, allowedBaseURLs: [String] = [], model: String? = nil, apiKey: APIKey? = nil, tools: [any Tool] = [],
        maxHTTPAttempts: Int = 4, initialBackoff: Duration = .milliseconds(500), maxBackoff: Duration = .seconds(8),
        maxRetryAfter: Duration = .seconds(30), coalesceInterval: Duration = .milliseconds(100), coalesceTokens: Int = 32,
        httpClient: HTTPClient = .shared
    ) {
        self.baseURL = baseURL
        self.allowedBaseURLs = allowedBaseURLs
        self.model = model
        self.apiKey = apiKey
        self.tools = tools
        self.maxHTTPAttempts = maxHTTPAttempts
        self.initialBackoff = initialBackoff
        self.maxBackoff = maxBackoff
        self.maxRetryAfter = maxRetryAfter
        self.coalesceInterval = coalesceInterval
        self.coalesceTokens = coalesceTokens
        self.httpClient = httpClient
    }

    /// Checks the values a worker was started with.
    ///
    /// - Throws: ``LLMError`` (``LLMError/Code/invalidOptions``) naming the first bad value.
    public func validate() throws {
        for url in [baseURL] + allowedBaseURLs { _ = try LLMConfiguration.normalized(baseURL: url) }
        guard (1...20).contains(maxHTTPAttempts) else { throw LLMError(.invalidOptions, "HTTP attempts must be 1-20") }
        guard coalesceTokens >= 1 else { throw LLMError(.invalidOptions, "coalesced tokens must be at least 1") }
        var names = Set<String>()
        for tool in tools where !names.insert(tool.name).inserted {
            throw LLMError(.invalidOptions, "two tools are named '\(tool.name)'")
        }
    }

    /// `url` without trailing slashes, checked to be an absolute `http` or `https` URL.
    ///
    /// - Throws: ``LLMError`` (``LLMError/Code/invalidOptions``).
    public static func normalized(baseURL url: String) throws -> String {
        var u = url.trimmingCharacters(in: .whitespaces)
        while u.hasSuffix("/") { u.removeLast() }
        let lower = u.lowercased()
        guard lower.hasPrefix("http://") || lower.hasPrefix("https://"), u.count > 8, u.count <= 2048,
            !u.contains(where: { $0.isWhitespace || $0 == "?" || $0 == "#" })
        else {
            throw LLMError(.invalidOptions, "base URL must be an absolute http(s) URL such as https://api.openai.com/v1")
        }
        return u
    }
}
