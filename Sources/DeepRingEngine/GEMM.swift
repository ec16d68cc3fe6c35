import DeepRingKernels
#if os(Linux)
@_silgen_name("mallopt") private func glibcMallopt(_ param: Int32, _ value: Int32) -> Int32
#endif

/// Single-precision matrix multiply: packing, blocking and threads here; the register tiles of the instruction set
/// the CPU runs (`KernelSet`, `Engine.isa`).
///
/// Determinism contract (what DeepRing's hash validation relies on): every element of C is produced by
/// **one sequential fused-multiply-add chain over k = 0, 1, …, K−1**, started from 0 (or from the existing C
/// when accumulating). K blocking stores and reloads the exact partial value, so it does not change the chain.
/// Threads split the output tiles only. Hence the result of a row never depends on the thread count, on the
/// batch size, on tile edges, or on whether the GEMM or the GEMV path computed it.

public enum GEMM {
    /// Rows per packed A strip and columns per packed B strip: the register tiles' (`TileKernels`).
    public static let mr = TileKernels.mr
    public static let nr = TileKernels.nr
    static let mc = 96   // multiple of mr
    static let nc = 2048 // multiple of nr

    /// Keeps large scratch and activation buffers on the heap instead of fresh zeroed mmap pages per call
    /// (page clearing was ~4% of MLP training time).
    static let allocatorTuned: Bool = {
        #if os(Linux)
        _ = glibcMallopt(-3 /* M_MMAP_THRESHOLD */, 512 << 20)
        _ = glibcMallopt(-1 /* M_TRIM_THRESHOLD */, 1 << 30)
        #endif
        return true
    }()

    /// A strided matrix view: element (r, c) at `base[r * rowStride + c * colStride]`.
    public struct Operand {
        public var base: UnsafePointer<Float>
        public var rowStride: Int
        public var colStride: Int
        public init(_ base: UnsafePointer<Float>, rowStride: Int, colStride: Int) {
            self.base = base; self.rowStride = rowStride; self.colStride = colStride
        }
    }

    /// What the GEMM does to C around the product: `bias` (one value per column) starts every row's chains —
    /// C = bias + A·B —, and `relu` clamps C at zero afterwards. Both are applied tile by tile by the thread that
    /// computes the tile, while it is in that core's cache (a separate pass on the calling thread had left the
    /// other thread fetching its C tiles, and the next layer's input, from the caller's cache).
    public struct Epilogue: @unchecked Sendable {
        public var bias: UnsafePointer<Float>?
        public var relu: Bool
        public init(bias: UnsafePointer<Float>? = nil, relu: Bool = false) { self.bias = bias; self.relu = relu }
        public static let none = Epilogue()

        /// Fills C[rows, cols] with the bias (before the product).
        @inline(__always)
        func prepare(rows: Range<Int>, cols: Range<Int>, c: UnsafeMutablePointer<Float>, ldc: Int) {
            guard let bias else { return }
            for i in rows { (c + i * ldc + cols.lowerBound).update(from: bias + cols.lowerBound, count: cols.count) }
        }

        /// Clamps C[rows, cols] at zero (after the product).
        @inline(__always)
        func finish(rows: Range<Int>, cols: Range<Int>, c: UnsafeMutablePointer<Float>, ldc: Int) {
            guard relu else { return }
            for i in rows { ReLU.clamp(c + i * ldc + cols.lowerBound, count: cols.count) }
        }
    }

    /// C[m×n] (row stride ldc) = A[m×k] · B[k×n], or C += A·B when `accumulate`; with an epilogue's bias,
    /// C = bias + A·B (then `accumulate` is ignored), and its ReLU clamps the result.
    public static func multiply(m: Int, n: Int, k: Int, a: Operand, b: Operand,
                                c: UnsafeMutablePointer<Float>, ldc: Int,
                                accumulate: Bool = false, epilogue: Epilogue = .none, threads: Int = Engine.threads) {
        multiply(m: m, n: n, k: k, a: a, b: b, c: c, ldc: ldc, accumulate: accumulate, epilogue: epilogue, threads: threads,
                 rowMajorBInPlace: true)
    }

    /// `multiply(m:n:k:a:b:…)` packing a row-major B as every other B, never reading it in place (`serial`): the
    /// reference the tests compare the in-place reading with, and the before of a measurement.
    package static func multiplyPackingB(m: Int, n: Int, k: Int, a: Operand, b: Operand,
                                         c: UnsafeMutablePointer<Float>, ldc: Int,
                                         accumulate: Bool = false, epilogue: Epilogue = .none, threads: Int = Engine.threads) {
        multiply(m: m, n: n, k: k, a: a, b: b, c: c, ldc: ldc, accumulate: accumulate, epilogue: epilogue, threads: threads,
                 rowMajorBInPlace: false)
    }

