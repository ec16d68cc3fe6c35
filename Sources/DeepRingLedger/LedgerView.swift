import Foundation

/// A read-through snapshot of a ledger for the blocks hosted in one process (a host's "subscription"): `refresh()`
/// reads the rows appended since the last refresh in one query, and until the next refresh every block's reads
/// are answered from that snapshot instead of each block querying the database on its own. Appends go straight to
/// the underlying ledger and are added to the snapshot. Blocks still talk only through the ledger: the view holds
/// exactly the rows stored there, malformed ones included (entries whose stored hash does not match their fields
/// are the blocks' problem to reject, as with direct reads). A gap in the sequence numbers (rows deleted by
/// tampering) is stepped over, never waited at. Memory is bounded: only the newest `window` rows are kept; older
/// ones are read through.
public final class LedgerView: Ledger, @unchecked Sendable {
    public let base: any Ledger
    /// The rows with sequence numbers in `first … tail` that exist, in order, newest last.
    private var cache: [LedgerRow] = []
    /// The lowest sequence number the cache answers for.
    private var first: Int64
    /// The highest sequence number known to the view.
    private var tail: Int64
    private var bytes = 0
    public let window: Int, maxBytes: Int

    public init(_ base: any Ledger, window: Int = 512, maxBytes: Int = 128 << 20) throws {
        self.base = base
        self.window = max(16, window)
        self.maxBytes = maxBytes
        tail = try base.lastSequence()
        first = tail + 1
    }

    /// Reads what was appended since the last refresh (by anyone, in any process). Every page moves the tail on.
    public func refresh() throws {
        while true {
            let new = try base.rows(from: tail + 1, limit: 1024)
            for r in new { add(r) }
            if new.count < 1024 { return }
        }
    }

    /// Adds a row newer than the tail (a malformed one too, so that the tail moves past it).
    private func add(_ r: LedgerRow) {
        guard r.sequence > tail else { return }
        cache.append(r)
        bytes += r.entry?.payload.count ?? 0
        tail = r.sequence
        var drop = 0
        while cache.count - drop > 1 && (cache.count - drop > window || bytes > maxBytes) {
            bytes -= cache[drop].entry?.payload.count ?? 0
            drop += 1
        }
        if drop > 0 {
            first = cache[drop - 1].sequence + 1
            cache.removeFirst(drop)
        }
    }

    /// The index of the first cached row with sequence ≥ `s`.
    private func index(_ s: Int64) -> Int {
        var lo = 0, hi = cache.count
        while lo < hi {
            let mid = (lo + hi) / 2
            if cache[mid].sequence < s { lo = mid + 1 } else { hi = mid }
        }
        return lo
    }

    @discardableResult
    public func append(kind: EntryKind, queryID: String?, payload: [UInt8], signer: LedgerSigner, requiring: EntryReference?) throws -> LedgerEntry {
        let e = try base.append(kind: kind, queryID: queryID, payload: payload, signer: signer, requiring: requiring)
        if e.sequence == tail + 1 { add(.entry(e)) } else { try refresh() }
        return e
    }

    public func rows(from sequence: Int64, limit: Int) throws -> [LedgerRow] {
        let s = max(1, sequence)
        if s > tail || limit <= 0 { return [] }
        guard s >= first else { return try base.rows(from: sequence, limit: limit) }   // older than the window
        let lo = index(s)
        return Array(cache[lo..<(limit >= cache.count - lo ? cache.count : lo + limit)])
    }

    public func entries(in range: ClosedRange<Int64>, matching filters: [EntryFilter]) throws -> [LedgerEntry] {
        if filters.isEmpty { return [] }
        let lo = max(1, range.lowerBound)
        if lo > tail || range.upperBound < lo { return [] }
        guard lo >= first else { return try base.entries(in: range, matching: filters) }   // older than the window
        let a = index(lo), b = index(min(range.upperBound, tail) + 1)
        return cache[a..<b].compactMap { r in r.entry.flatMap { e in filters.contains { $0.matches(e) } ? e : nil } }
    }

    public func entries(in range: ClosedRange<Int64>, matching filters: [EntryFilter], maxBytes: Int) throws -> LedgerPage {
        let lo = max(1, range.lowerBound)
        if filters.isEmpty || lo > tail || range.upperBound < lo { return LedgerPage(entries: [], through: range.upperBound) }
        guard lo >= first else { return try base.entries(in: range, matching: filters, maxBytes: maxBytes) }
        // The cache holds at most `self.maxBytes` of payload; within it the budget is the caller's.
        var out: [LedgerEntry] = [], total = 0
        for r in cache[index(lo)..<index(min(range.upperBound, tail) + 1)] {
            guard let e = r.entry, filters.contains(where: { $0.matches(e) }) else { continue }
            if !out.isEmpty && total + e.payload.count > maxBytes { return LedgerPage(entries: out, through: out[out.count - 1].sequence) }
            total += e.payload.count
            out.append(e)
        }
        return LedgerPage(entries: out, through: min(range.upperBound, tail))
    }

    /// The tail as of the last refresh (or own append).
    public func lastSequence() throws -> Int64 { tail }

    public var connectionEpoch: Int { base.connectionEpoch }
    public var roundTrips: RoundTrips { base.roundTrips }

    public func waitForAppend(after sequence: Int64, matching filters: [EntryFilter], timeout: Duration) throws -> Int64 {
        _ = try base.waitForAppend(after: sequence, matching: filters, timeout: timeout)
        try refresh()
        return tail
    }

    public func waitForAppend(after sequence: Int64, timeout: Duration) throws -> Int64 {
        _ = try base.waitForAppend(after: sequence, timeout: timeout)
        try refresh()
        return tail
    }

    public func waitForRows(after sequence: Int64, timeout: Duration) throws -> [LedgerRow] {
        let e = try base.waitForRows(after: sequence, timeout: timeout)
        try refresh()
        return e
    }

    public func sequencesOutOfRange(limit: Int) throws -> [Int64] { try base.sequencesOutOfRange(limit: limit) }

    public func headers(in range: ClosedRange<Int64>, matching filters: [EntryFilter]) throws -> [LedgerRowHeader] {
        try base.headers(in: range, matching: filters)
    }
}
