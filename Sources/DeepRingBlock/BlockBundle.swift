import Crypto
import DeepRingEngine
import DeepRingLedger
import DeepRingProtocol
import Foundation

/// A block's folder as the block itself loads it — `keys.json`, `block.json`, `params.safetensors` — trusting only
/// what its own secret key file anchors: the descriptor must carry the signature of the owner named in `keys.json`
/// and describe this very folder and these very keys, and the parameter file must have the digest the descriptor
/// names. Anything else is a typed error, before a single parameter is used.
package struct BlockBundle {
    package let id: String
    package let keys: BlockKeys
    /// The owner's public key: the anchor from `keys.json`.
    package let owner: [UInt8]
    package let descriptor: BlockDescriptor
    package let own: RingLayer
    package let next: RingLayer

    /// Loads the bundle in `dir`. `checkDigest: false` is the attack experiments' compromised block, which runs on
    /// whatever its file holds.
    package static func load(_ dir: String, checkDigest: Bool = true) throws -> BlockBundle {
        let id = (dir as NSString).lastPathComponent
        let k = try KeyFile.read(dir + "/keys.json")
        guard var keys = k.memberKeys, let owner = k.owner else {
            throw RingError.notAuthentic("\(dir)/keys.json lacks the agreement key or the owner's key")
        }
        let d = try BlockDescriptor.read(dir + "/block.json")
        guard d.isSigned(by: owner) else { throw RingError.notAuthentic("\(dir)/block.json is not signed by the block's owner") }
        guard d.id == id else { throw RingError.notAuthentic("\(dir)/block.json describes block \(d.id), not \(id)") }
        if d.keys != keys.publicKeys, let pending = try pendingKeys(dir), d.keys == pending.publicKeys {
            // A rotation interrupted between its two renames: the owner's descriptor names the pending keys.
            guard rename(dir + "/" + pendingKeysFile, dir + "/keys.json") == 0 else {
                throw RingError.restoreFailed("cannot install the new keys in \(dir)")
            }
            keys = pending
        }
        guard d.keys == keys.publicKeys else { throw RingError.notAuthentic("\(dir)/block.json names other keys than the block holds") }
        let bytes = try InputFile.read(dir + "/params.safetensors", limit: d.paramsSize)
        guard !checkDigest || hex(SHA256.hash(data: bytes)) == d.paramsDigest else {
            throw RingError.notAuthentic("\(dir)/params.safetensors differs from the parameters its descriptor names")
        }
        let layers = try BlockFile.parse(bytes, prefixes: ["own", "next"], path: dir + "/params.safetensors")
        return BlockBundle(id: id, keys: keys, owner: owner, descriptor: d, own: layers[0], next: layers[1])
    }

    /// Key pairs a block made for the next generation and the owner has not placed yet (0600, like `keys.json`).
    static let pendingKeysFile = "keys.next.json"

    static func pendingKeys(_ dir: String) throws -> BlockKeys? {
        let path = dir + "/" + pendingKeysFile
        guard FileManager.default.fileExists(atPath: path) else { return nil }
        guard let k = try KeyFile.read(path).memberKeys else { throw RingError.notAuthentic("\(path) lacks the agreement key") }
        return k
    }
}
