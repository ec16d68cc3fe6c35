import Crypto
import DeepRingEngine
import DeepRingLedger
import DeepRingProtocol
import Foundation

/// The ouroboros as a party of its own — the decentralised deployment's `deepring owner serve`. It reads only the
/// owner's folder (`DIR/owner/`: its keys, its identity, its signed record — which names every member's public
/// keys in ring order — and its checkpoint) and the public `DIR/ring.json`, and talks only through the ledger:
/// it opens queries (Eq. 3), delivers validated answers sealed to their querents (Eq. 12), and ends every query
/// it started — with an answer, or with a refusal naming why: a member's final validation alarm (Prop. 1), or a
/// member that stayed silent past the deadline (named in a `silent` alarm). A querent never waits forever.
public final class OwnerAgent {
    public let ring: SealedRing
    let node: RingNode
    public let ledger: any Ledger
    /// Seconds a query may stay open before the owner refuses it, naming the member that was to act.
    public var queryTimeout: Double = 60
    /// Queries started and not yet ended: id → when this process saw them.
    private var open: [String: Double] = [:]
    private var watchCursor: Int64
    /// Members' signing keys in ring order (0 = the ouroboros).
    let members: [[UInt8]]
    public private(set) var answered = 0, refused = 0
    /// What happened, for the serving process's log: (query id, event, detail).
    public private(set) var events: [(queryID: String, event: String, detail: String)] = []

    /// One ouroboros at a time per owner folder (a second one would answer every query twice); held for life.
    private let lock: RingLock

    /// Opens the owner's side of the ring in `directory` as its one runner (waiting up to `lockTimeout` seconds for
    /// another process running it: an embedded `query`, `verify --restore`, or another `owner serve`), checks
    /// the owner's own files and that `ledger` is the ring's, and resumes the queries still open on it.
    public init(directory: String, ledger: any Ledger, resumeWindow: Int64 = 20_000, lockTimeout: Double = 10) throws {
        lock = try RingPaths(directory).runtimeLock(timeout: lockTimeout)
        let ring = try SealedRing.open(directory)
        let p = ring.paths
        let own = try RingManifest.read(p.ownerManifest)
        guard own == ring.manifest else {
            throw RingError.notAuthentic("ring.json differs from the owner's copy (owner/manifest.json)")
        }
        let (keys, held) = try ring.ouroborosHolding()
        // The shapes along the ring, from the owner's verified checkpoint: what the ouroboros receives (the last
        // layer's output), and the widest post (which bounds the batch).
        var shapes = [ring.manifest.inputShape]
        for l in try ring.plainLayers() { shapes.append(try l.model().outputShape) }
        let m = ring.record.members
        guard let first = m.first, let last = m.last else { throw RingError.notARing("the ring has no blocks") }
        let o = keys.publicKeys
        let signing = m.map(\.signing)
        try RingGenesis.check(ledger, ringID: ring.manifest.ringID, ouroboros: o.signing)
        node = try RingNode(name: "ouroboros", keys: keys, predecessor: last, successor: first,
                            secondPredecessor: Placement.secondPredecessor(m.count, signing, o.signing),
                            own: held[0], next: held[1], isOuroboros: true, nextIsOuroboros: false,
                            ouroborosKey: o.signing, inputShape: shapes.last ?? ring.manifest.inputShape)
        let widest = shapes.map { $0.reduce(1, *) }.max() ?? 1
        node.maxBatch = max(1, min(RingNode.maxBatch, (LedgerEntry.maxPayload - (1 << 16)) / (4 * widest)))
        members = [o.signing] + signing
        self.ring = ring
        self.ledger = ledger
        try node.resume(ledger: ledger, window: resumeWindow)
        watchCursor = node.cursor
    }

    public var cursor: Int64 { min(node.cursor, watchCursor) }

    /// The rows that may be work for the owner: queries, the last block's posts, members' alarms, and deliveries.
    public var wakeFilters: [EntryFilter] {
        [EntryFilter(kind: .query), EntryFilter(kind: .layer, author: node.predecessor.signing)]
            + members.map { EntryFilter(kind: .alarm, author: $0) }
    }

