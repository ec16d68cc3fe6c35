import Crypto
import DeepRingEngine
import DeepRingLedger
import DeepRingProtocol
import Foundation

/// Time spent per phase while answering queries (seconds), for `bench ring`.
public final class PhaseTiming: @unchecked Sendable {
    public var compute = 0.0, crypto = 0.0, ledger = 0.0
    /// Reshuffling the placement and rotating keys after each query (not part of answering it).
    public var reshuffle = 0.0
    public init() {}
    public func reset() { compute = 0; crypto = 0; ledger = 0; reshuffle = 0 }
    @inline(__always) package func time<T>(_ phase: ReferenceWritableKeyPath<PhaseTiming, Double>, _ body: () throws -> T) rethrows -> T {
        let t0 = now()
        defer { self[keyPath: phase] += now() - t0 }
        return try body()
    }
}

/// A ring member at work: a block, or the ouroboros. It knows its own keys, its neighbours' public keys, the ring's
/// member signing keys, its layer and its copy of the next layer — never its position — and talks only through the
/// ledger.
///
/// Processing (Eqs. 4–11): on a `layer` entry signed by its predecessor it establishes the H to validate against
/// (below), unwraps K with its HPKE key, decrypts X (AES-256-GCM, query id and keys bound as associated data),
/// validates the output (Eq. 13), computes its layer and posts S (the entry signature), K (a fresh AES-256 key
/// sealed to its successor), X (its output under K) and H (SHA-256 of the next layer's output, computed with its
/// copy of the next layer), naming the entry it consumed and its recipient.
///
/// Validation fails closed. The H for the predecessor's output is in the entry the predecessor consumed, so that
/// entry must be: on the ledger, with the hash the post names, authentic, of the same query, a layer post addressed
/// to the predecessor by the predecessor's own predecessor (whose signing key the owner-signed descriptor names) —
/// or, only when the predecessor is the ouroboros, the query itself (the ouroboros's output is the querent's input:
/// there is nothing to validate). So no block but the predecessor's neighbour can vouch for its output: only two
/// adjacent colluding blocks get past validation, as the paper's scheme allows. A post that
/// fails any of this, that cannot be decrypted, has the wrong shape, or is a second post for the same input that
/// nobody asked for, is an alarm naming its author (Prop. 1), never a skip. Only a hash mismatch may be retried.
package final class RingNode {
    package var timing = PhaseTiming()
    // Identity and neighbours change at every reshuffle; the layers never do.
    package private(set) var name: String
    package private(set) var keys: BlockKeys
    package private(set) var signer: LedgerSigner
    package private(set) var predecessor: PublicKeys
    package private(set) var successor: PublicKeys
    package private(set) var publicKeys: PublicKeys
    /// The signing key of the predecessor's predecessor: the one author whose post the predecessor may consume,
    /// whose H this node validates against.
    private(set) var secondPredecessor: [UInt8]
    /// The ouroboros's signing key: the only author whose post may consume a query row.
    let ouroborosKey: [UInt8]
    /// The layer this node computes and its copy of the next one (replaced only by a restore from the owner).
    package private(set) var own: Model
    package private(set) var next: Model
    let isOuroboros: Bool
    /// The successor is the ouroboros, whose layer is the identity: H is then the hash of this node's own output.
    package let nextIsOuroboros: Bool
    /// The shape (without batch) of what this node receives: its layer's input, or for the ouroboros the last
    /// layer's output.
    let inputShape: [Int]
    /// Attack hooks (off unless set): a block that perturbs its input, or that forges its posts.
    package var perturbInput: ((Tensor) -> Tensor)?
    package var forgery: Forgery?
    package var cursor: Int64 = 0
    /// Entries this process knows to be authentic (`AuthenticEntries`): the embedded runtime gives all its members one
    /// shared memo, so a row another member appended in the same process is checked by comparing bytes; a member
    /// process has its own. Rows the memo does not vouch for are checked in full.
    package var authenticEntries = AuthenticEntries()
    /// `e.isAuthentic` (stored hash recomputed, signature checked), answered by the memo when it vouches for `e`.
    func isAuthentic(_ e: LedgerEntry) -> Bool { authenticEntries.isAuthentic(e) }
    /// Pending queries at the ouroboros: query id → querent's HPKE key; and every query id seen (a second query
    /// with the same id is ignored: the first one's querent gets the answer).
    package var querents = BoundedMap<String, [UInt8]>(capacity: 1 << 12)
    private(set) var seenQueries = BoundedSet<String>(capacity: 1 << 16)
    /// Per query: this node's latest post (a retry is asked of exactly that post, once).
    private var lastPost = BoundedMap<String, Int64>(capacity: 1 << 12)
    /// The entry hashes of the predecessor's posts this node computed from: never computed from twice (after a
    /// restart, the window re-read holds posts already answered). Hashes, not sequence numbers: a database that
    /// lost its last lazily committed rows in a crash numbers the next rows the same.
    private var consumedEntries = BoundedSet<[UInt8]>(capacity: 1 << 14)
    /// Per query: the input accepted from the predecessor, and whether this node asked for a retry of it.
    private var accepted = BoundedMap<String, Acceptance>(capacity: RingNode.acceptedMemory)
    static let acceptedMemory = 1 << 12
    /// The inputs of the queries `accepted` remembers, oldest first; inputs at or before `acceptedFloor` may belong
    /// to queries it no longer remembers (or never saw: before a restart's resume point).
    private var acceptedInputs: [Int64] = []
    private var acceptedFloor: Int64 = 0
    /// Per query: the entry this node computed its own post from — the only input a retry may recompute from.
    private var computedFrom = BoundedMap<String, Int64>(capacity: 1 << 12)
    struct Acceptance { var input: Int64; var retryAsked: Bool; var failures: Int }
    static let maxRetries = 2
    package static let maxBatch = 1 << 16
    /// The most payload bytes one round of `step` reads.
    static let roundBudget = 256 << 20
    /// The most inputs one query may carry in this ring: every post (the input, each layer's output) must fit in a
    /// ledger entry. Set by the runtime from the layers' widths.
    package var maxBatch = RingNode.maxBatch
    /// Errors met while handling entries of a query, by query id: one query's trouble (another querent's, say) must not
    /// stop the others; the runtime raises those of its own query.
    package var failures: [(queryID: String, error: Error)] = []

    package init(name: String, keys: BlockKeys, predecessor: PublicKeys, successor: PublicKeys, secondPredecessor: [UInt8],
         own: RingLayer, next: RingLayer, isOuroboros: Bool, nextIsOuroboros: Bool, ouroborosKey: [UInt8], inputShape: [Int]) throws {
        self.name = name; self.keys = keys; self.signer = LedgerSigner(keys.signing); self.publicKeys = keys.publicKeys
        self.predecessor = predecessor; self.successor = successor; self.secondPredecessor = secondPredecessor
        self.own = try own.model(); self.next = try next.model()
        self.isOuroboros = isOuroboros; self.nextIsOuroboros = nextIsOuroboros
        self.ouroborosKey = ouroborosKey; self.inputShape = inputShape
    }

    /// Tracking: computes with restored parameters from now on (the same layers, as sealed).
    package func replaceLayers(own: Model, next: Model) { self.own = own; self.next = next }

    /// Takes on a new placement after a reshuffle: new id, new key pairs, new neighbours' public keys.
    package func rekey(name: String, keys: BlockKeys, predecessor: PublicKeys, successor: PublicKeys, secondPredecessor: [UInt8]) {
        self.name = name; self.keys = keys; self.signer = LedgerSigner(keys.signing)
        self.predecessor = predecessor; self.successor = successor; self.secondPredecessor = secondPredecessor
        self.publicKeys = keys.publicKeys
    }

    /// Takes on a new placement from the owner (a key rotation across hosts): new key pairs and neighbours, and a
    /// fresh start of the per-query bookkeeping, which belongs to the old keys (the owner rotates only when no query
    /// is in flight). Reads again from `from` on — the placement's own entry — with the new filters: a post from
    /// the new predecessor may follow it in the page already read.
    package func adopt(keys: BlockKeys, predecessor: PublicKeys, successor: PublicKeys, secondPredecessor: [UInt8], from: Int64) {
        rekey(name: name, keys: keys, predecessor: predecessor, successor: successor, secondPredecessor: secondPredecessor)
        lastPost = BoundedMap(capacity: 1 << 12)
        accepted = BoundedMap(capacity: RingNode.acceptedMemory)
        computedFrom = BoundedMap(capacity: 1 << 12)
        acceptedInputs.removeAll()
        recent.removeAll(); recentBytes = 0
        cursor = min(cursor, from)
        acceptedFloor = cursor
        lastRead = 0
    }

    /// At the ouroboros during a key rotation: query rows are not started (a query started now would meet members
    /// changing keys under it) but noted by sequence number in `heldQueries` — numbers, not rows: anyone may post
    /// big query rows while the ring drains — and the owner starts them once the rotation ends (at most
    /// `maxHeldQueries`; a querent whose row is beyond gets a refusal naming the rotation).
    package var holdQueries = false
    package var heldQueries: [Int64] = []
    static let maxHeldQueries = 1 << 16

    // MARK: posting

    /// Posts this node's output for `queryID`, computed from entry `consumed`.
    func post(output: Tensor, queryID: String, consumed: LedgerEntry, ledger: any Ledger) throws {
        var out = output, input = consumed
        if let f = forgery {
            switch try f.prepare(output: output, queryID: queryID, consumed: consumed, node: self, ledger: ledger) {
            case .post(let o, let c): out = o; input = c
            case .skip: return
            }
        }
        let nextOutput = try timing.time(\.compute) { nextIsOuroboros ? out : try next.checkedForward(out) }
        var h: [UInt8] = []
        let (k, x) = try timing.time(\.crypto) { () throws -> ([UInt8], Data) in
            let aesKey = SymmetricKey(size: .bits256)     // fresh for every message: never reused
            let a = LayerPost.aad(queryID: queryID, from: publicKeys.signing, to: successor.signing)
            // H (a SHA-256 pass over the next output) and X (AES-GCM over this output) are independent: for
            // big tensors they run on two threads.
            var x: Result<Data, Error> = .failure(ProtocolError.decryptionFailed)
            Parallel.forEach(2, threads: RingNode.parallel(out.count + nextOutput.count)) { i in
                if i == 0 { h = TensorWire.hash(nextOutput) } else {
                    x = Result {
                        guard let c = try AES.GCM.seal(TensorWire.encode(out), using: aesKey, authenticating: a).combined else {
                            throw ProtocolError.decryptionFailed
                        }
                        return c
                    }
                }
            }
            let to = forgery?.keyRecipient(successor.agreement) ?? successor.agreement
            let k = try aesKey.withUnsafeBytes { try HPKEBox.seal(Array($0), to: to, aad: a) }
            return (k, try x.get())
        }
        if let f = forgery { h = f.adjust(hash: h) }
        let payload = LayerPost(consumed: input.sequence, consumedHash: input.hash, recipient: successor.signing,
                                sealedKey: k, ciphertext: ArraySlice(x), nextHash: h).encoded()
        // Only while the input is on the ledger: a server that crashed may have lost it (with its last lazily
        // committed rows) after this node read it, and a post of a lost input would name its own number as input.
        let mine = try timing.time(\.ledger) { try appendOwn(.layer, queryID, payload, ledger, requiring: EntryReference(consumed)) }
        lastPost[queryID] = mine.sequence
        _ = consumedEntries.insert(consumed.hash)
        if computedFrom[queryID] == nil { computedFrom[queryID] = consumed.sequence }
        try forgery?.after(output: output, queryID: queryID, consumed: consumed, node: self, ledger: ledger)
    }

    /// Threads for a pair of independent crypto passes over `floats` values: two when it is big enough to repay
    /// the hand-off (≈ 64 KB), else one.
    static func parallel(_ floats: Int) -> Int { floats >= 16_384 ? 2 : 1 }

    // MARK: receiving

    /// What a layer post from the predecessor turned out to be.
    enum Received {
        case input(Tensor, post: LayerPost)
        case rejected(ValidationFailure, hashFrom: [UInt8]?, input: Int64?)
    }

    /// Establishes the reference for a post from the predecessor: the entry it consumed must be its input for this
    /// query. Returns the H to validate against (nil only for the ouroboros's post, which consumed the query) and the
    /// author of that H, or the failure.
    func reference(for post: LayerPost, of e: LedgerEntry, ledger: any Ledger) throws -> Result<(h: [UInt8]?, from: [UInt8]?), ValidationFailure> {
        guard post.recipient == publicKeys.signing else { return .failure(.misaddressed) }
        guard let c = try recentlyRead(post.consumed) ?? ledger.entry(at: post.consumed), c.hash == post.consumedHash else { return .failure(.missingInput) }
        guard c.sequence < e.sequence else { return .failure(.missingInput) }
        guard timing.time(\.crypto, { isAuthentic(c) }) else { return .failure(.inputNotAuthentic) }
        guard c.queryID == e.queryID else { return .failure(.inputOfAnotherQuery) }
        switch c.kind {
        case .query:
            return e.author == ouroborosKey ? .success((nil, nil)) : .failure(.queryRowConsumed)
        case .layer:
            // The ouroboros's own post starts the ring from the query, never from a layer post.
            guard e.author != ouroborosKey else { return .failure(.unexpectedInput) }
            guard let prior = try? LayerPost.decode(c) else { return .failure(.unexpectedInput) }
            guard prior.recipient == e.author, c.author != e.author else { return .failure(.inputNotAddressedToSender) }
            guard c.author == secondPredecessor else { return .failure(.inputNotFromPredecessor) }
            return .success((prior.nextHash, c.author))
        default:
            return .failure(.unexpectedInput)
        }
    }

    /// Checks and opens a layer post from the predecessor: the reference H (see `reference`), then — side by side for
    /// big payloads — the entry's stored hash and signature on one thread, and on the other K and X decrypted and the
    /// plaintext hashed for Eq. 13; then the shape and the hash. Nil when the entry is not authentic (not the
    /// predecessor's at all: skipped, and `ledger audit` names it).
    func receive(_ e: LedgerEntry, ledger: any Ledger) throws -> Received? {
        guard let post = try? LayerPost.decode(e) else {
            return timing.time(\.crypto, { isAuthentic(e) }) ? .rejected(.malformedPost, hashFrom: nil, input: nil) : nil
        }
        let ref: (h: [UInt8]?, from: [UInt8]?)
        switch try reference(for: post, of: e, ledger: ledger) {
        case .failure(let f): return timing.time(\.crypto, { isAuthentic(e) }) ? .rejected(f, hashFrom: nil, input: post.consumed) : nil
        case .success(let r): ref = r
        }
        return try timing.time(\.crypto) { () throws -> Received? in
            var authentic = false, opened: Result<Tensor, Error> = .failure(ProtocolError.decryptionFailed)
            var inputHash: [UInt8]?
            Parallel.forEach(2, threads: RingNode.parallel(post.ciphertext.count / 4)) { i in
                if i == 0 { authentic = isAuthentic(e) } else {
                    opened = Result { try open(post, from: e) }
                    if ref.h != nil, case .success(let t) = opened { inputHash = TensorWire.hash(t) }
                }
            }
            guard authentic else { return nil }
            guard case .success(let x) = opened else { return .rejected(.undecryptable, hashFrom: nil, input: post.consumed) }
            guard x.shape.count == inputShape.count + 1, x.batch >= 1, x.batch <= maxBatch,
                  Array(x.shape.dropFirst()) == inputShape else {
                return .rejected(.wrongShape, hashFrom: nil, input: post.consumed)
            }
            if let h = ref.h, h != inputHash { return .rejected(.hashMismatch, hashFrom: ref.from, input: post.consumed) }
            return .input(x, post: post)
        }
    }

    /// Opens K and X of a post addressed to this node.
    func open(_ p: LayerPost, from e: LedgerEntry) throws -> Tensor {
        let a = LayerPost.aad(queryID: e.queryID ?? "", from: e.author, to: publicKeys.signing)
        let keyBytes = try HPKEBox.open(p.sealedKey[...], with: keys.agreement, aad: a)
        guard keyBytes.count == 32 else { throw ProtocolError.malformed("K is not an AES-256 key") }
        do {
            let box = try AES.GCM.SealedBox(combined: p.ciphertext)
            return try TensorWire.decode(try AES.GCM.open(box, using: SymmetricKey(data: keyBytes), authenticating: a))
        } catch let e as ProtocolError { throw e } catch { throw ProtocolError.decryptionFailed }
    }

    /// Posts an alarm naming the author of `e` for `failure`.
    func alarm(_ e: LedgerEntry, _ failure: ValidationFailure, hashFrom: [UInt8]?, input: Int64?, final: Bool, ledger: any Ledger) throws {
        let a = ValidationAlarm(suspect: e.author, hashFrom: hashFrom, entry: e.sequence, input: input, reason: failure, final: final)
        try appendOwn(.alarm, e.queryID, Alarm(.validation(a)).encoded(), ledger)
    }

    // MARK: the ouroboros's duties

    /// Query phase (Eq. 3) at the ouroboros: anyone may post a query, so everything is checked, and a query that
    /// cannot be answered gets a refusal (never a crash of the ring, never silence).
    /// `again`: a query started before, run again from its row (after its compromised block was evicted).
    /// A query is seen once its post (or refusal) is on the ledger: one whose append failed (an outage) is started
    /// again when its row is handled again.
    package func startQuery(_ e: LedgerEntry, ledger: any Ledger, again: Bool = false) throws {
        guard let q = e.queryID, timing.time(\.crypto, { isAuthentic(e) }) else { return }
        guard again || !seenQueries.contains(q) else { return }
        do {
            try open(e, queryID: q, ledger: ledger)
        } catch {
            querents[q] = nil
            throw error
        }
        _ = seenQueries.insert(q)
    }

    private func open(_ e: LedgerEntry, queryID q: String, ledger: any Ledger) throws {
        func refuse(_ r: RefusalReason, _ detail: String) throws {
            try appendOwn(.delivery, q, Delivery(.refusal(r, detail: detail)).encoded(), ledger)
        }
        guard let request = try? QueryRequest.decode(e) else { return try refuse(.badInput, "the query payload does not decode") }
        guard let plain = try? timing.time(\.crypto, {
            try HPKEBox.open(request.sealedInput[...], with: keys.agreement, aad: QueryRequest.aad(queryID: q, querent: request.querent))
        }) else {
            return try refuse(.undecryptable, "the input is not sealed to this ring's ouroboros key")
        }
        guard let x = try? TensorWire.decode(plain) else { return try refuse(.badInput, "the input tensor does not decode") }
        guard x.shape.count == own.inputShape.count + 1, x.batch >= 1, x.batch <= maxBatch,
              Array(x.shape.dropFirst()) == own.inputShape else {
            return try refuse(.badInput, "expected inputs of shape [N] + \(own.inputShape) with 1 ≤ N ≤ \(maxBatch), got \(x.shape)")
        }
        guard x.data.allSatisfy({ $0.isFinite }) else { return try refuse(.badInput, "the input contains NaN or infinite values") }
        querents[q] = request.querent
        // The ouroboros's layer is the identity (W = I, b = 0): its output is its input, not recomputed.
        try post(output: x, queryID: q, consumed: e, ledger: ledger)
    }

    /// Delivery (Eq. 12): the validated last output, sealed to the querent.
    func deliver(_ output: Tensor, queryID q: String, from e: LedgerEntry, ledger: any Ledger) throws {
        guard let querent = querents[q] else { return }
        querents[q] = nil
        let sealed = try timing.time(\.crypto) {
            try HPKEBox.seal(TensorWire.encode(output), to: querent, aad: QueryRequest.aad(queryID: q, querent: querent))
        }
        // Only while the last block's post is on the ledger (as for a layer post): every answer stays traceable.
        try appendOwn(.delivery, q, Delivery(.answer(sealed: sealed)).encoded(), ledger, requiring: EntryReference(e))
    }

    /// True when the second predecessor's posts are read with each page (kept in `recent` for `reference`).
    var cachesSecondPredecessor: Bool { secondPredecessor != predecessor.signing && secondPredecessor != publicKeys.signing }
    /// The second predecessor's latest posts, newest last, at most `recentBudget` payload bytes (an entry of more is
    /// not kept: it is read again when needed).
    private var recent: [LedgerEntry] = []
    private var recentBytes = 0
    static let recentBudget = 32 << 20

    private func remember(_ e: LedgerEntry) {
        guard e.payload.count <= RingNode.recentBudget / 4 else { return }
        recent.append(e)
        recentBytes += e.payload.count
        while recentBytes > RingNode.recentBudget || recent.count > 256, let first = recent.first {
            recentBytes -= first.payload.count
            recent.removeFirst()
        }
    }

    private func recentlyRead(_ sequence: Int64) -> LedgerEntry? { recent.last { $0.sequence == sequence } }

    /// Appends an entry of this node's, and notes its sequence number: the next round need not read back its own
    /// entries when nobody appended in between.
    @discardableResult
    package func appendOwn(_ kind: EntryKind, _ queryID: String?, _ payload: [UInt8], _ ledger: any Ledger,
                   requiring: EntryReference? = nil) throws -> LedgerEntry {
        let e = try ledger.append(kind: kind, queryID: queryID, payload: payload, signer: signer, requiring: requiring)
        authenticEntries.remember(e)
        ownAppends.append(e.sequence)
        if watchFilters.contains(where: { $0.matches(e) }) { watched.append(e) }
        return e
    }
    /// Rows its owner follows (the ouroboros's bookkeeping of open queries: queries, deliveries, alarms), read with
    /// the node's page and collected in `watched` with the node's own appends of those kinds — in the order read
    /// or appended; an own append read back later appears twice.
    package var watchFilters: [EntryFilter] = []
    package var watched: [LedgerEntry] = []
    private var ownAppends: [Int64] = []
    /// Rows of kinds the node itself never handles (the authenticity round's) that its owner wants read with the
    /// node's page — one read per round, not two — and collected in `sideEntries` for it.
    package var sideFilters: [EntryFilter] = []
    package var sideEntries: [LedgerEntry] = []
    /// Side rows after which the page ends (handled by the owner before anything that follows them).
    package var endsPage: ((LedgerEntry) -> Bool)?
    static let sideKinds: Set<EntryKind> = [.challenge, .attestation, .restore, .rotation, .rekey, .placement]
    private var seenEpoch = 0
    static let rereadAfterLoss: Int64 = 2000
    /// When this node last read its page; it reads at least every `maxReadInterval` seconds.
    private var lastRead = 0.0
    static let maxReadInterval = 1.0

    // MARK: resuming

    /// Picks up where an earlier process of this member stopped (a block or owner process killed and started
    /// again): reads this member's own posts since shortly before its last entry (or among the last `window`
    /// entries, if more) — so that no input it already
    /// answered is answered twice (its successor would raise a second-post alarm) and no retry is made twice — then
    /// sets the cursor before the window, so that inputs that arrived while it was down are answered now. At the
    /// ouroboros, queries it already started or ended are not started again, and those started but not delivered
    /// get their querent's key back from the query row. Returns the number of own posts found.
    @discardableResult
    ///
    /// `floor`: nothing at or before it is this member's (a spare's placement: the slot was another block's before).
    package func resume(ledger: any Ledger, window: Int64, after floor: Int64 = 0) throws -> Int {
        let tail = try ledger.lastSequence()
        let me = publicKeys.signing
        // From the member's own last entry on (less a margin, for inputs it had not answered yet), or the last
        // `window` entries if those reach further back: rows anyone appended while it was down cannot push work out
        // of reach.
        let lastOwn = try ledger.lastSequence(by: me, upTo: tail) ?? 0
        let start = max(1, floor + 1, min(tail - window + 1, lastOwn - 1000))
        cursor = start - 1
        acceptedFloor = start
        guard tail >= start else { return 0 }
        let own = try ledger.pagedEntries(in: start...tail, matching: [EntryFilter(kind: .layer, author: me),
                                                                      EntryFilter(kind: .delivery, author: me)], pageBytes: 64 << 20)
        // A block's inputs — its predecessor's posts that its own posts consumed — read a page at a time, not one
        // round trip each (a restart over a 20,000-row window met thousands); only what resuming needs of each is
        // kept. One not among them (a predecessor of an earlier generation) is read alone.
        var inputs: [Int64: (queryID: String?, consumed: Int64?)] = [:]
        if !isOuroboros {
            let wanted = Set(own.compactMap { e in e.kind == .layer ? (try? LayerPost.decode(e))?.consumed : nil })
            if let lo = wanted.min(), let hi = wanted.max() {
                var from = lo
                while from <= hi {
                    let page = try ledger.entries(in: from...hi, matching: [EntryFilter(kind: .layer, author: predecessor.signing)], maxBytes: 16 << 20)
                    for e in page.entries where wanted.contains(e.sequence) && isAuthentic(e) {
                        inputs[e.sequence] = (e.queryID, (try? LayerPost.decode(e))?.consumed)
                    }
                    guard page.through < hi else { break }
                    from = page.through + 1
                }
            }
        }
        for e in own {
            guard let q = e.queryID, isAuthentic(e) else { continue }
            if e.kind == .delivery {
                _ = seenQueries.insert(q)
                querents[q] = nil
                continue
            }
            guard let p = try? LayerPost.decode(e) else { continue }
            lastPost[q] = e.sequence
            _ = consumedEntries.insert(p.consumedHash)
            if computedFrom[q] == nil { computedFrom[q] = p.consumed }
            if let input = inputs[p.consumed] {
                if input.queryID == q, let c = input.consumed { accepted[q] = Acceptance(input: c, retryAsked: false, failures: 0) }
                continue
            }
            guard let src = try ledger.entry(at: p.consumed), src.queryID == q, isAuthentic(src) else { continue }
            if isOuroboros {
                if src.kind == .query, seenQueries.insert(q), let r = try? QueryRequest.decode(src) { querents[q] = r.querent }
            } else if let prior = try? LayerPost.decode(src) {
                accepted[q] = Acceptance(input: prior.consumed, retryAsked: false, failures: 0)
            }
        }
        return own.count
    }

    // MARK: the loop

    /// Handles the ledger entries that appeared since the last call (at most `roundBudget` bytes of them). Returns
    /// true if it posted anything or has more to read.
    @discardableResult
    package func step(ledger: any Ledger) throws -> Bool {
        // A round reads a bounded amount (anyone with the ledger file may append huge rows); what is left is read
        // in the next rounds.
        var behind = false
        // After a lost connection the server may have lost rows this node read (or appended) and numbered new ones
        // the same: read the last rows again (inputs already answered are known by hash, not number).
        let epoch = ledger.connectionEpoch
        let rewound = epoch != seenEpoch
        if rewound {
            seenEpoch = epoch
            cursor = max(0, cursor - RingNode.rereadAfterLoss)
        }
        var filters = [EntryFilter(kind: .layer, author: predecessor.signing), EntryFilter(kind: .alarm, author: successor.signing)]
        if isOuroboros { filters.append(EntryFilter(kind: .query)) }
        // The second predecessor's posts hold the H this node validates against: read with the page, not apart.
        if cachesSecondPredecessor { filters.append(EntryFilter(kind: .layer, author: secondPredecessor)) }
        filters += sideFilters + watchFilters
        // Nothing this node acts on was notified since the last page (a backend with complete notifications says so
        // without a round trip): no read — but never more than a second without one, whatever the notifications
        // say (anyone may send them, and a full queue drops them). The second predecessor's posts and the node's own
        // rows are only read along, never a reason to read.
        let actionable = filters.filter { f in f.author != publicKeys.signing && !(f.kind == .layer && f.author == secondPredecessor && cachesSecondPredecessor) }
        guard rewound || now() - lastRead >= RingNode.maxReadInterval || ledger.mayHaveAppended(after: cursor, matching: actionable) else { return false }
        lastRead = now()
        var (entries, through) = try timing.time(\.ledger) { () throws -> ([LedgerEntry], Int64) in
            // One round trip: the tail and what is new up to it.
            let (page, tail) = try ledger.entries(after: cursor, matching: filters, maxBytes: RingNode.roundBudget)
            behind = page.through < tail
            return (page.entries, page.through)
        }
        defer {
            // Past this round's page, and past the node's own appends that directly follow it (nothing to read there).
            var c = max(cursor, through)
            for a in ownAppends.sorted() where a == c + 1 { c = a }
            ownAppends.removeAll()
            cursor = c
        }
        var acted = false
        // A row that changes this node's keys or neighbours (its placement) ends the page: what follows it is read
        // again once its owner has taken it on (a post addressed to the new keys is not the old keys' business).
        if let ends = endsPage, let i = entries.firstIndex(where: { RingNode.sideKinds.contains($0.kind) && ends($0) }) {
            entries.removeSubrange((i + 1)...)
            through = entries[i].sequence
            behind = true
        }
        page: for e in entries {
            if watchFilters.contains(where: { $0.matches(e) }) { watched.append(e) }
            guard let q = e.queryID else { continue }
            if cachesSecondPredecessor && e.author == secondPredecessor && e.kind == .layer { remember(e); continue }
            if RingNode.sideKinds.contains(e.kind) { sideEntries.append(e); continue }
            do {
                switch e.kind {
                case .query where isOuroboros && holdQueries:
                    if heldQueries.count < RingNode.maxHeldQueries {
                        heldQueries.append(e.sequence)
                    } else if isAuthentic(e), seenQueries.insert(q) {
                        try appendOwn(.delivery, q, Delivery(.refusal(.timeout, detail: "too many queries arrived during a key rotation; ask again")).encoded(), ledger)
                    }
                case .query where isOuroboros:
                    let before = ownAppends.count
                    do {
                        try startQuery(e, ledger: ledger)
                    } catch {
                        // Its post could not be appended (an outage): the page ends before the row, which is read
                        // and started again at the next step.
                        failures.append((q, error))
                        through = e.sequence - 1
                        behind = true
                        break page
                    }
                    if ownAppends.count != before { acted = true }
                case .layer:
                    if try process(e, queryID: q, ledger: ledger) { acted = true }
                case .alarm:
                    if try retry(e, queryID: q, ledger: ledger) { acted = true }
                default:
                    continue
                }
            } catch {
                failures.append((q, error))
                if failures.count > 64 { failures.removeFirst() }
            }
        }
        return acted || behind
    }

    /// A layer post from the predecessor: validate, then compute and post (or deliver, at the ouroboros).
    func process(_ e: LedgerEntry, queryID q: String, ledger: any Ledger) throws -> Bool {
        guard !consumedEntries.contains(e.hash) else { return false }
        guard let received = try receive(e, ledger: ledger) else { return false }
        // One accepted input per query, unless this node asked for a retry of it.
        let consumed: Int64?
        switch received {
        case .input(_, let p): consumed = p.consumed
        case .rejected(_, _, let i): consumed = i
        }
        if var a = accepted[q] {
            guard a.retryAsked, consumed == a.input else {
                try alarm(e, .secondPost, hashFrom: nil, input: consumed, final: true, ledger: ledger)
                return true
            }
            a.retryAsked = false
            accepted[q] = a
        } else if let c = consumed {
            // An input older than what this node remembers (from before a restart's reach, or forgotten since): the
            // ledger says whether it answered the query already — then this is a second post, never answered again.
            if c <= acceptedFloor,
               try !ledger.headers(in: c...max(c, try ledger.lastSequence()), matching: [EntryFilter(kind: .layer, author: publicKeys.signing, queryID: q)]).isEmpty {
                try alarm(e, .secondPost, hashFrom: nil, input: consumed, final: true, ledger: ledger)
                return true
            }
            accepted[q] = Acceptance(input: c, retryAsked: false, failures: 0)
            acceptedInputs.append(c)
            if acceptedInputs.count > RingNode.acceptedMemory { acceptedFloor = max(acceptedFloor, acceptedInputs.removeFirst()) }
        }
        switch received {
        case .rejected(let failure, let hashFrom, let input):
            var final = !failure.retryable
            if failure.retryable, var a = accepted[q] {
                a.failures += 1
                final = a.failures > RingNode.maxRetries
                a.retryAsked = !final
                accepted[q] = a
            }
            try alarm(e, failure, hashFrom: hashFrom, input: input, final: final, ledger: ledger)
            return true
        case .input(let x, _):
            if isOuroboros {
                try deliver(x, queryID: q, from: e, ledger: ledger)
                // Delivered from this entry: read again (a page re-read after a lost connection), it is no second post.
                _ = consumedEntries.insert(e.hash)
            } else {
                let input = perturbInput?(x) ?? x
                let y = try timing.time(\.compute) { try own.checkedForward(input) }
                try post(output: y, queryID: q, consumed: e, ledger: ledger)
            }
            return true
        }
    }

    /// A receiver's alarm naming this node for a hash mismatch, not final: post again from the same input (the
    /// paper's retry). The alarm is only a request: the node recomputes from the very entry it computed from the
    /// first time — authentic, its predecessor's, of this query — never from an entry the alarm names otherwise.
    func retry(_ e: LedgerEntry, queryID q: String, ledger: any Ledger) throws -> Bool {
        guard isAuthentic(e), let alarm = try? Alarm.decode(e), case .validation(let a) = alarm.body,
              a.suspect == publicKeys.signing, !a.final, a.reason == .hashMismatch, let inputSeq = a.input,
              let from = computedFrom[q], from == inputSeq, lastPost[q] == a.entry,
              let mine = try ledger.entry(at: a.entry), mine.author == publicKeys.signing, mine.queryID == q, isAuthentic(mine),
              (try? LayerPost.decode(mine))?.consumed == inputSeq,
              let src = try ledger.entry(at: inputSeq), src.queryID == q, isAuthentic(src) else { return false }
        // The ouroboros's post (the querent's input) carries no H to fail: it is never retried.
        guard !isOuroboros, src.kind == .layer, src.author == predecessor.signing, let p = try? LayerPost.decode(src),
              let t = try? timing.time(\.crypto, { try open(p, from: src) }), Array(t.shape.dropFirst()) == inputShape else { return false }
        let input = perturbInput?(t) ?? t
        let x = try timing.time(\.compute) { try own.checkedForward(input) }
        try post(output: x, queryID: q, consumed: src, ledger: ledger)
        return true
    }
}

