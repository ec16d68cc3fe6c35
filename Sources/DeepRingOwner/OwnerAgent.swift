import DeepRingEngine
import DeepRingLedger
import DeepRingNode
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
    /// Time spent per phase by the ouroboros while answering queries.
    public var timing: PhaseTiming { node.timing }
    public let ledger: any Ledger
    /// Seconds a query may stay open before the owner refuses it, naming the member that was to act.
    public var queryTimeout: Double = 60
    /// Queries started and not yet ended: id → when this process saw them.
    private var open: [String: (started: Double, from: Int64)] = [:]
    /// Members' signing keys in ring order (0 = the ouroboros); replaced by every key rotation.
    private(set) var members: [[UInt8]]
    /// Rotate every block's keys after this many queries have ended (0: never). The paper reshuffles after every
    /// query; across hosts a rotation drains the ring first (≈ a query's latency), so it is done every N queries.
    public var rotateEvery = 100
    private var endedAtLastRotation = 0
    /// The first key pairs are made by `seal`, on the owner's host. With this on, the owner rotates every block's keys
    /// before its first query when the ring is still at generation 0 — each block makes its own, and the sealed ones
    /// (which the owner's host saw) never sign a query. A block silent then keeps its sealed keys until the next
    /// rotation.
    public var enrollAtStart = true
    private var enrollmentAsked = false
    /// Key rotations across hosts (`KeyRotation`).
    private let rotation: KeyRotation
    public var rotations: Int { rotation.rotations }
    /// Blocks evicted to spares (`KeyRotation.Eviction`).
    public var evictions: Int { rotation.evictions }
    /// The eviction under way (its rotation not ended yet), and the queries that wait for it to run again: query
    /// id and query row.
    private var evicting: KeyRotation.Eviction?
    private var parked: [(queryID: String, from: Int64)] = []
    /// Per query run again: how many evictions it caused.
    private var evictionsFor: [String: Int] = [:]
    /// At most this many evictions for one query; then it is refused.
    static let maxEvictionsPerQuery = 2
    public private(set) var answered = 0, refused = 0
    /// Seconds between authenticity rounds (the first runs before any query is served); 0: only that first one.
    public var checkEvery: Double = 30
    /// Seconds the blocks have to attest (or to post their new keys in a rotation) before the owner names the silent one.
    public var roundTimeout: Double {
        get { auth.timeout }
        set { auth.timeout = newValue; rotation.timeout = newValue }
    }
    private var lastRoundEnd: Double?
    /// The latest round's outcome: authentic, or what was wrong.
    public var lastRound: (authentic: Bool, detail: String)? { auth.last }
    public var rounds: Int { auth.rounds }
    public var restores: Int { auth.restores }
    /// The authenticity rounds across hosts (§3.3, §3.4.4).
    private let auth: AuthenticityRounds
    /// The ouroboros's two layers as sealed (their specs and names) and the owner's verified checkpoint.
    private let held: [RingLayer]
    private let checkpoint: [RingLayer]

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
        let everyone = members
        auth = AuthenticityRounds(ring: ring, ledger: ledger, signer: node.signer, members: everyone, checkpoint: checkpoint,
                                  describe: { AuthenticityRounds.describe($0, members: everyone, ring: ring) })
        let layers = checkpoint
        rotation = KeyRotation(ring: ring, ledger: ledger, signer: node.signer, agreement: keys.agreement,
                               holderFile: { ring.sealedHolderFile($0, layers: layers) })
        try node.resume(ledger: ledger, window: resumeWindow)
        node.watchFilters = OwnerAgent.watchFilters(members)
        auth.describe = { [unowned self] in self.describe($0) }
        // A rotation committed before an earlier process stopped, not yet published: publish it.
        _ = try rotation.resumeInterrupted()
        try resumeParkedQueries(window: resumeWindow)
    }

    static func watchFilters(_ members: [[UInt8]]) -> [EntryFilter] {
        [EntryFilter(kind: .query), EntryFilter(kind: .delivery, author: members[0])] + members.map { EntryFilter(kind: .alarm, author: $0) }
    }

    /// What the owner has read: during an authenticity round, the round's attestations (so that it sleeps until the
    /// next one instead of spinning), else its queries and alarms.
    public var cursor: Int64 { auth.current?.cursor ?? rotation.cursor ?? node.cursor }

    /// The rows that may be work for the owner: queries, the last block's posts, members' alarms, and deliveries.
    public var wakeFilters: [EntryFilter] {
        [EntryFilter(kind: .query), EntryFilter(kind: .layer, author: node.predecessor.signing), EntryFilter(kind: .attestation),
         EntryFilter(kind: .rekey)]
            + members.map { EntryFilter(kind: .alarm, author: $0) }
    }

    /// The most inputs one query may carry through this ring.
    public var maxBatch: Int { node.maxBatch }

    /// One round: an authenticity round when one is due or running (queries wait meanwhile); else the ouroboros's
    /// own work (start queries, deliver), then the bookkeeping of open queries — final alarms and deadlines. True
    /// when it did anything or has more to read.
    public func step() throws -> Bool {
        if auth.current == nil, rotation.isIdle, lastRoundEnd.map({ checkEvery > 0 && now() - $0 >= checkEvery }) ?? true {
            try auth.start(ouroborosHash: ouroborosHash)
        }
        if auth.current != nil { return try collect() }
        if !enrollmentAsked {
            enrollmentAsked = true
            if enrollAtStart && ring.record.generation == 0 && rotation.isIdle {
                requestRotation()
                events.append(("", "enrolling", "every block replaces the key pairs seal made with its own before the first query"))
            }
        }
        // A key rotation when due: queries wait (held) until those in flight have ended, then the exchange runs.
        if rotation.isIdle, rotateEvery > 0, answered + refused - endedAtLastRotation >= rotateEvery { requestRotation() }
        if rotation.isDraining && open.isEmpty {
            try rotation.call(evicting: evicting)
            events += rotation.takeEvents()
        }
        if rotation.cursor != nil { return try rotate() }
        if rotation.isIdle && evicting == nil && !parked.isEmpty { try rerunParkedQueries() }
        if rotation.isIdle && !node.heldQueries.isEmpty { try releaseHeldQueries() }
        var acted = try node.step(ledger: ledger)
        for f in node.failures { events.append((f.queryID, "error", "\(f.error)")) }
        node.failures.removeAll()
        if try watch() { acted = true }
        return acted
    }

    /// Rotates every block's keys as soon as the queries in flight have ended (whatever `rotateEvery` says).
    public func requestRotation() {
        rotation.drain()
        node.holdQueries = true
    }

    /// Runs the key rotation's exchange; once it is committed (or abandoned), takes on the new neighbours and member
    /// set and starts the queries that waited.
    private func rotate() throws -> Bool {
        let (acted, committed) = try rotation.collect(members: members, describe: { [unowned self] in self.describe($0) })
        events += rotation.takeEvents()
        if let keys = committed, let first = keys.first, let last = keys.last {
            let o = node.publicKeys
            node.adopt(keys: node.keys, predecessor: last, successor: first,
                       secondPredecessor: Placement.secondPredecessor(keys.count, keys.map(\.signing), o.signing), from: node.cursor)
            members = [o.signing] + keys.map(\.signing)
            auth.members = members
            node.watchFilters = OwnerAgent.watchFilters(members)
            evicting = nil
        }
        guard rotation.isIdle else { return acted }
        endedAtLastRotation = answered + refused
        if let ev = evicting {
            // Abandoned: the compromised block is still in the ring, so its queries are refused.
            evicting = nil
            while let p = parked.first {
                try end(p.queryID, .compromised, ev.reason + "; evicting it to a spare failed (the key rotation was abandoned)")
                parked.removeFirst()
            }
        }
        try rerunParkedQueries()
        try releaseHeldQueries()
        return true
    }

    /// Validation named `culprit` (a ring position) for query `q`, on an alarm by the member at `accuser`: evicts it
    /// to a spare and runs the query again once the spare holds its slot — the query is parked meanwhile. Returns
    /// false (the caller refuses the query) when there is nothing to evict it to, when the block to evict holds a
    /// file too big for one ledger entry, or when the query caused too many evictions already.
    ///
    /// A slot a spare was placed in (fresh from the owner's checkpoint) named again by its successor points away
    /// from the spare: on a hash mismatch at Prop. 1's other suspect, the block that computed the H — the slot's
    /// predecessor, which the alarm's `hashFrom` must name (never a block the accuser picks freely); for any other
    /// reason at the accuser itself. So one compromised block costs at most one spare before it is suspected.
    private func evict(_ q: String, culprit: Int, accuser: Int, alarm v: ValidationAlarm, why: String) throws -> Bool {
        guard culprit > 0, let o = open[q], evictionsFor[q, default: 0] < OwnerAgent.maxEvictionsPerQuery else { return false }
        var target = culprit
        var reason = why
        let r = ring.record
        if accuser == (culprit + 1) % members.count, r.spares.contains(where: { $0.placed != nil && $0.id == r.order[culprit - 1] }) {
            if v.reason == .hashMismatch {
                guard culprit - 1 > 0, v.hashFrom == members[culprit - 1] else { return false }
                target = culprit - 1
                reason = "\(describe(members[culprit])), a spare placed from the checkpoint, was named again on a hash mismatch: the H it failed was computed by \(describe(members[culprit - 1])) (Prop. 1's other suspect)"
            } else {
                guard accuser > 0 else { return false }
                target = accuser
                reason = "\(describe(members[culprit])), a spare placed from the checkpoint, was named again by \(describe(members[accuser])), which is suspected now"
            }
        }
        guard r.fileSizes[target] + (1 << 16) <= LedgerEntry.maxPayload else { return false }
        if evicting == nil {
            guard let spare = rotation.availableSpare else { return false }
            evicting = KeyRotation.Eviction(position: target, spare: spare, reason: reason)
            events.append((q, "evicting", "\(describe(members[target])): \(reason); spare \(spare.id) takes its ring position, and the query runs again"))
        }
        // (With an eviction under way for another block, the query waits for it and runs again: if its own culprit
        // is still in the ring, validation names it again.)
        open[q] = nil
        node.querents[q] = nil
        parked.append((q, o.from))
        evictionsFor[q, default: 0] += 1
        requestRotation()
        return true
    }

    /// At start: queries an earlier process of the owner parked for an eviction and had not run again — started
    /// (their querent known) and not delivered, their last post older than the current generation's announcement,
    /// so under keys that have left — are parked again, to run under the current generation.
    private func resumeParkedQueries(window: Int64) throws {
        let announced = rotation.announcedAt
        guard announced > 0 else { return }
        let mine = [EntryFilter(kind: .layer, author: node.publicKeys.signing)]
        let before = try ledger.headers(in: max(1, announced - window)...announced, matching: mine)
        let after = Set(try ledger.headers(in: announced...max(announced, try ledger.lastSequence()), matching: mine).compactMap(\.queryID))
        var seen = Set<String>()
        for h in before.reversed() {
            guard let q = h.queryID, seen.insert(q).inserted, node.querents[q] != nil, !after.contains(q),
                  let e = try ledger.entry(at: h.sequence), e.isAuthentic, let p = try? LayerPost.decode(e) else { continue }
            node.querents[q] = nil
            parked.append((q, p.consumed))
            events.append((q, "parked", "started under keys that have left the ring (the owner stopped before it ran again): it runs again"))
        }
        parked.reverse()
    }

    /// Runs the parked queries again from their rows, under the new generation (one at a time, each taken off the
    /// list once started).
    private func rerunParkedQueries() throws {
        while let p = parked.first {
            if let e = try ledger.entry(at: p.from), e.kind == .query, e.queryID == p.queryID {
                // (An append that fails leaves the query first on the list, for the next step.)
                try node.startQuery(e, ledger: ledger, again: true)
                if node.querents[p.queryID] != nil { open[p.queryID] = (now(), p.from) }
                events.append((p.queryID, "running again", "under generation \(ring.record.generation)"))
            }
            parked.removeFirst()
        }
    }

    /// Starts the queries that arrived during a rotation (they are open from now on: their deadline runs from here).
    /// (One at a time, each taken off the list once started: an outage half-way leaves the rest for the next step.)
    private func releaseHeldQueries() throws {
        node.holdQueries = false
        while let seq = node.heldQueries.first {
            if let e = try ledger.entry(at: seq), e.kind == .query, let q = e.queryID {
                // (An append that fails leaves the query first on the list, for the next step.)
                try node.startQuery(e, ledger: ledger)
                if node.querents[q] != nil && open[q] == nil { open[q] = (now(), e.sequence) }
            }
            node.heldQueries.removeFirst()
        }
    }

    /// Takes the events since the last call.
    public func takeEvents() -> [(queryID: String, event: String, detail: String)] {
        defer { events.removeAll() }
        return events
    }

    func describe(_ key: [UInt8]?) -> String { AuthenticityRounds.describe(key, members: members, ring: ring) }

    /// Follows the queries: a query row opens one; the ouroboros's delivery ends it; a member's final validation
    /// alarm ends it with a refusal naming the suspects; the deadline ends it with a `silent` alarm and a refusal.
    private func watch() throws -> Bool {
        var acted = false
        // What the ouroboros read in its page, and its own deliveries and alarms: a query it has not reached yet is
        // not open yet.
        let tail = node.cursor
        var seen = node.watched.sorted(by: { $0.sequence < $1.sequence })[...]
        node.watched.removeAll()
        // An error (an append that failed in an outage) leaves the rows not handled yet for the next round.
        defer { node.watched = Array(seen) + node.watched }
        var handled = Set<Int64>()
        while let e = seen.first {
            guard handled.insert(e.sequence).inserted, let q = e.queryID else { seen.removeFirst(); continue }
            switch e.kind {
            case .query:
                // Started by the ouroboros (an authentic query it could open) and not ended yet.
                if open[q] == nil && node.querents[q] != nil { open[q] = (now(), e.sequence) }
            case .delivery:
                if open.removeValue(forKey: q) != nil {
                    answered += 1
                    events.append((q, "delivered", ""))
                }
            case .alarm:
                // (Not for a query the ouroboros delivered already: an alarm read in the same page as the last
                // block's post comes before the delivery.)
                guard open[q] != nil, node.querents[q] != nil, e.isAuthentic, members.contains(e.author),
                      let a = try? Alarm.decode(e), case .validation(let v) = a.body, v.final else { break }
                // Prop. 1 names a block only from its successor, the one member that validates its output; an
                // alarm from anyone else names its own author (a member raising alarms it cannot have seen).
                let why: String
                let culprit: Int
                let accuser = members.firstIndex(of: e.author) ?? 0
                if let js = members.firstIndex(of: v.suspect), accuser == (js + 1) % members.count {
                    culprit = js
                    if v.reason == .hashMismatch {
                        why = "validation failed for good; \(describe(v.suspect)), or \(v.hashFrom.map { describe($0) } ?? "the block holding the copy of its layer"), is compromised (or \(describe(e.author)), which validated it)"
                    } else {
                        why = "\(describe(v.suspect)): \(v.reason) (reported by \(describe(e.author)), which validates it; one of the two is compromised)"
                    }
                } else {
                    culprit = accuser
                    why = "\(describe(e.author)) raised an alarm about \(describe(v.suspect)), whose output it does not validate: \(describe(e.author)) is compromised"
                }
                acted = true
                if try evict(q, culprit: culprit, accuser: accuser, alarm: v, why: why) { break }
                let note = ring.record.spares.isEmpty ? "" : evictionsFor[q] != nil ? "; evicting did not help" : "; no spare block is left to take its place"
                try end(q, .compromised, why + note)
            default: break
            }
            seen.removeFirst()
        }
        let t = now()
        for (q, o) in open where t - o.started > queryTimeout {
            // Headers from the query row on (no payloads, no scan of the whole ledger), then the one post needed.
            let posts = try ledger.headers(in: o.from...max(o.from, tail), matching: members.map { EntryFilter(kind: .layer, author: $0, queryID: q) })
            var silent = members.count > 1 ? members[1] : members[0]
            if let h = posts.last, let last = try ledger.entry(at: h.sequence), last.isAuthentic, let p = try? LayerPost.decode(last) { silent = p.recipient }
            if !posts.isEmpty || node.querents[q] != nil {
                try node.appendOwn(.alarm, q, Alarm(.silent(member: silent)).encoded(), ledger)
            }
            try end(q, .timeout, "\(describe(silent)) did not answer within \(Int(queryTimeout)) s (\(posts.count) layer posts for the query)")
            acted = true
        }
        return acted
    }

    // MARK: the authenticity round across hosts (§3.3, §3.4.4)

    /// HASH_O (Eq. 2) over the parameters the ouroboros computes with.
    private var ouroborosHash: [UInt8] {
        HashChain.hashes(holders: [(held[0].current(in: node.own), held[1].current(in: node.next))])[0]
    }

    /// Reads the running round; when it ends, restores the ouroboros's own parameters if they differ, and calls the
    /// next round at once after a restore (repeat until authentic).
    private func collect() throws -> Bool {
        let (acted, outcome) = try auth.collect()
        events += auth.events
        auth.events.removeAll()
        guard let o = outcome else { return acted }
        lastRoundEnd = now()
        switch o {
        case .ouroborosTampered:
            node.replaceLayers(own: try checkpoint[0].model(), next: try checkpoint[1].model())
            lastRoundEnd = nil
        case .restoring:
            lastRoundEnd = nil
        case .authentic, .notAuthentic:
            break
        }
        return true
    }

    /// Ends an open query with a refusal (no answer will follow: the ouroboros forgets its querent).
    private func end(_ q: String, _ reason: RefusalReason, _ detail: String) throws {
        open[q] = nil
        node.querents[q] = nil
        try node.appendOwn(.delivery, q, Delivery(.refusal(reason, detail: detail)).encoded(), ledger)
        refused += 1
        events.append((q, "refused", "\(reason): \(detail)"))
    }
}
