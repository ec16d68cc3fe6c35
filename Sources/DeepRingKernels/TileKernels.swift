/// The GEMM's register tiles, one definition for every instruction set (`KernelSet`): C (+)= packed A · packed B,
/// with every element of C one sequential FMA chain over k.
///
/// A tile is `rows` rows of C (6, or the 2 or 4 rows a block leaves at its bottom edge) by `strips` strips of 16
/// columns; the `TilePlan` says how many strips each tile spans. Rows and strips are literals once inlined, so
/// the conditions on them fold away and each tile is its own loop of broadcasts and FMAs.
public enum TileKernels {
    /// Rows per packed A strip (and per whole tile).
    @inlinable public static var mr: Int { 6 }
    /// Columns per packed B strip.
    @inlinable public static var nr: Int { 16 }

    public typealias V = SIMD16<Float>

    @inlinable @inline(__always)
    static func ld(_ p: UnsafeMutablePointer<Float>) -> V { UnsafeRawPointer(p).loadUnaligned(as: V.self) }

    @inlinable @inline(__always)
    static func ld(_ p: UnsafePointer<Float>) -> V { UnsafeRawPointer(p).loadUnaligned(as: V.self) }

    @inlinable @inline(__always)
    static func st(_ v: V, _ p: UnsafeMutablePointer<Float>) { UnsafeMutableRawPointer(p).storeBytes(of: v, as: V.self) }

    /// C[rows × 16·strips] (+)= Ap[kc × 6] · B[kc × 16·strips], rows 4 or 6, strips 1 or 2 (value (k, q) of strip t
    /// at `b + k·bk + t·bs`: `bk` 16 and `bs` 16·kc for packed B, the row stride and 16 for a row-major B read in
    /// place): up to 12 chains of 16 lanes.
    @inlinable @inline(__always)
    public static func kernel(rows: Int, strips: Int, kc: Int, a: UnsafePointer<Float>, b: UnsafePointer<Float>, bk: Int, bs: Int,
                              c: UnsafeMutablePointer<Float>, ldc: Int, load: Bool) {
        let six = rows == 6, two = strips == 2
        var c00 = V(), c10 = V(), c20 = V(), c30 = V(), c40 = V(), c50 = V()
        var c01 = V(), c11 = V(), c21 = V(), c31 = V(), c41 = V(), c51 = V()
        if load {
            c00 = ld(c); c10 = ld(c + ldc); c20 = ld(c + 2 * ldc); c30 = ld(c + 3 * ldc)
            if six { c40 = ld(c + 4 * ldc); c50 = ld(c + 5 * ldc) }
            if two {
                c01 = ld(c + 16); c11 = ld(c + ldc + 16); c21 = ld(c + 2 * ldc + 16); c31 = ld(c + 3 * ldc + 16)
                if six { c41 = ld(c + 4 * ldc + 16); c51 = ld(c + 5 * ldc + 16) }
            }
        }
        var ap = a, bp = b
        let second = bs
        for _ in 0..<kc {
            let b0 = ld(bp), b1 = two ? ld(bp + second) : V()
            var av = V(repeating: ap[0])
            c00 = c00.addingProduct(av, b0); if two { c01 = c01.addingProduct(av, b1) }
            av = V(repeating: ap[1])
            c10 = c10.addingProduct(av, b0); if two { c11 = c11.addingProduct(av, b1) }
            av = V(repeating: ap[2])
            c20 = c20.addingProduct(av, b0); if two { c21 = c21.addingProduct(av, b1) }
            av = V(repeating: ap[3])
            c30 = c30.addingProduct(av, b0); if two { c31 = c31.addingProduct(av, b1) }
            if six {
                av = V(repeating: ap[4])
                c40 = c40.addingProduct(av, b0); if two { c41 = c41.addingProduct(av, b1) }
                av = V(repeating: ap[5])
                c50 = c50.addingProduct(av, b0); if two { c51 = c51.addingProduct(av, b1) }
            }
            ap += 6; bp += bk
        }
        st(c00, c); st(c10, c + ldc); st(c20, c + 2 * ldc); st(c30, c + 3 * ldc)
        if six { st(c40, c + 4 * ldc); st(c50, c + 5 * ldc) }
        if two {
            st(c01, c + 16); st(c11, c + ldc + 16); st(c21, c + 2 * ldc + 16); st(c31, c + 3 * ldc + 16)
            if six { st(c41, c + 4 * ldc + 16); st(c51, c + 5 * ldc + 16) }
        }
    }

