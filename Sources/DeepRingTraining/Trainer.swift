import DeepRingData
import DeepRingEngine
import Foundation

public struct TrainingConfig: Sendable {
    public var epochs: Int = 10
    public var batchSize: Int = 128
    public var learningRate: Float = 0.05
    public var optimizer: OptimizerKind = .sgd
    public var weightDecay: Float = 0
    /// SGD momentum (0 = plain SGD, w −= lr·g).
    public var momentum: Float = 0.9
    public var schedule: Schedule = .cosine
    public var seed: UInt64 = 1
    /// Random shifts of up to this many pixels (0 = off), a cheap augmentation for images.
    public var shiftAugment: Int = 0
    public init() {}
}

/// What the trainer reports after every batch.
public struct TrainingProgress: Sendable {
    public var epoch: Int, epochs: Int
    public var batch: Int, batches: Int
    public var loss: Float
    public var accuracy: Float
    public var learningRate: Float
    public var epochElapsed: Double
    public var totalElapsed: Double
    public var samplesPerSecond: Double
}

/// Per-epoch summary.
public struct EpochSummary: Sendable {
    public var epoch: Int
    public var trainLoss: Float
    public var trainAccuracy: Float
    public var testAccuracy: Float?
    public var seconds: Double
}

/// Set by the CLI's SIGINT handler: training stops after the current batch.
nonisolated(unsafe) public var trainingInterrupted = false

public final class Trainer {
    public let model: Model
    public let config: TrainingConfig
    public let optimizer: Optimizer

    public init(model: Model, config: TrainingConfig) {
        self.model = model
        self.config = config
        optimizer = Optimizer(config.optimizer, store: model.parameters, weightDecay: config.weightDecay)
        optimizer.momentum = config.momentum
    }

    /// One SGD step on a batch; returns (loss, correct).
    @discardableResult
    public func step(_ x: Tensor, _ labels: [Int], lr: Float) -> (Float, Int) {
        let logits = model.forward(x, training: true)
        let (loss, grad, correct) = softmaxCrossEntropy(logits: logits, labels: labels)
        // Each layer's parameters are updated as soon as its gradients are final (same values as one update
        // after the whole backward pass; the weights and gradients are still in cache).
        optimizer.beginStep()
        _ = model.backward(grad) { self.optimizer.update(lr: lr, within: $0) }
        return (loss, correct)
    }

    /// Trains for `config.epochs` epochs. `onEpoch` runs after each epoch (save a checkpoint there).
    /// Returns early (with the epochs done so far) when `trainingInterrupted` becomes true.
    public func fit(_ train: Dataset, test: Dataset? = nil,
                    progress: (TrainingProgress) -> Void = { _ in },
                    onEpoch: (EpochSummary) throws -> Void = { _ in }) throws -> [EpochSummary] {
        var rng = SeededRandom(seed: config.seed)
        let n = train.count
        let bs = max(1, config.batchSize)
        let batches = (n + bs - 1) / bs
        let totalSteps = Double(batches * config.epochs)
        var summaries: [EpochSummary] = []
        let start = now()
        var order = Array(0..<n)
        for epoch in 1...max(1, config.epochs) {
            rng.shuffle(&order)
            let t0 = now()
            var lossSum: Double = 0, correct = 0, seen = 0
            for b in 0..<batches {
                if trainingInterrupted { return summaries }
                let idx = order[(b * bs)..<min(n, (b + 1) * bs)]
                var (x, y) = train.batch(idx)
                if config.shiftAugment > 0 { x = Augment.shift(x, maxShift: config.shiftAugment, rng: &rng) }
                let lr = config.schedule.rate(base: config.learningRate,
                                              progress: Double((epoch - 1) * batches + b) / totalSteps)
                let (loss, c) = step(x, y, lr: lr)
                lossSum += Double(loss) * Double(idx.count); correct += c; seen += idx.count
                let el = now() - t0
                progress(TrainingProgress(epoch: epoch, epochs: config.epochs, batch: b + 1, batches: batches,
                                          loss: Float(lossSum / Double(seen)), accuracy: Float(correct) / Float(seen),
                                          learningRate: lr, epochElapsed: el, totalElapsed: now() - start,
                                          samplesPerSecond: Double(seen) / max(el, 1e-9)))
            }
            let secs = now() - t0
            let testAcc = try test.map { t -> Float in Float(try Evaluation.evaluate(model, on: t).accuracy) }
            let s = EpochSummary(epoch: epoch, trainLoss: Float(lossSum / Double(max(seen, 1))),
                                 trainAccuracy: Float(correct) / Float(max(seen, 1)), testAccuracy: testAcc, seconds: secs)
            summaries.append(s)
            try onEpoch(s)
        }
        return summaries
    }
}

/// Cheap image augmentation.
public enum Augment {
    /// Shifts each [H, W, C] image by a random offset in [−maxShift, maxShift]² (zero fill).
    public static func shift(_ x: Tensor, maxShift: Int, rng: inout SeededRandom) -> Tensor {
        guard x.shape.count == 4 else { return x }
        let n = x.shape[0], h = x.shape[1], w = x.shape[2], c = x.shape[3]
        var out = Tensor(zeros: x.shape)
        for i in 0..<n {
            let dy = rng.int(below: 2 * maxShift + 1) - maxShift
            let dx = rng.int(below: 2 * maxShift + 1) - maxShift
            for y in 0..<h {
                let sy = y - dy
                if sy < 0 || sy >= h { continue }
                for xx in 0..<w {
                    let sx = xx - dx
                    if sx < 0 || sx >= w { continue }
                    let d = ((i * h + y) * w + xx) * c, s = ((i * h + sy) * w + sx) * c
                    for k in 0..<c { out.data[d + k] = x.data[s + k] }
                }
            }
        }
        return out
    }
}

/// Accuracy, per-class accuracy and confusion matrix.
public struct EvaluationResult: Sendable, Codable {
    public var count: Int
    public var correct: Int
    public var accuracy: Double
    public var perClassAccuracy: [Double]
    /// confusion[true][predicted]
    public var confusion: [[Int]]
    public var predictions: [Int]
}

public enum Evaluation {
    public static func evaluate(_ model: Model, on data: Dataset, batchSize: Int = 256) throws -> EvaluationResult {
        let logits = try model.logits(data.tensor, batchSize: batchSize)
        return score(predictions: logits.argmaxRows(), labels: data.labels, classes: max(data.classes, model.architecture.classes))
    }

    public static func score(predictions: [Int], labels: [Int], classes: Int) -> EvaluationResult {
        var conf = [[Int]](repeating: [Int](repeating: 0, count: classes), count: classes)
        var correct = 0
        for (p, l) in zip(predictions, labels) {
            if p < classes && l < classes { conf[l][p] += 1 }
            if p == l { correct += 1 }
        }
        let per = (0..<classes).map { c -> Double in
            let tot = conf[c].reduce(0, +)
            return tot == 0 ? 0 : Double(conf[c][c]) / Double(tot)
        }
        return EvaluationResult(count: labels.count, correct: correct,
                                accuracy: labels.isEmpty ? 0 : Double(correct) / Double(labels.count),
                                perClassAccuracy: per, confusion: conf, predictions: predictions)
    }
}