    static func multiply(m: Int, n: Int, k: Int, a: Operand, b: Operand, c: UnsafeMutablePointer<Float>, ldc: Int,
                         accumulate: Bool, epilogue: Epilogue, threads: Int, rowMajorBInPlace: Bool) {
        if m == 0 || n == 0 { return }
        _ = GEMM.allocatorTuned
        let accumulate = accumulate || epilogue.bias != nil
        if k == 0 { emptyProduct(m: m, n: n, c: c, ldc: ldc, accumulate: accumulate, epilogue: epilogue); return }
        if m == 1 && a.colStride == 1 && b.colStride == 1 {
            epilogue.prepare(rows: 0..<m, cols: 0..<n, c: c, ldc: ldc)
            gemv(n: n, k: k, x: a.base, w: b.base, ldw: b.rowStride, y: c, accumulate: accumulate, threads: threads)
            epilogue.finish(rows: 0..<m, cols: 0..<n, c: c, ldc: ldc)
            return
        }
        // Split the larger tile dimension across threads (output tiles only).
        let mTiles = (m + mr - 1) / mr, nTiles = (n + nr - 1) / nr
        let flops = 2 * m * n * k
        let t = flops < 200_000 ? 1 : threads
        let cBox = UnsafeSendableBox(c)
        /// C[rows, cols] by one thread, packing its own part of B: the bias, the product, the ReLU.
        func piece(_ rows: Range<Int>, _ cols: Range<Int>) {
            var aa = a, bb = b
            aa.base = a.base + rows.lowerBound * a.rowStride
            bb.base = b.base + cols.lowerBound * b.colStride
            epilogue.prepare(rows: rows, cols: cols, c: cBox.value, ldc: ldc)
            serial(m: rows.count, n: cols.count, k: k, a: aa, b: bb,
                   c: cBox.value + rows.lowerBound * ldc + cols.lowerBound, ldc: ldc, accumulate: accumulate,
                   rowMajorBInPlace: rowMajorBInPlace)
            epilogue.finish(rows: rows, cols: cols, c: cBox.value, ldc: ldc)
        }
        if t == 1 {
            piece(0..<m, 0..<n)
        } else if nTiles >= 4 * t || mTiles < t {
            // Threads take balanced shares of tiles, mostly whole column strips.
            Parallel.forEach(t, threads: t) { w in share(w, of: t, m: m, n: n, piece) }
        } else {
            sharedB(m: m, n: n, k: k, a: a, b: b, c: c, ldc: ldc, accumulate: accumulate, epilogue: epilogue, threads: t)
        }
    }

    /// C = bias (or 0, or unchanged when accumulating) when the product is empty (k = 0), then the ReLU.
    static func emptyProduct(m: Int, n: Int, c: UnsafeMutablePointer<Float>, ldc: Int, accumulate: Bool, epilogue: Epilogue) {
        epilogue.prepare(rows: 0..<m, cols: 0..<n, c: c, ldc: ldc)
        if !accumulate { for i in 0..<m { (c + i * ldc).update(repeating: 0, count: n) } }
        epilogue.finish(rows: 0..<m, cols: 0..<n, c: c, ldc: ldc)
    }

    /// Convenience for row-major arrays: C = op(A) · op(B).
    public static func multiply(_ a: [Float], _ b: [Float], m: Int, n: Int, k: Int,
                                transA: Bool = false, transB: Bool = false,
                                into c: inout [Float], accumulate: Bool = false, threads: Int = Engine.threads) {
        precondition(a.count >= m * k && b.count >= k * n && c.count >= m * n)
        a.withUnsafeBufferPointer { ap in
            b.withUnsafeBufferPointer { bp in
                c.withUnsafeMutableBufferPointer { cp in
                    let oa = transA ? Operand(ap.baseAddress!, rowStride: 1, colStride: m)
                                    : Operand(ap.baseAddress!, rowStride: k, colStride: 1)
                    let ob = transB ? Operand(bp.baseAddress!, rowStride: 1, colStride: k)
                                    : Operand(bp.baseAddress!, rowStride: n, colStride: 1)
                    multiply(m: m, n: n, k: k, a: oa, b: ob, c: cp.baseAddress!, ldc: n,
                             accumulate: accumulate, threads: threads)
                }
            }
        }
    }

