import DeepRingEngine
import Foundation

/// What an attacker with write access to one block's files can do — used by the attack experiments and tests to
/// play the adversary, never by the protocol itself.
extension SealedRing {
    /// The layers held by the block at ring `position` (1 … n): its own layer and its copy of the next.
    public func heldLayers(position: Int) throws -> (own: RingLayer, next: RingLayer) {
        guard position >= 1 && position <= manifest.blockCount else { throw RingError.notARing("no block at position \(position)") }
        let path = holderPath(position)
        let ls = try BlockFile.parse(try SealedRing.readHolderFile(path, directory: directory), prefixes: ["own", "next"], path: path)
        return (ls[0], ls[1])
    }

    /// Overwrites the parameters of the block at `position` in place (its file, as an attacker would); the hashes
    /// and the owner's record are left alone. A running ring sees the change after `RingRuntime.reloadBlocks()`.
    public func overwriteHeldLayers(position: Int, own: RingLayer, next: RingLayer? = nil) throws {
        let current = try heldLayers(position: position)
        guard own.specs == current.own.specs, own.tensors.map(\.shape) == current.own.tensors.map(\.shape) else {
            throw RingError.malformedFile(holderPath(position), "the replacement layer does not have the block's architecture")
        }
        let bytes = BlockFile.serialize(layers: [("own", own), ("next", next ?? current.next)])
        try Data(bytes).write(to: URL(fileURLWithPath: holderPath(position)))
    }
}
