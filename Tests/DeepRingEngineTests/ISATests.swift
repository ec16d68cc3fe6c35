@testable import DeepRingEngine
import DeepRingData
import DeepRingKernels
import DeepRingKernelsTestSupport
import DeepRingTraining
import Foundation
import Testing

/// Blocks of one ring may run on different CPUs and compare SHA-256 of their outputs (Eqs. 9–13), so every kernel
/// path must give the same bytes: the AVX-512, AVX2 and portable kernels, and the AVX-512 tile plan compiled for
/// AVX2 (which checks that plan's tile logic on a CPU without AVX-512). Each test computes the same thing under
/// every path this CPU runs and compares bit patterns, and the GEMM against the scalar definition of its chains.
///
/// Serialized: the path is process-wide (other suites still run meanwhile, on whichever path is set, which is
/// harmless precisely because all paths agree).
@Suite(.serialized) struct ISATests {
    /// A kernel path to force.
    struct Path: CustomStringConvertible, Sendable {
        let description: String
        let run: @Sendable (() throws -> Void) throws -> Void
    }

    /// Every path this CPU runs, fastest first, then the AVX-512 plan on AVX2 (when AVX2 runs here).
    static var paths: [Path] {
        var paths = ISA.supported.map { isa in
            Path(description: isa.rawValue) { body in
                let saved = Engine.isa
                try Engine.use(isa)
                defer { try? Engine.use(saved) }
                try body()
            }
        }
        if ISA.avx2.isSupported {
            paths.append(Path(description: "avx512 plan on avx2") { body in try Engine.withKernels(AVX512PlanOnAVX2.self, body) })
        }
        return paths
    }

    /// `compute` under every path; expects every path's bytes to equal the first's.
    func agree(_ what: String, _ compute: () throws -> [UInt32]) throws {
        var first: (String, [UInt32])?
        for path in Self.paths {
            var bits: [UInt32] = []
            try path.run { bits = try compute() }
            if let (name, expected) = first {
                let same = bits == expected
                #expect(same, "\(what): \(path) differs from \(name) at \(firstDifference(bits, expected))")
            } else {
                first = (path.description, bits)
            }
        }
        #expect(Self.paths.count >= 2 || !ISA.avx2.isSupported, "only one path ran")
    }

    func firstDifference(_ a: [UInt32], _ b: [UInt32]) -> String {
        guard a.count == b.count else { return "length \(a.count) vs \(b.count)" }
        guard let i = a.indices.first(where: { a[$0] != b[$0] }) else { return "nowhere" }
        return "element \(i) of \(a.count)"
    }

    // MARK: GEMM against the scalar definition

    /// C[i, j] = fma(A[i, k−1], B[k−1, j], … fma(A[i, 0], B[0, j], C₀[i, j] or +0)): the chain every path keeps.
    func scalarChains(_ a: [Float], _ b: [Float], _ c0: [Float], m: Int, n: Int, k: Int, transB: Bool, accumulate: Bool) -> [UInt32] {
        var c = [Float](repeating: 0, count: m * n)
        for i in 0..<m { for j in 0..<n {
            var s: Float = accumulate ? c0[i * n + j] : 0
            for p in 0..<k { s = s.addingProduct(a[i * k + p], transB ? b[j * k + p] : b[p * n + j]) }
            c[i * n + j] = s
        } }
        return c.map(\.bitPattern)
    }

    /// Shapes that take every tile: whole 6-row tiles of one, two and four strips, 2 and 4 edge rows (m mod 6)
    /// against groups of 1, 2 and 4 strips, other edge rows, partial strips, several K blocks (k > 256; k = 230 and
    /// 450 are one and two blocks under AVX2's plan, two and three under AVX-512's), one row (the GEMVs, with groups
    /// of 4 and 8 strips and their short tails), and two threads.
    static let gemmShapes: [(Int, Int, Int)] = [
        (8, 130, 40), (10, 100, 33), (13, 97, 300), (20, 64, 17), (6, 16, 5), (128, 90, 78),
        (1, 900, 78), (1, 37, 301), (1, 200, 9), (2, 129, 64), (3, 47, 11), (14, 70, 230), (28, 100, 450),
    ]

