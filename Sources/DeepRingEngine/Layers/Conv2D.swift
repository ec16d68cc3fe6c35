/// 2-D convolution on NHWC tensors by im2col + GEMM. Weights [k, k, Cin, Cout] (HWIO), bias [Cout].
public final class Conv2D: Layer {
    public let spec: LayerSpec
    public var needsInputGradient = true
    public let inH: Int, inW: Int, inC: Int
    public let outH: Int, outW: Int, outC: Int
    public let kernel: Int, stride: Int, padding: Int
    let store: ParameterStore
    let w: ParameterStore.View, b: ParameterStore.View
    private var input: Tensor?

    /// Values per row of the im2col matrix.
    var patchSize: Int { kernel * kernel * inC }

    init(spec: LayerSpec, inputShape: [Int], store: ParameterStore, index: Int) {
        self.spec = spec
        precondition(inputShape.count == 3, "conv2d needs an [H, W, C] input, got \(inputShape)")
        inH = inputShape[0]; inW = inputShape[1]; inC = inputShape[2]
        kernel = spec.kernel ?? 3; stride = spec.stride ?? 1; padding = spec.padding ?? 1
        outC = spec.filters ?? 0
        outH = (inH + 2 * padding - kernel) / stride + 1
        outW = (inW + 2 * padding - kernel) / stride + 1
        self.store = store
        w = store.add(name: "layers.\(index).weight", shape: [kernel, kernel, inC, outC], decays: true)
        b = store.add(name: "layers.\(index).bias", shape: [outC])
    }

    public var outputShape: [Int] { [outH, outW, outC] }

    /// Images per im2col block: enough for ≥ 512 GEMM rows (packing the weights once per block is then
    /// negligible), and otherwise as many as fit in 2 MB, so the block is still in cache when the GEMM reads it
    /// (with 32 MB blocks, VGG's 32×32 layers ran at a third of the GEMM's speed, waiting on memory). The result
    /// does not depend on the blocking: rows are independent, and ∂W continues one FMA chain across blocks.
    private func imagesPerChunk() -> Int {
        let rowsPerImage = max(1, outH * outW)
        let forRows = (512 + rowsPerImage - 1) / rowsPerImage
        let forCache = (1 << 19) / max(rowsPerImage * patchSize, 1)
        return max(1, forRows, forCache)
    }

    /// Writes the patches of images `n0..<n1` as rows of `cols` ([rows, k·k·Cin]).
    private func im2col(_ x: UnsafePointer<Float>, images n0: Int, _ n1: Int, into cols: UnsafeMutablePointer<Float>) {
        let ps = patchSize
        let rowsPerImage = outH * outW
        let colsBox = UnsafeSendableBox(cols)
        Parallel.ranges((n1 - n0) * rowsPerImage, threads: (n1 - n0) * rowsPerImage * ps > 65536 ? Engine.threads : 1) { rr in
            for r in rr {
                let n = n0 + r / rowsPerImage
                let pix = r % rowsPerImage
                let oy = pix / outW, ox = pix % outW
                var dst = colsBox.value + r * ps
                for ky in 0..<kernel {
                    let iy = oy * stride - padding + ky
                    for kx in 0..<kernel {
                        let ix = ox * stride - padding + kx
                        if iy >= 0 && iy < inH && ix >= 0 && ix < inW {
                            dst.update(from: x + ((n * inH + iy) * inW + ix) * inC, count: inC)
                        } else {
                            dst.update(repeating: 0, count: inC)
                        }
                        dst += inC
                    }
                }
            }
        }
    }

    public func forward(_ x: Tensor, training: Bool) -> Tensor {
        let n = x.batch
        precondition(x.itemSize == inH * inW * inC, "conv2d expects \([inH, inW, inC]) inputs")
        var y = Tensor(uninitialized: [n, outH, outW, outC])
        let chunk = imagesPerChunk()
        let ps = patchSize, rowsPerImage = outH * outW
        let scratch = UnsafeMutablePointer<Float>.allocate(capacity: min(chunk, n) * rowsPerImage * ps)
        defer { scratch.deallocate() }
        store.withValues { p in
            x.data.withUnsafeBufferPointer { xp in
                y.data.withUnsafeMutableBufferPointer { yp in
                    var n0 = 0
                    while n0 < n {
                        let n1 = min(n, n0 + chunk)
                        let rows = (n1 - n0) * rowsPerImage
                        let yc = yp.baseAddress! + n0 * rowsPerImage * outC
                        Elementwise.broadcastRows(p + b.offset, rows: rows, cols: outC, into: yc)
                        if kernel == 1 && stride == 1 && padding == 0 {
                            GEMM.multiply(m: rows, n: outC, k: ps,
                                          a: .init(xp.baseAddress! + n0 * rowsPerImage * inC, rowStride: ps, colStride: 1),
                                          b: .init(p + w.offset, rowStride: outC, colStride: 1),
                                          c: yc, ldc: outC, accumulate: true)
                        } else {
                            im2col(xp.baseAddress!, images: n0, n1, into: scratch)
                            GEMM.multiply(m: rows, n: outC, k: ps,
                                          a: .init(scratch, rowStride: ps, colStride: 1),
                                          b: .init(p + w.offset, rowStride: outC, colStride: 1),
                                          c: yc, ldc: outC, accumulate: true)
                        }
                        n0 = n1
                    }
                }
            }
        }
        if training { input = x }
        return y
    }

