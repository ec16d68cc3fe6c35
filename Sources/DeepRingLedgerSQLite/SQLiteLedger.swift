import DeepRingLedger
import Foundation
import GRDB

/// The SQLite ledger (GRDB, WAL journal): one table, one transaction per append. Rows are read back as
/// hostile data: every field's type and size is checked, and a bad row is a typed error, never a crash.
///
/// Durability: `synchronous = NORMAL` in WAL mode — a committed append survives a crash or `kill -9` of any
/// process; a power loss or OS crash may lose the newest appends (never corrupting or forking the chain).
/// Set `DEEPRING_LEDGER_SYNC=full` to fsync every append as well.
///
/// Speed: layer posts carry megabytes (a batch-256 query writes ~3.6 MB), so a new ledger uses 16 KiB pages
/// (4× fewer page writes and reads than SQLite's 4 KiB default; measured with `bench ring`: batch-256 ledger time
/// 14 → 7 ms per query; 64 KiB pages gained another 1 ms there but cost batch-1 queries, whose small entries each
/// fill a page, 0.2–0.4 ms) and the WAL is copied into the database file by
/// `checkpointInBackground()` — called by the ring between queries, on its own connection, so that appends never
/// wait for a checkpoint and its fsync. SQLite's own checkpoint after 1,024 WAL pages stays as a backstop.
public final class SQLiteLedger: Ledger, @unchecked Sendable {
    let pool: DatabasePool
    public let path: String
    /// The background checkpointer (its own connection and queue). Its jobs capture it, never the ledger: a job
    /// holding the last reference to the ledger would run the ledger's deinit on the checkpoint queue.
    private let checkpointer: Checkpointer

    public let readOnly: Bool
    /// The schema version (`PRAGMA schema_version`) last found to be exactly the ledger's schema: every transaction
    /// checks it first, so a trigger or a view created while the ledger is open is refused too, not run.
    private var verifiedSchemaVersion: Int = -1
    private let schemaLock = NSLock()
    /// The most payload bytes one read brings into memory (at least one row): anyone who can write the file could
    /// append rows of 64 MiB.
    public static let readBudget = 256 << 20

    /// Opens (creating when missing, unless `readOnly`) the ledger at `path`. A read-only ledger never writes: not
    /// the schema, not a checkpoint; `deepring ledger audit|show` and `verify` open it so.
    public init(path: String, readOnly: Bool = false) throws {
        self.path = path
        self.readOnly = readOnly
        checkpointer = Checkpointer(path: path)
        var config = Configuration()
        // Another process holding the write lock (a querent appending, a long reader) is waited for this long.
        config.busyMode = .timeout(30)
        config.readonly = readOnly
        let full = ProcessInfo.processInfo.environment["DEEPRING_LEDGER_SYNC"]?.lowercased() == "full"
        config.prepareDatabase { db in
            // A schema is code SQLite runs: nothing in it may call functions with side effects (and `checkSchema`
            // refuses any trigger or view before a single row is read).
            // SQLite may hold at most 1 GiB (a hostile schema or row is refused for memory, not paid for).
            try db.execute(sql: "PRAGMA hard_heap_limit = \(1 << 30); PRAGMA trusted_schema = OFF; PRAGMA synchronous = \(full ? "FULL" : "NORMAL"); PRAGMA wal_autocheckpoint = 1024")
        }
        try SQLiteLedger.checkFiles(path, mayCreate: !readOnly)
        do {
            if readOnly {
                pool = try DatabasePool(path: path, configuration: config)
            } else {
                // Page size is fixed when the database is created (before WAL mode is set up): only new ledgers get 16 KiB.
                if !FileManager.default.fileExists(atPath: path) {
                    let q = try DatabaseQueue(path: path)
                    try q.writeWithoutTransaction { db in try db.execute(sql: "PRAGMA page_size = 16384; VACUUM") }
                    try q.close()
                }
                pool = try DatabasePool(path: path, configuration: config)
                try pool.write { db in
                    if try Int.fetchOne(db, sql: "SELECT COUNT(*) FROM sqlite_master") == 0 { try db.execute(sql: SQLiteLedger.schema) }
                }
            }
            try read { _ in }
        } catch let e as DatabaseError {
            throw LedgerError.storage("\(path): \(e.message ?? e.description)")
        }
    }

