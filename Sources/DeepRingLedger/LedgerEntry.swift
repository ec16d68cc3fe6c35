import Crypto
import Foundation

/// What a ledger entry records (paper §3.4: query, the blocks' S/K/X/H posts, delivery; plus the
/// housekeeping DeepRing adds: sealing, alarms, restores and reshuffles).
public enum EntryKind: String, Sendable, CaseIterable, Codable {
    case seal, query, layer, delivery, alarm, restore, reshuffle
    /// The authenticity round across hosts: the owner's challenge, each block's attestation.
    case challenge, attestation
    /// Key rotation across hosts (the paper's reshuffle): the owner's call, each member's new public keys sealed to
    /// the owner, the owner's new descriptor sealed to each member.
    case rotation, rekey, placement

    /// The control kinds: alarms, the authenticity round's challenge and attestations, the rotation's call and new
    /// keys. Their payloads are hashes, keys and ids — never tensors — so they are bounded far below `maxPayload`
    /// (PostgreSQL enforces it too): a flood of forged ones costs a reader a signature check each, not megabytes.
    public static let control: Set<EntryKind> = [.alarm, .challenge, .attestation, .rotation, .rekey]
    /// The most payload bytes an entry of this kind may carry.
    public var maxPayload: Int { EntryKind.control.contains(self) ? LedgerEntry.maxControlPayload : LedgerEntry.maxPayload }
}

/// One row of the append-only ledger. The entry hash covers every other field (with the previous entry's
/// hash, which chains the rows); the author's Ed25519 signature covers the entry hash.
public struct LedgerEntry: Sendable, Equatable {
    public var sequence: Int64
    public var previousHash: [UInt8]
    public var kind: EntryKind
    public var queryID: String?
    /// The author's Ed25519 public key (32 bytes).
    public var author: [UInt8]
    /// Opaque protocol data (ciphertexts, hashes); never secrets.
    public var payload: [UInt8]
    public var hash: [UInt8]
    public var signature: [UInt8]

    public init(sequence: Int64, previousHash: [UInt8], kind: EntryKind, queryID: String?, author: [UInt8],
                payload: [UInt8], hash: [UInt8], signature: [UInt8]) {
        self.sequence = sequence; self.previousHash = previousHash; self.kind = kind; self.queryID = queryID
        self.author = author; self.payload = payload; self.hash = hash; self.signature = signature
    }

    public static let genesisHash = [UInt8](repeating: 0, count: 32)
    /// Sequence numbers run from 1 to this bound: a stored row outside it (which only tampering can put there) is
    /// never read as part of the chain — arithmetic on sequence numbers cannot overflow — and `ledger audit` names it.
    public static let maxSequence: Int64 = 1 << 62
    public static let domainTag = Array("DeepRing ledger entry v1".utf8)
    public static let maxPayload = 64 << 20
    /// The most payload bytes of a control entry (`EntryKind.control`).
    public static let maxControlPayload = 64 << 10
    public static let maxQueryID = 128

    /// A query id is 1–128 characters of `[A-Za-z0-9._-]`: anyone may post a query, and readers print ids.
    public static func isValidQueryID(_ q: String) -> Bool {
        let u = q.utf8
        return !u.isEmpty && u.count <= maxQueryID && u.allSatisfy { c in
            (c >= 48 && c <= 57) || (c >= 65 && c <= 90) || (c >= 97 && c <= 122) || c == 46 || c == 95 || c == 45
        }
    }

    /// What every backend refuses before appending: a payload over its kind's bound (`EntryKind.maxPayload`), a
    /// query id outside the alphabet.
    public static func checkAppend(kind: EntryKind, queryID: String?, payload: [UInt8]) throws {
        guard payload.count <= kind.maxPayload else {
            throw LedgerError.invalidArgument("an entry of kind \(kind.rawValue) carries at most \(kind.maxPayload) payload bytes, not \(payload.count)")
        }
        if let q = queryID, !isValidQueryID(q) {
            throw LedgerError.invalidArgument("a query id is 1–\(maxQueryID) characters of [A-Za-z0-9._-]")
        }
    }

    /// The canonical byte encoding that is hashed: domain tag ‖ u64 sequence ‖ previous hash ‖ length-prefixed
    /// kind, query id, author and payload (lengths as big-endian u32).
    public static func canonicalBytes(sequence: Int64, previousHash: [UInt8], kind: EntryKind, queryID: String?,
                                      author: [UInt8], payload: [UInt8]) -> [UInt8] {
        canonicalHead(sequence: sequence, previousHash: previousHash, kind: kind, queryID: queryID, author: author,
                      payloadCount: payload.count) + payload
    }

