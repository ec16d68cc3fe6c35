import Crypto
import DeepRingLedger
import DeepRingLedgerSQLite
import Foundation
import GRDB
import Testing

func tempLedgerPath() -> String {
    let d = NSTemporaryDirectory() + "deepring-ledger-\(UUID().uuidString)"
    try! FileManager.default.createDirectory(atPath: d, withIntermediateDirectories: true)
    return d + "/ledger.sqlite"
}

/// A ledger with 6 entries by two ring members.
func sampleLedger() throws -> (SQLiteLedger, Set<[UInt8]>) {
    let ledger = try SQLiteLedger(path: tempLedgerPath())
    let a = LedgerSigner(), b = LedgerSigner()
    try ledger.append(kind: .seal, queryID: nil, payload: Array("ring sealed".utf8), signer: a)
    for i in 0..<5 {
        try ledger.append(kind: i % 2 == 0 ? .query : .layer, queryID: "q\(i / 2)", payload: [UInt8](repeating: UInt8(i), count: 40), signer: i % 2 == 0 ? a : b)
    }
    return (ledger, [a.publicKey, b.publicKey])
}

/// Rebuilds the table without its constraints, as an attacker with the file could (the ledger is then refused at open).
func rebuildTableWithoutConstraints(_ ledger: SQLiteLedger) throws {
    let q = try DatabaseQueue(path: ledger.path)
    try q.write { db in
        try db.execute(sql: """
            CREATE TABLE attacker (seq INTEGER PRIMARY KEY, prev_hash, kind, query_id, author, payload, hash, signature);
            INSERT INTO attacker SELECT * FROM entries; DROP TABLE entries; ALTER TABLE attacker RENAME TO entries
            """)
    }
}

/// Adds a trigger that never ends (every append would hang on it), as an attacker with the file could.
func createEndlessTrigger(_ q: DatabaseQueue) throws {
    try q.write { db in
        try db.execute(sql: """
            CREATE TRIGGER slow AFTER INSERT ON entries BEGIN
              SELECT COUNT(*) FROM (WITH RECURSIVE r(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM r) SELECT x FROM r);
            END
            """)
    }
}

/// Plays an attacker with write access to the database file: its connection ignores the schema's CHECK constraints
/// (a per-connection pragma; the schema itself stays as it was, or the ledger would be refused at open), then `sql`
/// runs.
func tamper(_ ledger: SQLiteLedger, _ sql: String, _ args: StatementArguments = []) throws {
    let q = try DatabaseQueue(path: ledger.path)
    try q.writeWithoutTransaction { db in
        try db.execute(sql: "PRAGMA ignore_check_constraints = ON")
        try db.execute(sql: sql, arguments: args)
    }
}

/// Either backend: an append that depends on an entry goes in only while that entry is there, with that hash.
func checkDependentAppends(_ ledger: any Ledger) throws {
        let a = LedgerSigner()
        let first = try ledger.append(kind: .query, queryID: "q", payload: [1], signer: a)
        let second = try ledger.append(kind: .layer, queryID: "q", payload: [2], signer: a, requiring: EntryReference(first))
        #expect(second.sequence == first.sequence + 1)
        // An entry that is not there (a number past the tail), or is there with another hash, stops the append.
        #expect(throws: LedgerError.dependencyLost(sequence: 99)) {
            try ledger.append(kind: .layer, queryID: "q", payload: [3], signer: a, requiring: EntryReference(sequence: 99, hash: first.hash))
        }
        #expect(throws: LedgerError.dependencyLost(sequence: first.sequence)) {
            try ledger.append(kind: .layer, queryID: "q", payload: [4], signer: a, requiring: EntryReference(sequence: first.sequence, hash: second.hash))
        }
        #expect(try ledger.lastSequence() == second.sequence, "nothing was appended")
        #expect(try ledger.append(kind: .layer, queryID: "q", payload: [5], signer: a, requiring: EntryReference(second)).sequence == second.sequence + 1)
}