    /// Packing buffers start on a cache line (malloc guarantees 16 bytes), so no 32-byte load of a packed strip
    /// straddles two lines whatever the allocation history. Freed with `deallocate()`.
    @inline(__always)
    static func allocateAligned(_ count: Int) -> UnsafeMutablePointer<Float> {
        UnsafeMutableRawPointer.allocate(byteCount: count * MemoryLayout<Float>.stride, alignment: 64)
            .bindMemory(to: Float.self, capacity: count)
    }

    // MARK: - Pre-packed B

    /// B[k×n] packed once, every column block and K block, in the layout the micro-kernel reads: a layer's
    /// weights between two updates. Reusing it drops the packing of B from every call (and from every im2col
    /// block of a convolution). The same K blocks as `multiply(a:b:)`, so results are bit-identical to it.
    public final class PackedB: @unchecked Sendable {
        public let k: Int, n: Int
        let step: Int
        let kBlocks: Int
        let storage: UnsafeMutablePointer<Float>
        /// Start of the packed (column block `j`, K block `p`) at index `j * kBlocks + p`.
        let offsets: [Int]

        /// Packs `b` (any strides) using up to `threads` threads.
        public init(k: Int, n: Int, b: Operand, threads: Int = Engine.threads) {
            self.k = k; self.n = n
            step = k > 0 ? GEMM.kStep(k) : 1
            kBlocks = k > 0 ? (k + step - 1) / step : 0
            var offs: [Int] = [], total = 0
            var jc = 0
            while jc < n {
                let padded = (min(nc, n - jc) + nr - 1) / nr * nr
                var pc = 0
                while pc < k { offs.append(total); total += padded * min(step, k - pc); pc += step }
                jc += nc
            }
            offsets = offs
            storage = GEMM.allocateAligned(max(total, 1) + 16)
            let strips = (n + nr - 1) / nr
            let t = k * n < 65536 ? 1 : threads
            let box = UnsafeSendableBox(storage)
            let (kc, kb, offsets) = (step, kBlocks, offs)
            // Threads take column ranges (whole strips) through every block.
            Parallel.ranges(strips, threads: t) { r in
                var jc = 0, jb = 0
                while jc < n {
                    let ncur = min(nc, n - jc)
                    let lo = max(r.lowerBound * nr, jc) - jc, hi = min(r.upperBound * nr, jc + ncur) - jc
                    if lo < hi {
                        var pc = 0, pb = 0
                        while pc < k {
                            let kcur = min(kc, k - pc)
                            packB(b, row0: pc, col0: jc + lo, kc: kcur, nc: hi - lo,
                                  into: box.value + offsets[jb * kb + pb] + lo * kcur)
                            pc += kc; pb += 1
                        }
                    }
                    jc += nc; jb += 1
                }
            }
        }

        deinit { storage.deallocate() }
    }

    /// C[m×n] (+)= A[m×k] · B with B pre-packed. Threads split the rows of C when there are enough of them,
    /// else its columns; either way they run independently to the end (no barrier per K block).
    public static func multiply(m: Int, a: Operand, packed b: PackedB, c: UnsafeMutablePointer<Float>, ldc: Int,
                                accumulate: Bool = false, epilogue: Epilogue = .none, threads: Int = Engine.threads) {
        let n = b.n, k = b.k
        if m == 0 || n == 0 { return }
        _ = GEMM.allocatorTuned
        let accumulate = accumulate || epilogue.bias != nil
        if k == 0 { emptyProduct(m: m, n: n, c: c, ldc: ldc, accumulate: accumulate, epilogue: epilogue); return }
        if m == 1 && a.colStride == 1 {
            epilogue.prepare(rows: 0..<1, cols: 0..<n, c: c, ldc: ldc)
            gemv(x: a.base, packed: b, y: c, accumulate: accumulate, threads: threads)
            epilogue.finish(rows: 0..<1, cols: 0..<n, c: c, ldc: ldc)
            return
        }
        let cBox = UnsafeSendableBox(c)
        forEachPiece(m: m, n: n, k: k, threads: threads) { rows, cols in
            packedWorker(rows: rows, cols: cols, a: a, b: b, c: cBox.value, ldc: ldc, accumulate: accumulate,
                         epilogue: epilogue)
        }
    }

