/// Polls `condition` every `interval` until it returns `true` or `timeout` has passed.
///
/// The one bounded wait used by the load test and the test suites: it never sleeps blindly past
/// the deadline, and it checks the condition one last time at the deadline, so a condition that
/// became true during the final interval is not missed. A cancelled task stops waiting at once and
/// gets the condition's current value.
///
/// ```swift
/// let drained = try await poll(timeout: .seconds(30)) { try await queueDepth() == 0 }
/// ```
///
/// - Parameters:
///   - timeout: The longest time to keep polling.
///   - interval: The pause between two evaluations (default 50 ms).
///   - condition: Evaluated at most `timeout / interval + 2` times; it may capture and mutate
///     local state (it is not escaping).
/// - Returns: Whether `condition` returned `true` before the deadline (or at the last check).
/// - Throws: Whatever `condition` throws; polling stops at the first error.
public func poll(
    timeout: Duration, interval: Duration = .milliseconds(50), until condition: () async throws -> Bool
) async rethrows -> Bool {
    let clock = ContinuousClock()
    let deadline = clock.now + timeout
    while clock.now < deadline {
        if try await condition() { return true }
        if Task.isCancelled { break }
        let pause = min(interval, deadline - clock.now)
        if pause > .zero { try? await Task.sleep(for: pause) }
    }
    return try await condition()
}