/// Either backend: control entries (alarms, challenges, attestations, the rotation's) are small; tensors are not.
func checkControlPayloadBound(_ ledger: any Ledger) throws {
    let a = LedgerSigner()
    let bound = LedgerEntry.maxControlPayload
    for kind in EntryKind.control.sorted(by: { $0.rawValue < $1.rawValue }) {
        #expect(throws: LedgerError.self, "\(kind)") { try ledger.append(kind: kind, queryID: "q", payload: [UInt8](repeating: 1, count: bound + 1), signer: a) }
    }
    let before = try ledger.lastSequence()
    try ledger.append(kind: .attestation, queryID: "q", payload: [UInt8](repeating: 1, count: bound), signer: a)
    try ledger.append(kind: .layer, queryID: "q", payload: [UInt8](repeating: 1, count: bound + 1), signer: a)
    #expect(try ledger.lastSequence() == before + 2)
}

@Suite struct LedgerTests {
    @Test func appendsAChainedSignedLog() throws {
        let (ledger, keys) = try sampleLedger()
        let all = try ledger.allEntries()
        #expect(all.map(\.sequence) == [1, 2, 3, 4, 5, 6])
        #expect(all[0].previousHash == LedgerEntry.genesisHash)
        for i in 1..<all.count { #expect(all[i].previousHash == all[i - 1].hash) }
        #expect(all.allSatisfy { $0.signatureIsValid && $0.recomputedHash == $0.hash })
        #expect(try ledger.last()?.sequence == 6)
        #expect(try ledger.entries(from: 3, limit: 2).map(\.sequence) == [3, 4])
        let report = LedgerAudit.audit(ledger, ringKeys: keys)
        #expect(report.isClean, "\(report)")
        // Reopening the file sees the same chain.
        #expect(try SQLiteLedger(path: ledger.path).allEntries() == all)
    }

    /// An append that depends on an entry goes in only while that entry is there (checked in its transaction).
    @Test func anAppendThatDependsOnAnEntryGoesInOnlyWhileItIsThere() throws {
        let ledger = try SQLiteLedger(path: tempLedgerPath())
        try checkDependentAppends(ledger)
    }

    @Test func controlEntriesAreBoundedFarBelowTensors() throws {
        try checkControlPayloadBound(try SQLiteLedger(path: tempLedgerPath()))
        // An oversized control entry that got in anyway (a SQLite file is anyone's who can write it) is an audit finding.
        let s = LedgerSigner()
        let payload = [UInt8](repeating: 7, count: LedgerEntry.maxControlPayload + 1)
        let hash = LedgerEntry.computeHash(sequence: 1, previousHash: LedgerEntry.genesisHash, kind: .attestation, queryID: "r", author: s.publicKey, payload: payload)
        let e = LedgerEntry(sequence: 1, previousHash: LedgerEntry.genesisHash, kind: .attestation, queryID: "r", author: s.publicKey,
                            payload: payload, hash: hash, signature: try s.sign(hash))
        #expect(e.signatureIsValid)
        let report = LedgerAudit.audit([e])
        #expect(report.firstProblem?.sequence == 1, "\(report)")
        var small = e
        small.payload = Array(payload.dropLast())
        small.hash = LedgerEntry.computeHash(sequence: 1, previousHash: LedgerEntry.genesisHash, kind: .attestation, queryID: "r", author: s.publicKey, payload: small.payload)
        small.signature = try s.sign(small.hash)
        #expect(LedgerAudit.audit([small]).isClean)
    }

    @Test func concurrentWritersNeverForkTheChain() throws {
        let ledger = try SQLiteLedger(path: tempLedgerPath())
        let signers = (0..<4).map { _ in LedgerSigner() }
        DispatchQueue.concurrentPerform(iterations: 4) { w in
            for i in 0..<25 { _ = try! ledger.append(kind: .layer, queryID: "w\(w)", payload: [UInt8(i)], signer: signers[w]) }
        }
        let report = LedgerAudit.audit(ledger, ringKeys: Set(signers.map(\.publicKey)))
        #expect(report.isClean && report.entries == 100, "\(report)")
    }

    @Test func waitSeesEntriesAppendedElsewhere() throws {
        let ledger = try SQLiteLedger(path: tempLedgerPath())
        let other = try SQLiteLedger(path: ledger.path)
        let s = LedgerSigner()
        let t = Thread { Thread.sleep(forTimeInterval: 0.05); _ = try! other.append(kind: .query, queryID: "x", payload: [1], signer: s) }
        t.start()
        let got = try ledger.waitForEntries(after: 0, timeout: .seconds(5))
        #expect(got.map(\.sequence) == [1])
        #expect(try ledger.waitForEntries(after: 1, timeout: .milliseconds(30)).isEmpty)
    }

    @Test func rejectsOversizedArguments() throws {
        let ledger = try SQLiteLedger(path: tempLedgerPath())
        #expect(throws: LedgerError.self) { try ledger.append(kind: .query, queryID: String(repeating: "q", count: 500), payload: [], signer: LedgerSigner()) }
        #expect(throws: LedgerError.self) { try ledger.append(kind: .query, queryID: "", payload: [], signer: LedgerSigner()) }
    }
}

/// `audit` catches every tampering of the stored rows and names the first bad row.
@Suite struct LedgerAuditTests {
    func expectProblem(at seq: Int64, _ ledger: SQLiteLedger, _ keys: Set<[UInt8]>, _ check: (AuditReport.Problem) -> Bool = { _ in true }) {
        let r = LedgerAudit.audit(ledger, ringKeys: keys)
        #expect(r.firstProblem?.sequence == seq, "\(r)")
        if let p = r.firstProblem?.problem { #expect(check(p), "\(r)") }
    }

    @Test func changedPayloadByte() throws {
        let (l, k) = try sampleLedger()
        var p = try l.entries(from: 4, limit: 1)[0].payload
        p[7] ^= 1
        try tamper(l, "UPDATE entries SET payload = ? WHERE seq = 4", [Data(p)])
        expectProblem(at: 4, l, k) { $0 == .hashMismatch }
    }

    @Test func changedSignature() throws {
        let (l, k) = try sampleLedger()
        var s = try l.entries(from: 3, limit: 1)[0].signature
        s[0] ^= 0x80
        try tamper(l, "UPDATE entries SET signature = ? WHERE seq = 3", [Data(s)])
        expectProblem(at: 3, l, k) { $0 == .badSignature }
    }

    @Test func deletedRow() throws {
        let (l, k) = try sampleLedger()
        try tamper(l, "DELETE FROM entries WHERE seq = 2")
        expectProblem(at: 3, l, k) { if case .gap = $0 { return true } else { return false } }
        // Deleting the last row cannot be seen from the rows alone: the owner's record of the last hash
        // (kept outside the ledger) is what catches truncation; see the ring's authenticity check.
    }

    @Test func renumberedRowsAfterDeletion() throws {
        let (l, k) = try sampleLedger()
        try tamper(l, "DELETE FROM entries WHERE seq = 2")
        try tamper(l, "UPDATE entries SET seq = seq - 1 WHERE seq > 2")
        expectProblem(at: 2, l, k)
    }

    @Test func swappedRows() throws {
        let (l, k) = try sampleLedger()
        try tamper(l, "UPDATE entries SET seq = -1 WHERE seq = 3")
        try tamper(l, "UPDATE entries SET seq = 3 WHERE seq = 4")
        try tamper(l, "UPDATE entries SET seq = 4 WHERE seq = -1")
        expectProblem(at: 3, l, k)
    }

    @Test func forgedRowSignedOutsideTheRing() throws {
        let (l, k) = try sampleLedger()
        let outsider = LedgerSigner()
        // A well-formed, correctly hashed and signed row — by a key that is not a ring member.
        try l.append(kind: .delivery, queryID: "q0", payload: [9, 9, 9], signer: outsider)
        expectProblem(at: 7, l, k) { $0 == .unknownAuthor }
        // Without the ring's key list the same ledger is internally consistent.
        #expect(LedgerAudit.audit(l).isClean)
    }

    @Test func replayedOldEntry() throws {
        let (l, k) = try sampleLedger()
        let old = try l.entries(from: 2, limit: 1)[0]
        let last = try l.last()!
        // The attacker re-links the copy to the chain (new sequence, previous hash) but cannot re-sign it.
        let hash = LedgerEntry.computeHash(sequence: 7, previousHash: last.hash, kind: old.kind, queryID: old.queryID,
                                           author: old.author, payload: old.payload)
        try tamper(l, "INSERT INTO entries VALUES (7, ?, ?, ?, ?, ?, ?, ?)",
                   [Data(last.hash), old.kind.rawValue, old.queryID, Data(old.author), Data(old.payload), Data(hash), Data(old.signature)])
        expectProblem(at: 7, l, k) { $0 == .badSignature }
        // A verbatim copy (old hash and signature) cannot even be stored (entry hashes are unique), and with the
        // table rebuilt without that constraint the ledger is refused at open; the audit names the copy too.
        #expect(throws: DatabaseError.self) {
            try tamper(l, "UPDATE entries SET hash = ?, prev_hash = ? WHERE seq = 7", [Data(old.hash), Data(old.previousHash)])
        }
        try rebuildTableWithoutConstraints(l)
        try tamper(l, "UPDATE entries SET hash = ?, prev_hash = ? WHERE seq = 7", [Data(old.hash), Data(old.previousHash)])
        #expect(throws: LedgerError.self) { try SQLiteLedger(path: l.path) }
        // The ledger already open notices the changed schema at its next transaction.
        if case .unreadable(let why)? = LedgerAudit.audit(l, ringKeys: k).firstProblem?.problem {
            #expect(why.contains("does not have the ledger's schema"))
        } else { Issue.record("the rebuilt table was not refused") }
    }

