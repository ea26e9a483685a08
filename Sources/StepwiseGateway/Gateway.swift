import Crypto
import Foundation
import HTTPTypes
import Hummingbird
import HummingbirdWebSocket
import Logging
import NIOCore
import NIOWebSocket
import StepwiseCore
import StepwiseRedis
import Synchronization

/// The HTTP API of Stepwise: sessions, steps and live events for authenticated owners.
///
/// The gateway keeps no state of its own: everything is in Redis, so any number of gateways can
/// run next to the workers. Add its routes to a Hummingbird router with ``addRoutes(to:)`` and run
/// its ``hub`` as a service next to the application.
///
/// - Important: tokens, tickets and the signing key never reach a log line: request logs name the
///   method and the path without its query.
public struct Gateway: Sendable {
    /// Gateway settings.
    public struct Configuration: Sendable {
        /// Agents a new session may run (the gateway links no agent code).
        public var agentNames: Set<String>
        /// Largest accepted request body, in bytes.
        public var maxBodyBytes: Int
        /// Largest step input, in bytes of its JSON text.
        public var maxInputBytes: Int
        /// How long a stream ticket is valid.
        public var ticketTTL: Duration
        /// Open event streams (SSE and WebSocket) per owner on this gateway; more get 429.
        public var maxSubscriptionsPerOwner: Int
        /// The idle TTL of a session created without `ttlSeconds`.
        public var sessionTTL: Duration

        public init(
            agentNames: Set<String>, maxBodyBytes: Int = 320 * 1024, maxInputBytes: Int = 256 * 1024,
            ticketTTL: Duration = .seconds(60), maxSubscriptionsPerOwner: Int = 50, sessionTTL: Duration = .seconds(30 * 60)
        ) {
            self.agentNames = agentNames
            self.maxBodyBytes = maxBodyBytes
            self.maxInputBytes = maxInputBytes
            self.ticketTTL = ticketTTL
            self.maxSubscriptionsPerOwner = maxSubscriptionsPerOwner
            self.sessionTTL = sessionTTL
        }
    }

    public let configuration: Configuration
    public let tokens: TokenAuthority
    /// The subscription hub; run it as a service (it is one).
    public let hub: SubscriptionHub
    let dispatcher: Dispatcher
    let sessions: SessionStore
    let store: GatewayStore
    let feed: EventFeed
    let logger: Logger
    let subscriptions = SubscriptionCounter()

    /// Creates a gateway.
    ///
    /// - Parameters:
    ///   - connection: for short commands (submits, reads, catch-up reads, `CLIENT UNBLOCK`).
    ///   - hub: the subscription hub, which has its own blocking connections.
    public init(
        connection: RedisConnection, keys: KeySpace, tokens: TokenAuthority, hub: SubscriptionHub,
        configuration: Configuration, logger: Logger, sealer: (any SessionSealer)? = nil
    ) {
        self.configuration = configuration
        self.tokens = tokens
        self.hub = hub
        self.logger = logger
        dispatcher = Dispatcher(
            connection: connection, keys: keys, agentNames: configuration.agentNames,
            configuration: .init(maxInputBytes: configuration.maxInputBytes, sessionTTL: configuration.sessionTTL), sealer: sealer)
        sessions = SessionStore(connection: connection, keys: keys, sealer: sealer)
        store = GatewayStore(connection: connection, keys: keys, sealer: sealer)
        feed = EventFeed(hub: hub, store: store)
    }

