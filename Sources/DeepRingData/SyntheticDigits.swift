import DeepRingEngine
import Foundation

/// The embedded default data set: hand-drawn-style digits 0–9 rendered at 28×28 from stroke templates with
/// random affine jitter, stroke width, control-point wobble and pixel noise. Deterministic for a seed
/// (image i depends only on the seed and i), generated in well under a second.
public enum SyntheticDigits {
    typealias P = SIMD2<Double>

    static func arc(_ c: P, _ r: P, from a0: Double, to a1: Double, steps: Int = 14) -> [P] {
        (0...steps).map { i in
            let a = a0 + (a1 - a0) * Double(i) / Double(steps)
            return P(c.x + r.x * cos(a), c.y + r.y * sin(a))
        }
    }

    /// Strokes of each digit in a unit box (y grows downwards).
    static let templates: [[[P]]] = [
        [arc(P(0.5, 0.5), P(0.28, 0.4), from: 0, to: 2 * .pi, steps: 20)],
        [[P(0.33, 0.28), P(0.55, 0.1), P(0.55, 0.9)], [P(0.38, 0.9), P(0.72, 0.9)]],
        [arc(P(0.5, 0.32), P(0.24, 0.22), from: -.pi, to: 0.25 * .pi, steps: 10) + [P(0.25, 0.9), P(0.78, 0.9)]],
        [arc(P(0.5, 0.3), P(0.22, 0.19), from: -0.9 * .pi, to: 0.5 * .pi, steps: 10),
         arc(P(0.5, 0.69), P(0.25, 0.21), from: -0.5 * .pi, to: 0.9 * .pi, steps: 10)],
        [[P(0.62, 0.9), P(0.62, 0.1), P(0.2, 0.64), P(0.8, 0.64)]],
        [[P(0.74, 0.1), P(0.32, 0.1), P(0.28, 0.45)] + arc(P(0.5, 0.65), P(0.24, 0.24), from: -0.75 * .pi, to: 0.85 * .pi, steps: 12)],
        [[P(0.68, 0.1), P(0.45, 0.25), P(0.3, 0.55)] + arc(P(0.5, 0.68), P(0.22, 0.22), from: .pi, to: 3 * .pi, steps: 16)],
        [[P(0.22, 0.1), P(0.78, 0.1), P(0.42, 0.9)], [P(0.38, 0.5), P(0.66, 0.5)]],
        [arc(P(0.5, 0.29), P(0.19, 0.18), from: 0, to: 2 * .pi, steps: 16),
         arc(P(0.5, 0.7), P(0.24, 0.21), from: 0, to: 2 * .pi, steps: 16)],
        [arc(P(0.48, 0.32), P(0.22, 0.21), from: 0, to: 2 * .pi, steps: 16), [P(0.7, 0.34), P(0.62, 0.9)]],
    ]

    /// `count` images; image i shows digit i mod 10.
    public static func generate(count: Int, seed: UInt64) -> Dataset {
        let side = 28
        var images = [Float](repeating: 0, count: count * side * side)
        var labels = [Int](repeating: 0, count: count)
        images.withUnsafeMutableBufferPointer { buf in
            let box = UnsafeSendableBox(buf.baseAddress!)
            labels.withUnsafeMutableBufferPointer { lb in
                let lbox = UnsafeSendableBox(lb.baseAddress!)
                Parallel.ranges(count) { range in
                    for i in range {
                        var rng = SeededRandom(seed: seed &* 0x9E37_79B9 &+ UInt64(i) &* 0x632B_E59B_D9B4_E019)
                        let label = i % 10
                        lbox.value[i] = label
                        render(label, rng: &rng, into: box.value + i * side * side, side: side)
                    }
                }
            }
        }
        return Dataset(name: "synthetic", imageShape: [side, side, 1], images: images, labels: labels, classes: 10)
    }

    static func render(_ digit: Int, rng: inout SeededRandom, into out: UnsafeMutablePointer<Float>, side: Int) {
        func u(_ lo: Double, _ hi: Double) -> Double { lo + (hi - lo) * rng.uniformDouble() }
        let angle = u(-0.25, 0.25), shear = u(-0.3, 0.3)
        let sx = u(14, 20), sy = u(17, 22)
        let tx = u(-2, 2) + Double(side) / 2, ty = u(-2, 2) + Double(side) / 2
        let width = u(1.0, 2.2)
        let wobble = 0.035
        let ca = cos(angle), sa = sin(angle)
        var segs: [(P, P)] = []
        for stroke in templates[digit] {
            var prev: P?
            for p in stroke {
                let q = P(p.x - 0.5 + u(-wobble, wobble), p.y - 0.5 + u(-wobble, wobble))
                let s = P((q.x + shear * q.y) * sx, q.y * sy)
                let r = P(ca * s.x - sa * s.y + tx, sa * s.x + ca * s.y + ty)
                if let a = prev { segs.append((a, r)) }
                prev = r
            }
        }
        let noise = u(0, 0.08)
        for y in 0..<side {
            for x in 0..<side {
                let p = P(Double(x) + 0.5, Double(y) + 0.5)
                var best = Double.infinity
                for (a, b) in segs {
                    let ab = b - a, ap = p - a
                    let len2 = (ab * ab).sum()
                    let t = len2 > 0 ? min(1, max(0, (ap * ab).sum() / len2)) : 0
                    let d = p - (a + t * ab)
                    best = min(best, (d * d).sum())
                }
                var v = 1 - (best.squareRoot() - width / 2)
                v = min(1, max(0, v))
                v += noise * (rng.uniformDouble() - 0.5)
                out[y * side + x] = Float(min(1, max(0, v)))
            }
        }
    }
}
