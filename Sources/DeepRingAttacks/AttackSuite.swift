import DeepRingEngine
import DeepRingData
import DeepRingProtocol
import Foundation

/// One row of an experiment table: an attack, the plain network's accuracy under it and DeepRing's.
public struct AttackRow: Codable, Sendable {
    /// The paper's "Type" column: Original, Parameter tampering, Input perturbation, Bit flips.
    public var type: String
    public var attack: String
    public var setting: String
    public var trials: Int
    /// Mean over trials, on the whole test set.
    public var plainAccuracy: Double
    /// Accuracy over the answers DeepRing delivered (nil if it delivered none).
    public var deepRingAccuracy: Double?
    /// Attacked trials in which DeepRing detected the attack.
    public var detected: Int
    public var detectedBy: String
    public var delivered: Int, refused: Int
    public var alarms: Int, restores: Int, evictions: Int
    public var trackingMs: Double
    public var cleanQueries: Int, falseAlarms: Int
}

/// A point of the σ sweep chart.
public struct SweepPoint: Codable, Sendable {
    public var attack: String
    public var sigma: Double
    public var plain: Double
    public var deepRing: Double?
}

public struct SuiteResult: Codable, Sendable {
    public var model: String
    public var dataset: String
    public var testImages: Int
    /// Images per ring query (the configured batch, lowered to what the ring's ledger entries carry).
    public var ringBatch: Int
    public var originalAccuracy: Double
    public var importance: ParameterTampering.Importance
    public var tamperMu: Double, tamperSigma: Double
    public var perturbPosition: Int, perturbSigma: Double, gradientSignEpsilon: Double
    public var rows: [AttackRow]
    public var sweep: [SweepPoint]
    public var seconds: Double
}

/// Runs every attack against the plain network and against DeepRing on the same test set.
public final class AttackSuite {
    public struct Config: Sendable {
        public var trials = 3
        /// Plain-network accuracy the calibration aims at (the paper's regime on MNIST).
        public var tamperTarget = 0.60, perturbTarget = 0.78
        public var tamperMu: Float = 0
        /// Fixed noise levels (skip the calibration).
        public var tamperSigma: Float?, perturbSigma: Float?
        /// Ring position whose input the compromised block perturbs (the paper: the 3rd layer).
        public var perturbPosition = 3
        public var randomFlips = 10
        public var searchFlips = 10
        public var sweepMultipliers: [Float] = [0, 0.25, 0.5, 0.75, 1, 1.5, 2, 3]
        public var calibrationSamples = 2000
        public var attackBatch = 256
        public var importance = ParameterTampering.Config()
        public var seed: UInt64 = 1
        public var ringBatch = 1000
        public init() {}
    }

    let model: Model
    let splits: DatasetSplits
    let ringDirectory: String
    let config: Config
    let log: (String) -> Void

    public init(model: Model, splits: DatasetSplits, ringDirectory: String, config: Config = Config(),
                log: @escaping (String) -> Void = { _ in }) {
        self.model = model; self.splits = splits; self.ringDirectory = ringDirectory; self.config = config; self.log = log
    }

    // Lazily prepared state shared by the attacks.
    private var _staged: StagedNetwork?, _harness: RingHarness?, _importance: ParameterTampering.Importance?
    private var _tamperSigma: Float?, _perturbSigma: Float?
    private lazy var calib: Dataset = {
        // The attacker's own data: the end of the training split (never the test set).
        let train = splits.train, n = min(train.count, config.calibrationSamples)
        return Dataset(name: "calibration", imageShape: train.imageShape, images: Array(train.images.suffix(n * train.imageSize)),
                       labels: Array(train.labels.suffix(n)), classes: train.classes)
    }()
    var test: Dataset { splits.test }
    var labels: [Int] { splits.test.labels }

    func staged() throws -> StagedNetwork {
        if let s = _staged { return s }
        let s = try StagedNetwork(model); _staged = s; return s
    }
    var perturbAt: Int { get throws { min(max(1, config.perturbPosition), try staged().stages.count) } }
    /// The sealed ring the attacks run against (sealed on first use).
    public func ringHarness() throws -> RingHarness { try harness() }
    /// The ring position whose input the perturbation attacks change.
    public func perturbationPosition() throws -> Int { try perturbAt }

    /// The ring, resealed fresh unless it is new (bounds the ledger's disk use per table row).
    func freshRing() throws -> RingHarness {
        if let h = _harness, (try h.runtime.ledger.lastSequence()) > 1 { try h.reseal() }
        return try harness()
    }

