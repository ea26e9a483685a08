import CoreMetrics
import Prometheus
import StepwiseCore

/// The Prometheus side of Stepwise's metrics: a registry and a swift-metrics factory that writes
/// into it, with Stepwise's histogram buckets. The executable bootstraps `MetricsSystem` with
/// ``factory`` (libraries and tests never do) and serves ``exposition()`` on `/metrics`.
public struct PrometheusExport: Sendable {
    public let registry: PrometheusCollectorRegistry
    public let factory: PrometheusMetricsFactory

    public init() {
        let registry = PrometheusCollectorRegistry()
        var factory = PrometheusMetricsFactory(registry: registry)
        let steps = WorkerMetrics.durationBuckets.map { Duration.nanoseconds(Int64(($0 * 1e9).rounded())) }
        let redis = WorkerMetrics.redisBuckets.map { Duration.nanoseconds(Int64(($0 * 1e9).rounded())) }
        factory.durationHistogramBuckets = [
            WorkerMetrics.Name.stepDuration: steps, WorkerMetrics.Name.overhead: steps,
            WorkerMetrics.Name.redisRoundTrip: redis,
        ]
        factory.defaultDurationHistogramBuckets = steps
        // Libraries such as Hummingbird name metrics with dots (`hb.requests`): Prometheus names
        // and label names allow only [a-zA-Z0-9_:].
        factory.nameAndLabelSanitizer = { name, labels in
            (Self.metricName(name), labels.map { (Self.sanitized($0.0), $0.1) })
        }
        self.registry = registry
        self.factory = factory
    }

    /// The text exposition format (version 0.0.4) of every metric.
    public func exposition() -> String { registry.emitToString() }

    /// Counters that libraries name without Prometheus's `_total` suffix (Hummingbird's
    /// `MetricsMiddleware`); the factory's sanitizer does not see a metric's type.
    static let counterNamesWithoutTotal: Set<String> = ["hb.requests", "hb.request.errors"]

    /// A Prometheus metric name: sanitized, and `_total` on the counters listed above.
    static func metricName(_ name: String) -> String {
        counterNamesWithoutTotal.contains(name) ? sanitized(name) + "_total" : sanitized(name)
    }

    static func sanitized(_ name: String) -> String {
        String(
            name.map { c -> Character in
                c.isASCII && (c.isLetter || c.isNumber || c == "_" || c == ":") ? c : "_"
            })
    }
}
