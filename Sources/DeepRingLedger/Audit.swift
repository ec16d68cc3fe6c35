/// Re-verifies a ledger: the sequence numbers run 1, 2, 3, … without gaps, each entry's previous hash is the
/// hash of the entry before it, each stored hash equals the hash recomputed from the fields, each signature
/// verifies under its author's key, every author except a querent is authorised (a ring member, as the caller
/// decides from owner-signed announcements), and every row decodes. A replayed entry needs no list of the signatures
/// seen (memory stays bounded however long the ledger is): its copy has another sequence number or previous hash,
/// so its stored hash is not the hash of its fields, or the signature is not over that hash. The first violation is
/// reported with its row.
public struct AuditReport: Sendable, Equatable, CustomStringConvertible {
    public enum Problem: Sendable, Equatable {
        case unreadable(String)
        case gap(expected: Int64, found: Int64)
        case brokenChain
        case hashMismatch
        case badSignature
        case unknownAuthor
    }

    public var entries: Int
    /// The first bad row (sequence number) and what is wrong with it; nil when the ledger is intact.
    public var firstProblem: (sequence: Int64, problem: Problem)?

    public var isClean: Bool { firstProblem == nil }

    public static func == (a: AuditReport, b: AuditReport) -> Bool {
        a.entries == b.entries && a.firstProblem?.sequence == b.firstProblem?.sequence && a.firstProblem?.problem == b.firstProblem?.problem
    }

    public var description: String {
        guard let (seq, p) = firstProblem else { return "ledger intact: \(entries) entries, chain, hashes and signatures verified" }
        let what: String
        switch p {
        case .unreadable(let m): what = "unreadable: \(m)"
        case .gap(let e, let f): what = "sequence gap: expected \(e), found \(f) (a row was deleted or inserted)"
        case .brokenChain: what = "previous-hash link broken (rows deleted, swapped or inserted)"
        case .hashMismatch: what = "stored hash does not match the entry's fields (a field was changed)"
        case .badSignature: what = "signature does not verify under the author's key"
        case .unknownAuthor: what = "signed by a key that was not an announced ring member at that point"
        }
        return "ledger compromised at row \(seq): \(what)"
    }
}

public enum LedgerAudit {
    /// Incremental audit state: feed entries in stored order, one page at a time (memory stays bounded however
    /// long the ledger is).
    public struct Auditor {
        /// Decides, entry by entry in stored order, whether a non-query entry's author may write it (nil = anyone).
        let authorize: ((LedgerEntry) -> Bool)?
        /// Sees every entry that passed the checks (for state the authorisation needs, such as when a query began).
        let observe: ((LedgerEntry) -> Void)?
        public private(set) var report = AuditReport(entries: 0, firstProblem: nil)
        var expected: Int64 = 1
        var prev = LedgerEntry.genesisHash

        public init(authorize: ((LedgerEntry) -> Bool)?, observe: ((LedgerEntry) -> Void)? = nil) {
            self.authorize = authorize; self.observe = observe
        }
        public init(ringKeys: Set<[UInt8]>?) { self.init(authorize: ringKeys.map { keys in { keys.contains($0.author) } }) }

        /// Checks one row: a row that does not decode is a problem at once.
        @discardableResult
        public mutating func feed(_ r: LedgerRow) -> Bool {
            switch r {
            case .entry(let e): return feed(e)
            case .malformed(let seq, let reason):
                guard report.firstProblem == nil else { return false }
                report.entries += 1
                report.firstProblem = (seq, .unreadable(reason))
                return false
            }
        }

        /// Checks one entry; returns false once a problem has been found.
        @discardableResult
        public mutating func feed(_ e: LedgerEntry) -> Bool {
            guard report.firstProblem == nil else { return false }
            report.entries += 1
            func bad(_ p: AuditReport.Problem) -> Bool { report.firstProblem = (e.sequence, p); return false }
            if e.sequence != expected { return bad(.gap(expected: expected, found: e.sequence)) }
            if e.previousHash != prev { return bad(.brokenChain) }
            if e.recomputedHash != e.hash { return bad(.hashMismatch) }
            // No honest member writes a control entry over its bound (PostgreSQL refuses one; a SQLite file is
            // anyone's who can write it).
            if e.payload.count > e.kind.maxPayload {
                return bad(.unreadable("an entry of kind \(e.kind.rawValue) with \(e.payload.count) payload bytes, over its kind's \(e.kind.maxPayload)"))
            }
            // Queries are signed by querents' fresh keys (anyone may ask); every other entry needs a ring member.
            if let authorize, e.kind != .query, !authorize(e) { return bad(.unknownAuthor) }
            if !e.signatureIsValid { return bad(.badSignature) }
            observe?(e)
            prev = e.hash
            expected += 1
            return true
        }
    }

    /// Audits `entries` (in stored order). `ringKeys`: the public keys allowed to author entries (nil = any).
    public static func audit(_ entries: [LedgerEntry], ringKeys: Set<[UInt8]>? = nil) -> AuditReport {
        var a = Auditor(ringKeys: ringKeys)
        for e in entries where !a.feed(e) { break }
        var r = a.report
        r.entries = entries.count
        return r
    }

    /// Audits a whole ledger, reading it a few entries at a time; a row that cannot even be decoded is reported as
    /// the first problem.
    public static func audit(_ ledger: any Ledger, ringKeys: Set<[UInt8]>? = nil) -> AuditReport {
        audit(ledger, auditor: Auditor(ringKeys: ringKeys))
    }

    /// Audits a whole ledger with `auditor`, reading it a few rows at a time.
    public static func audit(_ ledger: any Ledger, auditor: Auditor) -> AuditReport {
        var a = auditor
        var next: Int64 = 1
        do {
            if let stray = try ledger.sequencesOutOfRange(limit: 1).first {
                return AuditReport(entries: 0, firstProblem: (stray, .unreadable("sequence number out of range (1 … \(LedgerEntry.maxSequence))")))
            }
            while true {
                let page = try ledger.rows(from: next, limit: 8)
                for e in page where !a.feed(e) { return a.report }
                guard let l = page.last else { return a.report }
                next = l.sequence + 1
            }
        } catch let LedgerError.malformedRow(seq, reason) {
            return AuditReport(entries: a.report.entries, firstProblem: (seq ?? -1, .unreadable(reason)))
        } catch {
            return AuditReport(entries: a.report.entries, firstProblem: (-1, .unreadable("\(error)")))
        }
    }
}
