@testable import DeepRingBlock
@testable import DeepRingClient
@testable import DeepRingOwner
import Crypto
import DeepRingEngine
import DeepRingLedger
import DeepRingProtocol
import Foundation
import Testing

// Eviction to spares: when validation (Eq. 13, Prop. 1) names a compromised block, the owner gives its slot to a
// spare in a key rotation, sends the spare the block's parameters sealed to it, and runs the query again. Played
// with the in-process agents that `block serve [--spare]` and `owner serve` run, over one SQLite ledger.
extension DeploymentTests {
    @Suite(.serialized) struct EvictionTests {
        func answer(_ r: AttackAgents, _ k: Int) throws -> Result<Tensor, QueryError>? {
            let (q, keys) = try r.ask(attackInput(k))
            try r.settle()
            return try r.outcome(q, keys)
        }

        func bits(_ o: Result<Tensor, QueryError>?) -> [UInt32]? {
            guard case .success(let t)? = o else { return nil }
            return t.data.map(\.bitPattern)
        }

        @Test(.timeLimit(.minutes(1)))
        func aBlockThatPerturbsItsInputIsEvictedToASpareAndTheQueryIsAnswered() throws {
            let r = try AttackAgents(spares: 1)
            let owner = try #require(r.owner)
            owner.rotateEvery = 0
            try r.settle()
            let expected = try #require(bits(try answer(r, 3)))
            let suspect = r.blocks[1]
            let suspectKey = suspect.signingKey
            let spareID = try #require(r.spares.first?.id)
            suspect.perturbInputs(by: 0.25)
            let got = try answer(r, 3)
            #expect(bits(got) == expected, "the query is answered, bit-identical to the honest ring's answer: \(String(describing: got))")
            #expect(owner.evictions == 1)
            #expect(suspect.evictedReason != nil, "the evicted block read its notice and stopped")
            #expect(!owner.members.contains(suspectKey), "the evicted keys left the member set")
            #expect(r.blocks[1].id == spareID, "the spare holds ring position 2")
            #expect(owner.members.dropFirst().elementsEqual(r.blocks.map(\.signingKey)))
            // The spare received exactly the evicted block's parameter file (from the owner's checkpoint).
            let file = try InputFile.read(r.spareDir(spareID) + "/params.safetensors", limit: 1 << 24)
            #expect(file == (try InputFile.read(r.blockDir(2) + "/params.safetensors", limit: 1 << 24)))
            let record = try SealedRing.open(r.dir).record
            #expect(record.order[1] == spareID && record.spares.first?.placed == 1 && record.spares.first?.replaced == hex(suspectKey))
            // The alarm named the block; the next query passes with no alarm at all.
            #expect(try r.all([EntryFilter(kind: .alarm)]).contains { e in
                guard let a = try? Alarm.decode(e), case .validation(let v) = a.body else { return false }
                return v.suspect == suspectKey
            })
            let alarms = try r.all([EntryFilter(kind: .alarm)]).count
            #expect(bits(try answer(r, 4)) != nil)
            #expect(try r.all([EntryFilter(kind: .alarm)]).count == alarms)
            let audit = RingAudit.audit(r.ledger, manifest: r.ring.manifest)
            #expect(audit.isClean, "\(audit)")
            // The evicted key writes nothing more: a post it signs now, even for the query it was in, is flagged.
            let queries = try r.all([EntryFilter(kind: .query)])
            let rerun = try #require(queries.count == 3 ? queries[1].queryID : nil)   // asked before the eviction's announcement
            try r.ledger.append(kind: .alarm, queryID: rerun, payload: [1, 4, 0], signer: suspect.node.signer)
            #expect(!RingAudit.audit(r.ledger, manifest: r.ring.manifest).isClean, "an evicted key's row passed the audit")
        }

        /// A block down when its eviction notice was posted reads it when it starts again, and stops.
        @Test(.timeLimit(.minutes(1)))
        func anEvictedBlockThatWasDownStopsWhenItStarts() throws {
            let r = try AttackAgents(spares: 1)
            let owner = try #require(r.owner)
            owner.rotateEvery = 0
            try r.settle()
            r.blocks[1].perturbInputs(by: 0.25)
            let (q, k) = try r.ask(attackInput(2))
            for _ in 0..<200 where try r.all([EntryFilter(kind: .rotation)]).isEmpty {
                _ = try owner.step()
                for b in r.blocks { _ = try b.step() }
            }
            do {
                let down = r.blocks.remove(at: 1)             // the suspect goes down before the notice
                try r.settle()
                #expect(down.evictedReason == nil, "(it was down: it did not read its notice)")
            }
            guard case .success? = try r.outcome(q, k) else { Issue.record("the query was not answered"); return }
            #expect(owner.evictions == 1)
            let restarted = try BlockAgent(directory: r.blockDir(2), ledger: r.agentLedger)
            #expect(restarted.evictedReason != nil, "the restarted block found its eviction notice")
            #expect(try !restarted.step())
        }

        /// The owner stops after the eviction's commit, before the parked query ran again (its first post fails):
        /// started again, it finds the query started under keys that have left, and runs it again.
        @Test(.timeLimit(.minutes(1)))
        func anOwnerStoppedBeforeItRanAParkedQueryAgainRunsItWhenItStarts() throws {
            let r = try AttackAgents(counting: true, spares: 1)
            let counter = try #require(r.counter)
            var asked: (String, BlockKeys)?
            do {
                let owner = try #require(r.owner)
                owner.rotateEvery = 0
                try r.settle()
                r.blocks[1].perturbInputs(by: 0.25)
                asked = try r.ask(attackInput(3))
                for _ in 0..<200 where try r.all([EntryFilter(kind: .rotation)]).isEmpty {
                    _ = try owner.step()
                    for b in r.blocks { _ = try b.step() }
                }
                for b in r.blocks { _ = try b.step() }       // every block posts its rekey
                counter.failing = [.layer]                   // the re-run's first post fails: the owner stops there
                var failed = false
                for _ in 0..<10 where !failed { do { _ = try owner.step() } catch { failed = true } }
                #expect(failed && owner.evictions == 1)
            }
            r.owner = nil
            counter.failing = []
            try r.settle()                                   // the blocks and the spare take their placements meanwhile
            let o = try OwnerAgent(directory: r.dir, ledger: r.agentLedger, lockTimeout: 5)
            o.checkEvery = 0
            o.rotateEvery = 0
            o.enrollAtStart = false
            r.owner = o
            try r.settle()
            let (q, k) = try #require(asked)
            guard case .success? = try r.outcome(q, k) else { Issue.record("the parked query was not run again by the new owner"); return }
            #expect(o.takeEvents().contains { $0.queryID == q && $0.event == "parked" })
        }

        /// Prop. 1 names two suspects on a hash mismatch: the block whose output differs, and the block that computed
        /// the H it was checked against (its predecessor, from its copy of the layer). Here the predecessor's copy is
        /// tampered with: the owner first evicts the honest block; the spare in its slot is named again for the same
        /// query, so the other suspect is evicted too, and the query is answered.
        @Test(.timeLimit(.minutes(1)))
        func aSpareNamedAgainPointsAtTheBlockThatComputedTheHash() throws {
            let r = try AttackAgents(spares: 2)
            let owner = try #require(r.owner)
            owner.rotateEvery = 0
            try r.settle()
            let expected = try #require(bits(try answer(r, 5)))
            let liar = r.blocks[0], honest = r.blocks[1]
            let liarKey = liar.signingKey, honestKey = honest.signingKey
            let n = liar.node.next.parameters.count
            liar.node.next.parameters.withValues { for i in 0..<n { $0[i] += 0.5 } }   // block 1's copy of layer 2, in memory
            let got = try answer(r, 5)
            #expect(bits(got) == expected, "\(String(describing: got))")
            #expect(owner.evictions == 2)
            #expect(!owner.members.contains(liarKey) && !owner.members.contains(honestKey))
            #expect(liar.evictedReason != nil)
        }

        /// Without a spare the query is refused, naming the block; with the only spare used up, the next compromised
        /// block's query is refused too, saying that no spare is left.
        @Test(.timeLimit(.minutes(1)))
        func withoutASpareTheQueryIsRefusedNamingTheBlock() throws {
            let r = try AttackAgents(spares: 1)
            let owner = try #require(r.owner)
            owner.rotateEvery = 0
            try r.settle()
            r.blocks[1].perturbInputs(by: 0.25)
            #expect(bits(try answer(r, 6)) != nil)
            #expect(owner.evictions == 1)
            r.blocks[2].perturbInputs(by: 0.25)
            let position3 = try #require(r.blocks[2].id as String?)
            guard case .failure(let e)? = try answer(r, 7) else { Issue.record("the query was not refused"); return }
            #expect("\(e)".contains(position3) && "\(e)".contains("no spare block is left"), "\(e)")
            #expect(owner.evictions == 1)
        }

        /// A spare takes only the ouroboros's placement, sealed to it, naming its own keys and carrying the file its
        /// descriptor names; a spare stopped after it wrote the file but before its descriptor takes the placement
        /// again when it starts.
        @Test(.timeLimit(.minutes(1)))
        func aSpareRefusesForgedPlacementsAndResumesAfterACrash() throws {
            let r = try AttackAgents(spares: 1)
            let owner = try #require(r.owner)
            owner.rotateEvery = 0
            try r.settle()
            let spareID = try #require(r.spares.first?.id)
            let dir = r.spareDir(spareID)
            let keys = try #require(try KeyFile.read(dir + "/keys.json").memberKeys)
            let b2 = try BlockDescriptor.read(r.blockDir(2) + "/block.json")
            let file = try InputFile.read(r.blockDir(2) + "/params.safetensors", limit: 1 << 24)
            let identity = try KeyFile.read(r.dir + "/owner/identity.json").signing
            func forged(descriptor signer: Curve25519.Signing.PrivateKey, file: [UInt8], by author: LedgerSigner) throws {
                var d = b2
                d.id = spareID; d.keys = keys.publicKeys; d.generation = 1
                try d.sign(with: signer)
                let call = "rotation-forged"
                let sealed = try HPKEBox.seal(SparePlacement.plaintext(descriptor: try encodeJSON(d), file: file), to: keys.publicKeys.agreement, aad: SparePlacement.aad(call: call, recipient: keys.publicKeys.signing))
                try r.ledger.append(kind: .placement, queryID: call, payload: SparePlacement(generation: 1, recipient: keys.publicKeys.signing, sealed: sealed).encoded(),
                                    signer: author)
            }
            let ouroboros = LedgerSigner(try KeyFile.read(r.dir + "/owner/keys.json").signing)
            var tampered = file
            tampered[tampered.count - 1] ^= 1
            try forged(descriptor: identity, file: file, by: LedgerSigner())                 // not the ouroboros's row
            try forged(descriptor: Curve25519.Signing.PrivateKey(), file: file, by: ouroboros)  // not the owner's descriptor
            try forged(descriptor: identity, file: tampered, by: ouroboros)                    // not the file it names
            // Not the row's generation (the row says 2, the descriptor 1):
            do {
                var d = b2
                d.id = spareID; d.keys = keys.publicKeys; d.generation = 1
                try d.sign(with: identity)
                let sealed = try HPKEBox.seal(SparePlacement.plaintext(descriptor: try encodeJSON(d), file: file), to: keys.publicKeys.agreement, aad: SparePlacement.aad(call: "c", recipient: keys.publicKeys.signing))
                try r.ledger.append(kind: .placement, queryID: "c", payload: SparePlacement(generation: 2, recipient: keys.publicKeys.signing, sealed: sealed).encoded(),
                                    signer: ouroboros)
            }
            // (The stranger's row is not even read: a spare reads only the ouroboros's placements.)
            #expect(try !r.spares[0].step(), "no forged placement is taken")
            #expect(r.spares[0].takeEvents().filter { $0.event == "placement refused" }.count == 3)
            #expect(!FileManager.default.fileExists(atPath: dir + "/block.json") && !FileManager.default.fileExists(atPath: dir + "/params.safetensors"))
            // A genuine eviction; the spare "crashes" after writing its file (its descriptor removed again).
            r.spares.removeAll()
            r.blocks[1].perturbInputs(by: 0.25)
            let (q, k) = try r.ask(attackInput(8))
            try r.settle()
            #expect(try r.outcome(q, k) == nil, "no spare running: the query waits")
            #expect(owner.evictions == 1)
            let again = try SpareAgent(directory: dir, ledger: r.agentLedger)   // a waiting spare (it never ran the placement)
            #expect(try again.step())
            #expect(FileManager.default.fileExists(atPath: dir + "/block.json"))
            unlink(dir + "/block.json")                                         // the crash: file written, descriptor not
            r.spares = [try SpareAgent(directory: dir, ledger: r.agentLedger)]
            try r.settle()
            guard case .success? = try r.outcome(q, k) else { Issue.record("the query was not answered after the spare started"); return }
        }
    }
}
