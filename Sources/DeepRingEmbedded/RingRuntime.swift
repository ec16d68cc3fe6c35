import Crypto
import DeepRingBlock
import DeepRingClient
import DeepRingEngine
import DeepRingLedger
import DeepRingLedgerSQLite
import DeepRingNode
import DeepRingOwner
import DeepRingProtocol
import Foundation

/// Runs a sealed ring on one host — the embedded deployment: every member loaded from its own folder, answering
/// queries through the ledger only (Query phase, Eq. 3; Processing, Eqs. 4–11; Validation, Eq. 13; Delivery,
/// Eq. 12). Before it serves, and before every `verifyEvery`-th query, the owner checks everything the ring depends
/// on (`RingCheck`) and repairs what it can — tracking mode: queries wait while tampered blocks are restored and
/// broken ones re-provisioned, with `alarm` and `restore` entries on the ledger. One runtime per ring at a time.
public final class RingRuntime {
    public private(set) var ring: SealedRing
    public let ledger: SQLiteLedger
    /// The blocks' shared read snapshot of the ledger (one database read per scheduling round, not one per block).
    let view: LedgerView
    var nodes: [RingNode] = []
    var ouroboros: RingNode { nodes[0] }
    /// The querent's side: the manifest it trusts (by default the owner's; `deepring query` sets the one it pinned).
    /// It runs in this process with the members, so it shares their memo of authentic entries.
    public var querent: Querent { didSet { querent.authenticEntries = authenticEntries } }
    public var verifyEvery: Int = 1
    /// Reshuffle the placement and rotate block keys after every `reshuffleEvery` queries (1 = after each, as in
    /// the paper; 0 = never, for measurements).
    public var reshuffleEvery: Int = 1
    /// Seconds a query may take before it is given up, naming the member that went silent.
    public var queryTimeout: Double = 120
    var queriesSinceReshuffle = 0
    /// Held for the runtime's life (until `close()`): one runtime per ring at a time.
    private var lock: RingLock?
    var queriesSinceCheck = Int.max / 2
    public private(set) var restores: [String] = []
    public private(set) var reprovisioned: [String] = []
    /// Time spent in tracking mode (restoring tampered blocks) while queries waited.
    public private(set) var trackingSeconds = 0.0
    /// What to do when validation fails for good for a query (a block computes, perturbs or forges wrongly).
    public enum CompromisePolicy: Sendable {
        /// Refuse the query (the paper's behaviour after its retries): never a wrong answer, but no answer.
        case refuse
        /// Evict the suspects of Proposition 1 — the block whose post failed validation and, for a hash mismatch,
        /// the block holding the copy of its layer — re-provision them from the checkpoint with fresh keys, and answer
        /// the query again from the start. Our addition: a persistent attacker makes a plain retry fail forever.
        case evictAndRetry
    }
    public var onCompromisedBlock: CompromisePolicy = .refuse
    /// Positions evicted so far (policy `.evictAndRetry`).
    public private(set) var evictions: [Int] = []
    /// Per-phase time of all nodes (compute, crypto, ledger).
    public let timing = PhaseTiming()
    /// One memo of authentic entries for every member: all of them run in this process, so a post one member appended
    /// is checked by its receivers by comparing bytes, not by hashing it again (`AuthenticEntries`).
    public let authenticEntries = AuthenticEntries(capacity: 64, maxBytes: 64 << 20)

    /// Opens the ring at `directory` as its one writer: waits up to `lockTimeout` seconds for another process
    /// running it (telling `onWait` once), completes an interrupted reshuffle, checks everything and repairs what can
    /// be repaired, and refuses to serve a ring it cannot trust.
    public init(directory: String, lockTimeout: Double = 30, onWait: ((String) -> Void)? = nil) throws {
        let paths = RingPaths(directory)
        lock = try paths.runtimeLock(timeout: lockTimeout, onWait: onWait)
        var (report, trusted) = try RingCheck.examine(directory)
        guard let checked = trusted else { throw RingError.notAuthentic(RingRuntime.summary(report)) }
        var rolledBack = false
        if FileManager.default.fileExists(atPath: paths.nextBlocks) {
            rolledBack = try SealedRing.completeReshuffle(paths, record: checked.record)
            (report, trusted) = try RingCheck.examine(directory)
        }
        guard let r = trusted else { throw RingError.notAuthentic(RingRuntime.summary(report)) }
        ring = r
        ledger = try SQLiteLedger(path: paths.ledger)
        if rolledBack {
            // A reshuffle killed between its announcement and its commit left the ledger naming keys never used:
            // the keys still in use are announced again, so that `ledger audit` accepts what they sign from now on.
            try r.announceMembers(ledger: ledger)
        }
        view = try LedgerView(ledger)
        querent = Querent(manifest: r.manifest)
        querent.authenticEntries = authenticEntries
        if !RingRuntime.servable(report) { try track(report) }
        try loadNodes()
        queriesSinceCheck = 0
    }

