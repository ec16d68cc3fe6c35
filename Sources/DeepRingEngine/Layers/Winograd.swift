import DeepRingKernels

/// Winograd's minimal filtering F(2×2, 3×3) (Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks",
/// CVPR 2016) for the 3×3, stride-1, padding-1 convolutions of VGG-19. Each 2×2 block of outputs (a tile) is
///
///     Y = Aᵀ [ (G g Gᵀ) ⊙ (Bᵀ d B) ] A
///
/// with d the 4×4 input patch around the tile and g the 3×3 filter, so a tile costs 16 multiply-adds per (input,
/// output) channel pair instead of 36 — 2.25× fewer. Summed over the input channels, the 16 element-wise products
/// become 16 independent GEMMs, M_ξ[tiles × Cout] = V_ξ[tiles × Cin] · U_ξ[Cin × Cout], with V = Bᵀ d B per tile and
/// U = G g Gᵀ per filter (computed and packed once per weight change). The input and output transforms run in the
/// instruction set's kernels (`KernelSet.winogradInput`/`winogradOutput`, one definition in `WinogradKernels`).
///
/// Determinism: every output value is computed from its own tile by a fixed sequence of operations — the input
/// transform, one GEMM element per ξ (the GEMM's fixed K blocks), the output transform, the bias, the ReLU —
/// whatever the batch, the blocking of tiles or the thread count. Whether a layer uses it depends on the layer's
/// shape only (`applies`), never on the batch. The results differ from im2col + GEMM in the last bits (a different
/// but equally exact-in-real-arithmetic algorithm); the backward pass stays the im2col one, the gradient of the same
/// function.
enum Winograd {
    /// Layers of this shape use Winograd: 3×3, stride 1, padding 1, at least 16 input and output channels (with
    /// fewer the transforms cost more than the multiplications they save) and images at least 4×4. On a 2×2 image
    /// one tile is the whole image: each of the 16 transformed filters — 1.8× the weights' bytes — serves a single
    /// tile per image, and at small batches such a layer streams weights rather than computes (VGG-19 batch 1,
    /// alternating runs: 5.6–7.8 ms without Winograd on its 2×2 layers, 6.8–11.5 ms with it; batch 64 within the
    /// noise).
    static func applies(kernel: Int, stride: Int, padding: Int, inC: Int, outC: Int, height: Int, width: Int) -> Bool {
        kernel == 3 && stride == 1 && padding == 1 && inC >= 16 && outC >= 16 && height >= 4 && width >= 4
    }

    typealias V = SIMD8<Float>

    /// G·(g0, g1, g2) along one axis of the 3×3 filter.
    @inline(__always)
    static func g(_ g0: V, _ g1: V, _ g2: V) -> (V, V, V, V) {
        (g0, 0.5 * (g0 + g1 + g2), 0.5 * (g0 - g1 + g2), g2)
    }


    /// The transformed filters U_ξ = (G g Gᵀ)_ξ, ξ = 4·i + j, each [Cin, Cout] and packed as the GEMM's B.
    final class Filters: @unchecked Sendable {
        let u: [GEMM.PackedB]