    /// The canonical encoding up to and including the payload's length prefix.
    static func canonicalHead(sequence: Int64, previousHash: [UInt8], kind: EntryKind, queryID: String?,
                              author: [UInt8], payloadCount: Int) -> [UInt8] {
        var b = domainTag
        b.reserveCapacity(b.count + 8 + 32 + 16 + author.count + 64)
        for k in (0..<8).reversed() { b.append(UInt8(truncatingIfNeeded: UInt64(bitPattern: sequence) >> (8 * UInt64(k)))) }
        b += previousHash
        func length(_ count: Int) {
            let n = UInt32(count)
            b += [UInt8(n >> 24), UInt8((n >> 16) & 255), UInt8((n >> 8) & 255), UInt8(n & 255)]
        }
        func field(_ f: [UInt8]) { length(f.count); b += f }
        field(Array(kind.rawValue.utf8))
        field(queryID.map { [1] + Array($0.utf8) } ?? [0])
        field(author)
        length(payloadCount)
        return b
    }

    /// SHA-256 of `canonicalBytes(…)`, computed incrementally (the payload, often megabytes, is not copied).
    public static func computeHash(sequence: Int64, previousHash: [UInt8], kind: EntryKind, queryID: String?,
                                   author: [UInt8], payload: [UInt8]) -> [UInt8] {
        var h = SHA256()
        h.update(data: canonicalHead(sequence: sequence, previousHash: previousHash, kind: kind, queryID: queryID,
                                     author: author, payloadCount: payload.count))
        payload.withUnsafeBytes { h.update(bufferPointer: $0) }
        return Array(h.finalize())
    }

    /// Recomputes this entry's hash from its fields.
    public var recomputedHash: [UInt8] {
        LedgerEntry.computeHash(sequence: sequence, previousHash: previousHash, kind: kind, queryID: queryID,
                                author: author, payload: payload)
    }

    /// True when the stored hash is the hash of the entry's fields and the signature is the author's over it:
    /// what a block checks before acting on an entry.
    public var isAuthentic: Bool { recomputedHash == hash && signatureIsValid }

    /// True when `signature` is the author's valid Ed25519 signature of `hash`.
    public var signatureIsValid: Bool {
        guard let key = try? Curve25519.Signing.PublicKey(rawRepresentation: author) else { return false }
        return key.isValidSignature(signature, for: hash)
    }
}

/// Signs ledger entries. The private key stays with its owner (a block or the ouroboros); only the public
/// key and signatures ever reach the ledger.
public struct LedgerSigner: Sendable {
    private let key: Curve25519.Signing.PrivateKey

    public init(_ key: Curve25519.Signing.PrivateKey) { self.key = key }
    public init() { self.key = Curve25519.Signing.PrivateKey() }

    public var publicKey: [UInt8] { Array(key.publicKey.rawRepresentation) }

    public func sign(_ digest: [UInt8]) throws -> [UInt8] { Array(try key.signature(for: digest)) }
}

public enum LedgerError: Error, CustomStringConvertible, Equatable {
    case malformedRow(sequence: Int64?, reason: String)
    case invalidArgument(String)
    case storage(String)
    /// The database is not what a ledger is (a changed schema, a trigger or view, a FIFO): refused before use.
    case untrusted(String)
    /// The entry an append depended on is no longer on the ledger (a database server that crashed lost it with its
    /// last lazily committed rows): nothing was appended.
    case dependencyLost(sequence: Int64)

    public var description: String {
        switch self {
        case .malformedRow(let s, let r): return "malformed ledger row\(s.map { " \($0)" } ?? ""): \(r)"
        case .invalidArgument(let m): return "invalid ledger entry: \(m)"
        case .storage(let m): return "ledger storage error: \(m)"
        case .untrusted(let m): return "not a trustworthy ledger: \(m)"
        case .dependencyLost(let s): return "entry \(s), which this append depends on, is no longer on the ledger (lost in a database crash); nothing was appended"
        }
    }
}

