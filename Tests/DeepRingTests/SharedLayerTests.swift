@testable import DeepRingEmbedded
import DeepRingEngine
import DeepRingProtocol
import Foundation
import Testing

/// The embedded ring holds every block in one process: a layer and its predecessor's copy of it, equal bytes as
/// sealed, are computed with one model. A tampered file must never be shared, or the predecessor's H would be computed
/// with the tampered layer and validation (Eq. 13) would compare the attack with itself.
@Suite struct SharedLayerTests {
    @Test func aLayerIsSharedWithItsPredecessorsCopyOnlyWhileTheirBytesAreEqual() throws {
        let m = try smallModel(seed: 44)
        let dir = try sealedRing(m)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let rt = try RingRuntime(directory: dir)
        // nodes: the ouroboros, then the blocks in ring order (position p is nodes[p]).
        var n = rt.nodes
        #expect(n.count == 6)
        for p in 1..<n.count { #expect(n[p].own === n[p - 1].next, "position \(p)") }
        let x = sampleInputs(3, seed: 5)
        let clean = try rt.query(x)
        #expect(clean.alarms == 0 && clean.logits.data.map(\.bitPattern) == plainLogits(m, x).data.map(\.bitPattern))

        // The block at position 2 computes with a changed layer (its file rewritten, then read again without the
        // digest check, as a compromised block would); no authenticity check runs before the next query.
        var bad = try rt.ring.heldLayers(position: 2).own
        bad.tensors[0].data[0] += 0.5
        try rt.ring.overwriteHeldLayers(position: 2, own: bad)
        try rt.adoptTamperedFiles()
        n = rt.nodes
        #expect(n[2].own !== n[1].next)
        for p in [1, 3, 4, 5] { #expect(n[p].own === n[p - 1].next, "position \(p)") }
        rt.verifyEvery = Int.max
        // Its successor catches it: the query is refused, naming the block, and nothing wrong is delivered.
        let tampered = rt.ring.placement[1]
        #expect {
            _ = try rt.query(x)
        } throws: { error in
            "\(error)".contains(tampered)
        }
    }

    /// Equal values are not enough: a copy that differs from the layer only in the sign of a zero (−0 == +0) would
    /// hash differently (the chain, Eq. 1) and may compute a different sign of zero, so it is not shared either.
    @Test func aCopyThatDiffersOnlyInTheSignOfAZeroIsNotShared() throws {
        let m = try smallModel(seed: 45)
        let dir = try sealedRing(m)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let rt = try RingRuntime(directory: dir)
        // The block at position 3's layer with +0 as its first weight; its predecessor's copy of it with −0.
        var layer = try rt.ring.heldLayers(position: 3).own
        layer.tensors[0].data[0] = 0
        var copy = layer
        copy.tensors[0].data[0] = -0.0
        #expect(copy == layer && !copy.isBitIdentical(to: layer) && layer.isBitIdentical(to: layer))
        try rt.ring.overwriteHeldLayers(position: 3, own: layer)
        try rt.ring.overwriteHeldLayers(position: 2, own: try rt.ring.heldLayers(position: 2).own, next: copy)
        try rt.adoptTamperedFiles()
        let n = rt.nodes
        #expect(n[3].own !== n[2].next)
        for p in [1, 2, 4, 5] { #expect(n[p].own === n[p - 1].next, "position \(p)") }
    }
}