    /// Adds the API (`/v1/...`), `/openapi.json` and the web page (`/`) to `router`, with a
    /// middleware that turns every error into a JSON error body.
    public func addRoutes<Context: WebSocketRequestContext>(to router: Router<Context>) {
        router.add(middleware: ErrorMiddleware(logger: logger))
        router.get("/") { _, _ in Self.page }
        router.get("/openapi.json") { _, _ in Self.json(.ok, raw: OpenAPIDocument.text) }
        router.get("/healthz") { _, _ in
            Self.json(.ok, ["ok": true, "subscribers": .int(hub.subscriberCount), "streams": .int(hub.followedStreams)])
        }
        router.post("/v1/sessions") { request, _ in try await createSession(request) }
        router.get("/v1/sessions") { request, _ in try await listSessions(request) }
        router.get("/v1/sessions/{id}") { request, context in
            let (_, snapshot) = try await owned(request, context.parameters)
            return Self.json(.ok, Self.render(snapshot))
        }
        router.delete("/v1/sessions/{id}") { request, context in try await forget(request, context.parameters) }
        router.post("/v1/sessions/{id}/steps") { request, context in try await submitStep(request, context.parameters) }
        router.post("/v1/sessions/{id}/cancel") { request, context in try await cancel(request, context.parameters) }
        router.post("/v1/sessions/{id}/touch") { request, context in try await touch(request, context.parameters) }
        router.post("/v1/sessions/{id}/tickets") { request, context in
            let (claims, snapshot) = try await owned(request, context.parameters)
            let t = tokens.ticket(for: claims, session: snapshot.id, ttl: configuration.ticketTTL)
            return Self.json(.created, ["ticket": .string(t.ticket), "expiresAt": .int(t.expiresAt)])
        }
        router.get("/v1/sessions/{id}/events") { request, context in try await events(request, context.parameters) }
        router.ws("/v1/sessions/{id}/ws") { request, context in
            _ = try await owned(request, context.parameters, allowTicket: true)
            return .upgrade([:])
        } onUpgrade: { inbound, outbound, context in
            try await webSocket(
                inbound: inbound, outbound: outbound, request: context.request, parameters: context.requestContext.parameters)
        }
    }

    // MARK: - Authentication

    /// The caller's claims: a bearer token, or (for the event stream) a ticket for `session`.
    func authenticate(_ request: Request, ticketFor session: SessionID? = nil) async throws -> TokenAuthority.Claims {
        let claims: TokenAuthority.Claims
        if let header = request.headers[.authorization] {
            guard header.hasPrefix("Bearer "), header.count > 7 else {
                throw GatewayError.unauthorized("invalid_token", "send 'Authorization: Bearer <token>'")
            }
            do {
                claims = try tokens.verifyToken(String(header.dropFirst(7)))
            } catch .expired {
                throw GatewayError.unauthorized("token_expired", "the token has expired")
            } catch {
                throw GatewayError.unauthorized("invalid_token", "the token is not valid")
            }
        } else if let session, let ticket = request.uri.queryParameters.get("ticket") {
            do {
                claims = try tokens.verifyTicket(ticket, session: session)
            } catch .expired {
                throw GatewayError.unauthorized("ticket_expired", "the ticket has expired: get a new one")
            } catch {
                throw GatewayError.unauthorized("invalid_ticket", "the ticket is not valid for this session")
            }
        } else {
            throw GatewayError.unauthorized("missing_token", "send 'Authorization: Bearer <token>'")
        }
        if try await store.isRevoked(tokenID: claims.tokenID) {
            throw GatewayError.unauthorized("token_revoked", "the token was revoked")
        }
        return claims
    }

    static func sessionID(_ parameters: Parameters) throws -> SessionID {
        guard let raw = parameters.get("id"), let id = try? SessionID(raw) else {
            throw GatewayError.badRequest("invalid_session_id", "a session id is 1-64 characters from A-Z a-z 0-9 _ -")
        }
        return id
    }

    /// The caller's claims and the session, which must be the caller's: another owner's session
    /// is a 404, like a missing one (no existence leak).
    func owned(_ request: Request, _ parameters: Parameters, allowTicket: Bool = false) async throws -> (
        TokenAuthority.Claims, SessionSnapshot
    ) {
        let id = try Self.sessionID(parameters)
        let claims = try await authenticate(request, ticketFor: allowTicket ? id : nil)
        let found: SessionSnapshot?
        do {
            found = try await sessions.session(id)
        } catch let e as StepwiseError where e.code == .keyUnavailable || e.code == .sealedDataInvalid {
            // Another owner's session is a 404 whatever its key: no existence leak.
            let owner = try await sessions.connection.send(["HGET", RedisArgument(sessions.keys.session(id)), "owner"]).string
            guard owner == claims.owner else { throw GatewayError.notFound }
            throw e
        }
        guard let snapshot = found, snapshot.owner == claims.owner else { throw GatewayError.notFound }
        return (claims, snapshot)
    }

    // MARK: - Bodies