/// A stored row as a reader sees it: an entry, or a row that cannot even be decoded (a field of the wrong type or
/// size, an unknown kind). Rows are hostile input: a reader skips a malformed row and reports it (`ledger audit`
/// names it), and it never stops the ring.
public enum LedgerRow: Sendable, Equatable {
    case entry(LedgerEntry)
    case malformed(sequence: Int64, reason: String)

    public var sequence: Int64 {
        switch self {
        case .entry(let e): return e.sequence
        case .malformed(let s, _): return s
        }
    }

    public var entry: LedgerEntry? { if case .entry(let e) = self { return e } else { return nil } }
}

/// An entry named by its number and hash (what an append may depend on).
public struct EntryReference: Sendable, Equatable {
    public var sequence: Int64
    public var hash: [UInt8]
    public init(sequence: Int64, hash: [UInt8]) { self.sequence = sequence; self.hash = hash }
    public init(_ e: LedgerEntry) { self.init(sequence: e.sequence, hash: e.hash) }
}

extension Ledger {
    /// Appends an entry that depends on no other.
    @discardableResult
    public func append(kind: EntryKind, queryID: String?, payload: [UInt8], signer: LedgerSigner) throws -> LedgerEntry {
        try append(kind: kind, queryID: queryID, payload: payload, signer: signer, requiring: nil)
    }
}

/// The shared, append-only ledger through which DeepRing's blocks talk — and the only thing they share.
/// Backends: `SQLiteLedger` (one host); a PostgreSQL backend for multi-host rings implements the same protocol.
public protocol Ledger: Sendable {
    /// Appends an entry signed by `signer` in one transaction: the sequence number and previous hash are taken
    /// from the current last entry inside that transaction, so concurrent writers cannot fork the chain.
    ///
    /// With `requiring`, the entry goes in only if that entry is on the ledger — its number, its hash — checked in the
    /// append's own transaction (else `LedgerError.dependencyLost`, nothing appended): a post that answers an input
    /// is never appended once that input is gone, as when a crashed server lost its last lazily committed rows and a
    /// retried append would take the lost input's number.
    @discardableResult
    func append(kind: EntryKind, queryID: String?, payload: [UInt8], signer: LedgerSigner, requiring: EntryReference?) throws -> LedgerEntry
    /// Rows with sequence ≥ `sequence`, in order, at most `limit`, malformed ones included.
    func rows(from sequence: Int64, limit: Int) throws -> [LedgerRow]
    /// Entries with sequence in `range` that match any of `filters`, in order (a block reads only what concerns
    /// it instead of every ciphertext on the ledger). Malformed rows match nothing.
    func entries(in range: ClosedRange<Int64>, matching filters: [EntryFilter]) throws -> [LedgerEntry]
    /// The highest sequence number (0 when empty).
    func lastSequence() throws -> Int64
    /// Waits until rows after `sequence` exist (or `timeout` passes) and returns them.
    func waitForRows(after sequence: Int64, timeout: Duration) throws -> [LedgerRow]
    /// Waits until the ledger holds rows after `sequence` (or `timeout` passes) and returns the last sequence
    /// number, reading no row: how a serving member sleeps until there may be work.
    func waitForAppend(after sequence: Int64, timeout: Duration) throws -> Int64
    /// Like `waitForAppend(after:timeout:)`, but a backend that can tell (PostgreSQL's notifications name each new
    /// row's kind, author and query) wakes only for rows that may match `filters` — so that of the ring's
    /// processes only the one a post is for wakes up. A hint, never a decision: the caller reads and checks what it
    /// finds, and a lost or forged notification costs a wait of at most `timeout` or a needless read.
    func waitForAppend(after sequence: Int64, matching filters: [EntryFilter], timeout: Duration) throws -> Int64
    /// Changes whenever the backend lost or could not make a connection: the server may have crashed, losing rows it
    /// had shown (PostgreSQL's lazily committed layer posts), whose numbers the next rows then take. A reader that
    /// sees it change reads its last rows again. 0 for backends that cannot lose a shown row (SQLite).
    var connectionEpoch: Int { get }
    /// Statements sent to a database server so far, and the time spent waiting for their answers (for the serving
    /// loops' logs and `bench ring`'s per-phase breakdown); zero for backends in the process (SQLite).
    var roundTrips: RoundTrips { get }
    /// Sequence numbers of stored rows outside 1 … `LedgerEntry.maxSequence` (at most `limit`): tampering.
    func sequencesOutOfRange(limit: Int) throws -> [Int64]
    /// Like `entries(in:matching:)`, but bringing at most `maxBytes` of payload into memory (at least one entry):
    /// what a block reads each round, whatever anyone appended.
    func entries(in range: ClosedRange<Int64>, matching filters: [EntryFilter], maxBytes: Int) throws -> LedgerPage
    /// What a member reads each round, in one round trip where the backend can: the ledger's tail, and the entries
    /// after `cursor` up to it that match any of `filters` (at most `maxBytes` of payload, at least one entry). The
    /// page's `through` is the tail when nothing is left to read.
    func entries(after cursor: Int64, matching filters: [EntryFilter], maxBytes: Int) throws -> (page: LedgerPage, tail: Int64)
    /// False only when the backend's notifications are complete and name no row after `sequence` that may match
    /// `filters` — so a reader may skip its read; true when one may have been appended (or the backend cannot tell).
    /// A hint from notifications (no round trip), like `waitForAppend(after:matching:timeout:)`.
    func mayHaveAppended(after sequence: Int64, matching filters: [EntryFilter]) -> Bool
    /// The headers (no payloads) of the entries in `range` that match any of `filters`; rows that do not decode are
    /// left out. Not authenticated: for reports, never for decisions.
    func headers(in range: ClosedRange<Int64>, matching filters: [EntryFilter]) throws -> [LedgerRowHeader]
}