    /// The one table of a ledger. Its constraints refuse rows that no reader could decode.
    static let schema = """
        CREATE TABLE entries (
            seq INTEGER PRIMARY KEY CHECK (seq BETWEEN 1 AND \(LedgerEntry.maxSequence)),
            prev_hash BLOB NOT NULL CHECK (typeof(prev_hash) = 'blob' AND length(prev_hash) = 32),
            kind TEXT NOT NULL CHECK (kind IN (\(EntryKind.allCases.map { "'\($0.rawValue)'" }.joined(separator: ", ")))),
            query_id TEXT CHECK (query_id IS NULL OR (typeof(query_id) = 'text' AND length(query_id) BETWEEN 1 AND \(LedgerEntry.maxQueryID)
                                 AND query_id NOT GLOB '*[^A-Za-z0-9._-]*')),
            author BLOB NOT NULL CHECK (typeof(author) = 'blob' AND length(author) = 32),
            payload BLOB NOT NULL CHECK (typeof(payload) = 'blob'),
            hash BLOB NOT NULL UNIQUE CHECK (typeof(hash) = 'blob' AND length(hash) = 32),
            signature BLOB NOT NULL CHECK (typeof(signature) = 'blob' AND length(signature) = 64)
        )
        """

    /// The database file and its WAL and shared-memory files must be regular files (or absent): a FIFO or a device in
    /// their place would block or feed SQLite garbage.
    static func checkFiles(_ path: String, mayCreate: Bool) throws {
        for (p, required) in [(path, !mayCreate), (path + "-wal", false), (path + "-shm", false), (path + "-journal", false)] {
            var st = stat()
            guard lstat(p, &st) == 0 else {
                if required { throw LedgerError.storage("\(p): no such ledger") }
                continue
            }
            guard (st.st_mode & S_IFMT) == S_IFREG else {
                throw LedgerError.untrusted("\(p) is not a regular file")
            }
        }
    }

    /// The schema must be exactly the one a ledger is created with: one table, its unique index, no trigger, no
    /// view — SQLite would run those on every read or write, and they are whatever someone with the file wrote.
    static func checkSchema(_ db: Database, _ path: String) throws {
        let objects = try Row.fetchAll(db, sql: "SELECT type, name, tbl_name, sql FROM sqlite_master ORDER BY type, name")
        let found = objects.map { r -> String in
            let sql: String? = r["sql"]
            return "\(r["type"] as String? ?? "?") \(r["name"] as String? ?? "?") \(r["tbl_name"] as String? ?? "?") \(sql ?? "-")"
        }
        let expected = ["index sqlite_autoindex_entries_1 entries -", "table entries entries \(schema)"]
        guard found == expected else {
            let extra = objects.compactMap { r -> String? in
                let t: String? = r["type"], n: String? = r["name"]
                return t == "table" && n == "entries" || t == "index" && n == "sqlite_autoindex_entries_1" ? nil : "\(t ?? "?") \(n ?? "?")"
            }
            throw LedgerError.untrusted("\(path) does not have the ledger's schema" + (extra.isEmpty ? " (the table was changed)" : " (it also holds \(extra.prefix(3).joined(separator: ", ")))"))
        }
    }

    /// Copies the WAL into the database file on a background connection (SQLite's PASSIVE checkpoint: it never
    /// blocks appends or reads) once the WAL holds `minimumWALBytes`. Coalesced: at most one checkpoint runs or
    /// waits at a time.
    public func checkpointInBackground(minimumWALBytes: Int = 16 << 20) {
        if readOnly { return }
        var st = stat()
        guard stat(path + "-wal", &st) == 0, Int(st.st_size) >= minimumWALBytes else { return }
        checkpointer.schedule()
    }

