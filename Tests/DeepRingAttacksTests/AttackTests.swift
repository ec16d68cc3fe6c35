import DeepRingAttacks
import DeepRingEngine
import DeepRingData
import DeepRingTraining
import DeepRingProtocol
import Foundation
import Testing
#if canImport(FoundationXML)
import FoundationXML
#endif

/// A small MLP trained on synthetic digits (a few seconds), shared by the tests.
final class Trained: @unchecked Sendable {
    static let shared = try! Trained()
    let model: Model
    let splits: DatasetSplits
    let accuracy: Double

    init() throws {
        var s = try DatasetLoader.load(name: "synthetic", seed: 7, syntheticCounts: (3000, 600))
        s.test = s.test.prefix(400)
        splits = s
        let m = try Model(.mlp(inputShape: s.train.imageShape, classes: s.train.classes, hidden: [64, 48, 32, 16]), seed: 2)
        var cfg = TrainingConfig()
        cfg.epochs = 4
        cfg.learningRate = 0.05
        _ = try Trainer(model: m, config: cfg).fit(s.train)
        model = m
        accuracy = DeepRingAttacks.accuracy(predictions(try m.logits(s.test.tensor)), s.test.labels)
    }

    func accuracy(of m: Model) throws -> Double { DeepRingAttacks.accuracy(predictions(try m.logits(splits.test.tensor)), splits.test.labels) }
}

func ringDir() -> String { NSTemporaryDirectory() + "deepring-attack-test-\(UUID().uuidString)" }

@Suite(.serialized) struct AttackTests {
    let t = Trained.shared