    func body(_ request: Request, required: Bool) async throws -> [String: JSONValue] {
        var request = request
        let buffer = try await request.collectBody(upTo: configuration.maxBodyBytes)
        if buffer.readableBytes == 0 {
            if required { throw GatewayError.badRequest("invalid_json", "the request needs a JSON object body") }
            return [:]
        }
        guard let value = try? JSONValue(parsing: Array(buffer.readableBytesView)), let object = value.objectValue else {
            throw GatewayError.badRequest("invalid_json", "the body must be a JSON object")
        }
        return object
    }

    static func ttl(_ body: [String: JSONValue]) throws -> Duration? {
        guard let v = body["ttlSeconds"] else { return nil }
        guard let n = v.intValue, n == 0 || (1...30 * 86400).contains(n) else {
            throw GatewayError.badRequest("invalid_argument", "ttlSeconds must be 0 (never expire) or 1 to 2592000")
        }
        return .seconds(n)
    }

    static func idempotencyKey(_ request: Request) throws -> String? {
        guard let key = request.headers[HTTPField.Name("Idempotency-Key")!] else { return nil }
        guard (1...200).contains(key.utf8.count) else {
            throw GatewayError.badRequest("invalid_idempotency_key", "Idempotency-Key must be 1-200 bytes")
        }
        return key
    }

    // MARK: - Handlers

    func createSession(_ request: Request) async throws -> Response {
        let claims = try await authenticate(request)
        let body = try await body(request, required: true)
        guard let agent = body["agent"]?.stringValue, !agent.isEmpty else {
            throw GatewayError.badRequest("invalid_argument", "'agent' (a string) is required")
        }
        guard configuration.agentNames.contains(agent) else {
            throw GatewayError.badRequest(
                "unknown_agent",
                "unknown agent '\(agent.prefix(64))': known agents are \(configuration.agentNames.sorted().joined(separator: ", "))")
        }
        if let options = body["options"], options.objectValue == nil {
            throw GatewayError.badRequest("invalid_argument", "'options' must be a JSON object")
        }
        let key = try Self.idempotencyKey(request)
        // With an Idempotency-Key the session id is derived from the owner and the key, so a
        // retried create finds the first one; without, it is random.
        let id: SessionID
        if let key {
            let digest = SHA256.hash(data: Array("\(claims.owner)\u{0}\(key)".utf8))
            id = try SessionID("g" + digest.prefix(12).map { String(format: "%02x", $0) }.joined())
        } else {
            id = try SessionID("g" + TokenAuthority.randomID().prefix(24))
        }
        let receipt = try await dispatcher.submit(
            Submission(
                session: id, agent: agent, owner: claims.owner, input: body["input"] ?? .null, options: body["options"],
                idempotencyKey: key, ttl: try Self.ttl(body)))
        if receipt.enqueued { try await store.addOwned(id, owner: claims.owner, now: Int64(Date().timeIntervalSince1970 * 1000)) }
        var response = Self.json(
            receipt.enqueued ? .created : .ok,
            ["session": .string(id.rawValue), "job": .string(receipt.jobID), "enqueued": .bool(receipt.enqueued)])
        response.headers[.location] = "/v1/sessions/\(id.rawValue)"
        return response
    }

    func listSessions(_ request: Request) async throws -> Response {
        let claims = try await authenticate(request)
        var limit = 50
        if let text = request.uri.queryParameters.get("limit") {
            guard let n = Int(text), (1...200).contains(n) else {
                throw GatewayError.badRequest("invalid_argument", "limit must be an integer from 1 to 200")
            }
            limit = n
        }
        let list = try await store.owned(by: claims.owner, limit: limit)
        return Self.json(.ok, ["sessions": .array(list.map { Self.render($0, withState: false) })])
    }

    func submitStep(_ request: Request, _ parameters: Parameters) async throws -> Response {
        let (claims, snapshot) = try await owned(request, parameters)
        let body = try await body(request, required: true)
        guard body.keys.allSatisfy({ $0 == "input" || $0 == "ttlSeconds" }) else {
            throw GatewayError.badRequest("invalid_argument", "a step takes 'input' and 'ttlSeconds' only")
        }
        let receipt = try await dispatcher.submit(
            Submission(
                session: snapshot.id, owner: claims.owner, input: body["input"] ?? .null,
                idempotencyKey: try Self.idempotencyKey(request), ttl: try Self.ttl(body)))
        return Self.json(.accepted, ["job": .string(receipt.jobID), "enqueued": .bool(receipt.enqueued)])
    }

