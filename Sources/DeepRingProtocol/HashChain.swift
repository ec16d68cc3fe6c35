import Crypto

/// The ring's hash chain (paper Eqs. 1–2). Block j holds its own layer and a copy of the next layer
/// (the last block's "next" is the ouroboros, closing the ring):
///
///     HASH_O = SHA256(enc(params_O) ‖ enc(params_1))                      (Eq. 2)
///     HASH_j = SHA256(HASH_{j−1} ‖ enc(params_j) ‖ enc(params_{j+1}))      (Eq. 1)
///
/// Each block's hash is computed from the bytes *that block* holds (its own tensors and its copy of the
/// next ones), so a change anywhere in block j's files first shows at HASH_j: the first hash that differs
/// from the record names the tampered block (§3.4.4, tracking).
public enum HashChain {
    /// What one block holds, encoded: its own layer and its copy of the next.
    public struct Holding: Sendable, Equatable {
        public var own: [UInt8]
        public var next: [UInt8]
        public init(own: [UInt8], next: [UInt8]) { self.own = own; self.next = next }
    }

    /// Hashes in ring order: element 0 is HASH_O, element j is HASH_j.
    public static func hashes(ouroboros: Holding, blocks: [Holding]) -> [[UInt8]] {
        let all = [ouroboros] + blocks
        return chain(all.count) { j, sha in sha.update(data: all[j].own); sha.update(data: all[j].next) }
    }

    /// The same hashes from the layers each holder has (element 0: the ouroboros), hashing the parameters in
    /// place rather than building their encodings.
    public static func hashes(holders: [(own: RingLayer, next: RingLayer)]) -> [[UInt8]] {
        chain(holders.count) { j, sha in
            ParamsEncoding.hash(holders[j].own, into: &sha)
            ParamsEncoding.hash(holders[j].next, into: &sha)
        }
    }

    /// Eqs. 1–2: HASH_0 = SHA256(holding 0), HASH_j = SHA256(HASH_{j−1} ‖ holding j), `feed` adding holding j.
    static func chain(_ count: Int, feed: (Int, inout SHA256) -> Void) -> [[UInt8]] {
        var out: [[UInt8]] = []
        for j in 0..<count {
            var sha = SHA256()
            if j > 0 { sha.update(data: out[j - 1]) }
            feed(j, &sha)
            out.append(Array(sha.finalize()))
        }
        return out
    }

    /// Holdings of an untampered ring: block j holds layer j and layer j+1 (the last holds the ouroboros).
    public static func holdings(ouroboros: RingLayer, layers: [RingLayer]) -> (ouroboros: Holding, blocks: [Holding]) {
        let o = ParamsEncoding.encode(ouroboros)
        let enc = layers.map(ParamsEncoding.encode)
        let blocks = enc.indices.map { Holding(own: enc[$0], next: $0 + 1 < enc.count ? enc[$0 + 1] : o) }
        return (Holding(own: o, next: enc.first ?? o), blocks)
    }

    /// Index (0 = ouroboros, j = block j) of the first hash that differs from `record`, or nil when the chain
    /// is authentic (`origHASH_last == HASH_last` and every hash before it matches).
    public static func firstMismatch(_ current: [[UInt8]], record: [[UInt8]]) -> Int? {
        for i in 0..<max(current.count, record.count) {
            if i >= current.count || i >= record.count || current[i] != record[i] { return i }
        }
        return nil
    }
}
