import Crypto
import DeepRingEngine
import DeepRingLedger
import DeepRingProtocol
import Foundation

/// The result of a query.
public struct QueryResult: Sendable {
    public var queryID: String
    /// The last layer's output (logits), as delivered.
    public var logits: Tensor
    /// Validation alarms raised while answering.
    public var alarms: Int
    /// Ring positions evicted and re-provisioned while answering (policy `.evictAndRetry`).
    public var evicted: [Int] = []
    public var seconds: Double

    package init(queryID: String, logits: Tensor, alarms: Int, evicted: [Int] = [], seconds: Double) {
        self.queryID = queryID; self.logits = logits; self.alarms = alarms; self.evicted = evicted; self.seconds = seconds
    }
}

public enum QueryError: Error, CustomStringConvertible, Equatable {
    /// The input cannot be asked (refused before anything is written).
    case badInput(String)
    /// Validation failed for good: never a wrong answer, but no answer.
    case failed(String)
    /// The ouroboros refused the query.
    case refused(RefusalReason, String)
    /// The ring did not answer in time; the message names the silent member when it is known.
    case timeout(String)

    public var description: String {
        switch self {
        case .badInput(let m): return "bad query input: \(m)"
        case .failed(let m): return "query refused: \(m)"
        case .refused(let r, let m): return "query refused by the ring (\(r)): \(m)"
        case .timeout(let m): return "query timed out: \(m)"
        }
    }
}

/// The querent's side of a query (Eq. 3 and the end of Eq. 12): it knows only the ring's public, authenticated
/// manifest. It seals the input to the ouroboros's HPKE key under a fresh key pair of its own, and accepts as the
/// answer only a delivery signed by the ouroboros key the manifest names, sealed to its own key.
public struct Querent: Sendable {
    public let manifest: RingManifest
    /// Entries this process already knows to be authentic (`AuthenticEntries`): a querent that runs in the process of
    /// the ring's members (the embedded deployment) checks a delivery its ouroboros just signed by comparing bytes.
    /// Nil (the default, a querent on its own): every delivery is checked in full.
    public var authenticEntries: AuthenticEntries?

    public init(manifest: RingManifest) { self.manifest = manifest }

    /// A new query for `x` ([N] + input shape): its id, the querent's one-time keys and the `query` payload.
    public func ask(_ x: Tensor) throws -> (queryID: String, keys: BlockKeys, payload: [UInt8]) {
        let keys = BlockKeys()
        let queryID = randomID()
        let sealed = try HPKEBox.seal(TensorWire.encode(x), to: manifest.ouroboros.agreement,
                                      aad: QueryRequest.aad(queryID: queryID, querent: keys.publicKeys.agreement))
        return (queryID, keys, QueryRequest(querent: keys.publicKeys.agreement, sealedInput: sealed).encoded(capacity: sealed.count + 64))
    }

    /// The outcome of a delivery entry for `queryID` (asked for `batch` inputs): nil when it is not the ouroboros's
    /// (anyone may append); an error when the answer does not open or is not one row of logits per input.
    public func outcome(_ e: LedgerEntry, queryID: String, keys: BlockKeys, batch: Int) throws -> Result<Tensor, QueryError>? {
        guard e.kind == .delivery, e.queryID == queryID, e.author == manifest.ouroboros.signing,
              authenticEntries?.isAuthentic(e) ?? e.isAuthentic else { return nil }
        let d = try Delivery.decode(e)
        switch d.outcome {
        case .answer(let sealed):
            let plain = try HPKEBox.open(sealed[...], with: keys.agreement,
                                         aad: QueryRequest.aad(queryID: queryID, querent: keys.publicKeys.agreement))
            let t = try TensorWire.decode(plain)
            guard t.shape.count == 2, t.shape[0] == batch, t.shape[1] == manifest.classes || manifest.classes == 0 else {
                throw ProtocolError.malformed("the answer has shape \(t.shape)")
            }
            return .success(t)
        case .refusal(let reason, let detail):
            return .failure(.refused(reason, detail))
        }
    }
}