extension Ledger {
    public func waitForAppend(after sequence: Int64, matching filters: [EntryFilter], timeout: Duration) throws -> Int64 {
        try waitForAppend(after: sequence, timeout: timeout)
    }

    public var connectionEpoch: Int { 0 }
    public var roundTrips: RoundTrips { RoundTrips() }

    public func entries(after cursor: Int64, matching filters: [EntryFilter], maxBytes: Int) throws -> (page: LedgerPage, tail: Int64) {
        let tail = try lastSequence()
        guard tail > cursor else { return (LedgerPage(entries: [], through: tail), tail) }
        return (try entries(in: (cursor + 1)...tail, matching: filters, maxBytes: maxBytes), tail)
    }

    public func mayHaveAppended(after sequence: Int64, matching filters: [EntryFilter]) -> Bool { true }

    /// The sequence number of `author`'s last entry at or before `tail`, reading headers backwards in windows that
    /// double (so a long ledger is not read whole for a recent entry); nil when it has none.
    public func lastSequence(by author: [UInt8], upTo tail: Int64) throws -> Int64? {
        var hi = tail, width: Int64 = 1024
        while hi >= 1 {
            let lo = max(1, hi - width + 1)
            if let h = try headers(in: lo...hi, matching: [EntryFilter(author: author)]).last { return h.sequence }
            hi = lo - 1
            width = min(width * 2, 1 << 20)
        }
        return nil
    }

    /// Polls the last sequence number, with pauses from 0.25 ms growing to 2 ms — a round trip per hop of a query
    /// costs at most that — (backends that can be woken by the writer, PostgreSQL's notifications, do better).
    public func waitForAppend(after sequence: Int64, timeout: Duration) throws -> Int64 {
        let clock = ContinuousClock()
        let until = clock.now + timeout
        var pause = Duration.microseconds(250)
        while true {
            let tail = try lastSequence()
            if tail > sequence || clock.now >= until { return tail }
            Thread.sleep(forTimeInterval: Double(min(pause, until - clock.now).components.attoseconds) / 1e18)
            pause = min(pause * 2, .milliseconds(2))
        }
    }

    /// Entries with sequence ≥ `sequence`, in order, at most `limit` rows read (malformed rows skipped).
    public func entries(from sequence: Int64, limit: Int) throws -> [LedgerEntry] {
        try rows(from: sequence, limit: limit).compactMap(\.entry)
    }

    /// The entry with sequence number `sequence`, if that row exists and decodes.
    public func entry(at sequence: Int64) throws -> LedgerEntry? {
        guard sequence >= 1 else { return nil }
        guard let r = try rows(from: sequence, limit: 1).first, r.sequence == sequence else { return nil }
        return r.entry
    }

    /// Every row, in order.
    public func allRows() throws -> [LedgerRow] {
        var out: [LedgerRow] = []
        var next: Int64 = 1
        while true {
            let page = try rows(from: next, limit: 4096)
            out += page
            guard let l = page.last, page.count == 4096 else { return out }
            next = l.sequence + 1
        }
    }

