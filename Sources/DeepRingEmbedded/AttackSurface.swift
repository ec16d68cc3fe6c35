import Crypto
import DeepRingEngine
import DeepRingLedger
import DeepRingOwner
import DeepRingProtocol
import Foundation

/// What an attacker with write access to one block's files can do — used by the attack experiments and tests to
/// play the adversary, never by the protocol itself.
extension SealedRing {
    /// The layers held by the block at ring `position` (1 … n): its own layer and its copy of the next.
    public func heldLayers(position: Int) throws -> (own: RingLayer, next: RingLayer) {
        guard position >= 1 && position <= manifest.blockCount else { throw RingError.notARing("no block at position \(position)") }
        let path = holderPath(position)
        let ls = try BlockFile.parse(try readHolder(position), prefixes: ["own", "next"], path: path)
        return (ls[0], ls[1])
    }

    /// Overwrites the parameters of the block at `position` in place (its file, as an attacker would); the hashes
    /// and the owner's record are left alone. A running ring runs on the change after `RingRuntime.adoptTamperedFiles()`.
    public func overwriteHeldLayers(position: Int, own: RingLayer, next: RingLayer? = nil) throws {
        let current = try heldLayers(position: position)
        guard own.specs == current.own.specs, own.tensors.map(\.shape) == current.own.tensors.map(\.shape) else {
            throw RingError.malformedFile(holderPath(position), "the replacement layer does not have the block's architecture")
        }
        let bytes = BlockFile.serialize(layers: [("own", own), ("next", next ?? current.next)])
        try Data(bytes).write(to: URL(fileURLWithPath: holderPath(position)))
    }
}

extension RingRuntime {
    /// Attack hook: every block re-reads its parameter file without checking it against its descriptor, as a
    /// compromised block would (an honest block refuses a file whose digest its descriptor does not name). The
    /// owner's check before the next query then finds the change and restores the file.
    public func adoptTamperedFiles() throws { try reloadBlocks(dropping: [], checkDigests: false) }
}
