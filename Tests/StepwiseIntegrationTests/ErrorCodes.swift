import StepwiseCore

/// The code of the ``StepwiseError`` that `body` throws; nil when it throws nothing or another
/// error. `#expect(await stepwiseErrorCode { … } == .code)` fails on a wrong code, not only on no error.
func stepwiseErrorCode(_ body: () async throws -> Void) async -> StepwiseError.Code? {
    do {
        try await body()
        return nil
    } catch let e as StepwiseError {
        return e.code
    } catch {
        return nil
    }
}

/// The synchronous form of ``stepwiseErrorCode(_:)``.
func syncStepwiseErrorCode(_ body: () throws -> Void) -> StepwiseError.Code? {
    do {
        try body()
        return nil
    } catch let e as StepwiseError {
        return e.code
    } catch {
        return nil
    }
}
