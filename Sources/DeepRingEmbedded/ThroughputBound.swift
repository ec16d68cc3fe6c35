import Crypto
import DeepRingEngine
import DeepRingProtocol
import Foundation

/// A lower bound on the time of one batched query through a ring on this machine, from work the protocol cannot
/// skip, each part timed here at its best (`bench ring` prints it beside the measured throughput):
///
/// - every layer is computed twice: by its block (Eq. 5) and by the block before it, for H (Eq. 11) — twice a
///   plain forward pass, at the plain engine's speed on all threads;
/// - every layer output is hashed twice: H by the producer of the layer before (Eq. 11), and the receiver's
///   validation hash (Eq. 13);
/// - every posted tensor (the input and each layer's output) is encrypted and decrypted once (AES-256-GCM,
///   Eqs. 8–10) and its ledger entry hashed once (the entry hash the author signs);
/// - the hashing and encryption spread perfectly over all threads, and nothing else costs anything (no ledger
///   writes, signatures, HPKE, copies, query and delivery entries or reshuffle).
///
/// No implementation of the protocol on this machine can beat it (unless it computed a layer faster than the plain
/// model does); `plainSeconds / seconds` bounds the ratio of the ring's throughput to the plain model's.
public struct RingThroughputBound: Sendable {
    /// One plain forward pass of the batch.
    public var plainSeconds: Double
    /// Bytes of every tensor a query posts (the input, then each layer's output).
    public var postedBytes: Int
    /// Bytes of the layers' outputs (hashed twice each).
    public var outputBytes: Int
    public var sha256BytesPerSecond: Double
    public var aesGCMBytesPerSecond: Double
    public var threads: Int

    public init(plainSeconds: Double, postedBytes: Int, outputBytes: Int, sha256BytesPerSecond: Double,
                aesGCMBytesPerSecond: Double, threads: Int) {
        self.plainSeconds = plainSeconds; self.postedBytes = postedBytes; self.outputBytes = outputBytes
        self.sha256BytesPerSecond = sha256BytesPerSecond; self.aesGCMBytesPerSecond = aesGCMBytesPerSecond
        self.threads = threads
    }

    /// The bound: seconds per query.
    public var seconds: Double {
        let hashing = Double(2 * outputBytes + postedBytes) / sha256BytesPerSecond
        let encryption = Double(2 * postedBytes) / aesGCMBytesPerSecond
        return 2 * plainSeconds + (hashing + encryption) / Double(max(1, threads))
    }

    /// The highest ratio of ring to plain throughput the bound allows.
    public var ratioToPlain: Double { plainSeconds / seconds }

    /// The bound for `model` at `batch`, given the plain forward pass's time (measured as the figure it is
    /// compared with); SHA-256 and AES-256-GCM are timed over a buffer of the posted tensors' size, best of ten.
    public static func measure(_ model: Model, batch: Int, plainSeconds: Double,
                               threads: Int = Engine.threads) throws -> RingThroughputBound {
        // Each ring layer's output is the next one's input; the last one's is the model's output.
        let shapes = RingLayer.split(model).dropFirst().map(\.inputShape) + [model.layers.last?.outputShape ?? []]
        let outputs = shapes.reduce(0) { $0 + batch * $1.reduce(1, *) * 4 }
        let posted = batch * model.inputShape.reduce(1, *) * 4 + outputs
        func best(_ body: () throws -> Void) rethrows -> Double {
            try body()
            var t = Double.infinity
            for _ in 0..<10 { let t0 = now(); try body(); t = min(t, now() - t0) }
            return t
        }
        let bytes = [UInt8](repeating: 0x5A, count: posted)
        let sha = best { _ = SHA256.hash(data: bytes) }
        let key = SymmetricKey(size: .bits256)
        let aes = try best { _ = try AES.GCM.seal(bytes, using: key) }
        return RingThroughputBound(plainSeconds: plainSeconds, postedBytes: posted, outputBytes: outputs,
                                   sha256BytesPerSecond: Double(posted) / sha, aesGCMBytesPerSecond: Double(posted) / aes,
                                   threads: threads)
    }
}