    /// Splits C[m×n] (a product of depth k) between threads, output tiles only, and runs `body` on every piece —
    /// pieces independent to the end (no barrier per K block). Tall C (a convolution's pixels × filters), and any C
    /// with at least 64 rows per thread: threads take rows, each packing only its rows of A; wide C with fewer rows
    /// (a dense layer's small batch × outputs): balanced shares of tiles (see `share`), each thread then packing all of
    /// A but streaming only its part of B; small products: one piece on the calling thread. (Measured on Zen 4 with
    /// kept weights, best of 7 × 20 calls, 2 threads: rows against shares at 256×300×600 199–208 against 161–180
    /// GFLOP/s, 256×600×900 198–208 against 179–192, 128×600×900 207–210 against 177–195, 256×900×784 level; at 64
    /// rows shares were ahead, 64×900×784 197–200 against 180–182.)
    static func forEachPiece(m: Int, n: Int, k: Int, threads: Int, _ body: (Range<Int>, Range<Int>) -> Void) {
        let mTiles = (m + mr - 1) / mr, nTiles = (n + nr - 1) / nr
        let t = 2 * m * n * k < 200_000 ? 1 : min(threads, max(mTiles, nTiles))
        if t == 1 {
            body(0..<m, 0..<n)
        } else if mTiles >= 2 * t && (m >= 64 * t || !(nTiles >= 4 * t && n >= m)) {
            let rowsPer = (mTiles + t - 1) / t * mr
            Parallel.forEach(t, threads: t) { w in
                let lo = w * rowsPer, hi = min(m, lo + rowsPer)
                if lo < hi { body(lo..<hi, 0..<n) }
            }
        } else {
            Parallel.forEach(t, threads: t) { w in share(w, of: t, m: m, n: n, body) }
        }
    }

    /// Participant `w`'s share of C when `t` threads split a wide C: the tiles, counted strip by strip, are
    /// dealt out in equal contiguous shares — mostly whole strips (each thread packs and streams only its part of
    /// B), with at most one strip shared by rows. `body` gets (rows, columns) pieces, columns starting on a strip
    /// boundary. Whole strips alone left one thread a strip short (900 outputs = 57 strips) or 10% idle
    /// (300 outputs = 19 strips).
    @inline(__always)
    static func share(_ w: Int, of t: Int, m: Int, n: Int, _ body: (Range<Int>, Range<Int>) -> Void) {
        let mTiles = (m + mr - 1) / mr, nTiles = (n + nr - 1) / nr
        let units = mTiles * nTiles
        var u = units * w / t
        let end = units * (w + 1) / t
        while u < end {
            let s = u / mTiles, rt = u % mTiles
            if rt == 0 && end - u >= mTiles {
                let strips = (end - u) / mTiles
                body(0..<m, (s * nr)..<min(n, (s + strips) * nr))
                u += strips * mTiles
            } else {
                let rtEnd = min(mTiles, rt + (end - u))
                body((rt * mr)..<min(m, rtEnd * mr), (s * nr)..<min(n, (s + 1) * nr))
                u += rtEnd - rt
            }
        }
    }

    /// Rows `rows` × columns `cols` (starting on a strip boundary) of C against a pre-packed B.
    static func packedWorker(rows: Range<Int>, cols: Range<Int>, a: Operand, b: PackedB,
                             c: UnsafeMutablePointer<Float>, ldc: Int, accumulate: Bool, epilogue: Epilogue) {
        let scratch = Scratch(kc: b.step)
        epilogue.prepare(rows: rows, cols: cols, c: c, ldc: ldc)
        defer { epilogue.finish(rows: rows, cols: cols, c: c, ldc: ldc); scratch.free() }
        var jc = 0, jb = 0
        while jc < b.n {
            let ncur = min(nc, b.n - jc)
            let lo = max(cols.lowerBound, jc), hi = min(cols.upperBound, jc + ncur)
            if lo < hi {
                var pc = 0, pb = 0
                while pc < b.k {
                    let kcur = min(b.step, b.k - pc)
                    block(rows: rows, jc: lo, pc: pc, kcur: kcur, a: a,
                          b: .packed(b.storage + b.offsets[jb * b.kBlocks + pb] + (lo - jc) * kcur, cols: hi - lo, kcur: kcur),
                          c: c, ldc: ldc, load: accumulate || pc > 0, scratch: scratch)
                    pc += b.step; pb += 1
                }
            }
            jc += nc; jb += 1
        }
    }

    // MARK: - Blocked GEMM

