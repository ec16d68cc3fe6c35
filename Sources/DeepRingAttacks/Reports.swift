import DeepRingEngine
import DeepRingProtocol
import Foundation

/// Table 1 of the paper: the chance that an attacker guesses the order of n blocks placed at random, 1/n!,
/// from the formula and measured by guessing random permutations against a secret random order.
public enum OrderGuessing {
    public struct Row: Codable, Sendable {
        public var n: Int
        public var formula: Double
        public var trials: Int
        public var hits: Int
        public var measured: Double { Double(hits) / Double(trials) }
    }

    public static func table(upTo nMax: Int = 10, trials: Int = 1_000_000, seed: UInt64 = 1) -> [Row] {
        var rng = SeededRandom(seed: seed)
        return (1...max(1, nMax)).map { n in
            var secret = Array(0..<n)
            rng.shuffle(&secret)
            var hits = 0
            var guess = Array(0..<n)
            for _ in 0..<trials {
                rng.shuffle(&guess)
                if guess == secret { hits += 1 }
            }
            let factorial = (1...n).reduce(1.0) { $0 * Double($1) }
            return Row(n: n, formula: 1 / factorial, trials: trials, hits: hits)
        }
    }
}

/// Markdown, CSV and SVG renderings of the experiment results.
public enum Report {
    static func pct(_ v: Double?) -> String { v.map { String(format: "%.2f", $0 * 100) } ?? "—" }

    /// The paper-shaped table (Type / Model / data set) followed by the detailed one.
    public static func markdown(_ r: SuiteResult, title: String, caption: String) -> String {
        var s = "### \(title)\n\n\(caption)\n\n"
        s += "| Type | Model | \(r.dataset) accuracy (%) |\n|---|---|---|\n"
        for row in r.rows {
            s += "| \(row.type)\(row.type == "Original" ? "" : ": " + row.attack) | NN | \(pct(row.plainAccuracy)) |\n"
            s += "| | DeepRing | \(pct(row.deepRingAccuracy))\(row.refused > 0 ? " (\(row.refused) refused)" : "") |\n"
        }
        s += "\n| Attack | Setting | Trials | NN (%) | DeepRing (%) | Detected | Detected by | Delivered | Refused | Alarms | Restores | Evictions | Restore time (ms) | Clean queries | False alarms |\n"
        s += "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n"
        for row in r.rows {
            let det = row.type == "Original" ? "—" : "\(row.detected)/\(row.trials)"
            s += "| \(row.type): \(row.attack) | \(row.setting) | \(row.trials) | \(pct(row.plainAccuracy)) | \(pct(row.deepRingAccuracy)) | \(det) | \(row.detectedBy) | \(row.delivered) | \(row.refused) | \(row.alarms) | \(row.restores) | \(row.evictions) | \(String(format: "%.0f", row.trackingMs)) | \(row.cleanQueries) | \(row.falseAlarms) |\n"
        }
        let attacked = r.rows.filter { $0.type != "Original" }
        let det = attacked.reduce(0) { $0 + $1.detected }, trials = attacked.reduce(0) { $0 + $1.trials }
        let clean = r.rows.reduce(0) { $0 + $1.cleanQueries }, fa = r.rows.reduce(0) { $0 + $1.falseAlarms }
        s += "\nDetection: \(det)/\(trials) attacked trials. False alarms: \(fa) over \(clean) clean queries. "
        s += "Algorithm 1 importance p per layer: " + r.importance.score.enumerated().map { String(format: "L%d = %.3f", $0.offset + 1, $0.element) }.joined(separator: ", ")
        s += " (most important: layer \(r.importance.chosenPosition)).\n"
        return s
    }

    public static func csv(_ r: SuiteResult) -> String {
        func q(_ s: String) -> String { "\"" + s.replacingOccurrences(of: "\"", with: "\"\"") + "\"" }
        var s = "type,attack,setting,trials,nn_accuracy,deepring_accuracy,detected,delivered,refused,alarms,restores,evictions,restore_ms,clean_queries,false_alarms\n"
        for row in r.rows {
            s += [q(row.type), q(row.attack), q(row.setting), "\(row.trials)", String(format: "%.4f", row.plainAccuracy),
                  row.deepRingAccuracy.map { String(format: "%.4f", $0) } ?? "", "\(row.detected)", "\(row.delivered)", "\(row.refused)",
                  "\(row.alarms)", "\(row.restores)", "\(row.evictions)", String(format: "%.1f", row.trackingMs),
                  "\(row.cleanQueries)", "\(row.falseAlarms)"].joined(separator: ",") + "\n"
        }
        return s
    }

