import Crypto
@testable import DeepRingBlock
@testable import DeepRingClient
@testable import DeepRingEmbedded
@testable import DeepRingNode
@testable import DeepRingOwner
import DeepRingEngine
import DeepRingData
import DeepRingLedger
import DeepRingLedgerSQLite
import DeepRingProtocol
import Foundation
import GRDB
import Testing

// Findings 2–7 of the adversarial review, each reproduced as the attacker would: by programs written against the
// ring's files and its ledger.

func readJSONObject(_ path: String) throws -> [String: Any] {
    try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: path))) as? [String: Any] ?? [:]
}

func writeJSONObject(_ obj: [String: Any], _ path: String) throws {
    try JSONSerialization.data(withJSONObject: obj, options: [.sortedKeys]).write(to: URL(fileURLWithPath: path))
}

/// Every K (the sealed next-hop AES key) and the sealed input on the ledger that `key` can open: an attacker who
/// swapped in its own public key would read activations or the querent's input with it.
func ciphertextsOpenedBy(_ key: Curve25519.KeyAgreement.PrivateKey, _ ledger: SQLiteLedger) throws -> Int {
    var opened = 0
    for e in try ledger.allEntries() {
        guard let q = e.queryID else { continue }
        if e.kind == .layer, let p = try? LayerPost.decode(e) {
            let aad = LayerPost.aad(queryID: q, from: e.author, to: p.recipient)
            if (try? HPKEBox.open(p.sealedKey[...], with: key, aad: aad)) != nil { opened += 1 }
        }
        if e.kind == .query, let r = try? QueryRequest.decode(e),
           (try? HPKEBox.open(r.sealedInput[...], with: key, aad: QueryRequest.aad(queryID: q, querent: r.querent))) != nil {
            opened += 1
        }
    }
    return opened
}

@Suite struct AuthenticatedFilesTests {
    /// Finding 2: replacing the successor key in `block.json` let the attacker decrypt a block's activations.
    @Test func aSwappedSuccessorKeyInBlockJSONIsReportedAndNeverUsed() throws {
        let m = try smallModel(seed: 41)
        let dir = try sealedRing(m)
        let ring = try SealedRing.open(dir)
        let victim = ring.placement[1]
        let attacker = Curve25519.KeyAgreement.PrivateKey()
        let path = dir + "/blocks/\(victim)/block.json"
        var d = try readJSONObject(path)
        var succ = d["successor"] as? [String: Any] ?? [:]
        succ["agreement"] = hex(attacker.publicKey.rawRepresentation)
        d["successor"] = succ
        try writeJSONObject(d, path)
        let report = try RingCheck.run(dir)
        #expect(!report.authentic)
        #expect(report.findings.contains { $0.subject == .block(victim, position: 2) && $0.problem.contains("not signed by the owner") })
        // The block refuses its own descriptor at load; the owner re-provisions it before serving.
        #expect(throws: RingError.self) { try BlockBundle.load(dir + "/blocks/\(victim)") }
        let rt = try RingRuntime(directory: dir)
        #expect(rt.reprovisioned == [victim])
        for n in [1, 7] {
            let x = sampleInputs(n, seed: UInt64(n))
            #expect(try rt.query(x).logits.data.map(\.bitPattern) == plainLogits(m, x).data.map(\.bitPattern))
        }
        #expect(try ciphertextsOpenedBy(attacker, rt.ledger) == 0)
        #expect(try RingCheck.run(dir).authentic)
        #expect(try rt.ring.auditLedger().isClean)
    }

    /// Finding 2: replacing the ouroboros's HPKE key in `ring.json` let the attacker read the querent's image.
    @Test func aReplacedOuroborosKeyInRingJSONIsRefusedBeforeAnythingIsSent() throws {
        let m = try smallModel(seed: 42)
        let dir = try sealedRing(m)
        let pins = KnownRings(path: dir + ".known_rings")
        let genuine = try RingManifest.read(dir + "/ring.json")
        #expect(try pins.authenticate(genuine, ownerKey: nil) == .firstUse)
        #expect(try pins.authenticate(genuine, ownerKey: nil) == .pinned)
        let attacker = Curve25519.KeyAgreement.PrivateKey(), attackerOwner = Curve25519.Signing.PrivateKey()
        // Edited in place: the owner's signature no longer verifies.
        var edited = try readJSONObject(dir + "/ring.json")
        var o = edited["ouroboros"] as? [String: Any] ?? [:]
        o["agreement"] = hex(attacker.publicKey.rawRepresentation)
        edited["ouroboros"] = o
        try writeJSONObject(edited, dir + "/ring.json")
        #expect(throws: RingError.self) { try RingManifest.read(dir + "/ring.json") }
        // Re-signed by the attacker as a new "owner": self-consistent, but not the pinned owner — refused, also when
        // the querent names the owner key itself.
        var forged = genuine
        forged.ouroboros.agreement = Array(attacker.publicKey.rawRepresentation)
        forged.owner = hex(attackerOwner.publicKey.rawRepresentation)
        try forged.sign(with: attackerOwner)
        try writeFileAtomically(try encodeJSON(forged), to: dir + "/ring.json")
        let read = try RingManifest.read(dir + "/ring.json")
        #expect(throws: RingError.self) { try pins.authenticate(read, ownerKey: nil) }
        #expect(throws: RingError.self) { try pins.authenticate(read, ownerKey: genuine.ownerFingerprint) }
        #expect(throws: RingError.self) { try KnownRings(path: dir + ".other").authenticate(read, ownerKey: genuine.ownerFingerprint) }
        // verify names it; the owner re-issues the genuine manifest.
        let report = try RingCheck.run(dir)
        #expect(report.findings.contains { $0.subject == .manifest && $0.repair == .reissueManifest })
        let (_, _, after) = try RingCheck.repair(dir)
        #expect(after.authentic)
        #expect(try RingManifest.read(dir + "/ring.json") == genuine)
        #expect(try pins.authenticate(try RingManifest.read(dir + "/ring.json"), ownerKey: nil) == .pinned)
        // Nothing was ever sealed to the attacker's key.
        #expect(try ciphertextsOpenedBy(attacker, SQLiteLedger(path: dir + "/ledger.sqlite")) == 0)
    }