    /// Every entry that decodes, in order.
    public func allEntries() throws -> [LedgerEntry] { try allRows().compactMap(\.entry) }

    /// The entries in `range` matching any of `filters`, read in pages of at most `pageBytes` of payload each (what
    /// a backend's `entries(in:matching:)` is).
    public func pagedEntries(in range: ClosedRange<Int64>, matching filters: [EntryFilter], pageBytes: Int) throws -> [LedgerEntry] {
        var out: [LedgerEntry] = []
        var from = range.lowerBound
        while from <= range.upperBound {
            let page = try entries(in: from...range.upperBound, matching: filters, maxBytes: pageBytes)
            out += page.entries
            guard page.through < range.upperBound else { break }
            from = page.through + 1
        }
        return out
    }

    /// The last row if it decodes.
    public func last() throws -> LedgerEntry? {
        let tail = try lastSequence()
        return tail > 0 ? try entry(at: tail) : nil
    }

    /// Waits until entries after `sequence` exist (or `timeout` passes) and returns those that decode.
    public func waitForEntries(after sequence: Int64, timeout: Duration) throws -> [LedgerEntry] {
        try waitForRows(after: sequence, timeout: timeout).compactMap(\.entry)
    }
}

/// What a reader needs of a row without its payload (megabytes for a layer post; anyone may append a query row).
public struct LedgerRowHeader: Sendable, Equatable {
    public var sequence: Int64
    public var kind: EntryKind
    public var queryID: String?
    public var author: [UInt8]
    public init(sequence: Int64, kind: EntryKind, queryID: String?, author: [UInt8]) {
        self.sequence = sequence; self.kind = kind; self.queryID = queryID; self.author = author
    }
}

/// Entries read within a byte budget: every matching entry with sequence ≤ `through` is in `entries`.
public struct LedgerPage: Sendable {
    public var entries: [LedgerEntry]
    public var through: Int64
    public init(entries: [LedgerEntry], through: Int64) { self.entries = entries; self.through = through }
}

/// One alternative of an entry filter: every given field must match.
public struct EntryFilter: Sendable, Equatable {
    public var kind: EntryKind?
    public var author: [UInt8]?
    public var queryID: String?
    public init(kind: EntryKind? = nil, author: [UInt8]? = nil, queryID: String? = nil) {
        self.kind = kind; self.author = author; self.queryID = queryID
    }

    /// True when every field set in the filter equals the entry's.
    public func matches(_ e: LedgerEntry) -> Bool { matches(kind: e.kind, author: e.author, queryID: e.queryID) }

    public func matches(kind k: EntryKind, author a: [UInt8], queryID q: String?) -> Bool {
        (kind == nil || kind == k) && (author.map { $0 == a } ?? true) && (queryID == nil || queryID == q)
    }
}

/// A count of round trips to a ledger's server and the time they took.
public struct RoundTrips: Sendable, Equatable {
    public var count = 0
    public var seconds = 0.0
    public init(count: Int = 0, seconds: Double = 0) { self.count = count; self.seconds = seconds }
    public static func - (a: RoundTrips, b: RoundTrips) -> RoundTrips { RoundTrips(count: a.count - b.count, seconds: a.seconds - b.seconds) }
}

/// Lower-case hexadecimal of bytes (keys, hashes and ids in files and messages).
public func hex<S: Sequence>(_ b: S) -> String where S.Element == UInt8 {
    let digits = Array("0123456789abcdef".utf8)
    var out: [UInt8] = []
    out.reserveCapacity(b.underestimatedCount * 2)
    for x in b { out.append(digits[Int(x >> 4)]); out.append(digits[Int(x & 15)]) }
    return String(decoding: out, as: UTF8.self)
}

/// Bytes from hexadecimal (either case); nil for anything else.
public func unhex(_ s: String) -> [UInt8]? {
    let u = Array(s.utf8)
    guard u.count % 2 == 0 else { return nil }
    var out = [UInt8]()
    out.reserveCapacity(u.count / 2)
    func nib(_ c: UInt8) -> UInt8? {
        switch c {
        case 48...57: return c - 48
        case 97...102: return c - 87
        case 65...70: return c - 55
        default: return nil
        }
    }
    var i = 0
    while i < u.count {
        guard let h = nib(u[i]), let l = nib(u[i + 1]) else { return nil }
        out.append(h << 4 | l)
        i += 2
    }
    return out
}
