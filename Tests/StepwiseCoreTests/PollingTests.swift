import StepwiseCore
import Testing

@Suite("poll(timeout:interval:until:)", .timeLimit(.minutes(1)))
struct PollingTests {
    @Test func returnsTrueAsSoonAsTheConditionHolds() async {
        var calls = 0
        let ok = await poll(timeout: .seconds(10), interval: .milliseconds(1)) {
            calls += 1
            return calls == 3
        }
        #expect(ok)
        #expect(calls == 3)
    }

    @Test func givesUpAtTheDeadlineAfterABoundedNumberOfChecks() async {
        var calls = 0
        let start = ContinuousClock.now
        let ok = await poll(timeout: .milliseconds(200), interval: .milliseconds(50)) {
            calls += 1
            return false
        }
        #expect(!ok)
        #expect(ContinuousClock.now - start >= .milliseconds(200))
        #expect(calls >= 2 && calls <= 6, "about timeout / interval + 1 checks, got \(calls)")
    }

    @Test func passesErrorsThrough() async {
        struct Boom: Error {}
        await #expect(throws: Boom.self) {
            _ = try await poll(timeout: .seconds(1)) { throw Boom() }
        }
    }
}