    @Test func replayedSignatureIsNamed() {
        let s = LedgerSigner()
        let e1 = LedgerEntry(sequence: 1, previousHash: LedgerEntry.genesisHash, kind: .query, queryID: "a", author: s.publicKey,
                             payload: [1], hash: [], signature: [])
        var a = e1
        a.hash = a.recomputedHash
        a.signature = try! s.sign(a.hash)
        var b = a
        b.sequence = 2
        b.previousHash = a.hash
        b.hash = b.recomputedHash
        b.signature = a.signature  // reused signature
        let r = LedgerAudit.audit([a, b])
        #expect(r.firstProblem?.sequence == 2)
    }

    @Test func malformedRowsAreReportedNotCrashed() throws {
        let (l, k) = try sampleLedger()
        try tamper(l, "UPDATE entries SET author = 'not a blob' WHERE seq = 5")
        let r = LedgerAudit.audit(l, ringKeys: k)
        #expect(!r.isClean)
        if case .unreadable? = r.firstProblem?.problem {} else { Issue.record("expected unreadable, got \(r)") }
        #expect(r.firstProblem?.sequence == 5)
        // Readers skip a row they cannot decode and report it; the rows around it are read as usual.
        func row5() throws -> LedgerRow { try l.rows(from: 5, limit: 1)[0] }
        #expect(try l.allEntries().map(\.sequence) == [1, 2, 3, 4, 6])
        try tamper(l, "UPDATE entries SET author = ?, kind = 'bogus' WHERE seq = 5", [Data(repeating: 0, count: 32)])
        #expect(try row5() == .malformed(sequence: 5, reason: "unknown kind"))
        try tamper(l, "UPDATE entries SET kind = 'layer', hash = zeroblob(31) WHERE seq = 5")
        #expect(try row5() == .malformed(sequence: 5, reason: "hash has 31 bytes, expected 32"))
        try tamper(l, "UPDATE entries SET hash = randomblob(32), query_id = 'two\nlines' WHERE seq = 5")
        #expect(try row5() == .malformed(sequence: 5, reason: "query id is not 1–128 characters of [A-Za-z0-9._-]"))
        // The payload is read without an intermediate copy, after its type is checked.
        try tamper(l, "UPDATE entries SET query_id = NULL, payload = 'text, not a blob' WHERE seq = 5")
        #expect(try row5() == .malformed(sequence: 5, reason: "payload is not a blob"))
        try tamper(l, "UPDATE entries SET hash = randomblob(32), payload = 42 WHERE seq = 4")
        #expect(try l.rows(from: 4, limit: 1)[0] == .malformed(sequence: 4, reason: "payload is not a blob"))
        #expect(try l.entries(in: 1...6, matching: [EntryFilter()]).map(\.sequence) == [1, 2, 3, 6])
        // A view over the ledger moves past a malformed row at its tail (it does not stall there), and appends go on.
        let v = try LedgerView(try SQLiteLedger(path: l.path), window: 16)
        try tamper(l, "INSERT INTO entries VALUES (7, zeroblob(32), 'bogus', NULL, zeroblob(32), x'00', randomblob(32), zeroblob(64))")
        try l.append(kind: .query, queryID: "after", payload: [1], signer: LedgerSigner())
        try v.refresh()
        #expect(try v.lastSequence() == 8)
        #expect(try v.rows(from: 7, limit: 10).map(\.sequence) == [7, 8])
        #expect(try v.entries(in: 7...8, matching: [EntryFilter()]).map(\.sequence) == [8])
    }