    func harness() throws -> RingHarness {
        if let h = _harness { return h }
        log("Sealing the model into \(ringDirectory) …")
        let h = try RingHarness(model: model, directory: ringDirectory, batchSize: config.ringBatch)
        _harness = h; return h
    }
    func plainAccuracy(_ m: Model, _ d: Dataset) throws -> Double { accuracy(predictions(try m.logits(d.tensor)), d.labels) }
    func perturbedAccuracy(_ f: @escaping (Tensor) -> Tensor, _ d: Dataset) throws -> Double {
        accuracy(predictions(try staged().logits(d.tensor, perturbAt: try perturbAt, f)), d.labels)
    }

    /// Algorithm 1, steps 1–3 (once).
    public func importance() throws -> ParameterTampering.Importance {
        if let i = _importance { return i }
        log("Algorithm 1: learning one importance p per layer with the weights frozen …")
        var icfg = config.importance
        icfg.seed = config.seed
        let imp = try ParameterTampering.learnImportance(model, data: splits.train, config: icfg)
        log("  p per layer: " + imp.score.enumerated().map { String(format: "L%d %.3f", $0.offset + 1, $0.element) }.joined(separator: ", ")
            + " → most important: layer \(imp.chosenPosition)")
        _importance = imp
        return imp
    }

    /// Noise seed of trial t (the calibration averages over exactly these draws).
    func tamperSeed(_ t: Int) -> UInt64 { config.seed &+ UInt64(t) }
    func perturbSeed(_ t: Int) -> UInt64 { config.seed &+ 100 &+ UInt64(t) }

    /// σ bringing the plain network's mean accuracy over the trials' draws on the calibration images to `target`.
    func calibrate(_ what: String, target: Double, accuracy draw: (Float, Int) throws -> Double) rethrows -> Float {
        let draws = max(1, config.trials)
        let s = try Calibration.sigma(target: target) { s in
            var sum = 0.0
            for t in 0..<draws { sum += try draw(s, t) }
            return sum / Double(draws)
        }
        log(String(format: "  %@ σ = %.4g calibrated on %d training images (mean over %d noise draws) to bring the plain network to ≈%.0f%%",
                   what as NSString, s, calib.count, draws, target * 100))
        return s
    }

    func tamperSigma() throws -> Float {
        if let s = _tamperSigma ?? config.tamperSigma { _tamperSigma = s; return s }
        let L = try importance().chosenPosition, mu = config.tamperMu, calibX = calib.tensor, y = calib.labels
        let s = try calibrate("tampering", target: config.tamperTarget) { s, t in
            accuracy(predictions(try ParameterTampering.addNoise(model, position: L, mu: mu, sigma: s, seed: tamperSeed(t)).logits(calibX)), y)
        }
        _tamperSigma = s
        return s
    }

    func perturbSigma() throws -> Float {
        if let s = _perturbSigma ?? config.perturbSigma { _perturbSigma = s; return s }
        let st = try staged(), at = try perturbAt, calibX = calib.tensor, y = calib.labels
        let s = calibrate("perturbation", target: config.perturbTarget) { s, t in
            accuracy(predictions(st.logits(calibX, perturbAt: at, InputPerturbation.gaussian(sigma: s, seed: perturbSeed(t)))), y)
        }
        _perturbSigma = s
        return s
    }

    public func originalRow() throws -> AttackRow {
        let original = try plainAccuracy(model, test)
        let clean = try freshRing().pass(test) { false }
        log(String(format: "Original: plain %.2f%%, DeepRing %.2f%% (%d queries, %d alarms, %.1f s)",
                   original * 100, (clean.accuracy(labels) ?? 0) * 100, clean.queries, clean.alarms, clean.seconds))
        return row(type: "Original", attack: "none", setting: "", trials: 1, plain: [original], passes: [clean], detected: 0, by: "", labels: labels)
    }

    /// A parameter attack: `make(t)` gives the attacked model of trial t, written into the blocks' files.
    func parameterRow(type: String, attack: String, setting: String, trials: Int, make: (Int) throws -> Model) throws -> AttackRow {
        let h = try freshRing(), rt = h.runtime
        var plains: [Double] = [], passes: [RingHarness.Pass] = [], detected = 0
        for t in 0..<trials {
            let attacked = try make(t)
            plains.append(try plainAccuracy(attacked, test))
            let r0 = rt.restores.count
            try h.tamper(with: attacked)
            let p = try h.pass(test) { rt.restores.count == r0 }
            if p.restores > 0 { detected += 1 }
            passes.append(p)
            log(String(format: "  %@ trial %d: plain %.2f%%, DeepRing %.2f%% (%@, restore %.0f ms)", attack as NSString, t + 1, plains.last! * 100,
                       (p.accuracy(labels) ?? 0) * 100, (p.restores > 0 ? "detected" : "MISSED") as NSString, p.trackingSeconds * 1e3))
        }
        return row(type: type, attack: attack, setting: setting, trials: trials, plain: plains, passes: passes,
                   detected: detected, by: "authenticity check → tracking → restore", labels: labels)
    }