    /// K blocks of (nearly) equal length ≤ the kernels' `kBlockDepth` (256 for AVX2: 784 → 4 × 196 rather than
    /// 3 × 256 + 16; 200 for AVX-512). Depends on k and the instruction set only, so every element's FMA chain is
    /// split at the same places whatever the thread count or tile — and where it is split changes no result anyway
    /// (a block stores each chain's exact partial value, the next continues from it).
    @inline(__always)
    static func kStep(_ k: Int) -> Int {
        let kc = Engine.kernels.plan.kBlockDepth
        let kBlocks = (k + kc - 1) / kc
        return (k + kBlocks - 1) / kBlocks
    }

    /// Per-thread scratch: a packed A block and an edge tile of C.
    struct Scratch {
        let aPack: UnsafeMutablePointer<Float>
        let edge: UnsafeMutablePointer<Float>
        init(kc: Int) {
            aPack = GEMM.allocateAligned(mc * kc + 16)
            edge = GEMM.allocateAligned(mr * nr)
        }
        func free() { aPack.deallocate(); edge.deallocate() }
    }

    /// True when rows `rowStride` floats apart fall on a few L1 sets only (a stride of a multiple of 1024 bytes: 256
    /// floats, a convolution's ∂y with 256 or 512 filters): a block of such rows read in place would evict itself, so
    /// such a B is packed. (Every MLP stride, 3600, 2400, 1200 and 400 bytes, is read in place.)
    @inline(__always)
    static func aliasesInL1(rowStride: Int) -> Bool { rowStride % 256 == 0 }

    /// C[m×n] (+)= A·B on the calling thread. A row-major B (the weights in training's forward pass, ∂y in ∂W) is
    /// read in place by the register tiles, whole strips straight from its rows, only a partial last strip packed:
    /// packing it (a copy of B, which changes every step, read from L3 or memory on every call) was ~40 % of the
    /// packing time of an MLP training step. The chains are the same either way (`multiplyPackingB` packs it), and
    /// the in-place reads stay inside B: whole strips only, the last ending at column `jc + whole ≤ n`.
    static func serial(m: Int, n: Int, k: Int, a: Operand, b: Operand,
                       c: UnsafeMutablePointer<Float>, ldc: Int, accumulate: Bool, rowMajorBInPlace: Bool) {
        let ncMax = min(nc, (n + nr - 1) / nr * nr)
        let step = kStep(k)
        let inPlace = b.colStride == 1 && rowMajorBInPlace && !aliasesInL1(rowStride: b.rowStride)
        let bPack = GEMM.allocateAligned((inPlace ? nr : ncMax) * step + 16)
        let scratch = Scratch(kc: step)
        defer { bPack.deallocate(); scratch.free() }
        var jc = 0
        while jc < n {
            let ncur = min(nc, n - jc)
            var pc = 0
            while pc < k {
                let kcur = min(step, k - pc)
                let bb: BBlock
                if inPlace {
                    let whole = ncur / nr * nr
                    var tail: BPart?
                    if whole < ncur {
                        packB(b, row0: pc, col0: jc + whole, kc: kcur, nc: ncur - whole, into: bPack)
                        tail = .packed(bPack, cols: ncur - whole, kcur: kcur)
                    }
                    bb = BBlock(main: BPart(base: b.base + pc * b.rowStride + jc, rowStride: b.rowStride, stripStride: nr,
                                            cols: whole), tail: tail)
                } else {
                    packB(b, row0: pc, col0: jc, kc: kcur, nc: ncur, into: bPack)
                    bb = .packed(bPack, cols: ncur, kcur: kcur)
                }
                block(rows: 0..<m, jc: jc, pc: pc, kcur: kcur, a: a, b: bb, c: c, ldc: ldc,
                      load: accumulate || pc > 0, scratch: scratch)
                pc += step
            }
            jc += nc
        }
    }

