import DeepRingLedger
import DeepRingLedgerSQLite
import DeepRingNode
import DeepRingProtocol
import Foundation

/// `deepring ledger audit`: the ledger's chain, hashes, signatures and replays (`LedgerAudit`), and who may write:
/// member keys come only from announcements the ouroboros signed — the `seal` entry and every `reshuffle` entry —
/// and the ouroboros's key only from a manifest the owner signed (never from a block's files). Only the ouroboros
/// writes `seal`, `reshuffle`, `delivery`, `restore`, `challenge`, `rotation` and `placement` entries; a block writes
/// `layer` posts, `alarm`s, `attestation`s and `rekey`s, from its
/// key's announcement on, until the next announcement retires it (a retired key may still finish the queries that
/// were asked before it was retired) — except a key the ouroboros evicted, which may write nothing from its eviction
/// notice on. Queries may be signed by anyone.
public enum RingAudit {
    /// Tracks the member set while the auditor reads the ledger in order.
    final class Members: @unchecked Sendable {
        let ouroboros: [UInt8]
        let ringID: String
        var current: Set<[UInt8]> = []
        var previous: Set<[UInt8]> = []
        var lastAnnouncement: Int64 = 0
        var queryStarts = BoundedMap<String, Int64>(capacity: 1 << 16)
        /// Keys the ouroboros evicted (`EvictionNotice`): from the notice on they may not write, not even to finish a
        /// query (a rekey answering the rotation call that evicted them is harmless: nothing takes it).
        var evicted: Set<[UInt8]> = []

        init(ouroboros: [UInt8], ringID: String) { self.ouroboros = ouroboros; self.ringID = ringID }

        func authorize(_ e: LedgerEntry) -> Bool {
            if e.author == ouroboros {
                if e.kind == .seal || e.kind == .reshuffle {
                    guard let m = try? MembersAnnouncement.decode(e), m.ringID == ringID else { return false }
                    previous = current
                    current = Set(m.members)
                    lastAnnouncement = e.sequence
                }
                if e.kind == .placement, let n = try? EvictionNotice.decode(e) { evicted.insert(n.evicted) }
                return true
            }
            guard e.kind == .layer || e.kind == .alarm || e.kind == .attestation || e.kind == .rekey else { return false }
            if evicted.contains(e.author) { return e.kind == .rekey }
            if current.contains(e.author) { return true }
            guard previous.contains(e.author), let q = e.queryID, let start = queryStarts[q] else { return false }
            return start < lastAnnouncement
        }

        func saw(_ e: LedgerEntry) {
            if e.kind == .query, let q = e.queryID, queryStarts[q] == nil { queryStarts[q] = e.sequence }
        }
    }

    /// Audits the ledger at `path` for the ring whose (authenticated) manifest is `manifest`, reading it read-only.
    public static func audit(ledgerPath path: String, manifest: RingManifest) throws -> AuditReport {
        let ledger = try SQLiteLedger(path: path, readOnly: true)
        return audit(ledger, manifest: manifest)
    }

    public static func audit(_ ledger: any Ledger, manifest: RingManifest) -> AuditReport {
        let members = Members(ouroboros: manifest.ouroboros.signing, ringID: manifest.ringID)
        let auditor = LedgerAudit.Auditor(authorize: { e in members.authorize(e) }, observe: { e in members.saw(e) })
        return LedgerAudit.audit(ledger, auditor: auditor)
    }
}

extension SealedRing {
    /// Audits the ring's ledger against the owner's own manifest.
    public func auditLedger() throws -> AuditReport { try RingAudit.audit(ledgerPath: paths.ledger, manifest: manifest) }
}