    func cancel(_ request: Request, _ parameters: Parameters) async throws -> Response {
        let (_, snapshot) = try await owned(request, parameters)
        let body = try await body(request, required: false)
        let reason = body["reason"]?.stringValue ?? "cancelled by the owner"
        guard reason.utf8.count <= 500 else { throw GatewayError.badRequest("invalid_argument", "reason is over 500 bytes") }
        let result = try await dispatcher.cancel(snapshot.id, reason: reason)
        return Self.json(
            .ok,
            [
                "cancelled": .bool(result != nil), "dropped": .int(result?.dropped ?? 0),
                "running": result?.running.map { .string($0) } ?? .null,
            ])
    }

    /// `DELETE /v1/sessions/{id}`: crypto-shreds the caller's session (its data key and all of its
    /// keys). Works without reading the session, so a session whose key is gone can still be deleted.
    func forget(_ request: Request, _ parameters: Parameters) async throws -> Response {
        let id = try Self.sessionID(parameters)
        let claims = try await authenticate(request)
        guard let receipt = try await dispatcher.forget(id, owner: claims.owner) else { throw GatewayError.notFound }
        _ = try? await sessions.connection.send([
            "ZREM", RedisArgument(sessions.keys.ownerSessions(claims.owner)), RedisArgument(id.rawValue),
        ])
        return Self.json(.ok, ["forgotten": true, "encrypted": .bool(receipt.encrypted)])
    }

    func touch(_ request: Request, _ parameters: Parameters) async throws -> Response {
        let (_, snapshot) = try await owned(request, parameters)
        let body = try await body(request, required: false)
        let expires = try await dispatcher.touch(snapshot.id, ttl: try Self.ttl(body))
        return Self.json(.ok, ["expiresAt": expires.map { .int($0) } ?? .null])
    }

    static func resumePoint(_ request: Request) throws -> EventID {
        let header = request.headers[HTTPField.Name("Last-Event-ID")!]
        let query = request.uri.queryParameters.get("after")
        guard let text = header ?? query else { return .zero }
        guard let id = EventID(text) else {
            throw GatewayError.badRequest("invalid_event_id", "Last-Event-ID / after must be a stream entry id like 1764079000123-0")
        }
        return id
    }

    func events(_ request: Request, _ parameters: Parameters) async throws -> Response {
        let wantsStream = request.headers[.accept]?.contains("text/event-stream") ?? false
        let (claims, snapshot) = try await owned(request, parameters, allowTicket: wantsStream)
        let after = try Self.resumePoint(request)
        // `stay=true`: keep streaming after `end` (a dashboard that outlives one exchange).
        let stay: Bool
        switch request.uri.queryParameters.get("stay") {
        case nil, "false": stay = false
        case "true": stay = true
        default: throw GatewayError.badRequest("invalid_argument", "stay must be true or false")
        }
        guard wantsStream else {
            var events: [JSONValue] = []
            var reset: JSONValue = .null
            try await feed.run(session: snapshot.id, snapshot: snapshot, after: after, follow: false) { message in
                switch message {
                case .event(let e): events.append(e.json)
                case .reset(let reason, let s, let from):
                    reset = ["reason": .string(reason), "session": Self.render(s), "resumeFrom": .string(from.description)]
                default: break
                }
            }
            return Self.json(.ok, ["events": .array(events), "reset": reset])
        }
        let lease = try subscriptions.acquire(claims.owner, limit: configuration.maxSubscriptionsPerOwner)
        let feed = self.feed
        let headers: HTTPFields = [
            .contentType: "text/event-stream", .cacheControl: "no-cache", HTTPField.Name("X-Accel-Buffering")!: "no",
        ]
        return Response(
            status: .ok, headers: headers,
            body: ResponseBody { writer in
                defer { lease.release() }
                try await writer.write(ByteBuffer(string: "retry: 2000\n\n"))
                _ = try? await request.body.consumeWithCancellationOnInboundClose { _ in
                    try await feed.run(session: snapshot.id, snapshot: snapshot, after: after, stopAtEnd: !stay) { message in
                        try await writer.write(ByteBuffer(string: Self.sse(message)))
                    }
                }
                try? await writer.finish(nil)
            })
    }