    /// Waits for a queued background checkpoint (tests, and before closing).
    public func waitForCheckpoint() { checkpointer.queue.sync {} }

    @discardableResult
    public func append(kind: EntryKind, queryID: String?, payload: [UInt8], signer: LedgerSigner, requiring: EntryReference?) throws -> LedgerEntry {
        guard !readOnly else { throw LedgerError.invalidArgument("the ledger was opened read-only") }
        try LedgerEntry.checkAppend(kind: kind, queryID: queryID, payload: payload)
        do {
            return try write { db in
                if let d = requiring {
                    let found = try Data.fetchOne(try db.cachedStatement(sql: "SELECT hash FROM entries WHERE seq = ?"), arguments: [d.sequence])
                    guard let h = found, [UInt8](h) == d.hash else { throw LedgerError.dependencyLost(sequence: d.sequence) }
                }
                let last = try Row.fetchOne(try db.cachedStatement(sql: "SELECT seq, hash FROM entries WHERE seq BETWEEN 1 AND \(LedgerEntry.maxSequence) ORDER BY seq DESC LIMIT 1"))
                let seq: Int64, prev: [UInt8]
                if let last {
                    let s = try SQLiteLedger.int(last, "seq", nil)
                    guard s < LedgerEntry.maxSequence else { throw LedgerError.storage("the ledger has reached its last sequence number") }
                    seq = s + 1
                    prev = try SQLiteLedger.blob(last, "hash", s, size: 32)
                } else {
                    seq = 1
                    prev = LedgerEntry.genesisHash
                }
                let author = signer.publicKey
                let hash = LedgerEntry.computeHash(sequence: seq, previousHash: prev, kind: kind, queryID: queryID,
                                                   author: author, payload: payload)
                let sig = try signer.sign(hash)
                let insert = try db.cachedStatement(sql: "INSERT INTO entries (seq, prev_hash, kind, query_id, author, payload, hash, signature) VALUES (?, ?, ?, ?, ?, ?, ?, ?)")
                // The payload is bound without an intermediate copy (SQLite copies it once into its page).
                try payload.withUnsafeBytes { raw in
                    let p = raw.count == 0 ? Data() : Data(bytesNoCopy: UnsafeMutableRawPointer(mutating: raw.baseAddress!),
                                                           count: raw.count, deallocator: .none)
                    try insert.execute(arguments: [seq, Data(prev), kind.rawValue, queryID, Data(author), p, Data(hash), Data(sig)])
                }
                return LedgerEntry(sequence: seq, previousHash: prev, kind: kind, queryID: queryID, author: author,
                                   payload: payload, hash: hash, signature: sig)
            }
        } catch let e as DatabaseError {
            throw LedgerError.storage(e.message ?? e.description)
        }
    }

    /// A read transaction whose schema is checked first (see `verifiedSchemaVersion`).
    func read<T>(_ body: (Database) throws -> T) throws -> T {
        try pool.read { db in try checkSchemaVersion(db); return try body(db) }
    }

    /// A write transaction that takes the write lock at once (no other process can append in between) and whose
    /// schema is checked first.
    func write<T>(_ body: (Database) throws -> T) throws -> T {
        var out: T?
        try pool.writeWithoutTransaction { db in
            try db.inTransaction(.immediate) {
                try checkSchemaVersion(db)
                out = try body(db)
                return .commit
            }
        }
        guard let out else { throw LedgerError.storage("the write transaction did not run") }
        return out
    }

    private func checkSchemaVersion(_ db: Database) throws {
        let v = try Int.fetchOne(try db.cachedStatement(sql: "PRAGMA schema_version")) ?? -1
        schemaLock.lock()
        let known = v == verifiedSchemaVersion
        schemaLock.unlock()
        if known { return }
        try SQLiteLedger.checkSchema(db, path)
        schemaLock.lock()
        verifiedSchemaVersion = v
        schemaLock.unlock()
    }