    /// Found by the second attacker review: pins were keyed by the ring id inside the untrusted ring.json, so
    /// replacing a ring's ring.json (and ledger) by another ring's was trusted anew on first use. A location pinned to
    /// one ring never holds another without a refusal.
    @Test func aLocationPinnedToOneRingIsRefusedWhenItHoldsAnother() throws {
        let first = try sealedRing(try smallModel(seed: 45)), other = try sealedRing(try smallModel(seed: 46))
        let pins = KnownRings(path: first + ".pins")
        let here = KnownRings.location(of: first)
        #expect(try pins.authenticate(try RingManifest.read(first + "/ring.json"), ownerKey: nil, location: here) == .firstUse)
        try FileManager.default.removeItem(atPath: first + "/ring.json")
        try FileManager.default.copyItem(atPath: other + "/ring.json", toPath: first + "/ring.json")
        #expect(throws: RingError.self) { try pins.authenticate(try RingManifest.read(first + "/ring.json"), ownerKey: nil, location: here) }
        // The other ring is trusted where it lives, and pins survive a reload with awkward paths.
        #expect(try pins.authenticate(try RingManifest.read(other + "/ring.json"), ownerKey: nil, location: KnownRings.location(of: other)) == .firstUse)
        try pins.remember("r-3", fingerprint: KeyFingerprint.of([UInt8](repeating: 1, count: 32)), location: "/tmp/a dir/with %41 spaces")
        #expect(try pins.pins().contains { $0.location == "/tmp/a dir/with %41 spaces" })
    }

    /// Finding 2: replacing a block's own key made `ledger audit` accept rows forged with the attacker's key.
    @Test func aReplacedBlockKeyIsReportedAndTheAuditTakesMembersOnlyFromTheOwner() throws {
        let m = try smallModel(seed: 43)
        let dir = try sealedRing(m)
        let ring = try SealedRing.open(dir)
        let victim = ring.placement[2]
        let attacker = BlockKeys()
        let b = dir + "/blocks/\(victim)"
        let anchor = try KeyFile.read(b + "/keys.json").owner
        try KeyFile.write(attacker, owner: anchor, to: b + "/keys.json")
        var d = try readJSONObject(b + "/block.json")
        d["keys"] = ["signing": hex(attacker.publicKeys.signing), "agreement": hex(attacker.publicKeys.agreement)]
        try writeJSONObject(d, b + "/block.json")
        let ledger = try SQLiteLedger(path: dir + "/ledger.sqlite")
        try ledger.append(kind: .layer, queryID: "forged", payload: [1, 2, 3], signer: LedgerSigner(attacker.signing))
        #expect(try ring.auditLedger().firstProblem?.problem == .unknownAuthor)
        #expect(try RingCheck.run(dir).findings.contains { $0.subject == .block(victim, position: 3) })
        #expect(throws: RingError.self) { try BlockBundle.load(b) }
    }

    /// A key file readable by others is named, and the block re-provisioned with fresh keys (the old ones may leak).
    @Test func aWorldReadableBlockKeyIsNamedAndRotated() throws {
        let m = try smallModel(seed: 44)
        let dir = try sealedRing(m)
        let ring = try SealedRing.open(dir)
        let victim = ring.placement[0]
        let old = try KeyFile.read(dir + "/blocks/\(victim)/keys.json").signing.publicKey.rawRepresentation
        chmod(dir + "/blocks/\(victim)/keys.json", 0o644)
        let report = try RingCheck.run(dir)
        #expect(report.findings.contains { $0.subject == .block(victim, position: 1) && $0.problem.contains("chmod 600") && $0.repair == .reprovision })
        let (_, done, after) = try RingCheck.repair(dir)
        #expect(after.authentic && done.reprovisioned == [victim])
        let reopened = try SealedRing.open(dir)
        for id in reopened.placement {
            #expect(try KeyFile.read(dir + "/blocks/\(id)/keys.json").signing.publicKey.rawRepresentation != old)
        }
        let rt = try RingRuntime(directory: dir)
        let x = sampleInputs(3)
        #expect(try rt.query(x).logits.data.map(\.bitPattern) == plainLogits(m, x).data.map(\.bitPattern))
        #expect(try rt.ring.auditLedger().isClean)
    }
}

