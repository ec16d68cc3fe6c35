import Crypto
import DeepRingLedger
@testable import DeepRingLedgerPostgres
import DeepRingTestSupport
import Foundation
import Testing


@Suite struct PostgresAvailabilityTests {
    @Test func aServerIsThereWhenCIRequiresOne() {
        #expect(!TestPostgres.required || TestPostgres.available,
                "DEEPRING_REQUIRE_POSTGRES=1 but DEEPRING_TEST_POSTGRES_URL is not set: CI must start a server")
    }
}

@Suite struct PostgresURLTests {
    @Test func parsesEveryPartAndNeverShowsThePassword() throws {
        let u = try PostgresURL.parse("postgres://alice:s3cret@db.example:6543/ring?sslmode=verify-full&sslrootcert=/etc/ca.pem", environment: [:])
        #expect(u.user == "alice" && u.password == "s3cret" && u.host == "db.example" && u.port == 6543 && u.database == "ring")
        #expect(u.sslMode == .verifyFull && u.sslRootCert == "/etc/ca.pem")
        #expect(!u.description.contains("s3cret") && !"\(u)".contains("s3cret"))
        #expect(try PostgresURL.parse("postgresql://bob@h/d", environment: [:]).port == 5432)
    }

    @Test func passwordsComeFromTheEnvironmentOrAFile() throws {
        #expect(try PostgresURL.parse("postgres://bob@h/d", environment: ["PGPASSWORD": "pw1"]).password == "pw1")
        let f = NSTemporaryDirectory() + "pw-\(UUID().uuidString)"
        try "pw2\n".write(toFile: f, atomically: true, encoding: .utf8)
        defer { try? FileManager.default.removeItem(atPath: f) }
        #expect(try PostgresURL.parse("postgres://bob@h/d", passwordFile: f, environment: [:]).password == "pw2")
        // A FIFO or an oversized file is refused, never waited on or read whole.
        let fifo = f + ".fifo"
        #expect(mkfifo(fifo, 0o600) == 0)
        defer { try? FileManager.default.removeItem(atPath: fifo) }
        #expect(throws: LedgerError.self) { try PostgresURL.parse("postgres://bob@h/d", passwordFile: fifo, environment: [:]) }
        try String(repeating: "x", count: 5000).write(toFile: f + ".big", atomically: true, encoding: .utf8)
        defer { try? FileManager.default.removeItem(atPath: f + ".big") }
        #expect(throws: LedgerError.self) { try PostgresURL.parse("postgres://bob@h/d", passwordFile: f + ".big", environment: [:]) }
        // The URL's own password wins.
        #expect(try PostgresURL.parse("postgres://bob:pw0@h/d", passwordFile: f, environment: ["PGPASSWORD": "pw1"]).password == "pw0")
    }

    @Test(arguments: ["postgres://h/d", "postgres://u@/d", "postgres://u@h/", "postgres://u@h:0/d", "postgres://u@h/d?sslmode=prefer",
                      "postgres://u@h/d?sslmode=verify-full", "postgres://u@h/d?foo=1", "mysql://u@h/d", "postgres://u@h/a/b"])
    func refusesWhatIsNotALedgerURL(_ text: String) {
        #expect(throws: LedgerError.self) { try PostgresURL.parse(text, environment: [:]) }
    }
}

@Suite(.enabled(if: TestPostgres.available, TestPostgres.skipMessage), .serialized)
struct PostgresLedgerTests {
    @Test func appendsAChainedSignedLogThatEveryConnectionSees() throws {
        let db = try TestPostgres.database()
        let ledger = try PostgresLedger(url: db.url)
        let a = LedgerSigner(), b = LedgerSigner()
        try ledger.append(kind: .seal, queryID: nil, payload: Array("ring sealed".utf8), signer: a)
        for i in 0..<5 {
            try ledger.append(kind: i % 2 == 0 ? .query : .layer, queryID: "q\(i / 2)", payload: [UInt8](repeating: UInt8(i), count: 40), signer: i % 2 == 0 ? a : b)
        }
        let all = try ledger.allEntries()
        #expect(all.map(\.sequence) == [1, 2, 3, 4, 5, 6])
        #expect(all[0].previousHash == LedgerEntry.genesisHash)
        #expect(all.allSatisfy { $0.isAuthentic })
        let report = LedgerAudit.audit(ledger, ringKeys: [a.publicKey, b.publicKey])
        #expect(report.isClean, "\(report)")
        #expect(try PostgresLedger(url: db.url).allEntries() == all)
        #expect(try ledger.entries(in: 1...6, matching: [EntryFilter(kind: .layer, author: b.publicKey)]).map(\.sequence) == [3, 5])
        #expect(try ledger.headers(in: 1...6, matching: [EntryFilter(queryID: "q1")]).map(\.sequence) == [4, 5])
        // 11 + 40 bytes of payload fit in 51, not in 50.
        let page = try ledger.entries(in: 1...6, matching: [EntryFilter()], maxBytes: 51)
        #expect(page.entries.map(\.sequence) == [1, 2] && page.through == 2)
        let small = try ledger.entries(in: 1...6, matching: [EntryFilter()], maxBytes: 50)
        #expect(small.entries.map(\.sequence) == [1] && small.through == 1)
        let rest = try ledger.entries(in: 2...6, matching: [EntryFilter(kind: .query)], maxBytes: 1)
        #expect(rest.entries.map(\.sequence) == [2] && rest.through == 2)
    }

