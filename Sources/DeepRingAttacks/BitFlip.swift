import DeepRingEngine
import DeepRingProtocol
import Foundation

/// Bit-flip attacks on the parameters' IEEE-754 float32 bits (beyond the paper): bit 31 is the sign, 30…23 the
/// exponent (30 its most significant bit), 22…0 the mantissa.
public struct BitFlip: Sendable, Codable, Equatable, CustomStringConvertible {
    /// Index into the model's contiguous parameter buffer.
    public var index: Int
    public var bit: Int
    public var before: Float
    public var after: Float

    public var description: String { "param[\(index)] bit \(bit): \(before) → \(after)" }

    public static func flipped(_ v: Float, bit: Int) -> Float { Float(bitPattern: v.bitPattern ^ (UInt32(1) << UInt32(bit))) }

    /// A copy of `model` with `flips` applied.
    public static func apply(_ flips: [BitFlip], to model: Model) throws -> Model {
        let m = try model.copy()
        var v = m.parameters.values
        for f in flips { v[f.index] = flipped(v[f.index], bit: f.bit) }
        m.parameters.setAll(v)
        return m
    }

    /// Loss and accuracy of `model` with `flip` applied, measured in place (the bit is flipped back afterwards):
    /// no copy of the parameters per candidate.
    static func measure(_ flip: BitFlip, on model: Model, x: Tensor, labels: [Int]) -> (loss: Float, accuracy: Double) {
        let mask = UInt32(1) << UInt32(flip.bit)
        model.parameters.withValues { $0[flip.index] = Float(bitPattern: $0[flip.index].bitPattern ^ mask) }
        defer { model.parameters.withValues { $0[flip.index] = Float(bitPattern: $0[flip.index].bitPattern ^ mask) } }
        return model.lossAndAccuracy(x, labels)
    }

    /// Which bits an attack may flip.
    public enum Bits: String, Sendable, CaseIterable {
        case any, sign, exponent, mantissa
        var range: [Int] {
            switch self {
            case .any: return Array(0...31)
            case .sign: return [31]
            case .exponent: return Array(23...30)
            case .mantissa: return Array(0...22)
            }
        }
    }

    /// k flips at uniformly random positions of the whole parameter buffer and random bits of the chosen kind.
    public static func random(_ model: Model, count k: Int, bits: Bits = .any, seed: UInt64) -> [BitFlip] {
        var rng = SeededRandom(seed: seed)
        var values = model.parameters.values
        return (0..<k).map { _ in
            let i = rng.int(below: values.count)
            let b = bits.range[rng.int(below: bits.range.count)]
            let f = BitFlip(index: i, bit: b, before: values[i], after: flipped(values[i], bit: b))
            values[i] = f.after
            return f
        }
    }

    /// The single most damaging exponent-MSB flip (Terminal Brain Damage, Hong et al. 2019): among the `candidates`
    /// weights with the largest |∂L/∂w| on the attack batch, flip bit 30 of each and keep the one with the
    /// highest loss (measured, not estimated).
    public static func worstExponentFlip(_ model: Model, x: Tensor, labels: [Int], candidates: Int = 64) throws -> BitFlip {
        let g = try model.copy()
        g.computeGradients(x, labels)
        let grads = g.parameters.gradients
        var cands: [Int] = []
        for v in model.weightViews { cands += topIndices(grads, in: v.range, count: candidates) }
        cands = Array(cands.sorted { abs(grads[$0]) > abs(grads[$1]) }.prefix(candidates))
        var best: (BitFlip, Float)?
        let probe = try model.copy()   // `g` ran a training-mode pass; candidates are measured on the model as given
        let values = model.parameters.values
        for i in cands {
            let f = BitFlip(index: i, bit: 30, before: values[i], after: flipped(values[i], bit: 30))
            let loss = measure(f, on: probe, x: x, labels: labels).loss
            if best == nil || loss > best!.1 { best = (f, loss) }
        }
        return best!.0
    }

    public struct SearchStep: Sendable, Codable {
        public var flip: BitFlip
        public var loss: Float
        public var accuracy: Double
    }

    /// Progressive bit search (Rakin et al., ICCV 2019, "Bit-Flip Attack"), adapted to float32: at each step,
    /// compute ∂L/∂w on the attack batch; in every layer take the `topK` weights with the largest |∂L/∂w|; for
    /// each allowed bit estimate the loss increase ∂L/∂w · (w_flipped − w); measure the true loss of the `evaluate`
    /// best estimates and flip the one that raises it most. Stops after `maxFlips` or at chance accuracy.
    /// `bits` excludes the exponent MSB by default: one such flip alone is the Terminal-Brain-Damage attack.
    public static func progressiveSearch(_ model: Model, x: Tensor, labels: [Int], maxFlips: Int = 10,
                                         bits: [Int] = [31] + Array(23...29) + [22], topK: Int = 10, evaluate: Int = 24,
                                         chance: Double? = nil,
                                         progress: (SearchStep) -> Void = { _ in }) throws -> [SearchStep] {
        let current = try model.copy()
        var steps: [SearchStep] = []
        let stopAt = chance ?? (1.0 / Double(max(2, model.architecture.classes)) + 0.01)
        for _ in 0..<maxFlips {
            current.computeGradients(x, labels)
            let grads = current.parameters.gradients
            let values = current.parameters.values
            var estimates: [(BitFlip, Float)] = []
            for v in current.weightViews {
                for i in topIndices(grads, in: v.range, count: topK) {
                    for b in bits {
                        let a = flipped(values[i], bit: b)
                        guard a.isFinite, abs(a) < 1e30 else { continue }
                        estimates.append((BitFlip(index: i, bit: b, before: values[i], after: a), grads[i] * (a - values[i])))
                    }
                }
            }
            estimates.sort { $0.1 > $1.1 }
            var best: (BitFlip, Float, Double)?
            for (f, _) in estimates.prefix(evaluate) {
                let (loss, acc) = measure(f, on: current, x: x, labels: labels)
                if best == nil || loss > best!.1 { best = (f, loss, acc) }
            }
            guard let (f, loss, acc) = best else { break }
            current.parameters.withValues { $0[f.index] = f.after }
            let step = SearchStep(flip: f, loss: loss, accuracy: acc)
            steps.append(step)
            progress(step)
            if acc <= stopAt { break }
        }
        return steps
    }

    /// Indices of the `count` largest |g| in `range`.
    static func topIndices(_ g: [Float], in range: Range<Int>, count: Int) -> [Int] {
        var best: [(Int, Float)] = []
        for i in range {
            let a = abs(g[i])
            if best.count < count { best.append((i, a)); if best.count == count { best.sort { $0.1 > $1.1 } }; continue }
            if a > best[count - 1].1 {
                var k = count - 1
                while k > 0 && best[k - 1].1 < a { k -= 1 }
                best.insert((i, a), at: k)
                best.removeLast()
            }
        }
        return best.map(\.0)
    }
}
