import Foundation

/// Entries one process already knows to be authentic: the ones its own members signed and appended, and the ones it
/// checked in full once (`LedgerEntry.isAuthentic`: the entry hash recomputed over the whole payload, the author's
/// Ed25519 signature over it).
///
/// A row read from the ledger that equals such an entry in every field, payload byte for payload byte, is the same
/// signed entry, so it is authentic without hashing its payload again (a SHA-256 pass over often megabytes of
/// ciphertext) or verifying its signature again: comparing bytes is an order of magnitude cheaper. A row that differs
/// in any byte — a ledger file modified after the append, a forged row — is not vouched for and is checked in full as
/// before, so what this saves is only work whose outcome is already known.
///
/// In the embedded deployment every member runs in one process and shares one memo, so an activation posted by one
/// block is hashed once for the ledger (at its append) instead of three times (the append, the receiver's check, and
/// the next receiver's check of it as its predecessor's input). A process of the decentralised deployment has its own
/// memo: it vouches only for what that process signed or checked itself, never for another party's word.
///
/// Bounded: the most recent `capacity` entries and `maxBytes` payload bytes (older ones are checked in full again;
/// an entry bigger than `maxBytes` is never kept). The receivers that gain are those of the same query, moments
/// later, so a small memo holds all it needs; the default (32 entries, 16 MiB) keeps what a member process holds on
/// to small, and the embedded ring gives its shared one room for a few batch-256 queries.
/// Thread-safe (a receiver checks authenticity on a worker thread while it decrypts).
public final class AuthenticEntries: @unchecked Sendable {
    private let lock = NSLock()
    private var bySequence: [Int64: LedgerEntry] = [:]
    private var order: [Int64] = []
    private var head = 0
    private var bytes = 0
    public let capacity: Int
    public let maxBytes: Int
    private var vouchedCount = 0, fullCount = 0
    /// How many checks the memo answered, and how many it passed on to a full check (for benchmarks and tests).
    public var counts: (vouched: Int, checkedInFull: Int) {
        lock.lock(); defer { lock.unlock() }
        return (vouchedCount, fullCount)
    }

    public init(capacity: Int = 32, maxBytes: Int = 16 << 20) {
        self.capacity = max(1, capacity)
        self.maxBytes = max(0, maxBytes)
    }

    /// Notes an entry known to be authentic: one this process signed and appended (`Ledger.append` returns it built
    /// from the values it hashed and signed), or one that passed the full check.
    public func remember(_ e: LedgerEntry) {
        guard e.payload.count <= maxBytes else { return }
        lock.lock(); defer { lock.unlock() }
        if let old = bySequence[e.sequence] {
            // Two different entries under one number: a database that lost its last lazily committed rows in a crash
            // numbers the next rows the same. The newer one is what the ledger holds now (it keeps the older one's
            // place in the eviction order: at worst it is checked in full again sooner).
            bytes -= old.payload.count
        } else {
            order.append(e.sequence)
        }
        bySequence[e.sequence] = e
        bytes += e.payload.count
        while order.count - head > capacity || bytes > maxBytes, head < order.count {
            let s = order[head]
            head += 1
            if let gone = bySequence.removeValue(forKey: s) { bytes -= gone.payload.count }
        }
        if head > 4096 { order.removeFirst(head); head = 0 }
    }

    /// True when `e` is, field for field and byte for byte, an entry this memo holds as authentic.
    public func vouches(for e: LedgerEntry) -> Bool {
        lock.lock()
        let known = bySequence[e.sequence]
        lock.unlock()
        guard let k = known, k.hash == e.hash, k.signature == e.signature, k.author == e.author, k.kind == e.kind,
              k.previousHash == e.previousHash, k.payload.count == e.payload.count,
              // Bytes, not String equality (which is Unicode canonical equivalence: "K" and the Kelvin sign agree).
              k.queryID.map({ Array($0.utf8) }) == e.queryID.map({ Array($0.utf8) }) else { return false }
        return k.payload.withUnsafeBytes { a in
            e.payload.withUnsafeBytes { b in
                guard let pa = a.baseAddress, let pb = b.baseAddress else { return a.count == 0 && b.count == 0 }
                // The same buffer: a row handed on in memory (a `LedgerView` of the process's own appends).
                return pa == pb || memcmp(pa, pb, a.count) == 0
            }
        }
    }

    /// `e.isAuthentic`, answered from the memo when it vouches for `e`; an entry that passes the full check is noted.
    public func isAuthentic(_ e: LedgerEntry) -> Bool {
        if vouches(for: e) { count(vouched: true); return true }
        count(vouched: false)
        guard e.isAuthentic else { return false }
        remember(e)
        return true
    }

    private func count(vouched v: Bool) {
        lock.lock(); if v { vouchedCount += 1 } else { fullCount += 1 }; lock.unlock()
    }
}
