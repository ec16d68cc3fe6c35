import Crypto
import DeepRingClient
import DeepRingOwner
import DeepRingEngine
import DeepRingData
import DeepRingLedger
import DeepRingLedgerSQLite
import DeepRingProtocol
import Foundation
import GRDB

/// The fuzz harnesses: every parser DeepRing runs on outside data, each fed arbitrary bytes. A harness returns
/// normally for any input — a typed error is the expected outcome for garbage — so that a crash, a trap, a leak, a
/// hang or an oversized allocation is a finding. `scripts/fuzz.sh` runs them under libFuzzer and AddressSanitizer;
/// the tests replay the seeds and every committed finding (`Tests/DeepRingFuzzTests/Fixtures/fuzz/<target>/`).
public struct FuzzTarget: Sendable {
    public let name: String
    public let summary: String
    /// Runs one input.
    public let run: @Sendable ([UInt8]) -> Void
    /// Valid inputs to start from.
    public let seeds: @Sendable () -> [[UInt8]]
}

public enum FuzzTargets {
    /// Fixed keys, so that every run is deterministic.
    static let signing = try! Curve25519.Signing.PrivateKey(rawRepresentation: [UInt8](repeating: 7, count: 32))
    static let agreement = try! Curve25519.KeyAgreement.PrivateKey(rawRepresentation: [UInt8](repeating: 9, count: 32))
    static let keys = BlockKeys(signing: signing, agreement: agreement)
    static var ownerKey: [UInt8] { Array(signing.publicKey.rawRepresentation) }

    /// What a harness does with a decoded value: touch it, so the work is not optimised away.
    @inline(never) static func consume<T>(_ v: T) { withExtendedLifetime(v) {} }

