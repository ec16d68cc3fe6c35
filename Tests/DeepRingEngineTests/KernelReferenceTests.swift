import DeepRingEngine
import Foundation
import Testing

/// Layer kernels against naive references, the pre-packed GEMM against the plain one, and the packed-weight
/// cache against stale weights.
@Suite struct KernelReferenceTests {
    /// A pre-packed B gives the same bits as packing per call, for every split (rows, columns, one thread),
    /// several column blocks (n > 2048) and K blocks, accumulate or not, row-major or transposed B; and one row
    /// (the packed GEMV: groups of four strips, short groups, a group cut by a column block, partial strips).
    @Test(arguments: [(203, 37, 301), (130, 300, 520), (5, 2100, 70), (7, 64, 4608), (1, 40, 30), (64, 16, 27),
                      (1, 2100, 600), (1, 900, 784), (1, 37, 301), (1, 100, 300)])
    func packedBIsBitIdenticalToPackingPerCall(_ shape: (Int, Int, Int)) {
        let (m, n, k) = shape
        let a = randomFloats(m * k, seed: UInt64(m * 7 + k)), b = randomFloats(k * n, seed: UInt64(n + 3 * k))
        let c0 = randomFloats(m * n, seed: 11)
        for transB in [false, true] {
            for accumulate in [false, true] {
                var plain = c0
                GEMM.multiply(a, b, m: m, n: n, k: k, transB: transB, into: &plain, accumulate: accumulate, threads: 1)
                b.withUnsafeBufferPointer { bp in
                    let ob = transB ? GEMM.Operand(bp.baseAddress!, rowStride: 1, colStride: k)
                                    : GEMM.Operand(bp.baseAddress!, rowStride: n, colStride: 1)
                    for packThreads in [1, 2] {
                        let packed = GEMM.PackedB(k: k, n: n, b: ob, threads: packThreads)
                        for t in [1, 2, 3, 4] {
                            var c = c0
                            a.withUnsafeBufferPointer { ap in
                                c.withUnsafeMutableBufferPointer { cp in
                                    GEMM.multiply(m: m, a: .init(ap.baseAddress!, rowStride: k, colStride: 1), packed: packed,
                                                  c: cp.baseAddress!, ldc: n, accumulate: accumulate, threads: t)
                                }
                            }
                            #expect(c.map(\.bitPattern) == plain.map(\.bitPattern),
                                    "m=\(m) n=\(n) k=\(k) transB=\(transB) accumulate=\(accumulate) threads=\(t)")
                        }
                    }
                }
            }
        }
    }

    /// A row-major B read in place by the register tiles (whole strips from its rows, a partial last strip packed)
    /// gives the same bits as packing all of it: B a window of a wider matrix (row stride > n), partial strips,
    /// several column blocks (n > 2048) and K blocks, accumulating or from a bias with the ReLU, on one and two
    /// threads.
    @Test(arguments: [(203, 37, 301), (130, 300, 520), (5, 2100, 70), (7, 64, 4608), (64, 16, 27), (128, 900, 784),
                      (9, 5, 13), (2, 33, 600)])
    func rowMajorBReadInPlaceIsBitIdenticalToPackingIt(_ shape: (Int, Int, Int)) {
        let (m, n, k) = shape
        let ldb = n + 13
        let a = randomFloats(m * k, seed: UInt64(m * 5 + k)), b = randomFloats(k * ldb, seed: UInt64(n + 7 * k))
        let bias = randomFloats(n, seed: 3), c0 = randomFloats(m * n, seed: 13)
        for (accumulate, epilogueBias) in [(false, false), (true, false), (false, true)] {
            for relu in [false, true] where relu ? epilogueBias : true {
                for t in [1, 2] {
                    var inPlace = c0, packed = c0
                    a.withUnsafeBufferPointer { ap in
                        b.withUnsafeBufferPointer { bp in
                            bias.withUnsafeBufferPointer { biasp in
                                let oa = GEMM.Operand(ap.baseAddress!, rowStride: k, colStride: 1)
                                let ob = GEMM.Operand(bp.baseAddress!, rowStride: ldb, colStride: 1)
                                let e = GEMM.Epilogue(bias: epilogueBias ? biasp.baseAddress! : nil, relu: relu)
                                inPlace.withUnsafeMutableBufferPointer { cp in
                                    GEMM.multiply(m: m, n: n, k: k, a: oa, b: ob, c: cp.baseAddress!, ldc: n,
                                                  accumulate: accumulate, epilogue: e, threads: t)
                                }
                                packed.withUnsafeMutableBufferPointer { cp in
                                    GEMM.multiplyPackingB(m: m, n: n, k: k, a: oa, b: ob, c: cp.baseAddress!, ldc: n,
                                                          accumulate: accumulate, epilogue: e, threads: t)
                                }
                            }
                        }
                    }
                    let differing = zip(inPlace, packed).filter { $0.bitPattern != $1.bitPattern }.count
                    #expect(differing == 0, "m=\(m) n=\(n) k=\(k) accumulate=\(accumulate) bias=\(epilogueBias) relu=\(relu) threads=\(t): \(differing) values differ")
                    // And both are the product: against a float64 reference of the window.
                    var worst = 0.0
                    for i in 0..<m { for j in 0..<n {
                        var r = accumulate ? Double(c0[i * n + j]) : epilogueBias ? Double(bias[j]) : 0
                        for p in 0..<k { r += Double(a[i * k + p]) * Double(b[p * ldb + j]) }
                        if relu { r = max(0, r) }
                        worst = max(worst, abs(Double(inPlace[i * n + j]) - r))
                    } }
                    #expect(worst <= Double(k) * 2.4e-7 + 1e-5, "m=\(m) n=\(n) k=\(k): error \(worst)")
                }
            }
        }
    }

    /// The same over 300 random small shapes (2–40 rows, 1–70 columns, 1–200 deep, a row stride 0–3 past the
    /// columns; a fifth or more big enough for two threads): every count of whole and partial strips and edge rows. B
    /// ends exactly where an inaccessible page begins (`GuardedFloats`), so a read past its last row — a partial strip
    /// read in place, say, whose extra lanes would change no result — kills the test process instead of passing.
    @Test func rowMajorBReadInPlaceOverRandomSmallShapes() {
        var r = SeededRandom(seed: 2026)
        var failures: [String] = []
        var threaded = 0
        for _ in 0..<300 {
            let m = 2 + r.int(below: 39), n = 1 + r.int(below: 70), k = 1 + r.int(below: 200), ldb = n + r.int(below: 4)
            let t = 1 + r.int(below: 2), accumulate = r.int(below: 2) == 1
            if t == 2 && 2 * m * n * k >= 200_000 { threaded += 1 }
            let a = randomFloats(m * k, seed: r.next())
            let b = GuardedFloats(randomFloats((k - 1) * ldb + n, seed: r.next()))
            let c0 = randomFloats(m * n, seed: r.next())
            var inPlace = c0, packed = c0
            a.withUnsafeBufferPointer { ap in
                let oa = GEMM.Operand(ap.baseAddress!, rowStride: k, colStride: 1)
                let ob = GEMM.Operand(b.pointer, rowStride: ldb, colStride: 1)
                inPlace.withUnsafeMutableBufferPointer { cp in
                    GEMM.multiply(m: m, n: n, k: k, a: oa, b: ob, c: cp.baseAddress!, ldc: n, accumulate: accumulate, threads: t)
                }
                packed.withUnsafeMutableBufferPointer { cp in
                    GEMM.multiplyPackingB(m: m, n: n, k: k, a: oa, b: ob, c: cp.baseAddress!, ldc: n, accumulate: accumulate, threads: t)
                }
            }
            if zip(inPlace, packed).contains(where: { $0.bitPattern != $1.bitPattern }) {
                failures.append("\(m)×\(n)×\(k) ldb \(ldb) threads \(t) accumulate \(accumulate)")
            }
        }
        #expect(failures.isEmpty, "in place ≠ packed for \(failures.count) shapes, e.g. \(failures.prefix(5))")
        #expect(threaded >= 30, "only \(threaded) shapes ran on two threads")
    }

    /// Convolution forward against a float64 loop, over channel counts that take each im2col copy path
    /// (1–3 values, short runs, memmove), strides, paddings and kernel sizes.
    @Test(arguments: [(1, 3, 1, 1), (3, 3, 1, 1), (5, 3, 2, 0), (16, 3, 1, 1), (40, 3, 1, 2), (3, 5, 1, 2), (6, 1, 1, 0), (2, 4, 3, 1)])
    func convolutionMatchesANaiveLoop(_ c: (Int, Int, Int, Int)) throws {
        let (inC, kernel, stride, padding) = c
        let (h, w, outC, batch) = (7, 9, 5, 3)
        let m = try Model(Architecture(name: "t", inputShape: [h, w, inC], classes: 0,
                                       layers: [.conv(outC, kernel: kernel, stride: stride, padding: padding)]),
                          seed: 3, segment: true)
        let bv = m.parameters.view(named: "layers.0.bias")!
        m.parameters.set(bv, randomFloats(outC, seed: 4))
        let x = Tensor(shape: [batch, h, w, inC], data: randomFloats(batch * h * w * inC, seed: 5))
        let y = m.forward(x)
        let wt = m.parameters.tensor(m.parameters.view(named: "layers.0.weight")!).data
        let bias = m.parameters.tensor(bv).data
        let oh = (h + 2 * padding - kernel) / stride + 1, ow = (w + 2 * padding - kernel) / stride + 1
        #expect(y.shape == [batch, oh, ow, outC])
        var worst = 0.0
        for n in 0..<batch { for oy in 0..<oh { for ox in 0..<ow { for o in 0..<outC {
            var s = Double(bias[o])
            for ky in 0..<kernel { for kx in 0..<kernel {
                let iy = oy * stride - padding + ky, ix = ox * stride - padding + kx
                guard iy >= 0, iy < h, ix >= 0, ix < w else { continue }
                for ci in 0..<inC {
                    s += Double(x.data[((n * h + iy) * w + ix) * inC + ci]) * Double(wt[((ky * kernel + kx) * inC + ci) * outC + o])
                }
            } }
            worst = max(worst, abs(s - Double(y.data[((n * oh + oy) * ow + ox) * outC + o])))
        } } } }
        #expect(worst < 1e-4, "inC=\(inC) kernel=\(kernel) stride=\(stride) padding=\(padding): error \(worst)")
    }

    /// Winograd F(2×2, 3×3) convolutions (3×3, stride 1, padding 1, ≥ 16 channels in and out, ≥ 4×4) against a
    /// float64 loop: odd and even sizes (edge tiles cut by the image border), channel counts with and without a
    /// remainder of 8 lanes or 16 GEMM columns, and a fused ReLU.
    @Test(arguments: [(16, 16, 7, 9), (20, 37, 6, 5), (64, 70, 4, 4), (17, 16, 5, 4), (16, 24, 4, 7), (24, 16, 9, 5)])
    func winogradConvolutionMatchesANaiveLoop(_ c: (Int, Int, Int, Int)) throws {
        let (inC, outC, h, w) = c
        let batch = 3
        for relu in [false, true] {
            let m = try Model(Architecture(name: "t", inputShape: [h, w, inC], classes: 0,
                                           layers: relu ? [.conv(outC), .relu] : [.conv(outC)]), seed: 3, segment: true)
            #expect((m.layers[0] as? Conv2D)?.usesWinograd == true)
            let bv = m.parameters.view(named: "layers.0.bias")!
            m.parameters.set(bv, randomFloats(outC, seed: 4))
            let x = Tensor(shape: [batch, h, w, inC], data: randomFloats(batch * h * w * inC, seed: 5))
            let y = m.forward(x)
            #expect(y.shape == [batch, h, w, outC])
            let wt = m.parameters.tensor(m.parameters.view(named: "layers.0.weight")!).data
            let bias = m.parameters.tensor(bv).data
            var worst = 0.0
            for n in 0..<batch { for oy in 0..<h { for ox in 0..<w { for o in 0..<outC {
                var s = Double(bias[o])
                for ky in 0..<3 { for kx in 0..<3 {
                    let iy = oy - 1 + ky, ix = ox - 1 + kx
                    guard iy >= 0, iy < h, ix >= 0, ix < w else { continue }
                    for ci in 0..<inC {
                        s += Double(x.data[((n * h + iy) * w + ix) * inC + ci]) * Double(wt[((ky * 3 + kx) * inC + ci) * outC + o])
                    }
                } }
                if relu { s = max(0, s) }
                worst = max(worst, abs(s - Double(y.data[((n * h + oy) * w + ox) * outC + o])))
            } } } }
            #expect(worst < 1e-4, "inC=\(inC) outC=\(outC) \(h)×\(w) relu=\(relu): error \(worst)")
        }
    }

    /// The same convolution over many tiles (several tile blocks, rows split between threads) equals the images
    /// one at a time (one block each), bit for bit, whatever the thread count; a 3×3 layer with too few channels
    /// (or another stride or padding) stays on im2col.
    @Test func winogradTileBlocksAndThreadsDoNotChangeABit() throws {
        let m = try Model(Architecture(name: "t", inputShape: [32, 32, 16], classes: 0, layers: [.conv(16), .relu]),
                          seed: 6, segment: true)
        let x = Tensor(shape: [7, 32, 32, 16], data: randomFloats(7 * 32 * 32 * 16, seed: 7))
        let whole = try withThreads(1) { bitPatterns(try m.logits(x, batchSize: 7)) }
        for (t, b) in [(2, 7), (4, 7), (2, 1), (3, 2)] {
            let same = try withThreads(t) { bitPatterns(try m.logits(x, batchSize: b)) } == whole
            #expect(same, "threads \(t), batch \(b)")
        }
        for (side, inC, layer) in [(8, 15, LayerSpec.conv(16)), (8, 16, .conv(15)), (8, 16, .conv(16, stride: 2)),
                                   (8, 16, .conv(16, kernel: 3, stride: 1, padding: 0)),
                                   (8, 16, .conv(16, kernel: 5, stride: 1, padding: 2)), (2, 16, .conv(16)), (3, 16, .conv(16))] {
            let other = try Model(Architecture(name: "t", inputShape: [side, side + 1, inC], classes: 0, layers: [layer]),
                                  segment: true)
            #expect((other.layers[0] as? Conv2D)?.usesWinograd == false, "\(side)×\(side + 1), \(inC) channels in, \(layer)")
        }
    }

    /// Inference max-pooling (16 channels at a time) returns the same bits as the training path, NaN and
    /// signed zeros included, for channel counts with and without a remainder.
    @Test(arguments: [3, 16, 35])
    func maxPoolInferenceEqualsTrainingPath(_ channels: Int) throws {
        let m = try Model(Architecture(name: "t", inputShape: [6, 4, channels], classes: 0, layers: [.maxPool(2)]),
                          segment: true)
        var x = Tensor(shape: [2, 6, 4, channels], data: randomFloats(2 * 6 * 4 * channels, seed: 9))
        for i in stride(from: 0, to: x.count, by: 7) { x.data[i] = .nan }
        for i in stride(from: 3, to: x.count, by: 11) { x.data[i] = 0 }
        for i in stride(from: 5, to: x.count, by: 13) { x.data[i] = -0.0 }
        let inference = m.forward(x, training: false), training = m.forward(x, training: true)
        #expect(bitPatterns(inference) == bitPatterns(training))
        // And against the definition: a value replaces the running best only when greater.
        for n in 0..<2 { for oy in 0..<3 { for ox in 0..<2 { for ch in 0..<channels {
            var best = x.data[((n * 6 + 2 * oy) * 4 + 2 * ox) * channels + ch]
            for ky in 0..<2 { for kx in 0..<2 {
                let v = x.data[((n * 6 + 2 * oy + ky) * 4 + 2 * ox + kx) * channels + ch]
                if v > best { best = v }
            } }
            #expect(inference.data[((n * 3 + oy) * 2 + ox) * channels + ch].bitPattern == best.bitPattern)
        } } } }
    }

    /// The GEMM's epilogue (bias before, ReLU after, tile by tile in the computing thread) gives the same bits as
    /// the layer without a ReLU followed by a separate ReLU pass — on the GEMV path (batch 1), the per-call
    /// packing paths (training: column shares, and rows sharing one packed B) and the cached packed path
    /// (inference), with 1–3 threads.
    @Test(arguments: [(1, 900), (60, 100), (37, 900), (128, 300)])
    func fusedBiasAndReLUEqualSeparatePasses(_ shape: (Int, Int)) throws {
        let (batch, units) = shape
        let fused = try Model(Architecture(name: "t", inputShape: [784], classes: 0, layers: [.dense(units), .relu]),
                              seed: 5, segment: true)
        let plain = try Model(Architecture(name: "t", inputShape: [784], classes: 0, layers: [.dense(units)]),
                              segment: true, initialise: false)
        let bv = fused.parameters.view(named: "layers.0.bias")!
        fused.parameters.set(bv, randomFloats(units, seed: 6))
        plain.parameters.setAll(fused.parameters.values)
        let x = Tensor(shape: [batch, 784], data: randomFloats(batch * 784, seed: 7))
        for threads in [1, 2, 3] {
            for training in [false, true] {
                withThreads(threads) {
                    var expected = plain.forward(x, training: training)
                    ReLU.applyInPlace(&expected)
                    let got = fused.forward(x, training: training)
                    let same = bitPatterns(got) == bitPatterns(expected)
                    #expect(same, "batch \(batch), \(units) units, \(threads) threads, training \(training)")
                    if training { _ = fused.backward(Tensor(zeros: [batch, units])); _ = plain.backward(Tensor(zeros: [batch, units])) }
                }
            }
        }
        // A convolution (cached packed weights, rows split; 16 channels in: Winograd) likewise.
        for inC in [4, 16] {
            let conv = try Model(Architecture(name: "t", inputShape: [9, 9, inC], classes: 0, layers: [.conv(20), .relu]),
                                 seed: 8, segment: true)
            let convPlain = try Model(Architecture(name: "t", inputShape: [9, 9, inC], classes: 0, layers: [.conv(20)]),
                                      segment: true, initialise: false)
            conv.parameters.set(conv.parameters.view(named: "layers.0.bias")!, randomFloats(20, seed: 9))
            convPlain.parameters.setAll(conv.parameters.values)
            let xi = Tensor(shape: [6, 9, 9, inC], data: randomFloats(6 * 81 * inC, seed: 10))
            var expected = convPlain.forward(xi)
            ReLU.applyInPlace(&expected)
            let same = bitPatterns(conv.forward(xi)) == bitPatterns(expected)
            #expect(same, "convolution (\(inC) channels in) with a fused ReLU")
        }
    }

    /// A layer's packed weights are rebuilt after any change to the parameters: through `withValues`
    /// (tampering, optimizer steps), `set` and `setAll` — a stale cache would compute with the old weights.
    @Test func packedWeightsFollowEveryParameterChange() throws {
        for arch in [Architecture(name: "t", inputShape: [20], classes: 0, layers: [.dense(33)]),
                     Architecture(name: "t", inputShape: [5, 5, 4], classes: 0, layers: [.conv(18)]),
                     Architecture(name: "t", inputShape: [5, 5, 16], classes: 0, layers: [.conv(18)])] {
            let m = try Model(arch, seed: 1, segment: true)
            let x = Tensor(shape: [8] + arch.inputShape, data: randomFloats(8 * arch.inputShape.reduce(1, *), seed: 2))
            func fresh() throws -> [UInt32] {
                let copy = try Model(arch, segment: true, initialise: false)
                copy.parameters.setAll(m.parameters.values)
                return bitPatterns(copy.forward(x))
            }
            // (Compared as booleans: a failure would otherwise print every output bit pattern.)
            let before = bitPatterns(m.forward(x))
            let wv = m.parameters.view(named: "layers.0.weight")!
            m.parameters.withValues { $0[wv.offset + 3] += 0.5 }
            let afterPointer = bitPatterns(m.forward(x))
            let changed = afterPointer != before, matchesPointer = try afterPointer == fresh()
            #expect(changed, "\(arch.layers[0].type): output unchanged after a write through withValues")
            #expect(matchesPointer, "\(arch.layers[0].type): stale weights after withValues")
            m.parameters.set(wv, randomFloats(wv.count, seed: 7))
            let matchesSet = try bitPatterns(m.forward(x)) == fresh()
            #expect(matchesSet, "\(arch.layers[0].type): stale weights after set")
            var all = m.parameters.values
            all[wv.offset] = 9
            m.parameters.setAll(all)
            let matchesSetAll = try bitPatterns(m.forward(x)) == fresh()
            #expect(matchesSetAll, "\(arch.layers[0].type): stale weights after setAll")
            // Unchanged parameters: the cached pack gives the same bits as a fresh model.
            let matchesCached = try bitPatterns(m.forward(x)) == fresh()
            #expect(matchesCached, "\(arch.layers[0].type): cached pack differs from a fresh one")
        }
    }
}

/// Floats placed so that the last one ends where a page that may not be read or written begins: reading one
/// float past the end is a segmentation fault, not a silent read of the allocator's slack.
final class GuardedFloats {
    let pointer: UnsafeMutablePointer<Float>
    private let base: UnsafeMutableRawPointer, length: Int

    init(_ values: [Float]) {
        let page = Int(sysconf(Int32(_SC_PAGESIZE)))
        let bytes = values.count * 4
        let dataPages = (bytes + page - 1) / page
        length = (dataPages + 1) * page
        guard let m = mmap(nil, length, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0), m != MAP_FAILED else {
            fatalError("mmap failed")
        }
        base = m
        precondition(mprotect(m + dataPages * page, page, PROT_NONE) == 0, "mprotect failed")
        pointer = (m + dataPages * page - bytes).bindMemory(to: Float.self, capacity: values.count)
        values.withUnsafeBufferPointer { pointer.update(from: $0.baseAddress!, count: values.count) }
    }

    deinit { munmap(base, length) }
}
