import HTTPTypes
import Hummingbird
import NIOCore
import StepwiseCore
import StepwiseRedis

/// An error the gateway answers with: an HTTP status and a JSON body
/// `{"error": {"code": "...", "message": "..."}}` whose `code` is stable.
public struct GatewayError: Error, Sendable, CustomStringConvertible {
    public var status: HTTPResponse.Status
    public var code: String
    public var message: String
    /// Extra response headers (`Retry-After`, `WWW-Authenticate`).
    public var headers: HTTPFields

    public init(_ status: HTTPResponse.Status, _ code: String, _ message: String, headers: HTTPFields = [:]) {
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers
    }

    public var description: String { "\(status.code) \(code): \(message)" }

    static func unauthorized(_ code: String, _ message: String) -> GatewayError {
        GatewayError(.unauthorized, code, message, headers: [.wwwAuthenticate: "Bearer"])
    }
    static let notFound = GatewayError(.notFound, "session_not_found", "no such session")
    static func badRequest(_ code: String, _ message: String) -> GatewayError { GatewayError(.badRequest, code, message) }

    /// The JSON body.
    var body: JSONValue { ["error": ["code": .string(code), "message": .string(message)]] }

    /// Maps any error a handler throws to the answer: engine codes, Redis failures, Hummingbird's
    /// own HTTP errors; anything else is a 500 with no detail.
    static func from(_ error: any Error) -> GatewayError {
        switch error {
        case let e as GatewayError: return e
        case let e as StepwiseError:
            switch e.code {
            case .sessionNotFound, .notOwner: return .notFound
            case .agentMismatch: return GatewayError(.conflict, "agent_mismatch", e.message)
            case .sessionCancelled: return GatewayError(.conflict, "session_cancelled", e.message)
            case .inputTooLarge: return GatewayError(.contentTooLarge, "input_too_large", e.message)
            case .unknownAgent: return GatewayError(.badRequest, "unknown_agent", e.message)
            case .invalidSessionID: return GatewayError(.badRequest, "invalid_session_id", e.message)
            case .invalidJSON: return GatewayError(.badRequest, "invalid_json", e.message)
            case .invalidOptions: return GatewayError(.badRequest, "invalid_options", e.message)
            case .invalidOwner: return GatewayError(.badRequest, "invalid_owner", e.message)
            case .invalidArgument, .invalidConfiguration: return GatewayError(.badRequest, "invalid_argument", e.message)
            case .keyUnavailable, .sessionEncrypted:
                return GatewayError(
                    .serviceUnavailable, "key_unavailable",
                    "the session's data is encrypted under a key this gateway does not have: its keyring must be updated")
            case .sealedDataInvalid:
                return GatewayError(.internalServerError, "sealed_data_invalid", "the session's encrypted data does not open")
            default: return GatewayError(.internalServerError, "internal_error", "the request failed")
            }
        case let e as RedisServerError where e.prefix == "OOM":
            return GatewayError(.serviceUnavailable, "redis_full", "Redis is out of memory: try again later", headers: [.retryAfter: "5"])
        case is RedisError:
            return GatewayError(
                .serviceUnavailable, "redis_unavailable", "Redis is unreachable: try again later", headers: [.retryAfter: "2"])
        case is NIOTooManyBytesError:
            return GatewayError(.contentTooLarge, "body_too_large", "the request body is over the limit")
        case let e as HTTPError:
            switch e.status {
            case .contentTooLarge: return GatewayError(.contentTooLarge, "body_too_large", "the request body is over the limit")
            case .notFound: return GatewayError(.notFound, "not_found", "no such endpoint")
            case .methodNotAllowed: return GatewayError(.methodNotAllowed, "method_not_allowed", "method not allowed here")
            default: return GatewayError(e.status, "http_error", e.body ?? e.status.reasonPhrase)
            }
        default:
            return GatewayError(.internalServerError, "internal_error", "the request failed")
        }
    }
}
