/// Fully connected layer: y = x·W + b, W of shape [in, out] (row-major, input-major), b of shape [out].
/// In the paper's notation a DeepRing block computes `Φ(W_i·a_{i−1} + b_i)` (Eq. 5); the activation Φ is a
/// separate layer here.
public final class Dense: Layer {
    public let spec: LayerSpec
    public let inFeatures: Int, outFeatures: Int
    public var needsInputGradient = true
    let store: ParameterStore
    let w: ParameterStore.View, b: ParameterStore.View
    private var input: Tensor?

    init(spec: LayerSpec, inFeatures: Int, store: ParameterStore, index: Int) {
        self.spec = spec
        self.inFeatures = inFeatures
        self.outFeatures = spec.units ?? 0
        self.store = store
        w = store.add(name: "layers.\(index).weight", shape: [inFeatures, outFeatures], decays: true)
        b = store.add(name: "layers.\(index).bias", shape: [outFeatures])
    }

    public var outputShape: [Int] { [outFeatures] }

    public func forward(_ x: Tensor, training: Bool) -> Tensor {
        let n = x.batch
        precondition(x.itemSize == inFeatures, "dense layer expects \(inFeatures) inputs, got \(x.itemSize)")
        var y = Tensor(uninitialized: [n, outFeatures])
        Dense.apply(x: x.data, rows: n, inFeatures: inFeatures, outFeatures: outFeatures,
                    store: store, w: w, b: b, into: &y.data)
        if training { input = x }
        return y
    }

    /// y = x·W + b. Each output starts from its bias and accumulates one FMA chain over the inputs in order.
    static func apply(x: [Float], rows n: Int, inFeatures: Int, outFeatures: Int,
                      store: ParameterStore, w: ParameterStore.View, b: ParameterStore.View, into y: inout [Float]) {
        store.withValues { p in
            x.withUnsafeBufferPointer { xp in
                y.withUnsafeMutableBufferPointer { yp in
                    Elementwise.broadcastRows(p + b.offset, rows: n, cols: outFeatures, into: yp.baseAddress!)
                    GEMM.multiply(m: n, n: outFeatures, k: inFeatures,
                                  a: .init(xp.baseAddress!, rowStride: inFeatures, colStride: 1),
                                  b: .init(p + w.offset, rowStride: outFeatures, colStride: 1),
                                  c: yp.baseAddress!, ldc: outFeatures, accumulate: true)
                }
            }
        }
    }

    public func backward(_ dy: Tensor) -> Tensor {
        guard let x = input else { preconditionFailure("backward before a training forward") }
        let n = x.batch
        var dx = needsInputGradient ? Tensor(uninitialized: [n, inFeatures]) : Tensor(zeros: [0])
        store.withValues { p in
            store.withGradients { g in
                x.data.withUnsafeBufferPointer { xp in
                    dy.data.withUnsafeBufferPointer { dyp in
                        // ∂W = xᵀ·dy
                        GEMM.multiply(m: inFeatures, n: outFeatures, k: n,
                                      a: .init(xp.baseAddress!, rowStride: 1, colStride: inFeatures),
                                      b: .init(dyp.baseAddress!, rowStride: outFeatures, colStride: 1),
                                      c: g + w.offset, ldc: outFeatures, accumulate: false)
                        Elementwise.sumRows(dyp.baseAddress!, rows: n, cols: outFeatures, into: g + b.offset, accumulate: false)
                        if needsInputGradient {
                            dx.data.withUnsafeMutableBufferPointer { dxp in
                                // ∂x = dy·Wᵀ
                                GEMM.multiply(m: n, n: inFeatures, k: outFeatures,
                                              a: .init(dyp.baseAddress!, rowStride: outFeatures, colStride: 1),
                                              b: .init(p + w.offset, rowStride: 1, colStride: outFeatures),
                                              c: dxp.baseAddress!, ldc: inFeatures)
                            }
                        }
                    }
                }
            }
        }
        input = nil
        return dx
    }
}