    @Test(arguments: gemmShapes)
    func everyPathIsTheScalarFMAChain(_ shape: (Int, Int, Int)) throws {
        let (m, n, k) = shape
        let a = randomFloats(m * k, seed: UInt64(m * 13 + k)), b = randomFloats(k * n, seed: UInt64(n * 7 + k))
        let c0 = randomFloats(m * n, seed: 5)
        for transB in [false, true] {
            for accumulate in [false, true] {
                let expected = scalarChains(a, b, c0, m: m, n: n, k: k, transB: transB, accumulate: accumulate)
                for path in Self.paths {
                    for threads in [1, 2] {
                        var c = c0
                        try path.run {
                            GEMM.multiply(a, b, m: m, n: n, k: k, transB: transB, into: &c, accumulate: accumulate, threads: threads)
                        }
                        let bits = c.map(\.bitPattern)
                        let same = bits == expected
                        let what = "\(path), m=\(m) n=\(n) k=\(k) transB=\(transB) accumulate=\(accumulate) threads=\(threads)"
                        #expect(same, "\(what): differs at \(firstDifference(bits, expected))")
                    }
                }
            }
        }
    }

    /// The pre-packed B (inference's cached weights) and its GEMV, under every path.
    @Test(arguments: [(1, 900, 784), (1, 2100, 60), (1, 40, 30), (7, 64, 300), (10, 300, 50)])
    func prePackedWeightsAgreeOnEveryPath(_ shape: (Int, Int, Int)) throws {
        let (m, n, k) = shape
        let a = randomFloats(m * k, seed: 3), b = randomFloats(k * n, seed: 4)
        let expected = scalarChains(a, b, [], m: m, n: n, k: k, transB: false, accumulate: false)
        for path in Self.paths {
            var c = [Float](repeating: .nan, count: m * n)
            try path.run {
                a.withUnsafeBufferPointer { ap in
                    b.withUnsafeBufferPointer { bp in
                        c.withUnsafeMutableBufferPointer { cp in
                            let packed = GEMM.PackedB(k: k, n: n, b: .init(bp.baseAddress!, rowStride: n, colStride: 1))
                            GEMM.multiply(m: m, a: .init(ap.baseAddress!, rowStride: k, colStride: 1), packed: packed,
                                          c: cp.baseAddress!, ldc: n, threads: 2)
                        }
                    }
                }
            }
            let bits = c.map(\.bitPattern)
            let same = bits == expected
            #expect(same, "\(path), m=\(m) n=\(n) k=\(k): differs at \(firstDifference(bits, expected))")
        }
    }

    /// Weights packed under one path and multiplied under another (a path switched at run time): the K blocks are
    /// the packing path's — 230 deep under AVX2's plan, deeper than the AVX-512 plan's 6×64 limit, so its halved
    /// 6×32 tiles run — and every path still gives the scalar chains.
    @Test(arguments: [(14, 70, 230), (28, 100, 450), (1, 90, 230)])
    func weightsPackedUnderOnePathAgreeUnderEvery(_ shape: (Int, Int, Int)) throws {
        let (m, n, k) = shape
        let a = randomFloats(m * k, seed: 8), b = randomFloats(k * n, seed: 9)
        let expected = scalarChains(a, b, [], m: m, n: n, k: k, transB: false, accumulate: false)
        for packer in Self.paths {
            var packed: GEMM.PackedB?
            try packer.run {
                packed = b.withUnsafeBufferPointer { bp in GEMM.PackedB(k: k, n: n, b: .init(bp.baseAddress!, rowStride: n, colStride: 1)) }
            }
            guard let packed else { Issue.record("nothing packed"); return }
            for path in Self.paths {
                var c = [Float](repeating: .nan, count: m * n)
                try path.run {
                    a.withUnsafeBufferPointer { ap in
                        c.withUnsafeMutableBufferPointer { cp in
                            GEMM.multiply(m: m, a: .init(ap.baseAddress!, rowStride: k, colStride: 1), packed: packed,
                                          c: cp.baseAddress!, ldc: n, threads: 2)
                        }
                    }
                }
                let same = c.map(\.bitPattern) == expected
                #expect(same, "packed under \(packer), multiplied under \(path), m=\(m) n=\(n) k=\(k)")
            }
        }
    }

    // MARK: Layers, training, inference

