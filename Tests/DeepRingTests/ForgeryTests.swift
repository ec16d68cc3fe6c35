import Crypto
@testable import DeepRingClient
@testable import DeepRingEmbedded
@testable import DeepRingNode
import DeepRingEngine
import DeepRingLedger
import DeepRingProtocol
import Foundation
import GRDB
import Testing

/// Finding 1 of the adversarial review: a block whose keys the attacker holds posts a forged output by a route
/// around validation. Every position × every route × batch 1 and batched: the query is answered correctly or
/// refused — never a wrong answer — and an alarm names the forger (for a forged H, Proposition 1's pair).
@Suite struct ForgeryTests {
    /// The forger's output: the honest one with every value replaced by a pattern (the last block's: logits whose
    /// argmax is class 0 everywhere, what an attacker choosing the answer would send).
    static let forge: @Sendable (Tensor) -> Tensor = { t in
        var u = t
        for i in u.data.indices { u.data[i] = i % t.itemSize == 0 ? 50 : Float(i % 3) }
        return u
    }

    struct Case: CustomTestStringConvertible, Sendable {
        var route: ForgeryRoute
        var batch: Int
        var testDescription: String { "\(route.rawValue), batch \(batch)" }
    }

    static let cases: [Case] = ForgeryRoute.allCases.flatMap { r in [Case(route: r, batch: 1), Case(route: r, batch: 6)] }