    /// Control entries are bounded by the client and by the database: a member's own INSERT of a big attestation
    /// (true hash, on the tail) is refused by the table's constraint (an attestation flood costs readers megabytes no more).
    @Test func theDatabaseBoundsControlEntries() throws {
        let db = try TestPostgres.database()
        let ledger = try PostgresLedger(url: db.url)
        try checkControlPayloadBound(ledger)
        let member = try TestPostgres.role("deepring_member", on: db)
        let last = try #require(try ledger.last())
        let author = [UInt8](repeating: 3, count: 32)
        func row(_ n: Int, kind: EntryKind) -> String {
            let h = { (b: [UInt8]) in "'\\x" + b.map { String(format: "%02x", $0) }.joined() + "'" }
            let payload = [UInt8](repeating: 0xAB, count: n)
            let hash = LedgerEntry.computeHash(sequence: last.sequence + 1, previousHash: last.hash, kind: kind, queryID: "r", author: author, payload: payload)
            return "INSERT INTO deepring_entries VALUES (\(last.sequence + 1), \(h(last.hash)), '\(kind.rawValue)', 'r', \(h(author)), \(h(payload)), \(h(hash)), \(h([UInt8](repeating: 5, count: 64))))"
        }
        #expect(throws: LedgerError.self) { try PostgresLedger.execute([row(LedgerEntry.maxControlPayload + 1, kind: .attestation)], on: member) }
        #expect(try ledger.lastSequence() == last.sequence)
        // The same row as a layer post goes in: the bound is the control kinds' only.
        try PostgresLedger.execute([row(LedgerEntry.maxControlPayload + 1, kind: .layer)], on: member)
        #expect(try ledger.lastSequence() == last.sequence + 1)
    }

    /// An append that depends on an entry goes in only while that entry is there (checked in its own statement).
    @Test func anAppendThatDependsOnAnEntryGoesInOnlyWhileItIsThere() throws {
        let db = try TestPostgres.database()
        let ledger = try PostgresLedger(url: db.url)
        try checkDependentAppends(ledger)
    }

    /// The page after a cursor is one prepared statement with the filters bound as arrays (an empty element: a field
    /// left open). It must select exactly the rows `EntryFilter.matches` selects, for every mix of filters — and a
    /// filter on an empty author or a malformed query id must match nothing, not everything.
    @Test func thePreparedPageReadSelectsWhatTheFiltersMatch() throws {
        let db = try TestPostgres.database()
        let ledger = try PostgresLedger(url: db.url)
        let a = LedgerSigner(), b = LedgerSigner(), c = LedgerSigner()
        let kinds: [EntryKind] = [.query, .layer, .alarm, .layer, .delivery]
        for i in 0..<30 {
            try ledger.append(kind: kinds[i % kinds.count], queryID: i % 4 == 3 ? nil : "q\(i % 3)",
                              payload: [UInt8](repeating: UInt8(i), count: 10 + i), signer: [a, b, c][i % 3])
        }
        let all = try ledger.allEntries()
        let cases: [[EntryFilter]] = [
            [], [EntryFilter()], [EntryFilter(kind: .layer)], [EntryFilter(author: b.publicKey)],
            [EntryFilter(queryID: "q1")], [EntryFilter(kind: .layer, author: a.publicKey), EntryFilter(kind: .alarm)],
            [EntryFilter(kind: .layer, author: c.publicKey, queryID: "q2"), EntryFilter(kind: .query, queryID: "q0")],
            [EntryFilter(author: [])], [EntryFilter(queryID: "")], [EntryFilter(queryID: "no spaces allowed")],
            [EntryFilter(author: [], queryID: "q1"), EntryFilter(kind: .delivery)],
        ]
        for cursor: Int64 in [0, 7, 29, 30] {
            for fs in cases {
                // Many statements on one connection: the server plans the prepared one generically after five.
                let (page, tail) = try ledger.entries(after: cursor, matching: fs, maxBytes: 1 << 20)
                let expected = all.filter { e in e.sequence > cursor && fs.contains { f in
                    f.matches(e) && (f.author.map { !$0.isEmpty } ?? true) && (f.queryID.map(LedgerEntry.isValidQueryID) ?? true) } }
                #expect(page.entries.map(\.sequence) == expected.map(\.sequence), "cursor \(cursor), filters \(fs)")
                #expect(page.entries == expected && tail == 30 && page.through == 30)
            }
        }
        // A budget ends the page after the row that passes it (at least one row), and says where.
        let (small, _) = try ledger.entries(after: 0, matching: [EntryFilter(kind: .layer)], maxBytes: 20)
        #expect(small.entries.map(\.sequence) == [2] && small.through == 2)
    }

