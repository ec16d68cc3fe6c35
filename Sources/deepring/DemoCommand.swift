import ArgumentParser
import DeepRing
import DeepRingEngine
import Foundation

struct Demo: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "The whole story on the embedded default data: train the paper's MLP, evaluate, save, seal it into a ring, tamper, detect, restore.",
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
            let r = try trainAndSave(kind: .mlp, splits: splits, config: cfg, widthDivisor: 1, out: path)
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
            try? FileManager.default.removeItem(atPath: ringDir)
            let ring = try SealedRing.seal(loaded, into: ringDir)
            print("5. Sealed into \(ringDir): an ouroboros (identity layer, the owner's) + \(ring.manifest.blockCount) blocks under random ids; the hash chain HASH_j = SHA256(HASH_j−1 ‖ params_j ‖ params_j+1) closes the ring.")
            print("   Authenticity check: \(ring.checkAuthenticity().authentic ? "authentic" : "NOT authentic (bug)").")
            let rt = try RingRuntime(directory: ringDir)
            let probe = splits.test.prefix(1000)
            let q = try rt.query(probe.tensor)
            let qPreds = q.logits.argmaxRows()
            let plainPreds = try loaded.logits(probe.tensor).argmaxRows()
            let qAcc = Double(zip(qPreds, probe.labels).filter { $0 == $1 }.count) / Double(probe.count)
            print(String(format: "   Query: %d test images sealed to the ouroboros, processed block by block through the ledger (S, K, X, H per block), delivered sealed to the querent: accuracy %.2f%%, %@ the plain model, %d alarms, %.2f s.",
                         probe.count, qAcc * 100, (qPreds == plainPreds ? "identical to" : "DIFFERENT from") as NSString, q.alarms, q.seconds))
            let blocks = try FileManager.default.contentsOfDirectory(atPath: ringDir + "/blocks").sorted()
            var rng = SeededRandom(seed: seed)
            let victim = blocks[rng.int(below: blocks.count)]
            let victimPath = ringDir + "/blocks/\(victim)/params.safetensors"
            var bytes = [UInt8](try Data(contentsOf: URL(fileURLWithPath: victimPath)))
            let at = bytes.count - 1 - rng.int(below: bytes.count / 2)
            bytes[at] ^= 0x40
            try Data(bytes).write(to: URL(fileURLWithPath: victimPath))
            print("6. Attacker flips one bit (byte \(at)) of block \(victim)'s parameters.")
            let report = rt.ring.checkAuthenticity()
            print("   Authenticity check: \(report.authentic ? "authentic (bug: missed)" : "TAMPERED — first differing hash at block \(report.firstTampered!)").")
            let restored = try rt.ring.restore()
            print("7. Tracking restores \(restored.joined(separator: ", ")) from the owner's checkpoint: \(rt.ring.checkAuthenticity().authentic ? "authentic again" : "still tampered (bug)").")
            let position2 = 1 + rng.int(below: rt.ring.placement.count)
            let victim2 = rt.ring.placement[position2 - 1]
            rt.setPerturbation(position: position2) { t in var u = t; for i in stride(from: 0, to: u.count, by: 7) { u.data[i] += 0.3 }; return u }
            print("8. A compromised block (\(victim2)) perturbs its input before computing.")
            do {
                _ = try rt.query(probe.tensor)
                print("   The query was answered (bug: the perturbation was not detected).")
            } catch {
                print("   Validation (H_i−1 ≠ SHA256(output_i)) raised alarms, retried, and refused: \(error)")
            }
            rt.setPerturbation(position: position2, nil)
            print(String(format: "Done in %.1f s. Ledger: %d entries; `deepring ledger audit --ring %@` re-verifies them.", now() - t0,
                         try rt.ledger.allEntries().count, ringDir as NSString))
            _ = r
        } catch let e as ExitCode { throw e } catch { throw fail(error) }
    }
}
