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
    private var open: [String: (started: Double, from: Int64)] = [:]
    private var watchCursor: Int64
    /// Members' signing keys in ring order (0 = the ouroboros).
    let members: [[UInt8]]
    public private(set) var answered = 0, refused = 0
    /// Seconds between authenticity rounds (the first runs before any query is served); 0: only that first one.
    public var checkEvery: Double = 30
    /// Seconds the blocks have to attest before the round names the silent one.
    public var roundTimeout: Double = 15
    /// Restores of one block in a row before the owner gives up on it.
    static let maxRestores = 3
    private var round: Round?
    private var lastRoundEnd: Double?
    private var restoresInRow = 0
    /// The latest round's outcome: authentic, or what was wrong.
    public private(set) var lastRound: (authentic: Bool, detail: String)?
    public private(set) var rounds = 0, restores = 0
    /// The ouroboros's two layers as sealed (their specs and names) and the owner's verified checkpoint.
    private let held: [RingLayer]
    private let checkpoint: [RingLayer]

    struct Round {
        let id: String
        let started: Double
        let ouroborosHash: [UInt8]
        var cursor: Int64
        var attestations: [Int: Attestation] = [:]
    }
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
        checkpoint = try ring.checkpointLayers()
        self.held = held
        var shapes = [ring.manifest.inputShape]
        for l in checkpoint.dropFirst() { shapes.append(try l.model().outputShape) }
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

    /// What the owner has read: during an authenticity round, the round's attestations (so that it sleeps until the
    /// next one instead of spinning), else its queries and alarms.
    public var cursor: Int64 { round?.cursor ?? min(node.cursor, watchCursor) }

    /// The rows that may be work for the owner: queries, the last block's posts, members' alarms, and deliveries.
    public var wakeFilters: [EntryFilter] {
        [EntryFilter(kind: .query), EntryFilter(kind: .layer, author: node.predecessor.signing), EntryFilter(kind: .attestation)]
            + members.map { EntryFilter(kind: .alarm, author: $0) }
    }

    /// The most inputs one query may carry through this ring.
    public var maxBatch: Int { node.maxBatch }

    /// One round: an authenticity round when one is due or running (queries wait meanwhile); else the ouroboros's
    /// own work (start queries, deliver), then the bookkeeping of open queries — final alarms and deadlines. True
    /// when it did anything or has more to read.
    public func step() throws -> Bool {
        if round == nil, lastRoundEnd.map({ checkEvery > 0 && now() - $0 >= checkEvery }) ?? true { try startRound() }
        if round != nil { return try collect() }
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
                    if open[q] == nil && node.querents[q] != nil { open[q] = (now(), h.sequence) }
                case .delivery:
                    if open.removeValue(forKey: q) != nil {
                        answered += 1
                        events.append((q, "delivered", ""))
                    }
                case .alarm:
                    guard open[q] != nil, let e = try ledger.entry(at: h.sequence), e.isAuthentic, members.contains(e.author),
                          let a = try? Alarm.decode(e), case .validation(let v) = a.body, v.final else { continue }
                    // Prop. 1 names a block only from its successor, the one member that validates its output; an
                    // alarm from anyone else names its own author (a member raising alarms it cannot have seen).
                    let why: String
                    if let js = members.firstIndex(of: v.suspect), members.firstIndex(of: e.author) == (js + 1) % members.count {
                        if v.reason == .hashMismatch {
                            why = "validation failed for good; \(describe(v.suspect)), or \(v.hashFrom.map { describe($0) } ?? "the block holding the copy of its layer"), is compromised (or \(describe(e.author)), which validated it)"
                        } else {
                            why = "\(describe(v.suspect)): \(v.reason) (reported by \(describe(e.author)), which validates it; one of the two is compromised)"
                        }
                    } else {
                        why = "\(describe(e.author)) raised an alarm about \(describe(v.suspect)), whose output it does not validate: \(describe(e.author)) is compromised"
                    }
                    try end(q, .compromised, why)
                    acted = true
                default: continue
                }
            }
            watchCursor = tail
        }
        let t = now()
        for (q, o) in open where t - o.started > queryTimeout {
            // Headers from the query row on (no payloads, no scan of the whole ledger), then the one post needed.
            let posts = try ledger.headers(in: o.from...max(o.from, tail), matching: members.map { EntryFilter(kind: .layer, author: $0, queryID: q) })
            var silent = members.count > 1 ? members[1] : members[0]
            if let h = posts.last, let last = try ledger.entry(at: h.sequence), last.isAuthentic, let p = try? LayerPost.decode(last) { silent = p.recipient }
            if !posts.isEmpty || node.querents[q] != nil {
                try ledger.append(kind: .alarm, queryID: q, payload: Alarm(.silent(member: silent)).encoded(), signer: node.signer)
            }
            try end(q, .timeout, "\(describe(silent)) did not answer within \(Int(queryTimeout)) s (\(posts.count) layer posts for the query)")
            acted = true
        }
        return acted
    }

    // MARK: the authenticity round across hosts (§3.3, §3.4.4)

    /// Calls a round: HASH_O (Eq. 2) over the parameters the ouroboros computes with, in a challenge every block
    /// answers in ring order, each chaining on its predecessor's attestation.
    private func startRound() throws {
        var sha = SHA256()
        ParamsEncoding.hash(held[0].current(in: node.own), into: &sha)
        ParamsEncoding.hash(held[1].current(in: node.next), into: &sha)
        let h = Array(sha.finalize())
        let id = "auth-" + randomID().prefix(16)
        let cursor = try ledger.lastSequence()
        try ledger.append(kind: .challenge, queryID: id, payload: AuthenticityChallenge(ouroborosHash: h).encoded(), signer: node.signer)
        round = Round(id: id, started: now(), ouroborosHash: h, cursor: cursor)
        rounds += 1
    }

    /// Reads the round's attestations; when every block has attested, or the time is up, judges the round.
    private func collect() throws -> Bool {
        guard var r = round else { return false }
        let tail = try ledger.lastSequence()
        var acted = false
        if tail > r.cursor {
            // Only members' attestations of this round, a bounded page at a time (anyone may append big rows).
            let page = try ledger.entries(in: (r.cursor + 1)...tail, matching: members.dropFirst().map {
                EntryFilter(kind: .attestation, author: $0, queryID: r.id)
            }, maxBytes: 1 << 20)
            for e in page.entries {
                guard let j = members.firstIndex(of: e.author), j > 0, r.attestations[j] == nil, e.isAuthentic,
                      let a = try? Attestation.decode(e) else { continue }
                r.attestations[j] = a
                acted = true
            }
            r.cursor = page.through
            if page.through < tail { acted = true }
            round = r
        }
        let n = members.count - 1
        if r.attestations.count == n || now() - r.started > roundTimeout { try judge(r); return true }
        return acted
    }

    /// The chain as attested against the owner's record: the first holder whose hash differs — or whose file is not
    /// intact — is tampered (§3.4.4): restored from the checkpoint, and the round called again; a block that never
    /// attested is named in a `silent` alarm. A block that lies in its attestation is not caught here but by validation
    /// (its predecessor holds a copy of its layer).
    private func judge(_ r: Round) throws {
        round = nil
        lastRoundEnd = now()
        let hashes = ring.record.hashes.map { unhex($0) ?? [] }
        guard r.ouroborosHash == hashes[0] else {
            // The ouroboros's own parameters: restored here, from the checkpoint.
            node.replaceLayers(own: try checkpoint[0].model(), next: try checkpoint[1].model())
            restores += 1
            events.append((r.id, "restored", "the ouroboros's own parameters, from the checkpoint"))
            lastRoundEnd = nil
            return
        }
        var previous = r.ouroborosHash
        for j in 1..<members.count {
            guard let a = r.attestations[j] else {
                try ledger.append(kind: .alarm, queryID: r.id, payload: Alarm(.silent(member: members[j])).encoded(), signer: node.signer)
                lastRound = (false, "\(describe(members[j])) did not attest within \(Int(roundTimeout)) s")
                events.append((r.id, "not authentic", lastRound?.detail ?? ""))
                return
            }
            if a.previousHash != previous || a.hash != hashes[j] || !a.fileIntact {
                let why = !a.fileIntact ? "its parameter file differs from the sealed one" : "its HASH differs from the record"
                guard restoresInRow < OwnerAgent.maxRestores else {
                    lastRound = (false, "\(describe(members[j])): \(why), still after \(restoresInRow) restores")
                    events.append((r.id, "not authentic", lastRound?.detail ?? ""))
                    restoresInRow = 0
                    return
                }
                try sendRestore(position: j, round: r.id)
                restoresInRow += 1
                restores += 1
                events.append((r.id, "restoring", "\(describe(members[j])): \(why)"))
                lastRoundEnd = nil   // check again at once: repeat until authentic
                return
            }
            previous = a.hash
        }
        restoresInRow = 0
        lastRound = (true, "every block's HASH matches the record")
        events.append((r.id, "authentic", "\(members.count - 1) blocks attested"))
    }

    /// Sends block `j` its sealed parameter file from the checkpoint, sealed to its HPKE key.
    private func sendRestore(position j: Int, round: String) throws {
        let file = ring.sealedHolderFile(j, layers: checkpoint)
        let k = ring.record.members[j - 1]
        let sealed = try HPKEBox.seal(file, to: k.agreement, aad: RestoreOrder.aad(round: round, recipient: k.signing))
        try ledger.append(kind: .restore, queryID: round, payload: RestoreOrder(recipient: k.signing, sealedFile: sealed).encoded(capacity: sealed.count + 64),
                          signer: node.signer)
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
