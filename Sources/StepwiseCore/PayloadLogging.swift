import Logging

/// What a worker may write to its logs about session data.
///
/// By default nothing: inputs, states, results, progress data and the text of errors a step
/// throws (which may quote any of them) never reach a log line at any level; logs name the job,
/// session, step, attempt and the error's type only. For debugging, ``enabled`` (the worker's
/// `--log-payloads`) wraps every agent in one that logs each step's input, state, progress data
/// and result at `info`, with the values of ``maskedFields`` replaced by `"***"`, and the full
/// text of what a step throws.
public struct PayloadLogging: Sendable, Hashable {
    /// Object keys whose values are masked when their lowercased name contains one of these.
    public static let defaultMaskedFields = [
        "password", "passwd", "secret", "token", "api_key", "apikey", "private_key", "authorization", "cookie",
        "ticket", "credential",
    ]

    /// Whether payloads are logged at all.
    public var enabled: Bool
    /// Lowercased parts of object keys whose values are masked.
    public var maskedFields: [String]

    /// Creates a setting.
    ///
    /// - Parameters:
    ///   - enabled: log payloads (masked); `false` is the default and logs none.
    ///   - maskedFields: an object key whose lowercased name contains one of these (compared
    ///     lowercased) has its value, whatever it is, logged as `"***"`.
    public init(enabled: Bool = false, maskedFields: [String] = PayloadLogging.defaultMaskedFields) {
        self.enabled = enabled
        self.maskedFields = maskedFields.map { $0.lowercased() }.filter { !$0.isEmpty }
    }

    /// `value` with the value of every object key matching ``maskedFields`` replaced by `"***"`,
    /// at any depth.
    public func masked(_ value: JSONValue) -> JSONValue {
        switch value {
        case .object(let fields):
            var out: [String: JSONValue] = [:]
            for (key, v) in fields {
                let lower = key.lowercased()
                out[key] = maskedFields.contains(where: { lower.contains($0) }) ? .string("***") : masked(v)
            }
            return .object(out)
        case .array(let items):
            return .array(items.map(masked))
        default:
            return value
        }
    }

    /// How a log line names an error a step threw, without its text (which may quote session data).
    ///
    /// Engine and Redis errors are the worker's own words and are shown whole; an agent's error is
    /// shown as its type only. `stepwise dead show` (and the `step.failed`/`step.retrying` events)
    /// keep the full text, in Redis, beside the session's other data.
    public static func loggable(stepError error: any Error) -> Logger.MetadataValue {
        .string("\(String(reflecting: type(of: error))) (text withheld: it may quote session data; see --log-payloads)")
    }
}

/// An agent that logs each step's payloads, masked, around the agent it wraps (`--log-payloads`).
struct PayloadLoggingAgent: Agent {
    let base: any Agent
    let logging: PayloadLogging

    var name: String { base.name }
    var maxAttempts: Int? { base.maxAttempts }
    func initialState(options: JSONValue) -> JSONValue { base.initialState(options: options) }

    func step(state: JSONValue, input: JSONValue, context: StepContext) async throws -> StepResult {
        let logger = context.logger
        logger.info(
            "step payload (--log-payloads)",
            metadata: [
                "stepwise.input": .string(logging.masked(input).jsonString),
                "stepwise.state": .string(logging.masked(state).jsonString),
            ])
        // Progress events too: their data is logged masked, then published as usual.
        let logging = self.logging
        let publish = context.emitter
        let logged = StepContext(
            sessionID: context.sessionID, jobID: context.jobID, step: context.step, attempt: context.attempt,
            options: context.options, logger: logger,
            emitter: { message, data in
                logger.info(
                    "step progress (--log-payloads)",
                    metadata: ["stepwise.message": .string(message), "stepwise.data": .string(logging.masked(data).jsonString)])
                try await publish(message, data)
            })
        do {
            let result = try await base.step(state: state, input: input, context: logged)
            let outcome: String
            switch result.outcome {
            case .next(let v): outcome = "next " + logging.masked(v).jsonString
            case .waitForInput: outcome = "wait" + (result.reply.map { " " + logging.masked($0).jsonString } ?? "")
            case .done(let v): outcome = "done " + logging.masked(v).jsonString
            case .fail(let reason): outcome = "fail " + reason
            }
            logger.info(
                "step result (--log-payloads)",
                metadata: [
                    "stepwise.result": .string(outcome), "stepwise.state": .string(logging.masked(result.state).jsonString),
                ])
            return result
        } catch {
            logger.info("step threw (--log-payloads)", metadata: [LogKeys.error: .string("\(error)")])
            throw error
        }
    }
}

extension AgentRegistry {
    /// This registry with every agent wrapped to log its payloads as `logging` says; unchanged
    /// when payload logging is off.
    public func loggingPayloads(_ logging: PayloadLogging) -> AgentRegistry {
        guard logging.enabled else { return self }
        return AgentRegistry(names.compactMap { self[$0] }.map { PayloadLoggingAgent(base: $0, logging: logging) })
    }
}
