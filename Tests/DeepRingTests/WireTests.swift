@testable import DeepRing
import Crypto
import DeepRingEngine
import DeepRingLedger
import Foundation
import Testing

@Suite struct WireTests {
    @Test func hexRoundTrips() {
        #expect(hex([0x00, 0x0f, 0xab, 0xff]) == "000fabff")
        #expect(hex([UInt8]()) == "")
        let all = (0...255).map { UInt8($0) }
        #expect(unhex(hex(all)) == all)
        #expect(hex(all) == all.map { String(format: "%02x", $0) }.joined())
    }

    @Test func theHOfALayerPostParsesWithoutTheRest() throws {
        var w = WireWriter()
        w.u64(7); w.field([UInt8](repeating: 1, count: 80)); w.field([UInt8](repeating: 2, count: 5000)); w.field([UInt8](repeating: 9, count: 32))
        func entry(_ payload: [UInt8]) -> LedgerEntry {
            LedgerEntry(sequence: 1, previousHash: [], kind: .layer, queryID: "q", author: [], payload: payload, hash: [], signature: [])
        }
        let full = try RingNode.parseLayer(entry(w.bytes))
        #expect(try RingNode.parseH(entry(w.bytes)) == full.h && full.consumed == 7 && full.x.count == 5000)
        #expect(throws: QueryError.self) { try RingNode.parseH(entry(Array(w.bytes.dropLast()))) }
        #expect(throws: QueryError.self) { try RingNode.parseH(entry(w.bytes + [0])) }
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
        #expect(throws: QueryError.self) { try TensorWire.decode(Array(good.dropLast())) }
        var wrongShape = good
        wrongShape[4] = 3   // claims 3×2 values
        #expect(throws: QueryError.self) { try TensorWire.decode(wrongShape) }
        var zero = good
        zero[4] = 0
        #expect(throws: QueryError.self) { try TensorWire.decode(zero) }
    }
}
