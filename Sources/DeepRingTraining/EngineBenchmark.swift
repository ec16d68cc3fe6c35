import DeepRingData
import DeepRingEngine
import Foundation

/// The figures of `deepring bench engine`. Each is the median of `repeats` timed runs after a warm-up.
public enum EngineBenchmark {
    public struct Figure: Sendable {
        public var key: String
        public var value: Double
        public var unit: String
    }

    static func median(_ xs: [Double]) -> Double { let s = xs.sorted(); return s[s.count / 2] }

    static func timed(repeats: Int, _ body: () -> Void) -> Double {
        body()
        var ts: [Double] = []
        for _ in 0..<max(1, repeats) {
            let t0 = now(); body(); ts.append(now() - t0)
        }
        return median(ts)
    }

    static func randomArray(_ n: Int, seed: UInt64) -> [Float] {
        var r = SeededRandom(seed: seed)
        return (0..<n).map { _ in r.uniform() - 0.5 }
    }

    /// GEMM GFLOP/s for C[m×n] = A[m×k]·B[k×n].
    public static func gemm(m: Int, n: Int, k: Int, repeats: Int) -> Double {
        let a = randomArray(m * k, seed: 1), b = randomArray(k * n, seed: 2)
        var c = [Float](repeating: 0, count: m * n)
        let reps = max(1, Int(4e8 / Double(2 * m * n * k)))
        let t = timed(repeats: repeats) { for _ in 0..<reps { GEMM.multiply(a, b, m: m, n: n, k: k, into: &c) } }
        return Double(2 * m * n * k * reps) / t / 1e9
    }

    /// Parts of the benchmark: GEMM, the MLP (training and inference), VGG-19 forward; and, on request only (no
    /// peer has it), the distribution of one MLP training step's time.
    public enum Part: String, CaseIterable, Sendable { case gemm, mlp, vgg, step }
    /// The parts run when none are named.
    public static let defaultParts: Set<Part> = [.gemm, .mlp, .vgg]

    public static func run(repeats: Int = 3, parts: Set<Part>, log: (String) -> Void = { _ in }) throws -> [Figure] {
        var out: [Figure] = []
        func add(_ k: String, _ v: Double, _ u: String) { out.append(Figure(key: k, value: v, unit: u)); log(k.padding(toLength: 28, withPad: " ", startingAt: 0) + String(format: "%12.2f ", v) + u) }
        // Warm-up: start the worker threads and let the clock ramp before the first timed figure.
        let warm = now()
        while now() - warm < 0.5 { _ = gemm(m: 256, n: 256, k: 256, repeats: 1) }
        // The GEMM under the current path, then under every other vector path this CPU runs (the generic path is
        // a reference, not a contender: FMA is a libm call there), each shape's paths back to back.
        let current = Engine.isa
        let others = ISA.supported.filter { $0 != current && $0 != .generic }
        for (m, n, k) in [(128, 900, 784), (128, 600, 900), (1024, 1024, 1024)] where parts.contains(.gemm) {
            let key = m == 1024 ? "gemm_gflops_1024" : "gemm_gflops_\(m)x\(k)x\(n)"
            add(key, gemm(m: m, n: n, k: k, repeats: max(5, repeats)), "GFLOP/s")
            for isa in others {
                try Engine.use(isa)
                defer { try? Engine.use(current) }
                add(key + "_" + isa.rawValue, gemm(m: m, n: n, k: k, repeats: max(5, repeats)), "GFLOP/s")
            }
        }

        if parts.contains(.mlp) { try mlp(repeats: repeats, add) }
        if parts.contains(.vgg) { try vgg(repeats: repeats, add) }
        if parts.contains(.step) { try step(add) }
        return out
    }

    /// One MLP training step (batch 128, plain SGD, the same batch each time): minimum, first quartile and median
    /// over 60 blocks of 20 steps. On a machine whose speed drifts for seconds at a time an epoch's median (3 s
    /// each) scatters by a third between runs; the quartile of many short blocks is the figure to compare builds
    /// with, run alternately.
    static func step(_ add: (String, Double, String) -> Void) throws {
        let (_, trainer) = try mlpTrainer()
        let x = Tensor(shape: [128, 784], data: randomArray(128 * 784, seed: 3).map { $0 + 0.5 })
        var r = SeededRandom(seed: 4)
        let y = (0..<128).map { _ in r.int(below: 10) }
        for _ in 0..<50 { trainer.step(x, y, lr: 0.01) }
        var blocks: [Double] = []
        for _ in 0..<60 {
            let t0 = now()
            for _ in 0..<20 { trainer.step(x, y, lr: 0.01) }
            blocks.append((now() - t0) / 20)
        }
        blocks.sort()
        add("mlp_train_step_min_ms", blocks[0] * 1e3, "ms")
        add("mlp_train_step_p25_ms", blocks[15] * 1e3, "ms")
        add("mlp_train_step_median_ms", blocks[30] * 1e3, "ms")
    }

    /// The paper's MLP (784 inputs, 10 classes) and its trainer: batch 128, plain SGD (no momentum), as the JAX
    /// and PyTorch peers run it.
    static func mlpTrainer() throws -> (Model, Trainer) {
        let model = try Model(Architecture.mlp(inputShape: [784], classes: 10), seed: 1)
        var cfg = TrainingConfig()
        cfg.batchSize = 128; cfg.optimizer = .sgd; cfg.momentum = 0; cfg.learningRate = 0.01; cfg.schedule = .constant
        return (model, Trainer(model: model, config: cfg))
    }

