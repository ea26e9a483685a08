/// Runs `body`, cancelling it and throwing ``LLMError`` (``LLMError/Code/timedOut``) when it takes
/// longer than `timeout`. Cancelling the caller cancels `body` too.
func withStepTimeout<T: Sendable>(_ timeout: Duration, _ body: @escaping @Sendable () async throws -> T) async throws -> T {
    try await withThrowingTaskGroup(of: T?.self) { group in
        group.addTask { try await body() }
        group.addTask {
            try await Task.sleep(for: timeout)
            return nil
        }
        defer { group.cancelAll() }
        guard let first = try await group.next() else { throw CancellationError() }
        guard let value = first else {
            throw LLMError(.timedOut, "the step took longer than its step_timeout of \(Double(timeout.wholeMilliseconds) / 1000) s")
        }
        return value
    }
}