    /// Every layer's forward (training mode) and backward: the logits, the input gradient and every parameter
    /// gradient, for batches that leave 1, 2 and 4 edge rows.
    @Test(arguments: [
        ("dense and ReLU", Architecture(name: "t", inputShape: [37], classes: 10, layers: [.dense(70), .relu, .dense(10)])),
        ("convolution 3×3 (Winograd), max pool", Architecture(name: "t", inputShape: [8, 8, 16], classes: 5,
                                                             layers: [.conv(20), .relu, .maxPool(2), .flatten, .dense(5)])),
        ("convolution 3×3 (Winograd), 24 channels in, 40 out, odd image", Architecture(name: "t", inputShape: [7, 7, 24], classes: 3,
                                                             layers: [.conv(40), .relu, .flatten, .dense(3)])),
        ("convolution 5×5 stride 2 (im2col)", Architecture(name: "t", inputShape: [11, 11, 3], classes: 4,
                                                          layers: [.conv(18, kernel: 5, stride: 2, padding: 1), .flatten, .dense(4)])),
        ("batch norm on images and features", Architecture(name: "t", inputShape: [6, 6, 3], classes: 3,
                                                          layers: [.conv(8), .batchNorm, .relu, .flatten, .dense(34), .batchNorm, .dense(3)])),
        ("dropout", Architecture(name: "t", inputShape: [50], classes: 7, layers: [.dense(40), .dropout(0.3), .dense(7)])),
    ])
    func everyLayerForwardAndBackwardAgree(_ name: String, _ arch: Architecture) throws {
        for batch in [1, 7, 8, 10] {
            let x = randomFloats(batch * arch.inputShape.reduce(1, *), seed: UInt64(batch))
            try agree("\(name), batch \(batch)") {
                let m = try Model(arch, seed: 9)
                for l in m.layers { l.needsInputGradient = true }
                let input = Tensor(shape: [batch] + arch.inputShape, data: x)
                let logits = m.forward(input, training: true)
                let (_, g, _) = softmaxCrossEntropy(logits: logits, labels: (0..<batch).map { $0 % arch.classes })
                let dx = m.backward(g)
                let inference = m.forward(input, training: false)
                return bitPatterns(logits) + bitPatterns(dx) + m.parameters.gradients.map(\.bitPattern)
                    + bitPatterns(inference) + bitPatterns(softmax(inference))
            }
        }
    }

    /// One epoch of the paper's MLP (784→900→600→300→100→10) on synthetic digits, with SGD and with Adam: the
    /// same weights on every path (the portable path runs it too, so the data set is small).
    @Test func anMLPTrainingEpochAgrees() throws {
        let data = SyntheticDigits.generate(count: 96, seed: 4)
        for optimizer in [OptimizerKind.sgd, .adam] {
            try agree("MLP epoch, \(optimizer)") {
                let m = try Model(.mlp(inputShape: [28, 28, 1], classes: 10), seed: 7)
                var cfg = TrainingConfig()
                cfg.epochs = 1; cfg.batchSize = 32; cfg.seed = 11; cfg.optimizer = optimizer
                _ = try Trainer(model: m, config: cfg).fit(data)
                return m.parameters.values.map(\.bitPattern)
            }
        }
    }

    /// VGG-19 at width ÷8, inference: the same logits on every path, for one and two threads and batch splits.
    @Test func vgg19InferenceAgrees() throws {
        let m = try Model(.vgg19(inputShape: [32, 32, 1], classes: 10, widthDivisor: 8), seed: 5)
        let x = Tensor(shape: [5, 32, 32, 1], data: randomFloats(5 * 1024, seed: 6))
        for (threads, batch) in [(1, 5), (2, 2)] {
            try agree("VGG-19 ÷8, \(threads) threads, batch \(batch)") {
                try withThreads(threads) { bitPatterns(try m.logits(x, batchSize: batch)) }
            }
        }
    }

    /// The AVX-512 kernels themselves, against AVX2, when this CPU runs them (the checks above then include them).
    @Test(.enabled(if: ISA.avx512.isSupported, "this CPU has no AVX-512: its tile plan is checked compiled for AVX2 instead"))
    func avx512KernelsRunHere() throws {
        #expect(Self.paths.map(\.description).first == "avx512")
        #expect(ISA.best == .avx512)
    }

    // MARK: Choosing a path

    @Test func theEnvironmentVariableNamesAPath() throws {
        #expect(try ISA.named(inEnvironment: [:]) == nil)
        #expect(try ISA.named(inEnvironment: ["DEEPRING_ISA": ""]) == nil)
        #expect(try ISA.named(inEnvironment: ["DEEPRING_ISA": "generic"]) == .generic)
        #expect(try ISA.named(inEnvironment: ["DEEPRING_ISA": "GENERIC"]) == .generic)
        #expect(throws: ISAError.unknown("sse9")) { try ISA.named(inEnvironment: ["DEEPRING_ISA": "sse9"]) }
        for isa in ISA.allCases where !isa.isSupported {
            #expect(throws: ISAError.unsupported(isa)) { try ISA.named(inEnvironment: ["DEEPRING_ISA": isa.rawValue]) }
            #expect(throws: ISAError.unsupported(isa)) { try Engine.use(isa) }
        }
        #expect(ISA.generic.isSupported)
        #if arch(x86_64)
        // The x86-64 build's engine is compiled for Haswell, so a CPU that runs these tests runs AVX2.
        #expect(ISA.avx2.isSupported)
        #endif
        #expect(ISA.supported.first == ISA.best)
        #expect("\(ISAError.unknown("x"))".contains("avx512, avx2, generic"))
    }

