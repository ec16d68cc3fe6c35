import DeepRingEngine
import DeepRingProtocol
import Foundation

/// The paper's input perturbation attack: a compromised block perturbs its input before computing its layer
/// (the 3rd dense layer's input for the MLP, the 3rd convolution's input for VGG-19). The same function is given
/// to the ring's hook (`RingRuntime.setPerturbation`) and to the plain network (`StagedNetwork.logits`).
public enum InputPerturbation {
    /// Adds N(0, σ) noise to every input value. Deterministic: the k-th call uses seed + k.
    public static func gaussian(sigma: Float, seed: UInt64) -> (Tensor) -> Tensor {
        final class Counter: @unchecked Sendable { var calls: UInt64 = 0 }
        let counter = Counter()
        return { x in
            var rng = SeededRandom(seed: seed &+ counter.calls &* 0x9E37_79B9)
            counter.calls += 1
            var y = x
            for i in 0..<y.count { y.data[i] += sigma * rng.normal() }
            return y
        }
    }

    /// The stronger, gradient-sign variant (targeted FGSM on the block's input): for each row, take the class the
    /// network currently ranks second and step ε against the sign of ∂CE(target)/∂input, pushing every row towards a
    /// wrong class with the same per-value magnitude as noise of σ = ε. White-box: the attacker knows the layers from
    /// its position on (`network`, its own copy). A ReLU network's block inputs are non-negative; the result is
    /// clamped at 0 so that the perturbed input still looks like a ReLU output.
    public static func gradientSign(epsilon: Float, network: StagedNetwork, position: Int) -> (Tensor) -> Tensor {
        return { x in
            // Logits of the stages from `position` on, for the clean input.
            var h = x
            for s in network.stages[(position - 1)...] { h = s.forward(h) }
            let cols = h.itemSize
            let targets = (0..<h.batch).map { r -> Int in
                let row = Array(h.data[(r * cols)..<((r + 1) * cols)])
                let top = row.indices.max { row[$0] < row[$1] }!
                var second = top == 0 ? 1 : 0
                for c in 0..<cols where c != top && row[c] > row[second] { second = c }
                return second
            }
            let (_, g) = network.inputGradient(at: position, input: x, targets: targets)
            var y = x
            let nonNegative = x.data.allSatisfy { $0 >= 0 }
            for i in 0..<y.count {
                let s: Float = g.data[i] > 0 ? 1 : (g.data[i] < 0 ? -1 : 0)
                y.data[i] -= epsilon * s
                if nonNegative && y.data[i] < 0 { y.data[i] = 0 }
            }
            return y
        }
    }
}
