import Crypto
import DeepRingEngine
import DeepRingLedger
import DeepRingProtocol
import Foundation

/// How a compromised block that holds valid keys forges its posts, by each route a receiver must refuse (issue:
/// "a post that cannot be validated is an alarm naming its author, never a skip"). Attack experiments and tests
/// only: off unless set with `RingRuntime.setForgery`.
public enum ForgeryRoute: String, CaseIterable, Sendable {
    /// Its forged output's post names the query row as its input (there is then no H to compare with).
    case consumeQueryRow
    /// Names an entry that does not exist.
    case consumeMissingEntry
    /// Names a layer post of another query.
    case consumeOtherQuery
    /// Posts the honest output, then a forged one for the same input.
    case secondPost
    /// Names a fake post, signed by a key outside the ring and addressed to it, whose H matches the forged output.
    case hashFromOutsider
    /// Names a fake post of its own, addressed to itself, whose H matches the forged output.
    case consumeOwnPost
    /// Names a fake post addressed to it by an accomplice — a ring member, but not its predecessor — whose H matches
    /// the forged output (two colluding blocks that are not neighbours).
    case vouchedByNonNeighbour
    /// Posts the honest output with a forged H: the next block's honest output then fails (Prop. 1's pair).
    case forgedHash
    /// Posts its forged output with K sealed to a key of its own (the successor cannot open it).
    case undecryptable
    /// Never posts.
    case silent
    /// Posts its honest output, then a final validation alarm naming its accomplice — a block whose output it does
    /// not validate (framing an honest block).
    case framesAccomplice
}

package final class Forgery {
    let route: ForgeryRoute

    package init(route: ForgeryRoute, forge: @escaping @Sendable (Tensor) -> Tensor, accomplice: RingNode? = nil) {
        self.route = route; self.forge = forge; self.accomplice = accomplice
    }
    /// The output the forger wants to be delivered instead of its honest one (same shape).
    let forge: @Sendable (Tensor) -> Tensor
    /// The colluding member of `vouchedByNonNeighbour` (its keys rotate with the reshuffles).
    weak var accomplice: RingNode?

    enum Action { case post(Tensor, consumed: LedgerEntry), skip }

    /// Decides what to post in place of `output`, computed from `consumed`.
    func prepare(output: Tensor, queryID q: String, consumed: LedgerEntry, node: RingNode, ledger: any Ledger) throws -> Action {
        let forged = forge(output)
        let tail = try ledger.lastSequence()
        switch route {
        case .consumeQueryRow:
            guard let query = try ledger.entries(in: 1...tail, matching: [EntryFilter(kind: .query, queryID: q)]).first else { return .skip }
            return .post(forged, consumed: query)
        case .consumeMissingEntry:
            var ghost = consumed
            ghost.sequence = tail + 10_000
            ghost.hash = [UInt8](repeating: 0xA5, count: 32)
            return .post(forged, consumed: ghost)
        case .consumeOtherQuery:
            let others = try ledger.entries(in: 1...tail, matching: [EntryFilter(kind: .layer)]).filter { $0.queryID != q }
            guard let other = others.last else { return .post(forged, consumed: consumed) }
            return .post(forged, consumed: other)
        case .secondPost, .forgedHash, .silent, .framesAccomplice:
            return route == .silent ? .skip : .post(output, consumed: consumed)
        case .hashFromOutsider, .consumeOwnPost, .vouchedByNonNeighbour:
            let author = route == .consumeOwnPost ? node.signer : route == .vouchedByNonNeighbour ? (accomplice?.signer ?? LedgerSigner()) : LedgerSigner()
            let fake = LayerPost(consumed: consumed.sequence, consumedHash: consumed.hash, recipient: node.publicKeys.signing,
                                 sealedKey: [], ciphertext: [], nextHash: TensorWire.hash(forged))
            let e = try ledger.append(kind: .layer, queryID: q, payload: fake.encoded(), signer: author)
            return .post(forged, consumed: e)
        case .undecryptable:
            return .post(forged, consumed: consumed)
        }
    }

    func adjust(hash h: [UInt8]) -> [UInt8] { route == .forgedHash ? h.map { $0 ^ 0x5A } : h }

    /// The HPKE key K is sealed to: a stranger's for `undecryptable`.
    func keyRecipient(_ successor: [UInt8]) -> [UInt8] {
        route == .undecryptable ? Array(Curve25519.KeyAgreement.PrivateKey().publicKey.rawRepresentation) : successor
    }

    /// After the first post: the forged second post of `secondPost`, the framing alarm of `framesAccomplice`.
    func after(output: Tensor, queryID q: String, consumed: LedgerEntry, node: RingNode, ledger: any Ledger) throws {
        if route == .framesAccomplice, let victim = accomplice {
            let a = ValidationAlarm(suspect: victim.publicKeys.signing, hashFrom: nil, entry: consumed.sequence, input: nil,
                                    reason: .hashMismatch, final: true)
            try ledger.append(kind: .alarm, queryID: q, payload: Alarm(.validation(a)).encoded(), signer: node.signer)
            return
        }
        guard route == .secondPost else { return }
        node.forgery = nil
        defer { node.forgery = self }
        try node.post(output: forge(output), queryID: q, consumed: consumed, ledger: ledger)
    }
}
