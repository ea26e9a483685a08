import Hummingbird
import Logging
import ServiceLifecycle

/// The small HTTP server a worker or gateway runs on `--metrics-listen`: `GET /metrics` (the
/// Prometheus text format), `GET /healthz` (liveness: 200 while the process serves requests) and
/// `GET /readyz` (readiness: 200 when `ready()` says so, else 503), usable as Kubernetes probes.
/// A `Service`: run it in the process's `ServiceGroup`.
public struct MetricsServer: Service {
    public let host: String
    public let port: Int
    let export: PrometheusExport
    let ready: @Sendable () async -> Bool
    let logger: Logger

    public init(host: String, port: Int, export: PrometheusExport, logger: Logger, ready: @escaping @Sendable () async -> Bool) {
        self.host = host
        self.port = port
        self.export = export
        self.ready = ready
        self.logger = logger
    }

    /// Parses `host:port` (`[::1]:9090` for IPv6); nil when it is not one.
    public static func parseAddress(_ text: String) -> (host: String, port: Int)? {
        guard let colon = text.lastIndex(of: ":"), let port = Int(text[text.index(after: colon)...]),
            (0...65535).contains(port)
        else { return nil }
        var host = String(text[..<colon])
        if host.hasPrefix("["), host.hasSuffix("]") { host = String(host.dropFirst().dropLast()) }
        guard !host.isEmpty else { return nil }
        return (host, port)
    }

    func makeRouter() -> Router<BasicRequestContext> {
        let router = Router()
        let export = self.export
        let ready = self.ready
        router.get("metrics") { _, _ -> Response in
            Response(
                status: .ok, headers: [.contentType: "text/plain; version=0.0.4; charset=utf-8"],
                body: .init(byteBuffer: ByteBuffer(string: export.exposition())))
        }
        router.get("healthz") { _, _ -> String in "ok\n" }
        router.get("readyz") { _, _ -> Response in
            let ok = await ready()
            return Response(
                status: ok ? .ok : .serviceUnavailable, headers: [.contentType: "text/plain"],
                body: .init(byteBuffer: ByteBuffer(string: ok ? "ready\n" : "not ready\n")))
        }
        return router
    }

    public func run() async throws {
        let app = Application(
            router: makeRouter(), configuration: .init(address: .hostname(host, port: port), serverName: "stepwise-metrics"),
            logger: logger)
        logger.notice("metrics listening", metadata: ["stepwise.listen": "\(host):\(port)"])
        try await app.run()
    }
}