    /// Found by the attacker review: a row with sequence number 2⁶³ − 1 made readers and the next append overflow
    /// (a trap). Rows outside 1 … maxSequence are never read as part of the chain; the audit names them.
    @Test func aRowWithAHugeSequenceNumberIsNamedNotFatal() throws {
        let (l, k) = try sampleLedger()
        try tamper(l, "INSERT INTO entries VALUES (9223372036854775807, zeroblob(32), 'alarm', NULL, zeroblob(32), x'', randomblob(32), zeroblob(64))")
        try tamper(l, "INSERT INTO entries VALUES (-5, zeroblob(32), 'alarm', NULL, zeroblob(32), x'', randomblob(32), zeroblob(64))")
        #expect(try l.lastSequence() == 6)
        #expect(try l.allRows().map(\.sequence) == [1, 2, 3, 4, 5, 6])
        #expect(try l.entries(in: 1...Int64.max, matching: [EntryFilter()]).count == 6)
        let e = try l.append(kind: .query, queryID: "next", payload: [1], signer: LedgerSigner())
        #expect(e.sequence == 7)
        let v = try LedgerView(l)
        #expect(try v.rows(from: Int64.max, limit: Int.max).isEmpty)
        #expect(try l.sequencesOutOfRange(limit: 10) == [-5, 9223372036854775807])
        let r = LedgerAudit.audit(l, ringKeys: k)
        #expect(r.firstProblem?.sequence == -5)
    }