    public func backward(_ dy: Tensor) -> Tensor {
        guard let x = input else { preconditionFailure("backward before a training forward") }
        let n = x.batch
        var dx = Tensor(zeros: needsInputGradient ? x.shape : [0])
        let chunk = imagesPerChunk()
        let ps = patchSize, rowsPerImage = outH * outW
        let scratch = UnsafeMutablePointer<Float>.allocate(capacity: min(chunk, n) * rowsPerImage * ps)
        let dcols = UnsafeMutablePointer<Float>.allocate(capacity: needsInputGradient ? min(chunk, n) * rowsPerImage * ps : 1)
        defer { scratch.deallocate(); dcols.deallocate() }
        store.withValues { p in
            store.withGradients { g in
                x.data.withUnsafeBufferPointer { xp in
                    dy.data.withUnsafeBufferPointer { dyp in
                        dx.data.withUnsafeMutableBufferPointer { dxp in
                            var n0 = 0
                            while n0 < n {
                                let n1 = min(n, n0 + chunk)
                                let rows = (n1 - n0) * rowsPerImage
                                let dyc = dyp.baseAddress! + n0 * rowsPerImage * outC
                                im2col(xp.baseAddress!, images: n0, n1, into: scratch)
                                // ∂W = Σ_chunks colsᵀ·dy (the first chunk overwrites)
                                GEMM.multiply(m: ps, n: outC, k: rows,
                                              a: .init(scratch, rowStride: 1, colStride: ps),
                                              b: .init(dyc, rowStride: outC, colStride: 1),
                                              c: g + w.offset, ldc: outC, accumulate: n0 > 0)
                                Elementwise.sumRows(dyc, rows: rows, cols: outC, into: g + b.offset, accumulate: n0 > 0)
                                if needsInputGradient {
                                    // ∂cols = dy·Wᵀ, then scatter-add back to the image (col2im).
                                    GEMM.multiply(m: rows, n: ps, k: outC,
                                                  a: .init(dyc, rowStride: outC, colStride: 1),
                                                  b: .init(p + w.offset, rowStride: 1, colStride: outC),
                                                  c: dcols, ldc: ps)
                                    col2im(dcols, images: n0, n1, into: dxp.baseAddress!)
                                }
                                n0 = n1
                            }
                        }
                    }
                }
            }
        }
        input = nil
        return dx
    }

    private func col2im(_ cols: UnsafeMutablePointer<Float>, images n0: Int, _ n1: Int, into dx: UnsafeMutablePointer<Float>) {
        let ps = patchSize, rowsPerImage = outH * outW
        let box = UnsafeSendableBox((cols, dx))
        // Parallel over images: each image's gradient is summed in the same serial order.
        Parallel.forEach(n1 - n0) { i in
            let (cols, dx) = box.value
            let n = n0 + i
            for pix in 0..<rowsPerImage {
                let oy = pix / outW, ox = pix % outW
                var src = cols + (i * rowsPerImage + pix) * ps
                for ky in 0..<kernel {
                    let iy = oy * stride - padding + ky
                    for kx in 0..<kernel {
                        let ix = ox * stride - padding + kx
                        if iy >= 0 && iy < inH && ix >= 0 && ix < inW {
                            let d = dx + ((n * inH + iy) * inW + ix) * inC
                            for c in 0..<inC { d[c] += src[c] }
                        }
                        src += inC
                    }
                }
            }
        }
    }
}

/// Max pooling on NHWC tensors (no padding).
public final class MaxPool2D: Layer {
    public let spec: LayerSpec
    public var needsInputGradient = true
    let inH: Int, inW: Int, c: Int, size: Int, stride: Int
    public let outH: Int, outW: Int
    private var argmax: [Int32] = []
    private var inputShape: [Int] = []

    init(spec: LayerSpec, inputShape: [Int]) {
        self.spec = spec
        precondition(inputShape.count == 3, "maxpool needs an [H, W, C] input")
        inH = inputShape[0]; inW = inputShape[1]; c = inputShape[2]
        size = spec.kernel ?? 2; stride = spec.stride ?? size
        outH = (inH - size) / stride + 1
        outW = (inW - size) / stride + 1
    }

    public var outputShape: [Int] { [outH, outW, c] }

    public func forward(_ x: Tensor, training: Bool) -> Tensor {
        let n = x.batch
        var y = Tensor(uninitialized: [n, outH, outW, c])
        if training { argmax = [Int32](repeating: 0, count: y.count); inputShape = x.shape }
        let keep = training
        x.data.withUnsafeBufferPointer { xp in
            y.data.withUnsafeMutableBufferPointer { yp in
                argmax.withUnsafeMutableBufferPointer { ap in
                    let box = UnsafeSendableBox((xp.baseAddress!, yp.baseAddress!, ap.baseAddress))
                    Parallel.forEach(n, threads: n * outH * outW * c > 32768 ? Engine.threads : 1) { img in
                        let (xp, yp, ap) = box.value
                        for oy in 0..<outH {
                            for ox in 0..<outW {
                                let o = ((img * outH + oy) * outW + ox) * c
                                for ch in 0..<c {
                                    var bi = ((img * inH + oy * stride) * inW + ox * stride) * c + ch
                                    var best = xp[bi]
                                    for ky in 0..<size {
                                        for kx in 0..<size {
                                            let i = ((img * inH + oy * stride + ky) * inW + ox * stride + kx) * c + ch
                                            if xp[i] > best { best = xp[i]; bi = i }
                                        }
                                    }
                                    yp[o + ch] = best
                                    if keep { ap![o + ch] = Int32(truncatingIfNeeded: bi) }
                                }
                            }
                        }
                    }
                }
            }
        }
        return y
    }

    public func backward(_ dy: Tensor) -> Tensor {
        var dx = Tensor(zeros: inputShape)
        for i in 0..<dy.count { dx.data[Int(argmax[i])] += dy.data[i] }
        return dx
    }
}
