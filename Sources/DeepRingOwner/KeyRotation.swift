import Crypto
import DeepRingEngine
import DeepRingLedger
import DeepRingProtocol
import Foundation

/// Key rotation across hosts — the paper's reshuffle (§3.4, "the placement of the blocks is reshuffled") for blocks
/// that are parties of their own: no one but a block ever holds its private keys, so a block makes its own new
/// key pairs and the owner only learns their public halves.
///
/// The exchange, all on the ledger:
/// 1. The owner stops starting queries and waits until none is in flight — so every query finishes under the keys
///    it started with — then posts a `rotation` call for generation g + 1.
/// 2. Every block makes new key pairs, keeps them in `keys.next.json` (0600), and posts a `rekey`: the new public
///    keys HPKE-sealed to the ouroboros, signed with its current key.
/// 3. With every block's new keys, the owner commits its signed record for generation g + 1 (the commit point),
///    announces the new member signing keys in random order (`reshuffle`), and posts to each block — in random
///    order — a `placement`: its new owner-signed descriptor (its new neighbours' keys), sealed to its new
///    agreement key and addressed to its new signing key. Then it starts the queries that waited.
/// 4. A block takes on the descriptor only if it is the owner's, for itself and the next generation, and names
///    exactly the keys it made; it replaces `block.json`, renames `keys.next.json` over `keys.json`, and computes
///    with the new keys from then on.
///
/// What a ledger observer can link: that an old key answered the call (its `rekey` row) and that a new key was
/// placed (the `placement` row names its recipient), but not which old key became which new one — the new keys
/// travel sealed to the owner, and the placements are posted together in random order. Within one query, the
/// order in which keys post is visible (that is how the ring works), and a database that logs connections may
/// link keys by host or timing: rotation hides identities on the ledger, not from the network.
///
/// Faults: a block that does not answer within the timeout is named and the rotation abandoned (every block keeps
/// its current keys: nothing was committed). An owner that stops after its commit completes the rotation when it
/// starts again (`resumeInterrupted`): the placements are posted again from its record. A block that stops after
/// its `rekey` finds its placement on the ledger when it starts again.
final class KeyRotation {
    enum State {
        case idle
        /// Waiting for the queries in flight to end; no new query starts.
        case draining
        case collecting(Call)
    }
    struct Call {
        let id: String
        let generation: Int
        let started: Double
        var cursor: Int64
        /// New public keys by ring position (1 … n).
        var keys: [Int: PublicKeys] = [:]
        /// The block this rotation evicts, if any: its slot goes to a spare, whose keys the owner holds already.
        let eviction: Eviction?
    }
    /// A block to evict (Prop. 1 named it) and the spare that takes its ring position.
    struct Eviction {
        let position: Int
        let spare: OwnerRecord.SpareEntry
        let reason: String
    }

    let ring: SealedRing
    let ledger: any Ledger
    let signer: LedgerSigner
    /// The ouroboros's agreement key, which opens the members' sealed new keys.
    let agreement: Curve25519.KeyAgreement.PrivateKey
    var timeout: Double = 15
    private(set) var state = State.idle
    private(set) var rotations = 0
    private(set) var evictions = 0
    /// Where the current generation was announced (found by `resumeInterrupted`).
    private(set) var announcedAt: Int64 = 0
    var events: [(queryID: String, event: String, detail: String)] = []

    /// The parameter file of a ring position, from the owner's checkpoint (what a spare placed there receives).
    let holderFile: (Int) -> [UInt8]

    init(ring: SealedRing, ledger: any Ledger, signer: LedgerSigner, agreement: Curve25519.KeyAgreement.PrivateKey,
         holderFile: @escaping (Int) -> [UInt8]) {
        self.ring = ring; self.ledger = ledger; self.signer = signer; self.agreement = agreement; self.holderFile = holderFile
    }

    /// A spare not placed yet, if the ring has one.
    var availableSpare: OwnerRecord.SpareEntry? { ring.record.spares.first { $0.placed == nil } }

    var isIdle: Bool { if case .idle = state { return true } else { return false } }
    var isDraining: Bool { if case .draining = state { return true } else { return false } }
    var cursor: Int64? { if case .collecting(let c) = state { return c.cursor } else { return nil } }

    func drain() { if isIdle { state = .draining } }

    func takeEvents() -> [(queryID: String, event: String, detail: String)] {
        defer { events.removeAll() }
        return events
    }

