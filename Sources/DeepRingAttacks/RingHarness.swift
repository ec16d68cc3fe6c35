import DeepRingClient
import DeepRingEmbedded
import DeepRingOwner
import DeepRingEngine
import DeepRingData
import DeepRingProtocol
import DeepRingLedger
import Foundation

/// Runs a data set through a sealed ring the way a user would — batched queries through the ledger — while an
/// attack is in effect, and counts honestly what happened: answers delivered, queries refused, alarms, restores
/// and evictions, and alarms raised while no attack was active (false alarms).
public final class RingHarness {
    public private(set) var runtime: RingRuntime
    public let model: Model
    public let batchSize: Int
    public let directory: String

    /// Seals `model` into `directory` and opens it with the evict-and-retry policy. The folder may not exist, be
    /// empty, or hold a ring (which is replaced); anything else is refused.
    /// `batchSize`: images per query, at most what the ring's ledger entries carry (`RingRuntime.maxBatch`: the
    /// full-width VGG-19's first activations, 256 KiB per image, allow 255); a bigger value is lowered to that.
    public init(model: Model, directory: String, batchSize: Int = 1000) throws {
        self.model = model
        self.directory = directory
        let rt = try RingHarness.sealAndOpen(model, directory)
        runtime = rt
        self.batchSize = max(1, min(batchSize, rt.maxBatch))
    }

    static func sealAndOpen(_ model: Model, _ directory: String) throws -> RingRuntime {
        try SealedRing.seal(model, into: directory, force: true)
        let rt = try RingRuntime(directory: directory)
        rt.onCompromisedBlock = .evictAndRetry
        rt.verifyEvery = 1
        return rt
    }

    /// Seals the model into a fresh ring in the same folder (the old ring and its ledger are discarded). The ledger
    /// keeps every activation ciphertext, so long experiments start a fresh ring per table row to bound disk use
    /// (about 110 MB per 10,000 MNIST images through the MLP ring; 1.5 GB through the VGG-19 ÷8 ring).
    public func reseal() throws {
        runtime.close()
        runtime = try RingHarness.sealAndOpen(model, directory)
    }

    public struct Pass: Sendable {
        /// Per row: the delivered prediction, or nil when the query was refused.
        public var predictions: [Int?] = []
        public var queries = 0, refusedQueries = 0
        /// Validation alarms, and how many of them came while no attack was active.
        public var alarms = 0, falseAlarms = 0
        /// Queries answered while no attack was active (the denominator of the false-alarm rate).
        public var cleanQueries = 0
        public var restores = 0, evictions = 0
        public var trackingSeconds = 0.0
        public var seconds = 0.0

        public var delivered: Int { predictions.filter { $0 != nil }.count }
        public var refused: Int { predictions.count - delivered }
        /// Delivered answers equal to their label.
        public func correct(_ labels: [Int]) -> Int { zip(predictions, labels).filter { $0.0 == $0.1 }.count }
        /// Accuracy over delivered answers (nil when nothing was delivered).
        public func accuracy(_ labels: [Int]) -> Double? {
            delivered == 0 ? nil : Double(correct(labels)) / Double(delivered)
        }
    }

    /// Queries `data` in batches. `attackActive` tells, before each query, whether an attack is in effect (false
    /// alarms are alarms raised when it is not).
    public func pass(_ data: Dataset, attackActive: () -> Bool) throws -> Pass {
        var p = Pass()
        let rt = runtime
        let r0 = rt.restores.count, e0 = rt.evictions.count, t0 = rt.trackingSeconds
        let start = now()
        var i = 0
        while i < data.count {
            let j = min(data.count, i + batchSize)
            let (x, _) = data.batch(i..<j)
            let active = attackActive()
            let restoresBefore = rt.restores.count
            p.queries += 1
            if !active { p.cleanQueries += 1 }
            do {
                let r = try rt.query(x)
                p.predictions += predictions(r.logits).map { Optional($0) }
                p.alarms += r.alarms
                if !active { p.falseAlarms += r.alarms + (rt.restores.count - restoresBefore) }
            } catch QueryError.failed {
                p.refusedQueries += 1
                p.predictions += [Int?](repeating: nil, count: j - i)
                if !active { p.falseAlarms += 1 }
            }
            i = j
        }
        p.restores = rt.restores.count - r0
        p.evictions = rt.evictions.count - e0
        p.trackingSeconds = rt.trackingSeconds - t0
        p.seconds = now() - start
        return p
    }

    /// Plays an attacker who overwrites, in the blocks' files, every layer of the ring that differs between the
    /// sealed model and `attacked`; the running blocks pick the change up. Returns the positions changed.
    @discardableResult
    public func tamper(with attacked: Model) throws -> [Int] {
        let clean = RingLayer.split(model), bad = RingLayer.split(attacked)
        var changed: [Int] = []
        for (j, (c, b)) in zip(clean, bad).enumerated() where c != b {
            try runtime.ring.overwriteHeldLayers(position: j + 1, own: b)
            changed.append(j + 1)
        }
        try runtime.adoptTamperedFiles()
        return changed
    }
}
