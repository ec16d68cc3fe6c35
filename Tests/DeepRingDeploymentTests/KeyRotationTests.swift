@testable import DeepRingBlock
@testable import DeepRingOwner
import DeepRingEngine
import DeepRingLedger
import DeepRingProtocol
import Crypto
import Foundation
import Testing

// Key rotation across hosts (`KeyRotation`): the blocks make their own key pairs, the owner learns only their public
// halves (sealed to it), and sends each block its new neighbours' keys. Played with the in-process agents that
// `block serve` and `owner serve` run, over one SQLite ledger.
extension DeploymentTests {
    @Suite(.serialized) struct KeyRotationTests {
        /// Signing keys of every block, from the agents and from their folders' key files.
        func keys(_ r: AttackAgents) throws -> (agents: [[UInt8]], files: [[UInt8]]) {
            let files = try (1...r.blocks.count).map { j -> [UInt8] in
                Array(try KeyFile.read(r.blockDir(j) + "/keys.json").signing.publicKey.rawRepresentation)
            }
            return (r.blocks.map(\.signingKey), files)
        }

        /// In-process agents over a byte-counting ledger whose appends can be made to fail; rotations only on request.
        func countingRing() throws -> (AttackAgents, OwnerAgent, CountingLedger) {
            let r = try AttackAgents(counting: true)
            let owner = try #require(r.owner)
            let counter = try #require(r.counter)
            owner.rotateEvery = 0
            try r.settle()
            return (r, owner, counter)
        }

        func answer(_ r: AttackAgents, _ k: Int) throws -> Tensor? {
            let (q, keys) = try r.ask(attackInput(k))
            try r.settle()
            guard case .success(let t)? = try r.outcome(q, keys) else { return nil }
            return t
        }

