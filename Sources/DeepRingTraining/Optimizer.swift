import DeepRingData
import DeepRingEngine
/// Optimizers over the flat parameter buffer. Only trainable views are updated; weight decay (L2, added to
/// the gradient) applies to views marked `decays` (weights, not biases or normalisation parameters).
public enum OptimizerKind: String, Sendable, CaseIterable {
    case sgd, adam
}

public final class Optimizer {
    public let kind: OptimizerKind
    public var momentum: Float = 0.9
    public var beta1: Float = 0.9, beta2: Float = 0.999, eps: Float = 1e-8
    public var weightDecay: Float
    private var m: [Float]
    private var v: [Float]
    private var step = 0
    private let store: ParameterStore

    public init(_ kind: OptimizerKind, store: ParameterStore, weightDecay: Float = 0) {
        self.kind = kind
        self.store = store
        self.weightDecay = weightDecay
        m = [Float](repeating: 0, count: store.count)
        v = kind == .adam ? [Float](repeating: 0, count: store.count) : []
    }

    /// One update with learning rate `lr` from the gradients currently in the store. Element-wise, so it is
    /// split over threads by contiguous chunks (results do not depend on the split).
    public func update(lr: Float) {
        beginStep()
        update(lr: lr, within: 0..<store.count)
    }

    /// Starts a step: call once per step before `update(lr:within:)` on its parts.
    public func beginStep() { step += 1 }

    /// Updates the trainable parameters inside `span` (part of a step begun with `beginStep`). Element-wise,
    /// so updating a step's parts one by one gives the same values as `update(lr:)`.
    public func update(lr: Float, within span: Range<Int>) {
        let kind = self.kind, mom = momentum, b1 = beta1, b2 = beta2, eps = self.eps
        let c1 = 1 - DeterministicMath.power(b1, step), c2 = 1 - DeterministicMath.power(b2, step)
        // Contiguous runs of (range, decay) for trainable views, cut into chunks of at most 64k values.
        var runs: [(Range<Int>, Float)] = []
        for view in store.views where view.trainable {
            let range = view.range.clamped(to: span)
            var lo = range.lowerBound
            while lo < range.upperBound {
                let hi = min(range.upperBound, lo + 65536)
                runs.append((lo..<hi, view.decays ? weightDecay : 0))
                lo = hi
            }
        }
        store.withValues { w in
            store.withGradients { g in
                m.withUnsafeMutableBufferPointer { mp in
                    v.withUnsafeMutableBufferPointer { vp in
                        let box = UnsafeSendableBox((w, g, mp.baseAddress!, vp.baseAddress))
                        Parallel.forEach(runs.count, threads: span.count > 100_000 ? Engine.threads : 1) { r in
                            let (w, g, m, v) = box.value
                            let (range, wd) = runs[r]
                            switch kind {
                            case .sgd where mom == 0 && wd == 0:
                                // Plain SGD: the same values as the general case (m = g), without the velocity
                                // buffer's read and write.
                                for i in range { w[i] -= lr * g[i] }
                            case .sgd:
                                for i in range {
                                    let mi = mom * m[i] + (g[i] + wd * w[i])
                                    m[i] = mi
                                    w[i] -= lr * mi
                                }
                            case .adam:
                                let v = v!
                                let ic1 = 1 / c1, ic2 = 1 / c2
                                for i in range {
                                    let gi = g[i] + wd * w[i]
                                    let mi = b1 * m[i] + (1 - b1) * gi
                                    let vi = b2 * v[i] + (1 - b2) * gi * gi
                                    m[i] = mi; v[i] = vi
                                    w[i] -= lr * (mi * ic1) / ((vi * ic2).squareRoot() + eps)
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// Learning-rate schedules over the whole run (`progress` in [0, 1]).
public enum Schedule: String, Sendable, CaseIterable {
    case constant, cosine, step

    /// Learning rate at `progress` with a linear warm-up over the first `warmup` fraction.
    public func rate(base: Float, progress: Double, warmup: Double = 0.02) -> Float {
        if progress < warmup { return base * Float((progress + 1e-3) / warmup) }
        switch self {
        case .constant: return base
        case .cosine: return base * Float(0.5 * (1 + cos(Double.pi * min(1, progress))))
        case .step: return base * (progress < 0.5 ? 1 : progress < 0.75 ? 0.1 : 0.01)
        }
    }
}

import Foundation
