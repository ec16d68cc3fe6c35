import DeepRingEngine
import DeepRingData
import DeepRingTraining
import Foundation
import Testing

@Suite struct TrainingTests {
    @Test func syntheticDigitsAreDeterministicBySeed() {
        let a = SyntheticDigits.generate(count: 30, seed: 4), b = SyntheticDigits.generate(count: 30, seed: 4)
        let c = SyntheticDigits.generate(count: 30, seed: 5)
        #expect(a.images == b.images && a.labels == b.labels)
        #expect(a.images != c.images)
        #expect(a.images.allSatisfy { $0 >= 0 && $0 <= 1 })
        #expect(a.classCounts == [Int](repeating: 3, count: 10))
    }

    /// The embedded default: the paper's MLP must reach ≥ 95% on the held-out synthetic split within seconds.
    @Test func mlpReachesItsBarOnSyntheticDigits() throws {
        let s = try DatasetLoader.load(name: "synthetic", seed: 3, syntheticCounts: (4000, 1000))
        let m = try Model(.mlp(inputShape: s.train.imageShape, classes: 10), seed: 1)
        var cfg = TrainingConfig()
        cfg.epochs = 2; cfg.learningRate = 0.05; cfg.seed = 2
        let t0 = now()
        let summaries = try Trainer(model: m, config: cfg).fit(s.train, test: s.test)
        let acc = try Evaluation.evaluate(m, on: s.test).accuracy
        print(String(format: "synthetic: test accuracy %.2f%% after 2 epochs, %.1f s", acc * 100, now() - t0))
        #expect(acc >= 0.95)
        #expect(summaries.count == 2)
        #expect(summaries[1].trainLoss < summaries[0].trainLoss)
    }

    /// `Trainer.step` updates each layer right after its backward pass (and runs ReLU in place); the values
    /// must equal the plain sequence: forward, backward, one optimizer update over every parameter.
    @Test(arguments: [OptimizerKind.sgd, .adam])
    func fusedStepEqualsBackwardThenUpdate(_ kind: OptimizerKind) throws {
        let arch = Architecture(name: "t", inputShape: [6, 6, 2], classes: 4,
                                layers: [.conv(5), .batchNorm, .relu, .maxPool(2), .flatten, .dense(7), .relu, .dense(4)])
        let fused = try Model(arch, seed: 3), plain = try Model(arch, seed: 3)
        var cfg = TrainingConfig()
        cfg.optimizer = kind; cfg.momentum = 0.9; cfg.weightDecay = 1e-3
        let trainer = Trainer(model: fused, config: cfg)
        let opt = Optimizer(kind, store: plain.parameters, weightDecay: 1e-3)
        opt.momentum = 0.9
        for step in 0..<3 {
            let x = Tensor(shape: [5, 6, 6, 2], data: randomFloats(5 * 72, seed: UInt64(10 + step)))
            let y = (0..<5).map { ($0 + step) % 4 }
            trainer.step(x, y, lr: 0.05)
            let (_, g, _) = softmaxCrossEntropy(logits: plain.forward(x, training: true), labels: y)
            _ = plain.backward(g)
            opt.update(lr: 0.05)
            let same = fused.parameters.values.map(\.bitPattern) == plain.parameters.values.map(\.bitPattern)
            #expect(same, "\(kind) step \(step): fused update differs")
        }
    }

    @Test func adamAndStepScheduleTrainASmallConvNet() throws {
        let s = try DatasetLoader.load(name: "synthetic", seed: 5, syntheticCounts: (1200, 300))
        let arch = Architecture(name: "cnn", inputShape: [28, 28, 1], classes: 10,
                                layers: [.conv(8), .batchNorm, .relu, .maxPool(2), .conv(16, stride: 2), .relu,
                                         .flatten, .dropout(0.1), .dense(10)])
        let m = try Model(arch, seed: 1)
        var cfg = TrainingConfig()
        cfg.epochs = 2; cfg.optimizer = .adam; cfg.learningRate = 0.003; cfg.schedule = .step; cfg.batchSize = 32
        cfg.shiftAugment = 1
        _ = try Trainer(model: m, config: cfg).fit(s.train)
        let acc = try Evaluation.evaluate(m, on: s.test).accuracy
        #expect(acc >= 0.8, "small CNN reached only \(acc)")
    }

    /// Plain SGD (momentum 0, no weight decay) takes its fast path: w ← w − lr·g, bit for bit, and the same
    /// values as the momentum formula with momentum 0.
    @Test func plainSGDIsWMinusLrTimesG() throws {
        let data = SyntheticDigits.generate(count: 64, seed: 2)
        let arch = Architecture.mlp(inputShape: data.imageShape, classes: 10)
        let (x, y) = data.batch(0..<64)
        var cfg = TrainingConfig()
        cfg.momentum = 0; cfg.weightDecay = 0; cfg.optimizer = .sgd
        let model = try Model(arch, seed: 4)
        let before = model.parameters.values
        let trainer = Trainer(model: model, config: cfg)
        _ = trainer.step(x, y, lr: 0.05)
        let g = model.parameters.gradients
        let expected = zip(before, g).map { $0 - 0.05 * $1 }
        #expect(model.parameters.values.map(\.bitPattern) == expected.map(\.bitPattern))
        // The general (momentum) path agrees on a first step, where the velocity is exactly g.
        var cfg2 = cfg; cfg2.momentum = 0.5
        let m2 = try Model(arch, seed: 4)
        _ = Trainer(model: m2, config: cfg2).step(x, y, lr: 0.05)
        #expect(m2.parameters.values.map(\.bitPattern) == expected.map(\.bitPattern), "first step: velocity = g")
    }

    @Test func evaluationScoresAndConfusion() {
        let r = Evaluation.score(predictions: [0, 1, 1, 2], labels: [0, 1, 2, 2], classes: 3)
        #expect(r.correct == 3 && r.accuracy == 0.75)
        #expect(r.confusion == [[1, 0, 0], [0, 1, 0], [0, 1, 1]])
        #expect(r.perClassAccuracy == [1, 1, 0.5])
    }

    @Test(.enabled(if: mnistDirectory != nil, "MNIST not found at ../shared/data/mnist (present in CI)"))
    func mnistCounts() throws {
        let s = try DatasetLoader.load(name: "mnist", directory: mnistDirectory!)
        #expect(s.train.count == 60_000 && s.test.count == 10_000)
        #expect(s.train.imageShape == [28, 28, 1] && s.train.classes == 10)
        #expect(s.train.classCounts == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949])
        #expect(s.test.classCounts == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009])
        #expect(s.train.images.max() == 1 && s.train.images.min() == 0)
    }
}