    @Test func writersOnManyConnectionsNeverForkTheChain() throws {
        let db = try TestPostgres.database()
        // Four "hosts" (a ledger each, so four sessions), each appending from two threads.
        let ledgers = try (0..<4).map { _ in try PostgresLedger(url: db.url) }
        let signers = (0..<8).map { _ in LedgerSigner() }
        let errors = ErrorBox()
        DispatchQueue.concurrentPerform(iterations: 8) { w in
            for i in 0..<25 {
                do { try ledgers[w % 4].append(kind: .layer, queryID: "w\(w)", payload: [UInt8(i)], signer: signers[w]) } catch { errors.add(error) }
            }
        }
        #expect(errors.all.isEmpty, "\(errors.all)")
        let report = LedgerAudit.audit(ledgers[0], ringKeys: Set(signers.map(\.publicKey)))
        #expect(report.isClean && report.entries == 200, "\(report)")
    }

    @Test func aWaiterIsWokenByANotificationFromAnotherSession() throws {
        let db = try TestPostgres.database()
        let waiter = try PostgresLedger(url: db.url), writer = try PostgresLedger(url: db.url)
        // Let the waiter's LISTEN connection come up.
        let until = Date().addingTimeInterval(10)
        while !waiter.isListening && Date() < until { Thread.sleep(forTimeInterval: 0.01) }
        #expect(waiter.isListening)
        let before = waiter.notificationsReceived
        let s = LedgerSigner()
        let t = Thread { Thread.sleep(forTimeInterval: 0.1); _ = try? writer.append(kind: .query, queryID: "x", payload: [1], signer: s) }
        t.start()
        let got = try waiter.waitForEntries(after: 0, timeout: .seconds(10))
        #expect(got.map(\.sequence) == [1])
        // The waiter was woken by the append's NOTIFY (its counter moved), not by a re-read on a timer.
        #expect(waiter.notificationsReceived > before)
        #expect(try waiter.waitForEntries(after: 1, timeout: .milliseconds(50)).isEmpty)
    }

    /// A waiter that names what it waits for listens only on those rows' channels: appends by others do not wake its
    /// process at all, `mayHaveAppended` answers without a round trip — false for them, true for its own rows — and
    /// a wait for its rows returns at once on their notification.
    @Test func aWaiterIsWokenOnlyByTheRowsItWaitsFor() throws {
        let db = try TestPostgres.database()
        let waiter = try PostgresLedger(url: db.url), writer = try PostgresLedger(url: db.url)
        let mine = LedgerSigner(), other = LedgerSigner()
        let filters = [EntryFilter(kind: .layer, author: mine.publicKey)]
        // The first wait names the channels; the listener listens on them from then on.
        _ = try waiter.waitForAppend(after: 0, matching: filters, timeout: .milliseconds(50))
        let until = Date().addingTimeInterval(10)
        let wanted: Set = [PostgresLedger.channel(kind: .layer, author: mine.publicKey)]
        while waiter.listenedChannels != wanted && Date() < until { Thread.sleep(forTimeInterval: 0.02) }
        #expect(waiter.listenedChannels == wanted)
        // Its first notification closes the gap the reconnect left (rows before it may not have been notified).
        try writer.append(kind: .layer, queryID: "q", payload: [0], signer: mine)
        while waiter.notificationsReceived < 1 && Date() < until { Thread.sleep(forTimeInterval: 0.02) }
        let tail = try waiter.lastSequence()
        #expect(!waiter.mayHaveAppended(after: tail, matching: filters), "the waiter cannot tell that nothing of its own came")
        let before = waiter.notificationsReceived
        for i in 0..<5 { try writer.append(kind: .layer, queryID: "q\(i)", payload: [1], signer: other) }
        try writer.append(kind: .alarm, queryID: "q", payload: [1], signer: mine)
        Thread.sleep(forTimeInterval: 0.3)
        #expect(waiter.notificationsReceived == before, "rows by others, or of other kinds, reached the waiter's process")
        #expect(!waiter.mayHaveAppended(after: tail, matching: filters))
        try writer.append(kind: .layer, queryID: "q", payload: [2], signer: mine)
        let t0 = Date()
        let woke = try waiter.waitForAppend(after: tail, matching: filters, timeout: .seconds(5))
        #expect(woke == tail + 7 && Date().timeIntervalSince(t0) < 2, "woke at \(woke) after \(Date().timeIntervalSince(t0)) s")
        #expect(waiter.mayHaveAppended(after: tail, matching: filters))
        let (page, t) = try waiter.entries(after: tail, matching: filters, maxBytes: 1 << 20)
        #expect(t == tail + 7 && page.entries.map(\.sequence) == [tail + 7] && page.through == tail + 7)
    }