    /// Found by the attacker review: a gap in the sequence numbers followed by a full page of rows made the blocks'
    /// view re-read the same page forever. It steps over the gap.
    @Test func aGapInTheSequenceNumbersDoesNotStallTheView() throws {
        let (l, _) = try sampleLedger()
        let v = try LedgerView(try SQLiteLedger(path: l.path), window: 64)
        let q = try DatabaseQueue(path: l.path)
        try q.write { db in
            for i in 0..<1100 {
                try db.execute(sql: "INSERT INTO entries VALUES (?, zeroblob(32), 'alarm', NULL, zeroblob(32), x'00', randomblob(32), zeroblob(64))",
                               arguments: [10 + i])
            }
        }
        try v.refresh()
        #expect(try v.lastSequence() == 1109)
        #expect(try v.rows(from: 1100, limit: 5).map(\.sequence) == [1100, 1101, 1102, 1103, 1104])
        #expect(try v.entries(in: 7...12, matching: [EntryFilter(kind: .alarm)]).map(\.sequence) == [10, 11, 12])
        let e = try v.append(kind: .query, queryID: "after-the-gap", payload: [1], signer: LedgerSigner())
        #expect(e.sequence == 1110)
        #expect(try v.lastSequence() == 1110)
    }

    /// Found by the attacker review: SQLite runs a schema's triggers, so a trigger with an endless recursive query
    /// hung every append, and a view in place of the table hung every reader. A ledger whose schema is not exactly
    /// the ledger's, or whose files are not regular files, is refused at open.
    @Test(.timeLimit(.minutes(1))) func aLedgerWithAnotherSchemaOrFileTypeIsRefusedAtOpen() throws {
        let (l, _) = try sampleLedger()
        let q = try DatabaseQueue(path: l.path)
        try createEndlessTrigger(q)
        #expect(throws: LedgerError.self) { try SQLiteLedger(path: l.path) }
        #expect(throws: LedgerError.self) { try SQLiteLedger(path: l.path, readOnly: true) }
        try q.write { db in try db.execute(sql: "DROP TRIGGER slow") }
        #expect(try SQLiteLedger(path: l.path, readOnly: true).allEntries().count == 6)
        try q.write { db in try db.execute(sql: "ALTER TABLE entries RENAME TO t; CREATE VIEW entries AS SELECT * FROM t") }
        #expect(throws: LedgerError.self) { try SQLiteLedger(path: l.path, readOnly: true) }
        let fifo = tempLedgerPath()
        #expect(mkfifo(fifo, 0o644) == 0)
        #expect(throws: LedgerError.self) { try SQLiteLedger(path: fifo, readOnly: true) }
        #expect(throws: LedgerError.self) { try SQLiteLedger(path: fifo) }
        // A query id a reader would print must be plain: anything else is refused at append.
        #expect(throws: LedgerError.self) { try l.append(kind: .query, queryID: "two\nlines\u{1b}[31m", payload: [1], signer: LedgerSigner()) }
    }