@Suite struct VerifyMeansEverythingTests {
    /// Finding 3: swapping two block folders let restore "succeed" and then every query crashed.
    @Test func swappedBlockFoldersAreNamedAndRepaired() throws {
        let m = try smallModel(seed: 51)
        let dir = try sealedRing(m)
        let order = try SealedRing.open(dir).placement
        let a = dir + "/blocks/\(order[0])", b = dir + "/blocks/\(order[3])"
        #expect(rename(a, a + ".tmp") == 0 && rename(b, a) == 0 && rename(a + ".tmp", b) == 0)
        let report = try RingCheck.run(dir)
        #expect(!report.authentic && report.repairable)
        #expect(report.findings.contains { $0.subject == .block(order[0], position: 1) && $0.problem.contains("describes block \(order[3])") })
        #expect(report.findings.contains { $0.subject == .block(order[3], position: 4) })
        let (_, done, after) = try RingCheck.repair(dir)
        #expect(after.authentic, "\(after.findings)")
        #expect(Set(done.reprovisioned) == [order[0], order[3]])
        let rt = try RingRuntime(directory: dir)
        let x = sampleInputs(5)
        #expect(try rt.query(x).logits.data.map(\.bitPattern) == plainLogits(m, x).data.map(\.bitPattern))
    }

    /// Finding 3: a deleted block folder got its parameters back but not its keys.
    @Test func aDeletedBlockFolderIsReprovisioned() throws {
        let m = try smallModel(seed: 52)
        let dir = try sealedRing(m)
        let order = try SealedRing.open(dir).placement
        removeTree(dir + "/blocks/\(order[2])")
        let report = try RingCheck.run(dir)
        #expect(report.findings.contains { $0.subject == .block(order[2], position: 3) && $0.problem == "its folder is missing" })
        // The runtime repairs it before serving (a writer), and answers exactly as before.
        let rt = try RingRuntime(directory: dir)
        #expect(rt.reprovisioned == [order[2]])
        let x = sampleInputs(2)
        #expect(try rt.query(x).logits.data.map(\.bitPattern) == plainLogits(m, x).data.map(\.bitPattern))
        let restores = try rt.ledger.allEntries().filter { $0.kind == .restore }.map { try RestoreRecord.decode($0) }
        #expect(restores == [RestoreRecord(holder: order[2], action: .reprovisioned)])
    }

    /// Finding 3: a corrupted checkpoint alone went unreported, and `query` failed after delivering.
    @Test func aCorruptedCheckpointIsReportedAndRebuiltFromTheBlocks() throws {
        let m = try smallModel(seed: 53)
        let dir = try sealedRing(m)
        let cp = dir + "/owner/checkpoint.safetensors"
        let original = try Data(contentsOf: URL(fileURLWithPath: cp))
        var bytes = [UInt8](original)
        bytes[bytes.count - 3] ^= 0x01
        try Data(bytes).write(to: URL(fileURLWithPath: cp))
        let report = try RingCheck.run(dir)
        #expect(report.findings.map(\.subject) == [.checkpoint] && report.findings[0].repair == .rebuildCheckpoint)
        let (_, _, after) = try RingCheck.repair(dir)
        #expect(after.authentic)
        #expect(try Data(contentsOf: URL(fileURLWithPath: cp)) == original)
        let ring = try SealedRing.open(dir)
        var x = sampleInputs(4)
        for l in try ring.plainLayers() { x = try l.model().checkedForward(x) }
        #expect(x.data == plainLogits(m, sampleInputs(4)).data)
    }

    /// Found by the attacker review: with the checkpoint truncated, the block files were refused by a size bound
    /// taken from the checkpoint, so a repairable ring looked lost. Bounds now come from the signed record.
    @Test func aTruncatedCheckpointIsRebuiltFromIntactBlocks() throws {
        let m = try smallModel(seed: 57)
        let dir = try sealedRing(m)
        let cp = dir + "/owner/checkpoint.safetensors"
        let original = try Data(contentsOf: URL(fileURLWithPath: cp))
        #expect(truncate(cp, off_t(original.count / 2)) == 0)
        let report = try RingCheck.run(dir)
        #expect(report.findings.map(\.subject) == [.checkpoint] && report.repairable, "\(report.findings)")
        #expect(report.findings[0].problem.contains("cannot be read or parsed"))
        #expect(try RingCheck.repair(dir).after.authentic)
        #expect(try Data(contentsOf: URL(fileURLWithPath: cp)) == original)
    }