    /// Posts the rotation call (the caller has drained the ring); with `eviction`, the evicted block's slot goes to
    /// the spare (its new keys are not waited for, nor taken).
    func call(evicting eviction: Eviction? = nil) throws {
        let id = "rotation-" + randomID().prefix(16)
        let g = ring.record.generation + 1
        let cursor = try ledger.lastSequence()
        try ledger.append(kind: .rotation, queryID: id, payload: RotationCall(ringID: ring.manifest.ringID, generation: UInt64(g)).encoded(),
                          signer: signer)
        var c = Call(id: id, generation: g, started: now(), cursor: cursor, eviction: eviction)
        if let e = eviction { c.keys[e.position] = e.spare.keys }
        state = .collecting(c)
        events.append((id, "rotation called", "generation \(g)" + (eviction.map { ", evicting ring position \($0.position) to spare \($0.spare.id)" } ?? "")))
    }

    /// Gives up a rotation that is draining or collecting: every block keeps its current keys.
    func abandon(_ why: String) {
        if case .collecting(let c) = state { events.append((c.id, "rotation abandoned", why)) }
        state = .idle
    }

    /// Reads the members' `rekey` rows of the call; once every block's new keys are in, commits the new generation
    /// and publishes it. Returns whether it read anything, and the new members' keys (ring order) once committed.
    func collect(members: [[UInt8]], describe: ([UInt8]?) -> String) throws -> (acted: Bool, committed: [PublicKeys]?) {
        guard case .collecting(var c) = state else { return (false, nil) }
        // Only members' rekeys of this call (anyone may post rows naming the call's id).
        // (Not the evicted block's: its slot is the spare's.)
        let asked = members.indices.dropFirst().filter { $0 != c.eviction?.position }.map { EntryFilter(kind: .rekey, author: members[$0], queryID: c.id) }
        let (page, tail) = try ledger.entries(after: c.cursor, matching: asked, maxBytes: 1 << 20)
        let current = Set(members)
        let spares = ring.record.spares.map(\.keys)
        for e in page.entries {
            guard let j = members.firstIndex(of: e.author), j > 0, c.keys[j] == nil, e.isAuthentic,
                  let p = try? RekeyPost.decode(e), p.generation == UInt64(c.generation),
                  let keys = try? open(p, call: c.id, author: e.author) else { continue }
            // Keys never seen in the ring: a member cannot take over another's keys, old or new.
            guard !current.contains(keys.signing), !c.keys.values.contains(where: { $0.signing == keys.signing || $0.agreement == keys.agreement }),
                  !ring.record.members.contains(where: { $0.agreement == keys.agreement }),
                  !spares.contains(where: { $0.signing == keys.signing || $0.agreement == keys.agreement }) else {
                events.append((c.id, "rekey refused", "\(describe(e.author)) posted keys already in use"))
                continue
            }
            c.keys[j] = keys
        }
        c.cursor = max(c.cursor, page.through)
        let acted = !page.entries.isEmpty || page.through < tail
        state = .collecting(c)
        let n = members.count - 1
        if c.keys.count == n {
            let keys = (1...n).compactMap { c.keys[$0] }
            let leaving = c.eviction.map { describe(members[$0.position]) }
            var r = ring.record
            r.generation = c.generation
            r.members = keys
            if let ev = c.eviction, let i = r.spares.firstIndex(where: { $0.id == ev.spare.id }) {
                r.order[ev.position - 1] = ev.spare.id
                r.spares[i].placed = c.generation
                r.spares[i].replaced = hex(members[ev.position])
            }
            do {
                let lock = try ring.paths.stateLockExclusive()
                try ring.commit(r)   // the commit point
                _ = lock
            }
            try publish(call: c.id)
            rotations += 1
            if let ev = c.eviction {
                evictions += 1
                events.append((c.id, "evicted", "\(leaving ?? "") left the ring; spare \(ev.spare.id) holds ring position \(ev.position) from generation \(c.generation) on: \(ev.reason)"))
            }
            events.append((c.id, "rotated", "generation \(c.generation): every block has new key pairs and neighbours"))
            state = .idle
            return (true, keys)
        }
        if now() - c.started > timeout {
            let missing = (1...n).filter { c.keys[$0] == nil }.map { describe(members[$0]) }
            abandon("no new keys within \(Int(timeout)) s from \(missing.joined(separator: ", ")); every block keeps its current keys")
            return (true, nil)
        }
        return (acted, nil)
    }