    public static let all: [FuzzTarget] = [
        FuzzTarget(name: "safetensors", summary: "safetensors header and data (SafeTensors.parse, every F32 tensor read)", run: { b in
            guard let st = try? SafeTensors.parse(b) else { return }
            for e in st.entries where e.dtype == .F32 { consume(try? st.floats(e.name)) }
        }, seeds: { [SafeTensors.serialize([("a", [2, 3], [Float](repeating: 1.5, count: 6)[...]), ("b", [1], [Float(2)][...])],
                                           metadata: ["k": "v"]), ModelFile.serialize(sampleModel)] }),
        FuzzTarget(name: "model-file", summary: "model files: safetensors plus the architecture (ModelFile.load)", run: { b in
            consume(try? ModelFile.load(bytes: b))
        }, seeds: { [ModelFile.serialize(sampleModel)] }),
        FuzzTarget(name: "idx", summary: "IDX images and labels, raw or gzip (IDX.parse)", run: { b in
            consume(try? IDX.parse(b, maxBytes: 1 << 24))
        }, seeds: { [sampleIDX, (try? Gzip.compress(sampleIDX)) ?? []] }),
        FuzzTarget(name: "gzip", summary: "gzip and zlib streams (Gzip.decompress)", run: { b in
            consume(try? Gzip.decompress(b, limit: 1 << 24))
        }, seeds: { [(try? Gzip.compress(Array("DeepRing gzip seed ".utf8) + [UInt8](repeating: 42, count: 300))) ?? []] }),
        FuzzTarget(name: "cifar10", summary: "CIFAR-10 binary batches (CIFAR10.parse)", run: { b in
            consume(try? CIFAR10.parse(b))
        }, seeds: { [CIFAR10.encode(images: [Float](repeating: 0.5, count: 2 * 3072), labels: [3, 7])] }),
        FuzzTarget(name: "json", summary: "the strict JSON parser (StrictJSONParser.parse)", run: { b in
            consume(try? StrictJSONParser.parse(b))
        }, seeds: { [Array(#"{"a": [1, -2.5e3, "x\u00e9\n", true, null, {"b": {}}], "c": "d"}"#.utf8)] }),
        FuzzTarget(name: "key-file", summary: "secret key files (KeyFile.parse)", run: { b in
            consume(try? KeyFile.parse(b, path: "keys.json"))
        }, seeds: { [KeyFile.serialize(keys, owner: ownerKey), KeyFile.serialize(KeyFile.Contents(signing: signing))] }),
        FuzzTarget(name: "block-descriptor", summary: "block.json (BlockDescriptor.parse, signature check)", run: { b in
            guard let d = try? BlockDescriptor.parse(b, path: "block.json") else { return }
            consume(d.isSigned(by: ownerKey))
        }, seeds: { [sampleDescriptor] }),
        FuzzTarget(name: "ring-manifest", summary: "ring.json (RingManifest.parse, signature check)", run: { b in
            consume(try? RingManifest.parse(b, path: "ring.json"))
        }, seeds: { [sampleManifest] }),
        FuzzTarget(name: "owner-record", summary: "owner/record.json (OwnerRecord.parse, signature check)", run: { b in
            guard let r = try? OwnerRecord.parse(b, path: "record.json", blockCount: 2) else { return }
            consume(r.isSigned(by: ownerKey))
        }, seeds: { [sampleRecord] }),
        FuzzTarget(name: "known-rings", summary: "the querent's pins (KnownRings.parse)", run: { b in
            consume(try? KnownRings.parse(b, path: "known_rings"))
        }, seeds: { [Array("# pins\nring-1 \(KeyFingerprint.of(ownerKey))\nring-2 \(hex(ownerKey))\n".utf8)] }),
        FuzzTarget(name: "block-file", summary: "a block's params.safetensors as ring layers (BlockFile.parse, RingLayer.model)", run: { b in
            guard let ls = try? BlockFile.parse(b, prefixes: ["own", "next"], path: "params.safetensors") else { return }
            for l in ls { consume(try? l.model()) }
        }, seeds: { [sampleBlockFile] }),
        FuzzTarget(name: "ledger-row", summary: "a stored ledger row's columns (SQLiteLedger.decode, entry hash and signature)", run: { b in
            guard let e = try? SQLiteLedger.decode(row(from: b)) else { return }
            consume((e.recomputedHash, e.signatureIsValid))
        }, seeds: { [sampleRowBytes] }),
        FuzzTarget(name: "query", summary: "query payloads, and opening the sealed input (QueryRequest, HPKEBox, TensorWire)", run: { b in
            guard let q = try? QueryRequest.decode(b) else { return }
            guard let plain = try? HPKEBox.open(q.sealedInput[...], with: agreement, aad: QueryRequest.aad(queryID: "q", querent: q.querent)) else { return }
            consume(try? TensorWire.decode(plain))
        }, seeds: { [sampleQuery] }),
        FuzzTarget(name: "layer-post", summary: "layer posts S/K/X/H (LayerPost.decode, opening K)", run: { b in
            guard let p = try? LayerPost.decode(b) else { return }
            consume(try? HPKEBox.open(p.sealedKey[...], with: agreement, aad: []))
        }, seeds: { [sampleLayerPost] }),
        FuzzTarget(name: "alarm", summary: "alarm payloads (Alarm.decode)", run: { b in consume(try? Alarm.decode(b)) },
                   seeds: { sampleAlarms.map { $0.encoded() } }),
        FuzzTarget(name: "delivery", summary: "delivery payloads: answers and refusals (Delivery.decode)", run: { b in
            consume(try? Delivery.decode(b))
        }, seeds: { [Delivery(.answer(sealed: [1, 2, 3])).encoded(), Delivery(.refusal(.badInput, detail: "shape")).encoded()] }),
        FuzzTarget(name: "reshuffle", summary: "member announcements of seal and reshuffle entries (MembersAnnouncement.decode)", run: { b in
            consume(try? MembersAnnouncement.decode(b))
        }, seeds: { [MembersAnnouncement(ringID: "ring", generation: 4, members: [ownerKey, ownerKey]).encoded()] }),
        FuzzTarget(name: "rotation", summary: "key rotation: calls, rekeys and placements (and opening their sealed parts)", run: { b in
            consume(try? RotationCall.decode(b))
            if let r = try? RekeyPost.decode(b) { consume(try? HPKEBox.open(r.sealedKeys[...], with: agreement, aad: [])) }
            if let p = try? PlacementOrder.decode(b) {
                consume(try? HPKEBox.open(p.sealedDescriptor[...], with: agreement, aad: []))
                consume(try? BlockDescriptor.parse(p.sealedDescriptor, path: "fuzz"))
            }
        }, seeds: { [RotationCall(ringID: "ring", generation: 3).encoded(), RekeyPost(generation: 3, sealedKeys: [1, 2, 3]).encoded(),
                     PlacementOrder(generation: 3, recipient: ownerKey, sealedDescriptor: Array("{}".utf8)).encoded()] }),
        FuzzTarget(name: "eviction", summary: "eviction to spares: spare placements and eviction notices (and opening their sealed parts), spare descriptors", run: { b in
            consume(try? EvictionNotice.decode(b))
            consume(try? SpareDescriptor.parse(Array(b), path: "fuzz"))
            if let p = try? SparePlacement.decode(b) {
                consume(try? HPKEBox.open(p.sealed[...], with: agreement, aad: []))
                if let (d, f) = try? SparePlacement.contents(p.sealed) {
                    consume(try? BlockDescriptor.parse(d, path: "fuzz"))
                    consume(try? BlockFile.parse(f, prefixes: ["own", "next"], path: "fuzz"))
                }
            }
        }, seeds: { [EvictionNotice(generation: 2, evicted: ownerKey, reason: "named").encoded(),
                     SparePlacement(generation: 2, recipient: ownerKey, sealed: SparePlacement.plaintext(descriptor: Array("{}".utf8), file: [1, 2])).encoded()] }),
        FuzzTarget(name: "restore", summary: "restore records (RestoreRecord.decode)", run: { b in consume(try? RestoreRecord.decode(b)) },
                   seeds: { [RestoreRecord(holder: "ouroboros", action: .parameters).encoded()] }),
        FuzzTarget(name: "authenticity", summary: "authenticity rounds: challenges, attestations, restore orders (and opening them)", run: { b in
            consume(try? AuthenticityChallenge.decode(b))
            consume(try? Attestation.decode(b))
            if let r = try? RestoreOrder.decode(b) {
                consume(try? HPKEBox.open(r.sealedFile[...], with: agreement, aad: RestoreOrder.aad(round: "auth-0", recipient: r.recipient)))
            }
        }, seeds: {
            let sealed = (try? HPKEBox.seal([1, 2, 3], to: Array(agreement.publicKey.rawRepresentation),
                                            aad: RestoreOrder.aad(round: "auth-0", recipient: ownerKey))) ?? []
            return [AuthenticityChallenge(ouroborosHash: [UInt8](repeating: 7, count: 32)).encoded(),
                    Attestation(previousHash: [UInt8](repeating: 1, count: 32), hash: [UInt8](repeating: 2, count: 32), fileIntact: true).encoded(),
                    RestoreOrder(recipient: ownerKey, sealedFile: sealed).encoded()]
        }),
        FuzzTarget(name: "tensor", summary: "tensors on the wire (TensorWire.decode)", run: { b in consume(try? TensorWire.decode(b)) },
                   seeds: { [TensorWire.encode(Tensor(shape: [2, 3], data: [1, 2, 3, 4, 5, 6]))] }),
    ]

    public static func named(_ name: String) -> FuzzTarget? { all.first { $0.name == name } }

    // MARK: seeds

    static var sampleModel: Model {
        (try? Model(.mlp(inputShape: [4], classes: 2, hidden: [3]), seed: 1)) ?? { fatalError("the sample model is valid") }()
    }

    static var sampleIDX: [UInt8] { [0, 0, 8, 3, 0, 0, 0, 2, 0, 0, 0, 2, 0, 0, 0, 2] + (0..<8).map { UInt8($0 * 30) } }

    static var sampleBlockFile: [UInt8] {
        let ls = RingLayer.split(sampleModel)
        return BlockFile.serialize(layers: [("own", ls[0]), ("next", ls[1])])
    }

    static var sampleDescriptor: [UInt8] {
        var d = BlockDescriptor(ringID: "ring", id: String(repeating: "ab", count: 16), generation: 1, keys: keys.publicKeys,
                                predecessor: keys.publicKeys, successor: keys.publicKeys, ouroboros: keys.publicKeys, secondPredecessor: ownerKey,
                                previousHash: String(repeating: "01", count: 32),
                                hash: String(repeating: "02", count: 32), paramsDigest: String(repeating: "03", count: 32), paramsSize: 1234)
        try? d.sign(with: signing)
        return (try? encodeJSON(d)) ?? []
    }

    static var sampleManifest: [UInt8] {
        var m = RingManifest(ringID: "ring", owner: ownerKey, ouroboros: keys.publicKeys, algorithms: ["hash": "SHA-256"],
                             blockCount: 2, inputShape: [4], classes: 2)
        try? m.sign(with: signing)
        return (try? encodeJSON(m)) ?? []
    }

    static var sampleRecord: [UInt8] {
        let h = String(repeating: "0a", count: 32)
        let json = """
        {"format": "\(OwnerRecord.currentFormat)", "ringID": "ring", "order": ["\(String(repeating: "cd", count: 16))", "\(String(repeating: "ef", count: 16))"],
         "hashes": ["\(h)", "\(h)", "\(h)"], "layerDigests": ["\(h)", "\(h)", "\(h)"], "fileDigests": ["\(h)", "\(h)", "\(h)"],
         "fileSizes": [100, 200, 300], "checkpointSize": 600, "generation": 0,
         "members": [{"signing": "\(h)", "agreement": "\(h)"}, {"signing": "\(h)", "agreement": "\(h)"}], "signature": "\(String(repeating: "00", count: 64))"}
        """
        return Array(json.utf8)
    }

    static var sampleQuery: [UInt8] {
        let sealed = (try? HPKEBox.seal(TensorWire.encode(Tensor(shape: [1, 4], data: [1, 2, 3, 4])),
                                        to: Array(agreement.publicKey.rawRepresentation),
                                        aad: QueryRequest.aad(queryID: "q", querent: ownerKey))) ?? []
        return QueryRequest(querent: ownerKey, sealedInput: sealed).encoded()
    }

    static var sampleLayerPost: [UInt8] {
        let k = (try? HPKEBox.seal([UInt8](repeating: 5, count: 32), to: Array(agreement.publicKey.rawRepresentation), aad: [])) ?? []
        return LayerPost(consumed: 3, consumedHash: ownerKey, recipient: ownerKey, sealedKey: k, ciphertext: [1, 2, 3][...], nextHash: ownerKey).encoded()
    }

    static var sampleAlarms: [Alarm] {
        [Alarm(.validation(ValidationAlarm(suspect: ownerKey, hashFrom: ownerKey, entry: 5, input: 4, reason: .hashMismatch, final: false))),
         Alarm(.authenticity(firstTampered: "ouroboros")), Alarm(.silent(member: ownerKey))]
    }

    // MARK: ledger rows

    /// The stored columns of a row, from fuzz bytes: per column a type byte (0 null, 1 integer, 2 text, 3 blob,
    /// 4 real) and its value (8 bytes, or a u16 length and that many bytes). Missing columns are null.
    static let columns = ["seq", "prev_hash", "kind", "query_id", "author", "payload", "hash", "signature"]

    static func row(from b: [UInt8]) -> Row {
        var r = BinaryReader(b)
        var values: [String: DatabaseValueConvertible?] = [:]
        var payloadType = "null"
        for c in columns {
            guard let t = try? r.u8() else { values[c] = nil; continue }
            var v: DatabaseValueConvertible?
            var type = "null"
            switch t % 5 {
            case 1: v = (try? r.i64()) ?? 0; type = "integer"
            case 2:
                let n = Int((try? r.u8()) ?? 0) | Int((try? r.u8()) ?? 0) << 8
                v = String(decoding: (try? r.raw(min(n, r.remaining))) ?? [], as: UTF8.self); type = "text"
            case 3:
                let n = Int((try? r.u8()) ?? 0) | Int((try? r.u8()) ?? 0) << 8
                v = Data((try? r.raw(min(n, r.remaining))) ?? []); type = "blob"
            case 4: v = Double(bitPattern: UInt64(bitPattern: (try? r.i64()) ?? 0)); type = "real"
            default: v = nil
            }
            values[c] = v
            if c == "payload" { payloadType = type }
        }
        values["payload_type"] = payloadType
        return Row(values)
    }

    static var sampleRowBytes: [UInt8] {
        var w = BinaryWriter()
        func blob(_ b: [UInt8]) { w.u8(3); w.u8(UInt8(b.count & 255)); w.u8(UInt8(b.count >> 8)); w.raw(b) }
        func text(_ s: String) { let u = Array(s.utf8); w.u8(2); w.u8(UInt8(u.count & 255)); w.u8(UInt8(u.count >> 8)); w.raw(u) }
        w.u8(1); w.i64(1)
        blob(LedgerEntry.genesisHash)
        text("query"); text("q1")
        blob(ownerKey)
        blob(sampleQuery)
        let hash = LedgerEntry.computeHash(sequence: 1, previousHash: LedgerEntry.genesisHash, kind: .query, queryID: "q1",
                                           author: ownerKey, payload: sampleQuery)
        blob(hash)
        blob((try? Array(signing.signature(for: hash))) ?? [])
        return w.bytes
    }
}
