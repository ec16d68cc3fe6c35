/// The batch-1 products (y = x·B, one row of C), one definition for every instruction set (`KernelSet`): each
/// column one sequential FMA chain over k, as in the GEMM's tiles, so a batch of one gives the bytes of any row
/// of a larger batch.
public enum GEMVKernels {
    public typealias V = SIMD16<Float>

    /// `KernelSet.gemvPacked`: `plan.gemvStrips` (4 or 8) strips at a time, all in one column block, so that as
    /// many independent vector chains hide the FMA latency. A group of g fewer strips at the end reads its last
    /// strip again in the spare chains (a strip on its own would be bound by the latency) and stores only its g.
    @inlinable @inline(__always)
    public static func packed(plan: TilePlan, strips r: Range<Int>, x: UnsafePointer<Float>, storage: UnsafePointer<Float>,
                              offsets: UnsafePointer<Int>, kBlocks: Int, step: Int, stripsPerBlock: Int,
                              n: Int, k: Int, y: UnsafeMutablePointer<Float>, accumulate: Bool) {
        let eight = plan.gemvStrips == 8
        /// Strip `s`'s part of K block `pb` (`kcur` rows of 16 values).
        @inline(__always) func strip(_ s: Int, _ pb: Int, _ kcur: Int) -> UnsafeRawPointer {
            let jb = s / stripsPerBlock
            return UnsafeRawPointer(storage + offsets[jb * kBlocks + pb] + (s - jb * stripsPerBlock) * 16 * kcur)
        }
        @inline(__always) func load(_ s: Int) -> V {
            let j = s * 16
            if !accumulate { return V() }
            if j + 16 <= n { return UnsafeRawPointer(y + j).loadUnaligned(as: V.self) }
            var v = V(); for q in 0..<(n - j) { v[q] = y[j + q] }; return v
        }
        @inline(__always) func store(_ v: V, _ s: Int) {
            let j = s * 16
            if j + 16 <= n { UnsafeMutableRawPointer(y + j).storeBytes(of: v, as: V.self); return }
            for q in 0..<(n - j) { y[j + q] = v[q] }
        }
        var s = r.lowerBound
        while s < r.upperBound {
            let g = min(plan.gemvStrips, r.upperBound - s, (s / stripsPerBlock + 1) * stripsPerBlock - s)
            @inline(__always) func lane(_ i: Int) -> Int { s + min(i, g - 1) }
            var s0 = load(s), s1 = load(lane(1)), s2 = load(lane(2)), s3 = load(lane(3))
            var s4 = V(), s5 = V(), s6 = V(), s7 = V()
            if eight { s4 = load(lane(4)); s5 = load(lane(5)); s6 = load(lane(6)); s7 = load(lane(7)) }
            var pc = 0, pb = 0
            while pc < k {
                let kcur = min(step, k - pc)
                let p0 = strip(s, pb, kcur), p1 = strip(lane(1), pb, kcur)
                let p2 = strip(lane(2), pb, kcur), p3 = strip(lane(3), pb, kcur)
                let p4 = eight ? strip(lane(4), pb, kcur) : p0, p5 = eight ? strip(lane(5), pb, kcur) : p0
                let p6 = eight ? strip(lane(6), pb, kcur) : p0, p7 = eight ? strip(lane(7), pb, kcur) : p0
                let xp = x + pc
                for p in 0..<kcur {
                    let xv = V(repeating: xp[p]), o = p * 64
                    s0 = s0.addingProduct(xv, (p0 + o).loadUnaligned(as: V.self))
                    s1 = s1.addingProduct(xv, (p1 + o).loadUnaligned(as: V.self))
                    s2 = s2.addingProduct(xv, (p2 + o).loadUnaligned(as: V.self))
                    s3 = s3.addingProduct(xv, (p3 + o).loadUnaligned(as: V.self))
                    if eight {
                        s4 = s4.addingProduct(xv, (p4 + o).loadUnaligned(as: V.self))
                        s5 = s5.addingProduct(xv, (p5 + o).loadUnaligned(as: V.self))
                        s6 = s6.addingProduct(xv, (p6 + o).loadUnaligned(as: V.self))
                        s7 = s7.addingProduct(xv, (p7 + o).loadUnaligned(as: V.self))
                    }
                }
                pc += step; pb += 1
            }
            store(s0, s)
            if g > 1 { store(s1, s + 1) }
            if g > 2 { store(s2, s + 2) }
            if g > 3 { store(s3, s + 3) }
            if eight {
                if g > 4 { store(s4, s + 4) }
                if g > 5 { store(s5, s + 5) }
                if g > 6 { store(s6, s + 6) }
                if g > 7 { store(s7, s + 7) }
            }
            s += g
        }
    }

