/// The input and output transforms of Winograd's F(2×2, 3×3) (the engine's `Winograd`: Y = Aᵀ [U ⊙ (Bᵀ d B)] A),
/// one definition for every instruction set. Each transformed value is a fixed sequence of additions and
/// subtractions of its own channel's inputs (then the bias and the ReLU); the vector type `V` sets only how many
/// channels run side by side (8 on AVX2, 16 on AVX-512), so every set gives the same bytes.
///
/// Tiles are counted over the batch: tile `g` is image `g / perImage`, tile row `(g mod perImage) / tilesWide`,
/// tile column `g mod tilesWide`; a tile's 4×4 input patch starts one pixel above and left of its 2×2 outputs.
public enum WinogradKernels {
    /// Bᵀ·(d0, d1, d2, d3) along one axis of the 4×4 input patch.
    @inlinable @inline(__always)
    static func bt<V: SIMD>(_ d0: V, _ d1: V, _ d2: V, _ d3: V) -> (V, V, V, V) where V.Scalar == Float {
        (d0 - d2, d1 + d2, d2 - d1, d1 - d3)
    }

    /// Aᵀ·(m0, m1, m2, m3) along one axis of the 4×4 product.
    @inlinable @inline(__always)
    static func at<V: SIMD>(_ m0: V, _ m1: V, _ m2: V, _ m3: V) -> (V, V) where V.Scalar == Float {
        (m0 + m1 + m2, m1 - m2 - m3)
    }

    /// Loads `count` (≤ V's lanes) floats, the other lanes zero.
    @inlinable @inline(__always)
    public static func load<V: SIMD>(_ p: UnsafePointer<Float>, _ count: Int) -> V where V.Scalar == Float {
        if count == V.scalarCount { return UnsafeRawPointer(p).loadUnaligned(as: V.self) }
        var v = V(repeating: 0)
        for i in 0..<count { v[i] = p[i] }
        return v
    }

    /// Stores the first `count` lanes.
    @inlinable @inline(__always)
    public static func store<V: SIMD>(_ v: V, _ p: UnsafeMutablePointer<Float>, _ count: Int) where V.Scalar == Float {
        if count == V.scalarCount { UnsafeMutableRawPointer(p).storeBytes(of: v, as: V.self); return }
        for i in 0..<count { p[i] = v[i] }
    }

    /// V = Bᵀ d B for every tile `g` in `tiles`, written to `v + (g − first)·ldv` as 16 rows of `inC` (ξ = 4i + j),
    /// from x[n, h, w, inC] (zero outside the image).
    @inlinable @inline(__always)
    public static func input<V: SIMD>(_: V.Type, tiles: Range<Int>, first: Int, perImage: Int, tilesWide: Int,
                                      x: UnsafePointer<Float>, h: Int, w: Int, inC: Int,
                                      v out: UnsafeMutablePointer<Float>, ldv: Int) where V.Scalar == Float {
        for g in tiles {
            let img = g / perImage, ty = (g % perImage) / tilesWide, tx = g % tilesWide
            let y0 = 2 * ty - 1, x0 = 2 * tx - 1
            let v = out + (g - first) * ldv
            var c = 0
            while c < inC {
                let lanes = min(V.scalarCount, inC - c)
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
                c += V.scalarCount
            }
        }
    }

    /// Y = Aᵀ M A + bias (then the ReLU when `relu`) for the output channels `cols` of every tile `g` in `tiles`
    /// (M at `m + (g − first)·ldm`: 16 rows of `outC`), written to the tile's 2×2 outputs of y[n, h, w, outC] that
    /// lie inside the image.
    @inlinable @inline(__always)
    public static func output<V: SIMD>(_: V.Type, tiles: Range<Int>, first: Int, perImage: Int, tilesWide: Int,
                                       m mBase: UnsafePointer<Float>, ldm: Int, outC: Int, cols: Range<Int>,
                                       bias: UnsafePointer<Float>, relu: Bool, y: UnsafeMutablePointer<Float>,
                                       h: Int, w: Int) where V.Scalar == Float {
        for g in tiles {
            let img = g / perImage, oy = 2 * ((g % perImage) / tilesWide), ox = 2 * (g % tilesWide)
            let m = mBase + (g - first) * ldm
            let right = ox + 1 < w, bottom = oy + 1 < h
            var c = cols.lowerBound
            while c < cols.upperBound {
                let lanes = min(V.scalarCount, cols.upperBound - c)
                @inline(__always) func mv(_ i: Int, _ j: Int) -> V { load(m + (4 * i + j) * outC + c, lanes) }
                // Aᵀ along y (each column j), then along x.
                let s0 = at(mv(0, 0), mv(1, 0), mv(2, 0), mv(3, 0))
                let s1 = at(mv(0, 1), mv(1, 1), mv(2, 1), mv(3, 1))
                let s2 = at(mv(0, 2), mv(1, 2), mv(2, 2), mv(3, 2))
                let s3 = at(mv(0, 3), mv(1, 3), mv(2, 3), mv(3, 3))
                let top = at(s0.0, s1.0, s2.0, s3.0), low = at(s0.1, s1.1, s2.1, s3.1)
                let b: V = load(bias + c, lanes)
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
                c += V.scalarCount
            }
        }
    }
}