    /// An input attack: `make(t)` gives the perturbation the compromised block applies in trial t.
    func perturbationRow(attack: String, setting: String, trials: Int, make: (Int) throws -> (Tensor) -> Tensor) throws -> AttackRow {
        let h = try freshRing(), rt = h.runtime, at = try perturbAt
        var plains: [Double] = [], passes: [RingHarness.Pass] = [], detected = 0
        for t in 0..<trials {
            plains.append(try perturbedAccuracy(try make(t), test))
            let e0 = rt.evictions.count
            try rt.setPerturbation(position: at, try make(t))
            let p = try h.pass(test) { rt.evictions.count == e0 }
            try rt.setPerturbation(position: at, nil)
            if p.evictions > 0 || p.alarms > 0 { detected += 1 }
            passes.append(p)
            log(String(format: "  %@ trial %d: plain %.2f%%, DeepRing %.2f%% (%@, %d alarms, evicted %d)", attack as NSString, t + 1,
                       plains.last! * 100, (p.accuracy(labels) ?? 0) * 100, (p.alarms > 0 ? "detected" : "MISSED") as NSString, p.alarms, p.evictions))
        }
        return row(type: "Input perturbation", attack: attack, setting: setting, trials: trials, plain: plains, passes: passes,
                   detected: detected, by: "validation (Eq. 13) → alarm → evict and retry", labels: labels)
    }

    public func tamperRow() throws -> AttackRow {
        let L = try importance().chosenPosition, mu = config.tamperMu, sigma = try tamperSigma()
        log(String(format: "Parameter tampering: N(%.3g, %.4g) added to layer %d's weights", mu, sigma, L))
        return try parameterRow(type: "Parameter tampering", attack: "Algorithm 1 (layer \(L))",
                                setting: String(format: "N(%.3g, %.4g) on layer %d", mu, sigma, L), trials: config.trials) { t in
            try ParameterTampering.addNoise(model, position: L, mu: mu, sigma: sigma, seed: tamperSeed(t))
        }
    }

    public func perturbRow() throws -> AttackRow {
        let at = try perturbAt, sigma = try perturbSigma()
        log(String(format: "Input perturbation: the block at position %d adds N(0, %.4g) to its input", at, sigma))
        return try perturbationRow(attack: "Gaussian noise at layer \(at)'s input", setting: String(format: "N(0, %.4g)", sigma),
                                   trials: config.trials) { t in InputPerturbation.gaussian(sigma: sigma, seed: perturbSeed(t)) }
    }

    public func gradientSignRow() throws -> AttackRow {
        let at = try perturbAt, eps = try perturbSigma()
        let attacker = try StagedNetwork(model)
        log(String(format: "Gradient-sign perturbation at position %d: ε = %.4g towards the runner-up class", at, eps))
        return try perturbationRow(attack: "gradient sign at layer \(at)'s input", setting: String(format: "ε = %.4g, targeted", eps),
                                   trials: 1) { _ in InputPerturbation.gradientSign(epsilon: eps, network: attacker, position: at) }
    }

    var attackBatch: (Tensor, [Int]) { splits.train.batch(0..<min(splits.train.count, config.attackBatch)) }

    public func randomFlipRow() throws -> AttackRow {
        let k = config.randomFlips, seed = config.seed
        log("Bit flips: \(k) random flips per trial")
        return try parameterRow(type: "Bit flips", attack: "\(k) random bit flips", setting: "any bit, anywhere", trials: config.trials) { t in
            try BitFlip.apply(BitFlip.random(model, count: k, seed: seed &+ 200 &+ UInt64(t)), to: model)
        }
    }

    public func exponentFlipRow() throws -> AttackRow {
        let (ax, ay) = attackBatch
        let f = try BitFlip.worstExponentFlip(model, x: ax, labels: ay)
        log("Bit flips: the most damaging exponent-MSB flip: \(f)")
        return try parameterRow(type: "Bit flips", attack: "1 exponent-MSB flip (TBD)", setting: f.description, trials: 1) { _ in
            try BitFlip.apply([f], to: model)
        }
    }

    public func searchFlipRow() throws -> AttackRow {
        let (ax, ay) = attackBatch
        log("Bit flips: progressive bit search on \(ay.count) training images …")
        let steps = try BitFlip.progressiveSearch(model, x: ax, labels: ay, maxFlips: config.searchFlips)
        log("  attack-batch accuracy after each flip: " + steps.map { String(format: "%.1f%%", $0.accuracy * 100) }.joined(separator: ", "))
        return try parameterRow(type: "Bit flips", attack: "progressive bit search (\(steps.count) flips)",
                                setting: "sign/exponent bits except the MSB, \(ay.count) attack images", trials: 1) { _ in
            try BitFlip.apply(steps.map(\.flip), to: model)
        }
    }

