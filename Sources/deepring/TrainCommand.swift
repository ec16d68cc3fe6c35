import ArgumentParser
import DeepRingEngine
import DeepRingData
import DeepRingTraining
import Foundation

enum ModelKind: String, ExpressibleByArgument, CaseIterable {
    case mlp, vgg19
}

/// Fits a data set to a model's expected input (VGG-19 works on 32×32: smaller images are zero-padded).
func prepare(_ d: Dataset, for arch: Architecture) -> Dataset {
    arch.name == "vgg19" ? padded32(d) : d
}

func prepare(_ s: DatasetSplits, for kind: ModelKind) -> DatasetSplits {
    guard kind == .vgg19 else { return s }
    return DatasetSplits(train: padded32(s.train), test: padded32(s.test), source: s.source)
}

func padded32(_ d: Dataset) -> Dataset {
    d.imageShape.count == 3 && d.imageShape[0] < 32 ? d.padded(to: 32) : d
}

struct Train: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Train the paper's MLP or a (width-reduced) VGG-19 and save it as safetensors.",
        discussion: """
        The model file is written after every epoch through a temporary file and a rename, so Ctrl-C (or a crash) \
        leaves the last complete checkpoint intact. Example:
          deepring train --model mlp --dataset mnist --epochs 20 --out mlp.safetensors
        """)

    @Option(help: "Architecture: mlp (784→900→600→300→100→C) or vgg19 (16 conv layers, 32×32 inputs).")
    var model: ModelKind = .mlp
    @OptionGroup var dataOptions: DataOptions
    @Option(help: "Training epochs (default: 20 for mlp, 8 for vgg19).") var epochs: Int?
    @Option(help: "Batch size.") var batch: Int = 128
    @Option(help: "Base learning rate (default: 0.05 for sgd, 0.001 for adam).") var lr: Float?
    @Option(help: "Optimizer: sgd (with --momentum) or adam.") var optimizer: String = "sgd"
    @Option(help: "SGD momentum (0 = plain SGD).") var momentum: Float = 0.9
    @Option(help: "Learning-rate schedule: cosine, step or constant.") var schedule: String = "cosine"
    @Option(help: "L2 weight decay on weights.") var weightDecay: Float = 5e-4
    @Option(help: "Random image shifts of up to N pixels during training (0 = off).") var augmentShift: Int = 0
    @Option(help: "Seed for initialisation, shuffling and synthetic data.") var seed: UInt64 = 1
    @OptionGroup var threadOptions: ThreadOptions
    @Option(help: "VGG-19 only: divide every layer's width by D (1 = full width).") var widthDivisor: Int = 8
    @Option(help: "Use only the first N training images (quick runs).") var limit: Int?
    @Option(help: "Where to save the model (.safetensors).") var out: String

    func validate() throws {
        guard OptimizerKind(rawValue: optimizer) != nil else { throw ValidationError("--optimizer must be sgd or adam") }
        guard Schedule(rawValue: schedule) != nil else { throw ValidationError("--schedule must be cosine, step or constant") }
        guard momentum >= 0 && momentum < 1 else { throw ValidationError("--momentum must be in [0, 1)") }
        if let e = epochs, e < 1 || e > 10_000 { throw ValidationError("--epochs must be between 1 and 10000") }
        guard batch >= 1 && batch <= 65536 else { throw ValidationError("--batch must be between 1 and 65536") }
        guard widthDivisor >= 1 && widthDivisor <= 64 else { throw ValidationError("--width-divisor must be between 1 and 64") }
        if let l = lr, !(l > 0 && l.isFinite) { throw ValidationError("--lr must be a positive number") }
        guard weightDecay >= 0 && weightDecay.isFinite else { throw ValidationError("--weight-decay must be a non-negative number") }
        guard augmentShift >= 0 && augmentShift <= 16 else { throw ValidationError("--augment-shift must be between 0 and 16 pixels") }
        if let l = limit, l < 1 { throw ValidationError("--limit must be at least 1") }
    }

    func run() throws {
        threadOptions.apply()
        do {
            let t0 = now()
            var splits = prepare(try dataOptions.load(seed: seed), for: model)
            if let l = limit { splits.train = splits.train.prefix(l) }
            stderrPrint("data: \(dataOptions.dataset) from \(splits.source): \(splits.train.count) train, \(splits.test.count) test images \(splits.train.imageShape)")
            var cfg = TrainingConfig()
            cfg.optimizer = OptimizerKind(rawValue: optimizer)!
            cfg.schedule = Schedule(rawValue: schedule)!
            cfg.epochs = epochs ?? (model == .mlp ? 20 : 8)
            cfg.batchSize = batch
            cfg.learningRate = lr ?? (cfg.optimizer == .sgd ? 0.05 : 0.001)
            cfg.weightDecay = weightDecay
            cfg.momentum = momentum
            cfg.seed = seed
            cfg.shiftAugment = augmentShift
            let result = try trainAndSave(kind: model, splits: splits, config: cfg, widthDivisor: widthDivisor, out: out)
            print(String(format: "saved %@ — test accuracy %.2f%% after %d epochs, %.1f s (%d threads)",
                         out as NSString, result.accuracy * 100, result.epochs, now() - t0, Engine.threads))
        } catch let e as ExitCode { throw e } catch { throw fail(error) }
    }
}