    /// C[6 × 64] (+)= Ap[kc × 6] · B[kc × 64] (B addressed as in `kernel`): 24 chains of 16 lanes, with four B
    /// vectors and a broadcast 29 of AVX-512's 32 registers; 4 loads and 6 broadcasts per 24 FMAs, where a 6×32
    /// tile needs 8 per 12. Its own function, without the shape conditions of `kernel`, so that it stays small
    /// enough for the optimiser to inline it and the edge tiles into one caller.
    @inlinable @inline(__always)
    public static func kernelWide(kc: Int, a: UnsafePointer<Float>, b: UnsafePointer<Float>, bk: Int, bs: Int,
                                  c: UnsafeMutablePointer<Float>, ldc: Int, load: Bool) {
        var c00 = V(), c10 = V(), c20 = V(), c30 = V(), c40 = V(), c50 = V()
        var c01 = V(), c11 = V(), c21 = V(), c31 = V(), c41 = V(), c51 = V()
        var c02 = V(), c12 = V(), c22 = V(), c32 = V(), c42 = V(), c52 = V()
        var c03 = V(), c13 = V(), c23 = V(), c33 = V(), c43 = V(), c53 = V()
        if load {
            c00 = ld(c); c10 = ld(c + ldc); c20 = ld(c + 2 * ldc); c30 = ld(c + 3 * ldc); c40 = ld(c + 4 * ldc); c50 = ld(c + 5 * ldc)
            c01 = ld(c + 16); c11 = ld(c + ldc + 16); c21 = ld(c + 2 * ldc + 16); c31 = ld(c + 3 * ldc + 16)
            c41 = ld(c + 4 * ldc + 16); c51 = ld(c + 5 * ldc + 16)
            c02 = ld(c + 32); c12 = ld(c + ldc + 32); c22 = ld(c + 2 * ldc + 32); c32 = ld(c + 3 * ldc + 32)
            c42 = ld(c + 4 * ldc + 32); c52 = ld(c + 5 * ldc + 32)
            c03 = ld(c + 48); c13 = ld(c + ldc + 48); c23 = ld(c + 2 * ldc + 48); c33 = ld(c + 3 * ldc + 48)
            c43 = ld(c + 4 * ldc + 48); c53 = ld(c + 5 * ldc + 48)
        }
        var ap = a, bp = b
        let t = bs
        for _ in 0..<kc {
            let b0 = ld(bp), b1 = ld(bp + t), b2 = ld(bp + 2 * t), b3 = ld(bp + 3 * t)
            var av = V(repeating: ap[0])
            c00 = c00.addingProduct(av, b0); c01 = c01.addingProduct(av, b1); c02 = c02.addingProduct(av, b2); c03 = c03.addingProduct(av, b3)
            av = V(repeating: ap[1])
            c10 = c10.addingProduct(av, b0); c11 = c11.addingProduct(av, b1); c12 = c12.addingProduct(av, b2); c13 = c13.addingProduct(av, b3)
            av = V(repeating: ap[2])
            c20 = c20.addingProduct(av, b0); c21 = c21.addingProduct(av, b1); c22 = c22.addingProduct(av, b2); c23 = c23.addingProduct(av, b3)
            av = V(repeating: ap[3])
            c30 = c30.addingProduct(av, b0); c31 = c31.addingProduct(av, b1); c32 = c32.addingProduct(av, b2); c33 = c33.addingProduct(av, b3)
            av = V(repeating: ap[4])
            c40 = c40.addingProduct(av, b0); c41 = c41.addingProduct(av, b1); c42 = c42.addingProduct(av, b2); c43 = c43.addingProduct(av, b3)
            av = V(repeating: ap[5])
            c50 = c50.addingProduct(av, b0); c51 = c51.addingProduct(av, b1); c52 = c52.addingProduct(av, b2); c53 = c53.addingProduct(av, b3)
            ap += 6; bp += bk
        }
        st(c00, c); st(c10, c + ldc); st(c20, c + 2 * ldc); st(c30, c + 3 * ldc); st(c40, c + 4 * ldc); st(c50, c + 5 * ldc)
        st(c01, c + 16); st(c11, c + ldc + 16); st(c21, c + 2 * ldc + 16); st(c31, c + 3 * ldc + 16)
        st(c41, c + 4 * ldc + 16); st(c51, c + 5 * ldc + 16)
        st(c02, c + 32); st(c12, c + ldc + 32); st(c22, c + 2 * ldc + 32); st(c32, c + 3 * ldc + 32)
        st(c42, c + 4 * ldc + 32); st(c52, c + 5 * ldc + 32)
        st(c03, c + 48); st(c13, c + ldc + 48); st(c23, c + 2 * ldc + 48); st(c33, c + 3 * ldc + 48)
        st(c43, c + 4 * ldc + 48); st(c53, c + 5 * ldc + 48)
    }

