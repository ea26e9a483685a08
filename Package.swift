// swift-tools-version:6.1
import PackageDescription

let swiftSettings: [SwiftSetting] = [
    .enableUpcomingFeature("ExistentialAny"),
    .enableUpcomingFeature("MemberImportVisibility"),
]

let luaScripts = [
    "prelude", "submit", "claim", "commit", "release", "reap", "heartbeat", "progress", "promote", "cancel", "touch",
    "dead_letter", "sweep", "compact", "forget", "rewrap",
]

let package = Package(
    name: "stepwise",
    platforms: [.macOS(.v15)],
    products: [
        .executable(name: "stepwise", targets: ["stepwise"]),
        .library(name: "StepwiseCore", targets: ["StepwiseCore"]),
        .library(name: "StepwiseAgents", targets: ["StepwiseAgents"]),
        .library(name: "StepwiseRedis", targets: ["StepwiseRedis"]),
        .library(name: "StepwiseGateway", targets: ["StepwiseGateway"]),
        .library(name: "StepwiseLLM", targets: ["StepwiseLLM"]),
        .library(name: "StepwiseEncryption", targets: ["StepwiseEncryption"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        .package(url: "https://github.com/apple/swift-log", from: "1.6.0"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle", from: "2.6.0"),
        .package(url: "https://github.com/HdrHistogram/hdrhistogram-swift", from: "0.1.0"),
        .package(url: "https://github.com/hummingbird-project/hummingbird", from: "2.28.1"),
        .package(url: "https://github.com/hummingbird-project/hummingbird-websocket", from: "2.8.1"),
        .package(url: "https://github.com/apple/swift-crypto", "3.12.3"..<"5.0.0"),
        .package(url: "https://github.com/apple/swift-metrics", from: "2.13.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus", from: "2.4.1"),
        .package(url: "https://github.com/swift-server/async-http-client", from: "1.37.0"),
        // Already resolved through Hummingbird and async-http-client; named for NIOCore/NIOHTTP1 types.
        .package(url: "https://github.com/apple/swift-nio", from: "2.101.2"),
    ],
    targets: [
        .systemLibrary(
            name: "CHiredis",
            pkgConfig: "hiredis",
            providers: [.apt(["libhiredis-dev"])]
        ),
        .target(
            name: "StepwiseRedis",
            dependencies: [
                "CHiredis",
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: swiftSettings
        ),
        .target(
            name: "StepwiseCore",
            dependencies: [
                "StepwiseRedis",
                "CStepwiseCrash",
                .product(name: "Logging", package: "swift-log"),
                // Light: the metrics API only; the Prometheus exporter lives in StepwiseMetrics.
                .product(name: "CoreMetrics", package: "swift-metrics"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            // The protocol's Lua scripts, one file each, compiled into the binary (no bundle to ship).
            resources: luaScripts.map { .embedInCode("Lua/\($0).lua") },
            swiftSettings: swiftSettings
        ),
        // The HTTP/SSE/WebSocket gateway: heavy dependencies (Hummingbird, swift-crypto) stay out of the core.
        .target(
            name: "StepwiseGateway",
            dependencies: [
                "StepwiseCore",
                "StepwiseRedis",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "HummingbirdWebSocket", package: "hummingbird-websocket"),
                .product(name: "Crypto", package: "swift-crypto"),
            ],
            resources: [.embedInCode("Web/index.html"), .embedInCode("Web/openapi.json")],
            swiftSettings: swiftSettings
        ),
        // The Prometheus exporter and the /metrics, /healthz, /readyz server of workers and gateways.
        .target(
            name: "StepwiseMetrics",
            dependencies: [
                "StepwiseCore",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "CoreMetrics", package: "swift-metrics"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "Prometheus", package: "swift-prometheus"),
            ],
            swiftSettings: swiftSettings
        ),
        // Encryption at rest: the keyring and AES-256-GCM sealing of session data (swift-crypto stays out of the core).
        .target(
            name: "StepwiseEncryption",
            dependencies: [
                "StepwiseCore",
                .product(name: "Crypto", package: "swift-crypto"),
            ],
            swiftSettings: swiftSettings
        ),
        // A crash signal handler that tells Redis this worker crashed (async-signal-safe C).
        .target(name: "CStepwiseCrash"),
        .target(
            name: "StepwiseAgents",
            dependencies: ["StepwiseCore"],
            swiftSettings: swiftSettings
        ),
        // The `llm` agent and the model-written quiz: async-http-client stays out of the core.
        .target(
            name: "StepwiseLLM",
            dependencies: [
                "StepwiseCore",
                "StepwiseAgents",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
            ],
            swiftSettings: swiftSettings
        ),
        .target(
            name: "StepwiseTesting",
            dependencies: [
                "StepwiseRedis", "StepwiseCore", "StepwiseAgents",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            swiftSettings: swiftSettings
        ),
        .executableTarget(
            name: "stepwise",
            dependencies: [
                "StepwiseCore",
                "StepwiseAgents",
                "StepwiseRedis",
                "StepwiseGateway",
                "StepwiseMetrics",
                .product(name: "Metrics", package: "swift-metrics"),
                "StepwiseLLM",
                "StepwiseEncryption",
                // RedisServerProcess: `loadtest --start-redis` runs (and, for chaos, restarts) its own redis-server.
                "StepwiseTesting",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "UnixSignals", package: "swift-service-lifecycle"),
                .product(name: "Histogram", package: "hdrhistogram-swift"),
            ],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "StepwiseRedisTests",
            dependencies: ["StepwiseRedis"],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "StepwiseCoreTests",
            dependencies: ["StepwiseCore", "StepwiseAgents"],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "StepwiseGatewayTests",
            dependencies: [
                "StepwiseCore", "StepwiseAgents", "StepwiseRedis", "StepwiseTesting", "StepwiseGateway", "StepwiseEncryption",
                .product(name: "HummingbirdWSClient", package: "hummingbird-websocket"),
            ],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "StepwiseIntegrationTests",
            dependencies: ["StepwiseCore", "StepwiseAgents", "StepwiseRedis", "StepwiseTesting", "StepwiseEncryption"],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "StepwiseLLMTests",
            dependencies: ["StepwiseCore", "StepwiseAgents", "StepwiseRedis", "StepwiseTesting", "StepwiseLLM"],
            swiftSettings: swiftSettings
        ),
    ]
)