/// A set that remembers at most `capacity` elements (the oldest are forgotten first).
package struct BoundedSet<T: Hashable> {
    let capacity: Int
    private var set: Set<T> = []
    private var order: [T] = []
    private var head = 0
    package init(capacity: Int) { self.capacity = capacity }

    package func contains(_ x: T) -> Bool { set.contains(x) }

    /// Inserts `x`; false when it was already there.
    package mutating func insert(_ x: T) -> Bool {
        guard set.insert(x).inserted else { return false }
        order.append(x)
        if order.count - head > capacity { set.remove(order[head]); head += 1 }
        if head > capacity { order.removeFirst(head); head = 0 }
        return true
    }
}

/// A dictionary that remembers at most `capacity` keys (the oldest insertions are forgotten first).
package struct BoundedMap<K: Hashable, V> {
    let capacity: Int
    private var dict: [K: (value: V, stamp: Int)] = [:]
    private var order: [(key: K, stamp: Int)] = []
    private var head = 0, clock = 0
    package init(capacity: Int) { self.capacity = capacity }

    package subscript(key: K) -> V? {
        get { dict[key]?.value }
        set {
            guard let v = newValue else { dict[key] = nil; return }
            if let old = dict[key] { dict[key] = (v, old.stamp); return }
            clock += 1
            dict[key] = (v, clock)
            order.append((key, clock))
            // Forget the oldest insertions beyond the capacity (skipping keys removed or re-inserted since).
            while order.count - head > capacity {
                let (k, stamp) = order[head]
                head += 1
                if dict[k]?.stamp == stamp { dict[k] = nil }
            }
            if head > capacity { order.removeFirst(head); head = 0 }
        }
    }
}