    public static func table1Markdown(_ rows: [OrderGuessing.Row]) -> String {
        var s = "### Table 1: probability of guessing the order of n randomly placed blocks\n\n"
        s += "Formula 1/n!, and measured: \(rows.first?.trials ?? 0) random guesses against a secret random order per n.\n\n"
        s += "| n | 1/n! | measured | hits / trials |\n|---|---|---|---|\n"
        for r in rows { s += String(format: "| %d | %.3e | %.3e | %d / %d |\n", r.n, r.formula, r.measured, r.hits, r.trials) }
        return s
    }

    public static func table1CSV(_ rows: [OrderGuessing.Row]) -> String {
        "n,formula,measured,hits,trials\n" + rows.map { String(format: "%d,%.6e,%.6e,%d,%d", $0.n, $0.formula, $0.measured, $0.hits, $0.trials) }.joined(separator: "\n") + "\n"
    }
}

/// Minimal, well-formed SVG charts (title, axis labels, legend).
public enum SVGChart {
    static func esc(_ s: String) -> String {
        s.replacingOccurrences(of: "&", with: "&amp;").replacingOccurrences(of: "<", with: "&lt;")
            .replacingOccurrences(of: ">", with: "&gt;").replacingOccurrences(of: "\"", with: "&quot;")
    }
    static let colors = ["#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860"]

