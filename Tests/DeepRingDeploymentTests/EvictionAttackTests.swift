@testable import DeepRingBlock
@testable import DeepRingOwner
import Crypto
import DeepRingEngine
import DeepRingLedger
import DeepRingProtocol
import Foundation
import Testing

// Attacker review of eviction to spares (a helper session, 2026-12-02 14:30, against commit 2eac24c). Each test
// asserts the secure behaviour; each failed before its fix (noted "FAILS while the weakness exists" below). A compromised block holds its valid keys: it may sign any alarm it likes.
extension DeploymentTests {
    @Suite(.serialized) struct EvictionAttackTests {
        /// One pass over every agent, as `AttackAgents.settle` does, swapping placed spares in as blocks. `afterOwner`
        /// is asked after the owner's step: true stops the pass there (before any block steps).
        @discardableResult
        func pass(_ r: AttackAgents, afterOwner: () throws -> Bool = { false }) throws -> Bool {
            var acted = false
            if let o = r.owner, try o.step() { acted = true }
            if try afterOwner() { return true }
            for b in r.blocks { if try b.step() { acted = true } }
            for s in r.spares { if try s.step() { acted = true } }
            for (i, s) in r.spares.enumerated().reversed() where s.placedAt != nil {
                r.spares.remove(at: i)
                let b = try BlockAgent(directory: r.spareDir(s.id), ledger: r.agentLedger)
                if let k = r.blocks.firstIndex(where: { $0.evictedReason != nil }) { r.evicted.append(r.blocks[k]); r.blocks[k] = b } else { r.blocks.append(b) }
            }
            return acted
        }

        /// Steps until the ouroboros has started `q` for the `runs`-th time, then lets the blocks and spares take
        /// their placements (one more pass of theirs, not the owner's): the query is open again, nobody computed yet.
        func runUntilRerun(_ r: AttackAgents, _ q: String, runs: Int) throws {
            for _ in 0..<400 {
                var started = false
                try pass(r, afterOwner: { started = try r.layerPosts(q, by: r.ouroboros).count >= runs; return started })
                if started {
                    for b in r.blocks { _ = try b.step() }
                    for s in r.spares { _ = try s.step() }
                    for (i, s) in r.spares.enumerated().reversed() where s.placedAt != nil {
                        r.spares.remove(at: i)
                        let b = try BlockAgent(directory: r.spareDir(s.id), ledger: r.agentLedger)
                        if let k = r.blocks.firstIndex(where: { $0.evictedReason != nil }) { r.evicted.append(r.blocks[k]); r.blocks[k] = b } else { r.blocks.append(b) }
                    }
                    return
                }
            }
            Issue.record("the query was never run again")
        }

        func finalAlarm(_ r: AttackAgents, _ q: String, by author: BlockAgent, naming suspect: [UInt8], _ reason: ValidationFailure,
                        hashFrom: [UInt8]? = nil) throws {
            let a = ValidationAlarm(suspect: suspect, hashFrom: hashFrom, entry: 1, input: nil, reason: reason, final: true)
            try r.ledger.append(kind: .alarm, queryID: q, payload: Alarm(.validation(a)).encoded(), signer: author.node.signer)
        }

        /// FAILS while the weakness exists (High): the compromised LAST block posts its correct output and, in the
        /// same owner page, a final alarm naming its predecessor. `OwnerAgent.step` delivers the answer in
        /// `node.step`, then `watch()` handles the rows by sequence — the alarm (older than the owner's delivery) while
        /// the query is still in `open` — so the delivered query is parked, an honest block evicted, and the query
        /// run and delivered a second time.
        @Test(.timeLimit(.minutes(1)))
        func aQueryAlreadyDeliveredIsNeitherParkedNorDeliveredAgain() throws {
            let r = try AttackAgents(spares: 1)
            let owner = try #require(r.owner)
            owner.rotateEvery = 0
            try r.settle()
            let (q, _) = try r.ask(attackInput(3))
            _ = try owner.step()                                   // opened; the ouroboros posts
            for b in r.blocks { _ = try b.step() }                 // in ring order: the last block posts to the ouroboros
            let last = r.blocks[4], honest = r.blocks[3]
            #expect(try r.layerPosts(q, by: last.signingKey).count == 1)
            try finalAlarm(r, q, by: last, naming: honest.signingKey, .undecryptable)
            try r.settle()
            let deliveries = try r.all([EntryFilter(kind: .delivery, author: r.ouroboros, queryID: q)])
            #expect(deliveries.count == 1, "the query was delivered \(deliveries.count) times")
            #expect(owner.evictions == 0, "an honest block was evicted for a query that had been answered already")
            #expect(honest.evictedReason == nil)
        }

        /// FAILS while the weakness exists (Medium/High): `OwnerAgent.evict` — a spare placed for a query and named
        /// again on a hash mismatch makes the owner evict `v.hashFrom`, which the alarm's author chooses freely
        /// (any member but the ouroboros). The compromised validator (block 3) first gets its honest predecessor
        /// (block 2) evicted, then names the spare with `hashFrom` = block 5, which neither computed the H it
        /// validates against (block 1 did: the spare's predecessor) nor is anywhere near: block 5 is evicted.
        @Test(.timeLimit(.minutes(1)))
        func theSecondEvictionCannotBeAimedAtAnyBlockByTheValidator() throws {
            let r = try AttackAgents(spares: 2)
            let owner = try #require(r.owner)
            owner.rotateEvery = 0
            try r.settle()
            let (q, _) = try r.ask(attackInput(4))
            _ = try owner.step()
            let b3 = r.blocks[2], b5 = r.blocks[4]
            try finalAlarm(r, q, by: b3, naming: r.blocks[1].signingKey, .undecryptable)
            _ = try owner.step()                                   // parks q, evicts block 2 (Prop. 1: one of the two)
            try runUntilRerun(r, q, runs: 2)
            #expect(owner.evictions == 1)
            let spare = r.blocks[1]
            #expect(spare.id != owner.ring.placement.first, "(the spare holds position 2)")
            try finalAlarm(r, q, by: b3, naming: spare.signingKey, .hashMismatch, hashFrom: b5.signingKey)
            try r.settle()
            #expect(b5.evictedReason == nil, "block 5 was evicted on the validator's word (hashFrom is not checked to be the spare's predecessor)")
        }

        /// FAILS while the weakness exists (Medium): a spare just placed for a query and named again by the same
        /// validator for a reason other than a hash mismatch is itself evicted (the second spare takes its slot); the
        /// validator — the one party common to both alarms — is never suspected. One compromised block burns two
        /// spares per query (and, across queries, every spare: `placedFor` is per query) and forces honest hosts out.
        @Test(.timeLimit(.minutes(1)))
        func aValidatorNamingEachSpareInTurnIsSuspectedItself() throws {
            let r = try AttackAgents(spares: 2)
            let owner = try #require(r.owner)
            owner.rotateEvery = 0
            try r.settle()
            let (q, _) = try r.ask(attackInput(5))
            _ = try owner.step()
            let b3 = r.blocks[2]
            try finalAlarm(r, q, by: b3, naming: r.blocks[1].signingKey, .undecryptable)
            _ = try owner.step()
            try runUntilRerun(r, q, runs: 2)
            let spare = r.blocks[1]
            try finalAlarm(r, q, by: b3, naming: spare.signingKey, .undecryptable)
            try r.settle()
            #expect(spare.evictedReason == nil || b3.evictedReason != nil,
                    "the fresh spare was evicted on the same validator's word, and the validator kept its place (evictions: \(owner.evictions))")
        }
    }
}