    /// Rows 0–1 of a packed A strip against 1, 2 or 4 strips of B (addressed as in `kernel`): up to 8
    /// chains of 16 lanes, for the 2 rows a batch of 128 leaves after its 6-row tiles.
    @inlinable @inline(__always)
    public static func kernelTwoRows(strips: Int, kc: Int, a: UnsafePointer<Float>, b: UnsafePointer<Float>, bk: Int, bs: Int,
                                     c: UnsafeMutablePointer<Float>, ldc: Int, load: Bool) {
        let s2 = strips >= 2, s4 = strips == 4
        var c00 = V(), c01 = V(), c02 = V(), c03 = V(), c10 = V(), c11 = V(), c12 = V(), c13 = V()
        if load {
            c00 = ld(c); c10 = ld(c + ldc)
            if s2 { c01 = ld(c + 16); c11 = ld(c + ldc + 16) }
            if s4 { c02 = ld(c + 32); c12 = ld(c + ldc + 32); c03 = ld(c + 48); c13 = ld(c + ldc + 48) }
        }
        var ap = a, bp = b
        let t = bs
        for _ in 0..<kc {
            let v0 = ld(bp), v1 = s2 ? ld(bp + t) : V(), v2 = s4 ? ld(bp + 2 * t) : V(), v3 = s4 ? ld(bp + 3 * t) : V()
            var av = V(repeating: ap[0])
            c00 = c00.addingProduct(av, v0)
            if s2 { c01 = c01.addingProduct(av, v1) }
            if s4 { c02 = c02.addingProduct(av, v2); c03 = c03.addingProduct(av, v3) }
            av = V(repeating: ap[1])
            c10 = c10.addingProduct(av, v0)
            if s2 { c11 = c11.addingProduct(av, v1) }
            if s4 { c12 = c12.addingProduct(av, v2); c13 = c13.addingProduct(av, v3) }
            ap += 6; bp += bk
        }
        st(c00, c); st(c10, c + ldc)
        if s2 { st(c01, c + 16); st(c11, c + ldc + 16) }
        if s4 { st(c02, c + 32); st(c12, c + ldc + 32); st(c03, c + 48); st(c13, c + ldc + 48) }
    }

    /// An edge tile (fewer than 6 rows or 16 columns of C): computed whole in the scratch tile `ep` (A and B are
    /// zero-padded), then copied out.
    @inlinable @inline(__always)
    public static func edgeTile(rows mrCur: Int, cols nrCur: Int, kc: Int, a: UnsafePointer<Float>, b: UnsafePointer<Float>, bk: Int,
                                c: UnsafeMutablePointer<Float>, ldc: Int, load: Bool, scratch ep: UnsafeMutablePointer<Float>) {
        if load {
            for i in 0..<mrCur { for j in 0..<nrCur { ep[i * 16 + j] = c[i * ldc + j] } }
        }
        kernel(rows: 6, strips: 1, kc: kc, a: a, b: b, bk: bk, bs: 0, c: ep, ldc: 16, load: load)
        for i in 0..<mrCur { for j in 0..<nrCur { c[i * ldc + j] = ep[i * 16 + j] } }
    }

