import Crypto
import DeepRingEngine
import DeepRingLedger
import Foundation

/// A ring member at work: a block, or the ouroboros. It knows its own keys, its neighbours' public keys, its
/// layer and its copy of the next layer — never its position — and talks only through the ledger.
///
/// Processing (Eqs. 4–11): on a `layer` entry signed by its predecessor (author key compared first, then the
/// signature verified), it unwraps K with its HPKE key, decrypts X (AES-256-GCM, query id and keys bound as
/// associated data), validates it (Eq. 13), computes its layer and posts S (the entry signature), K (a fresh
/// AES-256 key sealed to its successor), X (its output under K) and H (SHA-256 of the next layer's output,
/// computed with its copy of the next layer).
/// Time spent per phase while answering queries (seconds), for `bench ring`.
public final class PhaseTiming: @unchecked Sendable {
    public var compute = 0.0, crypto = 0.0, ledger = 0.0
    /// Reshuffling the placement and rotating keys after each query (not part of answering it).
    public var reshuffle = 0.0
    public init() {}
    public func reset() { compute = 0; crypto = 0; ledger = 0; reshuffle = 0 }
    @inline(__always) func time<T>(_ phase: ReferenceWritableKeyPath<PhaseTiming, Double>, _ body: () throws -> T) rethrows -> T {
        let t0 = now()
        defer { self[keyPath: phase] += now() - t0 }
        return try body()
    }
}

final class RingNode {
    var timing = PhaseTiming()
    // Identity and neighbours change at every reshuffle; the layers never do.
    private(set) var name: String
    private(set) var keys: BlockKeys
    private(set) var signer: LedgerSigner
    private(set) var predecessor: PublicKeys
    private(set) var successor: PublicKeys
    let own: Model
    let next: Model
    let isOuroboros: Bool
    /// The successor is the ouroboros, whose layer is the identity: H is then the hash of this node's own output.
    let nextIsOuroboros: Bool
    /// Attack hook (off unless set): perturbs the input before this node computes its layer.
    var perturbInput: ((Tensor) -> Tensor)?
    var cursor: Int64 = 0
    /// Pending queries at the ouroboros: query id → querent's HPKE key.
    var querents: [String: [UInt8]] = [:]
    /// Retries requested per (query, entry) — bounded by the receiver.
    var failures: [String: Int] = [:]
    static let maxRetries = 2

    init(name: String, keys: BlockKeys, predecessor: PublicKeys, successor: PublicKeys, own: RingLayer, next: RingLayer,
         isOuroboros: Bool, nextIsOuroboros: Bool) throws {
        self.name = name; self.keys = keys; self.signer = LedgerSigner(keys.signing); self.publicKeys = keys.publicKeys
        self.nextIsOuroboros = nextIsOuroboros
        self.predecessor = predecessor; self.successor = successor
        self.own = try own.model(); self.next = try next.model(); self.isOuroboros = isOuroboros
    }

    private(set) var publicKeys: PublicKeys

    /// Takes on a new placement after a reshuffle: new id, new key pairs, new neighbours' public keys.
    func rekey(name: String, keys: BlockKeys, predecessor: PublicKeys, successor: PublicKeys) {
        self.name = name; self.keys = keys; self.signer = LedgerSigner(keys.signing)
        self.predecessor = predecessor; self.successor = successor; self.publicKeys = keys.publicKeys
    }

    static func aad(_ queryID: String, _ from: [UInt8], _ to: [UInt8]) -> [UInt8] { Array(queryID.utf8) + from + to }

    /// Posts this node's output for `queryID`, consuming entry `consumed`.
    func post(output: Tensor, queryID: String, consumed: Int64, ledger: any Ledger) throws {
        let nextOutput = timing.time(\.compute) { nextIsOuroboros ? output : next.forward(output) }
        let (k, x, h) = try timing.time(\.crypto) { () throws -> ([UInt8], Data, [UInt8]) in
            let aesKey = SymmetricKey(size: .bits256)     // fresh for every message: never reused
            let a = RingNode.aad(queryID, publicKeys.signing, successor.signing)
            // H (a SHA-256 pass over the next output) and X (AES-GCM over this output) are independent: for
            // big tensors they run on two threads.
            var h: [UInt8] = [], x: Result<Data, Error> = .failure(QueryError.decryptionFailed)
            Parallel.forEach(2, threads: RingNode.parallel(output.count + nextOutput.count)) { i in
                if i == 0 { h = TensorWire.hash(nextOutput) } else {
                    x = Result { try AES.GCM.seal(TensorWire.encode(output), using: aesKey, authenticating: a).combined! }
                }
            }
            let k = try aesKey.withUnsafeBytes { try Sealing.seal(Array($0), to: successor.agreement, aad: a) }
            return (k, try x.get(), h)
        }
        var w = WireWriter(capacity: 8 + k.count + x.count + h.count + 16)
        w.u64(consumed); w.field(k); w.field(x); w.field(h)
        try timing.time(\.ledger) { _ = try ledger.append(kind: .layer, queryID: queryID, payload: w.bytes, signer: signer) }
    }