        /// `w`: weights [3, 3, Cin, Cout] (HWIO).
        init(weights w: UnsafePointer<Float>, inC: Int, outC: Int) {
            let count = inC * outC
            let buf = GEMM.allocateAligned(16 * count)
            defer { buf.deallocate() }
            let box = UnsafeSendableBox((w, buf))
            Parallel.ranges(inC, threads: count >= 16_384 ? Engine.threads : 1) { r in
                let (w, u) = box.value
                for ci in r {
                    var co = 0
                    while co < outC {
                        let lanes = min(8, outC - co)
                        func gv(_ ky: Int, _ kx: Int) -> V { WinogradKernels.load(w + ((ky * 3 + kx) * inC + ci) * outC + co, lanes) }
                        // G along y (each filter column), then along x (each of the four rows).
                        let c0 = g(gv(0, 0), gv(1, 0), gv(2, 0))
                        let c1 = g(gv(0, 1), gv(1, 1), gv(2, 1))
                        let c2 = g(gv(0, 2), gv(1, 2), gv(2, 2))
                        func row(_ i: Int, _ a: V, _ b: V, _ c: V) {
                            let t = g(a, b, c)
                            let base = u + ci * outC + co
                            WinogradKernels.store(t.0, base + (4 * i + 0) * count, lanes)
                            WinogradKernels.store(t.1, base + (4 * i + 1) * count, lanes)
                            WinogradKernels.store(t.2, base + (4 * i + 2) * count, lanes)
                            WinogradKernels.store(t.3, base + (4 * i + 3) * count, lanes)
                        }
                        row(0, c0.0, c1.0, c2.0)
                        row(1, c0.1, c1.1, c2.1)
                        row(2, c0.2, c1.2, c2.2)
                        row(3, c0.3, c1.3, c2.3)
                        co += 8
                    }
                }
            }
            u = (0..<16).map { xi in
                GEMM.PackedB(k: inC, n: outC, b: .init(buf + xi * count, rowStride: outC, colStride: 1))
            }
        }
    }

    /// y[n, h, w, Cout] = conv3×3(x[n, h, w, Cin]) + bias (then the ReLU when `relu`), padding 1, stride 1.
    static func forward(x: UnsafePointer<Float>, images n: Int, h: Int, w: Int, inC: Int, outC: Int,
                        filters: Filters, bias: UnsafePointer<Float>, relu: Bool, y: UnsafeMutablePointer<Float>,
                        threads: Int = Engine.threads) {
        let tH = (h + 1) / 2, tW = (w + 1) / 2
        let perImage = tH * tW, total = n * perImage
        if total == 0 || outC == 0 { return }
        // Tiles per block: ≥ 384 GEMM rows (every block streams all 16 transformed filters), and otherwise as many
        // as keep the block's V and M within ~3 MB (in cache between the transforms and the GEMMs).
        let bytesPerTile = 16 * (inC + outC) * 4
        let chunk = min(total, max(384, (3 << 20) / bytesPerTile))
        let ldv = 16 * inC, ldm = 16 * outC
        let vBuf = GEMM.allocateAligned(chunk * ldv), mBuf = GEMM.allocateAligned(chunk * ldm)
        defer { vBuf.deallocate(); mBuf.deallocate() }
        let box = UnsafeSendableBox((x, y, vBuf, mBuf, bias))
        var t0 = 0
        while t0 < total {
            let tc = min(chunk, total - t0)
            let first = t0
            // 1. V = Bᵀ d B for every tile of the block, V[tile][ξ][Cin].
            let kernels = Engine.kernels
            Parallel.ranges(tc, threads: tc * inC >= 4096 ? threads : 1) { r in
                let (x, _, v, _, _) = box.value
                kernels.winogradInput(tiles: (first + r.lowerBound)..<(first + r.upperBound), first: first,
                                      perImage: perImage, tilesWide: tW, x: x, h: h, w: w, inC: inC, v: v, ldv: ldv)
            }
            // 2. M_ξ = V_ξ · U_ξ and 3. Y = Aᵀ M A, piece by piece (tiles × output channels, split as the GEMM
            // splits its output: the depth of the 16 products is 16·Cin): each thread transforms the outputs of the
            // pieces it multiplied.
            GEMM.forEachPiece(m: tc, n: outC, k: 16 * inC, threads: threads) { rows, cols in
                let (_, y, v, mm, bias) = box.value
                for xi in 0..<16 {
                    GEMM.packedWorker(rows: rows, cols: cols, a: .init(v + xi * inC, rowStride: ldv, colStride: 1),
                                      b: filters.u[xi], c: mm + xi * outC, ldc: ldm, accumulate: false, epilogue: .none)
                }
                kernels.winogradOutput(tiles: (first + rows.lowerBound)..<(first + rows.upperBound), first: first,
                                       perImage: perImage, tilesWide: tW, m: mm, ldm: ldm, outC: outC, cols: cols,
                                       bias: bias, relu: relu, y: y, h: h, w: w)
            }
            t0 += tc
        }
    }
}