    @Test(arguments: cases)
    func aForgingBlockNeverGetsAWrongAnswerDeliveredAndIsNamed(_ c: Case) throws {
        let m = try smallModel(seed: 31)
        for position in 1...5 {
            let dir = try sealedRing(m)
            defer { try? FileManager.default.removeItem(atPath: dir) }
            let rt = try RingRuntime(directory: dir)
            // Batch 1 under the paper's policy (refuse), batched under evict-and-retry: both must hold.
            rt.onCompromisedBlock = c.batch == 1 ? .refuse : .evictAndRetry
            let warm = sampleInputs(2, seed: 9)
            #expect(try rt.query(warm).logits.data == plainLogits(m, warm).data)
            let forger = try rt.signingKey(position: position)
            // A colluding block that is not a neighbour of the forger (positions 1 … 5; the ouroboros never colludes).
            let accomplice = [1: 3, 2: 4, 3: 5, 4: 1, 5: 2][position] ?? 1
            let partner = try rt.signingKey(position: accomplice)
            try rt.setForgery(position: position, c.route, accomplice: accomplice, forge: ForgeryTests.forge)
            let forgerID = rt.ring.placement[position - 1]
            let x = sampleInputs(c.batch, seed: UInt64(position))
            let before = try rt.ledger.lastSequence()
            let what = "\(c.route.rawValue) at position \(position), batch \(c.batch)"
            var answered = false
            do {
                let r = try rt.query(x)
                #expect(r.logits.data.map(\.bitPattern) == plainLogits(m, x).data.map(\.bitPattern), "WRONG ANSWER DELIVERED: \(what)")
                answered = true
            } catch let e as QueryError {
                switch e {
                case .failed, .refused, .timeout: break
                case .badInput: Issue.record("\(what): \(e)")
                }
            }
            // Whatever happened, no answer but the honest one was delivered for this query.
            let after = try rt.ledger.entries(from: before + 1, limit: 10_000)
            let answers = after.filter { e in
                e.kind == .delivery && (try? Delivery.decode(e)).map { if case .answer = $0.outcome { return true } else { return false } } == true
            }
            #expect(answers.count <= 2, "\(what): \(answers.count) answers")
            if c.route == .forgedHash && position == 5 {
                // The last block's H is the hash of its own output, which nobody re-validates: a forged one is harmless.
                #expect(answered, "\(what): the honest answer should have been delivered")
                continue
            }
            // Colluding with a block that is not its neighbour, either of the two may be the one named.
            let culprits = c.route == .vouchedByNonNeighbour ? [forger, partner] : [forger]
            let named = after.contains { e in
                guard e.kind == .alarm, let a = try? Alarm.decode(e) else { return false }
                switch a.body {
                case .validation(let v): return culprits.contains(v.suspect) || v.hashFrom.map(culprits.contains) == true
                case .silent(let s): return culprits.contains(s)
                case .authenticity: return false
                }
            }
            if c.route == .framesAccomplice {
                // The framing alarm names the accomplice, but only a block's successor may name it: the ring's refusal
                // names the alarm's author instead, and never the framed block.
                let refusals = after.compactMap { e -> String? in
                    guard e.kind == .delivery, let d = try? Delivery.decode(e), case .refusal(_, let detail) = d.outcome else { return nil }
                    return detail
                }
                #expect(refusals.contains { $0.contains(forgerID) }, "\(what): the refusal does not name the framer: \(refusals)")
            } else {
                #expect(named, "\(what): no alarm names the forger")
            }
            // Evict-and-retry answers, unless the attackers outlast its one retry (two colluders, or silence).
            if c.batch > 1 && ![.silent, .vouchedByNonNeighbour].contains(c.route) { #expect(answered, "\(what): evict-and-retry should answer") }
            // A fake post by an outsider (or by a colluder whose key was retired meanwhile) stays on the ledger for
            // good: the audit names it; nothing else is amiss.
            let audit = try rt.ring.auditLedger()
            if [.hashFromOutsider, .vouchedByNonNeighbour].contains(c.route) && !audit.isClean {
                #expect(audit.firstProblem?.problem == .unknownAuthor, "\(what): \(audit)")
            } else {
                #expect(audit.isClean, "\(what): \(audit)")
            }
        }
    }

    /// The rule behind the matrix, at its source: a post whose `consumed` is the query row is accepted only from the
    /// ouroboros. (Before the fix, a receiver finding no H simply skipped Eq. 13.)
    @Test func onlyTheOuroborosMayConsumeTheQueryRow() throws {
        let m = try smallModel(seed: 32)
        let dir = try sealedRing(m)
        let rt = try RingRuntime(directory: dir)
        rt.onCompromisedBlock = .refuse
        try rt.setForgery(position: 3, .consumeQueryRow, forge: ForgeryTests.forge)
        #expect(throws: QueryError.self) { try rt.query(sampleInputs(1)) }
        let alarms = try rt.ledger.allEntries().filter { $0.kind == .alarm }.compactMap { try? Alarm.decode($0) }
        #expect(alarms.contains { if case .validation(let v) = $0.body { return v.reason == .queryRowConsumed && v.final } else { return false } })
    }

    /// A second post for the same input is an alarm even when it repeats the honest output (a replay that the hash
    /// check alone would let through, to be computed twice downstream).
    @Test func aSecondPostForTheSameInputIsAnAlarmEvenWhenHonest() throws {
        let m = try smallModel(seed: 33)
        let dir = try sealedRing(m)
        let rt = try RingRuntime(directory: dir)
        rt.onCompromisedBlock = .refuse
        let forger = try rt.signingKey(position: 2)
        try rt.setForgery(position: 2, .secondPost, forge: { $0 })
        #expect(throws: QueryError.self) { try rt.query(sampleInputs(1)) }
        let alarms = try rt.ledger.allEntries().filter { $0.kind == .alarm }.compactMap { try? Alarm.decode($0) }
        #expect(alarms.contains { if case .validation(let v) = $0.body { return v.reason == .secondPost && v.suspect == forger && v.final } else { return false } })
    }

    /// Found by the second attacker review: a retry request (a non-final alarm) named the entry to recompute from,
    /// and the named block recomputed from it without checking it — so one compromised block B could append an
    /// unsigned "post" carrying an input of its choice under B's second predecessor's name, ask its predecessor A to
    /// "retry" from it, and relay the result. A retries only from the very entry it computed from the first time.
    @Test func aRetryRequestCannotMakeABlockComputeFromAnotherInput() throws {
        let m = try smallModel(seed: 34)
        let dir = try sealedRing(m)
        let rt = try RingRuntime(directory: dir)
        rt.onCompromisedBlock = .refuse
        rt.queryTimeout = 20
        let b = 3, aKey = try rt.signingKey(position: b - 1)
        let db = try DatabaseQueue(path: dir + "/ledger.sqlite")
        final class Planted: @unchecked Sendable { var seq: Int64 = 0 }
        let planted = Planted()
        let B = rt.nodes[b], A = rt.nodes[b - 1]
        try rt.setForgery(position: b, .silent)
        B.perturbInput = { x in
            do {
                // R: a "layer post" by A's predecessor Z (whose key B knows), addressed to A, carrying B's choice of
                // input for A — with a signature B cannot make (garbage), written straight into the database.
                let tail = try rt.view.lastSequence()
                let aPost = try #require(try rt.view.entries(in: 1...tail, matching: [EntryFilter(kind: .layer, author: A.publicKeys.signing)]).last)
                let q = try #require(aPost.queryID)
                let xPrime = Tensor(shape: [x.batch] + A.inputShape, data: [Float](repeating: 1, count: x.batch * A.inputShape.reduce(1, *)))
                let aad = LayerPost.aad(queryID: q, from: B.secondPredecessor, to: A.publicKeys.signing)
                let k = SymmetricKey(size: .bits256)
                let ct = try AES.GCM.seal(TensorWire.encode(xPrime), using: k, authenticating: aad).combined!
                let sk = try k.withUnsafeBytes { try HPKEBox.seal(Array($0), to: B.predecessor.agreement, aad: aad) }
                let payload = LayerPost(consumed: aPost.sequence, consumedHash: aPost.hash, recipient: A.publicKeys.signing,
                                        sealedKey: sk, ciphertext: ArraySlice(ct), nextHash: [UInt8](repeating: 0, count: 32)).encoded()
                let last = try #require(try rt.ledger.last())
                let seq = last.sequence + 1
                let hash = LedgerEntry.computeHash(sequence: seq, previousHash: last.hash, kind: .layer, queryID: q,
                                                   author: B.secondPredecessor, payload: payload)
                try db.write { d in
                    try d.execute(sql: "INSERT INTO entries VALUES (?, ?, 'layer', ?, ?, ?, ?, ?)",
                                  arguments: [seq, Data(last.hash), q, Data(B.secondPredecessor), Data(payload), Data(hash), Data(repeating: 7, count: 64)])
                }
                planted.seq = seq
                try rt.view.refresh()
                // B's retry request: "A, your post failed; recompute from R".
                let alarm = Alarm(.validation(ValidationAlarm(suspect: A.publicKeys.signing, hashFrom: B.secondPredecessor, entry: aPost.sequence,
                                                              input: seq, reason: .hashMismatch, final: false)))
                try rt.view.append(kind: .alarm, queryID: q, payload: alarm.encoded(), signer: B.signer)
            } catch { Issue.record("the attack failed to run: \(error)") }
            return x
        }
        #expect(throws: QueryError.self) { try rt.query(sampleInputs(1)) }
        #expect(planted.seq > 0)
        let fromPlanted = try rt.ledger.allEntries().filter { e in
            e.kind == .layer && e.author == aKey && (try? LayerPost.decode(e))?.consumed == planted.seq
        }
        #expect(fromPlanted.isEmpty, "A computed from the planted input")
    }
}
