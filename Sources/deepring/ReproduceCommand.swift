import ArgumentParser
import DeepRingAttacks
import DeepRingEngine
import DeepRingTraining
import Foundation

struct Reproduce: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Regenerate the paper's Tables 1–3 (plus bit-flip attacks) with Markdown, CSV, SVG charts and JSON.",
        discussion: """
        Table 1: probability of guessing the order of n blocks, 1/n!, from the formula and measured. \
        Table 3: the paper's MLP; Table 2: VGG-19 with --width-divisor (default 8). For each: the original accuracy, \
        Algorithm 1 parameter tampering, input perturbation of the 3rd layer (Gaussian and gradient-sign), and bit flips \
        (random, the most damaging exponent flip, progressive bit search), each against the plain network and against \
        DeepRing (the whole test set queried through a sealed ring with the attack in effect), plus a σ sweep. \
        Noise levels are calibrated on training images so that the plain network lands in the paper's regime \
        (tampering ≈ 60%, perturbation ≈ 78%) unless given. Without --model the model is trained first (with progress) \
        and cached in the output folder.

        Example:
          deepring reproduce --table 3 --dataset mnist --out results
        """)

    @Option(help: "Which table: 1, 2, 3 or all.") var table: String = "all"
    @OptionGroup var dataOptions: DataOptions
    @Option(help: "Trained model to attack (default: train one and cache it in --out).") var model: String?
    @Option(help: "Output folder.") var out: String
    @Option(help: "Trials per random attack.") var trials: Int = 3
    @Option(help: "Training epochs when no model is given (default: 20 for the MLP, 3 for VGG-19).") var epochs: Int?
    @Option(help: "VGG-19 width divisor for Table 2.") var widthDivisor: Int = 8
    @Option(help: "Plain-network accuracy the tampering σ is calibrated to.") var tamperTarget: Double = 0.60
    @Option(help: "Plain-network accuracy the perturbation σ is calibrated to.") var perturbTarget: Double = 0.78
    @Option(help: "Random seed (attacks, training, calibration).") var seed: UInt64 = 1
    @Flag(help: "Skip the σ sweep (it queries the whole test set through the ring 16 more times: hours at full width).")
    var noSweep = false
    @Flag(help: "Print the JSON summary on stdout.") var json = false
    @OptionGroup var threadOptions: ThreadOptions

    func validate() throws {
        guard ["1", "2", "3", "all"].contains(table) else { throw ValidationError("--table must be 1, 2, 3 or all") }
        if model != nil && !["2", "3"].contains(table) {
            throw ValidationError("--model applies to one table: use it with --table 3 (an MLP) or --table 2 (a VGG-19)")
        }
        guard trials >= 1 && trials <= 100 else { throw ValidationError("--trials must be between 1 and 100") }
        guard widthDivisor >= 1 && widthDivisor <= 64 else { throw ValidationError("--width-divisor must be between 1 and 64") }
        if let e = epochs, e < 1 || e > 1000 { throw ValidationError("--epochs must be between 1 and 1000") }
        guard (0.0..<1.0).contains(tamperTarget), (0.0..<1.0).contains(perturbTarget) else {
            throw ValidationError("the calibration targets are accuracies in [0, 1)")
        }
    }

    func log(_ s: String) { stderrPrint(s) }

    func run() throws {
        threadOptions.apply()
        do {
            try FileManager.default.createDirectory(atPath: out, withIntermediateDirectories: true)
            var summary: [String: Any] = [:]
            let t0 = now()
            func timed(_ n: Int, _ body: () throws -> Any) throws {
                let t = now()
                summary["table\(n)"] = try body()
                summary["table\(n)_seconds"] = now() - t
                log(String(format: "Table %d done in %.0f s.", n, now() - t))
            }
            if table == "1" || table == "all" { try timed(1) { try table1() } }
            if table == "3" || table == "all" { try timed(3) { try attackTable(number: 3, kind: .mlp) } }
            if table == "2" || table == "all" { try timed(2) { try attackTable(number: 2, kind: .vgg19) } }
            summary["seconds"] = now() - t0
            let data = try JSONSerialization.data(withJSONObject: summary, options: [.sortedKeys, .prettyPrinted])
            try writeFileAtomically(Array(data) + [10], to: out + "/summary.json")
            log(String(format: "Done in %.0f s. Wrote %@/summary.json", now() - t0, out as NSString))
            if json { print(String(decoding: data, as: UTF8.self)) }
        } catch let e as ExitCode { throw e } catch { throw fail(error) }
    }

    func write(_ s: String, _ name: String) throws {
        try writeFileAtomically(Array(s.utf8), to: out + "/" + name)
        log("  wrote \(out)/\(name)")
    }

    func table1() throws -> Any {
        log("Table 1: guessing the order of n blocks (10⁶ random guesses per n) …")
        let rows = OrderGuessing.table(upTo: 10, trials: 1_000_000, seed: seed)
        try write(Report.table1Markdown(rows), "table1.md")
        try write(Report.table1CSV(rows), "table1.csv")
        // −log10 of the probability, so that 1/10! (≈ 2.8e−7) is as visible as 1/2; n with no hit are left out.
        let svg = SVGChart.lines(title: "Table 1: chance of guessing the order of n blocks", xLabel: "n (blocks)",
                                 yLabel: "−log10 P(correct guess)",
                                 series: [("1/n! (formula)", rows.map { (Double($0.n), -Foundation.log10($0.formula)) }, false),
                                          ("measured (10⁶ guesses; n without a hit left out)",
                                           rows.filter { $0.hits > 0 }.map { (Double($0.n), -Foundation.log10($0.measured)) }, true)],
                                 yMax: 10)
        try write(svg, "table1.svg")
        return try JSONSerialization.jsonObject(with: JSONEncoder().encode(rows))
    }

    /// The cached model at `path` if it is this table's training run, finished: trained for all `config.epochs` by a
    /// run planned for that many (the learning rate's schedule spans the plan), with the same seed, learning rate,
    /// weight decay and number of training images. Training saves a checkpoint after every epoch under the same name,
    /// so a run killed in epoch 2 of 3 leaves a one-epoch model there; that one, a file from another run, or one that
    /// does not load, is trained again from the start (training has no resume; the seed makes the new run the same
    /// as an uninterrupted one). Returns the model as loaded: it is not read twice.
    func completeCheckpoint(_ path: String, config: TrainingConfig, trainImages: Int) -> Model? {
        guard FileManager.default.fileExists(atPath: path) else { return nil }
        let model: Model, meta: [String: String]
        do { (model, meta) = try ModelFile.load(path: path) } catch {
            log("  \(path) does not load (\(error)): training again")
            return nil
        }
        var wanted = trainingRun(config, trainImages: trainImages)
        wanted["deepring.epochs"] = "\(config.epochs)"
        let differing = wanted.keys.sorted().filter { meta[$0] != wanted[$0] }
        if differing.isEmpty { return model }
        log("  \(path) is not this table's finished training run (\(differing.map { "\($0.dropFirst(9)) \(meta[$0] ?? "missing") ≠ \(wanted[$0] ?? "")" }.joined(separator: ", "))): training again")
        return nil
    }

    /// Trains (or loads) the model for a table and runs every attack.
    func attackTable(number: Int, kind: ModelKind) throws -> Any {
        var splits = try dataOptions.load(seed: seed)
        splits = prepare(splits, for: kind)
        log("Table \(number): \(kind == .mlp ? "MLP" : "VGG-19 ÷\(widthDivisor)") on \(dataOptions.dataset) (\(splits.source)): \(splits.train.count) train, \(splits.test.count) test images")
        let m: Model
        let tag = kind == .mlp ? "mlp" : "vgg19-div\(widthDivisor)"
        let cached = out + "/table\(number)-\(tag)-\(dataOptions.dataset).safetensors"
        var training = TrainingConfig()
        training.epochs = epochs ?? (kind == .mlp ? 20 : 3)
        training.learningRate = 0.05
        training.weightDecay = 5e-4
        training.seed = seed
        let found: (model: Model, path: String)?
        if let path = model {
            found = (try ModelFile.load(path: path).0, path)
        } else {
            found = completeCheckpoint(cached, config: training, trainImages: splits.train.count).map { ($0, cached) }
        }
        if let (loaded, path) = found {
            m = loaded
            log("  model: \(path)")
            guard m.architecture.name == kind.rawValue else {
                throw ModelError.invalidArchitecture("\(path) is a \(m.architecture.name); Table \(number) needs a \(kind.rawValue)")
            }
        } else {
            log("  training \(kind.rawValue) for \(training.epochs) epochs (cached as \(cached)) …")
            m = try trainAndSave(kind: kind, splits: splits, config: training, widthDivisor: widthDivisor, out: cached).model
        }
        guard splits.test.imageSize == m.inputShape.reduce(1, *) else {
            throw ModelError.inputMismatch(expected: m.inputShape, got: splits.test.imageShape)
        }
        var cfg = AttackSuite.Config()
        cfg.trials = trials
        cfg.seed = seed
        cfg.tamperTarget = tamperTarget
        cfg.perturbTarget = perturbTarget
        let ringDir = out + "/table\(number)-ring"
        let r = try AttackSuite(model: m, splits: splits, ringDirectory: ringDir, config: cfg, log: log).run(sweep: !noSweep)
        let name = kind == .mlp ? "MLP (784-900-600-300-100-\(m.architecture.classes))" : "VGG-19 (width ÷\(widthDivisor), BatchNorm)"
        let caption = String(format: """
            %@ on %@, %d test images, every query through a sealed DeepRing (batches of %d). Parameter tampering: Algorithm 1 \
            picks layer %d; noise N(μ = %.3g, σ = %.4g) added to its weights. Input perturbation: the block at position %d adds \
            N(0, σ = %.4g) to its input; gradient-sign: ε = %.4g towards the runner-up class. σ values calibrated on 2,000 \
            training images (mean over the trials' noise draws) to plain accuracies ≈ %.0f%% and ≈ %.0f%%. Seed %llu, %d trials per random attack. DeepRing accuracy counts \
            delivered answers; refusals are listed separately.
            """, name, dataOptions.dataset, r.testImages, r.ringBatch, r.importance.chosenPosition, r.tamperMu, r.tamperSigma,
            r.perturbPosition, r.perturbSigma, r.gradientSignEpsilon, tamperTarget * 100, perturbTarget * 100, seed, trials)
        try write(Report.markdown(r, title: "Table \(number): \(name) on \(dataOptions.dataset) under attack", caption: caption),
                  "table\(number).md")
        try write(Report.csv(r), "table\(number).csv")
        let cats = r.rows.map { $0.type == "Original" ? "Original" : $0.attack }
        try write(SVGChart.bars(title: "Table \(number): \(name), \(dataOptions.dataset) — accuracy under attack", categories: cats,
                                series: [("plain network", r.rows.map { $0.plainAccuracy * 100 }),
                                         ("DeepRing (delivered answers)", r.rows.map { $0.deepRingAccuracy.map { $0 * 100 } })],
                                yLabel: "test accuracy (%)"), "table\(number).svg")
        for attack in Array(Set(r.sweep.map(\.attack))).sorted() {
            let pts = r.sweep.filter { $0.attack == attack }
            let file = "table\(number)-sweep-\(attack.hasPrefix("parameter") ? "tampering" : "perturbation").svg"
            try write(SVGChart.lines(title: "Table \(number): accuracy vs noise σ, \(attack)", xLabel: "noise σ", yLabel: "test accuracy (%)",
                                     series: [("plain network", pts.map { ($0.sigma, $0.plain * 100) }, false),
                                              ("DeepRing", pts.compactMap { p in p.deepRing.map { (p.sigma, $0 * 100) } }, true)]),
                      file)
        }
        let enc = JSONEncoder()
        enc.outputFormatting = [.sortedKeys, .prettyPrinted]
        let data = try enc.encode(r)
        try write(String(decoding: data, as: UTF8.self) + "\n", "table\(number).json")
        return try JSONSerialization.jsonObject(with: data)
    }
}
