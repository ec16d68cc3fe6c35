import DeepRingEngine
import DeepRingData
import DeepRingTraining
import Testing

/// DeepRing compares SHA-256 hashes of outputs that different blocks compute: any last-bit difference is a
/// false alarm. The same forward pass must be bit-identical for any thread count and any batch split.
@Suite struct DeterminismTests {
    func logits(_ m: Model, _ x: Tensor, threads: Int, batch: Int) throws -> [UInt32] {
        try withThreads(threads) { bitPatterns(try m.logits(x, batchSize: batch)) }
    }

    @Test func mlpForwardIsBitIdenticalAcrossThreadsAndBatchSplits() throws {
        let m = try Model(.mlp(inputShape: [28, 28, 1], classes: 10), seed: 3)
        let x = Tensor(shape: [50, 28, 28, 1], data: randomFloats(50 * 784, seed: 4).map { abs($0) })
        let base = try logits(m, x, threads: 1, batch: 50)
        for (t, b) in [(2, 50), (4, 50), (1, 1), (2, 7), (4, 13), (3, 64)] {
            #expect(try logits(m, x, threads: t, batch: b) == base, "threads \(t), batch \(b)")
        }
    }

    @Test func vggForwardIsBitIdenticalAcrossThreadsAndBatchSplits() throws {
        let m = try Model(.vgg19(inputShape: [32, 32, 1], classes: 10, widthDivisor: 16), seed: 5)
        let x = Tensor(shape: [9, 32, 32, 1], data: randomFloats(9 * 1024, seed: 6))
        let base = try logits(m, x, threads: 1, batch: 9)
        for (t, b) in [(2, 9), (4, 9), (2, 1), (4, 4)] {
            #expect(try logits(m, x, threads: t, batch: b) == base, "threads \(t), batch \(b)")
        }
    }

    @Test func trainingIsReproducibleForASeedAndThreadCountIndependent() throws {
        let data = SyntheticDigits.generate(count: 300, seed: 2)
        func run(threads: Int) throws -> [Float] {
            try withThreads(threads) {
                let m = try Model(.mlp(inputShape: [28, 28, 1], classes: 10, hidden: [64, 32]), seed: 7)
                var cfg = TrainingConfig()
                cfg.epochs = 1; cfg.batchSize = 32; cfg.seed = 11
                _ = try Trainer(model: m, config: cfg).fit(data)
                return m.parameters.values
            }
        }
        let a = try run(threads: 1), b = try run(threads: 2)
        #expect(a.map(\.bitPattern) == b.map(\.bitPattern))
    }
}
