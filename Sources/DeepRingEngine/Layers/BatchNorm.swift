/// Batch normalisation over the last dimension (features of a dense layer, channels of an NHWC image).
/// Training normalises with batch statistics and updates running averages (momentum 0.1); inference uses
/// the running averages. Parameters: weight γ, bias β (trainable) and running mean/variance (not trainable,
/// but stored in the parameter buffer so that they are hashed, saved and restored with the rest).
public final class BatchNorm: Layer {
    public let spec: LayerSpec
    public let outputShape: [Int]
    public var needsInputGradient = true
    let channels: Int
    let eps: Float = 1e-5
    let momentum: Float = 0.1
    let store: ParameterStore
    let gamma: ParameterStore.View, beta: ParameterStore.View
    let runMean: ParameterStore.View, runVar: ParameterStore.View
    private var xhat: [Float] = []
    private var invStd: [Float] = []

    init(spec: LayerSpec, shape: [Int], store: ParameterStore, index: Int) {
        self.spec = spec
        self.outputShape = shape
        channels = shape.last ?? 1
        self.store = store
        gamma = store.add(name: "layers.\(index).weight", shape: [channels])
        beta = store.add(name: "layers.\(index).bias", shape: [channels])
        runMean = store.add(name: "layers.\(index).running_mean", shape: [channels], trainable: false)
        runVar = store.add(name: "layers.\(index).running_var", shape: [channels], trainable: false)
    }

    func initialise() {
        store.set(gamma, [Float](repeating: 1, count: channels))
        store.set(runVar, [Float](repeating: 1, count: channels))
    }

    public func forward(_ x: Tensor, training: Bool) -> Tensor {
        let c = channels
        let rows = x.count / c
        var y = Tensor(uninitialized: x.shape)
        if !training {
            // Inference only reads the parameters (running statistics included).
            store.withReadOnlyValues { p in
                x.data.withUnsafeBufferPointer { xp in
                    y.data.withUnsafeMutableBufferPointer { yp in
                        let g = p + gamma.offset, bt = p + beta.offset
                        var scale = [Float](repeating: 0, count: c), shift = [Float](repeating: 0, count: c)
                        for j in 0..<c {
                            scale[j] = g[j] / (p[runVar.offset + j] + eps).squareRoot()
                            shift[j] = bt[j] - p[runMean.offset + j] * scale[j]
                        }
                        for r in 0..<rows {
                            let xr = xp.baseAddress! + r * c, yr = yp.baseAddress! + r * c
                            for j in 0..<c { yr[j] = xr[j] * scale[j] + shift[j] }
                        }
                    }
                }
            }
            return y
        }
        // Training updates the running statistics: a mutable access.
        store.withValues { p in
            x.data.withUnsafeBufferPointer { xp in
                y.data.withUnsafeMutableBufferPointer { yp in
                    let g = p + gamma.offset, bt = p + beta.offset
                    var mean = [Double](repeating: 0, count: c), vr = [Double](repeating: 0, count: c)
                    for r in 0..<rows { let xr = xp.baseAddress! + r * c; for j in 0..<c { mean[j] += Double(xr[j]) } }
                    for j in 0..<c { mean[j] /= Double(rows) }
                    for r in 0..<rows {
                        let xr = xp.baseAddress! + r * c
                        for j in 0..<c { let d = Double(xr[j]) - mean[j]; vr[j] += d * d }
                    }
                    for j in 0..<c { vr[j] /= Double(rows) }
                    invStd = (0..<c).map { Float(1 / (vr[$0] + Double(eps)).squareRoot()) }
                    xhat = [Float](repeating: 0, count: x.count)
                    for r in 0..<rows {
                        let xr = xp.baseAddress! + r * c, yr = yp.baseAddress! + r * c
                        for j in 0..<c {
                            let h = (xr[j] - Float(mean[j])) * invStd[j]
                            xhat[r * c + j] = h
                            yr[j] = h * g[j] + bt[j]
                        }
                    }
                    let unbias = rows > 1 ? Double(rows) / Double(rows - 1) : 1
                    for j in 0..<c {
                        p[runMean.offset + j] = (1 - momentum) * p[runMean.offset + j] + momentum * Float(mean[j])
                        p[runVar.offset + j] = (1 - momentum) * p[runVar.offset + j] + momentum * Float(vr[j] * unbias)
                    }
                }
            }
        }
        return y
    }

    public func backward(_ dy: Tensor) -> Tensor {
        let c = channels
        let rows = dy.count / c
        var dx = Tensor(uninitialized: dy.shape)
        store.withReadOnlyValues { p in
            store.withGradients { gr in
                var sumDy = [Float](repeating: 0, count: c), sumDyX = [Float](repeating: 0, count: c)
                for r in 0..<rows {
                    for j in 0..<c {
                        let d = dy.data[r * c + j]
                        sumDy[j] += d
                        sumDyX[j] += d * xhat[r * c + j]
                    }
                }
                for j in 0..<c {
                    gr[gamma.offset + j] = sumDyX[j]
                    gr[beta.offset + j] = sumDy[j]
                }
                let invN = 1 / Float(rows)
                for r in 0..<rows {
                    for j in 0..<c {
                        let k = p[gamma.offset + j] * invStd[j]
                        let i = r * c + j
                        dx.data[i] = k * (dy.data[i] - invN * sumDy[j] - xhat[i] * invN * sumDyX[j])
                    }
                }
            }
        }
        xhat = []
        return dx
    }
}