    /// Attacker review of the per-channel wake-ups: anyone may NOTIFY. A flood of forged notifications that pushes
    /// a genuine one out of the kept window must leave the waiter unsure (it reads), never sure that nothing came —
    /// else a querent would miss its own delivery for good.
    @Test func forgedNotificationsPushingAGenuineOneOutLeaveTheWaiterUnsure() throws {
        let db = try TestPostgres.database()
        let waiter = try PostgresLedger(url: db.url), writer = try PostgresLedger(url: db.url)
        let filters = [EntryFilter(kind: .delivery, queryID: "q")]
        _ = try waiter.waitForAppend(after: 0, matching: filters, timeout: .milliseconds(50))
        let until = Date().addingTimeInterval(10)
        let wanted: Set = [PostgresLedger.channel(kind: .delivery, author: nil)]
        while (waiter.listenedChannels != wanted || waiter.mayHaveAppended(after: 0, matching: filters)) && Date() < until {
            Thread.sleep(forTimeInterval: 0.02)
        }
        #expect(!waiter.mayHaveAppended(after: 0, matching: filters), "the listener never became sure")
        let s = LedgerSigner()
        let e = try writer.append(kind: .delivery, queryID: "q", payload: [1], signer: s)
        while waiter.notificationsReceived < 1 && Date() < until { Thread.sleep(forTimeInterval: 0.02) }
        #expect(waiter.mayHaveAppended(after: e.sequence - 1, matching: filters))
        // 5,000 forged notifications of old rows of other queries: the genuine one is pushed out of the 4,096 kept.
        let querent = try TestPostgres.role("deepring_querent", on: db)
        try PostgresLedger.execute(["SELECT pg_notify('deepring_delivery', '1 delivery \(hex(s.publicKey)) x' || i) FROM generate_series(1, 5000) i"], on: querent)
        while waiter.notificationsReceived < 5001 && Date() < until { Thread.sleep(forTimeInterval: 0.02) }
        #expect(waiter.notificationsReceived >= 5001)
        #expect(waiter.mayHaveAppended(after: e.sequence - 1, matching: filters), "the waiter is sure nothing came: its delivery would be lost")
    }

    /// A querent that inserts the next row and keeps its transaction open stops every other append (each waits for
    /// that row's fate): the owner's watchdog ends that session, and the waiting append goes through.
    @Test(.timeLimit(.minutes(1)))
    func theWatchdogEndsASessionThatHoldsAnAppendOpen() throws {
        let db = try TestPostgres.database()
        let ledger = try PostgresLedger(url: db.url), watchdog = try PostgresLedger(url: db.url)
        #expect(try watchdog.mayEndOtherSessions(), "the test server's superuser may end other sessions")
        let first = try ledger.append(kind: .seal, queryID: nil, payload: [1], signer: LedgerSigner())
        let q = try TestPostgres.role("deepring_querent", on: db)
        #expect(try !PostgresLedger(url: q).mayEndOtherSessions(), "a querent may not end other sessions")
        func random(_ n: Int) -> [UInt8] { (0..<n).map { _ in UInt8.random(in: 0...255) } }
        func literal(_ b: [UInt8]) -> String { "'\\x" + hex(b) + "'" }
        // The next row, with its true entry hash (the chain trigger checks it; no database can check the signature).
        let author = random(32)
        let hash = LedgerEntry.computeHash(sequence: 2, previousHash: first.hash, kind: .query, queryID: "held", author: author, payload: [1])
        let held = Process()
        held.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        held.arguments = ["psql", "-X", "-q", "postgresql://\(q.user)@\(q.host):\(q.port)/\(q.database)", "-c", """
            BEGIN; INSERT INTO deepring_entries (seq, prev_hash, kind, query_id, author, payload, hash, signature)
            VALUES (2, \(literal(first.hash)), 'query', 'held', \(literal(author)), '\\x01', \(literal(hash)), \(literal(random(64)))); SELECT pg_sleep(50); COMMIT;
            """]
        held.environment = ProcessInfo.processInfo.environment.merging(["PGPASSWORD": q.password ?? ""]) { $1 }
        held.standardOutput = FileHandle.nullDevice
        held.standardError = FileHandle.nullDevice
        try held.run()
        defer { if held.isRunning { held.terminate() } }
        Thread.sleep(forTimeInterval: 1.5)
        #expect(held.isRunning, "psql did not hold its transaction open")
        let done = ResultBox()
        let s = LedgerSigner()
        let t = Thread { done.set(Result { try ledger.append(kind: .layer, queryID: "after", payload: [2], signer: s) }) }
        t.start()
        Thread.sleep(forTimeInterval: 1.0)
        #expect(done.value == nil, "the append did not wait for the held row")
        let ended = try watchdog.endHeldAppends(olderThan: .seconds(1))
        #expect(ended.count == 1 && ended.first?.ended == true && ended.first?.user == q.user, "\(ended)")
        let until = Date().addingTimeInterval(15)
        while done.value == nil && Date() < until { Thread.sleep(forTimeInterval: 0.02) }
        guard case .success(let e)? = done.value else { Issue.record("the append did not go through: \(String(describing: done.value))"); return }
        #expect(e.sequence == 2)
        held.waitUntilExit()
        #expect(held.terminationStatus != 0, "psql's session was not ended")
        #expect(try watchdog.endHeldAppends(olderThan: .seconds(1)).isEmpty)
        let report = LedgerAudit.audit(ledger, ringKeys: [first.author, s.publicKey])
        #expect(report.isClean && report.entries == 2, "\(report)")
    }