    /// Threads split the rows of C (the output tiles) while sharing one packed copy of each B block, packed by
    /// all of them together: when B is a big weight matrix and M is small (VGG's late layers), packing B once
    /// instead of once per thread halves the weight traffic.
    static func sharedB(m: Int, n: Int, k: Int, a: Operand, b: Operand,
                        c: UnsafeMutablePointer<Float>, ldc: Int, accumulate: Bool, epilogue: Epilogue, threads t: Int) {
        let ncMax = min(nc, (n + nr - 1) / nr * nr)
        let step = kStep(k)
        let bPack = GEMM.allocateAligned(ncMax * step + 16)
        let scratches = (0..<t).map { _ in Scratch(kc: step) }
        defer { bPack.deallocate(); for s in scratches { s.free() } }
        let box = UnsafeSendableBox((bPack, c))
        let rowsPer = ((m + mr - 1) / mr + t - 1) / t * mr
        // Participant w owns rows w·rowsPer ..< (w+1)·rowsPer throughout (prologue, every block, epilogue).
        func rowsOf(_ w: Int) -> Range<Int> { min(m, w * rowsPer)..<min(m, (w + 1) * rowsPer) }
        if epilogue.bias != nil {
            Parallel.forEach(t, threads: t) { w in epilogue.prepare(rows: rowsOf(w), cols: 0..<n, c: box.value.1, ldc: ldc) }
        }
        var jc = 0
        while jc < n {
            let ncur = min(nc, n - jc)
            let strips = (ncur + nr - 1) / nr
            var pc = 0
            while pc < k {
                let kcur = min(step, k - pc)
                Parallel.ranges(strips, threads: t) { r in
                    let col0 = r.lowerBound * nr
                    packB(b, row0: pc, col0: jc + col0, kc: kcur, nc: min(r.count * nr, ncur - col0),
                          into: box.value.0 + col0 * kcur)
                }
                Parallel.forEach(t, threads: t) { w in
                    let rows = rowsOf(w)
                    if !rows.isEmpty {
                        block(rows: rows, jc: jc, pc: pc, kcur: kcur, a: a, b: .packed(box.value.0, cols: ncur, kcur: kcur),
                              c: box.value.1, ldc: ldc, load: accumulate || pc > 0, scratch: scratches[w])
                    }
                    if jc + nc >= n && pc + step >= k {
                        epilogue.finish(rows: rows, cols: 0..<n, c: box.value.1, ldc: ldc)
                    }
                }
                pc += step
            }
            jc += nc
        }
    }

    /// Where one K block of B is for the register tiles: value (k, q) of strip s at `base[s·stripStride + k·rowStride
    /// + q]`, for `cols` columns — packed by `packB`, or a row-major B's whole strips read in place.
    struct BPart {
        var base: UnsafePointer<Float>
        var rowStride: Int, stripStride: Int
        var cols: Int

        /// A block packed by `packB`: strips `kcur` deep, one after another.
        static func packed(_ p: UnsafePointer<Float>, cols: Int, kcur: Int) -> BPart {
            BPart(base: p, rowStride: nr, stripStride: nr * kcur, cols: cols)
        }
    }

    /// One K block of B: its first columns (`main`) and, when B is read in place, the partial strip after them packed
    /// (`tail`).
    struct BBlock {
        var main: BPart
        var tail: BPart?

        static func packed(_ p: UnsafePointer<Float>, cols: Int, kcur: Int) -> BBlock {
            BBlock(main: .packed(p, cols: cols, kcur: kcur), tail: nil)
        }
    }

    /// Rows `rows` of C[:, jc..<jc+ncur] (+)= A[rows, pc..<pc+kcur] · B block (`ncur` = its columns), by the register
    /// tiles of the current instruction set (`KernelSet.tiles`, `Engine.isa`). A is packed mc rows at a time, whatever
    /// its layout: reading a row-major A in place instead (six row streams per micro-kernel call, re-read for every
    /// strip of B, and edge tiles packed one by one) was measured 4–6 % slower on one thread at the MLP's shapes (e.g.
    /// 128×900×600: 1374 → 1303 µs against the same packed B).
    @inline(__always)
    static func block(rows: Range<Int>, jc: Int, pc: Int, kcur: Int, a: Operand,
                      b: BBlock, c: UnsafeMutablePointer<Float>, ldc: Int, load: Bool,
                      scratch: Scratch) {
        var ic = rows.lowerBound
        while ic < rows.upperBound {
            let mcur = min(mc, rows.upperBound - ic)
            packA(a, row0: ic, col0: pc, mc: mcur, kc: kcur, into: scratch.aPack)
            @inline(__always) func run(_ part: BPart, from col: Int) {
                guard part.cols > 0 else { return }
                Engine.kernels.tiles(rows: mcur, cols: part.cols, kc: kcur, aPack: scratch.aPack, bPack: part.base,
                                     bRowStride: part.rowStride, bStripStride: part.stripStride, c: c + ic * ldc + col,
                                     ldc: ldc, load: load, edge: scratch.edge)
            }
            run(b.main, from: jc)
            if let t = b.tail { run(t, from: jc + b.main.cols) }
            ic += mc
        }
    }

