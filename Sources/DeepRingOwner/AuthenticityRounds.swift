import DeepRingEngine
import DeepRingLedger
import DeepRingNode
import DeepRingProtocol
import Foundation

/// The owner's side of the authenticity round across hosts (§3.3, §3.4.4), for `owner serve` (`OwnerAgent`) and
/// `verify --ledger`: a `challenge` carrying HASH_O (Eq. 2); each block's `attestation` — HASH_j (Eq. 1) over the
/// parameters it computes with, chained on its predecessor's, and whether its file is intact — read a bounded page
/// at a time; then the chain judged against the owner's record. The first holder that differs is tampered: it is
/// sent a `restore` (its sealed file from the checkpoint, HPKE-sealed to it) when restoring is allowed, and the
/// round is called again. A block that lies in its attestation is not caught here but by validation (its
/// predecessor holds a copy of its layer).
final class AuthenticityRounds {
    struct Round {
        let id: String
        let started: Double
        let ouroborosHash: [UInt8]
        var cursor: Int64
        var attestations: [Int: Attestation] = [:]
    }

    /// How a round ended.
    enum Outcome: Equatable {
        case authentic
        /// The ouroboros's own parameters differ from the record (the caller restores them from the checkpoint).
        case ouroborosTampered
        /// Block `position` differs and was sent a restore: call the round again.
        case restoring(position: Int)
        case notAuthentic(String)
    }

    let ring: SealedRing
    let ledger: any Ledger
    let signer: LedgerSigner
    /// Members' signing keys in ring order (0 = the ouroboros); replaced by a key rotation.
    var members: [[UInt8]]
    let checkpoint: [RingLayer]
    var describe: ([UInt8]?) -> String
    /// Seconds the blocks have to attest before the round names the silent one.
    var timeout: Double = 15
    /// Send a tampered block its sealed file (else the round only names it).
    var restoreTampered = true
    /// Restores of one block in a row before giving up on it.
    static let maxRestores = 3
    private(set) var current: Round?
    /// Restores sent to each ring position since the ring was last authentic: a block that is still tampered after
    /// `maxRestores` of its own is given up on, whatever the other blocks needed (n tampered blocks take n restores).
    private var restoresInRow: [Int: Int] = [:]
    private(set) var rounds = 0, restores = 0
    /// The latest round's outcome: authentic, or what was wrong.
    private(set) var last: (authentic: Bool, detail: String)?
    /// What happened: (round id, event, detail).
    var events: [(queryID: String, event: String, detail: String)] = []

    init(ring: SealedRing, ledger: any Ledger, signer: LedgerSigner, members: [[UInt8]], checkpoint: [RingLayer],
         describe: @escaping ([UInt8]?) -> String) {
        self.ring = ring; self.ledger = ledger; self.signer = signer; self.members = members
        self.checkpoint = checkpoint; self.describe = describe
    }

    /// The rows a round waits for: members' attestations.
    var filters: [EntryFilter] { members.dropFirst().map { EntryFilter(kind: .attestation, author: $0) } }

    /// Calls a round on `ouroborosHash` (HASH_O over the parameters the ouroboros computes with); `prefix` names the
    /// caller in the round id.
    func start(ouroborosHash h: [UInt8], prefix: String = "auth") throws {
        let id = prefix + "-" + randomID().prefix(16)
        let cursor = try ledger.lastSequence()
        try ledger.append(kind: .challenge, queryID: id, payload: AuthenticityChallenge(ouroborosHash: h).encoded(), signer: signer)
        current = Round(id: id, started: now(), ouroborosHash: h, cursor: cursor)
        rounds += 1
    }

    /// Reads the round's attestations; when every block has attested, or the time is up, judges the round. Returns
    /// whether it read anything (or has more to read), and the outcome once the round has ended.
    func collect() throws -> (acted: Bool, outcome: Outcome?) {
        guard var r = current else { return (false, nil) }
        var acted = false
        // Only members' attestations of this round, a bounded page at a time (anyone may append big rows), with the
        // tail in the same round trip.
        let (page, tail) = try ledger.entries(after: r.cursor, matching: members.dropFirst().map {
            EntryFilter(kind: .attestation, author: $0, queryID: r.id)
        }, maxBytes: 1 << 20)
        for e in page.entries {
            guard let j = members.firstIndex(of: e.author), j > 0, r.attestations[j] == nil, e.isAuthentic,
                  let a = try? Attestation.decode(e) else { continue }
            r.attestations[j] = a
            acted = true
        }
        r.cursor = max(r.cursor, page.through)
        if page.through < tail { acted = true }
        current = r
        let n = members.count - 1
        if r.attestations.count == n || now() - r.started > timeout { return (true, try judge(r)) }
        return (acted, nil)
    }

