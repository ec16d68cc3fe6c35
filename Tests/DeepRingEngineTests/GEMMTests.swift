import DeepRingEngine
import Testing

/// GEMM against a float64 reference, on random and awkward shapes, with every operand layout.
@Suite struct GEMMTests {
    static let shapes: [(Int, Int, Int)] = [
        (1, 1, 1), (1, 7, 17), (7, 1, 33), (17, 33, 7), (33, 17, 1), (6, 16, 256), (7, 17, 257),
        (13, 100, 300), (128, 90, 78), (65, 129, 513), (1, 900, 784), (2, 33, 600),
        // Edge rows (m mod 6 = 2 or 4) with even, odd and partial strip counts: the 2×32 kernel and the
        // 6×16 kernel cut to 4 rows.
        (8, 64, 40), (8, 48, 9), (10, 40, 50), (128, 900, 20), (4, 33, 9), (2, 64, 5),
    ]

    func reference(_ a: [Float], _ b: [Float], m: Int, n: Int, k: Int, transA: Bool, transB: Bool) -> [Double] {
        var c = [Double](repeating: 0, count: m * n)
        for i in 0..<m { for j in 0..<n {
            var s = 0.0
            for p in 0..<k {
                let av = transA ? a[p * m + i] : a[i * k + p]
                let bv = transB ? b[j * k + p] : b[p * n + j]
                s += Double(av) * Double(bv)
            }
            c[i * n + j] = s
        } }
        return c
    }

    @Test(arguments: shapes)
    func matchesFloat64Reference(_ shape: (Int, Int, Int)) {
        let (m, n, k) = shape
        for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
            let a = randomFloats(m * k, seed: UInt64(m * 31 + k)), b = randomFloats(k * n, seed: UInt64(n * 17 + k))
            var c = [Float](repeating: .nan, count: m * n)
            GEMM.multiply(a, b, m: m, n: n, k: k, transA: ta, transB: tb, into: &c)
            let r = reference(a, b, m: m, n: n, k: k, transA: ta, transB: tb)
            // Error bound of a length-k float32 dot product of values in [-1, 1].
            let tol = Double(k) * 1.2e-7 * 2 + 1e-6
            var worst = 0.0
            for i in 0..<(m * n) { worst = max(worst, abs(Double(c[i]) - r[i])) }
            #expect(worst <= tol, "m=\(m) n=\(n) k=\(k) transA=\(ta) transB=\(tb): max error \(worst) > \(tol)")
        }
    }

    @Test func accumulateAddsToExistingValues() {
        let (m, n, k) = (9, 35, 70)
        let a = randomFloats(m * k, seed: 1), b = randomFloats(k * n, seed: 2)
        let c0 = randomFloats(m * n, seed: 3)
        var c = c0
        GEMM.multiply(a, b, m: m, n: n, k: k, into: &c, accumulate: true)
        let r = reference(a, b, m: m, n: n, k: k, transA: false, transB: false)
        for i in 0..<(m * n) { #expect(abs(Double(c[i]) - (Double(c0[i]) + r[i])) < 1e-4) }
    }

    /// Every parallel path (threads over columns; threads over rows sharing one packed B) and both ways of
    /// reading A (in place when row-major, packed when transposed) give the same bits as one thread.
    @Test(arguments: [(203, 37, 301), (130, 300, 520), (61, 16, 1000), (7, 64, 4608)])
    func everyPathIsBitIdenticalToOneThread(_ shape: (Int, Int, Int)) {
        let (m, n, k) = shape
        for (ta, tb) in [(false, false), (true, false), (false, true)] {
            for accumulate in [false, true] {
                let a = randomFloats(m * k, seed: UInt64(m + k)), b = randomFloats(k * n, seed: UInt64(n + k))
                let c0 = randomFloats(m * n, seed: 5)
                var one = c0
                GEMM.multiply(a, b, m: m, n: n, k: k, transA: ta, transB: tb, into: &one, accumulate: accumulate, threads: 1)
                let r = reference(a, b, m: m, n: n, k: k, transA: ta, transB: tb)
                var worst = 0.0
                for i in 0..<(m * n) { worst = max(worst, abs(Double(one[i]) - ((accumulate ? Double(c0[i]) : 0) + r[i]))) }
                #expect(worst <= Double(k) * 2.4e-7 + 1e-5, "m=\(m) n=\(n) k=\(k): error \(worst)")
                for t in [2, 3, 4] {
                    var c = c0
                    GEMM.multiply(a, b, m: m, n: n, k: k, transA: ta, transB: tb, into: &c, accumulate: accumulate, threads: t)
                    #expect(c.map(\.bitPattern) == one.map(\.bitPattern), "m=\(m) n=\(n) k=\(k) threads=\(t) transA=\(ta) transB=\(tb)")
                }
            }
        }
    }

    @Test func zeroInnerDimensionGivesZeros() {
        var c = [Float](repeating: 5, count: 6)
        GEMM.multiply([], [], m: 2, n: 3, k: 0, into: &c)
        #expect(c == [Float](repeating: 0, count: 6))
    }

    /// The determinism contract: a row's result does not depend on threads, batch size or the GEMV path.
    @Test func rowsAreBitIdenticalAcrossThreadsBatchesAndPaths() {
        let (k, n) = (784, 900)
        let b = randomFloats(k * n, seed: 9)
        let a = randomFloats(64 * k, seed: 10)
        var full1 = [Float](repeating: 0, count: 64 * n), full4 = full1
        GEMM.multiply(a, b, m: 64, n: n, k: k, into: &full1, threads: 1)
        GEMM.multiply(a, b, m: 64, n: n, k: k, into: &full4, threads: 4)
        #expect(full1.map(\.bitPattern) == full4.map(\.bitPattern))
        for row in [0, 5, 6, 37, 63] {
            var one = [Float](repeating: 0, count: n)
            GEMM.multiply(Array(a[(row * k)..<((row + 1) * k)]), b, m: 1, n: n, k: k, into: &one, threads: 2)
            #expect(one.map(\.bitPattern) == full1[(row * n)..<((row + 1) * n)].map(\.bitPattern), "row \(row)")
        }
        // Batches whose last rows are an edge of 1, 2 or 4 rows (7, 8 and 10 rows; 128, the training batch,
        // leaves 2): the edge rows go through other kernels and must still give the same bits.
        for (lo, rows, threads) in [(30, 7, 3), (40, 8, 2), (50, 10, 1), (3, 8, 1)] {
            var part = [Float](repeating: 0, count: rows * n)
            GEMM.multiply(Array(a[(lo * k)..<((lo + rows) * k)]), b, m: rows, n: n, k: k, into: &part, threads: threads)
            #expect(part.map(\.bitPattern) == full1[(lo * n)..<((lo + rows) * n)].map(\.bitPattern), "\(rows) rows from \(lo)")
        }
    }
}
