import DeepRingEngine
import DeepRingProtocol
import Foundation

/// Helpers the attacks share: copies of a model, its weight tensors in ring order, and evaluation of the plain
/// network with a perturbation between two of its layers.
extension Model {
    /// An independent copy (same architecture, same parameter bits).
    public func copy() throws -> Model {
        let m = try Model(architecture, initialise: false)
        m.parameters.setAll(parameters.values)
        return m
    }

    /// The weight tensor of every layer with parameters (dense or convolution), in order: index j − 1 is the
    /// weight of ring position j (the paper's layer j).
    public var weightViews: [ParameterStore.View] { parameters.views.filter(\.decays) }

    /// Mean cross-entropy and accuracy on a batch (inference mode). A non-finite loss (weights blown up by a bit
    /// flip) counts as +∞.
    public func lossAndAccuracy(_ x: Tensor, _ labels: [Int]) -> (loss: Float, accuracy: Double) {
        let logits = forward(x)
        let (loss, _, correct) = softmaxCrossEntropy(logits: logits, labels: labels)
        return (loss.isFinite ? loss : .infinity, Double(correct) / Double(max(1, labels.count)))
    }

    /// ∂L/∂θ for every parameter on a batch (mean cross-entropy), written to `parameters.gradients`.
    /// BatchNorm layers use batch statistics here (the engine's training mode), running statistics everywhere else.
    @discardableResult
    public func computeGradients(_ x: Tensor, _ labels: [Int]) -> Float {
        let logits = forward(x, training: true)
        let (loss, grad, _) = softmaxCrossEntropy(logits: logits, labels: labels)
        backward(grad)
        return loss
    }
}

/// The plain network as the chain of its ring layers, so that an input between two layers can be perturbed
/// exactly where a compromised block would (position p perturbs the input of the paper's layer p).
public final class StagedNetwork {
    public let stages: [Model]

    public init(_ model: Model) throws {
        stages = try RingLayer.split(model).map { try $0.model() }
        for s in stages { for l in s.layers { l.needsInputGradient = true } }
    }

    /// Logits, with `perturb` applied to the input of ring position `position` (1-based), in chunks of `batchSize`.
    public func logits(_ x: Tensor, perturbAt position: Int? = nil, _ perturb: ((Tensor) -> Tensor)? = nil,
                       batchSize: Int = 1000) -> Tensor {
        var parts: [Tensor] = []
        var i = 0
        while i < x.batch {
            let j = min(x.batch, i + batchSize)
            var h = x.slice(i..<j)
            for (k, s) in stages.enumerated() {
                if let p = position, let f = perturb, k == p - 1 { h = f(h) }
                h = s.forward(h)
            }
            parts.append(h)
            i = j
        }
        return Tensor.concatenate(parts)
    }

    /// ∂L/∂(input of ring position `position`) for loss `CE(logits, targets)`, with the stages from `position` on.
    public func inputGradient(at position: Int, input: Tensor, targets: [Int]) -> (logits: Tensor, gradient: Tensor) {
        var h = input
        for s in stages[(position - 1)...] { h = s.forward(h, training: true) }
        let (_, g0, _) = softmaxCrossEntropy(logits: h, labels: targets)
        var g = g0
        for s in stages[(position - 1)...].reversed() { g = s.backward(g) }
        return (h, g)
    }
}

/// Accuracy of predictions against labels.
public func accuracy(_ predictions: [Int], _ labels: [Int]) -> Double {
    guard !labels.isEmpty else { return 0 }
    return Double(zip(predictions, labels).filter { $0 == $1 }.count) / Double(labels.count)
}

/// Predicted classes; rows with a non-finite logit count as no prediction (−1, always wrong).
public func predictions(_ logits: Tensor) -> [Int] {
    let cols = logits.itemSize
    return (0..<logits.batch).map { r in
        var best = -1
        var bv = -Float.infinity
        for c in 0..<cols {
            let v = logits.data[r * cols + c]
            if !v.isFinite { return -1 }
            if v > bv { bv = v; best = c }
        }
        return best
    }
}
