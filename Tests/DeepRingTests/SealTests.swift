@testable import DeepRingOwner
import DeepRingEngine
import DeepRingProtocol
import DeepRingLedger
import DeepRingLedgerSQLite
import Foundation
import Testing

func tempRingDir() -> String {
    NSTemporaryDirectory() + "deepring-ring-\(UUID().uuidString)"
}

/// Seals `m` into a fresh temporary ring directory and returns the directory.
func sealedRing(_ m: Model) throws -> String {
    let dir = tempRingDir()
    try SealedRing.seal(m, into: dir)
    return dir
}

func smallModel(seed: UInt64 = 3) throws -> Model {
    try Model(.mlp(inputShape: [6, 6, 1], classes: 4, hidden: [16, 12, 8, 6]), seed: seed)
}

func fileMode(_ p: String) -> Int {
    var st = stat()
    stat(p, &st)
    return Int(st.st_mode) & 0o777
}

@Suite struct SealTests {
    @Test func sealWritesTheDocumentedLayout() throws {
        let dir = tempRingDir()
        let ring = try SealedRing.seal(try smallModel(), into: dir)
        let fm = FileManager.default
        #expect(ring.manifest.blockCount == 5)
        for f in ["ring.json", "ledger.sqlite", "owner/record.json", "owner/checkpoint.safetensors", "owner/keys.json", "owner/ouroboros.safetensors"] {
            #expect(fm.fileExists(atPath: dir + "/" + f), "\(f)")
        }
        let blocks = try fm.contentsOfDirectory(atPath: dir + "/blocks")
        #expect(blocks.count == 5)
        for b in blocks {
            #expect(b.count == 32)
            #expect(fileMode(dir + "/blocks/\(b)/keys.json") == 0o600)
            // A block's files do not record its layer index.
            let info = try String(contentsOfFile: dir + "/blocks/\(b)/block.json", encoding: .utf8)
            #expect(!info.contains("index") && !info.contains("position"))
        }
        #expect(fileMode(dir + "/owner/keys.json") == 0o600)
        let manifest = try String(contentsOfFile: dir + "/ring.json", encoding: .utf8)
        let ownerSecret = try String(contentsOfFile: dir + "/owner/keys.json", encoding: .utf8)
        let signingHex = String(ownerSecret.split(separator: "\"")[3])
        #expect(!manifest.contains(signingHex))
        #expect(ring.checkAuthenticity().authentic)
        // The seal entry is on the ledger, signed by the ouroboros.
        let ledger = try SQLiteLedger(path: dir + "/ledger.sqlite")
        let entries = try ledger.allEntries()
        #expect(entries.count == 1 && entries[0].kind == .seal && entries[0].author == ring.manifest.ouroboros.signing)
        #expect(LedgerAudit.audit(entries, ringKeys: [ring.manifest.ouroboros.signing]).isClean)
        #expect(throws: RingError.self) { try SealedRing.seal(try smallModel(), into: dir) }
        let reopened = try SealedRing.open(dir)
        #expect(reopened.manifest == ring.manifest && reopened.checkAuthenticity().authentic)
    }

    /// Flip a random bit anywhere in any holder's file: the check names that holder, restoring brings the
    /// file back bit-identical and authenticity back. 1,000 randomized flips.
    @Test func everyBitFlipIsDetectedLocatedAndRestored() throws {
        let dir = tempRingDir()
        let ring = try SealedRing.seal(try smallModel(seed: 5), into: dir)
        let blocks = try FileManager.default.contentsOfDirectory(atPath: dir + "/blocks")
        let holders = [("ouroboros", dir + "/owner/ouroboros.safetensors")] + blocks.map { ($0, dir + "/blocks/\($0)/params.safetensors") }
        let originals = try holders.map { try Data(contentsOf: URL(fileURLWithPath: $0.1)) }
        var r = SeededRandom(seed: 42)
        var detected = 0, located = 0, restoredExactly = 0
        let trials = 1000
        for _ in 0..<trials {
            let h = r.int(below: holders.count)
            var bytes = [UInt8](originals[h])
            let i = r.int(below: bytes.count)
            bytes[i] ^= UInt8(1 << r.int(below: 8))
            try Data(bytes).write(to: URL(fileURLWithPath: holders[h].1))
            let report = ring.checkAuthenticity()
            if !report.authentic { detected += 1 }
            if report.firstTampered == holders[h].0 { located += 1 }
            let restored = try ring.restoreParameters()
            if restored == [holders[h].0], try Data(contentsOf: URL(fileURLWithPath: holders[h].1)) == originals[h],
               ring.checkAuthenticity().authentic { restoredExactly += 1 }
        }
        #expect(detected == trials)
        #expect(located == trials)
        #expect(restoredExactly == trials)
    }

    @Test func twoTamperedBlocksAreRestoredInRingOrder() throws {
        let dir = tempRingDir()
        let ring = try SealedRing.seal(try smallModel(), into: dir)
        for b in try FileManager.default.contentsOfDirectory(atPath: dir + "/blocks").prefix(2) {
            try Data("garbage".utf8).write(to: URL(fileURLWithPath: dir + "/blocks/\(b)/params.safetensors"))
        }
        #expect(!ring.checkAuthenticity().authentic)
        #expect(try ring.restoreParameters().count == 2)
        #expect(ring.checkAuthenticity().authentic)
    }

    @Test func aCorruptedCheckpointIsAFatalErrorNotASilentRestore() throws {
        let dir = tempRingDir()
        let ring = try SealedRing.seal(try smallModel(), into: dir)
        let cp = dir + "/owner/checkpoint.safetensors"
        var bytes = [UInt8](try Data(contentsOf: URL(fileURLWithPath: cp)))
        bytes[bytes.count - 5] ^= 0x10
        try Data(bytes).write(to: URL(fileURLWithPath: cp))
        let b = try FileManager.default.contentsOfDirectory(atPath: dir + "/blocks")[0]
        let p = dir + "/blocks/\(b)/params.safetensors"
        var pb = [UInt8](try Data(contentsOf: URL(fileURLWithPath: p)))
        pb[pb.count - 1] ^= 1
        try Data(pb).write(to: URL(fileURLWithPath: p))
        #expect(throws: RingError.self) { try ring.restoreParameters() }
        #expect(try Data(contentsOf: URL(fileURLWithPath: p)) == Data(pb))
    }
}

@Suite struct KeyFileTests {
    @Test func roundTripAndHostileFiles() throws {
        let dir = tempRingDir()
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        let k = BlockKeys()
        let p = dir + "/keys.json"
        try KeyFile.write(k, to: p)
        #expect(fileMode(p) == 0o600)
        #expect(try KeyFile.read(p).memberKeys?.publicKeys == k.publicKeys)
        chmod(p, 0o644)
        #expect(throws: KeyFileError.self) { try KeyFile.read(p) }
        for bad in ["", "{}", "{\"signing\":\"zz\",\"agreement\":\"00\"}", String(repeating: "a", count: 10_000),
                    "{\"signing\":\"\(String(repeating: "0", count: 64))\",\"agreement\":\"\(String(repeating: "0", count: 62))\"}"] {
            try Data(bad.utf8).write(to: URL(fileURLWithPath: p))
            chmod(p, 0o600)
            do { _ = try KeyFile.read(p); Issue.record("accepted \(bad.prefix(40))") } catch let e as KeyFileError {
                #expect(!"\(e)".contains(bad.count > 8 ? String(bad.prefix(40)) : "\u{0}"))
            }
        }
        #expect(throws: KeyFileError.self) { try KeyFile.read(dir + "/missing.json") }
    }
}