    static func summary(_ r: RingCheckReport) -> String {
        "the ring cannot be trusted: " + r.findings.prefix(5).map(\.description).joined(separator: "; ")
            + (r.findings.count > 5 ? "; and \(r.findings.count - 5) more (run `deepring verify`)" : "")
    }

    /// True when nothing the blocks compute with is off. Problems of the ledger's own form (a tampered row or
    /// schema, named by `verify` and `ledger audit`) cannot be repaired — it is append-only — and do not stop the
    /// ring: the blocks read rows as hostile input anyway. Nor do files that are not the ring's (named by `verify`).
    static func servable(_ report: RingCheckReport) -> Bool { report.findings.allSatisfy(informational) }

    static func informational(_ f: RingFinding) -> Bool {
        if f.subject == .ledger { return true }
        if case .path = f.subject, case .impossible = f.repair { return true }
        return false
    }

    /// Tracking mode: repairs what `report` found, or refuses when something cannot be repaired.
    func track(_ report: RingCheckReport) throws {
        let actionable = RingCheckReport(findings: report.findings.filter { !RingRuntime.informational($0) },
                                         firstTampered: report.firstTampered, notes: report.notes)
        guard actionable.repairable else { throw RingError.notAuthentic(RingRuntime.summary(actionable)) }
        let t0 = now()
        defer { trackingSeconds += now() - t0 }
        let done = try RingCheck.repair(ring, report: actionable, ledger: view)
        restores += done.restored + done.reprovisioned
        reprovisioned += done.reprovisioned
        let after = try RingCheck.run(ring.directory)
        guard RingRuntime.servable(after) else { throw RingError.notAuthentic(RingRuntime.summary(after)) }
    }

    /// Reshuffle (after delivery): new placement and fresh key pairs for every block; the nodes take them on.
    public func reshuffle() throws {
        let t0 = now()
        defer { timing.reshuffle += now() - t0 }
        let oldOrder = ring.record.order
        let placed = try ring.reshuffle(ledger: view)
        let byName = Dictionary(uniqueKeysWithValues: nodes.dropFirst().map { ($0.name, $0) })
        let o = ouroboros
        let signing = placed.map(\.keys.publicKeys.signing)
        for (j, p) in placed.enumerated() {
            guard let node = byName[oldOrder[j]] else { throw RingError.notARing("block \(oldOrder[j]) is not loaded") }
            node.rekey(name: p.id, keys: p.keys,
                       predecessor: j == 0 ? o.publicKeys : placed[j - 1].keys.publicKeys,
                       successor: j + 1 < placed.count ? placed[j + 1].keys.publicKeys : o.publicKeys,
                       secondPredecessor: Placement.secondPredecessor(j, signing, o.publicKeys.signing))
        }
        if let last = placed.last, let first = placed.first {
            o.rekey(name: o.name, keys: o.keys, predecessor: last.keys.publicKeys, successor: first.keys.publicKeys,
                    secondPredecessor: Placement.secondPredecessor(placed.count, signing, o.publicKeys.signing))
        }
        queriesSinceReshuffle = 0
        // Big batches are throughput-bound: the next placement is built while the next batch computes (on a
        // background thread). Small queries are latency-bound: that background work would slow the answer
        // (measured: batch-1 latency +1.5 ms), so their reshuffle builds the placement after the answer instead.
        if reshuffleEvery > 0 && lastBatch >= RingRuntime.backgroundReshuffleBatch { ring.prepareReshuffle() }
    }

    /// Waits for the placement being built in the background (before the ring folder is replaced or removed).
    public func finishBackgroundWork() {
        ring.pendingPlacement?.wait()
    }

