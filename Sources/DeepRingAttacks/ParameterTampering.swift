import DeepRingEngine
import DeepRingData
import DeepRingProtocol
import Foundation

/// The paper's parameter tampering attack (Algorithm 1, after Keshari et al.'s guided dropout):
///
/// 1. freeze the trained weights W_j;
/// 2. give every layer j a logistic importance parameter p_j; the forward pass uses `W_j ⊙ sigmoid(p_j)`;
/// 3. train only the p's on (images, labels) with cross-entropy;
/// 4. the layer with the largest p is the most important: add Gaussian noise N(μ, σ) of its weight shape.
///
/// Layer granularity (one p per layer) is the default; `.unit` learns one p per output unit / filter.
public enum ParameterTampering {
    public enum Granularity: String, Sendable, CaseIterable { case layer, unit }

    public struct Config: Sendable {
        public var granularity: Granularity = .layer
        public var epochs = 1
        public var batchSize = 128
        /// Adam step size for the p's.
        public var learningRate: Float = 0.05
        /// Initial p (sigmoid(0) = 0.5: every layer starts at half strength and the loss decides which grow).
        public var initialP: Float = 0
        /// At most this many training samples (the attacker's data).
        public var maxSamples = 60_000
        public var seed: UInt64 = 1
        public init() {}
    }

    public struct Importance: Sendable, Codable {
        /// p per weight layer (ring position j = index j − 1); for `.unit`, one value per output unit.
        public var p: [[Float]]
        /// Layer-level score: p itself, or the mean over units for `.unit`.
        public var score: [Float]
        /// The most important layer (ring position, 1-based).
        public var chosenPosition: Int
        public var lossBefore: Float, lossAfter: Float
    }

    @inline(__always) static func sigmoid(_ x: Float) -> Float { 1 / (1 + Foundation.exp(-x)) }

    /// Steps 1–3: learns the importance of every weight layer of `model` (left unchanged) on `data`.
    public static func learnImportance(_ model: Model, data: Dataset, config: Config = Config(),
                                       progress: (Int, Int, Float) -> Void = { _, _, _ in }) throws -> Importance {
        let m = try model.copy()
        let views = m.weightViews
        let original = views.map { Array(m.parameters.values[$0.range]) }
        let units = views.map { $0.shape.last ?? 1 }
        var p = units.map { [Float](repeating: config.initialP, count: config.granularity == .layer ? 1 : $0) }
        // Adam state for the p's.
        var mom = p.map { $0.map { _ in Float(0) } }, vel = mom
        let b1: Float = 0.9, b2: Float = 0.999, eps: Float = 1e-8
        var t = 0
        func applyScales() {
            for (j, v) in views.enumerated() {
                let u = units[j]
                let s = p[j].map(sigmoid)
                var w = original[j]
                for i in 0..<w.count { w[i] *= s[p[j].count == 1 ? 0 : i % u] }
                m.parameters.set(v, w)
            }
        }
        var rng = SeededRandom(seed: config.seed)
        let n = min(data.count, config.maxSamples)
        var order = Array(0..<n)
        let bs = max(1, config.batchSize)
        let batches = (n + bs - 1) / bs
        var firstLoss: Float?, lastLoss: Float = 0
        for epoch in 0..<max(1, config.epochs) {
            rng.shuffle(&order)
            var lossSum: Float = 0
            for b in 0..<batches {
                let (x, y) = data.batch(order[(b * bs)..<min(n, (b + 1) * bs)])
                applyScales()
                let loss = m.computeGradients(x, y)
                if firstLoss == nil { firstLoss = loss }
                lossSum += loss
                t += 1
                let grads = m.parameters.gradients
                for (j, v) in views.enumerated() {
                    // ∂L/∂p_u = sigmoid'(p_u) · Σ_k ∂L/∂W̃[k,u] · W[k,u]   (W̃ = W ⊙ sigmoid(p))
                    let u = units[j]
                    var dot = [Float](repeating: 0, count: p[j].count)
                    let w = original[j]
                    for i in 0..<w.count { dot[p[j].count == 1 ? 0 : i % u] += grads[v.offset + i] * w[i] }
                    for k in 0..<p[j].count {
                        let s = sigmoid(p[j][k])
                        let g = dot[k] * s * (1 - s)
                        mom[j][k] = b1 * mom[j][k] + (1 - b1) * g
                        vel[j][k] = b2 * vel[j][k] + (1 - b2) * g * g
                        let mh = mom[j][k] / (1 - Foundation.pow(b1, Float(t))), vh = vel[j][k] / (1 - Foundation.pow(b2, Float(t)))
                        p[j][k] -= config.learningRate * mh / (vh.squareRoot() + eps)
                    }
                }
                progress(epoch * batches + b + 1, batches * max(1, config.epochs), loss)
            }
            lastLoss = lossSum / Float(batches)
        }
        let score = p.map { $0.reduce(0, +) / Float($0.count) }
        let chosen = score.indices.max { score[$0] < score[$1] }! + 1
        return Importance(p: p, score: score, chosenPosition: chosen, lossBefore: firstLoss ?? 0, lossAfter: lastLoss)
    }

    /// Step 4: a copy of `model` with N(μ, σ) noise added to the weight tensor of ring position `position`.
    public static func addNoise(_ model: Model, position: Int, mu: Float, sigma: Float, seed: UInt64) throws -> Model {
        let m = try model.copy()
        let v = m.weightViews[position - 1]
        var rng = SeededRandom(seed: seed)
        var w = Array(m.parameters.values[v.range])
        for i in 0..<w.count { w[i] += mu + sigma * rng.normal() }
        m.parameters.set(v, w)
        return m
    }
}

/// Finds the noise level that brings the plain network's accuracy to a target (bisection on log σ; accuracy
/// falls with σ for a fixed noise draw). Used to land the plain network in the paper's regime.
public enum Calibration {
    public static func sigma(target: Double, lower: Float = 1e-4, upper: Float = 20, iterations: Int = 16,
                             accuracyAt: (Float) throws -> Double) rethrows -> Float {
        var lo = Foundation.log(lower), hi = Foundation.log(upper)
        for _ in 0..<iterations {
            let mid = (lo + hi) / 2
            if try accuracyAt(Foundation.exp(mid)) > target { lo = mid } else { hi = mid }
        }
        return Foundation.exp((lo + hi) / 2)
    }
}
