/// 2-D convolution on NHWC tensors by im2col + GEMM — in the forward pass Winograd F(2×2, 3×3) where it applies
/// (see `Winograd`). Weights [k, k, Cin, Cout] (HWIO), bias [Cout].
public final class Conv2D: Layer {
    public let spec: LayerSpec
    public var needsInputGradient = true
    public let inH: Int, inW: Int, inC: Int
    public let outH: Int, outW: Int, outC: Int
    public let kernel: Int, stride: Int, padding: Int
    let store: ParameterStore
    let w: ParameterStore.View, b: ParameterStore.View
    private var input: Tensor?
    /// The weights as the GEMM's packed B ([k·k·Cin, Cout]), kept while the parameters are unchanged.
    private let weights = PackedCache<GEMM.PackedB>()
    /// The weights transformed for Winograd F(2×2, 3×3) (when `usesWinograd`), kept while the parameters are unchanged.
    private let winogradFilters = PackedCache<Winograd.Filters>()
    /// Set by `Model` when a ReLU follows: the GEMM then clamps the output itself, tile by tile.
    var fusedReLU = false
    /// The forward pass uses Winograd F(2×2, 3×3) (3×3, stride 1, padding 1, ≥ 16 channels in and out, images at
    /// least 4×4) rather than im2col + GEMM: 2.25× fewer multiply-adds. A property of the layer's shape, never of the
    /// batch.
    public var usesWinograd: Bool {
        Winograd.applies(kernel: kernel, stride: stride, padding: padding, inC: inC, outC: outC, height: inH, width: inW)
    }

    /// Values per row of the im2col matrix.
    package var patchSize: Int { kernel * kernel * inC }

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