    /// Found by the second attacker review: the schema was checked only at open, so a trigger created while the
    /// ring ran was run; and a FIFO as the rollback journal hung the first read. Every transaction checks the
    /// schema version first, and the journal must be a regular file too.
    @Test(.timeLimit(.minutes(1))) func aSchemaChangedWhileOpenIsRefusedAtTheNextTransaction() throws {
        let (l, _) = try sampleLedger()
        try l.append(kind: .query, queryID: "before", payload: [1], signer: LedgerSigner())
        let q = try DatabaseQueue(path: l.path)
        try createEndlessTrigger(q)
        #expect(throws: LedgerError.self) { try l.append(kind: .query, queryID: "after", payload: [1], signer: LedgerSigner()) }
        #expect(throws: LedgerError.self) { try l.rows(from: 1, limit: 10) }
        try q.write { db in try db.execute(sql: "DROP TRIGGER slow") }
        #expect(try l.rows(from: 1, limit: 10).count == 7)
        let journal = l.path + "-journal"
        #expect(mkfifo(journal, 0o644) == 0)
        #expect(throws: LedgerError.self) { try SQLiteLedger(path: l.path, readOnly: true) }
        unlink(journal)
    }

    /// A round reads a bounded amount of payload: everything up to `through` is in the page, the rest comes next.
    @Test func boundedPagesCoverTheRangeInOrder() throws {
        let l = try SQLiteLedger(path: tempLedgerPath())
        let s = LedgerSigner()
        for i in 0..<10 { try l.append(kind: .layer, queryID: "q", payload: [UInt8](repeating: UInt8(i), count: 400), signer: s) }
        var seen: [Int64] = [], from: Int64 = 1
        while from <= 10 {
            let page = try l.entries(in: from...10, matching: [EntryFilter(kind: .layer)], maxBytes: 1000)
            #expect(page.entries.count <= 2 && !page.entries.isEmpty)
            seen += page.entries.map(\.sequence)
            from = page.through + 1
        }
        #expect(seen == Array(1...10))
        let v = try LedgerView(l)
        try l.append(kind: .layer, queryID: "q", payload: [UInt8](repeating: 1, count: 400), signer: s)
        try l.append(kind: .layer, queryID: "q", payload: [UInt8](repeating: 2, count: 400), signer: s)
        try v.refresh()
        let page = try v.entries(in: 11...12, matching: [EntryFilter()], maxBytes: 500)
        #expect(page.entries.map(\.sequence) == [11] && page.through == 11)
    }