    func webSocket(inbound: WebSocketInboundStream, outbound: WebSocketOutboundWriter, request: Request, parameters: Parameters)
        async throws
    {
        let claims: TokenAuthority.Claims
        let snapshot: SessionSnapshot
        do {
            (claims, snapshot) = try await owned(request, parameters, allowTicket: true)
        } catch {
            try await outbound.close(.policyViolation, reason: GatewayError.from(error).code)
            return
        }
        let lease: SubscriptionCounter.Lease
        do {
            lease = try subscriptions.acquire(claims.owner, limit: configuration.maxSubscriptionsPerOwner)
        } catch {
            try await outbound.writeTextMessage(Self.wsError(GatewayError.from(error)).jsonString)
            try await outbound.close(.policyViolation, reason: "too_many_subscriptions")
            return
        }
        defer { lease.release() }
        let after: EventID
        if let text = request.uri.queryParameters.get("after") {
            guard let id = EventID(text) else {
                try await outbound.writeTextMessage(
                    Self.wsError(GatewayError.badRequest("invalid_event_id", "after must be a stream entry id")).jsonString)
                try await outbound.close(.normalClosure, reason: nil)
                return
            }
            after = id
        } else {
            after = .zero
        }
        let feed = self.feed
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask {
                try await feed.run(session: snapshot.id, snapshot: snapshot, after: after, stopAtEnd: false) { message in
                    if let text = Self.wsMessage(message) { try await outbound.writeTextMessage(text) }
                }
            }
            group.addTask {
                for try await message in inbound.messages(maxSize: configuration.maxBodyBytes) {
                    guard case .text(let text) = message else {
                        try await outbound.writeTextMessage(Self.wsError(.badRequest("invalid_json", "send text messages")).jsonString)
                        continue
                    }
                    let reply = await self.wsOperation(text, claims: claims, session: snapshot.id)
                    try await outbound.writeTextMessage(reply.jsonString)
                }
            }
            // Either side ending (the feed ended, or the client closed) ends the socket.
            _ = try await group.next()
            group.cancelAll()
        }
    }

    func wsOperation(_ text: String, claims: TokenAuthority.Claims, session: SessionID) async -> JSONValue {
        var requestID: JSONValue = .null
        do {
            guard let value = try? JSONValue(parsing: text), let o = value.objectValue, let op = o["op"]?.stringValue else {
                throw GatewayError.badRequest("invalid_json", "send {\"op\": \"submit\"|\"cancel\"|\"touch\", ...}")
            }
            requestID = o["id"] ?? .null
            // Revocation and the session's owner are checked again for every operation.
            if try await store.isRevoked(tokenID: claims.tokenID) {
                throw GatewayError.unauthorized("token_revoked", "the token was revoked")
            }
            guard let s = try await sessions.session(session), s.owner == claims.owner else { throw GatewayError.notFound }
            switch op {
            case "submit":
                if let key = o["idempotencyKey"]?.stringValue, !(1...200).contains(key.utf8.count) {
                    throw GatewayError.badRequest("invalid_idempotency_key", "idempotencyKey must be 1-200 bytes")
                }
                let receipt = try await dispatcher.submit(
                    Submission(
                        session: session, owner: claims.owner, input: o["input"] ?? .null,
                        idempotencyKey: o["idempotencyKey"]?.stringValue))
                return ["type": "submitted", "id": requestID, "job": .string(receipt.jobID), "enqueued": .bool(receipt.enqueued)]
            case "cancel":
                let result = try await dispatcher.cancel(session, reason: o["reason"]?.stringValue ?? "cancelled by the owner")
                return ["type": "cancelled", "id": requestID, "cancelled": .bool(result != nil)]
            case "touch":
                let expires = try await dispatcher.touch(session)
                return ["type": "touched", "id": requestID, "expiresAt": expires.map { .int($0) } ?? .null]
            default:
                throw GatewayError.badRequest("invalid_argument", "op must be submit, cancel or touch")
            }
        } catch {
            var e = Self.wsError(GatewayError.from(error))
            if case .object(var o) = e {
                o["id"] = requestID
                e = .object(o)
            }
            return e
        }
    }

    // MARK: - Rendering

    static func render(_ s: SessionSnapshot, withState: Bool = true) -> JSONValue {
        var o: [String: JSONValue] = [
            "session": .string(s.id.rawValue), "agent": .string(s.agent), "status": .string(s.status.rawValue),
            "version": .int(s.version), "steps": .int(s.steps), "queued": .int(s.queued), "created": .int(s.createdAt),
            "lastActive": .int(s.lastActiveAt), "expires": s.expiresAt.map { .int($0) } ?? .null,
            "cancelReason": s.cancelReason.map { .string($0) } ?? .null,
        ]
        if withState {
            o["state"] = s.state
            o["options"] = s.options
        }
        return .object(o)
    }

    static func sse(_ message: FeedMessage) -> String {
        switch message {
        case .event(let e): return "id: \(e.id)\ndata: \(e.json.jsonString)\n\n"
        case .reset(let reason, let s, let from):
            let data: JSONValue = ["reason": .string(reason), "session": render(s), "resumeFrom": .string(from.description)]
            return "id: \(from)\nevent: reset\ndata: \(data.jsonString)\n\n"
        case .end(let s): return "event: end\ndata: \(render(s).jsonString)\n\n"
        case .overflow(let last):
            let data: JSONValue = ["code": "slow_consumer", "lastEventId": .string(last.description)]
            return "event: overflow\ndata: \(data.jsonString)\n\n"
        case .keepAlive: return ": keep-alive\n\n"
        }
    }

    static func wsMessage(_ message: FeedMessage) -> String? {
        let value: JSONValue
        switch message {
        case .event(let e): value = ["type": "event", "event": e.json]
        case .reset(let reason, let s, let from):
            value = ["type": "reset", "reason": .string(reason), "session": render(s), "resumeFrom": .string(from.description)]
        case .end(let s): value = ["type": "end", "session": render(s)]
        case .overflow(let last): value = ["type": "overflow", "lastEventId": .string(last.description)]
        case .keepAlive: return nil
        }
        return value.jsonString
    }

    static func wsError(_ e: GatewayError) -> JSONValue {
        ["type": "error", "status": .int(Int(e.status.code)), "code": .string(e.code), "message": .string(e.message)]
    }

    static func json(_ status: HTTPResponse.Status, _ value: JSONValue) -> Response {
        json(status, raw: value.jsonString)
    }

    static func json(_ status: HTTPResponse.Status, raw: String) -> Response {
        Response(
            status: status, headers: [.contentType: "application/json; charset=utf-8"], body: .init(byteBuffer: ByteBuffer(string: raw)))
    }

    static let page = Response(
        status: .ok,
        headers: [
            .contentType: "text/html; charset=utf-8",
            .contentSecurityPolicy: "default-src 'self'; style-src 'self' 'unsafe-inline'; script-src 'self' 'unsafe-inline'",
        ],
        body: .init(byteBuffer: ByteBuffer(bytes: PackageResources.index_html)))
}