    /// Finishes background work and gives up the ring (another process may run it now); queries are refused after.
    public func close() {
        finishBackgroundWork()
        lock = nil
    }

    /// The most inputs one query may carry through this ring (every post must fit in a ledger entry).
    public private(set) var maxBatch = RingNode.maxBatch

    /// Batch size of the latest query, and the size from which the next placement is prepared in the background.
    var lastBatch = 0
    static let backgroundReshuffleBatch = 32

    /// After each query: reshuffle when due, and let the ledger checkpoint its WAL in the background.
    func reshuffleIfDue() throws {
        defer { ledger.checkpointInBackground() }
        queriesSinceReshuffle += 1
        if reshuffleEvery > 0 && queriesSinceReshuffle >= reshuffleEvery { try reshuffle() }
    }

    /// Queries on the ledger that never ended — no delivery (an answer or a refusal) from the ouroboros — for example
    /// because the process answering them was killed, or because they were asked while no runtime ran. They are
    /// reported, never resumed: their querents are gone. Reads headers only (anyone may post big query rows).
    public func incompleteQueries() throws -> [String] {
        let tail = try ledger.lastSequence()
        guard tail > 0 else { return [] }
        let all = try ledger.headers(in: 1...tail, matching: [EntryFilter(kind: .query),
                                                             EntryFilter(kind: .delivery, author: ring.manifest.ouroboros.signing)])
        var open: [String] = []
        var ended = Set<String>()
        for h in all {
            guard let q = h.queryID else { continue }
            if h.kind == .query { open.append(q) } else { ended.insert(q) }
        }
        return open.filter { !ended.contains($0) }
    }

    /// Loads every member from its own folder (`BlockBundle`: descriptor signed by the owner, keys and parameters
    /// as it names), checks that the members form the ring the owner recorded — each one's neighbours' keys, and
    /// each layer's input shape the previous layer's output shape — and gives them the member set.
    func loadNodes(checkDigests: Bool = true) throws {
        let (oKeys, oLayers) = try ring.ouroborosHolding()
        var bundles: [BlockBundle] = []
        for id in ring.placement {
            let b = try BlockBundle.load(ring.blockDirectory(id), checkDigest: checkDigests)
            guard b.owner == ring.ownerKey, b.descriptor.generation == ring.record.generation, b.descriptor.ringID == ring.manifest.ringID,
                  b.descriptor.ouroboros == ring.manifest.ouroboros else {
                throw RingError.notAuthentic("block \(id) belongs to another owner, ring or placement")
            }
            bundles.append(b)
        }
        let o = oKeys.publicKeys
        var blocks: [RingNode] = []
        var shape = ring.manifest.inputShape
        let signing = bundles.map(\.keys.publicKeys.signing)
        for (j, b) in bundles.enumerated() {
            let prev = j == 0 ? o : bundles[j - 1].keys.publicKeys
            let succ = j + 1 < bundles.count ? bundles[j + 1].keys.publicKeys : o
            let second = Placement.secondPredecessor(j, signing, o.signing)
            guard b.descriptor.predecessor == prev, b.descriptor.successor == succ, b.descriptor.secondPredecessor == hex(second) else {
                throw RingError.notAuthentic("block \(b.id)'s descriptor names other neighbours than the ring holds")
            }
            let node = try RingNode(name: b.id, keys: b.keys, predecessor: prev, successor: succ, secondPredecessor: second,
                                    own: b.own, next: b.next,
                                    isOuroboros: false, nextIsOuroboros: j + 1 == bundles.count, ouroborosKey: o.signing,
                                    inputShape: b.own.inputShape)
            guard node.own.inputShape == shape else {
                throw RingError.notAuthentic("block \(b.id)'s layer takes \(node.own.inputShape), but receives \(shape)")
            }
            // The last block's copy of the next layer is the ouroboros's identity layer, never run (its H is the hash
            // of its own output).
            guard node.nextIsOuroboros || node.next.inputShape == node.own.outputShape else {
                throw RingError.notAuthentic("block \(b.id)'s copy of the next layer takes \(node.next.inputShape), but its layer gives \(node.own.outputShape)")
            }
            shape = node.own.outputShape
            blocks.append(node)
        }
        guard let last = bundles.last, let first = bundles.first else { throw RingError.notARing("the ring has no blocks") }
        let ouroNode = try RingNode(name: "ouroboros", keys: oKeys, predecessor: last.keys.publicKeys, successor: first.keys.publicKeys,
                                    secondPredecessor: Placement.secondPredecessor(bundles.count, signing, o.signing), own: oLayers[0], next: oLayers[1], isOuroboros: true, nextIsOuroboros: false,
                                    ouroborosKey: o.signing, inputShape: shape)
        guard ouroNode.own.inputShape == ring.manifest.inputShape, ouroNode.next.inputShape == ring.manifest.inputShape else {
            throw RingError.notAuthentic("the ouroboros's holding does not fit the manifest's input shape")
        }
        // One process holds every block here: where a block's layer and its predecessor's copy of it are the same
        // bytes (as sealed), the two compute with one model, so a query reads each layer's weights from memory once,
        // not twice (at batch 1 those reads are most of the compute). Tampering reaches a node only through its files, read again
        // above and compared here: a copy that differs from the layer it copies is never shared, so Eq. 13 still
        // compares two independent computations wherever they disagree.
        let holders = [ouroNode] + blocks                      // holders[j] holds the copy of block j's layer
        let copies = [oLayers[1]] + bundles.map(\.next)
        for j in 0..<bundles.count where copies[j].isBitIdentical(to: bundles[j].own) {
            blocks[j].replaceLayers(own: holders[j].next, next: blocks[j].next)
        }
        let cursor = try view.lastSequence()
        nodes = [ouroNode] + blocks
        // Every post must fit in one ledger entry: the widest tensor a query carries bounds its batch.
        let widest = ([ring.manifest.inputShape] + blocks.map(\.own.outputShape)).map { $0.reduce(1, *) }.max() ?? 1
        maxBatch = max(1, min(RingNode.maxBatch, (LedgerEntry.maxPayload - (1 << 16)) / (4 * widest)))
        for n in nodes { n.cursor = cursor; n.timing = timing; n.maxBatch = maxBatch; n.authenticEntries = authenticEntries }
    }