    /// `KernelSet.gemv`: y[columns] (+)= x[k] · W[k × columns], W row-major. `plan.gemvVectors` (4 or 8) 16-wide
    /// chains at a time, then one, then a tail of < 16 columns as one vector of independent chains (a scalar loop
    /// there is latency bound): its rows 0..<k−1 are loaded 16 wide — the extra lanes read the next row, in
    /// bounds, and are discarded —, the last row lane by lane. Columns past the last whole vector and a single
    /// row fall to the scalar chain.
    @inlinable @inline(__always)
    public static func rowMajor(plan: TilePlan, columns r: Range<Int>, k: Int, x: UnsafePointer<Float>,
                                w: UnsafePointer<Float>, ldw: Int, y: UnsafeMutablePointer<Float>, accumulate: Bool) {
        let eight = plan.gemvVectors == 8
        let width = eight ? 128 : 64
        @inline(__always) func ld(_ p: UnsafePointer<Float>) -> V { UnsafeRawPointer(p).loadUnaligned(as: V.self) }
        @inline(__always) func ldy(_ j: Int) -> V { accumulate ? UnsafeRawPointer(y + j).loadUnaligned(as: V.self) : V() }
        @inline(__always) func st(_ v: V, _ j: Int) { UnsafeMutableRawPointer(y + j).storeBytes(of: v, as: V.self) }
        var j = r.lowerBound
        while j + width <= r.upperBound {
            var s0 = ldy(j), s1 = ldy(j + 16), s2 = ldy(j + 32), s3 = ldy(j + 48)
            var s4 = V(), s5 = V(), s6 = V(), s7 = V()
            if eight { s4 = ldy(j + 64); s5 = ldy(j + 80); s6 = ldy(j + 96); s7 = ldy(j + 112) }
            var wp = w + j
            for p in 0..<k {
                let xv = V(repeating: x[p])
                s0 = s0.addingProduct(xv, ld(wp)); s1 = s1.addingProduct(xv, ld(wp + 16))
                s2 = s2.addingProduct(xv, ld(wp + 32)); s3 = s3.addingProduct(xv, ld(wp + 48))
                if eight {
                    s4 = s4.addingProduct(xv, ld(wp + 64)); s5 = s5.addingProduct(xv, ld(wp + 80))
                    s6 = s6.addingProduct(xv, ld(wp + 96)); s7 = s7.addingProduct(xv, ld(wp + 112))
                }
                wp += ldw
            }
            st(s0, j); st(s1, j + 16); st(s2, j + 32); st(s3, j + 48)
            if eight { st(s4, j + 64); st(s5, j + 80); st(s6, j + 96); st(s7, j + 112) }
            j += width
        }
        while j + 16 <= r.upperBound {
            var s0 = ldy(j)
            var wp = w + j
            for p in 0..<k {
                s0 = s0.addingProduct(V(repeating: x[p]), ld(wp))
                wp += ldw
            }
            st(s0, j)
            j += 16
        }
        let rem = r.upperBound - j
        if rem > 0 && k >= 2 && ldw >= 16 {
            var s = V()
            if accumulate { for q in 0..<rem { s[q] = y[j + q] } }
            for p in 0..<(k - 1) {
                s = s.addingProduct(V(repeating: x[p]), ld(w + p * ldw + j))
            }
            var lastRow = V()
            for q in 0..<rem { lastRow[q] = w[(k - 1) * ldw + j + q] }
            s = s.addingProduct(V(repeating: x[k - 1]), lastRow)
            for q in 0..<rem { y[j + q] = s[q] }
            j = r.upperBound
        }
        while j < r.upperBound {
            var s: Float = accumulate ? y[j] : 0
            for p in 0..<k { s = s.addingProduct(x[p], w[p * ldw + j]) }
            y[j] = s
            j += 1
        }
    }
}