    /// The sequence numbers from `sequence` on (at most `limit` rows) whose payloads fit in `budget` bytes together
    /// (the first row always counts): the last one, or nil when there is no row.
    static func lastWithinBudget(_ db: Database, where clause: String, _ args: StatementArguments, limit: Int, budget: Int) throws -> Int64? {
        let sizes = try Row.fetchCursor(db, sql: "SELECT seq, length(payload) AS n FROM entries WHERE \(clause) ORDER BY seq LIMIT \(max(0, limit))",
                                        arguments: args)
        var total = 0, last: Int64?
        while let r = try sizes.next() {
            let n: Int = r["n"] ?? 0
            if last != nil && total + n > budget { break }
            total += n
            last = r["seq"]
        }
        return last
    }

    public func rows(from sequence: Int64, limit: Int) throws -> [LedgerRow] {
        do {
            return try read { db in
                let clause = "seq >= ? AND seq <= \(LedgerEntry.maxSequence)"
                guard let through = try SQLiteLedger.lastWithinBudget(db, where: clause, [sequence], limit: limit, budget: SQLiteLedger.readBudget) else {
                    return []
                }
                return try SQLiteLedger.fetchRows(try db.cachedStatement(sql: "SELECT \(SQLiteLedger.columns) FROM entries WHERE seq >= ? AND seq <= ? ORDER BY seq"),
                                                  [sequence, through])
            }
        } catch let e as DatabaseError {
            throw LedgerError.storage(e.message ?? e.description)
        }
    }

    public func entries(in range: ClosedRange<Int64>, matching filters: [EntryFilter]) throws -> [LedgerEntry] {
        try pagedEntries(in: range, matching: filters, pageBytes: SQLiteLedger.readBudget)
    }

    public func entries(in range: ClosedRange<Int64>, matching filters: [EntryFilter], maxBytes: Int) throws -> LedgerPage {
        if filters.isEmpty { return LedgerPage(entries: [], through: range.upperBound) }
        let (clauses, args) = SQLiteLedger.filterSQL(range, filters)
        do {
            return try read { db in
                let clause = "seq BETWEEN ? AND ? AND (\(clauses))"
                guard let through = try SQLiteLedger.lastWithinBudget(db, where: clause, args, limit: Int.max / 2, budget: maxBytes) else {
                    return LedgerPage(entries: [], through: range.upperBound)
                }
                var page = args
                page += [through]
                let rows = try SQLiteLedger.fetchRows(try db.cachedStatement(sql: "SELECT \(SQLiteLedger.columns) FROM entries WHERE \(clause) AND seq <= ? ORDER BY seq"),
                                                      page)
                // Everything up to `through` was read; when that is the last match, the whole range was.
                let more = try SQLiteLedger.lastWithinBudget(db, where: clause + " AND seq > ?", args + [through], limit: 1, budget: 0) != nil
                return LedgerPage(entries: rows.compactMap(\.entry), through: more ? through : range.upperBound)
            }
        } catch let e as DatabaseError {
            throw LedgerError.storage(e.message ?? e.description)
        }
    }

    public func lastSequence() throws -> Int64 {
        do {
            return try read { db in
                try Int64.fetchOne(db, sql: "SELECT MAX(seq) FROM entries WHERE seq BETWEEN 1 AND \(LedgerEntry.maxSequence)") ?? 0
            }
        } catch let e as DatabaseError {
            throw LedgerError.storage(e.message ?? e.description)
        }
    }