    @Test func theDatabaseRefusesToChangeOrRemoveEntriesWhoeverAsks() throws {
        let db = try TestPostgres.database()
        let ledger = try PostgresLedger(url: db.url)
        try ledger.append(kind: .seal, queryID: nil, payload: [1, 2, 3], signer: LedgerSigner())
        let member = try TestPostgres.role("deepring_member", on: db)
        for sql in ["UPDATE deepring_entries SET payload = '\\x00'", "DELETE FROM deepring_entries",
                    "TRUNCATE deepring_entries", "DROP TABLE deepring_entries", "ALTER TABLE deepring_entries DISABLE TRIGGER ALL",
                    "DROP TRIGGER deepring_no_change ON deepring_entries"] {
            // A member's connection: refused (permissions, then the trigger).
            #expect(throws: LedgerError.self, "member: \(sql)") { try PostgresLedger.execute([sql], on: member) }
        }
        // Even the superuser's UPDATE, DELETE and TRUNCATE hit the append-only trigger.
        for sql in ["UPDATE deepring_entries SET payload = '\\x00'", "DELETE FROM deepring_entries", "TRUNCATE deepring_entries"] {
            #expect(throws: LedgerError.self, "owner: \(sql)") { try PostgresLedger.execute([sql], on: db.url) }
        }
        #expect(try ledger.allEntries().map(\.payload) == [[1, 2, 3]])
        // A member appends through the ledger; an entry hash is unique.
        let asMember = try PostgresLedger(url: member)
        let e = try asMember.append(kind: .layer, queryID: "q", payload: [9], signer: LedgerSigner())
        #expect(e.sequence == 2)
        let dup = "INSERT INTO deepring_entries SELECT 3, hash, kind, query_id, author, payload, hash, signature FROM deepring_entries WHERE seq = 2"
        #expect(throws: LedgerError.self) { try PostgresLedger.execute([dup], on: member) }
        #expect(LedgerAudit.audit(ledger).isClean)
    }

    @Test func aQuerentMayAppendOnlyQueries() throws {
        let db = try TestPostgres.database()
        let querent = try PostgresLedger(url: try TestPostgres.role("deepring_querent", on: db))
        let s = LedgerSigner()
        #expect(try querent.append(kind: .query, queryID: "q1", payload: [1], signer: s).sequence == 1)
        for kind in EntryKind.allCases where kind != .query {
            #expect(throws: LedgerError.self, "\(kind)") { try querent.append(kind: kind, queryID: "q1", payload: [1], signer: s) }
        }
        #expect(try querent.lastSequence() == 1)
    }

    @Test func aRoleOutsideTheLedgerGroupsReadsNothingAndWritesNothing() throws {
        let db = try TestPostgres.database()
        let stranger = try TestPostgres.role("pg_read_all_settings", on: db)
        #expect(throws: LedgerError.self) { try PostgresLedger(url: stranger) }
    }

    @Test func aWrongPasswordIsRefusedAtOnceAndNeverShown() throws {
        let db = try TestPostgres.database()
        var member = try TestPostgres.role("deepring_member", on: db)
        member.password = "not-the-password-\(UUID().uuidString)"
        let t0 = Date()
        do {
            _ = try PostgresLedger(url: member)
            Issue.record("a wrong password was accepted")
        } catch {
            #expect(!"\(error)".contains(member.password!), "\(error)")
        }
        // Not retried with backoff until the deadline: a refusal is final.
        #expect(Date().timeIntervalSince(t0) < 20)
    }

    @Test func anAppendWhoseAnswerWasLostIsNeitherDuplicatedNorLost() throws {
        let db = try TestPostgres.database()
        let ledger = try PostgresLedger(url: db.url)
        let s = LedgerSigner()
        try ledger.append(kind: .seal, queryID: nil, payload: [0], signer: s)
        let once = OnceFlag()
        // The commit succeeds, then the connection "breaks" before the answer is seen: the append is retried on a new
        // connection, finds its entry by hash, and returns it.
        ledger.afterCommit = { if once.first() { throw SimulatedConnectionLoss() } }
        let e = try ledger.append(kind: .layer, queryID: "q", payload: [7], signer: s)
        ledger.afterCommit = nil
        #expect(e.sequence == 2)
        let all = try ledger.allEntries()
        #expect(all.map(\.sequence) == [1, 2] && all[1] == e)
        // A connection the server ends (an administrator, a restart) is re-made for the next operation.
        try PostgresLedger.execute(["SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '\(db.url.database)' AND pid <> pg_backend_pid()"], on: db.url)
        #expect(try ledger.append(kind: .layer, queryID: "q", payload: [8], signer: s).sequence == 3)
        #expect(LedgerAudit.audit(ledger).isClean)
    }

