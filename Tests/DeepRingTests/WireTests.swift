@testable import DeepRing
import Crypto
import DeepRingEngine
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