    /// Opens a member's sealed new public keys and checks them: the new signing key proves it is held (its
    /// signature over the call and the member's current key), and the agreement key can be sealed to (a low-order
    /// point cannot: it would stop the owner at its placement, after its commit).
    private func open(_ p: RekeyPost, call: String, author: [UInt8]) throws -> PublicKeys {
        let plain = try HPKEBox.open(p.sealedKeys[...], with: agreement, aad: RekeyPost.aad(call: call, author: author))
        var r = BinaryReader(Array(plain)[...])
        let k = try PublicKeys.read(from: &r)
        let proof = try r.raw(64, "proof of possession")
        try r.end()
        let signing = try Curve25519.Signing.PublicKey(rawRepresentation: k.signing)
        guard signing.isValidSignature(proof, for: RekeyPost.proof(call: call, author: author)) else {
            throw RingError.notAuthentic("the new signing key's proof of possession does not verify")
        }
        // A low-order point gives the all-zero shared secret with any key (X25519 clamps scalars to multiples of 8).
        let secret = try Curve25519.KeyAgreement.PrivateKey().sharedSecretFromKeyAgreement(
            with: try Curve25519.KeyAgreement.PublicKey(rawRepresentation: k.agreement))
        guard secret.withUnsafeBytes({ $0.contains { $0 != 0 } }) else {
            throw RingError.notAuthentic("the new agreement key is a low-order point")
        }
        return k
    }

    /// Posts every block its placement (random order) — its new descriptor, sealed to its new agreement key — then
    /// announces the committed generation's member keys (random order).
    ///
    /// A spare placed in this generation gets its descriptor and its parameter file (`SparePlacement`), and the
    /// block it replaces an `EvictionNotice` first.
    func publish(call: String) throws {
        let r = ring.record
        let o = ring.manifest.ouroboros
        let g = UInt64(r.generation)
        for s in r.spares where s.placed == r.generation {
            guard let old = s.replaced.flatMap(unhex), old.count == 32 else { continue }
            try ledger.append(kind: .placement, queryID: call,
                              payload: EvictionNotice(generation: g, evicted: old, reason: "validation named this block (Prop. 1); spare \(s.id) holds its ring position").encoded(),
                              signer: signer)
        }
        for j in r.members.indices.shuffled() {
            let d = try Placement.descriptor(j, id: r.order[j], record: r, keys: r.members, ouroboros: o, identity: ring.identity)
            let k = r.members[j]
            let payload: [UInt8]
            if r.spares.contains(where: { $0.id == r.order[j] && $0.placed == r.generation }) {
                let plain = SparePlacement.plaintext(descriptor: try encodeJSON(d), file: holderFile(j + 1))
                let sealed = try HPKEBox.seal(plain, to: k.agreement, aad: SparePlacement.aad(call: call, recipient: k.signing))
                payload = SparePlacement(generation: g, recipient: k.signing, sealed: sealed).encoded(capacity: sealed.count + 64)
            } else {
                let sealed = try HPKEBox.seal(try encodeJSON(d), to: k.agreement, aad: PlacementOrder.aad(call: call, recipient: k.signing))
                payload = PlacementOrder(generation: g, recipient: k.signing, sealedDescriptor: sealed).encoded()
            }
            try ledger.append(kind: .placement, queryID: call, payload: payload, signer: signer)
        }
        // Last: the announcement marks the generation as published (an owner that stops before it posts every
        // placement again when it starts). No new key signs anything before it: the owner starts no query until then.
        try ledger.append(kind: .reshuffle, queryID: nil,
                          payload: MembersAnnouncement(ringID: r.ringID, generation: UInt64(r.generation), members: r.members.map(\.signing).shuffled()).encoded(),
                          signer: signer)
    }

    /// At the owner's start: a generation committed to the record but never announced (the owner stopped between its
    /// commit and its placements) is published now. True when it was.
    func resumeInterrupted() throws -> Bool {
        let tail = try ledger.lastSequence()
        guard tail >= 1 else { return false }
        let o = ring.manifest.ouroboros.signing
        let announcements = try ledger.headers(in: 1...tail, matching: [EntryFilter(kind: .reshuffle, author: o), EntryFilter(kind: .seal, author: o)])
        var announced = -1
        for h in announcements.reversed() {
            guard let e = try ledger.entry(at: h.sequence), e.isAuthentic, let m = try? MembersAnnouncement.decode(e),
                  m.ringID == ring.manifest.ringID else { continue }
            announced = Int(clamping: m.generation)
            announcedAt = h.sequence
            break
        }
        guard ring.record.generation > announced else { return false }
        let id = "rotation-" + randomID().prefix(16)
        try publish(call: id)
        announcedAt = try ledger.lastSequence()
        events.append((id, "rotation completed", "generation \(ring.record.generation) was committed before the owner stopped; its placements are posted again"))
        return true
    }
}
