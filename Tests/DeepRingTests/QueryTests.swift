import DeepRingClient
import DeepRingEmbedded
import DeepRingOwner
import DeepRingEngine
import DeepRingProtocol
import DeepRingLedger
import Foundation
import Testing

func plainLogits(_ m: Model, _ x: Tensor) -> Tensor { m.forward(x) }

func sampleInputs(_ n: Int, seed: UInt64 = 1) -> Tensor {
    var r = SeededRandom(seed: seed)
    return Tensor(shape: [n, 6, 6, 1], data: (0..<(n * 36)).map { _ in r.uniform() })
}

@Suite struct QueryTests {
    @Test func ringAnswersBitIdenticalToThePlainModelThroughTheLedgerOnly() throws {
        let m = try smallModel(seed: 8)
        let dir = try sealedRing(m)
        let rt = try RingRuntime(directory: dir)
        for n in [1, 17] {
            let x = sampleInputs(n, seed: UInt64(n))
            let r = try rt.query(x)
            #expect(r.alarms == 0)
            #expect(r.logits.data.map(\.bitPattern) == plainLogits(m, x).data.map(\.bitPattern), "batch \(n)")
        }
        // Every member runs in this process: each of the 12 layer posts was checked by its receiver against the
        // members' shared memo of what they appended (bytes compared, not hashed and verified again).
        #expect(rt.authenticEntries.counts.vouched >= 12)
        // So are the query rows (the querent signs them in this process) and the deliveries (checked by the querent
        // against the same memo): not one row of these queries was hashed and verified in full.
        #expect(rt.authenticEntries.counts.checkedInFull == 0, "\(rt.authenticEntries.counts)")
        let entries = try rt.ledger.allEntries()
        // seal + 2 × (query, ouroboros post, 5 block posts, delivery, reshuffle)
        #expect(entries.count == 1 + 2 * 9)
        #expect(entries.filter { $0.kind == .layer }.count == 12)
        #expect(try SealedRing.open(dir).auditLedger().isClean)
        // Payloads carry only ciphertexts and hashes: the input bytes never appear in clear.
        let x = sampleInputs(1, seed: 1)
        let needle = Array(x.data.prefix(4).withUnsafeBytes { Array($0) })
        for e in entries { #expect(!e.payload.windows(ofCount: needle.count).contains { Array($0) == needle }) }
    }

    @Test func aCompromisedBlockPerturbingItsInputIsDetectedAndNoAnswerIsDelivered() throws {
        let m = try smallModel(seed: 9)
        let dir = try sealedRing(m)
        let rt = try RingRuntime(directory: dir)
        let victim = rt.ring.placement[2]
        try rt.setPerturbation(position: 3) { t in var u = t; u.data[0] += 0.5; return u }
        do {
            _ = try rt.query(sampleInputs(3))
            Issue.record("a wrong answer was delivered")
        } catch let e as QueryError {
            guard case .failed(let msg) = e else { Issue.record("unexpected \(e)"); return }
            #expect(msg.contains(victim) && msg.contains("ring position 3"))
        }
        let alarms = try rt.ledger.allEntries().filter { $0.kind == .alarm }
        #expect(alarms.count == 3)   // first failure + 2 retries
        // No answer was delivered: the only delivery is the ouroboros's refusal.
        let deliveries = try rt.ledger.allEntries().filter { $0.kind == .delivery }.map { try Delivery.decode($0).outcome }
        #expect(deliveries.count == 1)
        if case .refusal(.compromised, _)? = deliveries.first {} else { Issue.record("expected a refusal, got \(deliveries)") }
        // With the hook off again, the ring answers correctly.
        try rt.setPerturbation(position: 3, nil)
        let x = sampleInputs(2)
        #expect(try rt.query(x).logits.data == plainLogits(m, x).data)
    }

    @Test func aTransientFaultIsCuredByTheRetry() throws {
        let m = try smallModel(seed: 10)
        let dir = try sealedRing(m)
        let rt = try RingRuntime(directory: dir)
        final class Once: @unchecked Sendable { var done = false }
        let once = Once()
        try rt.setPerturbation(position: 1) { t in
            if once.done { return t }
            once.done = true
            var u = t; u.data[1] += 1; return u
        }
        let x = sampleInputs(4)
        let r = try rt.query(x)
        #expect(r.alarms == 1)
        #expect(r.logits.data.map(\.bitPattern) == plainLogits(m, x).data.map(\.bitPattern))
    }

    @Test func tamperedParametersAreRestoredBeforeTheNextQuery() throws {
        let m = try smallModel(seed: 11)
        let dir = try sealedRing(m)
        let rt = try RingRuntime(directory: dir)
        let victim = rt.blockNames[1]
        let p = dir + "/blocks/\(victim)/params.safetensors"
        var b = [UInt8](try Data(contentsOf: URL(fileURLWithPath: p)))
        b[b.count - 9] ^= 0x40
        try Data(b).write(to: URL(fileURLWithPath: p))
        let x = sampleInputs(5)
        let r = try rt.query(x)
        #expect(r.logits.data.map(\.bitPattern) == plainLogits(m, x).data.map(\.bitPattern))
        #expect(rt.restores == [victim])
        let kinds = try rt.ledger.allEntries().map(\.kind)
        #expect(kinds.contains(.restore) && kinds.contains(.alarm))
    }

    /// Block files that cannot even be loaded — an 8 GiB (sparse) file, refused by its size before a byte is
    /// allocated, and a file with a broken header — are tampered files: the runtime restores them (tracking mode)
    /// when it starts, and the ring answers exactly as before.
    @Test func unloadableBlockFilesAreRestoredWhenTheRuntimeStarts() throws {
        let m = try smallModel(seed: 12)
        let dir = try sealedRing(m)
        let ring = try SealedRing.open(dir)
        let blocks = ring.placement
        let big = dir + "/blocks/\(blocks[0])/params.safetensors", broken = dir + "/blocks/\(blocks[2])/params.safetensors"
        let (bigBytes, brokenBytes) = (try Data(contentsOf: URL(fileURLWithPath: big)), try Data(contentsOf: URL(fileURLWithPath: broken)))
        #expect(truncate(big, 8 << 30) == 0)
        var b = [UInt8](brokenBytes)
        b[3] ^= 0x7f   // the header's length field
        try Data(b).write(to: URL(fileURLWithPath: broken))
        let report = ring.checkAuthenticity()
        #expect(!report.authentic && report.firstTampered == blocks[0])
        do {
            _ = try ring.heldLayers(position: 1)
            Issue.record("read an 8 GiB block file")
        } catch let e as InputFile.Error {
            guard case .tooLarge = e else { Issue.record("unexpected \(e)"); return }
        }
        let rt = try RingRuntime(directory: dir)
        #expect(rt.restores == [blocks[0], blocks[2]])
        #expect(try Data(contentsOf: URL(fileURLWithPath: big)) == bigBytes)
        #expect(try Data(contentsOf: URL(fileURLWithPath: broken)) == brokenBytes)
        let x = sampleInputs(3)
        #expect(try rt.query(x).logits.data.map(\.bitPattern) == plainLogits(m, x).data.map(\.bitPattern))
        #expect(try rt.ledger.allEntries().filter { $0.kind == .restore }.count == 2)
    }

    @Test func anInterruptedQueryIsReportedIncompleteAndTheNextOneWorks() throws {
        let m = try smallModel(seed: 12)
        let dir = try sealedRing(m)
        // A querent posts a query and the process answering it dies before any block acts.
        var rt: RingRuntime? = try RingRuntime(directory: dir)
        let x = sampleInputs(2)
        _ = try rt!.query(x)
        try rt!.ledger.append(kind: .query, queryID: "deadbeef", payload: [0, 0, 0, 0], signer: LedgerSigner())
        // One runtime per ring at a time.
        #expect(throws: RingError.self) { _ = try RingRuntime(directory: dir, lockTimeout: 0.2) }
        rt = nil
        let reopened = try RingRuntime(directory: dir)
        #expect(try reopened.incompleteQueries() == ["deadbeef"])
        // A garbage query posted while the ring runs is skipped, not fatal.
        try reopened.ledger.append(kind: .query, queryID: "garbage", payload: [1, 2, 3], signer: LedgerSigner())
        #expect(try reopened.query(x).logits.data == plainLogits(m, x).data)
        #expect(try reopened.query(x).logits.data == plainLogits(m, x).data)
        #expect(LedgerAudit.audit(reopened.ledger).isClean)
        #expect(try reopened.ring.auditLedger().isClean)
    }

    @Test func badInputIsRefusedBeforeAnythingIsWritten() throws {
        let dir = try sealedRing(try smallModel())
        let rt = try RingRuntime(directory: dir)
        let before = try rt.ledger.allEntries().count
        #expect(throws: QueryError.self) { try rt.query(Tensor(zeros: [1, 7])) }
        var nan = sampleInputs(1)
        nan.data[3] = .nan
        #expect(throws: QueryError.self) { try rt.query(nan) }
        var inf = sampleInputs(1)
        inf.data[0] = .infinity
        #expect(throws: QueryError.self) { try rt.query(inf) }
        #expect(try rt.ledger.allEntries().count == before)
    }
}

extension Array {
    func windows(ofCount n: Int) -> [ArraySlice<Element>] {
        count < n ? [] : (0...(count - n)).map { self[$0..<($0 + n)] }
    }
}

/// The throughput bound of `bench ring`: what it counts for the paper's MLP, and its formula.
@Suite struct ThroughputBoundTests {
    @Test func countsEveryPostedTensorAndEveryLayerOutput() throws {
        let m = try Model(.mlp(inputShape: [784], classes: 10), seed: 1)
        let b = try RingThroughputBound.measure(m, batch: 4, plainSeconds: 1e-3, threads: 2)
        #expect(b.outputBytes == 4 * (900 + 600 + 300 + 100 + 10) * 4)
        #expect(b.postedBytes == b.outputBytes + 4 * 784 * 4)
        #expect(b.sha256BytesPerSecond > 0 && b.aesGCMBytesPerSecond > 0)
    }

    @Test func boundIsTwiceThePlainPassPlusTheCryptoSpreadOverTheThreads() {
        let b = RingThroughputBound(plainSeconds: 0.004, postedBytes: 3_000_000, outputBytes: 2_000_000,
                                    sha256BytesPerSecond: 2e9, aesGCMBytesPerSecond: 1e10, threads: 2)
        // hashing (2·2 MB + 3 MB) / 2 GB/s = 3.5 ms, encryption 2·3 MB / 10 GB/s = 0.6 ms, over two threads.
        #expect(abs(b.seconds - (0.008 + 0.00205)) < 1e-12)
        #expect(abs(b.ratioToPlain - 0.004 / 0.01005) < 1e-12)
        #expect(b.ratioToPlain < 0.5)
    }
}