        @Test(.timeLimit(.minutes(1)))
        func blocksRotateTheirOwnKeysOverTheLedgerAndAnswersStayTheSame() throws {
            let r = try AttackAgents()
            let owner = try #require(r.owner)
            owner.rotateEvery = 2
            try r.settle()
            let before = try keys(r)
            let first = try #require(try answer(r, 1))
            _ = try #require(try answer(r, 2))
            try r.settle()
            #expect(owner.rotations == 1, "two queries ended: one rotation")
            let after = try keys(r)
            for j in 0..<r.blocks.count {
                #expect(after.agents[j] != before.agents[j], "block \(j + 1) computes with new keys")
                #expect(after.files[j] == after.agents[j], "block \(j + 1)'s keys.json holds the keys it computes with")
                #expect(!FileManager.default.fileExists(atPath: r.blockDir(j + 1) + "/keys.next.json"))
                let d = try BlockDescriptor.read(r.blockDir(j + 1) + "/block.json")
                #expect(d.generation == 1 && d.isSigned(by: r.ring.ownerKey) && d.keys.signing == after.agents[j])
            }
            // The new keys travel sealed: no rekey row carries a new key in the clear.
            for e in try r.all([EntryFilter(kind: .rekey)]) {
                for k in after.agents { #expect(!contains(e.payload, k), "a rekey row shows a new signing key") }
            }
            // The same input, through the new keys, gives the same bytes.
            let again = try #require(try answer(r, 1))
            #expect(again.data.map(\.bitPattern) == first.data.map(\.bitPattern))
            let audit = RingAudit.audit(r.ledger, manifest: r.ring.manifest)
            #expect(audit.isClean, "\(audit)")
        }

        /// Enrollment: the owner rotates before its first query when the ring is at generation 0, so the key pairs
        /// `seal` made on the owner's host never sign a query — the first query is answered under the blocks' own.
        @Test(.timeLimit(.minutes(1)))
        func theKeysSealMadeAreReplacedBeforeTheFirstQuery() throws {
            let r = try AttackAgents()
            do {
                let owner = try #require(r.owner)
                owner.enrollAtStart = true
                owner.rotateEvery = 0
                let sealed = r.blocks.map(\.signingKey)
                let (q, k) = try r.ask(attackInput(2))
                try r.settle()
                guard case .success? = try r.outcome(q, k) else { Issue.record("the first query was not answered"); return }
                #expect(owner.rotations == 1)
                #expect(zip(sealed, r.blocks.map(\.signingKey)).allSatisfy { $0 != $1 }, "every block computes with keys it made")
                for e in try r.all([EntryFilter(kind: .layer, queryID: q)]) {
                    #expect(!sealed.contains(e.author), "a key seal made signed a post of the first query")
                }
            }
            // A restarted owner (generation 1 now) does not enroll again.
            r.owner = nil
            let again = try OwnerAgent(directory: r.dir, ledger: r.agentLedger, lockTimeout: 5)
            again.checkEvery = 0
            again.rotateEvery = 0
            r.owner = again
            #expect(try answer(r, 3) != nil)
            #expect(again.rotations == 0)
        }

        /// The first post of a query asked during a rotation fails (an outage): the query starts at the next step —
        /// neither dropped nor left open with no post until its deadline.
        @Test(.timeLimit(.minutes(1)))
        func aQueryWhoseFirstPostFailsIsStartedAtTheNextStep() throws {
            let (r, owner, counter) = try countingRing()
            owner.requestRotation()
            let (q, k) = try r.ask(attackInput(4))
            for _ in 0..<3 { _ = try owner.step() }          // held; the call is out
            for b in r.blocks { _ = try b.step() }           // every block posts its rekey
            counter.failing = [.layer]
            var failed = false
            for _ in 0..<10 where !failed {
                _ = try owner.step()
                failed = owner.takeEvents().contains { $0.queryID == q && $0.event == "error" }
            }
            #expect(failed, "the query's first post failed")
            #expect(owner.rotations == 1)
            counter.failing = []
            try r.settle()
            guard case .success? = try r.outcome(q, k) else { Issue.record("the held query was not answered after the outage"); return }
        }

        /// A block stopped after it posted its new keys (killed: its agent gone) misses the owner's placement; started
        /// again, it finds the placement on the ledger and takes it on.
        @Test(.timeLimit(.minutes(1)))
        func aBlockStoppedDuringARotationTakesItsPlacementWhenItStartsAgain() throws {
            let r = try AttackAgents()
            let owner = try #require(r.owner)
            owner.rotateEvery = 1
            try r.settle()
            let (q, k) = try r.ask(attackInput(3))
            // Until the call: the query ends, the owner drains and calls.
            for _ in 0..<50 where try r.all([EntryFilter(kind: .rotation)]).isEmpty {
                _ = try owner.step()
                for b in r.blocks { _ = try b.step() }
            }
            #expect(try r.outcome(q, k) != nil)
            for b in r.blocks { _ = try b.step() }   // every block posts its rekey
            let victim = 2
            let oldKey = r.blocks[victim - 1].signingKey
            r.blocks.remove(at: victim - 1)          // kill -9: the agent is gone, its folder stays
            #expect(FileManager.default.fileExists(atPath: r.blockDir(victim) + "/keys.next.json"))
            for _ in 0..<10 { _ = try owner.step(); for b in r.blocks { _ = try b.step() } }
            #expect(owner.rotations == 1)
            let restarted = try BlockAgent(directory: r.blockDir(victim), ledger: r.ledger)
            r.blocks.insert(restarted, at: victim - 1)
            #expect(restarted.signingKey != oldKey, "the restarted block took on its placement")
            #expect(!FileManager.default.fileExists(atPath: r.blockDir(victim) + "/keys.next.json"))
            #expect(try answer(r, 4) != nil, "the ring answers with the new keys")
            #expect(RingAudit.audit(r.ledger, manifest: r.ring.manifest).isClean)
        }

        /// A block down for a whole rotation, its placement beyond its resume window when it starts again: it
        /// computes with its old keys (and is out of the ring) until the next call, which is for a generation past
        /// its own — then it finds its placement anywhere on the ledger, takes it on, and answers the call.
        @Test(.timeLimit(.minutes(1)))
        func aBlockThatMissedAWholeRotationCatchesUpAtTheNextCall() throws {
            let r = try AttackAgents()
            let owner = try #require(r.owner)
            owner.rotateEvery = 0
            try r.settle()
            owner.requestRotation()
            for _ in 0..<3 { _ = try owner.step() }          // the call is out
            for b in r.blocks { _ = try b.step() }           // every block posts its rekey
            let victim = 3
            r.blocks.remove(at: victim - 1)                  // … and block 3 goes down
            for _ in 0..<10 { _ = try owner.step(); for b in r.blocks { _ = try b.step() } }
            #expect(owner.rotations == 1)
            try r.junkQueries(10)                            // its placement is far behind now
            let late = try BlockAgent(directory: r.blockDir(victim), ledger: r.ledger, resumeWindow: 3)
            r.blocks.insert(late, at: victim - 1)
            #expect(FileManager.default.fileExists(atPath: r.blockDir(victim) + "/keys.next.json"), "its placement is beyond its window")
            let stale = late.signingKey
            owner.requestRotation()
            try r.settle()
            #expect(owner.rotations == 2)
            #expect(late.signingKey != stale)
            #expect(owner.members.dropFirst().elementsEqual(r.blocks.map(\.signingKey)), "every block, the late one too, is in generation 2")
            #expect(try answer(r, 10) != nil)
            #expect(RingAudit.audit(r.ledger, manifest: r.ring.manifest).isClean)
        }

        /// The owner stops between its commit and its placements (the first append fails): started again, it posts the
        /// placements again, and the ring answers.
        @Test(.timeLimit(.minutes(1)))
        func anOwnerStoppedAfterItsCommitPublishesTheRotationWhenItStartsAgain() throws {
            let r = try AttackAgents(counting: true)
            let counter = try #require(r.counter)
            do {
                let owner = try #require(r.owner)
                owner.rotateEvery = 1
                try r.settle()
                counter.failing = [.placement]
                _ = try r.ask(attackInput(5))
                var failed = false
                for _ in 0..<50 where !failed {
                    do { _ = try owner.step() } catch { failed = true }
                    for b in r.blocks { _ = try b.step() }
                }
                #expect(failed, "the first placement's append failed")
                let rows = try r.ledger.entries(in: 1...(try r.ledger.lastSequence()), matching: EntryKind.allCases.map { EntryFilter(kind: $0) }).map { "\($0.sequence) \($0.kind) \($0.queryID ?? "")" }
                #expect(try r.all([EntryFilter(kind: .placement)]).isEmpty, "\(rows)")
            }
            r.owner = nil   // the owner's process is gone
            counter.failing = []
            let before = r.blocks.map(\.signingKey)
            let o = try OwnerAgent(directory: r.dir, ledger: r.agentLedger, lockTimeout: 5)
            o.checkEvery = 0
            o.rotateEvery = 0
            r.owner = o
            try r.settle()
            #expect(zip(before, r.blocks.map(\.signingKey)).allSatisfy { $0 != $1 }, "every block took on the published placement")
            #expect(try answer(r, 6) != nil)
            #expect(RingAudit.audit(r.ledger, manifest: r.ring.manifest).isClean)
        }

        /// A query asked while the ring drains for a rotation waits: the ouroboros starts it only after the new
        /// generation is announced, and it is answered under the new keys; the query in flight when the rotation
        /// became due finishes under the old ones.
        @Test(.timeLimit(.minutes(1)))
        func aQueryAskedDuringARotationWaitsAndIsAnsweredUnderTheNewKeys() throws {
            let r = try AttackAgents()
            let owner = try #require(r.owner)
            owner.rotateEvery = 0
            try r.settle()
            let expected = try #require(try answer(r, 9))
            let (a, ka) = try r.ask(attackInput(9))
            _ = try owner.step()                              // starts the first query
            #expect(try !r.layerPosts(a, by: r.ouroboros).isEmpty)
            owner.rotateEvery = 1                             // due now: one query has ended
            let (q, k) = try r.ask(attackInput(9))
            for _ in 0..<3 { _ = try owner.step() }          // draining: the first query is still in flight
            owner.rotateEvery = 0                             // this one rotation only
            #expect(try r.layerPosts(q, by: r.ouroboros).isEmpty, "a query asked while the ring drains waits")
            #expect(try r.all([EntryFilter(kind: .rotation)]).isEmpty, "no call while a query is in flight")
            try r.settle()
            for (id, key) in [(a, ka), (q, k)] {
                guard case .success(let got)? = try r.outcome(id, key) else { Issue.record("query \(id) was not answered"); continue }
                #expect(got.data.map(\.bitPattern) == expected.data.map(\.bitPattern))
            }
            let called = try #require(try r.all([EntryFilter(kind: .rotation)]).last?.sequence)
            let announced = try #require(try r.all([EntryFilter(kind: .reshuffle)]).last?.sequence)
            let delivered = try #require(try r.all([EntryFilter(kind: .delivery, queryID: a)]).first?.sequence)
            let started = try #require(try r.layerPosts(q, by: r.ouroboros).first?.sequence)
            #expect(delivered < called, "the query in flight ended before the call")
            #expect(started > announced, "the held query started only after the new generation was announced")
            #expect(owner.rotations == 1)
            // Block 1 read its placement and the released query's first post in one page: it answered with its new
            // keys, and its old ones raised no alarm about a post addressed to someone else.
            #expect(try r.all([EntryFilter(kind: .alarm)]).isEmpty, "no alarm")
            let audit = RingAudit.audit(r.ledger, manifest: r.ring.manifest)
            #expect(audit.isClean, "\(audit)")
        }

        /// A rotation call read twice (a page read again after a lost connection): every block posts the keys it made
        /// at the first reading again — never new ones, which would orphan the keys the owner commits — and the
        /// rotation completes with them.
        @Test(.timeLimit(.minutes(1)))
        func aRotationCallReadTwiceIsAnsweredWithTheSameKeys() throws {
            let (r, owner, counter) = try countingRing()
            owner.requestRotation()
            for _ in 0..<3 { _ = try owner.step() }          // the call is out
            for b in r.blocks { _ = try b.step() }           // every block posts its rekey
            counter.epoch += 1                               // the connection was lost: the last rows are read again
            for b in r.blocks { _ = try b.step() }
            #expect(try r.all([EntryFilter(kind: .rekey)]).count == 2 * r.blocks.count, "the call was answered twice")
            try r.settle()
            #expect(owner.rotations == 1)
            #expect(owner.members.dropFirst().elementsEqual(r.blocks.map(\.signingKey)), "every block computes with the keys the owner committed")
            for j in 1...r.blocks.count { #expect(!FileManager.default.fileExists(atPath: r.blockDir(j) + "/keys.next.json")) }
            #expect(try answer(r, 11) != nil)
            #expect(RingAudit.audit(r.ledger, manifest: r.ring.manifest).isClean)
        }

        /// A member's new keys sealed with a proof of possession signed by `prover`.
        func forgedRekey(_ r: AttackAgents, call: String, author: BlockAgent, keys: PublicKeys,
                         prover: Curve25519.Signing.PrivateKey) throws -> [UInt8] {
            var w = BinaryWriter(capacity: 160)
            keys.write(to: &w)
            w.raw(Array(try prover.signature(for: RekeyPost.proof(call: call, author: author.signingKey))))
            return try HPKEBox.seal(w.bytes, to: r.ring.manifest.ouroboros.agreement, aad: RekeyPost.aad(call: call, author: author.signingKey))
        }

        /// New keys without proof that the member holds them (another party's public keys, a proof made by another
        /// key), or with an agreement key nothing can be sealed to (a low-order point), are not taken: the member
        /// is named when the call times out, and every block keeps its keys.
        @Test(.timeLimit(.minutes(1)))
        func newKeysWithoutProofOfPossessionOrUnusableAreRefused() throws {
            for attack in 0..<2 {
                let r = try AttackAgents()
                let owner = try #require(r.owner)
                owner.rotateEvery = 0
                owner.roundTimeout = 0.5
                try r.settle()
                let b1 = r.blocks[0]
                owner.requestRotation()
                for _ in 0..<3 { _ = try owner.step() }
                let call = try #require(try r.all([EntryFilter(kind: .rotation)]).last?.queryID)
                let other = BlockKeys()
                var keys = other.publicKeys
                var prover = other.signing
                if attack == 0 { prover = Curve25519.Signing.PrivateKey() }        // a proof by a key it does not name
                else { keys = PublicKeys(signing: keys.signing, agreement: [UInt8](repeating: 0, count: 32)) }   // low order
                let sealed = try forgedRekey(r, call: call, author: b1, keys: keys, prover: prover)
                try r.ledger.append(kind: .rekey, queryID: call, payload: RekeyPost(generation: 1, sealedKeys: sealed).encoded(), signer: b1.node.signer)
                let others = Array(r.blocks.dropFirst())
                r.blocks = others                       // block 1 posted only the forged rekey
                let before = others.map(\.signingKey)
                for _ in 0..<20 { try r.settle(); Thread.sleep(forTimeInterval: 0.05) }
                #expect(owner.rotations == 0, "attack \(attack): the rotation did not complete")
                #expect(others.map(\.signingKey) == before, "attack \(attack): every block keeps its keys")
                #expect(owner.takeEvents().contains { $0.event == "rotation abandoned" && $0.detail.contains("ring position 1") })
            }
        }

        /// A member that posts another member's current keys as its new ones is refused (it would take over that
        /// member's place); an outsider's rekey is not read at all; the rotation completes with the genuine keys.
        @Test(.timeLimit(.minutes(1)))
        func aRekeyWithKeysInUseIsRefused() throws {
            let r = try AttackAgents()
            let owner = try #require(r.owner)
            owner.rotateEvery = 0
            try r.settle()
            _ = try answer(r, 7)
            owner.rotateEvery = 1
            // The call is out; before the blocks answer, block 1 answers with block 2's keys.
            for _ in 0..<5 { _ = try owner.step() }
            let call = try #require(try r.all([EntryFilter(kind: .rotation)]).last?.queryID)
            #expect(owner.rotations == 0)
            let b1 = r.blocks[0], b2 = r.blocks[1]
            // (With block 2's proof of possession, as if the two colluded: the in-use check stands on its own.)
            let sealed = try forgedRekey(r, call: call, author: b1, keys: b2.node.publicKeys, prover: b2.node.keys.signing)
            try r.ledger.append(kind: .rekey, queryID: call, payload: RekeyPost(generation: 1, sealedKeys: sealed).encoded(), signer: b1.node.signer)
            let stranger = LedgerSigner()
            try r.ledger.append(kind: .rekey, queryID: call, payload: RekeyPost(generation: 1, sealedKeys: sealed).encoded(), signer: stranger)
            let before = r.blocks.map(\.signingKey)
            try r.settle()
            #expect(owner.rotations == 1)
            #expect(zip(before, r.blocks.map(\.signingKey)).allSatisfy { $0 != $1 }, "every block rotated to the keys it made itself")
            #expect(owner.members.dropFirst().elementsEqual(r.blocks.map(\.signingKey)), "the owner's member set is the blocks' own new keys")
            #expect(try answer(r, 8) != nil)
        }
    }
}

func contains(_ haystack: [UInt8], _ needle: [UInt8]) -> Bool {
    guard needle.count <= haystack.count else { return false }
    return (0...(haystack.count - needle.count)).contains { i in haystack[i..<(i + needle.count)].elementsEqual(needle) }
}
