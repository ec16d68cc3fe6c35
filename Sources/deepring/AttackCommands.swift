import ArgumentParser
import DeepRingNode
import DeepRingAttacks
import DeepRingEngine
import DeepRingData
import DeepRingProtocol
import Foundation

enum AttackKind: String, ExpressibleByArgument, CaseIterable {
    case tamper, perturb, gradientSign = "gradient-sign", bitflip, bitflipExponent = "bitflip-exponent", bitflipSearch = "bitflip-search"
}

struct Attack: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run one attack against the plain network and against DeepRing, side by side.",
        discussion: """
        Attacks: tamper (Algorithm 1: learn a sigmoid importance p per layer with the weights frozen, add N(μ, σ) to \
        the most important layer), perturb (a compromised block adds N(0, σ) to its input; --position 3 = the paper's \
        3rd layer), gradient-sign (the block steps ε against the gradient towards the runner-up class), bitflip (k \
        random bit flips), bitflip-exponent (the single most damaging exponent-MSB flip), bitflip-search (progressive \
        bit search, Rakin et al.). The model is sealed into --ring (default: a temporary folder); the whole test set is \
        queried through the ring with the attack in effect. Deterministic by --seed.

        Example: deepring attack tamper --model mlp.safetensors --dataset mnist --sigma 0.1
        """)

    @Argument(help: "tamper | perturb | gradient-sign | bitflip | bitflip-exponent | bitflip-search") var kind: AttackKind
    @Option(help: "Trained model (.safetensors).") var model: String
    @OptionGroup var dataOptions: DataOptions
    @Option(help: "Noise σ (tamper, perturb) or ε (gradient-sign); default: calibrated to the paper's regime.") var sigma: Float?
    @Option(help: "Noise mean μ (tamper).") var mu: Float = 0
    @Option(help: "Ring position whose input is perturbed (perturb, gradient-sign).") var position: Int = 3
    @Option(help: "Bit flips (bitflip: how many; bitflip-search: at most).") var flips: Int = 10
    @Option(help: "Ring directory to seal into (must not exist or be empty; --force replaces a ring folder); default: a temporary folder, removed at exit.") var ring: String?
    @Flag(help: "Replace --ring if it is an existing ring folder.") var force = false
    @Option(help: "Random seed.") var seed: UInt64 = 1
    @Option(help: "Use only the first N test images.") var count: Int?
    @Flag(help: "Print one JSON object.") var json = false
    @OptionGroup var threadOptions: ThreadOptions

    func validate() throws {
        if let s = sigma, !(s >= 0 && s.isFinite) { throw ValidationError("--sigma must be a non-negative number") }
        guard mu.isFinite else { throw ValidationError("--mu must be a finite number") }
        guard flips >= 1 && flips <= 10_000 else { throw ValidationError("--flips must be between 1 and 10000") }
        guard position >= 1 else { throw ValidationError("--position must be at least 1") }
        if let c = count { guard c >= 1 else { throw ValidationError("--count must be at least 1") } }
        if force && ring == nil { throw ValidationError("--force applies to --ring") }
    }

    func run() throws {
        threadOptions.apply()
        do {
            let (m, _) = try ModelFile.load(path: model)
            var splits = try dataOptions.load(seed: seed)
            splits = DatasetSplits(train: prepare(splits.train, for: m.architecture), test: prepare(splits.test, for: m.architecture), source: splits.source)
            if let c = count { splits.test = splits.test.prefix(c) }
            guard splits.test.imageSize == m.inputShape.reduce(1, *) else {
                throw ModelError.inputMismatch(expected: m.inputShape, got: splits.test.imageShape)
            }
            let layers = RingLayer.split(m).count
            if [.perturb, .gradientSign].contains(kind), position > layers {
                throw ValidationError("--position \(position): the ring of this model has \(layers) blocks (positions 1–\(layers))")
            }
            if let r = ring { try RingTarget.check(r, force: force, protected: [model]) }
            let dir = try ring ?? TemporaryPaths.makeDirectory(purpose: "attack")
            defer { if ring == nil { TemporaryPaths.unregister(dir); removeRingFolder(dir) } }
            var cfg = AttackSuite.Config()
            cfg.seed = seed
            cfg.trials = 1
            cfg.tamperMu = mu
            cfg.perturbPosition = position
            cfg.randomFlips = flips
            cfg.searchFlips = flips
            if kind == .tamper { cfg.tamperSigma = sigma } else { cfg.perturbSigma = sigma }
            let suite = AttackSuite(model: m, splits: splits, ringDirectory: dir, config: cfg, log: { if !json { stderrPrint($0) } })
            let row = try suite.runSingle(kind.rawValue)
            if json {
                let enc = JSONEncoder()
                enc.outputFormatting = [.sortedKeys]
                print(String(decoding: try enc.encode(row), as: UTF8.self))
            } else {
                print("\(row.type): \(row.attack) — \(row.setting)")
                let clean = row.cleanQueries == 0 ? "no clean queries (so no false-alarm rate)"
                    : "\(plural(row.falseAlarms, "false alarm")) over \(plural(row.cleanQueries, "clean query", "clean queries"))"
                print(String(format: "  plain network: %.2f%%   DeepRing: %@   detected %d/%d by %@; %d delivered, %d refused, %@",
                             row.plainAccuracy * 100, (row.deepRingAccuracy.map { String(format: "%.2f%%", $0 * 100) } ?? "—") as NSString,
                             row.detected, row.trials, row.detectedBy as NSString, row.delivered, row.refused, clean as NSString))
            }
        } catch let e as ExitCode { throw e } catch { throw fail(error) }
    }
}

/// Removes a ring folder this process made (its background work may still be deleting a retired placement).
func removeRingFolder(_ dir: String) {
    for _ in 0..<5 where FileManager.default.fileExists(atPath: dir) { try? FileManager.default.removeItem(atPath: dir) }
}