    @Test func initializingTwiceIsHarmlessAndAnUninitializedDatabaseIsNamed() throws {
        let db = try TestPostgres.database()
        let ledger = try PostgresLedger(url: db.url)
        try ledger.append(kind: .seal, queryID: nil, payload: [1], signer: LedgerSigner())
        try PostgresLedger.initialize(db.url)
        #expect(try ledger.lastSequence() == 1)
        // A database without the ledger: a clear error naming `ledger init`.
        var bare = try TestPostgres.admin()
        bare.database = "postgres"
        do { _ = try PostgresLedger(url: bare); Issue.record("opened a database with no ledger") } catch {
            #expect("\(error)".contains("ledger init"), "\(error)")
        }
        // A trigger function replaced by one that checks nothing (what a mutated build once installed): refused at open.
        try PostgresLedger.execute(["CREATE OR REPLACE FUNCTION public.deepring_chain() RETURNS trigger LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$BEGIN RETURN NEW; END$$"], on: db.url)
        #expect(throws: LedgerError.self) { try PostgresLedger(url: db.url) }
        try PostgresLedger.initialize(db.url)
        _ = try PostgresLedger(url: db.url)
        // Found by the second attacker review: protections off in ways a looser check passed — a trigger fired only
        // for replication, a trigger that never fires, row-level security off, a trigger of someone else's.
        for change in [["ALTER TABLE deepring_entries ENABLE REPLICA TRIGGER deepring_chain"],
                       ["DROP TRIGGER deepring_chain ON deepring_entries",
                        "CREATE TRIGGER deepring_chain BEFORE INSERT ON deepring_entries FOR EACH ROW WHEN (false) EXECUTE FUNCTION deepring_chain()"],
                       ["ALTER TABLE deepring_entries DISABLE ROW LEVEL SECURITY"],
                       ["CREATE TRIGGER deepring_zz BEFORE INSERT ON deepring_entries FOR EACH ROW EXECUTE FUNCTION deepring_chain()"]] {
            try PostgresLedger.execute(change, on: db.url)
            #expect(throws: LedgerError.self, "\(change)") { try PostgresLedger(url: db.url) }
            try PostgresLedger.execute(["DROP TRIGGER IF EXISTS deepring_zz ON deepring_entries"], on: db.url)
            try PostgresLedger.initialize(db.url)
            _ = try PostgresLedger(url: db.url)
        }
        // The trigger dropped by the database's owner: refused at open as untrustworthy.
        try PostgresLedger.execute(["DROP TRIGGER deepring_no_change ON deepring_entries"], on: db.url)
        #expect(throws: LedgerError.untrusted("\(db.url): the ledger table is not append-only (run `deepring ledger init`)")) {
            try PostgresLedger(url: db.url)
        }
    }

    @Test func rowsOfAnyFormAreReadAsHostileInput() throws {
        let db = try TestPostgres.database()
        let ledger = try PostgresLedger(url: db.url)
        let s = LedgerSigner()
        try ledger.append(kind: .seal, queryID: nil, payload: [1], signer: s)
        // The table's owner relaxes the constraints and inserts a row of the wrong sizes; a member inserts one with a
        // forged hash (the schema cannot check hashes and signatures: the readers do).
        try PostgresLedger.execute([
            "ALTER TABLE deepring_entries DROP CONSTRAINT deepring_entries_author_check",
            "ALTER TABLE deepring_entries DISABLE TRIGGER deepring_chain",
            "INSERT INTO deepring_entries VALUES (2, '\\x\(String(repeating: "00", count: 32))', 'layer', 'q', '\\x0102', '\\x', '\\x\(String(repeating: "11", count: 32))', '\\x\(String(repeating: "22", count: 64))')",
            "INSERT INTO deepring_entries VALUES (3, '\\x\(String(repeating: "00", count: 32))', 'layer', 'q', '\\x\(String(repeating: "33", count: 32))', '\\x', '\\x\(String(repeating: "44", count: 32))', '\\x\(String(repeating: "55", count: 64))')",
            "ALTER TABLE deepring_entries ENABLE TRIGGER deepring_chain",
        ], on: db.url)
        let rows = try ledger.allRows()
        #expect(rows.count == 3)
        #expect(rows[1] == .malformed(sequence: 2, reason: "a key, hash or signature has the wrong size"))
        #expect(rows[2].entry.map { !$0.isAuthentic } == true)
        let report = LedgerAudit.audit(ledger, ringKeys: [s.publicKey])
        #expect(report.firstProblem?.sequence == 2, "\(report)")
        // The next append chains on the last row anyway (the chain's owner is the audit, not the writer).
        #expect(try ledger.append(kind: .layer, queryID: "q", payload: [2], signer: s).sequence == 4)
    }
}

@Suite(.enabled(if: TestPostgres.available && TestPostgres.ca != nil, TestPostgres.skipMessage), .serialized)
struct PostgresTLSTests {
    func tlsURL(_ db: TestDatabase, mode: String, host: String = "127.0.0.1", ca: String?) throws -> PostgresURL {
        var text = "postgres://\(db.url.user)@\(host):\(db.url.port)/\(db.url.database)?sslmode=\(mode)"
        if let ca { text += "&sslrootcert=\(ca)" }
        return try PostgresURL.parse(text, environment: [:])
    }

    func usesTLS(_ url: PostgresURL) throws -> Bool {
        let l = try PostgresLedger(url: url)
        try l.append(kind: .seal, queryID: nil, payload: [1], signer: LedgerSigner())
        return try l.connectionUsesTLS()
    }

    @Test func requireAndVerifyFullConnectOverTLS() throws {
        let db = try TestPostgres.database()
        #expect(try usesTLS(try tlsURL(db, mode: "require", ca: nil)))
        #expect(try usesTLS(try tlsURL(db, mode: "verify-full", ca: TestPostgres.ca)))
        #expect(try usesTLS(try tlsURL(db, mode: "verify-full", host: "localhost", ca: TestPostgres.ca)))
        #expect(try !PostgresLedger(url: db.url).connectionUsesTLS())
    }