    /// When the checkpoint and every copy of a layer are damaged, verify says so: nothing is left to restore from.
    @Test func whatCannotBeRepairedIsSaidClearly() throws {
        let m = try smallModel(seed: 54)
        let dir = try sealedRing(m)
        let ring = try SealedRing.open(dir)
        // Layer 2's copies: the checkpoint's, block 2's own, block 1's copy of its next layer.
        var b = [UInt8](try Data(contentsOf: URL(fileURLWithPath: dir + "/owner/checkpoint.safetensors")))
        b[b.count - 2] ^= 0x04
        try Data(b).write(to: URL(fileURLWithPath: dir + "/owner/checkpoint.safetensors"))
        for p in [ring.holderPath(2), ring.holderPath(1)] { try Data("garbage".utf8).write(to: URL(fileURLWithPath: p)) }
        let report = try RingCheck.run(dir)
        #expect(!report.repairable)
        #expect(report.findings.contains { f in
            if case .impossible(let why) = f.repair { return f.subject == .checkpoint && why.contains("no verified copy") } else { return false }
        })
        #expect(throws: RingError.self) { try RingRuntime(directory: dir) }
    }

    /// A layer given an input of the wrong shape is a typed error, never a trap.
    @Test func shapeMismatchesAreTypedErrors() throws {
        let layers = RingLayer.split(try smallModel(seed: 55))
        let second = try layers[1].model()
        #expect(throws: ModelError.self) { try second.checkedForward(Tensor(zeros: [2, 6, 6, 1])) }
        #expect(throws: ModelError.self) { try second.checkedForward(Tensor(zeros: [0, 16])) }
        #expect(try second.checkedForward(Tensor(zeros: [2, 16])).shape == [2, 12])
    }

    /// Found by the second attacker review: verify said "authentic" with folders and secrets writable (or readable)
    /// by anyone, a block folder replaced by a link to a copy elsewhere, and files that are not the ring's.
    @Test func loosePermissionsLinksAndForeignFilesAreNamed() throws {
        let m = try smallModel(seed: 58)
        let dir = try sealedRing(m)
        let order = try SealedRing.open(dir).placement
        chmod(dir + "/blocks/\(order[0])", 0o777)
        chmod(dir + "/owner/record.json", 0o666)
        try Data("x".utf8).write(to: URL(fileURLWithPath: dir + "/blocks/\(order[1])/extra.bin"))
        let copy = dir + ".copy"
        try FileManager.default.copyItem(atPath: dir + "/blocks/\(order[2])", toPath: copy)
        removeTree(dir + "/blocks/\(order[2])")
        #expect(symlink(copy, dir + "/blocks/\(order[2])") == 0)
        try Data("notes".utf8).write(to: URL(fileURLWithPath: dir + "/notes.txt"))
        let report = try RingCheck.run(dir)
        let text = report.findings.map(\.description).joined(separator: "\n")
        #expect(report.findings.contains { $0.subject == .block(order[0], position: 1) && $0.repair == .tightenMode(0o755) }, "\(text)")
        #expect(report.findings.contains { $0.subject == .path("owner/record.json") && $0.repair == .tightenMode(0o600) }, "\(text)")
        #expect(report.findings.contains { $0.subject == .block(order[1], position: 2) && $0.problem.contains("extra.bin") }, "\(text)")
        #expect(report.findings.contains { $0.subject == .block(order[2], position: 3) && $0.problem.contains("link") }, "\(text)")
        #expect(report.findings.contains { $0.subject == .path("notes.txt") && !$0.repairable }, "\(text)")
        let (_, _, after) = try RingCheck.repair(dir)
        // What is left is the file that is not the ring's: named, never deleted, and no obstacle to serving.
        #expect(after.findings.map(\.subject) == [.path("notes.txt")], "\(after.findings)")
        #expect(fileMode(dir + "/owner/record.json") == 0o600)
        #expect(try String(contentsOfFile: dir + "/notes.txt", encoding: .utf8) == "notes")
        #expect(FileManager.default.fileExists(atPath: copy + "/keys.json"), "the copy outside the ring was touched")
        let rt = try RingRuntime(directory: dir)
        let x = sampleInputs(2)
        #expect(try rt.query(x).logits.data.map(\.bitPattern) == plainLogits(m, x).data.map(\.bitPattern))
    }

    /// Found by the second attacker review: removing a stray folder followed a link swapped into it. The removal
    /// walks every level by descriptor, without following links: what a link points at is never touched.
    @Test func removingAFolderNeverFollowsALinkInIt() throws {
        let base = tempRingDir()
        let victim = base + "/victim", tree = base + "/tree"
        try FileManager.default.createDirectory(atPath: victim, withIntermediateDirectories: true)
        try Data("keep".utf8).write(to: URL(fileURLWithPath: victim + "/important.txt"))
        try FileManager.default.createDirectory(atPath: tree + "/a/b", withIntermediateDirectories: true)
        try Data("x".utf8).write(to: URL(fileURLWithPath: tree + "/a/b/f"))
        #expect(symlink(victim, tree + "/a/link") == 0)
        #expect(symlink(victim + "/important.txt", tree + "/filelink") == 0)
        removeTree(tree)
        #expect(!FileManager.default.fileExists(atPath: tree))
        #expect(try String(contentsOfFile: victim + "/important.txt", encoding: .utf8) == "keep")
    }

    /// Stray folders in blocks/ (not members of the placement) are named and removed.
    @Test func strayFoldersAreNamedAndRemoved() throws {
        let dir = try sealedRing(try smallModel(seed: 56))
        try FileManager.default.createDirectory(atPath: dir + "/blocks/planted", withIntermediateDirectories: true)
        #expect(try RingCheck.run(dir).findings.map(\.subject) == [.stray("planted")])
        #expect(try RingCheck.repair(dir).after.authentic)
        #expect(!FileManager.default.fileExists(atPath: dir + "/blocks/planted"))
    }
}

