import DeepRingEngine
import DeepRingLedger
import DeepRingProtocol
import Foundation

/// One block as a party of its own — the decentralised deployment's `deepring block serve`: it holds only its own
/// folder (`BlockBundle`: its layer and its copy of the next one, its key pairs, its owner-signed descriptor, which
/// names its neighbours' and the ouroboros's public keys) and talks only through the ledger. Processing and
/// validation (Eqs. 4–11, 13) are the embedded ring's own (`RingNode`): the same code answers in one process or in
/// many.
public final class BlockAgent {
    public let id: String
    let node: RingNode
    public let ledger: any Ledger
    /// Own posts found on the ledger when it started (an earlier process of this block answered them).
    public let resumedPosts: Int

    /// Loads the bundle in `directory` (refusing a descriptor not signed by the owner its key file names, or a
    /// parameter file that is not the one the descriptor names) and checks that `ledger` is its ring's. Then
    /// resumes: inputs among the last `resumeWindow` entries that it has not answered are answered.
    public init(directory: String, ledger: any Ledger, resumeWindow: Int64 = 20_000) throws {
        let b = try BlockBundle.load(directory)
        let d = b.descriptor
        guard let second = unhex(d.secondPredecessor), second.count == 32 else {
            throw RingError.notAuthentic("\(directory)/block.json names no second predecessor")
        }
        try RingGenesis.check(ledger, ringID: d.ringID, ouroboros: d.ouroboros.signing)
        let node = try RingNode(name: b.id, keys: b.keys, predecessor: d.predecessor, successor: d.successor, secondPredecessor: second,
                                own: b.own, next: b.next, isOuroboros: false, nextIsOuroboros: d.successor == d.ouroboros,
                                ouroborosKey: d.ouroboros.signing, inputShape: b.own.inputShape)
        guard node.nextIsOuroboros || node.next.inputShape == node.own.outputShape else {
            throw RingError.notAuthentic("\(directory): the copy of the next layer takes \(node.next.inputShape), but the layer gives \(node.own.outputShape)")
        }
        // Every post must fit in one ledger entry: this block's input and output bound the batch it takes.
        let widest = max(node.own.inputShape.reduce(1, *), node.own.outputShape.reduce(1, *))
        node.maxBatch = max(1, min(RingNode.maxBatch, (LedgerEntry.maxPayload - (1 << 16)) / (4 * widest)))
        id = b.id
        self.node = node
        self.ledger = ledger
        resumedPosts = try node.resume(ledger: ledger, window: resumeWindow)
    }

    /// Handles what appeared on the ledger since the last call; true when it posted or has more to read.
    public func step() throws -> Bool { try node.step(ledger: ledger) }

    /// The rows that may be work for this block: its predecessor's posts, and its successor's alarms (a retry).
    public var wakeFilters: [EntryFilter] {
        [EntryFilter(kind: .layer, author: node.predecessor.signing), EntryFilter(kind: .alarm, author: node.successor.signing)]
    }

    /// The last ledger entry this block has read.
    public var cursor: Int64 { node.cursor }

    /// Errors met while handling entries (by query), taken: a serving process logs them.
    public func takeFailures() -> [(queryID: String, error: Error)] {
        defer { node.failures.removeAll() }
        return node.failures
    }

    /// The block's current signing key (public), for logs.
    public var signingKey: [UInt8] { node.publicKeys.signing }

    /// Attack hook (`block serve --attack-perturb`): this block adds `epsilon` to every input it computes on — the
    /// paper's compromised block (Algorithm 1's perturbation, applied by the block itself).
    public func perturbInputs(by epsilon: Float) {
        node.perturbInput = { x in Tensor(shape: x.shape, data: x.data.map { $0 + epsilon }) }
    }
}