    @Test func verifyFullRefusesAServerItsCADidNotCertify() throws {
        let db = try TestPostgres.database()
        // A CA of this test's own, which never signed the server's certificate.
        let dir = NSTemporaryDirectory() + "deepring-ca-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/bin/openssl")
        p.arguments = ["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=another CA",
                       "-keyout", dir + "/ca.key", "-out", dir + "/ca.crt"]
        p.standardError = FileHandle.nullDevice
        try p.run()
        p.waitUntilExit()
        #expect(p.terminationStatus == 0)
        let other = try tlsURL(db, mode: "verify-full", ca: dir + "/ca.crt")
        #expect(throws: LedgerError.self) { try PostgresLedger(url: other) }
    }
}

final class ErrorBox: @unchecked Sendable {
    private let lock = NSLock()
    private var errors: [String] = []
    func add(_ e: Error) { lock.withLock { errors.append("\(e)") } }
    var all: [String] { lock.withLock { errors } }
}

final class ResultBox: @unchecked Sendable {
    private let lock = NSLock()
    private var result: Result<LedgerEntry, Error>?
    func set(_ r: Result<LedgerEntry, Error>) { lock.withLock { result = r } }
    var value: Result<LedgerEntry, Error>? { lock.withLock { result } }
}

final class OnceFlag: @unchecked Sendable {
    private let lock = NSLock()
    private var done = false
    func first() -> Bool { lock.withLock { defer { done = true }; return !done } }
}


@Suite(.enabled(if: OwnPostgres.canStart || TestPostgres.required, "no PostgreSQL server binaries (apt-get install postgresql)"), .serialized)
struct PostgresCrashTests {
    /// A writer keeps appending while the server dies (as in a power cut: no shutdown checkpoint) and comes back.
    /// Every durable append it was told of is there once, in order, and the chain is intact. With lazy commits (the
    /// default: layer posts do not wait for their own flush), acknowledged layer posts after the last durable commit
    /// may be lost — only those.
    @Test(.timeLimit(.minutes(3)), arguments: [true, false])
    func appendsWaitOutACrashedServer(lazyCommits: Bool) throws {
        let server = try OwnPostgres()
        try PostgresLedger.initialize(server.url)
        let ledger = try PostgresLedger(url: server.url)
        ledger.deadline = .seconds(60)
        ledger.lazyCommits = lazyCommits
        let signer = LedgerSigner()
        for i in 0..<20 { try ledger.append(kind: .layer, queryID: "before", payload: [UInt8(i)], signer: signer) }
        try ledger.append(kind: .query, queryID: "before", payload: [20], signer: signer)
        let errors = ErrorBox()
        let done = DispatchSemaphore(value: 0)
        // Even i: a query row (durable); odd i: a layer post (lazy when lazy commits are on).
        let writer = Thread {
            for i in 0..<40 {
                do { try ledger.append(kind: i % 2 == 0 ? .query : .layer, queryID: "during", payload: [UInt8(i)], signer: signer) } catch { errors.add(error) }
                Thread.sleep(forTimeInterval: 0.02)
            }
            done.signal()
        }
        writer.start()
        Thread.sleep(forTimeInterval: 0.2)
        try server.crash()
        Thread.sleep(forTimeInterval: 1.5)
        try server.restart()
        done.wait()
        #expect(errors.all.isEmpty, "\(errors.all)")
        let all = try ledger.allEntries()
        #expect(all.filter { $0.queryID == "before" }.count == 21)
        let during = all.filter { $0.queryID == "during" }
        let present = Set(during.map { Int($0.payload[0]) })
        #expect(during.count == present.count, "an append landed twice")
        #expect((0..<40).filter { $0 % 2 == 0 }.allSatisfy(present.contains), "a durable append was lost: \(present.sorted())")
        if !lazyCommits { #expect(present.count == 40, "lost: \(Set(0..<40).subtracting(present).sorted())") }
        #expect(LedgerAudit.audit(ledger, ringKeys: [signer.publicKey]).isClean)
        // The listener came back too.
        let until = Date().addingTimeInterval(20)
        while !ledger.isListening && Date() < until { Thread.sleep(forTimeInterval: 0.05) }
        #expect(ledger.isListening)
    }
}

@Suite(.enabled(if: TestPostgres.available, TestPostgres.skipMessage))
struct PostgresAppendPathTests {
    @Test func theDatabaseAdmitsOnlyTheNextRowOfTheChain() throws {
        let db = try TestPostgres.database()
        let ledger = try PostgresLedger(url: db.url)
        let s = LedgerSigner()
        let first = try ledger.append(kind: .seal, queryID: nil, payload: [1], signer: s)
        let member = try TestPostgres.role("deepring_member", on: db)
        let author = [UInt8](repeating: 3, count: 32)
        /// A row inserted by hand: its true entry hash unless `hash` is given; a signature nobody made.
        func row(_ seq: Int64, prev: [UInt8], hash: [UInt8]? = nil) -> String {
            let h = { (b: [UInt8]) in "'\\x" + b.map { String(format: "%02x", $0) }.joined() + "'" }
            let trueHash = LedgerEntry.computeHash(sequence: seq, previousHash: prev, kind: .layer, queryID: "q", author: author, payload: [])
            return "INSERT INTO deepring_entries VALUES (\(seq), \(h(prev)), 'layer', 'q', \(h(author)), '\\x', \(h(hash ?? trueHash)), \(h([UInt8](repeating: 5, count: 64))))"
        }
        // A gap, the last number (which would stop every later append), a fork of row 1, a row on the wrong hash:
        for sql in [row(3, prev: first.hash), row(LedgerEntry.maxSequence, prev: first.hash), row(1, prev: LedgerEntry.genesisHash),
                    row(2, prev: LedgerEntry.genesisHash)] {
            #expect(throws: LedgerError.self, "\(sql)") { try PostgresLedger.execute([sql], on: member) }
        }
        // Found by the second attacker review: a row whose stored hash is not its own (planted to equal another
        // writer's next entry, whose append then failed on the unique hash forever) — refused: the database
        // recomputes every entry's hash.
        #expect(throws: LedgerError.self) { try PostgresLedger.execute([row(2, prev: first.hash, hash: [UInt8](repeating: 9, count: 32))], on: member) }
        // The next row with its true hash is admitted even with a forged signature: signatures are the readers' to check.
        try PostgresLedger.execute([row(2, prev: first.hash)], on: member)
        #expect(LedgerAudit.audit(ledger, ringKeys: [s.publicKey]).firstProblem?.sequence == 2)
        #expect(try ledger.append(kind: .layer, queryID: "q", payload: [2], signer: s).sequence == 3)
        #expect(try ledger.allRows().count == 3)
        // Found by the attacker review: a temporary table named like the ledger (pg_temp is searched first for
        // relations) stood in for it in the chain trigger, which then admitted the last number. No role may create
        // temporary objects now; and where the database's owner allows them again, the trigger reads only the ledger.
        let shadow = ["CREATE TEMP TABLE deepring_entries (seq bigint, hash bytea)",
                      "INSERT INTO pg_temp.deepring_entries VALUES (\(LedgerEntry.maxSequence - 1), '\\x\(String(repeating: "11", count: 32))')",
                      "INSERT INTO public.deepring_entries VALUES (\(LedgerEntry.maxSequence), '\\x\(String(repeating: "11", count: 32))', 'seal', NULL, '\\x\(String(repeating: "aa", count: 32))', '\\x', '\\x\(String(repeating: "cc", count: 32))', '\\x\(String(repeating: "bb", count: 64))')"]
        #expect(throws: LedgerError.self) { try PostgresLedger.execute([shadow[0]], on: member) }
        try PostgresLedger.execute(["GRANT TEMPORARY ON DATABASE \(db.url.database) TO PUBLIC"], on: db.url)
        #expect(throws: LedgerError.self) { try PostgresLedger.execute(shadow, on: member) }
        #expect(try ledger.lastSequence() == 3)
    }