@Suite struct ReadersNeverWriteTests {
    /// Finding 4: `verify` or `ledger audit` beside a running batched query destroyed the ring. Readers in a loop
    /// beside batched and batch-1 queries (each followed by a reshuffle; big ones prepare the next placement in the
    /// background): no damage, no false alarm, every answer right.
    @Test(.timeLimit(.minutes(2))) func readersInALoopBesideRunningQueriesSeeNoDamage() throws {
        let m = try smallModel(seed: 61)
        let dir = try sealedRing(m)
        let manifest = try RingManifest.read(dir + "/ring.json")
        final class Tally: @unchecked Sendable { var reads = 0; var problems: [String] = []; var stop = false; let lock = NSLock() }
        let tally = Tally()
        let reader = Thread {
            while true {
                tally.lock.lock(); let stop = tally.stop; tally.lock.unlock()
                if stop { return }
                do {
                    let r = try RingCheck.run(dir)
                    if !r.authentic { tally.lock.lock(); tally.problems.append("\(r.findings)"); tally.lock.unlock() }
                    let a = try RingAudit.audit(ledgerPath: dir + "/ledger.sqlite", manifest: manifest)
                    if !a.isClean { tally.lock.lock(); tally.problems.append("\(a)"); tally.lock.unlock() }
                    _ = try SealedRing.inspect(dir)
                } catch {
                    tally.lock.lock(); tally.problems.append("\(error)"); tally.lock.unlock()
                }
                tally.lock.lock(); tally.reads += 1; tally.lock.unlock()
            }
        }
        reader.start()
        let rt = try RingRuntime(directory: dir)
        var wrong = 0
        for q in 0..<24 {
            let x = sampleInputs(q % 2 == 0 ? 40 : 1, seed: UInt64(q))
            let r = try rt.query(x)
            if r.logits.data != plainLogits(m, x).data || r.alarms > 0 { wrong += 1 }
        }
        tally.lock.lock(); tally.stop = true; tally.lock.unlock()
        while !reader.isFinished { Thread.sleep(forTimeInterval: 0.01) }
        #expect(wrong == 0)
        #expect(rt.restores.isEmpty, "false alarm: \(rt.restores)")
        #expect(tally.reads > 3)
        #expect(tally.problems.isEmpty, "\(tally.problems.prefix(3))")
        rt.finishBackgroundWork()
        #expect(try RingCheck.run(dir).authentic)
        #expect(try rt.ring.auditLedger().isClean)
    }

    /// A second runtime waits for the first (with a message), up to its timeout.
    @Test func aSecondRuntimeWaitsForTheLock() throws {
        let dir = try sealedRing(try smallModel(seed: 62))
        final class Box: @unchecked Sendable { var first: RingRuntime?; var waited: [String] = []; var second: Result<RingRuntime, Error>? }
        let box = Box()
        box.first = try RingRuntime(directory: dir)
        #expect(throws: RingError.self) { _ = try RingRuntime(directory: dir, lockTimeout: 0.1) }
        let t = Thread {
            box.second = Result { try RingRuntime(directory: dir, lockTimeout: 20, onWait: { box.waited.append($0) }) }
        }
        t.start()
        Thread.sleep(forTimeInterval: 0.3)
        box.first = nil
        while !t.isFinished { Thread.sleep(forTimeInterval: 0.01) }
        #expect(box.waited.count == 1 && box.waited[0].contains("waiting"))
        let second = try #require(try box.second?.get())
        let x = sampleInputs(1)
        #expect(try second.query(x).alarms == 0)
    }

    /// A reader never creates or changes a file: not the ledger, not a lock, not a pending placement.
    @Test func readersLeaveEveryFileAsItWas() throws {
        let dir = try sealedRing(try smallModel(seed: 63))
        // A reshuffle interrupted after its commit: a reader must see the committed placement, not complete it.
        var rt: RingRuntime? = try RingRuntime(directory: dir)
        rt?.reshuffleEvery = 0
        _ = try rt?.query(sampleInputs(1))
        try rt?.reshuffle()
        rt = nil
        #expect(rename(dir + "/blocks", dir + "/blocks.next") == 0)
        try FileManager.default.createDirectory(atPath: dir + "/blocks", withIntermediateDirectories: true)
        func snapshot() throws -> [String: Data] {
            var out: [String: Data] = [:]
            let e = FileManager.default.enumerator(atPath: dir)
            while let p = e?.nextObject() as? String {
                // SQLite's WAL and its shared-memory index, which a reader of a WAL database may create (empty) and
                // map; the ledger's rows are compared below.
                if p.hasSuffix("-shm") || p.hasSuffix("-wal") { continue }
                var isDir: ObjCBool = false
                if FileManager.default.fileExists(atPath: dir + "/" + p, isDirectory: &isDir), !isDir.boolValue {
                    out[p] = try Data(contentsOf: URL(fileURLWithPath: dir + "/" + p))
                }
            }
            return out
        }
        // (The retired placement of the last reshuffle is deleted in the background: wait for that first.)
        for _ in 0..<500 where try FileManager.default.contentsOfDirectory(atPath: dir).contains(where: { $0.hasPrefix("blocks.old") }) {
            Thread.sleep(forTimeInterval: 0.01)
        }
        let before = try snapshot()
        let rowsBefore = try SQLiteLedger(path: dir + "/ledger.sqlite", readOnly: true).allRows()
        let report = try RingCheck.run(dir)
        #expect(report.authentic && report.notes.count == 1, "\(report.findings)")
        _ = try RingAudit.audit(ledgerPath: dir + "/ledger.sqlite", manifest: try RingManifest.read(dir + "/ring.json"))
        #expect(try SQLiteLedger(path: dir + "/ledger.sqlite", readOnly: true).allRows() == rowsBefore)
        let after = try snapshot()
        #expect(after == before, "changed: \(Set(after.keys).symmetricDifference(before.keys)), \(after.keys.filter { after[$0] != before[$0] })")
        // The next writer completes it.
        let writer = try RingRuntime(directory: dir)
        #expect(!FileManager.default.fileExists(atPath: dir + "/blocks.next"))
        #expect(try writer.query(sampleInputs(2)).alarms == 0)
    }
}