/// Counts open event streams per owner.
final class SubscriptionCounter: Sendable {
    private let counts = Mutex<[String: Int]>([:])

    /// An open stream; release it exactly once.
    struct Lease: Sendable {
        let counter: SubscriptionCounter
        let owner: String
        func release() { counter.counts.withLock { c in c[owner] = (c[owner] ?? 1) > 1 ? c[owner]! - 1 : nil } }
    }

    func acquire(_ owner: String, limit: Int) throws -> Lease {
        let ok = counts.withLock { c in
            let n = c[owner] ?? 0
            guard n < limit else { return false }
            c[owner] = n + 1
            return true
        }
        guard ok else {
            throw GatewayError(
                .tooManyRequests, "too_many_subscriptions", "this owner has \(limit) open event streams: close one first",
                headers: [.retryAfter: "5"])
        }
        return Lease(counter: self, owner: owner)
    }
}

/// Turns every error into a JSON error body and logs requests without their query string.
struct ErrorMiddleware<Context: RequestContext>: RouterMiddleware {
    let logger: Logger

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        // The path only: a query may hold a ticket.
        logger.debug("request", metadata: ["http.method": "\(request.method)", "http.path": "\(request.uri.path)"])
        do {
            return try await next(request, context)
        } catch {
            let e = GatewayError.from(error)
            if e.status.code >= 500 {
                // Engine and Redis errors carry no secrets (session ids, script messages); others are named by type only.
                let detail =
                    (error is RedisServerError || error is StepwiseError || error is RedisError) ? "\(error)" : "\(type(of: error))"
                logger.info("request failed", metadata: ["http.path": "\(request.uri.path)", "stepwise.error": "\(detail)"])
            }
            var response = Gateway.json(e.status, e.body)
            for field in e.headers { response.headers.append(field) }
            return response
        }
    }
}
