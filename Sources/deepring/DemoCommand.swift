import ArgumentParser
import DeepRingAttacks
import DeepRingEngine
import DeepRingData
import DeepRingTraining
import Foundation

struct Demo: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "The whole story on the embedded default data: train the paper's MLP, seal it into a ring, query it, attack it (Algorithm 1, input perturbation, bit flip), detect, restore.",
        discussion: "Uses MNIST when it is found (see `deepring train --help` for where), the synthetic digits otherwise.")

    @Option(help: "Output folder.") var out: String = "deepring-demo"
    @Flag(help: "Always use the synthetic digits, even when MNIST is present.") var synthetic = false
    @Option(help: "Seed.") var seed: UInt64 = 1
    @OptionGroup var threadOptions: ThreadOptions

    func run() throws {
        threadOptions.apply()
        do {
            let t0 = now()
            var splits: DatasetSplits
            var epochs = 4
            if !synthetic, let m = try? DatasetLoader.load(name: "mnist") {
                splits = m; epochs = 3
                print("1. Data: MNIST found at \(m.source) (\(m.train.count) training, \(m.test.count) test images).")
            } else {
                splits = try DatasetLoader.load(name: "synthetic", seed: seed)
                print("1. Data: no MNIST found, using the embedded synthetic digits (\(splits.train.count) training, \(splits.test.count) test images, seed \(seed)).")
            }
            var cfg = TrainingConfig()
            cfg.epochs = epochs; cfg.learningRate = 0.05; cfg.weightDecay = 5e-4; cfg.seed = seed
            print("2. Training the paper's MLP (\(splits.train.imageShape.reduce(1, *))→900→600→300→100→\(splits.train.classes), ReLU, softmax) for \(epochs) epochs on \(Engine.threads) threads…")
            let path = (out as NSString).appendingPathComponent("mlp.safetensors")
            _ = try trainAndSave(kind: .mlp, splits: splits, config: cfg, widthDivisor: 1, out: path)
            let (loaded, _) = try ModelFile.load(path: path)
            let e = try Evaluation.evaluate(loaded, on: splits.test)
            print(String(format: "3. Saved %@ and loaded it back: test accuracy %.2f%% (%d/%d).", path as NSString,
                         e.accuracy * 100, e.correct, e.count))
            let a = try loaded.logits(splits.test.prefix(64).tensor, batchSize: 64)
            Engine.threads = 1
            let b = try loaded.logits(splits.test.prefix(64).tensor, batchSize: 7)
            threadOptions.apply()
            print("4. Determinism: logits with \(ProcessInfo.processInfo.activeProcessorCount) threads/batch 64 vs 1 thread/batch 7 are \(a == b ? "bit-identical" : "DIFFERENT (bug)").")
            let ringDir = (out as NSString).appendingPathComponent("ring")
            // The attacks are measured on (up to) 2,000 test images to keep the demo under a minute.
            var demoSplits = splits
            demoSplits.test = splits.test.prefix(2000)
            var acfg = AttackSuite.Config()
            acfg.trials = 1
            acfg.seed = seed
            acfg.importance.maxSamples = 20_000
            let suite = AttackSuite(model: loaded, splits: demoSplits, ringDirectory: ringDir, config: acfg, log: { _ in })
            let harness = try suite.ringHarness()
            let rt = harness.runtime
            print("5. Sealed into \(ringDir): an ouroboros (identity layer, the owner's) + \(rt.ring.manifest.blockCount) blocks under random ids; the hash chain HASH_j = SHA256(HASH_j−1 ‖ params_j ‖ params_j+1) closes the ring.")
            print("   Authenticity check: \(rt.ring.checkAuthenticity().authentic ? "authentic" : "NOT authentic (bug)").")
            let original = try suite.originalRow()
            print(String(format: "6. Query: %d test images, sealed to the ouroboros, processed block by block through the ledger (S, K, X, H per block), delivered sealed to the querent: accuracy %.2f%%, %@ the plain model, %d alarms. After each query the blocks get new ids and keys (reshuffle).",
                         original.delivered, (original.deepRingAccuracy ?? 0) * 100,
                         (original.deepRingAccuracy == original.plainAccuracy ? "identical to" : "DIFFERENT from") as NSString, original.alarms))
            // A raw bit flip in a block's file, caught by `verify`-style checking.
            let blocks = rt.ring.placement
            var rng = SeededRandom(seed: seed)
            let victim = blocks[rng.int(below: blocks.count)]
            let victimPath = ringDir + "/blocks/\(victim)/params.safetensors"
            var bytes = [UInt8](try Data(contentsOf: URL(fileURLWithPath: victimPath)))
            let at = bytes.count - 1 - rng.int(below: bytes.count / 2)
            bytes[at] ^= 0x40
            try Data(bytes).write(to: URL(fileURLWithPath: victimPath))
            let report = rt.ring.checkAuthenticity()
            print("7. An attacker flips one bit (byte \(at)) of block \(victim)'s file. Authenticity check: \(report.authentic ? "authentic (bug: missed)" : "TAMPERED — first differing hash at block \(report.firstTampered!) (ring position \(report.position!))").")
            let before = rt.restores.count
            try rt.ensureAuthentic()
            let restored = rt.restores[before...]
            print("   Tracking restores \(restored.joined(separator: ", ")) from the owner's checkpoint: \(rt.ring.checkAuthenticity().authentic ? "authentic again" : "still tampered (bug)").")
            let imp = try suite.importance()
            print("8. Parameter tampering, Algorithm 1: with the weights frozen, learn an importance p per layer (W ⊙ sigmoid(p)): "
                  + imp.score.enumerated().map { String(format: "L%d %.2f", $0.offset + 1, $0.element) }.joined(separator: ", ")
                  + "; the attacker adds Gaussian noise to layer \(imp.chosenPosition).")
            let tamper = try suite.tamperRow()
            print(String(format: "   Plain network: %.2f%%. DeepRing: the authenticity check before the next query fails, tracking restores the block (%.0f ms), answers: %.2f%%.",
                         tamper.plainAccuracy * 100, tamper.trackingMs, (tamper.deepRingAccuracy ?? 0) * 100))
            let perturb = try suite.perturbRow()
            print(String(format: "9. Input perturbation: the block at ring position %d adds %@ to its input. Plain network: %.2f%%. DeepRing: its successor's hash check (Eq. 13) fails → %d alarms naming it → retries fail → the two suspects are evicted and re-provisioned → %.2f%%.",
                         try suite.perturbationPosition(), perturb.setting as NSString, perturb.plainAccuracy * 100, perturb.alarms, (perturb.deepRingAccuracy ?? 0) * 100))
            let flip = try suite.exponentFlipRow()
            print(String(format: "10. Bit flip (Terminal Brain Damage): %@. Plain network: %.2f%%. DeepRing: detected, restored, %.2f%%.",
                         flip.setting as NSString, flip.plainAccuracy * 100, (flip.deepRingAccuracy ?? 0) * 100))
            print("")
            print("   attack                                   plain network   DeepRing   detected")
            for r in [original, tamper, perturb, flip] {
                let name = (r.type == "Original" ? "none" : r.attack).padding(toLength: 40, withPad: " ", startingAt: 0)
                print(String(format: "   %@ %12.2f%% %9.2f%%   %@", name as NSString, r.plainAccuracy * 100, (r.deepRingAccuracy ?? 0) * 100,
                             (r.type == "Original" ? "—" : "\(r.detected)/\(r.trials)") as NSString))
            }
            let last = try suite.ringHarness().runtime
            print(String(format: "\nDone in %.1f s. The last ring's ledger: %d entries (%@). `deepring reproduce --table 3 --dataset mnist --out results` regenerates the paper's tables.",
                         now() - t0, try last.ledger.lastSequence(), "\(try last.ring.auditLedger())" as NSString))
        } catch let e as ExitCode { throw e } catch { throw fail(error) }
    }
}