    /// Attack hook: the named block perturbs its input before computing (off unless set).
    public func setPerturbation(block: String, _ f: ((Tensor) -> Tensor)?) {
        nodes.first { $0.name == block }?.perturbInput = f
    }

    /// Attack hook by ring position (1 = the block computing the first layer; only the owner knows positions).
    /// The perturbation follows the block through reshuffles.
    public func setPerturbation(position: Int, _ f: ((Tensor) -> Tensor)?) throws {
        setPerturbation(block: try blockName(position: position), f)
    }

    /// Attack hook: the block at `position` holds valid keys and forges its posts by `route`, wanting `forge(honest)`
    /// delivered instead of its honest output (same shape); `accomplice` is the ring position of a colluding block
    /// (route `vouchedByNonNeighbour`). Nil turns it off.
    public func setForgery(position: Int, _ route: ForgeryRoute?, accomplice: Int? = nil,
                           forge: @escaping @Sendable (Tensor) -> Tensor = { $0 }) throws {
        let name = try blockName(position: position)
        let partner = try accomplice.map { p in try blockName(position: p) }.flatMap { n in nodes.first { $0.name == n } }
        nodes.first { $0.name == name }?.forgery = route.map { Forgery(route: $0, forge: forge, accomplice: partner) }
    }

    func blockName(position: Int) throws -> String {
        guard position >= 1 && position <= ring.placement.count else {
            throw RingError.notARing("no block at ring position \(position): the ring has \(ring.placement.count) blocks")
        }
        return ring.placement[position - 1]
    }

    /// The signing key the block at `position` holds now (it changes at every reshuffle).
    public func signingKey(position: Int) throws -> [UInt8] {
        let name = try blockName(position: position)
        guard let n = nodes.first(where: { $0.name == name }) else { throw RingError.notARing("block \(name) is not loaded") }
        return n.publicKeys.signing
    }

    public var blockNames: [String] { nodes.dropFirst().map(\.name) }

    /// The check and, when anything is off, tracking (§3.3, §3.4.4): repair, then reload the blocks.
    public func ensureAuthentic() throws {
        let report = try RingCheck.run(ring.directory)
        if RingRuntime.servable(report) { return }
        try track(report)
        try reloadBlocks()
    }

    /// Re-reads every block's files, as running blocks would see them (a compromised block keeps its perturbation
    /// and forgery: they are the block's behaviour, not its files).
    public func reloadBlocks() throws { try reloadBlocks(dropping: []) }

