import AsyncHTTPClient
import Foundation
import Logging
import NIOCore
import NIOHTTP1
import StepwiseCore

/// Streams one answer from an OpenAI-compatible `POST <base>/chat/completions` with `stream: true`.
///
/// - 429 and 5xx answers, and failures to connect, are tried again up to
///   ``LLMConfiguration/maxHTTPAttempts`` times, after the `Retry-After` (or `retry-after-ms`)
///   the endpoint gave (up to ``LLMConfiguration/maxRetryAfter``), else after an exponential
///   backoff with jitter.
/// - Once the stream has started, a cut connection is not retried here: the step throws
///   (``LLMError/Code/streamInterrupted``) and the worker runs it again.
/// - Cancelling the calling task stops the request and closes the stream at once.
public struct ChatCompletionClient: Sendable {
    public let configuration: LLMConfiguration

    public init(configuration: LLMConfiguration) { self.configuration = configuration }

    /// The request body (JSON) for `request` under `options`.
    public func body(_ request: ChatRequest, options: LLMOptions) -> JSONValue {
        var messages: [JSONValue] = []
        if let system = options.system { messages.append(["role": "system", "content": .string(system)]) }
        messages += request.messages
        var body: [String: JSONValue] = [
            "model": .string(options.model), "messages": .array(messages), "stream": true,
            "stream_options": ["include_usage": true],
        ]
        if let t = options.temperature { body["temperature"] = .double(t) }
        if let n = options.maxTokens { body["max_tokens"] = .int(n) }
        if !request.tools.isEmpty {
            body["tools"] = .array(
                request.tools.map { tool in
                    [
                        "type": "function",
                        "function": ["name": .string(tool.name), "description": .string(tool.description), "parameters": tool.parameters],
                    ]
                })
            if request.forbidTools { body["tool_choice"] = "none" }
        }
        if let f = request.responseFormat { body["response_format"] = f }
        return .object(body)
    }

    /// Sends `request` and streams the answer, calling `onEvent` for each text piece and retry.
    ///
    /// - Throws: ``LLMError`` (see its codes), `CancellationError` when the task was cancelled,
    ///   or what `onEvent` throws.
    public func complete(
        _ request: ChatRequest, options: LLMOptions, logger: Logger, onEvent: (ChatStreamEvent) async throws -> Void
    ) async throws -> ChatCompletion {
        var http = HTTPClientRequest(url: options.baseURL + "/chat/completions")
        http.method = .POST
        http.headers.add(name: "Content-Type", value: "application/json")
        http.headers.add(name: "Accept", value: "text/event-stream")
        if let key = configuration.apiKey { http.headers.add(name: "Authorization", value: "Bearer " + key.secret) }
        http.body = .bytes(ByteBuffer(string: body(request, options: options).jsonString))
        let deadline = NIODeadline.now() + .milliseconds(options.stepTimeout.wholeMilliseconds + 5_000)

        var attempt = 0
        while true {
            attempt += 1
            try Task.checkCancellation()
            let response: HTTPClientResponse
            do {
                response = try await configuration.httpClient.execute(http, deadline: deadline, logger: nil)
            } catch {
                if Task.isCancelled { throw CancellationError() }
                logger.info("llm endpoint unreachable", metadata: [LogKeys.attempt: .stringConvertible(attempt)])
                guard attempt < configuration.maxHTTPAttempts else {
                    throw LLMError(.unreachable, "cannot reach \(options.baseURL) after \(attempt) attempts: \(type(of: error)) \(error)")
                }
                let delay = backoff(attempt: attempt)
                try await onEvent(.retrying(status: nil, delay: delay, attempt: attempt))
                try await Task.sleep(for: delay)
                continue
            }
            let status = Int(response.status.code)
            if status == 200 { return try await stream(response, logger: logger, onEvent: onEvent) }
            // The endpoint's own words, without the key (some quote part of a refused key).
            var detail = await errorMessage(response)
            if let key = configuration.apiKey { detail = detail.replacingOccurrences(of: key.secret, with: "***") }
            switch status {
            case 429, 500...599:
                let code: LLMError.Code = status == 429 ? .rateLimited : .serverError
                guard attempt < configuration.maxHTTPAttempts else {
                    throw LLMError(code, "HTTP \(status) on each of \(attempt) attempts: \(detail)")
                }
                var delay = backoff(attempt: attempt)
                if let asked = retryAfter(response.headers) {
                    guard asked <= configuration.maxRetryAfter else {
                        throw LLMError(
                            code,
                            "HTTP \(status) with Retry-After \(asked), longer than the \(configuration.maxRetryAfter) this client waits")
                    }
                    delay = asked
                }
                logger.info(
                    "llm endpoint asked to retry",
                    metadata: [
                        "stepwise.http_status": .stringConvertible(status),
                        "stepwise.retry_ms": .stringConvertible(delay.wholeMilliseconds),
                    ])
                try await onEvent(.retrying(status: status, delay: delay, attempt: attempt))
                try await Task.sleep(for: delay)
            case 401, 403:
                // Not the endpoint's message: providers quote part of the refused key in it.
                throw LLMError(
                    .missingAPIKey, "HTTP \(status): the endpoint refused the API key (--llm-api-key-file or STEPWISE_LLM_API_KEY)")
            default:
                throw LLMError(.http, "HTTP \(status): \(detail)")
            }
        }
    }

