import Foundation

/// A hand-written SVG chart of a scaling run: steps/s (with the linear ideal) and latency
/// percentiles against the worker process count, in two panels side by side.
struct LoadTestChart {
    var rows: [RoundResult]
    var title: String
    var subtitle: String

    private let width = 960.0
    private let height = 460.0
    private struct Series {
        var name: String
        var color: String
        var dashed: Bool
        var points: [(x: Int, y: Double)]
    }

    func svg() -> String {
        var s = """
            <svg xmlns="http://www.w3.org/2000/svg" width="\(Int(width))" height="\(Int(height))" viewBox="0 0 \(Int(width)) \(Int(height))" \
            font-family="system-ui, -apple-system, Segoe UI, sans-serif" font-size="12">
            <rect width="100%" height="100%" fill="white"/>
            <text x="\(width / 2)" y="26" text-anchor="middle" font-size="17" font-weight="bold">\(escape(title))</text>
            <text x="\(width / 2)" y="46" text-anchor="middle" font-size="11" fill="#555">\(escape(subtitle))</text>

            """
        let counts = rows.map(\.workers)
        let first = rows.first
        let perWorker = first.map { $0.stepsPerSecond / Double($0.workers) } ?? 0
        let throughput = [
            Series(name: "measured steps/s", color: "#1f77b4", dashed: false, points: rows.map { ($0.workers, $0.stepsPerSecond) }),
            Series(name: "linear (1st row × workers)", color: "#888888", dashed: true, points: counts.map { ($0, perWorker * Double($0)) }),
        ]
        let latency = [
            Series(name: "p99 latency", color: "#d62728", dashed: false, points: rows.map { ($0.workers, Double($0.p99)) }),
            Series(name: "p50 latency", color: "#ff7f0e", dashed: true, points: rows.map { ($0.workers, Double($0.p50)) }),
        ]
        s += panel(x: 70, y: 80, w: 370, h: 300, title: "Throughput", yLabel: "steps/s", series: throughput, counts: counts)
        s += panel(x: 560, y: 80, w: 370, h: 300, title: "Submit-to-completed latency", yLabel: "ms", series: latency, counts: counts)
        s += "</svg>\n"
        return s
    }

    private func panel(x: Double, y: Double, w: Double, h: Double, title: String, yLabel: String, series: [Series], counts: [Int]) -> String
    {
        let yMax = niceCeiling(series.flatMap { $0.points.map(\.y) }.max() ?? 1)
        let logs = counts.map { log2(Double(Swift.max($0, 1))) }
        var lo = logs.min() ?? 0
        var hi = logs.max() ?? 1
        if hi - lo < 0.001 {
            lo -= 0.5
            hi += 0.5
        }
        let span = hi - lo
        func px(_ workers: Int) -> Double { x + 20 + (log2(Double(Swift.max(workers, 1))) - lo) / span * (w - 40) }
        func py(_ v: Double) -> Double { y + h - v / yMax * h }
        var s = "<g>\n"
        s +=
            "<text x=\"\(x + w / 2)\" y=\"\(y - 12)\" text-anchor=\"middle\" font-size=\"14\" font-weight=\"bold\">\(escape(title))</text>\n"
        // Grid and y ticks.
        for i in 0...5 {
            let v = yMax * Double(i) / 5
            let ty = py(v)
            s += "<line x1=\"\(x)\" y1=\"\(ty)\" x2=\"\(x + w)\" y2=\"\(ty)\" stroke=\"#e5e5e5\"/>\n"
            s += "<text x=\"\(x - 8)\" y=\"\(ty + 4)\" text-anchor=\"end\">\(label(v))</text>\n"
        }
        // Axes.
        s += "<line x1=\"\(x)\" y1=\"\(y + h)\" x2=\"\(x + w)\" y2=\"\(y + h)\" stroke=\"#333\"/>\n"
        s += "<line x1=\"\(x)\" y1=\"\(y)\" x2=\"\(x)\" y2=\"\(y + h)\" stroke=\"#333\"/>\n"
        for c in Set(counts).sorted() {
            s += "<line x1=\"\(px(c))\" y1=\"\(y + h)\" x2=\"\(px(c))\" y2=\"\(y + h + 5)\" stroke=\"#333\"/>\n"
            s += "<text x=\"\(px(c))\" y=\"\(y + h + 19)\" text-anchor=\"middle\">\(c)</text>\n"
        }
        s += "<text x=\"\(x + w / 2)\" y=\"\(y + h + 40)\" text-anchor=\"middle\">worker processes (log scale)</text>\n"
        s += "<text transform=\"translate(\(x - 52) \(y + h / 2)) rotate(-90)\" text-anchor=\"middle\">\(escape(yLabel))</text>\n"
        // Series.
        for (i, ser) in series.enumerated() {
            let pts = ser.points.map { "\(fmt(px($0.x))),\(fmt(py($0.y)))" }.joined(separator: " ")
            let dash = ser.dashed ? " stroke-dasharray=\"6 4\"" : ""
            s += "<polyline points=\"\(pts)\" fill=\"none\" stroke=\"\(ser.color)\" stroke-width=\"2\"\(dash)/>\n"
            for p in ser.points {
                s +=
                    "<circle cx=\"\(fmt(px(p.x)))\" cy=\"\(fmt(py(p.y)))\" r=\"3.5\" fill=\"\(ser.color)\"><title>\(p.x) workers: \(label(p.y))</title></circle>\n"
                if !ser.dashed {
                    s +=
                        "<text x=\"\(fmt(px(p.x)))\" y=\"\(fmt(py(p.y) - 8))\" text-anchor=\"middle\" font-size=\"10\" fill=\"\(ser.color)\">\(label(p.y))</text>\n"
                }
            }
            // Legend, below the x axis label.
            let ly = y + h + 60 + Double(i) * 16
            s +=
                "<line x1=\"\(x)\" y1=\"\(ly - 4)\" x2=\"\(x + 24)\" y2=\"\(ly - 4)\" stroke=\"\(ser.color)\" stroke-width=\"2\"\(dash)/>\n"
            s += "<text x=\"\(x + 30)\" y=\"\(ly)\">\(escape(ser.name))</text>\n"
        }
        return s + "</g>\n"
    }

    /// The smallest 1, 2, 2.5 or 5 × 10^k at or above `v`.
    private func niceCeiling(_ v: Double) -> Double {
        guard v > 0, v.isFinite else { return 1 }
        let magnitude = pow(10, floor(log10(v)))
        for f in [1.0, 2, 2.5, 5, 10] where f * magnitude >= v { return f * magnitude }
        return 10 * magnitude
    }

    private func label(_ v: Double) -> String {
        if v >= 1 || v == 0 { return v.rounded() == v ? String(Int(v)) : String(format: "%.0f", v) }
        return String(format: "%.2f", v)
    }

    private func fmt(_ v: Double) -> String { String(format: "%.1f", v) }

    private func escape(_ s: String) -> String {
        s.replacingOccurrences(of: "&", with: "&amp;").replacingOccurrences(of: "<", with: "&lt;").replacingOccurrences(
            of: ">", with: "&gt;"
        )
        .replacingOccurrences(of: "\"", with: "&quot;")
    }
}