    static func mlp(repeats: Int, _ add: (String, Double, String) -> Void) throws {
        // MLP training: 60,000 samples, batch 128, SGD — random data (speed does not depend on the values).
        let samples = 60_000
        let (model, trainer) = try mlpTrainer()
        let xs = randomArray(samples * 784, seed: 3).map { $0 + 0.5 }
        var lr = SeededRandom(seed: 4)
        let labels = (0..<samples).map { _ in lr.int(below: 10) }
        // Like the JAX reference: the batches are cut before timing, then one warm-up epoch and the median of
        // `repeats` timed epochs.
        let batches = stride(from: 0, to: samples, by: 128).map { lo in
            let hi = min(samples, lo + 128)
            return (Tensor(shape: [hi - lo, 784], data: Array(xs[(lo * 784)..<(hi * 784)])), Array(labels[lo..<hi]))
        }
        let epoch = timed(repeats: repeats) {
            for (x, y) in batches { trainer.step(x, y, lr: 0.01) }
        }
        add("mlp_train_epoch_s", epoch, "s")
        add("mlp_train_samples_per_s", Double(samples) / epoch, "samples/s")

        let x1 = Tensor(shape: [1, 784], data: Array(xs[0..<784]))
        let it1 = 2000
        let t1 = timed(repeats: repeats) { for _ in 0..<it1 { _ = model.forward(x1) } }
        add("mlp_infer_b1_us", t1 / Double(it1) * 1e6, "us")
        let x256 = Tensor(shape: [256, 784], data: Array(xs[0..<(256 * 784)]))
        let it256 = 100
        let t256 = timed(repeats: repeats) { for _ in 0..<it256 { _ = model.forward(x256) } }
        add("mlp_infer_b256_img_per_s", Double(256 * it256) / t256, "img/s")
    }

    /// Full-width VGG-19 without BatchNorm, random weights (as the peers run it).
    static func benchVGG() throws -> Model {
        try Model(Architecture.vgg19(inputShape: [32, 32, 3], classes: 10, widthDivisor: 1, batchNorm: false), seed: 5)
    }

    static func vgg(repeats: Int, _ add: (String, Double, String) -> Void) throws {
        let vgg = try benchVGG()
        let v1 = Tensor(shape: [1, 32, 32, 3], data: randomArray(3072, seed: 6))
        let tv1 = timed(repeats: repeats) { for _ in 0..<10 { _ = vgg.forward(v1) } }
        add("vgg19_infer_b1_ms", tv1 / 10 * 1e3, "ms")
        let v64 = Tensor(shape: [64, 32, 32, 3], data: randomArray(64 * 3072, seed: 7))
        let tv64 = timed(repeats: repeats) { _ = vgg.forward(v64) }
        add("vgg19_infer_b64_img_per_s", 64 / tv64, "img/s")
    }

    /// Per-layer forward times of full-width VGG-19 at `batch` (median of `repeats` passes after a warm-up):
    /// one line per layer with milliseconds and, for convolutions and dense layers, GFLOP/s — counted as direct
    /// convolution's FLOPs (2·k²·Cin per output), so a Winograd layer (marked "wino", 2.25× fewer multiply-adds)
    /// shows an effective rate above the machine's peak.
    public static func vggLayers(batch: Int = 64, repeats: Int = 3) throws -> [String] {
        try layerProfile(try benchVGG(), Tensor(shape: [batch, 32, 32, 3], data: randomArray(batch * 3072, seed: 7)), repeats: repeats)
    }

    /// The same for the paper's MLP (random weights) at `batch`: inference's kept, packed weights.
    public static func mlpLayers(batch: Int = 256, repeats: Int = 3) throws -> [String] {
        let (model, _) = try mlpTrainer()
        return layerProfile(model, Tensor(shape: [batch, 784], data: randomArray(batch * 784, seed: 3).map { $0 + 0.5 }), repeats: repeats)
    }

    /// Per-layer forward times of `model` on `x` (median of `repeats` passes after a warm-up).
    static func layerProfile(_ model: Model, _ x: Tensor, repeats: Int) -> [String] {
        let batch = x.batch
        _ = model.forward(x)
        var runs: [[Double]] = []
        for _ in 0..<max(1, repeats) { runs.append(model.profiledForward(x).seconds) }
        var lines: [String] = [], total = 0.0, totalFlops = 0.0
        for (i, layer) in model.layers.enumerated() {
            let t = median(runs.map { $0[i] })
            if t == 0 { continue }   // a ReLU fused into the layer before
            var flops = 0.0
            if let c = layer as? Conv2D {
                flops = 2 * Double(batch * c.outH * c.outW * c.outC * c.patchSize)
            } else if let d = layer as? Dense {
                flops = 2 * Double(batch * d.inFeatures * d.outFeatures)
            }
            total += t; totalFlops += flops
            let rate = flops > 0 ? String(format: "%8.1f GFLOP/s", flops / t / 1e9) : ""
            let wino = (layer as? Conv2D)?.usesWinograd == true ? " wino" : ""
            lines.append(String(format: "%2d %-10@ %-16@ %9.3f ms ", i, "\(layer.spec.type.rawValue)" as NSString,
                                "\(layer.outputShape)" as NSString, t * 1e3) + rate + wino)
        }
        lines.append(String(format: "total %.1f ms, %.1f img/s, %.1f GFLOP/s (direct-convolution FLOPs) over the whole pass", total * 1e3,
                            Double(batch) / total, totalFlops / total / 1e9))
        return lines
    }
}
