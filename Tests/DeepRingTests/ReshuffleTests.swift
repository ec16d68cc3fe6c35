import DeepRingEmbedded
import DeepRingOwner
import DeepRingEngine
import DeepRingProtocol
import DeepRingLedger
import Foundation
import Testing

@Suite struct ReshuffleTests {
    func blockIDs(_ dir: String) throws -> Set<String> {
        Set(try FileManager.default.contentsOfDirectory(atPath: dir + "/blocks"))
    }

    @Test func everyQueryGetsANewPlacementAndFreshKeysThatNeverSignTwoQueries() throws {
        let m = try smallModel(seed: 21)
        let dir = try sealedRing(m)
        let rt = try RingRuntime(directory: dir)
        var seenIDs = try blockIDs(dir)
        #expect(seenIDs.count == 5)
        for q in 0..<4 {
            let x = sampleInputs(1 + q, seed: UInt64(q))
            #expect(try rt.query(x).logits.data.map(\.bitPattern) == plainLogits(m, x).data.map(\.bitPattern))
            let ids = try blockIDs(dir)
            #expect(ids.count == 5 && ids.isDisjoint(with: seenIDs), "query \(q): the placement was not reshuffled")
            #expect(Set(rt.ring.placement) == ids)
            seenIDs.formUnion(ids)
            for id in ids { #expect(fileMode(dir + "/blocks/\(id)/keys.json") == 0o600) }
        }
        #expect(!FileManager.default.fileExists(atPath: dir + "/blocks.next"))
        // Retired placements are deleted in the background.
        var retired: [String] = []
        for _ in 0..<200 {
            retired = try FileManager.default.contentsOfDirectory(atPath: dir).filter { $0.hasPrefix("blocks.old") }
            if retired.isEmpty { break }
            Thread.sleep(forTimeInterval: 0.01)
        }
        #expect(retired.isEmpty)
        // Unlinkability through the ledger: no block key authors layer posts of two different queries.
        let entries = try rt.ledger.allEntries()
        var queriesOfKey: [[UInt8]: Set<String>] = [:]
        for e in entries where e.kind == .layer && e.author != rt.ring.manifest.ouroboros.signing {
            queriesOfKey[e.author, default: []].insert(e.queryID ?? "")
        }
        #expect(queriesOfKey.count == 4 * 5)
        #expect(queriesOfKey.values.allSatisfy { $0.count == 1 })
        #expect(entries.filter { $0.kind == .reshuffle }.count == 4)
        // The audit knows every announced key; hashes and authenticity are untouched by reshuffling.
        let reopened = try SealedRing.open(dir)
        #expect(try reopened.auditLedger().isClean)
        #expect(reopened.checkAuthenticity().authentic)
        // An entry signed by a key that was never announced is still caught.
        try rt.ledger.append(kind: .layer, queryID: "x", payload: [1], signer: LedgerSigner())
        #expect(try reopened.auditLedger().firstProblem?.problem == .unknownAuthor)
    }

    /// After a big batch the next placement is built in the background, hard-linking the current parameter files.
    /// A restore before the next reshuffle replaces a file: the new placement must carry the restored file, not the
    /// tampered one its link still points at.
    @Test func aPlacementBuiltInTheBackgroundCarriesFilesRestoredSince() throws {
        let m = try smallModel(seed: 23)
        let dir = try sealedRing(m)
        let rt = try RingRuntime(directory: dir)
        let big = sampleInputs(40, seed: 5)
        #expect(try rt.query(big).logits.data.map(\.bitPattern) == plainLogits(m, big).data.map(\.bitPattern))
        // Wait until the prepared placement is on disk (5 block folders with their files).
        for _ in 0..<500 {
            let subs = (try? FileManager.default.contentsOfDirectory(atPath: dir + "/blocks.next")) ?? []
            if subs.count == 5 && subs.allSatisfy({ FileManager.default.fileExists(atPath: dir + "/blocks.next/\($0)/block.json") }) { break }
            Thread.sleep(forTimeInterval: 0.01)
        }
        Thread.sleep(forTimeInterval: 0.1)   // let the background thread finish its sync
        let victim = rt.ring.placement[2]
        let p = dir + "/blocks/\(victim)/params.safetensors"
        var b = [UInt8](try Data(contentsOf: URL(fileURLWithPath: p)))
        b[b.count - 5] ^= 0x08
        try Data(b).write(to: URL(fileURLWithPath: p))   // in place: the prepared hard link sees the tampered bytes
        let x = sampleInputs(3, seed: 6)
        #expect(try rt.query(x).logits.data.map(\.bitPattern) == plainLogits(m, x).data.map(\.bitPattern))
        #expect(rt.restores == [victim])
        #expect(rt.ring.checkAuthenticity().authentic, "the new placement carries the tampered file")
        let y = sampleInputs(2, seed: 7)
        #expect(try rt.query(y).logits.data.map(\.bitPattern) == plainLogits(m, y).data.map(\.bitPattern))
        #expect(rt.restores == [victim])
    }

    @Test func aReshuffleInterruptedBeforeItsCommitIsRolledBack() throws {
        let m = try smallModel(seed: 22)
        let dir = try sealedRing(m)
        let before = try blockIDs(dir)
        // A crash after building blocks.next but before the record was replaced.
        let fm = FileManager.default
        try fm.createDirectory(atPath: dir + "/blocks.next/0123", withIntermediateDirectories: true)
        try Data("{}".utf8).write(to: URL(fileURLWithPath: dir + "/blocks.next/0123/block.json"))
        let rt = try RingRuntime(directory: dir)
        #expect(!fm.fileExists(atPath: dir + "/blocks.next"))
        #expect(try blockIDs(dir) == before)
        let x = sampleInputs(2)
        #expect(try rt.query(x).logits.data == plainLogits(m, x).data)
    }

    @Test func aReshuffleInterruptedAfterItsCommitIsCompleted() throws {
        let m = try smallModel(seed: 23)
        let dir = try sealedRing(m)
        var rt: RingRuntime? = try RingRuntime(directory: dir)
        rt!.reshuffleEvery = 0
        _ = try rt!.query(sampleInputs(1))
        try rt!.reshuffle()
        let committed = rt!.ring.placement
        rt = nil
        // Simulate the crash between the commit (record.json) and the folder swap: put the new placement back
        // into blocks.next and an old one in blocks.
        let fm = FileManager.default
        #expect(rename(dir + "/blocks", dir + "/blocks.next") == 0)
        try fm.createDirectory(atPath: dir + "/blocks/stale", withIntermediateDirectories: true)
        let reopened = try RingRuntime(directory: dir)
        #expect(try blockIDs(dir) == Set(committed))
        #expect(try fm.contentsOfDirectory(atPath: dir).filter { $0.hasPrefix("blocks.") }.isEmpty)
        let x = sampleInputs(3)
        #expect(try reopened.query(x).logits.data.map(\.bitPattern) == plainLogits(m, x).data.map(\.bitPattern))
        #expect(try reopened.ring.auditLedger().isClean)
    }
}