    @Test func anAppendOnTheKnownTailTakesOneStatementAndAStaleOneFallsBack() throws {
        let db = try TestPostgres.database()
        let a = try PostgresLedger(url: db.url), b = try PostgresLedger(url: db.url)
        let s = LedgerSigner()
        try a.append(kind: .seal, queryID: nil, payload: [0], signer: s)
        for i in 1...5 { try a.append(kind: .layer, queryID: "q", payload: [UInt8(i)], signer: s) }
        // The first append had no tail to chain on; the next five chained on their own.
        #expect(a.appendCounts == (onKnownTail: 5, afterReadingTail: 1))
        // Two writers taking turns: each one's known tail is stale every time, and it reads the tail under the lock.
        for i in 0..<6 { try (i % 2 == 0 ? b : a).append(kind: .layer, queryID: "q", payload: [UInt8(i)], signer: s) }
        #expect(a.appendCounts.afterReadingTail >= 3 && b.appendCounts.afterReadingTail >= 1)
        // A known tail whose row is not what it was (lost in a crash, say): not chained on.
        let tail = try a.lastSequence()
        a.assumedTail = (tail, [UInt8](repeating: 7, count: 32))
        let e = try a.append(kind: .layer, queryID: "q", payload: [99], signer: s)
        let before = try a.entry(at: tail)
        #expect(e.sequence == tail + 1 && e.previousHash == before?.hash)
        #expect(LedgerAudit.audit(a, ringKeys: [s.publicKey]).isClean)
    }
}

@Suite(.enabled(if: TestPostgres.available, TestPostgres.skipMessage))
struct PostgresReaderTests {
    @Test func aReadersSessionCannotWriteEvenBySQL() throws {
        let db = try TestPostgres.database()
        try PostgresLedger(url: db.url).append(kind: .seal, queryID: nil, payload: [1], signer: LedgerSigner())
        let reader = try PostgresLedger(url: db.url, readOnly: true)
        #expect(try reader.allEntries().count == 1)
        #expect(throws: LedgerError.self) { try reader.append(kind: .query, queryID: "q", payload: [1], signer: LedgerSigner()) }
        // Its connections are read-only in the database itself.
        #expect(try reader.sessionIsReadOnly())
        #expect(try !PostgresLedger(url: db.url).sessionIsReadOnly())
    }
}