    /// A parsed layer post; X stays in the entry's payload (megabytes at batch 256: not copied).
    struct LayerPost { var consumed: Int64; var k: [UInt8]; var x: ArraySlice<UInt8>; var h: [UInt8] }

    static func parseLayer(_ e: LedgerEntry) throws -> LayerPost {
        var r = WireReader(e.payload)
        let c = try r.u64(), k = try r.field(max: 4096), x = try r.fieldRange(), h = try r.field(max: 32)
        try r.end()
        guard h.count == 32 else { throw QueryError.malformedPayload("H must be 32 bytes") }
        return LayerPost(consumed: c, k: k, x: e.payload[x], h: h)
    }

    /// Only the sequence number of the entry a layer post consumed.
    static func consumedSequence(_ e: LedgerEntry) throws -> Int64 {
        var r = WireReader(e.payload)
        return try r.u64()
    }

    /// Only the H of a layer post (validation needs nothing else; X, often megabytes, is skipped, not copied).
    static func parseH(_ e: LedgerEntry) throws -> [UInt8] {
        var r = WireReader(e.payload)
        _ = try r.u64(); try r.skipField(max: 4096); try r.skipField()
        let h = try r.field(max: 32)
        try r.end()
        guard h.count == 32 else { throw QueryError.malformedPayload("H must be 32 bytes") }
        return h
    }

    /// Decrypts a layer post addressed to this node.
    func receive(_ e: LedgerEntry, _ p: LayerPost) throws -> Tensor {
        try timing.time(\.crypto) { try receiveUntimed(e, p) }
    }

    /// Threads for a pair of independent crypto passes over `floats` values: two when it is big enough to repay
    /// the hand-off (≈ 64 KB), else one.
    static func parallel(_ floats: Int) -> Int { floats >= 16_384 ? 2 : 1 }

    /// Checks a layer post's entry (stored hash against its fields, and the signature) and decrypts its X — two
    /// independent passes over the payload, run side by side for big payloads. With `hashInput`, the thread that
    /// decrypts (AES-GCM, several times faster than SHA-256 here) then hashes the plaintext for validation (Eq. 13)
    /// while the other still hashes the entry: nothing is acted on before both checks are done. Nil when the entry
    /// is not authentic.
    func authenticateAndReceive(_ e: LedgerEntry, hashInput: Bool) throws -> (LayerPost, Tensor, inputHash: [UInt8]?)? {
        let p = try RingNode.parseLayer(e)
        return try timing.time(\.crypto) {
            var authentic = false, input: Result<Tensor, Error> = .failure(QueryError.decryptionFailed)
            var inputHash: [UInt8]?
            Parallel.forEach(2, threads: RingNode.parallel(p.x.count / 4)) { i in
                if i == 0 { authentic = e.isAuthentic } else {
                    input = Result { try receiveUntimed(e, p) }
                    if hashInput, case .success(let t) = input { inputHash = TensorWire.hash(t) }
                }
            }
            return authentic ? (p, try input.get(), inputHash) : nil
        }
    }

    func receiveUntimed(_ e: LedgerEntry, _ p: LayerPost) throws -> Tensor {
        let a = RingNode.aad(e.queryID ?? "", e.author, publicKeys.signing)
        let keyBytes = try Sealing.open(p.k, with: keys.agreement, aad: a)
        guard keyBytes.count == 32 else { throw QueryError.malformedPayload("K is not an AES-256 key") }
        do {
            let box = try AES.GCM.SealedBox(combined: p.x)
            return try TensorWire.decode(try AES.GCM.open(box, using: SymmetricKey(data: keyBytes), authenticating: a))
        } catch let e as QueryError { throw e } catch { throw QueryError.decryptionFailed }
    }