    /// Accuracy against noise σ, plain vs DeepRing, for Algorithm 1 tampering and for input perturbation.
    public func sweep() throws -> [SweepPoint] {
        let h = try harness()
        let L = try importance().chosenPosition, mu = config.tamperMu, ts = try tamperSigma(), ps = try perturbSigma(), at = try perturbAt
        var out: [SweepPoint] = []
        log("σ sweep (\(config.sweepMultipliers.count) points per attack) …")
        for m in config.sweepMultipliers {
            let attacked = try ParameterTampering.addNoise(model, position: L, mu: mu, sigma: ts * m, seed: config.seed)
            let plain = try plainAccuracy(attacked, test)
            try freshRing().tamper(with: attacked)
            let p = try h.pass(test) { true }
            out.append(SweepPoint(attack: "parameter tampering (layer \(L))", sigma: Double(ts * m), plain: plain, deepRing: p.accuracy(labels)))
        }
        for m in config.sweepMultipliers {
            let s = ps * m
            let plain = try perturbedAccuracy(InputPerturbation.gaussian(sigma: s, seed: config.seed), test)
            let rt = try freshRing().runtime
            if m > 0 { try rt.setPerturbation(position: at, InputPerturbation.gaussian(sigma: s, seed: config.seed)) }
            let p = try h.pass(test) { true }
            try rt.setPerturbation(position: at, nil)
            out.append(SweepPoint(attack: "input perturbation (layer \(at))", sigma: Double(s), plain: plain, deepRing: p.accuracy(labels)))
        }
        return out
    }

    /// One attack by its `deepring attack` name.
    public func runSingle(_ kind: String) throws -> AttackRow {
        switch kind {
        case "tamper": return try tamperRow()
        case "perturb": return try perturbRow()
        case "gradient-sign": return try gradientSignRow()
        case "bitflip": return try randomFlipRow()
        case "bitflip-exponent": return try exponentFlipRow()
        case "bitflip-search": return try searchFlipRow()
        default: throw ModelError.invalidArchitecture("unknown attack \(kind)")
        }
    }

    /// Every attack, then the σ sweep.
    public func run(sweep doSweep: Bool = true) throws -> SuiteResult {
        let start = now()
        var rows = [try originalRow(), try tamperRow(), try perturbRow(), try gradientSignRow()]
        rows += [try randomFlipRow(), try exponentFlipRow(), try searchFlipRow()]
        let points = doSweep ? try sweep() : []
        let h = try harness(), rt = h.runtime
        log(String(format: "Last ring's ledger: %d entries; %@", try rt.ledger.lastSequence(), "\(try rt.ring.auditLedger())" as NSString))
        return SuiteResult(model: model.architecture.name, dataset: test.name, testImages: test.count, ringBatch: h.batchSize,
                           originalAccuracy: rows[0].plainAccuracy,
                           importance: try importance(), tamperMu: Double(config.tamperMu), tamperSigma: Double(try tamperSigma()),
                           perturbPosition: try perturbAt, perturbSigma: Double(try perturbSigma()), gradientSignEpsilon: Double(try perturbSigma()),
                           rows: rows, sweep: points, seconds: now() - start)
    }

    func row(type: String, attack: String, setting: String, trials: Int, plain: [Double], passes: [RingHarness.Pass],
             detected: Int, by: String, labels: [Int]) -> AttackRow {
        let delivered = passes.reduce(0) { $0 + $1.delivered }, deliveredCorrect = passes.reduce(0) { $0 + $1.correct(labels) }
        return AttackRow(type: type, attack: attack, setting: setting, trials: trials,
                         plainAccuracy: plain.reduce(0, +) / Double(max(1, plain.count)),
                         deepRingAccuracy: delivered > 0 ? Double(deliveredCorrect) / Double(delivered) : nil,
                         detected: detected, detectedBy: by,
                         delivered: delivered, refused: passes.reduce(0) { $0 + $1.refused },
                         alarms: passes.reduce(0) { $0 + $1.alarms }, restores: passes.reduce(0) { $0 + $1.restores },
                         evictions: passes.reduce(0) { $0 + $1.evictions },
                         trackingMs: passes.reduce(0) { $0 + $1.trackingSeconds } * 1e3,
                         cleanQueries: passes.reduce(0) { $0 + $1.cleanQueries }, falseAlarms: passes.reduce(0) { $0 + $1.falseAlarms })
    }
}