    /// Packs B[row0..<row0+kc, col0..<col0+nc] into strips of `nr` columns: strip s holds kc rows of nr values.
    @inline(__always)
    static func packB(_ b: Operand, row0: Int, col0: Int, kc: Int, nc: Int, into dst: UnsafeMutablePointer<Float>) {
        var out = dst
        var j = 0
        if b.colStride == 1 && nc >= nr {
            // Row-major B (weights): read each row's segment front to back (one stream the prefetcher follows)
            // and deal its 16-wide pieces out to the strips; strip by strip, every row read would start a new
            // cache line (the packing of VGG's big weight matrices was ~15% of its forward time).
            let full = nc / nr
            for p in 0..<kc {
                let row = UnsafeRawPointer(b.base + (row0 + p) * b.rowStride + col0)
                let d = UnsafeMutableRawPointer(dst + p * nr)
                for s in 0..<full {
                    (d + s * kc * nr * 4).storeBytes(of: (row + s * nr * 4).loadUnaligned(as: SIMD16<Float>.self), as: SIMD16<Float>.self)
                }
            }
            j = full * nr
            out = dst + full * kc * nr
        }
        while j < nc {
            let w = min(nr, nc - j)
            let src = b.base + row0 * b.rowStride + (col0 + j) * b.colStride
            // (Full strips of a row-major B were all packed above; what is left here is a partial strip, or B
            // with another layout.)
            if b.rowStride == 1 && w == nr {
                packTransposedStrip(src, ld: b.colStride, kc: kc, into: out)
            } else if b.rowStride == 1 {
                // Transposed B: read each column contiguously.
                for q in 0..<w {
                    let col = src + q * b.colStride
                    for p in 0..<kc { out[p * nr + q] = col[p] }
                }
                if w < nr { for p in 0..<kc { for q in w..<nr { out[p * nr + q] = 0 } } }
            } else {
                for p in 0..<kc {
                    let row = src + p * b.rowStride
                    let d = out + p * nr
                    for q in 0..<w { d[q] = row[q * b.colStride] }
                    for q in w..<nr { d[q] = 0 }
                }
            }
            out += kc * nr
            j += nr
        }
    }

    /// One full strip of a transposed B (column q of the strip at `src + q·ld`, contiguous over k) in 8×8
    /// blocks: eight vector loads, eight vector stores (4× faster than element by element — the packing of Wᵀ
    /// for every dense layer's ∂X in training).
    @inline(__always)
    static func packTransposedStrip(_ src: UnsafePointer<Float>, ld: Int, kc: Int, into dst: UnsafeMutablePointer<Float>) {
        typealias V = SIMD8<Float>
        var p = 0
        while p + 8 <= kc {
            for half in 0..<2 {
                let base = src + half * 8 * ld + p
                @inline(__always) func row(_ i: Int) -> V { UnsafeRawPointer(base + i * ld).loadUnaligned(as: V.self) }
                let r0 = row(0), r1 = row(1), r2 = row(2), r3 = row(3), r4 = row(4), r5 = row(5), r6 = row(6), r7 = row(7)
                for i in 0..<8 {
                    UnsafeMutableRawPointer(dst + (p + i) * nr + half * 8)
                        .storeBytes(of: V(r0[i], r1[i], r2[i], r3[i], r4[i], r5[i], r6[i], r7[i]), as: V.self)
                }
            }
            p += 8
        }
        while p < kc {
            for q in 0..<nr { dst[p * nr + q] = src[q * ld + p] }
            p += 1
        }
    }