/// Trains a fresh model with progress output and per-epoch atomic checkpoints. Returns final test accuracy.
/// What identifies a training run in its checkpoints (planned epochs, seed, learning rate, weight decay, training
/// images): `reproduce` reuses a cached model only for the same run, finished.
func trainingRun(_ config: TrainingConfig, trainImages: Int) -> [String: String] {
    ["deepring.planned_epochs": "\(config.epochs)", "deepring.seed": "\(config.seed)",
     "deepring.learning_rate": "\(config.learningRate)", "deepring.weight_decay": "\(config.weightDecay)",
     "deepring.train_images": "\(trainImages)"]
}

func trainAndSave(kind: ModelKind, splits: DatasetSplits, config: TrainingConfig, widthDivisor: Int,
                  out: String?, quiet: Bool = false) throws -> (model: Model, accuracy: Double, epochs: Int) {
    let arch: Architecture
    switch kind {
    case .mlp: arch = .mlp(inputShape: splits.train.imageShape, classes: splits.train.classes)
    case .vgg19: arch = .vgg19(inputShape: splits.train.imageShape, classes: splits.train.classes, widthDivisor: widthDivisor)
    }
    let model = try Model(arch, seed: config.seed)
    if !quiet {
        stderrPrint("model: \(arch.name)\(kind == .vgg19 ? " (width ÷\(widthDivisor))" : ""), \(model.parameters.count) parameters; \(config.optimizer.rawValue) lr \(config.learningRate), \(config.schedule.rawValue), batch \(config.batchSize), \(config.epochs) epochs, \(Engine.threads) threads")
    }
    let trainer = Trainer(model: model, config: config)
    let printer = ProgressPrinter()
    installInterruptHandler()
    var lastAcc = 0.0
    let summaries = try trainer.fit(splits.train, test: splits.test,
                                    progress: { if !quiet { printer.update($0) } },
                                    onEpoch: { s in
        lastAcc = Double(s.testAccuracy ?? 0)
        if !quiet { printer.endEpoch(s) }
        if let out = out {
            try ModelFile.save(model, to: out, extraMetadata: trainingRun(config, trainImages: splits.train.count).merging([
                "deepring.dataset": splits.train.name,
                "deepring.epochs": "\(s.epoch)",
                "deepring.test_accuracy": String(format: "%.6f", lastAcc),
            ], uniquingKeysWith: { a, _ in a }))
        }
    })
    if trainingInterrupted {
        stderrPrint("interrupted after \(summaries.count) complete epoch(s)" + (out.map { summaries.isEmpty ? "; nothing saved" : "; the last checkpoint is \($0)" } ?? ""))
        throw ExitCode(130)
    }
    return (model, lastAcc, summaries.count)
}

struct Eval: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Evaluate a saved model: accuracy, per-class accuracy and confusion matrix.")

    @Option(help: "Model file (.safetensors written by `deepring train`).") var model: String
    @OptionGroup var dataOptions: DataOptions
    @OptionGroup var threadOptions: ThreadOptions
    @Flag(help: "Print one JSON object (key `accuracy` is a fraction in [0, 1]).") var json = false

    func run() throws {
        threadOptions.apply()
        do {
            let (m, _) = try ModelFile.load(path: model)
            let splits = try dataOptions.load()
            let test = prepare(splits.test, for: m.architecture)
            guard test.imageSize == m.inputShape.reduce(1, *) else {
                throw ModelError.inputMismatch(expected: m.inputShape, got: test.imageShape)
            }
            let t0 = now()
            let r = try Evaluation.evaluate(m, on: test)
            let secs = now() - t0
            if json {
                struct Out: Encodable {
                    var model: String, dataset: String, count: Int, correct: Int, accuracy: Double
                    var per_class_accuracy: [Double], confusion: [[Int]], seconds: Double
                }
                let enc = JSONEncoder()
                enc.outputFormatting = [.sortedKeys]
                let o = Out(model: model, dataset: dataOptions.dataset, count: r.count, correct: r.correct, accuracy: r.accuracy,
                            per_class_accuracy: r.perClassAccuracy, confusion: r.confusion, seconds: secs)
                print(String(decoding: try enc.encode(o), as: UTF8.self))
            } else {
                print(String(format: "accuracy %.2f%% (%d/%d) on %@ test, %.2f s", r.accuracy * 100, r.correct, r.count,
                             dataOptions.dataset as NSString, secs))
                print("per class: " + r.perClassAccuracy.enumerated().map { String(format: "%d: %.1f%%", $0.offset, $0.element * 100) }.joined(separator: "  "))
                print("confusion (rows: true class, columns: predicted):")
                for (i, row) in r.confusion.enumerated() {
                    print(String(format: "%3d |", i) + row.map { String(format: "%6d", $0) }.joined())
                }
            }
        } catch let e as ExitCode { throw e } catch { throw fail(error) }
    }
}