    @Test func theSmallModelLearned() { #expect(t.accuracy > 0.9, "accuracy \(t.accuracy)") }

    @Test func algorithm1MovesThePsAndPicksTheLargest() throws {
        var cfg = ParameterTampering.Config()
        cfg.maxSamples = 1000
        let imp = try ParameterTampering.learnImportance(t.model, data: t.splits.train, config: cfg)
        #expect(imp.p.count == 5 && imp.p.allSatisfy { $0.count == 1 })
        #expect(imp.p.allSatisfy { $0[0] != cfg.initialP }, "the p's did not move")
        #expect(imp.chosenPosition == imp.score.indices.max { imp.score[$0] < imp.score[$1] }! + 1)
        #expect(imp.lossAfter < imp.lossBefore)
        cfg.granularity = .unit
        let units = try ParameterTampering.learnImportance(t.model, data: t.splits.train, config: cfg)
        #expect(units.p.map(\.count) == [64, 48, 32, 16, 10])
        // Step 4 touches only the chosen layer's weights, deterministically by seed.
        let a = try ParameterTampering.addNoise(t.model, position: 2, mu: 0, sigma: 0.5, seed: 9)
        let b = try ParameterTampering.addNoise(t.model, position: 2, mu: 0, sigma: 0.5, seed: 9)
        let c = try ParameterTampering.addNoise(t.model, position: 2, mu: 0, sigma: 0.5, seed: 10)
        #expect(a.parameters.values == b.parameters.values && a.parameters.values != c.parameters.values)
        let w2 = t.model.weightViews[1].range
        for i in stride(from: 0, to: t.model.parameters.count, by: 97) where !w2.contains(i) {
            #expect(a.parameters.values[i] == t.model.parameters.values[i])
        }
        #expect(try t.accuracy(of: a) < t.accuracy - 0.05)
    }

    @Test func calibrationFindsTheNoiseForATargetAccuracy() throws {
        let x = t.splits.test.tensor
        let sigma = Calibration.sigma(target: 0.6) { s in
            accuracy(predictions(try! ParameterTampering.addNoise(t.model, position: 1, mu: 0, sigma: s, seed: 1).logits(x)), t.splits.test.labels)
        }
        let acc = try t.accuracy(of: try ParameterTampering.addNoise(t.model, position: 1, mu: 0, sigma: sigma, seed: 1))
        #expect(abs(acc - 0.6) < 0.08, "σ \(sigma) gives \(acc)")
    }

    @Test func gradientSignIsStrongerThanNoiseOfTheSameSize() throws {
        let staged = try StagedNetwork(t.model)
        let x = t.splits.test.tensor, y = t.splits.test.labels
        // The staged network computes exactly what the model computes.
        #expect(staged.logits(x).data == (try t.model.logits(x)).data)
        let eps: Float = 0.3
        let noisy = accuracy(predictions(staged.logits(x, perturbAt: 3, InputPerturbation.gaussian(sigma: eps, seed: 1))), y)
        let attacker = try StagedNetwork(t.model)
        let signed = accuracy(predictions(staged.logits(x, perturbAt: 3, InputPerturbation.gradientSign(epsilon: eps, network: attacker, position: 3))), y)
        #expect(signed < noisy - 0.1, "gradient sign \(signed) vs Gaussian \(noisy)")
        // Deterministic by seed.
        let f = InputPerturbation.gaussian(sigma: 1, seed: 4), g = InputPerturbation.gaussian(sigma: 1, seed: 4)
        let h = Tensor(zeros: [2, 5])
        #expect(f(h) == g(h))
    }

    @Test func bitFlipAttacksLowerAccuracy() throws {
        let (ax, ay) = t.splits.train.batch(0..<256)
        let r1 = BitFlip.random(t.model, count: 5, seed: 3), r2 = BitFlip.random(t.model, count: 5, seed: 3)
        #expect(r1 == r2 && r1.count == 5)
        let signs = BitFlip.random(t.model, count: 20, bits: .sign, seed: 3)
        #expect(signs.allSatisfy { $0.bit == 31 && $0.after == -$0.before })
        let tbd = try BitFlip.worstExponentFlip(t.model, x: ax, labels: ay, candidates: 16)
        #expect(tbd.bit == 30)
        let clean = t.model.lossAndAccuracy(ax, ay)
        #expect(try BitFlip.apply([tbd], to: t.model).lossAndAccuracy(ax, ay).loss > clean.loss * 2)
        let steps = try BitFlip.progressiveSearch(t.model, x: ax, labels: ay, maxFlips: 6)
        #expect(!steps.isEmpty && steps.allSatisfy { $0.flip.bit != 30 })
        #expect(steps.last!.accuracy < clean.accuracy - 0.2, "bit search: \(steps.map(\.accuracy))")
        #expect(zip(steps, steps.dropFirst()).allSatisfy { $0.loss <= $1.loss })
    }

    /// A ring whose widest activation lets a ledger entry carry fewer images than the harness's batch (the
    /// full-width VGG-19: 255 per query) is queried in batches it can carry, not refused.
    @Test func theHarnessQueriesInBatchesTheRingsEntriesCarry() throws {
        let dir = ringDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let arch = Architecture(name: "wide", inputShape: [32, 32, 1], classes: 3,
                                layers: [.conv(32, kernel: 1, stride: 1, padding: 0), .relu, .flatten, .dense(3)])
        let m = try Model(arch, seed: 3)
        let h = try RingHarness(model: m, directory: dir, batchSize: 1000)
        #expect(h.runtime.maxBatch < 1000 && h.batchSize == h.runtime.maxBatch)
        var r = SeededRandom(seed: 4)
        let n = h.batchSize + 7
        let data = Dataset(name: "wide", imageShape: [32, 32, 1], images: (0..<(n * 1024)).map { _ in r.uniform() },
                           labels: (0..<n).map { $0 % 3 }, classes: 3)
        let p = try h.pass(data) { false }
        #expect(p.queries == 2 && p.refusedQueries == 0 && p.alarms == 0)
        #expect(p.predictions == predictions(m.forward(data.tensor)).map { Optional($0) })
    }

    @Test func deepRingDetectsEveryAttackAndDeliversTheOriginalAnswers() throws {
        let dir = ringDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let h = try RingHarness(model: t.model, directory: dir, batchSize: 200)
        let rt = h.runtime
        let test = t.splits.test
        let cleanPreds = predictions(try t.model.logits(test.tensor))
        let clean = try h.pass(test) { false }
        #expect(clean.predictions == cleanPreds.map { Optional($0) } && clean.alarms == 0 && clean.falseAlarms == 0)
        // Parameter tampering (Algorithm 1's noise), random bit flips, the exponent flip: authenticity check → restore.
        let (ax, ay) = t.splits.train.batch(0..<128)
        let attacked = [try ParameterTampering.addNoise(t.model, position: 3, mu: 0, sigma: 0.3, seed: 1),
                        try BitFlip.apply(BitFlip.random(t.model, count: 3, seed: 5), to: t.model),
                        try BitFlip.apply([try BitFlip.worstExponentFlip(t.model, x: ax, labels: ay, candidates: 8)], to: t.model)]
        for a in attacked {
            let r0 = rt.restores.count
            #expect(!(try h.tamper(with: a)).isEmpty)
            let p = try h.pass(test) { rt.restores.count == r0 }
            #expect(p.restores > 0, "tampering not detected")
            #expect(p.predictions == cleanPreds.map { Optional($0) })
            #expect(p.falseAlarms == 0)
        }
        // Without the authenticity check the tampered block's successor still catches it at validation.
        rt.verifyEvery = Int.max
        try h.tamper(with: attacked[0])
        let v = try h.pass(test.prefix(200)) { true }
        #expect(v.alarms > 0 && v.predictions == cleanPreds.prefix(200).map { Optional($0) })
        rt.verifyEvery = 1
        _ = try h.pass(test.prefix(10)) { true }
        // Input perturbation by the block at position 3: validation → alarm → evict → the original answers.
        let e0 = rt.evictions.count
        try rt.setPerturbation(position: 3, InputPerturbation.gaussian(sigma: 0.5, seed: 2))
        let p = try h.pass(test) { rt.evictions.count == e0 }
        #expect(p.alarms > 0 && p.evictions > 0)
        #expect(rt.evictions.suffix(p.evictions).contains(3))
        #expect(p.predictions == cleanPreds.map { Optional($0) })
        #expect(p.falseAlarms == 0)
        #expect(try rt.ring.auditLedger().isClean)
    }

    @Test func withTheRefusePolicyAPersistentAttackerGetsNoAnswerOut() throws {
        let dir = ringDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let h = try RingHarness(model: t.model, directory: dir, batchSize: 200)
        h.runtime.onCompromisedBlock = .refuse
        try h.runtime.setPerturbation(position: 2, InputPerturbation.gaussian(sigma: 0.5, seed: 2))
        let p = try h.pass(t.splits.test) { true }
        #expect(p.delivered == 0 && p.refusedQueries == p.queries)
    }

    @Test func attacksAreDeterministicBySeed() throws {
        var cfg = ParameterTampering.Config()
        cfg.maxSamples = 600
        cfg.seed = 11
        let a = try ParameterTampering.learnImportance(t.model, data: t.splits.train, config: cfg)
        let b = try ParameterTampering.learnImportance(t.model, data: t.splits.train, config: cfg)
        #expect(a.p == b.p)
        cfg.seed = 12
        #expect(try ParameterTampering.learnImportance(t.model, data: t.splits.train, config: cfg).p != a.p)
        let (ax, ay) = t.splits.train.batch(0..<128)
        let s1 = try BitFlip.progressiveSearch(t.model, x: ax, labels: ay, maxFlips: 3)
        let s2 = try BitFlip.progressiveSearch(t.model, x: ax, labels: ay, maxFlips: 3)
        #expect(s1.map(\.flip) == s2.map(\.flip))
        let attacker = try StagedNetwork(t.model)
        let x = try StagedNetwork(t.model).stages[0].forward(t.splits.test.tensor)
        let x2 = try StagedNetwork(t.model).stages[1].forward(x)
        let g1 = InputPerturbation.gradientSign(epsilon: 0.2, network: attacker, position: 3)(x2)
        let g2 = InputPerturbation.gradientSign(epsilon: 0.2, network: attacker, position: 3)(x2)
        #expect(g1 == g2 && g1 != x2)
    }

    @Test func table1MatchesTheFormula() {
        let rows = OrderGuessing.table(upTo: 5, trials: 60_000, seed: 3)
        let expected: [Double] = [1, 0.5, 1.0 / 6, 1.0 / 24, 1.0 / 120]
        #expect(rows.map(\.formula) == expected)
        for r in rows {
            let sd: Double = (r.formula * (1 - r.formula) / Double(r.trials)).squareRoot()
            let err: Double = abs(r.measured - r.formula)
            #expect(err < 4 * sd + 1e-3, "n = \(r.n)")
        }
    }

    @Test func chartsAreWellFormedSVG() throws {
        let bars = SVGChart.bars(title: "A & B <test>", categories: ["one", "two words here"],
                                 series: [("plain", [50, 20]), ("DeepRing", [99, nil])], yLabel: "accuracy (%)")
        let lines = SVGChart.lines(title: "sweep", xLabel: "σ", yLabel: "accuracy (%)",
                                   series: [("plain", [(0, 99), (1, 50)], false), ("DeepRing", [(0, 99), (1, 99)], true)])
        for svg in [bars, lines] {
            let parser = XMLParser(data: Data(svg.utf8))
            #expect(parser.parse(), "not well-formed: \(parser.parserError.map { "\($0)" } ?? "")")
            #expect(svg.contains("accuracy (%)") && svg.contains("<title>") || svg.contains("<text"))
        }
        #expect(bars.contains("A &amp; B &lt;test&gt;") && bars.contains("DeepRing") && bars.contains("plain"))
    }
}