@Suite struct HostileLedgerTests {
    /// Finding 5: a query row (anyone may post one) with a sealed tensor of the wrong shape crashed the ring. Now
    /// the ouroboros refuses it, and the legitimate query beside it is answered.
    @Test func hostileQueriesGetRefusalsAndTheRingKeepsAnswering() throws {
        let m = try smallModel(seed: 71)
        let dir = try sealedRing(m)
        let rt = try RingRuntime(directory: dir)
        let querent = rt.querent
        let stranger = LedgerSigner()
        // Wrong shape, properly sealed to the ouroboros; NaN; garbage; sealed to another key.
        let (badID, _, badPayload) = try querent.ask(Tensor(zeros: [1, 7]))
        try rt.ledger.append(kind: .query, queryID: badID, payload: badPayload, signer: stranger)
        var nan = sampleInputs(1); nan.data[0] = .nan
        let (nanID, _, nanPayload) = try querent.ask(nan)
        try rt.ledger.append(kind: .query, queryID: nanID, payload: nanPayload, signer: stranger)
        try rt.ledger.append(kind: .query, queryID: "garbage", payload: [1, 2, 3], signer: stranger)
        let other = Querent(manifest: { var mm = querent.manifest; mm.ouroboros = BlockKeys().publicKeys; return mm }())
        let (wrongKeyID, _, wrongKeyPayload) = try other.ask(sampleInputs(1))
        try rt.ledger.append(kind: .query, queryID: wrongKeyID, payload: wrongKeyPayload, signer: stranger)
        let x = sampleInputs(3)
        #expect(try rt.query(x).logits.data.map(\.bitPattern) == plainLogits(m, x).data.map(\.bitPattern))
        var refusals: [String: RefusalReason] = [:]
        for e in try rt.ledger.allEntries() where e.kind == .delivery {
            if case .refusal(let r, _) = try Delivery.decode(e).outcome, let q = e.queryID { refusals[q] = r }
        }
        #expect(refusals == [badID: .badInput, nanID: .badInput, "garbage": .badInput, wrongKeyID: .undecryptable])
        // A second query row with an id already asked is ignored: the first querent keeps its answer.
        #expect(try rt.query(x).alarms == 0)
        #expect(try rt.ring.auditLedger().isClean)
    }

    /// Found by the attacker review: an outsider's query big enough that a block's post would not fit in a ledger
    /// entry killed the owner's running query. The ouroboros refuses it; the owner's query is answered.
    @Test func aQueryTooBigForTheLedgerIsRefusedAndTheOthersAreAnswered() throws {
        let m = try Model(.mlp(inputShape: [6, 6, 1], classes: 4, hidden: [4096, 8]), seed: 3)
        let dir = try sealedRing(m)
        let rt = try RingRuntime(directory: dir)
        #expect(rt.maxBatch == (LedgerEntry.maxPayload - (1 << 16)) / (4 * 4096))
        let (bigID, _, big) = try rt.querent.ask(Tensor(zeros: [rt.maxBatch + 1, 6, 6, 1]))
        try rt.ledger.append(kind: .query, queryID: bigID, payload: big, signer: LedgerSigner())
        let x = sampleInputs(3)
        #expect(try rt.query(x).logits.data.map(\.bitPattern) == plainLogits(m, x).data.map(\.bitPattern))
        let refusal = try rt.ledger.allEntries().first { $0.kind == .delivery && $0.queryID == bigID }
        if case .refusal(.badInput, let why)? = try refusal.map({ try Delivery.decode($0).outcome }) {
            #expect(why.contains("\(rt.maxBatch)"))
        } else { Issue.record("the big query was not refused") }
        #expect(throws: QueryError.self) { try rt.query(Tensor(zeros: [rt.maxBatch + 1, 6, 6, 1])) }
    }

    /// Found by the attacker review: one row with sequence number 2⁶³ − 1 made every query trap. Now verify names
    /// it, the audit names it, and the ring goes on answering (the ledger is append-only: nothing to repair).
    @Test func aRowWithAHugeSequenceNumberIsNamedAndTheRingAnswers() throws {
        let m = try smallModel(seed: 73)
        let dir = try sealedRing(m)
        let q = try DatabaseQueue(path: dir + "/ledger.sqlite")
        try q.writeWithoutTransaction { db in
            try db.execute(sql: """
                PRAGMA ignore_check_constraints = ON;
                INSERT INTO entries VALUES (9223372036854775807, zeroblob(32), 'alarm', NULL, randomblob(32), x'', randomblob(32), zeroblob(64));
                """)
        }
        let report = try RingCheck.run(dir)
        #expect(report.findings.map(\.subject) == [.ledger] && !report.repairable)
        let rt = try RingRuntime(directory: dir)
        let x = sampleInputs(2)
        #expect(try rt.query(x).logits.data.map(\.bitPattern) == plainLogits(m, x).data.map(\.bitPattern))
        #expect(try rt.ring.auditLedger().firstProblem?.sequence == Int64.max)
    }

