import Foundation
import StepwiseTesting
import Testing

/// Issue 11, points 4 and 5: every file in `deploy/` checked as far as this machine allows.
/// systemd units with `systemd-analyze verify`; Kubernetes manifests against the Kubernetes
/// OpenAPI schema (kubernetes-validate, offline) plus the cross-checks of `scripts/check-k8s.py`
/// (the KEDA CRDs have no schema there); the compose file against the compose specification's
/// schema (check-jsonschema's vendored copy); the alert rules with `promtool check rules` and
/// `promtool test rules`. No Docker engine runs here: images are not built.
@Suite("deploy/ files: units, manifests, compose, alert rules", .timeLimit(.minutes(2)))
struct DeployFilesTests {
    static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent()
    static var deploy: String { root.appendingPathComponent("deploy").path }

    /// Copies the units into a temporary directory with `ExecStart` pointing at an executable
    /// that exists here (verify checks it), plus an instance of the worker template.
    private func unitDirectory(edit: (String) -> String = { $0 }) throws -> URL {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("stepwise-units-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        let binary = TestRedis.binary ?? "/bin/true"
        for (name, copies) in [("stepwise-worker@.service", ["stepwise-worker@9401.service"]), ("stepwise-gateway.service", [])] {
            let text = try String(contentsOfFile: "\(Self.deploy)/\(name)", encoding: .utf8)
            let edited = edit(text.replacingOccurrences(of: "/usr/local/bin/stepwise", with: binary))
            for target in [name] + copies { try edited.write(to: dir.appendingPathComponent(target), atomically: true, encoding: .utf8) }
        }
        return dir
    }

    @Test func systemdUnitsVerifyCleanAndAreHardened() async throws {
        let dir = try unitDirectory()
        defer { try? FileManager.default.removeItem(at: dir) }
        let units = ["stepwise-worker@9401.service", "stepwise-gateway.service"].map { dir.appendingPathComponent($0).path }
        let r = try await runTool("systemd-analyze", ["verify"] + units)
        #expect(r.status == 0, "\(r.stderr)")
        // verify reports unknown keys and bad values on stderr but still exits 0: none allowed.
        #expect(r.stderr.isEmpty, "\(r.stderr)")
        #expect(r.stdout.isEmpty, "\(r.stdout)")
        for name in ["stepwise-worker@.service", "stepwise-gateway.service"] {
            let text = try String(contentsOfFile: "\(Self.deploy)/\(name)", encoding: .utf8)
            for line in [
                "NoNewPrivileges=yes", "ProtectSystem=strict", "PrivateTmp=yes", "ProtectHome=yes", "DynamicUser=yes",
                "CapabilityBoundingSet=", "--metrics-listen",
            ] {
                #expect(text.contains(line), "\(name) has \(line)")
            }
        }
    }

    /// The check above can fail: a misspelt hardening key is reported.
    @Test func systemdVerifyCatchesAMisspeltKey() async throws {
        let dir = try unitDirectory { $0.replacingOccurrences(of: "NoNewPrivileges=yes", with: "NoNewPrivilege=yes") }
        defer { try? FileManager.default.removeItem(at: dir) }
        let r = try await runTool("systemd-analyze", ["verify", dir.appendingPathComponent("stepwise-gateway.service").path])
        #expect(r.stderr.contains("Unknown key 'NoNewPrivilege'"), "\(r.stderr)")
    }

    @Test func kubernetesManifestsPassTheSchemaAndCrossChecks() async throws {
        let dir = "\(Self.deploy)/kubernetes"
        let files = try FileManager.default.contentsOfDirectory(atPath: dir).filter { $0.hasSuffix(".yaml") }.sorted()
            .map { "\(dir)/\($0)" }
        #expect(files.count >= 4)
        let r = try await runTool("kubernetes-validate", ["--strict"] + files, timeout: .seconds(60))
        #expect(r.status == 0, "\(r.stdout)\n\(r.stderr)")
        let out = r.stdout + r.stderr
        for resource in [
            "deployment/stepwise-worker", "poddisruptionbudget/stepwise-worker", "service/stepwise-worker-metrics",
            "deployment/stepwise-gateway", "service/stepwise-gateway", "secret/stepwise-redis",
        ] {
            #expect(out.contains("passed for resource \(resource)"), "\(resource): \(out)")
        }
        // Not covered by the schema check (and said so): KEDA's custom resources.
        #expect(out.contains("Couldn't find schema for kind ScaledObject"), "\(out)")
        let cross = try await runTool("python3", [Self.root.appendingPathComponent("scripts/check-k8s.py").path, dir])
        #expect(cross.status == 0 && cross.stdout == "ok\n", "\(cross.stdout)\n\(cross.stderr)")
    }

    /// The schema check can fail: an unknown field is refused in strict mode.
    @Test func kubernetesValidateRefusesAnUnknownField() async throws {
        let file = FileManager.default.temporaryDirectory.appendingPathComponent("stepwise-bad-\(UUID().uuidString).yaml")
        defer { try? FileManager.default.removeItem(at: file) }
        let text = try String(contentsOfFile: "\(Self.deploy)/kubernetes/worker.yaml", encoding: .utf8)
        try text.replacingOccurrences(of: "terminationGracePeriodSeconds: 40", with: "terminationGracePeriod: 40")
            .write(to: file, atomically: true, encoding: .utf8)
        let r = try await runTool("kubernetes-validate", ["--strict", file.path], timeout: .seconds(60))
        #expect(r.status != 0, "\(r.stdout)")
    }

    @Test func composeFilePassesTheComposeSpecSchema() async throws {
        let r = try await runTool(
            "check-jsonschema", ["--builtin-schema", "vendor.compose-spec", "\(Self.deploy)/compose.yaml"], timeout: .seconds(60))
        #expect(r.status == 0, "\(r.stdout)\n\(r.stderr)")
        let text = try String(contentsOfFile: "\(Self.deploy)/compose.yaml", encoding: .utf8)
        #expect(text.contains("stop_grace_period: 40s") && text.contains("\"--grace\", \"25\""))
    }

    @Test func alertRulesLoadAndPassTheirUnitTests() async throws {
        let dir = "\(Self.deploy)/prometheus"
        let check = try await runTool("promtool", ["check", "rules", "\(dir)/alerts.yml"])
        #expect(check.status == 0, "\(check.stdout)\n\(check.stderr)")
        #expect(check.stdout.contains("SUCCESS: 6 rules found"), "\(check.stdout)")
        let test = try await runTool("promtool", ["test", "rules", "\(dir)/alerts_test.yml"])
        #expect(test.status == 0, "\(test.stdout)\n\(test.stderr)")
        #expect(test.stdout.contains("SUCCESS"), "\(test.stdout)")
        // The systemd hosts' scrape config, with the rules (compose-prometheus.yml names the rules
        // by their path inside the container, so promtool cannot load it here).
        let c = try await runTool("promtool", ["check", "config", "\(dir)/prometheus.yml"])
        #expect(c.status == 0, "\(c.stdout)\n\(c.stderr)")
        let rules = try String(contentsOfFile: "\(dir)/alerts.yml", encoding: .utf8)
        for alert in [
            "StepwiseDeadLetters", "StepwiseStaleCommitsRising", "StepwiseReadyQueueGrowing", "StepwiseNoLiveWorkers",
            "StepwiseRedisOutOfMemory",
        ] {
            #expect(rules.contains("alert: \(alert)"))
        }
    }
}