    /// The most inputs one query may carry through this ring.
    public var maxBatch: Int { node.maxBatch }

    /// One round: the ouroboros's own work (start queries, deliver), then the bookkeeping of open queries — final
    /// alarms and deadlines. True when it did anything or has more to read.
    public func step() throws -> Bool {
        var acted = try node.step(ledger: ledger)
        for f in node.failures { events.append((f.queryID, "error", "\(f.error)")) }
        node.failures.removeAll()
        if try watch() { acted = true }
        return acted
    }

    /// Takes the events since the last call.
    public func takeEvents() -> [(queryID: String, event: String, detail: String)] {
        defer { events.removeAll() }
        return events
    }

    func describe(_ key: [UInt8]?) -> String {
        guard let key, let j = members.firstIndex(of: key) else { return "a key outside the ring" }
        if j == 0 { return "the ouroboros" }
        return "block \(ring.record.order[j - 1]) (ring position \(j))"
    }

    /// Follows the queries: a query row opens one; the ouroboros's delivery ends it; a member's final validation
    /// alarm ends it with a refusal naming the suspects; the deadline ends it with a `silent` alarm and a refusal.
    private func watch() throws -> Bool {
        var acted = false
        // Only as far as the ouroboros has read: a query it has not reached yet is not open yet.
        let tail = node.cursor
        if tail > watchCursor {
            let filters = [EntryFilter(kind: .query), EntryFilter(kind: .delivery, author: members[0])]
                + members.map { EntryFilter(kind: .alarm, author: $0) }
            let heads = try ledger.headers(in: (watchCursor + 1)...tail, matching: filters)
            for h in heads {
                guard let q = h.queryID else { continue }
                switch h.kind {
                case .query:
                    // Started by the ouroboros (an authentic query it could open) and not ended yet.
                    if open[q] == nil && node.querents[q] != nil { open[q] = now() }
                case .delivery:
                    if open.removeValue(forKey: q) != nil {
                        answered += 1
                        events.append((q, "delivered", ""))
                    }
                case .alarm:
                    guard open[q] != nil, let e = try ledger.entry(at: h.sequence), e.isAuthentic, members.contains(e.author),
                          let a = try? Alarm.decode(e), case .validation(let v) = a.body, v.final else { continue }
                    var why = "\(describe(v.suspect)): \(v.reason)"
                    if v.reason == .hashMismatch {
                        why = "validation failed for good; \(describe(v.suspect)), or \(v.hashFrom.map { describe($0) } ?? "the block holding the copy of its layer"), is compromised"
                    }
                    try end(q, .compromised, why)
                    acted = true
                default: continue
                }
            }
            watchCursor = tail
        }
        let t = now()
        for (q, started) in open where t - started > queryTimeout {
            let posts = try ledger.pagedEntries(in: 1...max(1, tail), matching: [EntryFilter(kind: .layer, queryID: q)], pageBytes: 64 << 20)
            var silent = members.count > 1 ? members[1] : members[0]
            if let last = posts.last(where: { members.contains($0.author) && $0.isAuthentic }), let p = try? LayerPost.decode(last) { silent = p.recipient }
            if !posts.isEmpty || node.querents[q] != nil {
                try ledger.append(kind: .alarm, queryID: q, payload: Alarm(.silent(member: silent)).encoded(), signer: node.signer)
            }
            try end(q, .timeout, "\(describe(silent)) did not answer within \(Int(queryTimeout)) s (\(posts.count) layer posts for the query)")
            acted = true
        }
        return acted
    }

    /// Ends an open query with a refusal (no answer will follow: the ouroboros forgets its querent).
    private func end(_ q: String, _ reason: RefusalReason, _ detail: String) throws {
        open[q] = nil
        node.querents[q] = nil
        try ledger.append(kind: .delivery, queryID: q, payload: Delivery(.refusal(reason, detail: detail)).encoded(), signer: node.signer)
        refused += 1
        events.append((q, "refused", "\(reason): \(detail)"))
    }
}