    @Test func newLedgersUse16KiBPagesAndCheckpointInTheBackground() throws {
        let l = try SQLiteLedger(path: tempLedgerPath())
        let signer = LedgerSigner()
        var appended: [LedgerEntry] = []
        for i in 0..<12 {   // ~6 MB, as a few batch-256 layer posts
            appended.append(try l.append(kind: .layer, queryID: "q", payload: [UInt8](repeating: UInt8(i), count: 500_000 + i), signer: signer))
        }
        let q = try DatabaseQueue(path: l.path)
        #expect(try q.read { try Int.fetchOne($0, sql: "PRAGMA page_size") } == 16384)
        func size(_ p: String) -> Int { var st = stat(); return stat(p, &st) == 0 ? Int(st.st_size) : -1 }
        let before = size(l.path)
        l.checkpointInBackground(minimumWALBytes: 1 << 40)   // below the threshold: nothing happens
        l.waitForCheckpoint()
        #expect(size(l.path) == before)
        l.checkpointInBackground(minimumWALBytes: 0)
        l.waitForCheckpoint()
        #expect(size(l.path) > before + 5_000_000, "the WAL was not copied into the database file")
        #expect(try l.allEntries() == appended)
        #expect(LedgerAudit.audit(l, ringKeys: [signer.publicKey]).isClean)
        try l.append(kind: .layer, queryID: "q", payload: [1, 2, 3], signer: signer)
        #expect(try SQLiteLedger(path: l.path).allEntries().count == 13)
    }

    /// A ledger released while its background checkpoint is queued or running (the demo's rings are dropped
    /// right after their last query) must not be torn down on the checkpoint's own queue: that had crashed.
    @Test func aLedgerDroppedDuringABackgroundCheckpointIsSafe() throws {
        let path = tempLedgerPath()
        let signer = LedgerSigner()
        for round in 0..<5 {
            var l: SQLiteLedger? = try SQLiteLedger(path: path)
            try l!.append(kind: .layer, queryID: "q\(round)", payload: [UInt8](repeating: 7, count: 300_000), signer: signer)
            l!.checkpointInBackground(minimumWALBytes: 0)
            l = nil
            Thread.sleep(forTimeInterval: 0.05)
        }
        #expect(try SQLiteLedger(path: path).allEntries().count == 5)
    }
}

/// The blocks' shared snapshot answers reads exactly as the database would, sees other connections' appends after
/// a refresh, and reads through for entries older than its window.
@Suite struct EntryHashTests {
    @Test func theIncrementalHashIsTheHashOfTheCanonicalBytes() {
        for n in [0, 1, 63, 64, 65, 1000, 70_000] {
            let payload = (0..<n).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ 7) }
            for q in [nil, "q1"] as [String?] {
                let canonical = LedgerEntry.canonicalBytes(sequence: 42, previousHash: [UInt8](repeating: 9, count: 32), kind: .layer,
                                                           queryID: q, author: [UInt8](repeating: 3, count: 32), payload: payload)
                let h = LedgerEntry.computeHash(sequence: 42, previousHash: [UInt8](repeating: 9, count: 32), kind: .layer,
                                                queryID: q, author: [UInt8](repeating: 3, count: 32), payload: payload)
                #expect(h == Array(SHA256.hash(data: canonical)), "payload \(n)")
            }
        }
    }
}

@Suite struct LedgerViewTests {
    @Test func theViewAgreesWithTheDatabase() throws {
        let (ledger, _) = try sampleLedger()
        let view = try LedgerView(ledger, window: 16)
        #expect(try view.lastSequence() == 6)
        let other = try SQLiteLedger(path: ledger.path)   // another process's connection
        let s = LedgerSigner()
        for i in 0..<30 { try other.append(kind: .layer, queryID: "v\(i % 3)", payload: [UInt8(i)], signer: s) }
        #expect(try view.lastSequence() == 6)            // a snapshot until refreshed
        try view.refresh()
        #expect(try view.lastSequence() == 36)
        let mine = try view.append(kind: .alarm, queryID: "v1", payload: [9], signer: s)
        #expect(mine.sequence == 37)
        #expect(try view.lastSequence() == 37)
        let filters = [EntryFilter(kind: .layer, queryID: "v1"), EntryFilter(kind: .alarm)]
        for range in [Int64(1)...37, 20...37, 30...33, 36...40] {
            #expect(try view.entries(in: range, matching: filters) == (try ledger.entries(in: range, matching: filters)), "\(range)")
        }
        for from in [Int64(1), 10, 22, 37, 38] {
            #expect(try view.entries(from: from, limit: 5) == (try ledger.entries(from: from, limit: 5)), "from \(from)")
        }
        #expect(try view.last() == (try ledger.last()))
        #expect(EntryFilter(kind: .layer, author: s.publicKey).matches(mine) == false)
        #expect(EntryFilter(author: s.publicKey, queryID: "v1").matches(mine))
    }
}