    public func headers(in range: ClosedRange<Int64>, matching filters: [EntryFilter]) throws -> [LedgerRowHeader] {
        if filters.isEmpty { return [] }
        let (clauses, args) = SQLiteLedger.filterSQL(range, filters)
        do {
            return try read { db in
                var out: [LedgerRowHeader] = []
                let rows = try Row.fetchCursor(db, sql: "SELECT seq, kind, query_id, author FROM entries WHERE seq BETWEEN ? AND ? AND (\(clauses)) ORDER BY seq",
                                               arguments: args)
                while let r = try rows.next() {
                    guard let seq = try? SQLiteLedger.int(r, "seq", nil), let k = try? SQLiteLedger.text(r, "kind", seq, optional: false),
                          let kind = EntryKind(rawValue: k), let q: String?? = try? SQLiteLedger.text(r, "query_id", seq, optional: true),
                          let a = try? SQLiteLedger.blob(r, "author", seq, size: 32) else { continue }
                    // (`q` is the optional query id: a row without one — seal, reshuffle — is a header too.)
                    out.append(LedgerRowHeader(sequence: seq, kind: kind, queryID: q ?? nil, author: a))
                }
                return out
            }
        } catch let e as DatabaseError {
            throw LedgerError.storage(e.message ?? e.description)
        }
    }

    /// The WHERE clause and arguments of a range and filters (the range clamped to valid sequence numbers).
    static func filterSQL(_ range: ClosedRange<Int64>, _ filters: [EntryFilter]) -> (String, StatementArguments) {
        var clauses: [String] = []
        var args: [DatabaseValueConvertible?] = [max(1, range.lowerBound), min(range.upperBound, LedgerEntry.maxSequence)]
        for f in filters {
            var parts: [String] = []
            if let k = f.kind { parts.append("kind = ?"); args.append(k.rawValue) }
            if let a = f.author { parts.append("author = ?"); args.append(Data(a)) }
            if let q = f.queryID { parts.append("query_id = ?"); args.append(q) }
            clauses.append(parts.isEmpty ? "1" : "(" + parts.joined(separator: " AND ") + ")")
        }
        return (clauses.joined(separator: " OR "), StatementArguments(args))
    }

    public func sequencesOutOfRange(limit: Int) throws -> [Int64] {
        do {
            return try read { db in
                try Int64.fetchAll(db, sql: "SELECT seq FROM entries WHERE seq < 1 OR seq > \(LedgerEntry.maxSequence) ORDER BY seq LIMIT ?",
                                   arguments: [max(0, limit)])
            }
        } catch let e as DatabaseError {
            throw LedgerError.storage(e.message ?? e.description)
        }
    }

    /// SQLite has no cross-process notification: poll with a short back-off (1 ms growing to 20 ms).
    public func waitForRows(after sequence: Int64, timeout: Duration) throws -> [LedgerRow] {
        let clock = ContinuousClock()
        let deadline = clock.now + timeout
        var pause = Duration.milliseconds(1)
        while true {
            let e = try rows(from: sequence + 1, limit: 4096)
            if !e.isEmpty || clock.now >= deadline { return e }
            Thread.sleep(forTimeInterval: Double(pause.components.attoseconds) * 1e-18 + Double(pause.components.seconds))
            pause = min(pause * 2, .milliseconds(20))
        }
    }

    // MARK: hostile-row decoding

    /// The columns read back, with the payload's SQLite type (checked before its bytes are copied, once, out of
    /// SQLite's buffer).
    static let columns = "seq, prev_hash, kind, query_id, author, payload, hash, signature, typeof(payload) AS payload_type"

    /// Decodes every row; a row that does not decode becomes `.malformed` (a row without even an integer sequence
    /// number cannot exist: `seq` is SQLite's rowid).
    static func fetchRows(_ statement: Statement, _ arguments: StatementArguments) throws -> [LedgerRow] {
        var out: [LedgerRow] = []
        let rows = try Row.fetchCursor(statement, arguments: arguments)
        while let row = try rows.next() {
            do { out.append(.entry(try decode(row))) } catch let LedgerError.malformedRow(seq, reason) {
                out.append(.malformed(sequence: seq ?? ((try? int(row, "seq", nil)) ?? 0), reason: reason))
            }
        }
        return out
    }

    static func int(_ row: Row, _ column: String, _ seq: Int64?) throws -> Int64 {
        guard case .int64(let v)? = (row[column] as DatabaseValue?)?.storage else {
            throw LedgerError.malformedRow(sequence: seq, reason: "\(column) is not an integer")
        }
        return v
    }