    /// Handles the ledger entries that appeared since the last call. Returns true if it posted anything.
    @discardableResult
    func step(ledger: any Ledger) throws -> Bool {
        let (entries, tail) = try timing.time(\.ledger) { () throws -> ([LedgerEntry], Int64) in
            let tail = try ledger.lastSequence()
            guard tail > cursor else { return ([], tail) }
            var filters = [EntryFilter(kind: .layer, author: predecessor.signing), EntryFilter(kind: .alarm)]
            if isOuroboros { filters.append(EntryFilter(kind: .query)) }
            return (try ledger.entries(in: (cursor + 1)...tail, matching: filters), tail)
        }
        defer { cursor = max(cursor, tail) }
        var acted = false
        for e in entries {
            guard let q = e.queryID else { continue }
            switch e.kind {
            case .query where isOuroboros:
                // Eq. 3: (sealed query, Pub_Q). Decrypt and start the ring with the identity layer.
                // Anyone may post a query: a malformed or undecryptable one is skipped, never fatal to the ring.
                var r = WireReader(e.payload)
                guard let querent = try? r.field(max: 32), let sealed = try? r.fieldRange(), (try? r.end()) != nil,
                      querent.count == 32, timing.time(\.crypto, { e.isAuthentic }),
                      let plain = try? timing.time(\.crypto, { try Sealing.openData(e.payload[sealed], with: keys.agreement, aad: Array(q.utf8) + querent) }),
                      let x = try? TensorWire.decode(plain), x.data.allSatisfy({ $0.isFinite }) else { continue }
                querents[q] = querent
                // The ouroboros's layer is the identity (W = I, b = 0): its output is its input, not recomputed.
                try post(output: x, queryID: q, consumed: e.sequence, ledger: ledger)
                acted = true
            case .layer where e.author == predecessor.signing:
                // Validation (Eq. 13): the entry this output was computed from carries H_{i−1}, the hash that the
                // block before computed for this very output with its copy of the layer.
                var expected: [UInt8]?, hashFrom: [UInt8] = []
                if let consumed = try? RingNode.consumedSequence(e),
                   let prior = try ledger.entries(from: consumed, limit: 1).first, prior.sequence == consumed,
                   prior.kind == .layer, prior.queryID == q {
                    expected = try RingNode.parseH(prior); hashFrom = prior.author
                }
                guard let (p, input, inputHash) = try authenticateAndReceive(e, hashInput: expected != nil) else { continue }
                if let expected {
                    if expected != inputHash {
                        let key = "\(q)/\(p.consumed)"
                        failures[key, default: 0] += 1
                        let retry = failures[key]! <= RingNode.maxRetries
                        let msg = "{\"suspect\":\"\(hex(e.author))\",\"hash_from\":\"\(hex(hashFrom))\",\"entry\":\(e.sequence),\"retry_of\":\(p.consumed),\"final\":\(!retry)}"
                        try ledger.append(kind: .alarm, queryID: q, payload: Array(msg.utf8), signer: signer)
                        acted = true
                        continue
                    }
                }
                if isOuroboros {
                    // Delivery (Eq. 12): seal the output to the querent.
                    guard let querent = querents.removeValue(forKey: q) else { continue }
                    let sealed = try Sealing.seal(TensorWire.encode(input), to: querent, aad: Array(q.utf8) + querent)
                    try ledger.append(kind: .delivery, queryID: q, payload: sealed, signer: signer)
                } else {
                    let x = perturbInput?(input) ?? input
                    try post(output: timing.time(\.compute) { own.forward(x) }, queryID: q, consumed: e.sequence, ledger: ledger)
                }
                acted = true
            case .alarm:
                // A receiver asks for a retry of the output this node computed from entry `retry_of`.
                guard e.author == successor.signing, e.isAuthentic,
                      let v = try? StrictJSONParser.parse(e.payload), case .string(let suspect)? = v["suspect"],
                      suspect == hex(publicKeys.signing), case .bool(false)? = v["final"],
                      case .int(let consumed)? = v["retry_of"],
                      let src = try ledger.entries(from: Int64(consumed), limit: 1).first, src.queryID == q,
                      src.kind == .layer, src.author == predecessor.signing else { continue }
                let input = try receive(src, try RingNode.parseLayer(src))
                let x = perturbInput?(input) ?? input
                try post(output: own.forward(x), queryID: q, consumed: src.sequence, ledger: ledger)
                acted = true
            default:
                continue
            }
        }
        return acted
    }
}
