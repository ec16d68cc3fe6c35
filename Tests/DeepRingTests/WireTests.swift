import Crypto
import DeepRingEngine
import DeepRingLedger
import DeepRingProtocol
import Foundation
import Testing

@Suite struct WireTests {
    @Test func hexRoundTrips() {
        #expect(hex([0x00, 0x0f, 0xab, 0xff]) == "000fabff")
        #expect(hex([UInt8]()) == "")
        let all = (0...255).map { UInt8($0) }
        #expect(unhex(hex(all)) == all)
        #expect(hex(all) == all.map { String(format: "%02x", $0) }.joined())
        #expect(unhex("0") == nil && unhex("zz") == nil)
    }

    @Test func theCodecRoundTripsAndRefusesEveryTruncation() throws {
        var w = BinaryWriter()
        w.u8(7); w.u32(0xdead_beef); w.i64(-3); w.bytes([1, 2, 3]); w.raw([UInt8](repeating: 9, count: 32)); w.string("ringé")
        w.list([[UInt8](repeating: 4, count: 32)]) { w, k in w.raw(k) }
        let b = w.bytes
        func read(_ b: [UInt8]) throws -> (UInt8, UInt32, Int64, [UInt8], [UInt8], String, [[UInt8]]) {
            var r = BinaryReader(b)
            let v = (try r.u8(), try r.u32(), try r.i64(), try r.bytes(max: 16), try r.key(), try r.string(max: 16),
                     try r.list(max: 4, "keys") { try $0.key() })
            try r.end()
            return v
        }
        let v = try read(b)
        #expect(v.0 == 7 && v.1 == 0xdead_beef && v.2 == -3 && v.3 == [1, 2, 3] && v.5 == "ringé" && v.6.count == 1)
        for cut in 0..<b.count { #expect(throws: ProtocolError.self) { try read(Array(b[0..<cut])) } }
        #expect(throws: ProtocolError.self) { try read(b + [0]) }
        // A length or count over its bound is refused before anything is allocated.
        var huge = BinaryWriter(); huge.u32(UInt32.max)
        var r = BinaryReader(huge.bytes)
        #expect(throws: ProtocolError.self) { try r.bytes(max: 1 << 20) }
    }

    @Test func everyPayloadRoundTripsAndNeverDecodesAsAnother() throws {
        let k = [UInt8](repeating: 1, count: 32), h = [UInt8](repeating: 2, count: 32)
        let members = MembersAnnouncement(ringID: "ring", generation: 3, members: [k, h])
        let query = QueryRequest(querent: k, sealedInput: [5, 6, 7])
        let post = LayerPost(consumed: 9, consumedHash: h, recipient: k, sealedKey: [1, 2], ciphertext: [3, 4, 5][...], nextHash: h)
        let alarms = [Alarm(.validation(ValidationAlarm(suspect: k, hashFrom: h, entry: 4, input: 3, reason: .hashMismatch, final: false))),
                      Alarm(.validation(ValidationAlarm(suspect: k, hashFrom: nil, entry: 4, input: nil, reason: .secondPost, final: true))),
                      Alarm(.authenticity(firstTampered: "abc")), Alarm(.silent(member: k))]
        let deliveries = [Delivery(.answer(sealed: [1, 2, 3])), Delivery(.refusal(.badInput, detail: "wrong shape"))]
        let restore = RestoreRecord(holder: "ouroboros", action: .parameters)
        #expect(try MembersAnnouncement.decode(members.encoded()) == members)
        #expect(try QueryRequest.decode(query.encoded()) == query)
        #expect(try LayerPost.decode(post.encoded()) == post)
        for a in alarms { #expect(try Alarm.decode(a.encoded()) == a) }
        for d in deliveries { #expect(try Delivery.decode(d.encoded()) == d) }
        #expect(try RestoreRecord.decode(restore.encoded()) == restore)
        // A payload of one type is refused by every other decoder, and a newer version by all.
        #expect(throws: ProtocolError.self) { try Delivery.decode(post.encoded()) }
        #expect(throws: ProtocolError.self) { try LayerPost.decode(query.encoded()) }
        var newer = post.encoded()
        newer[0] = 2
        #expect(throws: ProtocolError.unsupported("payload version 2")) { try LayerPost.decode(newer) }
        // And a payload may travel only in its own kind of entry.
        let e = LedgerEntry(sequence: 1, previousHash: [], kind: .delivery, queryID: "q", author: k, payload: post.encoded(), hash: [], signature: [])
        #expect(throws: ProtocolError.self) { try LayerPost.decode(e) }
    }

    @Test func tensorsRoundTripAndHashAsTheirEncoding() throws {
        var r = SeededRandom(seed: 4)
        for shape in [[1, 10], [3, 7, 5], [1], [256, 900]] {
            let t = Tensor(shape: shape, data: (0..<shape.reduce(1, *)).map { _ in r.normal() })
            let bytes = TensorWire.encode(t)
            #expect(try TensorWire.decode(bytes) == t)
            #expect(TensorWire.hash(t) == Array(SHA256.hash(data: bytes)), "\(shape)")
        }
        // Hostile encodings are refused, never trusted.
        let good = TensorWire.encode(Tensor(shape: [2, 2], data: [1, 2, 3, 4]))
        #expect(throws: ProtocolError.self) { try TensorWire.decode(Array(good.dropLast())) }
        var wrongShape = good
        wrongShape[4] = 3   // claims 3×2 values
        #expect(throws: ProtocolError.self) { try TensorWire.decode(wrongShape) }
        var zero = good
        zero[4] = 0
        #expect(throws: ProtocolError.self) { try TensorWire.decode(zero) }
    }

    @Test func ownerSignedDocumentsDetectEveryFieldChange() throws {
        let owner = Curve25519.Signing.PrivateKey(), other = Curve25519.Signing.PrivateKey()
        let ownerKey = Array(owner.publicKey.rawRepresentation)
        var m = RingManifest(ringID: "r1", owner: ownerKey, ouroboros: BlockKeys().publicKeys, algorithms: ["hash": "SHA-256"],
                             blockCount: 5, inputShape: [6, 6, 1], classes: 4)
        try m.sign(with: owner)
        #expect(m.isSigned(by: ownerKey))
        #expect(try RingManifest.parse(try encodeJSON(m), path: "ring.json") == m)
        var changed = [m, m, m, m, m]
        changed[0].ouroboros = BlockKeys().publicKeys
        changed[1].blockCount = 6
        changed[2].inputShape = [6, 6, 2]
        changed[3].algorithms["hash"] = "MD5"
        changed[4].ringID = "r2"
        for c in changed { #expect(!c.isSigned(by: ownerKey)) }
        // Re-signed by another key: self-consistent, but it names another owner (what a pin catches).
        var forged = m
        forged.ouroboros = BlockKeys().publicKeys
        forged.owner = hex(other.publicKey.rawRepresentation)
        try forged.sign(with: other)
        let parsed = try RingManifest.parse(try encodeJSON(forged), path: "ring.json")
        #expect(parsed.ownerFingerprint != m.ownerFingerprint)
        // Edited after signing: refused at parse.
        var edited = try encodeJSON(m)
        let text = String(decoding: edited, as: UTF8.self).replacingOccurrences(of: "\"blockCount\" : 5", with: "\"blockCount\" : 4")
        edited = Array(text.utf8)
        #expect(throws: RingError.self) { try RingManifest.parse(edited, path: "ring.json") }
        // Duplicate keys are refused by the strict parser before decoding.
        let dup = Array("{\"format\":\"deepring-ring-v2\",\"format\":\"deepring-ring-v2\"}".utf8)
        #expect(throws: RingError.self) { try RingManifest.parse(dup, path: "ring.json") }
    }

    @Test func fingerprintsMatchTheirKeyAndNothingElse() {
        let k = Array(Curve25519.Signing.PrivateKey().publicKey.rawRepresentation)
        let fp = KeyFingerprint.of(k)
        #expect(fp.hasPrefix("SHA256:") && KeyFingerprint.isWellFormed(fp))
        #expect(KeyFingerprint.matches(fp, k) && KeyFingerprint.matches(hex(k), k))
        #expect(!KeyFingerprint.matches(fp, Array(Curve25519.Signing.PrivateKey().publicKey.rawRepresentation)))
        #expect(!KeyFingerprint.isWellFormed("SHA256:abc") && !KeyFingerprint.isWellFormed("nope"))
    }
}