    static func blob(_ row: Row, _ column: String, _ seq: Int64?, size: Int? = nil, max: Int = LedgerEntry.maxPayload) throws -> [UInt8] {
        guard case .blob(let d)? = (row[column] as DatabaseValue?)?.storage else {
            throw LedgerError.malformedRow(sequence: seq, reason: "\(column) is not a blob")
        }
        if let size, d.count != size {
            throw LedgerError.malformedRow(sequence: seq, reason: "\(column) has \(d.count) bytes, expected \(size)")
        }
        guard d.count <= max else { throw LedgerError.malformedRow(sequence: seq, reason: "\(column) is too large") }
        return [UInt8](d)
    }

    /// The payload, copied once from SQLite's buffer after its type and size are checked.
    static func payload(_ row: Row, _ seq: Int64) throws -> [UInt8] {
        guard (row["payload_type"] as String?) == "blob" else {
            throw LedgerError.malformedRow(sequence: seq, reason: "payload is not a blob")
        }
        return try row.withUnsafeData(named: "payload") { d -> [UInt8] in
            guard let d else { throw LedgerError.malformedRow(sequence: seq, reason: "payload is not a blob") }
            guard d.count <= LedgerEntry.maxPayload else { throw LedgerError.malformedRow(sequence: seq, reason: "payload is too large") }
            return [UInt8](d)
        }
    }

    static func text(_ row: Row, _ column: String, _ seq: Int64?, optional: Bool) throws -> String? {
        switch (row[column] as DatabaseValue?)?.storage {
        case .string(let s)?:
            guard s.utf8.count <= LedgerEntry.maxQueryID else { throw LedgerError.malformedRow(sequence: seq, reason: "\(column) too long") }
            if column == "query_id" && !LedgerEntry.isValidQueryID(s) {
                throw LedgerError.malformedRow(sequence: seq, reason: "query id is not 1–128 characters of [A-Za-z0-9._-]")
            }
            return s
        case .null? where optional, nil where optional: return nil
        default: throw LedgerError.malformedRow(sequence: seq, reason: "\(column) is not text")
        }
    }

    /// Decodes one row as hostile data (public for the fuzz harness).
    public static func decode(_ row: Row) throws -> LedgerEntry {
        let seq = try int(row, "seq", nil)
        guard let k = try text(row, "kind", seq, optional: false), let kind = EntryKind(rawValue: k) else {
            throw LedgerError.malformedRow(sequence: seq, reason: "unknown kind")
        }
        return LedgerEntry(sequence: seq,
                           previousHash: try blob(row, "prev_hash", seq, size: 32),
                           kind: kind,
                           queryID: try text(row, "query_id", seq, optional: true),
                           author: try blob(row, "author", seq, size: 32),
                           payload: try payload(row, seq),
                           hash: try blob(row, "hash", seq, size: 32),
                           signature: try blob(row, "signature", seq, size: 64))
    }
}

/// Runs PASSIVE checkpoints of one database file on a dedicated connection and serial queue, coalesced: at most
/// one checkpoint runs and one waits.
final class Checkpointer: @unchecked Sendable {
    let path: String
    let queue = DispatchQueue(label: "deepring.ledger.checkpoint", qos: .utility)
    private let lock = NSLock()
    private var queued = false
    private var connection: DatabaseQueue?   // used on `queue` only

    init(path: String) { self.path = path }

    func schedule() {
        lock.lock()
        defer { lock.unlock() }
        if queued { return }
        queued = true
        queue.async { [self] in
            lock.lock(); queued = false; lock.unlock()
            do {
                if connection == nil {
                    var c = Configuration()
                    c.prepareDatabase { db in try db.execute(sql: "PRAGMA wal_autocheckpoint = 0") }
                    connection = try DatabaseQueue(path: path, configuration: c)
                }
                try connection?.writeWithoutTransaction { db in _ = try db.checkpoint(.passive) }
            } catch {
                // A failed passive checkpoint loses nothing: the WAL keeps the entries and SQLite's backstop runs.
            }
        }
    }
}
