/// Winograd's minimal filtering F(2×2, 3×3) (Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks",
/// CVPR 2016) for the 3×3, stride-1, padding-1 convolutions of VGG-19. Each 2×2 block of outputs (a tile) is
///
///     Y = Aᵀ [ (G g Gᵀ) ⊙ (Bᵀ d B) ] A
///
/// with d the 4×4 input patch around the tile and g the 3×3 filter, so a tile costs 16 multiply-adds per (input,
/// output) channel pair instead of 36 — 2.25× fewer. Summed over the input channels, the 16 element-wise products
/// become 16 independent GEMMs, M_ξ[tiles × Cout] = V_ξ[tiles × Cin] · U_ξ[Cin × Cout], with V = Bᵀ d B per tile and
/// U = G g Gᵀ per filter (computed and packed once per weight change).
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

    /// Bᵀ·(d0, d1, d2, d3) along one axis of the 4×4 input patch.
    @inline(__always)
    static func bt(_ d0: V, _ d1: V, _ d2: V, _ d3: V) -> (V, V, V, V) { (d0 - d2, d1 + d2, d2 - d1, d1 - d3) }

    /// G·(g0, g1, g2) along one axis of the 3×3 filter.
    @inline(__always)
    static func g(_ g0: V, _ g1: V, _ g2: V) -> (V, V, V, V) {
        (g0, 0.5 * (g0 + g1 + g2), 0.5 * (g0 - g1 + g2), g2)
    }

    /// Aᵀ·(m0, m1, m2, m3) along one axis of the 4×4 product.
    @inline(__always)
    static func at(_ m0: V, _ m1: V, _ m2: V, _ m3: V) -> (V, V) { (m0 + m1 + m2, m1 - m2 - m3) }

    /// Loads `count` (≤ 8) floats, the other lanes zero.
    @inline(__always)
    static func load(_ p: UnsafePointer<Float>, _ count: Int) -> V {
        if count == 8 { return UnsafeRawPointer(p).loadUnaligned(as: V.self) }
        var v = V(repeating: 0)
        for i in 0..<count { v[i] = p[i] }
        return v
    }

    /// Stores the first `count` (≤ 8) lanes.
    @inline(__always)
    static func store(_ v: V, _ p: UnsafeMutablePointer<Float>, _ count: Int) {
        if count == 8 { UnsafeMutableRawPointer(p).storeBytes(of: v, as: V.self); return }
        for i in 0..<count { p[i] = v[i] }
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
                        func gv(_ ky: Int, _ kx: Int) -> V { load(w + ((ky * 3 + kx) * inC + ci) * outC + co, lanes) }
                        // G along y (each filter column), then along x (each of the four rows).
                        let c0 = g(gv(0, 0), gv(1, 0), gv(2, 0))
                        let c1 = g(gv(0, 1), gv(1, 1), gv(2, 1))
                        let c2 = g(gv(0, 2), gv(1, 2), gv(2, 2))
                        func row(_ i: Int, _ a: V, _ b: V, _ c: V) {
                            let t = g(a, b, c)
                            let base = u + ci * outC + co
                            store(t.0, base + (4 * i + 0) * count, lanes)
                            store(t.1, base + (4 * i + 1) * count, lanes)
                            store(t.2, base + (4 * i + 2) * count, lanes)
                            store(t.3, base + (4 * i + 3) * count, lanes)
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
        /// Tile `g` (counted over the batch): its image and tile row and column.
        @inline(__always) func place(_ g: Int) -> (img: Int, ty: Int, tx: Int) {
            (g / perImage, (g % perImage) / tW, g % tW)
        }
        var t0 = 0
        while t0 < total {
            let tc = min(chunk, total - t0)
            let first = t0
            // 1. V = Bᵀ d B for every tile of the block, V[tile][ξ][Cin].
            Parallel.ranges(tc, threads: tc * inC >= 4096 ? threads : 1) { r in
                let (x, _, v, _, _) = box.value
                for tile in r {
                    let (img, ty, tx) = place(first + tile)
                    inputTransform(x: x, img: img, y0: 2 * ty - 1, x0: 2 * tx - 1, h: h, w: w, inC: inC,
                                   into: v + tile * ldv)
                }
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
                for tile in rows {
                    let (img, ty, tx) = place(first + tile)
                    outputTransform(mm + tile * ldm, outC: outC, cols: cols, bias: bias, relu: relu,
                                    y: y, img: img, oy: 2 * ty, ox: 2 * tx, h: h, w: w)
                }
            }
            t0 += tc
        }
    }

    /// V = Bᵀ d B for the 4×4 patch with top-left input pixel (y0, x0) (zero outside the image): 16 rows of Cin.
    @inline(__always)
    static func inputTransform(x: UnsafePointer<Float>, img: Int, y0: Int, x0: Int, h: Int, w: Int, inC: Int,
                               into v: UnsafeMutablePointer<Float>) {
        var c = 0
        while c < inC {
            let lanes = min(8, inC - c)
            @inline(__always) func d(_ i: Int, _ j: Int) -> V {
                let iy = y0 + i, ix = x0 + j
                guard iy >= 0 && iy < h && ix >= 0 && ix < w else { return V(repeating: 0) }
                return load(x + ((img * h + iy) * w + ix) * inC + c, lanes)
            }
            // Bᵀ along y (each column j of the patch) …
            let k0 = bt(d(0, 0), d(1, 0), d(2, 0), d(3, 0))
            let k1 = bt(d(0, 1), d(1, 1), d(2, 1), d(3, 1))
            let k2 = bt(d(0, 2), d(1, 2), d(2, 2), d(3, 2))
            let k3 = bt(d(0, 3), d(1, 3), d(2, 3), d(3, 3))
            // … then along x (each row i): V[4i + j].
            @inline(__always) func row(_ i: Int, _ a: V, _ b: V, _ cc: V, _ dd: V) {
                let r = bt(a, b, cc, dd)
                store(r.0, v + (4 * i + 0) * inC + c, lanes)
                store(r.1, v + (4 * i + 1) * inC + c, lanes)
                store(r.2, v + (4 * i + 2) * inC + c, lanes)
                store(r.3, v + (4 * i + 3) * inC + c, lanes)
            }
            row(0, k0.0, k1.0, k2.0, k3.0)
            row(1, k0.1, k1.1, k2.1, k3.1)
            row(2, k0.2, k1.2, k2.2, k3.2)
            row(3, k0.3, k1.3, k2.3, k3.3)
            c += 8
        }
    }

    /// Y = Aᵀ M A (+ bias, then the ReLU) for one tile's output channels `cols` (M: 16 rows of Cout), written to
    /// the 2×2 outputs at (oy, ox) that lie inside the image.
    @inline(__always)
    static func outputTransform(_ m: UnsafePointer<Float>, outC: Int, cols: Range<Int>, bias: UnsafePointer<Float>,
                                relu: Bool, y: UnsafeMutablePointer<Float>, img: Int, oy: Int, ox: Int, h: Int, w: Int) {
        var c = cols.lowerBound
        let right = ox + 1 < w, bottom = oy + 1 < h
        while c < cols.upperBound {
            let lanes = min(8, cols.upperBound - c)
            @inline(__always) func mv(_ i: Int, _ j: Int) -> V { load(m + (4 * i + j) * outC + c, lanes) }
            // Aᵀ along y (each column j), then along x.
            let s0 = at(mv(0, 0), mv(1, 0), mv(2, 0), mv(3, 0))
            let s1 = at(mv(0, 1), mv(1, 1), mv(2, 1), mv(3, 1))
            let s2 = at(mv(0, 2), mv(1, 2), mv(2, 2), mv(3, 2))
            let s3 = at(mv(0, 3), mv(1, 3), mv(2, 3), mv(3, 3))
            let top = at(s0.0, s1.0, s2.0, s3.0), low = at(s0.1, s1.1, s2.1, s3.1)
            let b = load(bias + c, lanes)
            @inline(__always) func put(_ v: V, _ yy: Int, _ xx: Int) {
                var r = v + b
                if relu { r = r.replacing(with: 0, where: r .< 0) }
                store(r, y + ((img * h + yy) * w + xx) * outC + c, lanes)
            }
            put(top.0, oy, ox)
            if right { put(top.1, oy, ox + 1) }
            if bottom {
                put(low.0, oy + 1, ox)
                if right { put(low.1, oy + 1, ox + 1) }
            }
            c += 8
        }
    }
}
