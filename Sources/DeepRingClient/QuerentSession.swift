import DeepRingEngine
import DeepRingLedger
import DeepRingProtocol
import Foundation

/// A querent on any host (the decentralised deployment's `deepring query --ledger`): it holds only the ring's
/// public manifest — whose owner key it has pinned — and a ledger connection that may insert query rows. It posts
/// the query (Eq. 3) and waits, sleeping until the ledger changes, for the ouroboros's delivery (Eq. 12): an answer
/// sealed to its one-time key, or a refusal. Anything else on the ledger is ignored (anyone may append). It never
/// waits longer than `timeout`.
public struct QuerentSession: Sendable {
    public let querent: Querent
    public let ledger: any Ledger

    public init(manifest: RingManifest, ledger: any Ledger) {
        querent = Querent(manifest: manifest)
        self.ledger = ledger
    }

    /// Asks for `x` ([N] + the ring's input shape) and returns the logits, or throws a `QueryError`.
    public func query(_ x: Tensor, timeout: Double) throws -> QueryResult {
        let t0 = now()
        let m = querent.manifest
        guard x.shape.count >= 1, x.batch > 0, x.itemSize == m.inputShape.reduce(1, *) else {
            throw QueryError.badInput("expected inputs of shape [N] + \(m.inputShape), got \(x.shape)")
        }
        guard x.data.allSatisfy({ $0.isFinite }) else { throw QueryError.badInput("the input contains NaN or infinite values") }
        let (queryID, keys, payload) = try querent.ask(x.reshaped([x.batch] + m.inputShape))
        let posted = try ledger.append(kind: .query, queryID: queryID, payload: payload, signer: LedgerSigner(keys.signing))
        var cursor = posted.sequence
        var lastRead = now()
        let deadline = t0 + timeout
        while true {
            let left = deadline - now()
            guard left > 0 else {
                throw QueryError.timeout("no delivery for query \(queryID) within \(Int(timeout)) s (is `deepring owner serve` running on this ledger?)")
            }
            let filter = [EntryFilter(kind: .delivery, queryID: queryID)]
            _ = try ledger.waitForAppend(after: cursor, matching: filter, timeout: .milliseconds(Int(min(left, 1) * 1000)))
            // Read when a delivery may have come — and at least once a second whatever the notifications say.
            guard now() - lastRead >= 1 || ledger.mayHaveAppended(after: cursor, matching: filter) else { continue }
            lastRead = now()
            let (page, tail) = try ledger.entries(after: cursor, matching: filter, maxBytes: 64 << 20)
            // Past what was read — or back to the tail, when a crashed server lost rows this querent had seen.
            cursor = tail < cursor ? tail : max(cursor, page.through)
            for e in page.entries {
                // Not the ouroboros's: someone else's row (anyone may append); keep waiting. The ouroboros's own
                // delivery that does not open is its fault: an error, never a skip.
                let outcome: Result<Tensor, QueryError>
                do {
                    guard let o = try querent.outcome(e, queryID: queryID, keys: keys, batch: x.batch) else { continue }
                    outcome = o
                } catch {
                    throw QueryError.failed("the ouroboros's delivery for query \(queryID) does not open as an answer: \(error)")
                }
                switch outcome {
                case .success(let logits):
                    return QueryResult(queryID: queryID, logits: logits, alarms: 0, seconds: now() - t0)
                case .failure(let refusal):
                    throw refusal
                }
            }
        }
    }
}