    /// The benchmark's CPU line decodes CPUID as the kernel reads it: on Linux it agrees with /proc/cpuinfo's
    /// vendor_id, "cpu family" and "model" (where the leaf's extended fields must be folded in: Zen 4 is 25/17,
    /// not 15/1).
    @Test func theCPUIdentityAgreesWithTheKernelsReading() throws {
        #if arch(x86_64) && os(Linux)
        let info = try String(contentsOfFile: "/proc/cpuinfo", encoding: .utf8)
        func field(_ name: String) -> String? {
            for line in info.split(separator: "\n") {
                let parts = line.split(separator: ":", maxSplits: 1)
                if parts.count == 2 && parts[0].trimmingCharacters(in: .whitespaces) == name {
                    return parts[1].trimmingCharacters(in: .whitespaces)
                }
            }
            return nil
        }
        let vendor = try #require(field("vendor_id")), family = try #require(field("cpu family"))
        let model = try #require(field("model"))
        #expect(ISA.cpuIdentity.hasPrefix("\(vendor) family \(family) model \(model)"), "\(ISA.cpuIdentity)")
        #else
        #expect(!ISA.cpuIdentity.isEmpty)
        #endif
    }

    @Test func usingAPathSwitchesTheKernels() throws {
        let saved = Engine.isa
        defer { try? Engine.use(saved) }
        for isa in ISA.supported {
            try Engine.use(isa)
            #expect(Engine.isa == isa)
            #expect(ObjectIdentifier(Engine.kernels) == ObjectIdentifier(isa.kernels))
        }
        try Engine.withKernels(AVX512PlanOnAVX2.self) {
            #expect(ObjectIdentifier(Engine.kernels) == ObjectIdentifier(AVX512PlanOnAVX2.self))
        }
        #expect(ObjectIdentifier(Engine.kernels) == ObjectIdentifier(Engine.isa.kernels))
    }

    // MARK: The engine's own transcendentals

    /// eˣ within 2 ulp of the correctly rounded value, over the whole range softmax sees and beyond; the edges.
    @Test func deterministicExpIsAccurate() {
        var worst: Float = 0
        var x: Float = -103
        while x < 88.7 {
            let exact = Foundation.exp(Double(x))
            let got = DeterministicMath.exp(x)
            if exact >= Double(Float.leastNormalMagnitude) {
                let ulp = Float(exact).ulp
                worst = max(worst, abs(Float(Double(got) - exact)) / ulp)
            } else {
                #expect(abs(Double(got) - exact) <= Double(Float.leastNonzeroMagnitude), "exp(\(x)) subnormal")
            }
            x += 0.000_731
        }
        #expect(worst <= 2, "worst error \(worst) ulp")
        #expect(DeterministicMath.exp(0) == 1)
        #expect(DeterministicMath.exp(-200) == 0)
        #expect(DeterministicMath.exp(89) == .infinity)
        #expect(DeterministicMath.exp(88.72) < .infinity)
        #expect(DeterministicMath.exp(.nan).isNaN)
    }

    @Test func deterministicLogIsAccurate() {
        var worst = 0.0
        var r = SeededRandom(seed: 8)
        for _ in 0..<200_000 {
            let x = Double(bitPattern: UInt64.random(in: 1...0x7FEF_FFFF_FFFF_FFFF, using: &r))
            let exact = Foundation.log(x)
            worst = max(worst, abs(DeterministicMath.log(x) - exact) / exact.ulp)
        }
        #expect(worst <= 2, "worst error \(worst) ulp")
        #expect(DeterministicMath.log(1.0) == 0)
        #expect(DeterministicMath.log(0.0) == -.infinity)
        #expect(DeterministicMath.log(-1.0).isNaN)
        #expect(DeterministicMath.log(Double.infinity) == .infinity)
        #expect(DeterministicMath.log(Float(1e-30)) < -69)
    }

    @Test func deterministicPowerIsRepeatedSquaring() {
        for n in 0..<200 {
            let exact = Foundation.pow(Double(Float(0.999)), Double(n))
            #expect(abs(Double(DeterministicMath.power(0.999, n)) - exact) <= Double(Float(exact).ulp), "0.999^\(n)")
        }
        #expect(DeterministicMath.power(0.9, 0) == 1)
    }
}

extension SeededRandom: RandomNumberGenerator {}