    /// Finding 5: a row of unknown kind or with a malformed author at the tail stopped every query until deleted.
    @Test func malformedRowsAtTheTailNeitherStopTheRingNorPassTheAudit() throws {
        let m = try smallModel(seed: 72)
        let dir = try sealedRing(m)
        var rt: RingRuntime? = try RingRuntime(directory: dir)
        _ = try rt?.query(sampleInputs(1))
        let q = try DatabaseQueue(path: dir + "/ledger.sqlite")
        let tail = try rt!.ledger.lastSequence()
        // An attacker with the file, its connection ignoring the schema's checks, appends two broken rows.
        try q.writeWithoutTransaction { db in
            try db.execute(sql: """
                PRAGMA ignore_check_constraints = ON;
                INSERT INTO entries VALUES (\(tail + 1), zeroblob(32), 'bogus', NULL, zeroblob(32), x'00', randomblob(32), zeroblob(64));
                INSERT INTO entries VALUES (\(tail + 2), zeroblob(32), 'layer', 'q', 'not a key', x'00', randomblob(32), zeroblob(64));
                """)
        }
        let x = sampleInputs(2)
        #expect(try rt!.query(x).logits.data.map(\.bitPattern) == plainLogits(m, x).data.map(\.bitPattern))
        rt = nil
        let again = try RingRuntime(directory: dir)
        #expect(try again.query(x).logits.data.map(\.bitPattern) == plainLogits(m, x).data.map(\.bitPattern))
        let audit = try again.ring.auditLedger()
        #expect(audit.firstProblem?.sequence == tail + 1)
        if case .unreadable(let why)? = audit.firstProblem?.problem { #expect(why == "unknown kind") } else { Issue.record("\(audit)") }
    }
}

@Suite struct DestructiveCommandsTests {
    /// Finding 6: `seal MODEL --ring MODEL` deleted the model file.
    @Test func sealNeverReplacesAFileOrAFolderThatIsNotARing() throws {
        let m = try smallModel(seed: 81)
        let base = tempRingDir()
        try FileManager.default.createDirectory(atPath: base, withIntermediateDirectories: true)
        let model = base + "/model.safetensors"
        try ModelFile.save(m, to: model)
        let bytes = try Data(contentsOf: URL(fileURLWithPath: model))
        #expect(throws: RingError.self) { try SealedRing.seal(m, into: model) }
        #expect(throws: RingError.self) { try SealedRing.seal(m, into: model, force: true) }
        #expect(try Data(contentsOf: URL(fileURLWithPath: model)) == bytes)
        // A non-empty folder that is not a ring: refused, with or without force, and left as it was.
        #expect(throws: RingError.self) { try SealedRing.seal(m, into: base) }
        #expect(throws: RingError.self) { try SealedRing.seal(m, into: base, force: true) }
        #expect(try FileManager.default.contentsOfDirectory(atPath: base) == ["model.safetensors"])
        // A ring: refused without force, replaced with it — but never when it holds the model being sealed.
        let ring = base + "/ring"
        let first = try SealedRing.seal(m, into: ring)
        #expect(throws: RingError.self) { try SealedRing.seal(m, into: ring) }
        let second = try SealedRing.seal(m, into: ring, force: true)
        #expect(first.manifest.ringID != second.manifest.ringID)
        try FileManager.default.copyItem(atPath: model, toPath: ring + "/model.safetensors")
        #expect(throws: RingError.self) { try SealedRing.seal(m, into: ring, force: true, protecting: [ring + "/model.safetensors"]) }
        #expect(try FileManager.default.contentsOfDirectory(atPath: base).sorted() == ["model.safetensors", "ring"])
    }

    /// Finding 6: a killed `seal` left `DIR.sealing-PID` folders holding private keys; the next seal removes them.
    @Test func leftoversOfAKilledSealAreRemovedByTheNextSeal() throws {
        let base = tempRingDir()
        try FileManager.default.createDirectory(atPath: base, withIntermediateDirectories: true)
        // A pid that no process can have: above Linux's largest pid_max (2^22). (An exited child's pid, as this test
        // once used, may be reused at once by another test's process.)
        let deadPID: Int32 = (1 << 22) + 1
        let stale = base + "/.ring.sealing-\(deadPID)-deadbeef"
        try FileManager.default.createDirectory(atPath: stale + "/owner", withIntermediateDirectories: true)
        try Data("secret".utf8).write(to: URL(fileURLWithPath: stale + "/owner/keys.json"))
        let live = base + "/.ring.sealing-\(getppid())-cafecafe"   // a running process's: kept
        try FileManager.default.createDirectory(atPath: live, withIntermediateDirectories: true)
        try SealedRing.seal(try smallModel(seed: 82), into: base + "/ring")
        // Only that exact pattern is ever removed: a user's folder of a similar name is not.
        try FileManager.default.createDirectory(atPath: base + "/.ring.sealing-\(deadPID)-notes", withIntermediateDirectories: true)
        try SealedRing.seal(try smallModel(seed: 82), into: base + "/ring", force: true)
        #expect(try FileManager.default.contentsOfDirectory(atPath: base).sorted()
                == [".ring.sealing-\(getppid())-cafecafe", ".ring.sealing-\(deadPID)-notes", "ring"].sorted())
    }

