import DeepRingEngine
import Testing

/// Finite-difference checks of every layer's hand-written backward pass (Float32, central differences).
@Suite struct GradientTests {
    /// Loss of a model on (x, labels) in training mode.
    func loss(_ m: Model, _ x: Tensor, _ y: [Int]) -> Double {
        Double(softmaxCrossEntropy(logits: m.forward(x, training: true), labels: y).loss)
    }

    /// Compares analytical and numerical gradients for sampled parameters and inputs.
    func check(_ arch: Architecture, batch: Int = 3, seed: UInt64 = 1, samples: Int = 12,
               eps: Float = 2e-3, tol: Double = 3e-2, inputIsImage: Bool = true) throws {
        let m = try Model(arch, seed: seed)
        // Small random non-zero biases so ReLU kinks are rare and biases matter.
        for v in m.parameters.views where v.trainable && !v.decays && v.name.hasSuffix("bias") {
            m.parameters.set(v, randomFloats(v.count, seed: seed &+ 77, scale: 0.1))
        }
        m.layers[0].needsInputGradient = true
        for l in m.layers { l.needsInputGradient = true }
        let x = Tensor(shape: [batch] + arch.inputShape, data: randomFloats(batch * arch.inputShape.reduce(1, *), seed: seed &+ 5))
        var r = SeededRandom(seed: seed)
        let y = (0..<batch).map { _ in r.int(below: arch.classes) }
        m.parameters.zeroGradients()
        let (_, g, _) = softmaxCrossEntropy(logits: m.forward(x, training: true), labels: y)
        let dx = m.backward(g)
        let grads = m.parameters.gradients
        func agree(_ a: Double, _ n: Double) -> Bool { abs(a - n) <= tol * max(1e-2, abs(a) + abs(n)) }
        for v in m.parameters.views where v.trainable {
            for _ in 0..<samples {
                let i = v.offset + r.int(below: v.count)
                var vals = m.parameters.values
                let w0 = vals[i]
                vals[i] = w0 + eps; m.parameters.setAll(vals); let lp = loss(m, x, y)
                vals[i] = w0 - eps; m.parameters.setAll(vals); let lm = loss(m, x, y)
                vals[i] = w0; m.parameters.setAll(vals)
                let num = (lp - lm) / Double(2 * eps)
                #expect(agree(Double(grads[i]), num), "\(v.name)[\(i - v.offset)]: analytical \(grads[i]) numerical \(num)")
            }
        }
        #expect(dx.count == x.count)
        for _ in 0..<samples {
            let i = r.int(below: x.count)
            var xp = x, xm = x
            xp.data[i] += eps; xm.data[i] -= eps
            let num = (loss(m, xp, y) - loss(m, xm, y)) / Double(2 * eps)
            #expect(agree(Double(dx.data[i]), num), "input[\(i)]: analytical \(dx.data[i]) numerical \(num)")
        }
    }

    @Test func dense() throws {
        try check(Architecture(name: "t", inputShape: [7], classes: 4, layers: [.dense(5), .relu, .dense(4)]))
    }

    @Test func softmaxCrossEntropyAlone() throws {
        try check(Architecture(name: "t", inputShape: [6], classes: 6, layers: [.dense(6)]), batch: 5)
    }

    @Test func conv2DStride1Padding1() throws {
        try check(Architecture(name: "t", inputShape: [5, 5, 2], classes: 3,
                               layers: [.conv(3), .relu, .flatten, .dense(3)]))
    }

    @Test func conv2DStride2NoPadding() throws {
        try check(Architecture(name: "t", inputShape: [7, 6, 3], classes: 3,
                               layers: [.conv(4, kernel: 3, stride: 2, padding: 0), .flatten, .dense(3)]))
    }

    @Test func maxPool() throws {
        try check(Architecture(name: "t", inputShape: [6, 6, 2], classes: 3,
                               layers: [.conv(2), .maxPool(2), .flatten, .dense(3)]))
    }

    @Test func batchNormOnImagesAndFeatures() throws {
        try check(Architecture(name: "t", inputShape: [4, 4, 2], classes: 3,
                               layers: [.conv(3), .batchNorm, .relu, .flatten, .dense(5), .batchNorm, .dense(3)]),
                  batch: 4, tol: 5e-2)
    }

    @Test func flattenAndReLU() throws {
        try check(Architecture(name: "t", inputShape: [3, 3, 1], classes: 2, layers: [.flatten, .relu, .dense(2)]))
    }

    @Test func dropoutBackwardUsesTheForwardMask() throws {
        let m = try Model(Architecture(name: "t", inputShape: [50], classes: 50, layers: [.dropout(0.5), .dense(50)]))
        let d = m.layers[0]
        d.needsInputGradient = true
        let x = Tensor(shape: [4, 50], data: randomFloats(200, seed: 3).map { $0 + 2 })
        let y = d.forward(x, training: true)
        let dy = Tensor(shape: [4, 50], data: randomFloats(200, seed: 4))
        let dx = d.backward(dy)
        var zeros = 0
        for i in 0..<200 {
            let mask = y.data[i] / x.data[i]
            #expect(abs(dx.data[i] - dy.data[i] * mask) < 1e-5)
            #expect(mask == 0 || abs(mask - 2) < 1e-5)
            if mask == 0 { zeros += 1 }
        }
        #expect(zeros > 60 && zeros < 140, "dropout 0.5 zeroed \(zeros) of 200")
        #expect(d.forward(x, training: false) == x)
    }

    /// backward writes (not adds) the gradients, so no zeroing is needed between steps; convolution sums its
    /// chunks into the same result.
    @Test func backwardOverwritesGradients() throws {
        let m = try Model(Architecture(name: "t", inputShape: [6, 6, 2], classes: 3,
                                       layers: [.conv(3), .batchNorm, .relu, .flatten, .dense(3)]), seed: 4)
        let x = Tensor(shape: [2, 6, 6, 2], data: randomFloats(144, seed: 2))
        func grads() -> [Float] {
            let (_, g, _) = softmaxCrossEntropy(logits: m.forward(x, training: true), labels: [0, 2])
            m.backward(g)
            return m.parameters.gradients
        }
        let a = grads(), b = grads()
        #expect(a.map(\.bitPattern) == b.map(\.bitPattern))
        #expect(a.contains { $0 != 0 })
    }
}