    /// Packs A[row0..<row0+mc, col0..<col0+kc] into strips of `mr` rows: strip s holds kc columns of mr values.
    @inline(__always)
    static func packA(_ a: Operand, row0: Int, col0: Int, mc: Int, kc: Int, into dst: UnsafeMutablePointer<Float>) {
        var out = dst
        var i = 0
        while i < mc {
            let h = min(mr, mc - i)
            let src = a.base + (row0 + i) * a.rowStride + col0 * a.colStride
            if h == mr && a.rowStride == 1 {
                // Transposed A (xᵀ in ∂W = xᵀ·∂y): the six values of each k are adjacent — two vector moves.
                let cs = a.colStride
                for p in 0..<kc {
                    let s = UnsafeRawPointer(src + p * cs), d = UnsafeMutableRawPointer(out + p * mr)
                    d.storeBytes(of: s.loadUnaligned(as: SIMD4<Float>.self), as: SIMD4<Float>.self)
                    (d + 16).storeBytes(of: (s + 16).loadUnaligned(as: SIMD2<Float>.self), as: SIMD2<Float>.self)
                }
            } else if h == mr && a.colStride == 1 {
                // Row-major A (im2col rows, x in y = x·W): eight k at a time, one vector load per row, dealt out
                // to the interleaved layout out[p·6 + r] (the scalar loop below was ~5 % of VGG-19's forward).
                let r0 = src, r1 = src + a.rowStride, r2 = src + 2 * a.rowStride
                let r3 = src + 3 * a.rowStride, r4 = src + 4 * a.rowStride, r5 = src + 5 * a.rowStride
                typealias V = SIMD8<Float>
                @inline(__always) func ld(_ p: UnsafePointer<Float>) -> V { UnsafeRawPointer(p).loadUnaligned(as: V.self) }
                var p = 0
                while p &+ 8 <= kc {
                    let v0 = ld(r0 + p), v1 = ld(r1 + p), v2 = ld(r2 + p), v3 = ld(r3 + p), v4 = ld(r4 + p), v5 = ld(r5 + p)
                    let d = out + p &* mr
                    for q in 0..<8 {
                        let e = d + q &* 6
                        e[0] = v0[q]; e[1] = v1[q]; e[2] = v2[q]; e[3] = v3[q]; e[4] = v4[q]; e[5] = v5[q]
                    }
                    p &+= 8
                }
                while p < kc {
                    let d = out + p &* mr
                    d[0] = r0[p]; d[1] = r1[p]; d[2] = r2[p]; d[3] = r3[p]; d[4] = r4[p]; d[5] = r5[p]
                    p &+= 1
                }
            } else if h == mr {
                let r0 = src, r1 = src + a.rowStride, r2 = src + 2 * a.rowStride
                let r3 = src + 3 * a.rowStride, r4 = src + 4 * a.rowStride, r5 = src + 5 * a.rowStride
                let cs = a.colStride
                for p in 0..<kc {
                    let d = out + p * mr
                    let o = p * cs
                    d[0] = r0[o]; d[1] = r1[o]; d[2] = r2[o]; d[3] = r3[o]; d[4] = r4[o]; d[5] = r5[o]
                }
            } else {
                for p in 0..<kc {
                    let d = out + p * mr
                    for q in 0..<h { d[q] = src[q * a.rowStride + p * a.colStride] }
                    for q in h..<mr { d[q] = 0 }
                }
            }
            out += kc * mr
            i += mr
        }
    }

    // MARK: - GEMV (batch 1)

    /// y[n] (+)= x[k] · B with B pre-packed: batch-1 inference against a layer's kept weights. Every 16-column
    /// strip of B is contiguous over each K block, so a thread reads its strips as 4 or 8 sequential streams (the
    /// row-major W is read 256 bytes per row, rows `ldw` apart). Same per-element FMA chain as every other path:
    /// one chain over k = 0, 1, …, K−1 per column, kept in registers across the K blocks.
    static func gemv(x: UnsafePointer<Float>, packed b: PackedB, y: UnsafeMutablePointer<Float>,
                     accumulate: Bool, threads: Int) {
        let n = b.n, k = b.k
        let strips = (n + nr - 1) / nr, stripsPerBlock = nc / nr
        let t = n * k < 100_000 ? 1 : threads
        let yBox = UnsafeSendableBox(y)
        let kernels = Engine.kernels
        b.offsets.withUnsafeBufferPointer { offsets in
            guard let offsetBase = offsets.baseAddress else { return }   // n, k > 0: never empty
            let box = UnsafeSendableBox((x, UnsafePointer(b.storage), offsetBase))
            Parallel.ranges(strips, threads: t) { r in
                let (x, storage, offsets) = box.value
                kernels.gemvPacked(strips: r, x: x, storage: storage, offsets: offsets, kBlocks: b.kBlocks, step: b.step,
                                   stripsPerBlock: stripsPerBlock, n: n, k: k, y: yBox.value, accumulate: accumulate)
            }
        }
    }

    /// y[n] (+)= x[k] · W[k×n] (row stride ldw). Same per-element FMA chain as the GEMM path.
    static func gemv(n: Int, k: Int, x: UnsafePointer<Float>, w: UnsafePointer<Float>, ldw: Int,
                     y: UnsafeMutablePointer<Float>, accumulate: Bool, threads: Int) {
        let t = n * k < 100_000 ? 1 : threads
        let yBox = UnsafeSendableBox(y)
        let kernels = Engine.kernels
        let box = UnsafeSendableBox((x, w))
        Parallel.ranges(n, granule: 16, threads: t) { r in
            let (x, w) = box.value
            kernels.gemv(columns: r, k: k, x: x, w: w, ldw: ldw, y: yBox.value, accumulate: accumulate)
        }
    }
}