    /// The chain as attested against the owner's record: the first holder whose hash differs — or whose file is not
    /// intact — is tampered; a block that never attested is named in a `silent` alarm.
    private func judge(_ r: Round) throws -> Outcome {
        current = nil
        let hashes = ring.record.hashes.map { unhex($0) ?? [] }
        guard r.ouroborosHash == hashes[0] else {
            restores += 1
            events.append((r.id, "restored", "the ouroboros's own parameters, from the checkpoint"))
            return .ouroborosTampered
        }
        var previous = r.ouroborosHash
        for j in 1..<members.count {
            guard let a = r.attestations[j] else {
                try ledger.append(kind: .alarm, queryID: r.id, payload: Alarm(.silent(member: members[j])).encoded(), signer: signer)
                return notAuthentic(r, "\(describe(members[j])) did not attest within \(Int(timeout)) s")
            }
            if a.previousHash != previous || a.hash != hashes[j] || !a.fileIntact {
                let why = !a.fileIntact ? "its parameter file differs from the sealed one" : "its HASH differs from the record"
                guard restoreTampered else { return notAuthentic(r, "\(describe(members[j])): \(why)") }
                guard restoresInRow[j, default: 0] < AuthenticityRounds.maxRestores else {
                    restoresInRow = [:]
                    return notAuthentic(r, "\(describe(members[j])): \(why), still after \(AuthenticityRounds.maxRestores) restores")
                }
                try sendRestore(position: j, round: r.id)
                restoresInRow[j, default: 0] += 1
                restores += 1
                events.append((r.id, "restoring", "\(describe(members[j])): \(why)"))
                return .restoring(position: j)
            }
            previous = a.hash
        }
        restoresInRow = [:]
        last = (true, "every block's HASH matches the record")
        events.append((r.id, "authentic", "\(members.count - 1) blocks attested"))
        return .authentic
    }

    private func notAuthentic(_ r: Round, _ detail: String) -> Outcome {
        last = (false, detail)
        events.append((r.id, "not authentic", detail))
        return .notAuthentic(detail)
    }

    /// Sends block `j` its sealed parameter file from the checkpoint, sealed to its HPKE key.
    private func sendRestore(position j: Int, round: String) throws {
        let file = ring.sealedHolderFile(j, layers: checkpoint)
        let k = ring.record.members[j - 1]
        let sealed = try HPKEBox.seal(file, to: k.agreement, aad: RestoreOrder.aad(round: round, recipient: k.signing))
        try ledger.append(kind: .restore, queryID: round, payload: RestoreOrder(recipient: k.signing, sealedFile: sealed).encoded(capacity: sealed.count + 64),
                          signer: signer)
    }
}

extension AuthenticityRounds {
    /// A member by its signing key, for messages: the ouroboros, or a block by id and ring position.
    static func describe(_ key: [UInt8]?, members: [[UInt8]], ring: SealedRing) -> String {
        guard let key, let j = members.firstIndex(of: key) else { return "a key outside the ring" }
        if j == 0 { return "the ouroboros" }
        return "block \(ring.record.order[j - 1]) (ring position \(j))"
    }
}

/// What `verify --ledger` found in its authenticity round through the ledger.
public struct LedgerRoundReport: Sendable {
    public let authentic: Bool
    public let detail: String
    public let rounds: Int
    public let restores: Int
    /// (round id, event, detail), in order.
    public let events: [(round: String, event: String, detail: String)]
}

/// `verify --ledger`: an authenticity round through the ledger, run by the owner's tool beside (or without) a
/// running `owner serve` — the blocks answer every challenge of the ouroboros, each round by its own id. With
/// `restore`, a block found tampered is sent its sealed file and the round called again, until the ring is authentic
/// or a block is still off after three restores; without, the first such block is named. Every wait is bounded by
/// `timeout` seconds a round (a block that does not attest by then is named in a `silent` alarm).
public enum LedgerRound {
    public static func run(directory: String, ledger: any Ledger, restore: Bool, timeout: Double = 15,
                           progress: ((String) -> Void)? = nil) throws -> LedgerRoundReport {
        let ring = try SealedRing.open(directory)
        let (keys, held) = try ring.ouroborosHolding()
        let checkpoint = try ring.checkpointLayers()
        let o = keys.publicKeys.signing
        try RingGenesis.check(ledger, ringID: ring.manifest.ringID, ouroboros: o)
        let members = [o] + ring.record.members.map(\.signing)
        let auth = AuthenticityRounds(ring: ring, ledger: ledger, signer: LedgerSigner(keys.signing), members: members,
                                      checkpoint: checkpoint, describe: { AuthenticityRounds.describe($0, members: members, ring: ring) })
        auth.timeout = timeout
        auth.restoreTampered = restore
        // HASH_O (Eq. 2) over the ouroboros's file, checked against its sealed digest by `ouroborosHolding`.
        let h = HashChain.hashes(holders: [(held[0], held[1])])[0]
        func report(_ authentic: Bool, _ detail: String) -> LedgerRoundReport {
            LedgerRoundReport(authentic: authentic, detail: detail, rounds: auth.rounds, restores: auth.restores, events: auth.events.map { ($0.queryID, $0.event, $0.detail) })
        }
        while true {
            try auth.start(ouroborosHash: h, prefix: "verify")
            progress?("authenticity round \(auth.rounds) through the ledger: waiting up to \(Int(timeout)) s for \(members.count - 1) attestations…")
            var outcome: AuthenticityRounds.Outcome?
            while outcome == nil {
                let (acted, o) = try auth.collect()
                outcome = o
                if o == nil && !acted, let c = auth.current?.cursor {
                    _ = try ledger.waitForAppend(after: c, matching: auth.filters, timeout: .milliseconds(500))
                }
            }
            switch outcome {
            case .restoring(let j)?:
                progress?("\(AuthenticityRounds.describe(members[j], members: members, ring: ring)) differs: sent its sealed parameters; checking again")
            case .authentic?:
                return report(true, auth.last?.detail ?? "")
            case .notAuthentic(let d)?:
                return report(false, d)
            case .ouroborosTampered?, nil:
                return report(false, "the ouroboros's HASH differs from the record")
            }
        }
    }
}
