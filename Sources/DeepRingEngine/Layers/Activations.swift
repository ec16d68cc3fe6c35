/// Rectified linear unit, Φ(z) = max(0, z) (the paper's hidden activation).
public final class ReLU: Layer {
    public let spec: LayerSpec
    public let outputShape: [Int]
    public var needsInputGradient = true
    private var output: Tensor?

    init(spec: LayerSpec, shape: [Int]) { self.spec = spec; self.outputShape = shape }

    public func forward(_ x: Tensor, training: Bool) -> Tensor {
        var y = x
        ReLU.applyInPlace(&y)
        if training { output = y }
        return y
    }

    /// max(0, z) in place.
    public static func applyInPlace(_ y: inout Tensor) {
        y.data.withUnsafeMutableBufferPointer { p in clamp(p.baseAddress!, count: p.count) }
    }

    /// max(0, z) on `count` values in place, 16 lanes at a time (negative values become +0; −0 and NaN stay).
    @inline(__always)
    public static func clamp(_ base: UnsafeMutablePointer<Float>, count n: Int) {
        var i = 0
        while i + 16 <= n {
            let v = UnsafeRawPointer(base + i).loadUnaligned(as: SIMD16<Float>.self)
            UnsafeMutableRawPointer(base + i).storeBytes(of: v.replacing(with: 0, where: v .< 0), as: SIMD16<Float>.self)
            i += 16
        }
        while i < n { if base[i] < 0 { base[i] = 0 }; i += 1 }
    }

    /// Keeps `y` (this layer's output, computed in place by the caller) for the backward pass.
    func keep(output y: Tensor) { output = y }

    public func backward(_ dy: Tensor) -> Tensor {
        var dx = dy
        backward(inPlace: &dx)
        return dx
    }

    /// ∂x = ∂y where the output was positive, else 0, overwriting `dx` (holding ∂y) in place.
    public func backward(inPlace dx: inout Tensor) {
        guard let y = output else { preconditionFailure("backward before a training forward") }
        dx.data.withUnsafeMutableBufferPointer { d in
            y.data.withUnsafeBufferPointer { yp in
                let n = d.count
                var i = 0
                while i + 16 <= n {
                    let g = UnsafeRawPointer(d.baseAddress! + i).loadUnaligned(as: SIMD16<Float>.self)
                    let v = UnsafeRawPointer(yp.baseAddress! + i).loadUnaligned(as: SIMD16<Float>.self)
                    UnsafeMutableRawPointer(d.baseAddress! + i).storeBytes(of: g.replacing(with: 0, where: .!(v .> 0)), as: SIMD16<Float>.self)
                    i += 16
                }
                while i < n { if !(yp[i] > 0) { d[i] = 0 }; i += 1 }
            }
        }
        output = nil
    }
}

/// Reshapes [N, H, W, C] to [N, H·W·C].
public final class Flatten: Layer {
    public let spec: LayerSpec
    public let outputShape: [Int]
    public var needsInputGradient = true
    private var inputShape: [Int] = []

    init(spec: LayerSpec, shape: [Int]) { self.spec = spec; self.outputShape = [shape.reduce(1, *)] }

    public func forward(_ x: Tensor, training: Bool) -> Tensor {
        inputShape = x.shape
        return x.reshaped([x.batch, x.itemSize])
    }

    public func backward(_ dy: Tensor) -> Tensor { dy.reshaped(inputShape) }
}

/// Inverted dropout: in training each value is zeroed with probability `rate` and the rest scaled by 1/(1−rate);
/// identity at inference. The mask comes from a seeded generator, so training is reproducible.
public final class Dropout: Layer {
    public let spec: LayerSpec
    public let outputShape: [Int]
    public var needsInputGradient = true
    let rate: Float
    var rng: SeededRandom
    private var mask: [Float]?

    init(spec: LayerSpec, shape: [Int], seed: UInt64) {
        self.spec = spec; self.outputShape = shape
        self.rate = spec.rate ?? 0.5
        self.rng = SeededRandom(seed: seed)
    }

    public func forward(_ x: Tensor, training: Bool) -> Tensor {
        guard training, rate > 0 else { return x }
        let keep = 1 - rate, scale = 1 / keep
        var m = [Float](repeating: 0, count: x.count)
        for i in 0..<m.count where rng.uniform() < keep { m[i] = scale }
        var y = x
        for i in 0..<y.count { y.data[i] *= m[i] }
        mask = m
        return y
    }

    public func backward(_ dy: Tensor) -> Tensor {
        guard let m = mask else { return dy }
        var dx = dy
        for i in 0..<dx.count { dx.data[i] *= m[i] }
        mask = nil
        return dx
    }
}

/// Softmax over the last dimension, computed stably (the paper's output activation), with the engine's own eˣ
/// (`DeterministicMath`) so that every CPU gives the same probabilities.
public func softmax(_ logits: Tensor) -> Tensor {
    var out = logits
    let cols = logits.itemSize
    out.data.withUnsafeMutableBufferPointer { p in
        for r in 0..<logits.batch {
            let row = p.baseAddress! + r * cols
            var mx = row[0]
            for c in 1..<cols where row[c] > mx { mx = row[c] }
            var s: Float = 0
            for c in 0..<cols { row[c] = DeterministicMath.exp(row[c] - mx); s += row[c] }
            let inv = 1 / s
            for c in 0..<cols { row[c] *= inv }
        }
    }
    return out
}

/// Softmax fused with cross-entropy: returns the mean loss and ∂L/∂logits = (softmax − onehot)/N.
public func softmaxCrossEntropy(logits: Tensor, labels: [Int]) -> (loss: Float, gradient: Tensor, correct: Int) {
    let n = logits.batch, cols = logits.itemSize
    precondition(labels.count == n)
    let p = softmax(logits)
    var g = p
    var loss: Double = 0
    var correct = 0
    let inv = 1 / Float(n)
    for r in 0..<n {
        let y = labels[r]
        let row = r * cols
        loss -= DeterministicMath.log(Double(max(p.data[row + y], 1e-30)))
        var best = 0
        for c in 1..<cols where p.data[row + c] > p.data[row + best] { best = c }
        if best == y { correct += 1 }
        g.data[row + y] -= 1
        for c in 0..<cols { g.data[row + c] *= inv }
    }
    return (Float(loss / Double(n)), g, correct)
}