    /// Found by the attacker review: `--force` took any folder with a `ring.json` and an `owner/` for a ring, and a
    /// reshuffle deleted anything named `blocks.old*`. Only a folder holding nothing but a ring's files is a ring, and
    /// only the exact names the ring gives its own retired placements are deleted.
    @Test func forceAndCleanUpTouchOnlyTheRingsOwnFiles() throws {
        let m = try smallModel(seed: 83)
        let base = tempRingDir()
        try FileManager.default.createDirectory(atPath: base + "/owner", withIntermediateDirectories: true)
        try Data(#"{"format": "deepring-ring-v2"}"#.utf8).write(to: URL(fileURLWithPath: base + "/ring.json"))
        try Data("my thesis".utf8).write(to: URL(fileURLWithPath: base + "/thesis.tex"))
        #expect(throws: RingError.self) { try SealedRing.seal(m, into: base, force: true) }
        #expect(try String(contentsOfFile: base + "/thesis.tex", encoding: .utf8) == "my thesis")
        let dir = try sealedRing(m)
        try FileManager.default.createDirectory(atPath: dir + "/blocks.old", withIntermediateDirectories: true)
        try Data("backup".utf8).write(to: URL(fileURLWithPath: dir + "/blocks.old/keep"))
        let rt = try RingRuntime(directory: dir)
        for _ in 0..<3 { _ = try rt.query(sampleInputs(1)) }
        rt.finishBackgroundWork()
        Thread.sleep(forTimeInterval: 0.2)
        #expect(try String(contentsOfFile: dir + "/blocks.old/keep", encoding: .utf8) == "backup")
    }

    /// Found by the second attacker review: `seal --force` replaced a ring a process was running (which went on
    /// writing into the new folder by path). It waits for that process first.
    @Test(.timeLimit(.minutes(1))) func sealForceWaitsForTheProcessRunningTheRing() throws {
        let m = try smallModel(seed: 84)
        let dir = try sealedRing(m)
        let rt = try RingRuntime(directory: dir)
        final class Box: @unchecked Sendable { var result: Result<SealedRing, Error>? }
        let box = Box()
        let t = Thread { box.result = Result { try SealedRing.seal(m, into: dir, force: true) } }
        t.start()
        Thread.sleep(forTimeInterval: 0.5)
        #expect(!t.isFinished, "seal --force did not wait for the running ring")
        _ = try rt.query(sampleInputs(1))
        rt.close()
        while !t.isFinished { Thread.sleep(forTimeInterval: 0.01) }
        let sealed = try #require(try box.result?.get())
        #expect(try RingCheck.run(dir).authentic)
        #expect(try SealedRing.open(dir).manifest.ringID == sealed.manifest.ringID)
    }

    /// The attacks' harness seals into its folder only when it is empty, new or a ring.
    @Test func theHarnessRefusesAFolderThatIsNotARing() throws {
        let base = tempRingDir()
        try FileManager.default.createDirectory(atPath: base, withIntermediateDirectories: true)
        try Data("keep me".utf8).write(to: URL(fileURLWithPath: base + "/notes.txt"))
        #expect(throws: RingError.self) { try SealedRing.seal(try smallModel(), into: base, force: true) }
        #expect(try String(contentsOfFile: base + "/notes.txt", encoding: .utf8) == "keep me")
    }
}

@Suite struct HostileFilesTests {
    /// Finding 7: a FIFO in place of `params.safetensors` hung verify, query and ring inspect.
    @Test(.timeLimit(.minutes(1))) func aFIFOInPlaceOfAFileIsRefusedWithoutBlocking() throws {
        let m = try smallModel(seed: 91)
        let dir = try sealedRing(m)
        let victim = try SealedRing.open(dir).placement[1]
        let p = dir + "/blocks/\(victim)/params.safetensors"
        unlink(p)
        #expect(mkfifo(p, 0o644) == 0)
        #expect(throws: InputFile.Error.notRegular(p, kind: "a FIFO")) { try InputFile.read(p, limit: 1 << 20) }
        let report = try RingCheck.run(dir)
        #expect(report.findings.contains { $0.subject == .block(victim, position: 2) && $0.repair == .restoreParameters })
        #expect(throws: InputFile.Error.self) { try SealedRing.inspect(dir) }
        let rt = try RingRuntime(directory: dir)   // restores it before serving
        let x = sampleInputs(2)
        #expect(try rt.query(x).logits.data.map(\.bitPattern) == plainLogits(m, x).data.map(\.bitPattern))
        #expect(InputFile.isRegular(rt.ring.holderPath(2)))
    }

    /// Finding 7: a 2 GB sparse file passed as an image took seconds and gigabytes before it was refused.
    @Test(.timeLimit(.minutes(1))) func hugeAndSparseInputsAreRefusedByTheirSizeFirst() throws {
        let dir = tempRingDir()
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        let p = dir + "/images.idx"
        #expect(FileManager.default.createFile(atPath: p, contents: Data([0, 0, 8, 3, 0, 0, 0, 1, 0, 0, 0, 28, 0, 0, 0, 28])))
        #expect(truncate(p, 2 << 30) == 0)
        do {
            _ = try IDX.read(path: p, maxBytes: 256 << 20)
            Issue.record("read a 2 GB image file")
        } catch let e as DatasetError {
            #expect("\(e)".contains("larger than"))
        }
        // The header's declared size must be the file's size even under the bound (read before the body).
        #expect(truncate(p, 4096) == 0)
        #expect(throws: DatasetError.self) { try IDX.read(path: p, maxBytes: 256 << 20) }
        // A model file that is a FIFO, or a directory.
        let fifo = dir + "/model.safetensors"
        #expect(mkfifo(fifo, 0o644) == 0)
        #expect(throws: ModelFileError.self) { try ModelFile.load(path: fifo) }
        #expect(throws: ModelFileError.self) { try ModelFile.load(path: dir) }
    }

    /// A small model file claiming a gigantic architecture is refused before the parameters are allocated.
    @Test func aHostileArchitectureCannotAllocateBeyondItsFile() throws {
        let arch = Architecture(name: "mlp", inputShape: [1 << 14], classes: 10, layers: [.dense(1 << 16), .dense(10)])
        let meta = [ModelFile.architectureKey: String(decoding: try JSONEncoder().encode(arch), as: UTF8.self)]
        let bytes = SafeTensors.serialize([("layers.0.weight", [1], [Float(0)][...])], metadata: meta)
        #expect(throws: ModelFileError.self) { try ModelFile.load(bytes: bytes) }
    }
}