    private func stream(
        _ response: HTTPClientResponse, logger: Logger, onEvent: (ChatStreamEvent) async throws -> Void
    ) async throws -> ChatCompletion {
        var parser = ServerSentEventParser()
        var accumulator = ChatStreamAccumulator()
        var done = false
        do {
            for try await buffer in response.body {
                // After [DONE] the rest is read (and ignored) so the connection can be reused.
                guard !done else { continue }
                for data in try parser.feed(buffer.readableBytesView) {
                    if data == "[DONE]" {
                        done = true
                        break
                    }
                    if let text = try accumulator.apply(data) { try await onEvent(.content(text)) }
                }
            }
        } catch let error as LLMError {
            throw error
        } catch {
            if Task.isCancelled || error is CancellationError { throw CancellationError() }
            if error is StepwiseError { throw error }
            throw LLMError(
                .streamInterrupted,
                "the stream broke after \(accumulator.completion.chunks) chunks, before data: [DONE] (\(type(of: error)): \(error))")
        }
        if Task.isCancelled { throw CancellationError() }
        guard done else {
            throw LLMError(.streamInterrupted, "the stream ended after \(accumulator.completion.chunks) chunks without data: [DONE]")
        }
        return accumulator.completion
    }

    /// The `error.message` of an error body (bounded), or a note that there was none.
    private func errorMessage(_ response: HTTPClientResponse) async -> String {
        guard let buffer = try? await response.body.collect(upTo: 64 << 10) else { return "(no readable body)" }
        let text = String(buffer: buffer)
        if let json = try? JSONValue(parsing: text), let message = json["error"]?["message"]?.stringValue {
            return String(message.prefix(300))
        }
        return text.isEmpty ? "(empty body)" : "(body of \(text.utf8.count) bytes is not an OpenAI error object)"
    }

    /// `retry-after-ms`, else `Retry-After` in seconds or as an HTTP date.
    func retryAfter(_ headers: HTTPHeaders) -> Duration? {
        if let ms = headers.first(name: "retry-after-ms").flatMap(Double.init), ms >= 0 { return .milliseconds(Int64(ms)) }
        guard let value = headers.first(name: "retry-after")?.trimmingCharacters(in: .whitespaces) else { return nil }
        if let s = Double(value), s >= 0 { return .milliseconds(Int64(s * 1000)) }
        let format = DateFormatter()
        format.locale = Locale(identifier: "en_US_POSIX")
        format.timeZone = TimeZone(identifier: "GMT")
        format.dateFormat = "EEE, dd MMM yyyy HH:mm:ss zzz"
        guard let date = format.date(from: value) else { return nil }
        return .milliseconds(Int64(max(0, date.timeIntervalSinceNow) * 1000))
    }

    /// `initialBackoff × 2^(attempt-1)`, capped at `maxBackoff`, the upper half random.
    func backoff(attempt: Int) -> Duration {
        let base = configuration.initialBackoff.wholeMilliseconds * (1 << min(attempt - 1, 20))
        let capped = min(base, configuration.maxBackoff.wholeMilliseconds)
        return .milliseconds(capped / 2 + Int64.random(in: 0...max(0, capped / 2)))
    }
}

extension Duration {
    /// Whole milliseconds.
    var wholeMilliseconds: Int64 { components.seconds * 1000 + components.attoseconds / 1_000_000_000_000_000 }
}