    /// Reloads every node from its files; attack hooks stay with their blocks except those of `dropping`.
    func reloadBlocks(dropping: Set<String>, checkDigests: Bool = true) throws {
        let hooks = nodes.compactMap { n in (n.perturbInput != nil || n.forgery != nil) ? (n.name, n.perturbInput, n.forgery) : nil }
        try loadNodes(checkDigests: checkDigests)
        for (k, f, g) in hooks where !dropping.contains(k) {
            let n = nodes.first { $0.name == k }
            n?.perturbInput = f
            n?.forgery = g
        }
    }

    /// Evicts the blocks at `positions` and re-provisions them: tampered files are restored, every key rotates
    /// (reshuffle), and fresh nodes are loaded from the files (whatever the evicted blocks did is gone).
    func evict(positions: [Int]) throws {
        try ensureAuthentic()
        try reshuffle()
        // Positions are stable across a reshuffle; names are not: the evicted blocks' names are the new ones.
        try reloadBlocks(dropping: Set(positions.map { ring.placement[$0 - 1] }))
        evictions += positions
    }

    /// Answers one (batched) query. Throws — never a wrong answer — when validation fails for good, the ring
    /// refuses, or a member goes silent.
    public func query(_ x: Tensor) throws -> QueryResult { try query(x, attempt: 1) }

    /// The ring position of the block holding signing key `key` now (nil for the ouroboros or a non-member).
    func position(ofKey key: [UInt8]?) -> Int? {
        guard let key, let name = nodes.dropFirst().first(where: { $0.publicKeys.signing == key })?.name,
              let i = ring.placement.firstIndex(of: name) else { return nil }
        return i + 1
    }

    func describe(position p: Int?) -> String {
        guard let p else { return "a key outside the ring" }
        return "block \(ring.placement[p - 1]) (ring position \(p))"
    }