    /// C[rows×cols] (+)= packed A · B, B packed or row-major in place (`bk`, `bs`: see `KernelSet.tiles`), tile
    /// shapes from `plan`.
    ///
    /// Strips go in groups; each group's 6-row tiles run first, then the block's edge rows against the same
    /// strips while they are in L1 (2 edge rows as `kernelTwoRows`, 4 as `kernel(rows: 4)`: 8 accumulators
    /// each; done as zero-padded 6-row tiles in scratch, as other edge-row counts still are, the 2 rows a batch of
    /// 128 leaves added 9 % to the product of the other 126 at 128×784×900). Strips left over after the groups
    /// go one at a time, and a partial last strip is an edge tile.
    @inlinable @inline(__always)
    public static func tiles(plan: TilePlan, rows mcur: Int, cols ncur: Int, kc: Int,
                             aPack: UnsafePointer<Float>, bPack: UnsafePointer<Float>, bRowStride bk: Int, bStripStride bs: Int,
                             c: UnsafeMutablePointer<Float>, ldc: Int, load: Bool, edge: UnsafeMutablePointer<Float>) {
        let fullRows = mcur / 6 * 6, rest = mcur - fullRows
        let strips = (ncur + 15) / 16, fullStrips = ncur / 16
        let ar = aPack + fullRows * kc, cr = c + fullRows * ldc
        @inline(__always) func strip(_ s: Int) -> UnsafePointer<Float> { bPack + s * bs }
        /// The whole 6-row tiles of `plan.wholeTile` strips from strip s.
        @inline(__always) func wholeTiles(_ s: Int) {
            var ir = 0
            while ir < fullRows {
                if plan.wholeTile == 4 {
                    kernelWide(kc: kc, a: aPack + ir * kc, b: strip(s), bk: bk, bs: bs,
                               c: c + ir * ldc + s * 16, ldc: ldc, load: load)
                } else {
                    kernel(rows: 6, strips: plan.wholeTile, kc: kc, a: aPack + ir * kc, b: strip(s), bk: bk, bs: bs,
                           c: c + ir * ldc + s * 16, ldc: ldc, load: load)
                }
                ir += 6
            }
        }
        /// The whole 6-row tiles of strip s alone.
        @inline(__always) func wholeTilesOfOne(_ s: Int) {
            var ir = 0
            while ir < fullRows {
                kernel(rows: 6, strips: 1, kc: kc, a: aPack + ir * kc, b: strip(s), bk: bk, bs: bs,
                       c: c + ir * ldc + s * 16, ldc: ldc, load: load)
                ir += 6
            }
        }
        /// The edge rows against strip s alone.
        @inline(__always) func edgeRowsOfOne(_ s: Int) {
            if rest == 2 {
                kernelTwoRows(strips: 1, kc: kc, a: ar, b: strip(s), bk: bk, bs: bs, c: cr + s * 16, ldc: ldc, load: load)
            } else if rest == 4 {
                kernel(rows: 4, strips: 1, kc: kc, a: ar, b: strip(s), bk: bk, bs: bs, c: cr + s * 16, ldc: ldc, load: load)
            } else if rest > 0 {
                edgeTile(rows: rest, cols: 16, kc: kc, a: ar, b: strip(s), bk: bk,
                         c: cr + s * 16, ldc: ldc, load: load, scratch: edge)
            }
        }
        let edgeGroup = rest == 2 ? plan.twoRowTile : rest == 4 ? plan.fourRowTile : 1
        let group = max(plan.wholeTile, edgeGroup)   // each plan's widths divide the largest
        var s = 0
        while s + group <= fullStrips {
            var g = 0
            while g < group { wholeTiles(s + g); g += plan.wholeTile }
            if rest == 2 {
                var e = 0
                while e < group {
                    kernelTwoRows(strips: plan.twoRowTile, kc: kc, a: ar, b: strip(s + e), bk: bk, bs: bs,
                                  c: cr + (s + e) * 16, ldc: ldc, load: load)
                    e += plan.twoRowTile
                }
            } else if rest == 4 {
                var e = 0
                while e < group {
                    kernel(rows: 4, strips: plan.fourRowTile, kc: kc, a: ar, b: strip(s + e), bk: bk, bs: bs,
                           c: cr + (s + e) * 16, ldc: ldc, load: load)
                    e += plan.fourRowTile
                }
            } else if rest > 0 {
                for e in 0..<group { edgeRowsOfOne(s + e) }
            }
            s += group
        }
        while s < fullStrips { wholeTilesOfOne(s); edgeRowsOfOne(s); s += 1 }
        if s < strips {
            // The partial last strip: every tile an edge tile.
            let cols = ncur - s * 16
            var ir = 0
            while ir < fullRows {
                edgeTile(rows: 6, cols: cols, kc: kc, a: aPack + ir * kc, b: strip(s), bk: bk, c: c + ir * ldc + s * 16,
                         ldc: ldc, load: load, scratch: edge)
                ir += 6
            }
            if rest > 0 {
                edgeTile(rows: rest, cols: cols, kc: kc, a: ar, b: strip(s), bk: bk,
                         c: cr + s * 16, ldc: ldc, load: load, scratch: edge)
            }
        }
    }
}