    /// Images per im2col block: enough for ≥ 512 GEMM rows (each block streams all of the packed weights, so
    /// their reading is then negligible), and otherwise as many as fit in 2 MB, so the block is still in cache when the GEMM reads it
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
                let ix0 = ox * stride - padding
                let wholeRow = ix0 >= 0 && ix0 + kernel <= inW
                for ky in 0..<kernel {
                    let iy = oy * stride - padding + ky
                    if iy < 0 || iy >= inH {
                        dst.update(repeating: 0, count: kernel * inC)
                        dst += kernel * inC
                    } else if wholeRow {
                        // In NHWC the kernel's row of pixels is one contiguous run of kernel·Cin values.
                        Conv2D.copy(x + ((n * inH + iy) * inW + ix0) * inC, to: dst, count: kernel * inC)
                        dst += kernel * inC
                    } else {
                        for kx in 0..<kernel {
                            let ix = ix0 + kx
                            if ix >= 0 && ix < inW {
                                Conv2D.copy(x + ((n * inH + iy) * inW + ix) * inC, to: dst, count: inC)
                            } else {
                                dst.update(repeating: 0, count: inC)
                            }
                            dst += inC
                        }
                    }
                }
            }
        }
    }

    /// A short copy inline (the first layer's 3-channel pixels made a library call per 12 bytes), a long one
    /// by memmove.
    @inline(__always)
    static func copy(_ src: UnsafePointer<Float>, to dst: UnsafeMutablePointer<Float>, count: Int) {
        if count < 4 {
            if count > 0 { dst[0] = src[0] }
            if count > 1 { dst[1] = src[1] }
            if count > 2 { dst[2] = src[2] }
        } else if count <= 32 {
            // 4-wide pieces, the last one overlapping the one before (written twice with the same values).
            var i = 0
            while i + 4 < count {
                UnsafeMutableRawPointer(dst + i).storeBytes(of: UnsafeRawPointer(src + i).loadUnaligned(as: SIMD4<Float>.self), as: SIMD4<Float>.self)
                i += 4
            }
            UnsafeMutableRawPointer(dst + count - 4).storeBytes(of: UnsafeRawPointer(src + count - 4).loadUnaligned(as: SIMD4<Float>.self), as: SIMD4<Float>.self)
        } else {
            dst.update(from: src, count: count)
        }
    }

    public func forward(_ x: Tensor, training: Bool) -> Tensor {
        let n = x.batch
        precondition(x.itemSize == inH * inW * inC, "conv2d expects \([inH, inW, inC]) inputs")
        var y = Tensor(uninitialized: [n, outH, outW, outC])
        if usesWinograd { winogradForward(x, into: &y) } else { im2colForward(x, into: &y) }
        if training { input = x }
        return y
    }

    /// y = conv(x) + b (then the fused ReLU) by Winograd F(2×2, 3×3), with the transformed filters kept.
    private func winogradForward(_ x: Tensor, into y: inout Tensor) {
        store.withReadOnlyValues { p in
            let filters = winogradFilters.get(store, p) { Winograd.Filters(weights: $0 + w.offset, inC: inC, outC: outC) }
            x.data.withUnsafeBufferPointer { xp in
                y.data.withUnsafeMutableBufferPointer { yp in
                    Winograd.forward(x: xp.baseAddress!, images: x.batch, h: inH, w: inW, inC: inC, outC: outC,
                                     filters: filters, bias: p + b.offset, relu: fusedReLU, y: yp.baseAddress!)
                }
            }
        }
    }

    /// y = conv(x) + b (then the fused ReLU) by im2col blocks and a GEMM against the packed weights.
    private func im2colForward(_ x: Tensor, into y: inout Tensor) {
        let n = x.batch
        let chunk = imagesPerChunk()
        let ps = patchSize, rowsPerImage = outH * outW
        let scratch = GEMM.allocateAligned(min(chunk, n) * rowsPerImage * ps)
        defer { scratch.deallocate() }
        store.withReadOnlyValues { p in
            let packed = weights.get(store, p) {
                GEMM.PackedB(k: ps, n: outC, b: .init($0 + w.offset, rowStride: outC, colStride: 1))
            }
            x.data.withUnsafeBufferPointer { xp in
                y.data.withUnsafeMutableBufferPointer { yp in
                    var n0 = 0
                    while n0 < n {
                        let n1 = min(n, n0 + chunk)
                        let rows = (n1 - n0) * rowsPerImage
                        let yc = yp.baseAddress! + n0 * rowsPerImage * outC
                        let a: GEMM.Operand
                        if kernel == 1 && stride == 1 && padding == 0 {
                            a = .init(xp.baseAddress! + n0 * rowsPerImage * inC, rowStride: ps, colStride: 1)
                        } else {
                            im2col(xp.baseAddress!, images: n0, n1, into: scratch)
                            a = .init(scratch, rowStride: ps, colStride: 1)
                        }
                        GEMM.multiply(m: rows, a: a, packed: packed, c: yc, ldc: outC,
                                      epilogue: GEMM.Epilogue(bias: p + b.offset, relu: fusedReLU))
                        n0 = n1
                    }
                }
            }
        }
    }

    public func backward(_ dy: Tensor) -> Tensor {
        guard let x = input else { preconditionFailure("backward before a training forward") }
        let n = x.batch
        var dx = Tensor(zeros: needsInputGradient ? x.shape : [0])
        let chunk = imagesPerChunk()
        let ps = patchSize, rowsPerImage = outH * outW
        let scratch = GEMM.allocateAligned(min(chunk, n) * rowsPerImage * ps)
        let dcols = GEMM.allocateAligned(needsInputGradient ? min(chunk, n) * rowsPerImage * ps : 1)
        defer { scratch.deallocate(); dcols.deallocate() }
        store.withReadOnlyValues { p in
            // Wᵀ packed once for every block's ∂cols = dy·Wᵀ.
            let wT = needsInputGradient
                ? GEMM.PackedB(k: outC, n: ps, b: .init(p + w.offset, rowStride: 1, colStride: outC)) : nil
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
                                if let wT {
                                    // ∂cols = dy·Wᵀ, then scatter-add back to the image (col2im).
                                    GEMM.multiply(m: rows, a: .init(dyc, rowStride: outC, colStride: 1),
                                                  packed: wT, c: dcols, ldc: ps)
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
                                var first = 0
                                if !keep {
                                    // Inference: 16 channels at a time, the same comparisons as the scalar loop
                                    // (a value replaces the best only when greater: same result bits, NaN included).
                                    typealias V = SIMD16<Float>
                                    while first + 16 <= c {
                                        let base = UnsafeRawPointer(xp + ((img * inH + oy * stride) * inW + ox * stride) * c + first)
                                        var best = base.loadUnaligned(as: V.self)
                                        for ky in 0..<size {
                                            for kx in 0..<size {
                                                let v = base.loadUnaligned(fromByteOffset: 4 * (ky * inW + kx) * c, as: V.self)
                                                best.replace(with: v, where: v .> best)
                                            }
                                        }
                                        UnsafeMutableRawPointer(yp + o + first).storeBytes(of: best, as: V.self)
                                        first += 16
                                    }
                                }
                                for ch in first..<c {
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