    func query(_ x: Tensor, attempt: Int) throws -> QueryResult {
        guard lock != nil else { throw RingError.busy("this runtime was closed") }
        let t0 = now()
        let shape = ring.manifest.inputShape
        guard x.shape.count >= 1, x.batch > 0, x.batch <= maxBatch,
              Array(x.shape.dropFirst()) == shape || x.itemSize == shape.reduce(1, *) else {
            throw QueryError.badInput("expected inputs of shape [N] + \(shape) with 1 ≤ N ≤ \(maxBatch) (this ring's posts must fit in a ledger entry), got \(x.shape)")
        }
        guard x.data.allSatisfy({ $0.isFinite }) else { throw QueryError.badInput("the input contains NaN or infinite values") }
        lastBatch = x.batch
        queriesSinceCheck += 1
        if queriesSinceCheck >= verifyEvery { try ensureAuthentic(); queriesSinceCheck = 0 }
        // Query phase (Eq. 3): a fresh querent key pair; the input sealed to the ouroboros's public key.
        let (queryID, keys, payload) = try timing.time(\.crypto) { try querent.ask(x.reshaped([x.batch] + shape)) }
        let posted = try timing.time(\.ledger) {
            try view.append(kind: .query, queryID: queryID, payload: payload, signer: LedgerSigner(keys.signing))
        }
        // Signed and appended in this process a moment ago: the ouroboros checks the row it reads by comparing bytes
        // with this entry, not by hashing the input (megabytes at batch 256) and verifying the signature again.
        authenticEntries.remember(posted)
        var alarms = 0
        var idle = 0
        var cursor = posted.sequence
        let deadline = t0 + queryTimeout
        let members = Set(nodes.map(\.publicKeys.signing))
        while true {
            var acted = false
            // Entries appended here reach the view at once; the database is read (one query) only when a round
            // found nothing to do, for what other processes may have appended.
            if idle > 0 { try timing.time(\.ledger) { try view.refresh() } }
            for n in nodes.shuffled() { if try n.step(ledger: view) { acted = true } }
            // Trouble with another querent's query stops only that query; trouble with ours is ours.
            for n in nodes {
                if let f = n.failures.first(where: { $0.queryID == queryID }) { n.failures.removeAll(); throw f.error }
                n.failures.removeAll()
            }
            let tail = try view.lastSequence()
            let mine = tail > cursor ? try view.entries(in: (cursor + 1)...tail, matching: [
                EntryFilter(kind: .alarm, queryID: queryID), EntryFilter(kind: .delivery, queryID: queryID)]) : []
            cursor = tail
            for e in mine {
                if e.kind == .delivery, let outcome = try querent.outcome(e, queryID: queryID, keys: keys, batch: x.batch) {
                    switch outcome {
                    case .success(let out):
                        let answered = now() - t0
                        try reshuffleIfDue()
                        return QueryResult(queryID: queryID, logits: out, alarms: alarms, seconds: answered)
                    case .failure(let refusal):
                        try reshuffleIfDue()
                        throw refusal
                    }
                }
                // Only ring members' alarms count: anyone may append, and a forged alarm must not end a query.
                guard e.kind == .alarm, members.contains(e.author), authenticEntries.isAuthentic(e), let a = try? Alarm.decode(e),
                      case .validation(let v) = a.body else { continue }
                alarms += 1
                guard v.final else { continue }
                var suspect = position(ofKey: v.suspect), hashFrom = position(ofKey: v.hashFrom)
                // Prop. 1 names a block only from its successor, the one member that validates its output (the last
                // block's successor is the ouroboros); an alarm from any other member names its own author.
                let author = position(ofKey: e.author), n = ring.placement.count
                let fromSuccessor = suspect.map { p in p < n ? author == p + 1 : e.author == ouroboros.publicKeys.signing } ?? false
                if !fromSuccessor {
                    suspect = author
                    hashFrom = nil
                }
                if onCompromisedBlock == .evictAndRetry && attempt == 1 {
                    let suspects = [suspect, hashFrom].compactMap { $0 }
                    try refuse(queryID, .compromised, "\(describe(position: suspect)): \(v.reason); evicted, and asked again")
                    try evict(positions: suspects)
                    var again = try query(x, attempt: 2)
                    again.alarms += alarms
                    again.evicted = suspects + again.evicted
                    again.seconds = now() - t0
                    return again
                }
                var why = "\(describe(position: suspect)): \(v.reason)"
                if !fromSuccessor {
                    why = "\(describe(position: author)) raised an alarm about a block whose output it does not validate: it is compromised"
                } else if v.reason == .hashMismatch {
                    why = "validation failed \(alarms) times; \(describe(position: suspect)), or \(hashFrom.map { describe(position: $0) } ?? "the block holding the copy of its layer"), is compromised"
                }
                try refuse(queryID, .compromised, why)
                try reshuffleIfDue()
                throw QueryError.failed(why)
            }
            idle = acted ? 0 : idle + 1
            if now() > deadline {
                // Out of time, with the ring still moving: nobody can be named silent.
                let why = "no answer within \(queryTimeout) s"
                try refuse(queryID, .timeout, why)
                try reshuffleIfDue()
                throw QueryError.timeout(why)
            }
            if idle > 3 {
                let why = try silence(queryID)
                try reshuffleIfDue()
                throw QueryError.timeout(why)
            }
        }
    }

    /// The ouroboros's refusal of a query (the querent's answer: no answer, and why).
    func refuse(_ queryID: String, _ reason: RefusalReason, _ detail: String) throws {
        try view.append(kind: .delivery, queryID: queryID, payload: Delivery(.refusal(reason, detail: detail)).encoded(), signer: ouroboros.signer)
    }

    /// A query that stopped moving: the member that was to act next never did. Names it in an alarm and refuses.
    func silence(_ queryID: String) throws -> String {
        let tail = try view.lastSequence()
        let posts = try view.entries(in: 1...max(1, tail), matching: [EntryFilter(kind: .layer, queryID: queryID)])
        var silent: [UInt8]? = nodes.count > 1 ? nodes[1].publicKeys.signing : nil
        if let last = posts.last, let p = try? LayerPost.decode(last) { silent = p.recipient }
        let who: String
        if let s = silent, s == ouroboros.publicKeys.signing { who = "the ouroboros" } else { who = describe(position: position(ofKey: silent)) }
        let detail = "\(who) never answered (\(posts.count) layer posts for the query)"
        if let s = silent {
            try view.append(kind: .alarm, queryID: queryID, payload: Alarm(.silent(member: s)).encoded(), signer: ouroboros.signer)
        }
        try refuse(queryID, .timeout, detail)
        return detail
    }
}
