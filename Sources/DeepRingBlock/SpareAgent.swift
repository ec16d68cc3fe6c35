import Crypto
import DeepRingEngine
import DeepRingLedger
import DeepRingNode
import DeepRingProtocol
import Foundation

/// A spare block waiting for a slot — `deepring block serve --spare`. Its folder (`DIR/spares/<id>/`, made by
/// `seal --spares N`) holds only its own key pairs and its owner-signed `spare.json`; it holds no parameters and
/// takes part in no query. When validation (Eq. 13, Prop. 1) names a compromised block, the owner evicts it in a
/// key rotation that gives its slot to a spare: the `SparePlacement` addressed to this spare carries, sealed to
/// it, its owner-signed descriptor and its parameter file (the evicted block's layer and its copy of the next
/// one, from the owner's checkpoint). The spare takes them only if they are the owner's and for itself; it writes
/// the file, then `block.json` — from then on the folder is a block's, served by `BlockAgent` (a spare started
/// again after that is a block).
public final class SpareAgent {
    public static let descriptorFile = SpareDescriptor.fileName

    public let id: String
    let directory: String
    public let ledger: any Ledger
    let keys: BlockKeys
    /// The owner's public key (the anchor in `keys.json`).
    let owner: [UInt8]
    let descriptor: SpareDescriptor
    /// The last ledger entry read.
    public private(set) var cursor: Int64 = 0
    /// The placement this spare took (its sequence number), once placed.
    public private(set) var placedAt: Int64?
    public private(set) var events: [(call: String, event: String, detail: String)] = []
    private var lock: RingLock?

    /// True when `directory` is a spare's folder that has not been placed yet (no `block.json`).
    public static func isWaitingSpare(_ directory: String) -> Bool {
        FileManager.default.fileExists(atPath: directory + "/" + descriptorFile) && !FileManager.default.fileExists(atPath: directory + "/block.json")
    }

    /// Opens the spare in `directory` (refusing a `spare.json` not signed by the owner its key file names, or naming
    /// other keys or another id) as its one runner, and checks that `ledger` is its ring's.
    public init(directory: String, ledger: any Ledger) throws {
        let id = (directory as NSString).lastPathComponent
        let k = try KeyFile.read(directory + "/keys.json")
        guard let keys = k.memberKeys, let owner = k.owner else {
            throw RingError.notAuthentic("\(directory)/keys.json lacks the agreement key or the owner's key")
        }
        let d = try SpareDescriptor.read(directory + "/" + SpareAgent.descriptorFile)
        guard d.isSigned(by: owner) else { throw RingError.notAuthentic("\(directory)/spare.json is not signed by the spare's owner") }
        guard d.id == id, d.keys == keys.publicKeys else {
            throw RingError.notAuthentic("\(directory)/spare.json describes another spare (its id or keys differ)")
        }
        guard let l = try RingLock.acquire(directory + "/serve.lock", exclusive: true, create: true, timeout: 0,
                                           what: "another process is already serving the spare in \(directory) (it holds \(directory)/serve.lock)") else {
            throw RingError.notARing("\(directory)/serve.lock cannot be made")
        }
        try RingGenesis.check(ledger, ringID: d.ringID, ouroboros: d.ouroboros.signing)
        self.id = id; self.directory = directory; self.ledger = ledger
        self.keys = keys; self.owner = owner; descriptor = d; lock = l
    }

    /// The rows that may be work for a spare: the ouroboros's placements.
    public var wakeFilters: [EntryFilter] { [EntryFilter(kind: .placement, author: descriptor.ouroboros.signing)] }

    /// Reads the ouroboros's placements since the last call (the whole ledger at the first: a spare may be started
    /// after its placement was posted); true when it took one — the folder is a block's now: serve it with
    /// `BlockAgent` (this spare releases its lock for it).
    public func step() throws -> Bool {
        guard placedAt == nil else { return false }
        let (page, _) = try ledger.entries(after: cursor, matching: wakeFilters, maxBytes: 64 << 20)
        for e in page.entries {
            guard let p = try? SparePlacement.decode(e), p.recipient == keys.publicKeys.signing else { continue }
            do {
                let d = try take(p, entry: e)
                placedAt = e.sequence
                cursor = e.sequence
                lock = nil
                events.append((e.queryID ?? "", "placed", "this spare holds a ring slot from generation \(d.generation) on"))
                return true
            } catch {
                events.append((e.queryID ?? "", "placement refused", "\(error)"))
            }
        }
        cursor = max(cursor, page.through)
        return false
    }

    /// Checks a placement addressed to this spare and makes the folder a block's: the descriptor must be the owner's,
    /// for this spare (its ring, id, keys and ouroboros) and the placement's generation; the file must be the one it
    /// names (digest and size) and hold two layers. The file is written first, `block.json` last (the marker: a crash
    /// in between leaves a waiting spare, which takes the placement again when it starts).
    private func take(_ p: SparePlacement, entry e: LedgerEntry) throws -> BlockDescriptor {
        guard e.isAuthentic, e.author == descriptor.ouroboros.signing, let call = e.queryID else {
            throw RingError.notAuthentic("the placement is not the ouroboros's")
        }
        let plain = Array(try HPKEBox.open(p.sealed[...], with: keys.agreement, aad: SparePlacement.aad(call: call, recipient: keys.publicKeys.signing)))
        let (bytes, file) = try SparePlacement.contents(plain)
        let d = try BlockDescriptor.parse(bytes, path: "the spare placement's descriptor")
        guard d.isSigned(by: owner) else { throw RingError.notAuthentic("the spare placement's descriptor is not signed by the spare's owner") }
        guard d.ringID == descriptor.ringID, d.id == id, d.keys == keys.publicKeys, d.ouroboros == descriptor.ouroboros,
              UInt64(d.generation) == p.generation else {
            throw RingError.notAuthentic("the spare placement's descriptor is not this spare's (ring, id, keys, ouroboros or generation differ)")
        }
        guard file.count == d.paramsSize, hex(SHA256.hash(data: file)) == d.paramsDigest else {
            throw RingError.notAuthentic("the spare placement's parameter file is not the one its descriptor names")
        }
        let layers = try BlockFile.parse(file, prefixes: ["own", "next"], path: "the spare placement's parameter file")
        _ = try layers[0].model(); _ = try layers[1].model()
        try writeFileAtomically(file, to: directory + "/params.safetensors", permissions: 0o644)
        try writeFileAtomically(bytes, to: directory + "/block.json", permissions: 0o644)
        try? fsyncPath(directory)
        return d
    }

    /// Takes the events since the last call.
    public func takeEvents() -> [(call: String, event: String, detail: String)] {
        defer { events.removeAll() }
        return events
    }

    /// The spare's signing key (public), for logs.
    public var signingKey: [UInt8] { keys.publicKeys.signing }
}
