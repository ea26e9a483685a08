import ArgumentParser
import Foundation
import StepwiseCore
import StepwiseRedis
import Synchronization
import UnixSignals

struct TopCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "top",
        abstract: "A live view of the pool: steps/s, latency, queues, workers, running sessions, recent failures.",
        discussion: """
            Refreshes in place on the terminal's alternate screen (plain ANSI, fine over ssh); q or \
            Ctrl-C quits and restores the terminal. --once prints one snapshot and exits (--json: as \
            one JSON object, for scripts); its steps/s and latency are measured over --interval. \
            Reads only what `stepwise queue` reads plus the workers' reports: the operator user of \
            deploy/users.acl may run it.
            """)

    @OptionGroup var connection: ConnectionOptions

    @Option(help: "Seconds between refreshes (0.2-60).")
    var interval: Double = 1

    @Flag(help: "Print one snapshot and exit.")
    var once = false

    @Flag(help: "With --once: print the snapshot as one JSON object.")
    var json = false

    func validate() throws {
        guard interval.isFinite, (0.2...60).contains(interval) else {
            throw ValidationError("--interval must be 0.2-60 seconds, got \(interval)")
        }
        if json && !once { throw ValidationError("--json needs --once (the live view is for terminals)") }
        if !once && !Terminal.isInteractive {
            throw ValidationError("the live view needs a terminal on stdin and stdout; use --once (or --once --json) in scripts")
        }
    }

    func run() async throws {
        let logger = connection.makeLogger()
        let conn = try await reportingFailures { try await connection.connect(name: "stepwise:top", logger: logger) }
        let store = SessionStore(connection: conn, keys: connection.keys)
        let pause = Duration.milliseconds(Int64((interval * 1000).rounded()))
        let redis = RedisEndpoint.redacted(connection.redisURL)
        if once {
            let view = try await reportingFailures {
                let first = try await store.poolSnapshot()
                try await Task.sleep(for: pause)
                return TopView(snapshot: try await store.poolSnapshot(), previous: first)
            }
            if json {
                try output(view.json.jsonString)
            } else {
                for line in view.lines(rows: Int.max, namespace: connection.namespace, redis: redis, live: false) {
                    try output(line)
                }
            }
            return
        }
        try await live(store: store, pause: pause, redis: redis)
    }

    /// The live view: refresh every `pause`, look at the keyboard every 50 ms.
    private func live(store: SessionStore, pause: Duration, redis: String) async throws {
        // Make sure Redis answers before taking over the screen (a wrong URL is one line, exit 1).
        var previous = try await reportingFailures { try await store.poolSnapshot() }
        let terminal = Terminal()
        do { try terminal.enter() } catch {
            printError("\(error)")
            throw ExitCode.failure
        }
        defer { terminal.restore() }
        // SIGTERM and SIGHUP (the ssh session went away) end the view like q does; Ctrl-C arrives
        // as a key, since the terminal is in raw mode.
        let quit = Atomic<Bool>(false)
        let signals = Task {
            for await _ in await UnixSignalsSequence(trapping: .sigterm, .sighup) {
                quit.store(true, ordering: .relaxed)
            }
        }
        defer { signals.cancel() }
        var view = TopView(snapshot: previous, previous: nil)
        var problem: String?
        var nextRefresh = ContinuousClock.now
        while !quit.load(ordering: .relaxed) {
            let keys = terminal.pendingKeys()
            // q, Q, Ctrl-C, Ctrl-D (or the terminal closed).
            if keys.contains(where: { $0 == 0x71 || $0 == 0x51 || $0 == 0x03 || $0 == 0x04 }) { break }
            if ContinuousClock.now >= nextRefresh {
                nextRefresh = .now + pause
                do {
                    let snapshot = try await store.poolSnapshot()
                    view = TopView(snapshot: snapshot, previous: previous)
                    previous = snapshot
                    problem = nil
                } catch {
                    problem = "cannot read Redis (\(type(of: error))): showing the last snapshot; retrying"
                }
                let (rows, columns) = Terminal.size()
                var lines = view.lines(rows: rows, namespace: connection.namespace, redis: redis, live: true)
                if let problem { lines.insert("! \(problem)", at: 1) }
                terminal.draw(lines, columns: columns, rows: rows)
                if Console.failed(.stdout) { break }
            }
            do { try await Task.sleep(for: .milliseconds(50)) } catch { break }
        }
    }
}