    /// The SVG header, white background, title and horizontal grid with y labels (0 … yMax in 5 steps).
    static func frame(w: Int, h: Int, title: String, left: Double, right: Double, top: Double, bottom: Double, yMax: Double) -> String {
        var s = "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"\(w)\" height=\"\(h)\" viewBox=\"0 0 \(w) \(h)\" font-family=\"sans-serif\" font-size=\"12\">\n"
        s += "<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n"
        s += "<text x=\"\(w / 2)\" y=\"24\" text-anchor=\"middle\" font-size=\"16\">\(esc(title))</text>\n"
        for t in stride(from: 0.0, through: yMax, by: yMax / 5) {
            let y = bottom - (bottom - top) * t / yMax
            s += String(format: "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"#ddd\"/>\n", left, y, right, y)
            s += String(format: "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"end\">%.0f</text>\n", left - 6, y + 4, t)
        }
        return s
    }

    /// Grouped bars: one group per category, one bar per series. Values in [0, yMax]; nil draws nothing.
    public static func bars(title: String, categories: [String], series: [(name: String, values: [Double?])],
                            yLabel: String, yMax: Double = 100) -> String {
        let w = 180 + categories.count * 120, h = 460
        let left = 70.0, right = Double(w) - 20, top = 50.0, bottom = 330.0
        var s = frame(w: w, h: h, title: title, left: left, right: right, top: top, bottom: bottom, yMax: yMax)
        s += String(format: "<text transform=\"translate(18 %.1f) rotate(-90)\" text-anchor=\"middle\">%@</text>\n", (top + bottom) / 2, esc(yLabel))
        let groupW = (right - left) / Double(max(1, categories.count))
        let barW = groupW * 0.7 / Double(max(1, series.count))
        for (ci, c) in categories.enumerated() {
            let gx = left + groupW * Double(ci) + groupW * 0.15
            for (si, ser) in series.enumerated() {
                guard ci < ser.values.count, let v = ser.values[ci] else { continue }
                let bh = (bottom - top) * min(v, yMax) / yMax
                let x = gx + barW * Double(si)
                s += String(format: "<rect x=\"%.1f\" y=\"%.1f\" width=\"%.1f\" height=\"%.1f\" fill=\"%@\"><title>%@: %.2f</title></rect>\n",
                            x, bottom - bh, barW - 2, bh, colors[si % colors.count], esc(ser.name), v)
                s += String(format: "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\" font-size=\"9\">%.1f</text>\n", x + barW / 2 - 1, bottom - bh - 3, v)
            }
            // Category label, wrapped on spaces into lines of ≤ 18 characters.
            var lines: [String] = [], cur = ""
            for word in c.split(separator: " ") {
                if cur.count + word.count + 1 > 18 && !cur.isEmpty { lines.append(cur); cur = "" }
                cur += (cur.isEmpty ? "" : " ") + word
            }
            if !cur.isEmpty { lines.append(cur) }
            for (li, l) in lines.prefix(5).enumerated() {
                s += String(format: "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\" font-size=\"11\">%@</text>\n",
                            left + groupW * (Double(ci) + 0.5), bottom + 16 + Double(li) * 13, esc(l))
            }
        }
        s += String(format: "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"black\"/>\n", left, bottom, right, bottom)
        s += String(format: "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"black\"/>\n", left, top, left, bottom)
        for (si, ser) in series.enumerated() {
            let x = left + Double(si) * 160
            s += String(format: "<rect x=\"%.1f\" y=\"%d\" width=\"12\" height=\"12\" fill=\"%@\"/><text x=\"%.1f\" y=\"%d\">%@</text>\n",
                        x, h - 28, colors[si % colors.count], x + 16, h - 18, esc(ser.name))
        }
        return s + "</svg>\n"
    }

    /// Lines through (x, y) points, one per series; dashed series are drawn dashed.
    public static func lines(title: String, xLabel: String, yLabel: String,
                             series: [(name: String, points: [(Double, Double)], dashed: Bool)], yMax: Double = 100) -> String {
        let w = 720, h = 460
        let left = 70.0, right = 680.0, top = 50.0, bottom = 360.0
        let xs = series.flatMap { $0.points.map(\.0) }
        let xMax = max(xs.max() ?? 1, 1e-12)
        var s = frame(w: w, h: h, title: title, left: left, right: right, top: top, bottom: bottom, yMax: yMax)
        for k in 0...4 {
            let v = xMax * Double(k) / 4, x = left + (right - left) * Double(k) / 4
            s += String(format: "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\">%.3g</text>\n", x, bottom + 16, v)
        }
        s += String(format: "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\">%@</text>\n", (left + right) / 2, bottom + 36, esc(xLabel))
        s += String(format: "<text transform=\"translate(18 %.1f) rotate(-90)\" text-anchor=\"middle\">%@</text>\n", (top + bottom) / 2, esc(yLabel))
        s += String(format: "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"black\"/>\n", left, bottom, right, bottom)
        s += String(format: "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"black\"/>\n", left, top, left, bottom)
        for (si, ser) in series.enumerated() {
            let pts = ser.points.map { String(format: "%.1f,%.1f", left + (right - left) * $0.0 / xMax, bottom - (bottom - top) * min($0.1, yMax) / yMax) }
            let c = colors[si % colors.count]
            s += "<polyline fill=\"none\" stroke=\"\(c)\" stroke-width=\"2\"\(ser.dashed ? " stroke-dasharray=\"6 4\"" : "") points=\"\(pts.joined(separator: " "))\"/>\n"
            for p in ser.points {
                s += String(format: "<circle cx=\"%.1f\" cy=\"%.1f\" r=\"3\" fill=\"%@\"><title>%@: %.4g → %.2f</title></circle>\n",
                            left + (right - left) * p.0 / xMax, bottom - (bottom - top) * min(p.1, yMax) / yMax, c, esc(ser.name), p.0, p.1)
            }
            let ly = h - 48 + (si / 2) * 18, lx = 80 + (si % 2) * 320
            s += "<line x1=\"\(lx)\" y1=\"\(ly - 4)\" x2=\"\(lx + 24)\" y2=\"\(ly - 4)\" stroke=\"\(c)\" stroke-width=\"2\"\(ser.dashed ? " stroke-dasharray=\"6 4\"" : "")/>"
            s += "<text x=\"\(lx + 30)\" y=\"\(ly)\">\(esc(ser.name))</text>\n"
        }
        return s + "</svg>\n"
    }
}
