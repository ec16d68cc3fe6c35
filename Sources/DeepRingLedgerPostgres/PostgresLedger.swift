import DeepRingLedger
import Foundation
import Logging
import NIOCore
import NIOSSL
import PostgresNIO

/// The PostgreSQL ledger: the same entries, hash chain and signatures as the SQLite ledger, for rings whose members
/// run on many hosts. The database enforces what it can:
///
/// - *append-only*: a trigger refuses every UPDATE, DELETE and TRUNCATE (the superuser's too), and TRUNCATE is not
///   granted to anyone;
/// - *least privilege*: the `deepring_member` role may only SELECT and INSERT; the `deepring_querent` role may
///   INSERT only `query` rows (row-level security);
/// - *one chain*: a trigger admits a row only as the next one — numbered one past the last row and carrying the last
///   row's stored hash as its previous hash — and the sequence number is the primary key, so writers on many hosts
///   can neither fork the chain nor leave a gap in it (nor jump to the last number and stop it); the entry hash is
///   unique, so an append retried after a lost connection is found rather than written twice;
/// - *no polling*: every append notifies the channel `deepring_ledger` when it commits, and waiting processes wake on
///   it (a slow re-read covers notifications lost while a connection is being re-made).
///
/// Every operation has a deadline; a lost connection is re-made with backoff.
public final class PostgresLedger: Ledger, @unchecked Sendable {
    public let url: PostgresURL
    let logger: Logger
    let configuration: PostgresConnection.Configuration
    /// The configuration of connections whose commits do not wait for their own WAL flush (`synchronous_commit =
    /// off`): for entries nothing outside the ring waits on (see `lazyKinds`).
    let lazyConfiguration: PostgresConnection.Configuration
    /// How long one operation (connecting included) may take.
    public var deadline: Duration = .seconds(30)

    private let lock = NSLock()
    /// Connections not in use. An operation takes one for itself (a transaction never shares its connection) and
    /// gives it back when it ends well; a connection that failed is closed, never reused.
    private var idle: [PostgresConnection] = []
    private var idleLazy: [PostgresConnection] = []
    /// The newest row this process has seen (sequence number and stored hash): an append first tries to chain on it in
    /// one statement, and reads the tail under the lock only when someone else appended since.
    private var knownTail: (sequence: Int64, hash: [UInt8])?
    private var closed = false
    private var nextID = 1
    static let maxIdle = 4
    private let wake = Wakeups()
    private var listener: Task<Void, Never>?

    public static let table = "deepring_entries"
    /// The channel every append is notified on (for waits that want every row: `ledger show --follow`, tests).
    public static let channel = "deepring_ledger"
    /// The channel an append of `kind` by `author` is also notified on — and, with no author, the one for every
    /// append of that kind. A serving process listens only on the channels of the rows it waits for, so one post wakes
    /// the one process it is for instead of every process of the ring (each wake-up costs a few context switches, and
    /// a ring's processes share the cores).
    public static func channel(kind: EntryKind, author: [UInt8]?) -> String {
        guard let a = author else { return "deepring_\(kind.rawValue)" }
        return "deepring_\(kind.rawValue)_" + hex(a.prefix(8))
    }
    /// The channel a wait with `filter` listens on: its kind and author's, its kind's, or every append's.
    static func channel(for filter: EntryFilter) -> String {
        guard let k = filter.kind else { return channel }
        return channel(kind: k, author: filter.author)
    }
    /// The triggers that make the table a ledger; a table missing one, or with one disabled, is refused at open.
    static let triggers = ["deepring_no_change", "deepring_no_truncate", "deepring_chain"]

    /// True for a reader's ledger (`ledger show`, `ledger audit`): its sessions are read-only in the database, so a
    /// reader cannot write even by mistake.
    public let readOnly: Bool

    /// Connects to an initialized ledger (`deepring ledger init`) and starts listening for appends.
    public init(url: PostgresURL, readOnly: Bool = false, logger: Logger = Logger(label: "deepring.ledger.postgres")) throws {
        self.url = url
        self.logger = logger
        self.readOnly = readOnly
        var c = try PostgresLedger.configuration(url)
        // A statement of ours the server still runs after this process gave up on it (and re-tried it) must not
        // commit later: the server ends it before the attempt's deadline, and notices a client that went away.
        c.options.additionalStartupParameters += [("statement_timeout", "\(PostgresLedger.statementTimeoutMilliseconds)"),
                                                  ("client_connection_check_interval", "1000")]
        if readOnly { c.options.additionalStartupParameters.append(("default_transaction_read_only", "on")) }
        configuration = c
        c.options.additionalStartupParameters.append(("synchronous_commit", "off"))
        lazyConfiguration = c
        try withConnection { [url, logger] c in
            let ok = try await c.query("""
                SELECT to_regclass('public.deepring_entries') IS NOT NULL,
                       (SELECT count(*) FROM pg_trigger t WHERE t.tgrelid = to_regclass('public.deepring_entries') AND NOT t.tgisinternal) = 3
                       AND (SELECT relrowsecurity FROM pg_class WHERE oid = to_regclass('public.deepring_entries'))
                       AND (SELECT count(*) FROM pg_constraint WHERE conrelid = to_regclass('public.deepring_entries') AND NOT condeferrable
                              AND ((contype = 'p' AND conname = 'deepring_entries_pkey') OR (contype = 'u' AND conname = 'deepring_entries_hash_key'))) = 2
                       AND (SELECT count(DISTINCT t.tgname) FROM pg_trigger t JOIN pg_proc f ON f.oid = t.tgfoid
                         WHERE t.tgrelid = to_regclass('public.deepring_entries') AND t.tgenabled IN ('O', 'A') AND t.tgqual IS NULL
                           AND f.pronamespace = 'public'::regnamespace AND f.prosecdef = false
                           AND f.proconfig = ARRAY[\(PostgresLedger.functionSearchPath)]
                           AND ((t.tgname IN ('deepring_no_change', 'deepring_no_truncate') AND f.proname = 'deepring_append_only' AND f.prosrc = \(PostgresLedger.appendOnlyBody))
                             OR (t.tgname = 'deepring_chain' AND f.proname = 'deepring_chain' AND f.prosrc = \(PostgresLedger.chainBody)))) = 3,
                       to_regclass('public.deepring_entries') IS NOT NULL AND has_table_privilege('public.deepring_entries', 'SELECT')
                """, logger: logger)
            for try await (table, trigger, readable) in ok.decode((Bool, Bool, Bool).self) {
                guard table else { throw LedgerError.storage("\(url) has no DeepRing ledger (run `deepring ledger init --ledger \(url)`)") }
                guard trigger else { throw LedgerError.untrusted("\(url): the ledger table is not append-only (run `deepring ledger init`)") }
                guard readable else { throw LedgerError.untrusted("\(url): user \(url.user) may not read the ledger (grant it deepring_member or deepring_querent)") }
            }
        }
        startListening()
    }

    deinit { close() }

    /// Stops listening and closes every connection (operations after this fail).
    public func close() {
        listener?.cancel()
        let cs = lock.withLock { () -> [PostgresConnection] in closed = true; defer { idle = []; idleLazy = [] }; return idle + idleLazy }
        for c in cs { PostgresLedger.closeLater(c) }
    }

    // MARK: set-up

    static func configuration(_ url: PostgresURL) throws -> PostgresConnection.Configuration {
        let tls: PostgresConnection.Configuration.TLS
        switch url.sslMode {
        case .disable:
            tls = .disable
        case .require:
            var t = TLSConfiguration.makeClientConfiguration()
            t.certificateVerification = .none
            tls = .require(try NIOSSLContext(configuration: t))
        case .verifyFull:
            var t = TLSConfiguration.makeClientConfiguration()
            t.certificateVerification = .fullVerification
            guard let root = url.sslRootCert, FileManager.default.fileExists(atPath: root) else {
                throw LedgerError.invalidArgument("sslrootcert \(url.sslRootCert ?? "-") does not exist")
            }
            t.trustRoots = .file(root)
            tls = .require(try NIOSSLContext(configuration: t))
        }
        var c = PostgresConnection.Configuration(host: url.host, port: url.port, username: url.user, password: url.password,
                                                 database: url.database, tls: tls)
        c.options.connectTimeout = .seconds(10)
        // The server's name for verify-full is the host (postgres-nio's default); an IP address is checked against
        // the certificate's IP addresses instead.
        return c
    }

    /// The schema, the roles and the policies `deepring ledger init` creates (idempotent; run it as the database's
    /// owner). Members log in as roles granted `deepring_member`, querents as roles granted `deepring_querent`.
    /// The bodies of the ledger's trigger functions. They name every table by its schema and run with a fixed
    /// search path, so nothing a role creates (a temporary table named `deepring_entries`, say: `pg_temp` is searched
    /// first for relations) can stand in for what they read; `PostgresLedger` checks at open that the functions are
    /// exactly these.
    static let appendOnlyBody = """
        BEGIN RAISE EXCEPTION 'the DeepRing ledger is append-only: % refused', TG_OP; END
        """
    /// The next row only: one past the last, chained on its stored hash (the first: number 1, the genesis hash) —
    /// refused as a unique violation, which is what a writer that lost the race to that number meets anyway — and
    /// only with its true entry hash (`LedgerEntry.canonicalBytes`, recomputed here), so no row can carry a hash
    /// planted to collide with another writer's next entry. Signatures (Ed25519) are the readers' to check.
    static let chainBody = """
        DECLARE last_seq BIGINT; last_hash BYTEA; q BYTEA;
        BEGIN
          q := CASE WHEN NEW.query_id IS NULL THEN '\\x00'::bytea ELSE '\\x01'::bytea || convert_to(NEW.query_id, 'UTF8') END;
          IF NEW.hash <> sha256(convert_to('DeepRing ledger entry v1', 'UTF8') || int8send(NEW.seq) || NEW.prev_hash
                                || int4send(octet_length(convert_to(NEW.kind, 'UTF8'))) || convert_to(NEW.kind, 'UTF8')
                                || int4send(octet_length(q)) || q
                                || int4send(octet_length(NEW.author)) || NEW.author
                                || int4send(octet_length(NEW.payload)) || NEW.payload) THEN
            RAISE EXCEPTION 'entry %: its hash is not the hash of its fields', NEW.seq USING ERRCODE = 'check_violation';
          END IF;
          SELECT e.seq, e.hash INTO last_seq, last_hash FROM public.deepring_entries e ORDER BY e.seq DESC LIMIT 1;
          IF last_seq IS NULL THEN
            IF NEW.seq <> 1 OR NEW.prev_hash <> pg_catalog.decode(pg_catalog.repeat('00', 32), 'hex') THEN
              RAISE EXCEPTION 'the first entry must be number 1 on the genesis hash' USING ERRCODE = 'unique_violation';
            END IF;
          ELSIF NEW.seq <> last_seq + 1 OR NEW.prev_hash <> last_hash THEN
            RAISE EXCEPTION 'entry % does not follow entry %, the last', NEW.seq, last_seq USING ERRCODE = 'unique_violation';
          END IF;
          RETURN NEW;
        END
        """
    static let functionSearchPath = "search_path=pg_catalog, pg_temp"

    static let initialization: [String] = [
        // Init takes locks that queue behind any open transaction on the table: it gives up rather than stall appends.
        "SET lock_timeout = '5s'",
        """
        CREATE TABLE IF NOT EXISTS deepring_entries (
          seq BIGINT PRIMARY KEY CHECK (seq BETWEEN 1 AND \(LedgerEntry.maxSequence)),
          prev_hash BYTEA NOT NULL CHECK (length(prev_hash) = 32),
          kind TEXT NOT NULL CHECK (kind IN (\(EntryKind.allCases.map { "'\($0.rawValue)'" }.joined(separator: ", ")))),
          query_id TEXT CHECK (query_id IS NULL OR query_id ~ '^[A-Za-z0-9._-]{1,\(LedgerEntry.maxQueryID)}$'),
          author BYTEA NOT NULL CHECK (length(author) = 32),
          payload BYTEA NOT NULL CHECK (length(payload) <= \(LedgerEntry.maxPayload)),
          hash BYTEA NOT NULL UNIQUE CHECK (length(hash) = 32),
          signature BYTEA NOT NULL CHECK (length(signature) = 64)
        )
        """,
        // A ledger made by an older build knows fewer kinds: the closed set is brought up to date.
        "ALTER TABLE deepring_entries DROP CONSTRAINT IF EXISTS deepring_entries_kind_check",
        "ALTER TABLE deepring_entries ADD CONSTRAINT deepring_entries_kind_check CHECK (kind IN (\(EntryKind.allCases.map { "'\($0.rawValue)'" }.joined(separator: ", "))))",
        // Control entries are small (`EntryKind.control`). NOT VALID: rows already there are not re-checked (init
        // stays idempotent on any ledger); every new row is.
        "ALTER TABLE deepring_entries DROP CONSTRAINT IF EXISTS deepring_entries_control_size_check",
        "ALTER TABLE deepring_entries ADD CONSTRAINT deepring_entries_control_size_check CHECK (kind NOT IN (\(EntryKind.control.map { "'\($0.rawValue)'" }.sorted().joined(separator: ", "))) OR length(payload) <= \(LedgerEntry.maxControlPayload)) NOT VALID",
        "CREATE OR REPLACE FUNCTION public.deepring_append_only() RETURNS trigger LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$\(appendOnlyBody)$$",
        "DROP TRIGGER IF EXISTS deepring_no_change ON deepring_entries",
        "CREATE TRIGGER deepring_no_change BEFORE UPDATE OR DELETE ON deepring_entries FOR EACH ROW EXECUTE FUNCTION deepring_append_only()",
        "DROP TRIGGER IF EXISTS deepring_no_truncate ON deepring_entries",
        "CREATE TRIGGER deepring_no_truncate BEFORE TRUNCATE ON deepring_entries FOR EACH STATEMENT EXECUTE FUNCTION deepring_append_only()",
        "CREATE OR REPLACE FUNCTION public.deepring_chain() RETURNS trigger LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$\(chainBody)$$",
        "DROP TRIGGER IF EXISTS deepring_chain ON deepring_entries",
        "CREATE TRIGGER deepring_chain BEFORE INSERT ON deepring_entries FOR EACH ROW EXECUTE FUNCTION deepring_chain()",
        """
        DO $$ BEGIN
          BEGIN CREATE ROLE deepring_member NOLOGIN; EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL; END;
          BEGIN CREATE ROLE deepring_querent NOLOGIN; EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL; END;
        END $$
        """,
        "REVOKE ALL ON deepring_entries FROM PUBLIC",
        "REVOKE ALL ON FUNCTION public.deepring_append_only(), public.deepring_chain() FROM PUBLIC",
        // No temporary objects for anyone but the owner (a place to shadow names, and storage without bounds).
        "DO $$ BEGIN EXECUTE format('REVOKE TEMPORARY ON DATABASE %I FROM PUBLIC', current_database()); END $$",
        "REVOKE ALL ON deepring_entries FROM deepring_member, deepring_querent",
        "GRANT SELECT, INSERT ON deepring_entries TO deepring_member, deepring_querent",
        "ALTER TABLE deepring_entries ENABLE ROW LEVEL SECURITY",
        "DROP POLICY IF EXISTS deepring_read ON deepring_entries",
        "CREATE POLICY deepring_read ON deepring_entries FOR SELECT TO deepring_member, deepring_querent USING (true)",
        "DROP POLICY IF EXISTS deepring_member_insert ON deepring_entries",
        "CREATE POLICY deepring_member_insert ON deepring_entries FOR INSERT TO deepring_member WITH CHECK (true)",
        "DROP POLICY IF EXISTS deepring_querent_insert ON deepring_entries",
        "CREATE POLICY deepring_querent_insert ON deepring_entries FOR INSERT TO deepring_querent WITH CHECK (kind = 'query')",
    ]

    /// `deepring ledger init`: creates (or brings up to date) the ledger's table, its append-only triggers, the
    /// `deepring_member` and `deepring_querent` roles, their grants and row-level security policies.
    public static func initialize(_ url: PostgresURL, logger: Logger = Logger(label: "deepring.ledger.postgres")) throws {
        try execute(initialization, on: url, logger: logger)
    }

    /// Runs SQL statements, one after the other, on a connection of their own (administration: `ledger init`, tests).
    public static func execute(_ statements: [String], on url: PostgresURL, logger: Logger = Logger(label: "deepring.ledger.postgres")) throws {
        let configuration = try configuration(url)
        try blocking(timeout: .seconds(60)) {
            let c = try await PostgresConnection.connect(configuration: configuration, id: 0, logger: logger)
            do {
                for sql in statements { try await PostgresLedger.run(PostgresQuery(unsafeSQL: sql), on: c, logger: logger) }
            } catch {
                try? await c.close()
                throw PostgresLedger.storageError(error, url)
            }
            try? await c.close()
        }
    }

    // MARK: connections

    /// An idle connection, or a new one (with backoff until `until`).
    func checkout(until: ContinuousClock.Instant, lazy: Bool) async throws -> PostgresConnection {
        while let c = lock.withLock({ lazy ? idleLazy.popLast() : idle.popLast() }) {
            if !c.isClosed { return c }
        }
        var pause = Duration.milliseconds(100)
        while true {
            let id = try lock.withLock { () throws -> Int in
                guard !closed else { throw LedgerError.storage("\(url): the ledger was closed") }
                nextID += 1
                return nextID
            }
            do {
                return try await PostgresConnection.connect(configuration: lazy ? lazyConfiguration : configuration, id: id, logger: logger)
            } catch {
                let e = PostgresLedger.storageError(error, url)
                // Refusals (a wrong password, a missing database or role, a certificate that does not verify) are not
                // cured by waiting; a server that is down or unreachable may be back soon.
                guard PostgresLedger.mayBeTransient(error) else { throw e }
                guard ContinuousClock.now + pause < until else { throw e }
                lock.withLock { _connectionEpoch += 1 }
                logger.warning("ledger connection failed; retrying", metadata: ["ledger": "\(url)", "retry_in_ms": "\(PostgresLedger.milliseconds(pause))"])
                try await Task.sleep(for: pause)
                pause = min(pause * 2, .seconds(2))
            }
        }
    }

    /// Gives back a connection after an operation that ended well.
    func checkin(_ c: PostgresConnection, lazy: Bool) {
        let keep = lock.withLock { () -> Bool in
            guard !closed, !c.isClosed, (lazy ? idleLazy : idle).count < PostgresLedger.maxIdle else { return false }
            if lazy { idleLazy.append(c) } else { idle.append(c) }
            return true
        }
        if !keep { PostgresLedger.closeLater(c) }
    }

    /// Closes a connection in the background, holding it until it is closed.
    static func closeLater(_ c: PostgresConnection) { Closing.shared.close(c) }

    static func milliseconds(_ d: Duration) -> Int64 { d.components.seconds * 1000 + d.components.attoseconds / 1_000_000_000_000_000 }

    /// Runs `body` on a connection of its own; a lost connection is closed and the body run again on a new one while
    /// the deadline allows (the body must be safe to repeat). Any other error closes the connection too (it may be in
    /// a failed transaction) and is thrown.
    func withConnection<T: Sendable>(lazy: Bool = false, _ body: @escaping @Sendable (PostgresConnection) async throws -> T) throws -> T {
        let started = ContinuousClock.now
        defer {
            let d = ContinuousClock.now - started
            let s = Double(d.components.seconds) + Double(d.components.attoseconds) * 1e-18
            lock.withLock { _roundTrips.count += 1; _roundTrips.seconds += s }
        }
        return try blocking(timeout: deadline + .seconds(5)) { [self] in
            let until = ContinuousClock.now + deadline
            while true {
                let c = try await checkout(until: until, lazy: lazy)
                do {
                    let limit = min(attemptTimeout, max(.milliseconds(100), until - ContinuousClock.now))
                    let r = try await PostgresLedger.attempt(on: c, within: limit, body)
                    checkin(c, lazy: lazy)
                    return r
                } catch where PostgresLedger.isConnectionError(error) && ContinuousClock.now < until {
                    lock.withLock { _connectionEpoch += 1 }
                    logger.warning("ledger connection lost; reconnecting", metadata: ["ledger": "\(url)"])
                    try? await c.close()
                } catch {
                    try? await c.close()
                    throw PostgresLedger.storageError(error, url)
                }
            }
        }
    }

    /// How long one attempt of an operation may take before its connection is given up as dead (a server that
    /// vanished without closing it) and the operation is tried again on a new one.
    public let attemptTimeout: Duration = .seconds(15)
    /// The server's limit on one statement of ours, below `attemptTimeout`.
    static let statementTimeoutMilliseconds = 12_000

    /// Runs `body` on `c`, closing `c` when it has not finished within `limit` (which fails the body at once). The
    /// timer runs on the connection's event loop: no task is added to the operation's path.
    static func attempt<T: Sendable>(on c: PostgresConnection, within limit: Duration,
                                     _ body: @escaping @Sendable (PostgresConnection) async throws -> T) async throws -> T {
        let expired = ExpiryFlag()
        let timer = c.eventLoop.scheduleTask(in: .nanoseconds(max(1, limit.components.seconds * 1_000_000_000 + limit.components.attoseconds / 1_000_000_000))) {
            expired.set()
            let closing: EventLoopFuture<Void> = c.close()
            closing.whenComplete { _ in }
        }
        defer { timer.cancel() }
        do {
            return try await body(c)   // in time, or just after: the answer stands (a closed connection is not kept)
        } catch {
            if expired.isSet { throw AttemptTimedOut() }
            throw error
        }
    }

    /// Server errors that say "not now" rather than "no": the server is starting, shutting down or crashed, the
    /// connection broke, or it has too many connections.
    static func isServerUnavailable(_ sqlState: String?) -> Bool {
        guard let s = sqlState else { return false }
        return s.hasPrefix("57P") || s.hasPrefix("08") || s == "53300"
    }

    /// True when a failed connection attempt may succeed later (the server down, restarting or unreachable); false
    /// for the server's refusals and for TLS failures.
    static func mayBeTransient(_ error: any Error) -> Bool {
        if error is AttemptTimedOut { return true }
        if let p = error as? PSQLError {
            if isServerUnavailable(p.serverInfo?[.sqlState]) { return true }
            if p.serverInfo != nil || p.code == .sslUnsupported { return false }
            if let u = p.underlying { return mayBeTransient(u) }
            return true
        }
        if error is NIOSSLError || error is BoringSSLError || error is NIOSSLExtraError { return false }
        if case LedgerError.untrusted = error { return false }
        return true
    }

    static func isConnectionError(_ error: any Error) -> Bool {
        if error is SimulatedConnectionLoss || error is AttemptTimedOut { return true }
        guard let e = error as? PSQLError else { return false }
        return [.serverClosedConnection, .clientClosedConnection, .connectionError, .uncleanShutdown].contains(e.code)
            || isServerUnavailable(e.serverInfo?[.sqlState])
    }

    /// Test hook (nil unless a test sets it): runs after an append's COMMIT succeeded, before the append returns — a
    /// test throws `SimulatedConnectionLoss` there to play a connection lost before the commit's answer arrived.
    var afterCommit: (@Sendable () throws -> Void)? {
        get { lock.withLock { _afterCommit } }
        set { lock.withLock { _afterCommit = newValue } }
    }
    private var _afterCommit: (@Sendable () throws -> Void)?

    static func storageError(_ e: any Error, _ url: PostgresURL) -> LedgerError {
        if let l = e as? LedgerError { return l }
        if let p = e as? PSQLError {
            let message = p.serverInfo?[.message] ?? "\(p.code)"
            if p.serverInfo?[.sqlState] == "42501" { return .untrusted("\(url): permission denied (\(message))") }
            return .storage("\(url): \(message)")
        }
        return .storage("\(url): \(e)")
    }

    // MARK: listening

    /// A background connection listening on the channels waits need (`want`); every notification wakes the
    /// waiters. When the set grows, the listener connects again with the new set; until it has read the tail after its
    /// last LISTEN, waits read the table (rows appended meanwhile may have gone unnotified).
    func startListening() {
        let configuration = self.configuration, logger = self.logger, wake = self.wake, configurationDescription = url.description
        let wants = self.wants
        listener = Task.detached(executorPreference: LedgerExecutor.shared) {
            var pause = Duration.milliseconds(100)
            while !Task.isCancelled {
                let channels = wants.channels
                var connection: PostgresConnection?
                do {
                    let c = try await PostgresConnection.connect(configuration: configuration, id: 0, logger: logger)
                    connection = c
                    pause = .milliseconds(100)
                    wake.restarted()
                    try await PostgresLedger.listen(on: c, to: channels[...], streams: []) { streams in
                        // Rows committed after this read are notified: notifications are complete past its tail.
                        var tail: Int64 = 0
                        for try await t in try await c.query("SELECT COALESCE(MAX(seq), 0) FROM deepring_entries", logger: logger).decode(Int64.self) { tail = t }
                        wake.complete(after: tail)
                        wake.listening(true, channels: Set(channels))
                        wake.signal()   // anything appended while (re)connecting is read again
                        try await withThrowingTaskGroup(of: Bool.self) { group in
                            for n in streams { group.addTask { for try await x in n { wake.notified(x.payload) }; return false } }
                            group.addTask {
                                while !Task.isCancelled, wants.channels == channels { try await Task.sleep(for: .milliseconds(100)) }
                                return true
                            }
                            // A stream ended (the connection is gone), or the channels changed: listen again.
                            _ = try await group.next()
                            group.cancelAll()
                            try? await c.close()
                        }
                    }
                    wake.listening(false, channels: [])
                    try? await c.close()
                } catch {
                    wake.listening(false, channels: [])
                    if let c = connection { try? await c.close() }
                    if Task.isCancelled { return }
                    logger.warning("ledger notifications lost; listening again", metadata: ["ledger": "\(configurationDescription)", "retry_in_ms": "\(PostgresLedger.milliseconds(pause))"])
                    try? await Task.sleep(for: pause)
                    pause = min(pause * 2, .seconds(2))
                }
            }
        }
    }

    /// LISTENs on each of `channels` in turn on `c`, then runs `body` with their notification streams.
    static func listen(on c: PostgresConnection, to channels: ArraySlice<String>, streams: [PostgresNotificationSequence],
                       _ body: @Sendable ([PostgresNotificationSequence]) async throws -> Void) async throws {
        guard let first = channels.first else { return try await body(streams) }
        try await c.listen(on: first) { s in try await listen(on: c, to: channels.dropFirst(), streams: streams + [s], body) }
    }

    /// Makes sure the listener listens on what `filters` need (nil: every append).
    func want(_ filters: [EntryFilter]?) { wants.add(filters) }
    private let wants = ChannelWants()

    private nonisolated(unsafe) var _connectionEpoch = 0
    /// Connections lost or refused so far: after one, the server may have crashed and lost its last lazily committed
    /// rows, and readers re-read what they had read last.
    public var connectionEpoch: Int { lock.withLock { _connectionEpoch } }
    private nonisolated(unsafe) var _roundTrips = RoundTrips()
    /// Operations run on the server so far (each one or a few statements), and the time the callers waited for them.
    public var roundTrips: RoundTrips { lock.withLock { _roundTrips } }

    /// True while the listening connection is up (appends elsewhere wake this process's waiters at once).
    public var isListening: Bool { wake.isListening }
    /// The channels the listening connection listens on now (for tests).
    var listenedChannels: Set<String> { wake.listenedChannels }
    /// Notifications received so far (for tests and health reports).
    public var notificationsReceived: Int { wake.notifications }

    /// True when this process's connections to the server use TLS.
    public func connectionUsesTLS() throws -> Bool {
        let logger = self.logger
        return try withConnection { c in
            var tls = false
            for try await b in try await c.query("SELECT COALESCE((SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()), false)", logger: logger).decode(Bool.self) { tls = b }
            return tls
        }
    }

    /// True when this process's sessions refuse writes (`default_transaction_read_only`).
    public func sessionIsReadOnly() throws -> Bool {
        let logger = self.logger
        return try withConnection { c in
            var on = false
            for try await v in try await c.query("SELECT current_setting('default_transaction_read_only')", logger: logger).decode(String.self) { on = v == "on" }
            return on
        }
    }

    // MARK: the watchdog

    /// True when this process's role may end other sessions (a superuser, or a member of `pg_signal_backend`): what
    /// `endHeldAppends` needs.
    public func mayEndOtherSessions() throws -> Bool {
        let logger = self.logger
        return try withConnection { c in
            var may = false
            for try await v in try await c.query("""
                SELECT (SELECT rolsuper FROM pg_roles WHERE rolname = current_user) OR pg_has_role(current_user, 'pg_signal_backend', 'MEMBER')
                """, logger: logger).decode(Bool.self) { may = v }
            return may
        }
    }

    /// A session found holding an uncommitted append to the ledger too long, and whether it was ended.
    public struct HeldAppend: Sendable {
        public let pid: Int32
        public let user: String
        public let seconds: Double
        public let ended: Bool
    }

    /// The owner's watchdog: ends the other sessions whose transaction has held an uncommitted write to the ledger
    /// table for more than `limit` (`pg_terminate_backend`). Any role that may insert (a querent) can insert the next
    /// row and keep its transaction open, and every other append then waits for it: a denial of service, never a fork.
    /// Honest appends are single statements that commit in milliseconds. Returns the sessions found (`ended` false for
    /// one this role may not end: a superuser's, say).
    public func endHeldAppends(olderThan limit: Duration) throws -> [HeldAppend] {
        let logger = self.logger
        let seconds = max(0.1, Double(limit.components.seconds) + Double(limit.components.attoseconds) * 1e-18)
        return try withConnection { c in
            var out: [HeldAppend] = []
            let rows = try await c.query("""
                WITH held AS (
                  SELECT a.pid, COALESCE(a.usename::text, '') AS usename, extract(epoch FROM now() - a.xact_start)::float8 AS secs,
                         -- Only a superuser may end a superuser's session (anything else is an error, not a false).
                         (SELECT rolsuper FROM pg_roles WHERE rolname = current_user)
                           OR NOT COALESCE((SELECT rolsuper FROM pg_roles r WHERE r.oid = a.usesysid), true) AS may
                  FROM pg_stat_activity a
                  WHERE a.datname = current_database() AND a.pid <> pg_backend_pid() AND a.backend_xid IS NOT NULL
                  AND a.xact_start < now() - make_interval(secs => \(seconds))
                  AND EXISTS (SELECT 1 FROM pg_locks l WHERE l.pid = a.pid AND l.relation = 'public.deepring_entries'::regclass
                              AND l.mode = 'RowExclusiveLock' AND l.granted))
                SELECT pid, usename, secs, CASE WHEN may THEN COALESCE(pg_terminate_backend(pid), false) ELSE false END FROM held
                """, logger: logger)
            for try await (pid, user, held, ended) in rows.decode((Int32, String, Double, Bool).self) {
                out.append(HeldAppend(pid: pid, user: user, seconds: held, ended: ended))
            }
            return out
        }
    }

    // MARK: Ledger

    @discardableResult
    public func append(kind: EntryKind, queryID: String?, payload: [UInt8], signer: LedgerSigner, requiring: EntryReference?) throws -> LedgerEntry {
        guard !readOnly else { throw LedgerError.invalidArgument("this ledger was opened read-only") }
        try LedgerEntry.checkAppend(kind: kind, queryID: queryID, payload: payload)
        // No entry is numbered below 1 (and 0 binds as "no dependency"): such a dependency is never there.
        if let d = requiring, d.sequence < 1 { throw LedgerError.dependencyLost(sequence: d.sequence) }
        let logger = self.logger
        // The entry last tried, by its hash: after a lost connection it may have been committed after all.
        let attempt = AttemptBox()
        let hook = afterCommit
        let author = signer.publicKey
        @Sendable func make(_ seq: Int64, _ prev: [UInt8]) throws -> LedgerEntry {
            let hash = LedgerEntry.computeHash(sequence: seq, previousHash: prev, kind: kind, queryID: queryID, author: author, payload: payload)
            return LedgerEntry(sequence: seq, previousHash: prev, kind: kind, queryID: queryID, author: author,
                               payload: payload, hash: hash, signature: try signer.sign(hash))
        }
        let guess = chainOnKnownTail ? lock.withLock { knownTail } : nil
        let lazy = lazyCommits && PostgresLedger.lazyKinds.contains(kind)
        let entry = try withConnection(lazy: lazy) { c in
            if let tried = attempt.entry {
                let found = try await c.query("SELECT seq FROM deepring_entries WHERE hash = \(ByteBuffer(bytes: tried.hash))", logger: logger)
                for try await _ in found { return tried }
            }
            // One round trip: chain on the newest row this process knows of. The chain trigger admits it only if that
            // row is still the last, with that hash (someone may have appended since, or a server crash lost rows
            // committed lazily); otherwise it is refused as a unique violation. Nothing can fork.
            if let (s, h) = guess, s < LedgerEntry.maxSequence, attempt.entry == nil {
                let e = try make(s + 1, h)
                attempt.entry = e
                do {
                    try await PostgresLedger.insert(e, requiring: requiring, on: c, logger: logger)
                    try hook?()
                    self.counters.add(onKnownTail: 1)
                    return e
                } catch let p as PSQLError where p.serverInfo?[.sqlState] == "23505" {
                    attempt.entry = nil   // not written: the tail it knew is not the tail
                }
            }
            // Otherwise read the tail and chain on it; when another writer takes that number first, read it again.
            // No lock (which any role could take and hold): the chain trigger and the primary key admit exactly one
            // row per number, and every conflict means another append went through.
            var conflicts = 0
            while true {
                var seq: Int64 = 1, prev = LedgerEntry.genesisHash
                let tail = try await c.query("SELECT seq, hash FROM deepring_entries ORDER BY seq DESC LIMIT 1", logger: logger)
                for try await (s, h) in tail.decode((Int64, ByteBuffer).self) {
                    guard s < LedgerEntry.maxSequence else { throw LedgerError.storage("the ledger has reached its last sequence number") }
                    seq = s + 1
                    prev = Array(h.readableBytesView)
                }
                let e = try make(seq, prev)
                attempt.entry = e
                do {
                    try await PostgresLedger.insert(e, requiring: requiring, on: c, logger: logger)
                } catch let p as PSQLError where p.serverInfo?[.sqlState] == "23505" {
                    // Another writer took the number (each conflict is another append that went through).
                    attempt.entry = nil
                    conflicts += 1
                    if conflicts > 1000 { throw LedgerError.storage("\(self.url): 1000 appends by others in a row took the next number; giving up") }
                    if conflicts > 3 { try await Task.sleep(for: .microseconds(Int64.random(in: 100...(100 * Int64(min(conflicts, 50)))))) }
                    continue
                }
                try hook?()
                self.counters.add(afterReadingTail: 1)
                return e
            }
        }
        noteTail(entry.sequence, entry.hash)
        return entry
    }

    /// Kinds whose commits do not wait for their own WAL flush: the layer posts between blocks. Nothing outside the
    /// ring waits on them, and every later durable commit (a delivery, an alarm) flushes them with it, so a crash of
    /// the server loses at most a query in flight (its querent gets a refusal or a timeout), never the chain's order.
    public static let lazyKinds: Set<EntryKind> = [.layer]
    /// Turn off to make every commit durable (for measurements).
    public var lazyCommits = true
    /// Turn off to append always after reading the tail (for measurements).
    public var chainOnKnownTail = true

    /// The tail an append will try to chain on first (tests set it to play a row lost in a server crash).
    var assumedTail: (sequence: Int64, hash: [UInt8])? {
        get { lock.withLock { knownTail } }
        set { lock.withLock { knownTail = newValue } }
    }

    /// Remembers the newest row seen (its stored hash, as the next append must chain on it).
    func noteTail(_ seq: Int64, _ hash: [UInt8]) {
        lock.withLock { if knownTail.map({ seq > $0.sequence }) ?? true { knownTail = (seq, hash) } }
    }

    /// Inserts `e` and notifies the channel, in one statement (the notification is sent when the row commits). The
    /// statement is prepared once per connection: parsing and planning it cost more than running it.
    /// With `requiring`, the row goes in only if that entry is there (number and hash), in the same statement: a
    /// post whose input a crashed server lost is refused (`LedgerError.dependencyLost`), never appended after it.
    static func insert(_ e: LedgerEntry, requiring: EntryReference?, on c: PostgresConnection, logger: Logger) async throws {
        var rows = 0
        do {
            for try await _ in try await c.execute(InsertNotified(entry: e, requiring: requiring), logger: logger) { rows += 1 }
        } catch let p as PSQLError where p.serverInfo?[.sqlState] == "54000" {
            // The notification queue is full (a listener holding a transaction open stops it draining): the entry
            // goes in without its notification, and waiters find it at their next re-read.
            for try await _ in try await c.execute(InsertOnly(entry: e, requiring: requiring), logger: logger) { rows += 1 }
        }
        if rows == 0, let d = requiring { throw LedgerError.dependencyLost(sequence: d.sequence) }
    }

    /// Runs a statement to its end, reading every row: an error the server raises while running it (a trigger's
    /// refusal, a policy's) arrives with the rows, and a statement whose rows are not read would drop it unseen.
    static func run(_ query: PostgresQuery, on c: PostgresConnection, logger: Logger) async throws {
        for try await _ in try await c.query(query, logger: logger) {}
    }

    /// How appends went (for tests and `bench ledger`): in one statement on the known tail, or after reading the tail.
    public var appendCounts: (onKnownTail: Int, afterReadingTail: Int) { counters.value }
    let counters = AppendCounters()

    public func rows(from sequence: Int64, limit: Int) throws -> [LedgerRow] {
        let logger = self.logger
        let from = max(1, sequence), limit = max(0, limit)
        guard limit > 0 else { return [] }
        return try withConnection { c in
            let rows = try await PostgresLedger.page(c, logger, "seq >= \(from)", limit: limit, budget: PostgresLedger.readBudget).rows
            if let last = rows.last?.entry { self.noteTail(last.sequence, last.hash) }
            return rows
        }
    }

    public func entries(in range: ClosedRange<Int64>, matching filters: [EntryFilter]) throws -> [LedgerEntry] {
        try pagedEntries(in: range, matching: filters, pageBytes: PostgresLedger.readBudget)
    }

    public func entries(in range: ClosedRange<Int64>, matching filters: [EntryFilter], maxBytes: Int) throws -> LedgerPage {
        if filters.isEmpty { return LedgerPage(entries: [], through: range.upperBound) }
        let logger = self.logger
        let lo = max(1, range.lowerBound), hi = min(range.upperBound, LedgerEntry.maxSequence)
        return try withConnection { c in
            let filter = PostgresLedger.filterSQL(filters)
            let clause = "seq BETWEEN \(lo) AND \(hi) AND (\(filter))"
            let (rows, more) = try await PostgresLedger.page(c, logger, clause, limit: Int.max / 4, budget: maxBytes)
            guard more, let through = rows.last?.sequence else { return LedgerPage(entries: rows.compactMap(\.entry), through: range.upperBound) }
            return LedgerPage(entries: rows.compactMap(\.entry), through: through)
        }
    }

    /// One round trip: the tail (its number and hash, which the next append chains on) and the page after `cursor`,
    /// from one snapshot.
    public func entries(after cursor: Int64, matching filters: [EntryFilter], maxBytes: Int) throws -> (page: LedgerPage, tail: Int64) {
        let logger = self.logger
        let lo = max(0, cursor), b = max(0, maxBytes)
        let statement = PageAfter(cursor: lo, maxBytes: Int64(b), filters: filters)
        let (rows, more, tail) = try withConnection { c -> ([LedgerRow], Bool, (Int64, [UInt8])?) in
            var out: [LedgerRow] = []
            var more = false
            var tail: (Int64, [UInt8])?
            for try await row in try await c.execute(statement, logger: logger) {
                let r = row.makeRandomAccess()
                guard let ts = try? r[0].decode(Int64.self), let th = try? r[1].decode(ByteBuffer.self) else {
                    throw LedgerError.storage("the ledger's tail row does not decode")
                }
                tail = (ts, Array(th.readableBytesView))
                guard let seq = try? r[2].decode(Int64?.self) else { continue }   // no entry matched: the tail alone
                if let m = try? r[10].decode(Bool.self) { more = m }
                do {
                    out.append(PostgresLedger.decode(seq, try r[3].decode(ByteBuffer.self), try r[4].decode(String.self), try r[5].decode(String?.self),
                                                     try r[6].decode(ByteBuffer.self), try r[7].decode(ByteBuffer.self), try r[8].decode(ByteBuffer.self),
                                                     try r[9].decode(ByteBuffer.self)))
                } catch {
                    out.append(.malformed(sequence: seq, reason: "a column has the wrong type"))
                }
            }
            return (out, more, tail)
        }
        guard let (t, h) = tail else { return (LedgerPage(entries: [], through: 0), 0) }
        // The tail as read, even below the one remembered (a crashed server lost rows): the next append chains on it.
        if h.count == 32 { lock.withLock { knownTail = (t, h) } }
        let through = more ? (rows.last?.sequence ?? t) : t
        return (LedgerPage(entries: rows.compactMap(\.entry), through: max(through, lo)), t)
    }

    public func lastSequence() throws -> Int64 {
        let logger = self.logger
        return try withConnection { c in
            var tail: Int64 = 0
            for try await s in try await c.query("SELECT COALESCE(MAX(seq), 0) FROM deepring_entries", logger: logger).decode(Int64.self) { tail = s }
            return tail
        }
    }

    public func waitForRows(after sequence: Int64, timeout: Duration) throws -> [LedgerRow] {
        want(nil)
        let until = ContinuousClock.now + timeout
        while true {
            let generation = wake.generation
            let rows = try rows(from: sequence + 1, limit: 4096)
            if !rows.isEmpty || ContinuousClock.now >= until { return rows }
            // Woken by a notification; at the latest after a second (a notification lost while reconnecting).
            wake.wait(after: generation, for: min(until - ContinuousClock.now, .seconds(1)))
        }
    }

    /// Sleeps on the notifications: returns when one names a row after `sequence` that may match `filters`
    /// (checked against the notifications kept, so rows appended before the call count too), when notifications
    /// may have been missed (not listening, or more arrived than are kept), or at `timeout`. A notification that
    /// wakes a waiter for the first time returns at once, with no round trip (the caller's read finds the row); one
    /// that woke a waiter before is checked against the table, and forgotten when its row is not there — anyone may
    /// NOTIFY, and a forged notification of a row beyond the tail must not wake every later wait at once.
    public func waitForAppend(after sequence: Int64, matching filters: [EntryFilter], timeout: Duration) throws -> Int64 {
        if filters.isEmpty { return try waitForAppend(after: sequence, timeout: timeout) }
        want(filters)
        let until = ContinuousClock.now + timeout
        while true {
            let generation = wake.generation
            switch wake.relevant(after: sequence, filters: filters, claim: true) {
            case .fresh(let seq):
                return seq
            case .yes, .unknown:
                // Notified before (perhaps forged), or not sure (not listening, or notifications may be missing): only
                // what the table says counts.
                let mark = wake.notifications
                let tail = try lastSequence()
                if tail > sequence { return tail }
                wake.forget(above: tail, arrivedBefore: mark)
            case .no: break
            }
            if ContinuousClock.now >= until { return try lastSequence() }
            wake.wait(after: generation, for: min(until - ContinuousClock.now, .seconds(1)))
        }
    }

    public func mayHaveAppended(after sequence: Int64, matching filters: [EntryFilter]) -> Bool {
        if case .no = wake.relevant(after: sequence, filters: filters, claim: false) { return false }
        return true
    }

    public func waitForAppend(after sequence: Int64, timeout: Duration) throws -> Int64 {
        want(nil)
        let until = ContinuousClock.now + timeout
        while true {
            let generation = wake.generation
            let tail = try lastSequence()
            if tail > sequence || ContinuousClock.now >= until { return tail }
            wake.wait(after: generation, for: min(until - ContinuousClock.now, .seconds(1)))
        }
    }

    public func sequencesOutOfRange(limit: Int) throws -> [Int64] {
        // The schema's CHECK keeps them in range — unless the database's owner dropped it: asked, not assumed.
        let logger = self.logger
        return try withConnection { c in
            var out: [Int64] = []
            for try await s in try await c.query("SELECT seq FROM deepring_entries WHERE seq < 1 OR seq > \(LedgerEntry.maxSequence) ORDER BY seq LIMIT \(max(0, limit))",
                                                 logger: logger).decode(Int64.self) { out.append(s) }
            return out
        }
    }

    public func headers(in range: ClosedRange<Int64>, matching filters: [EntryFilter]) throws -> [LedgerRowHeader] {
        if filters.isEmpty { return [] }
        let logger = self.logger
        let lo = max(1, range.lowerBound), hi = min(range.upperBound, LedgerEntry.maxSequence)
        return try withConnection { c in
            let rows = try await c.query(PostgresQuery(unsafeSQL: "SELECT seq, kind, query_id, author FROM deepring_entries WHERE seq BETWEEN \(lo) AND \(hi) AND (\(PostgresLedger.filterSQL(filters))) ORDER BY seq"),
                                         logger: logger)
            var out: [LedgerRowHeader] = []
            for try await (seq, k, q, a) in rows.decode((Int64, String, String?, ByteBuffer).self) {
                guard let kind = EntryKind(rawValue: k), a.readableBytes == 32 else { continue }
                out.append(LedgerRowHeader(sequence: seq, kind: kind, queryID: q, author: Array(a.readableBytesView)))
            }
            return out
        }
    }

    // MARK: rows

    static let columns = "seq, prev_hash, kind, query_id, author, payload, hash, signature"
    /// The most payload bytes one read brings into memory (at least one row).
    public static let readBudget = 256 << 20

    /// Filters as SQL. Every value is a fixed-size key, a kind from the closed set, or a query id of
    /// `[A-Za-z0-9._-]` (checked before it gets here), so they are written as literals safely.
    static func filterSQL(_ filters: [EntryFilter]) -> String {
        filters.map { f -> String in
            var parts: [String] = []
            if let k = f.kind { parts.append("kind = '\(k.rawValue)'") }
            if let a = f.author { parts.append("author = '\\x\(hex(a))'::bytea") }
            if let q = f.queryID { parts.append(LedgerEntry.isValidQueryID(q) ? "query_id = '\(q)'" : "false") }
            return parts.isEmpty ? "true" : "(" + parts.joined(separator: " AND ") + ")"
        }.joined(separator: " OR ")
    }

    /// The rows matching `clause`, in order: at most `limit`, and no more than `budget` bytes of payload (at least one
    /// row) — and whether more rows match. One round trip: the running payload size is summed in the database.
    static func page(_ c: PostgresConnection, _ logger: Logger, _ clause: String, limit: Int, budget: Int) async throws -> (rows: [LedgerRow], more: Bool) {
        let l = max(1, limit), b = max(0, budget)
        let sql = """
            WITH m AS MATERIALIZED (
              SELECT seq, sum(octet_length(payload)::bigint) OVER (ORDER BY seq) AS run, row_number() OVER (ORDER BY seq) AS n
              FROM deepring_entries WHERE \(clause) ORDER BY seq LIMIT \(l + 1)),
            k AS (SELECT seq FROM m WHERE n <= \(l) AND (n = 1 OR run <= \(b)))
            SELECT e.seq, e.prev_hash, e.kind, e.query_id, e.author, e.payload, e.hash, e.signature,
                   (SELECT count(*) FROM m) > (SELECT count(*) FROM k)
            FROM k JOIN deepring_entries e ON e.seq = k.seq ORDER BY e.seq
            """
        var out: [LedgerRow] = []
        var more = false
        for try await row in try await c.query(PostgresQuery(unsafeSQL: sql), logger: logger) {
            do {
                let (seq, prev, kind, q, author, payload, hash, sig, m) = try row.decode((Int64, ByteBuffer, String, String?, ByteBuffer, ByteBuffer, ByteBuffer, ByteBuffer, Bool).self)
                more = m
                out.append(decode(seq, prev, kind, q, author, payload, hash, sig))
            } catch {
                let r = row.makeRandomAccess()
                guard let seq = try? r[0].decode(Int64.self) else { continue }
                if let m = try? r[8].decode(Bool.self) { more = m }
                out.append(.malformed(sequence: seq, reason: "a column has the wrong type"))
            }
        }
        return (out, more)
    }

    /// Checks one row's fields as hostile data (the schema's constraints should already hold; a reader does not rely
    /// on them).
    static func decode(_ seq: Int64, _ prev: ByteBuffer, _ k: String, _ q: String?, _ author: ByteBuffer, _ payload: ByteBuffer,
                       _ hash: ByteBuffer, _ sig: ByteBuffer) -> LedgerRow {
        guard let kind = EntryKind(rawValue: k) else { return .malformed(sequence: seq, reason: "unknown kind") }
        guard prev.readableBytes == 32, author.readableBytes == 32, hash.readableBytes == 32, sig.readableBytes == 64 else {
            return .malformed(sequence: seq, reason: "a key, hash or signature has the wrong size")
        }
        if let q, !LedgerEntry.isValidQueryID(q) { return .malformed(sequence: seq, reason: "query id is not 1–128 characters of [A-Za-z0-9._-]") }
        guard payload.readableBytes <= LedgerEntry.maxPayload else { return .malformed(sequence: seq, reason: "payload is too large") }
        return .entry(LedgerEntry(sequence: seq, previousHash: Array(prev.readableBytesView), kind: kind, queryID: q,
                                  author: Array(author.readableBytesView), payload: Array(payload.readableBytesView),
                                  hash: Array(hash.readableBytesView), signature: Array(sig.readableBytesView)))
    }
}

extension PostgresQuery.StringInterpolation {
    /// Text written into the SQL as is (constants of this file only).
    mutating func appendInterpolation(unescaped text: String) { appendLiteral(text) }
}

/// Connections being closed, held until they are (postgres-nio wants every connection closed before it is freed).
final class Closing: @unchecked Sendable {
    static let shared = Closing()
    private let lock = NSLock()
    private var held: [ObjectIdentifier: PostgresConnection] = [:]

    func close(_ c: PostgresConnection) {
        let id = ObjectIdentifier(c)
        lock.withLock { held[id] = c }
        c.close().whenComplete { [self] _ in
            let done = lock.withLock { held.removeValue(forKey: id) }
            _ = done
        }
    }
}

final class AppendCounters: @unchecked Sendable {
    private let lock = NSLock()
    private var known = 0, read = 0
    func add(onKnownTail k: Int = 0, afterReadingTail r: Int = 0) { lock.withLock { known += k; read += r } }
    var value: (onKnownTail: Int, afterReadingTail: Int) { lock.withLock { (known, read) } }
}

final class ExpiryFlag: @unchecked Sendable {
    private let lock = NSLock()
    private var on = false
    func set() { lock.withLock { on = true } }
    var isSet: Bool { lock.withLock { on } }
}

/// An attempt that did not finish in time (its connection was closed).
struct AttemptTimedOut: Error, CustomStringConvertible {
    var description: String { "no answer from the server in time" }
}

/// What the `afterCommit` test hook throws to play a lost connection.
struct SimulatedConnectionLoss: Error {}

/// The channels the listener listens on: every append's until a wait names what it waits for; then the channels of
/// the filters waited for (and every append's again only once a wait without filters is made).
final class ChannelWants: @unchecked Sendable {
    private let lock = NSLock()
    private var specific: Set<String> = [], all = false, filtered = false

    var channels: [String] {
        lock.withLock {
            var set = specific
            if all || !filtered { set.insert(PostgresLedger.channel) }
            return set.sorted()
        }
    }

    func add(_ filters: [EntryFilter]?) {
        lock.withLock {
            if let f = filters {
                filtered = true
                for x in f { specific.insert(PostgresLedger.channel(for: x)) }
            } else {
                all = true
            }
        }
    }
}

/// The entry an append last tried (shared by the retries of one append).
final class AttemptBox: @unchecked Sendable {
    private let lock = NSLock()
    private var _entry: LedgerEntry?
    var entry: LedgerEntry? {
        get { lock.withLock { _entry } }
        set { lock.withLock { _entry = newValue } }
    }
}

/// A generation counter that waiters sleep on until it moves (or a timeout passes).
final class Wakeups: @unchecked Sendable {
    private let condition = NSCondition()
    private var _generation = 0

    private var _notifications = 0, _listening = false

    var generation: Int { condition.lock(); defer { condition.unlock() }; return _generation }
    var notifications: Int { condition.lock(); defer { condition.unlock() }; return _notifications }
    var isListening: Bool { condition.lock(); defer { condition.unlock() }; return _listening }

    /// The channels listened on while listening.
    private var channels: Set<String> = []

    var listenedChannels: Set<String> { condition.lock(); defer { condition.unlock() }; return channels }

    func listening(_ on: Bool, channels: Set<String>) { condition.lock(); _listening = on; self.channels = channels; condition.unlock() }

    /// The latest notifications of appends, parsed — (seq, kind, author, query id) — at most `kept`, oldest first
    /// from `recentHead`. A payload that does not parse (anyone may NOTIFY on the channel) is not kept: it only
    /// wakes the waiters. Notifications are complete only for rows numbered `completeFrom` or later: the listener
    /// sets it from a read of the tail made after its last LISTEN (never from a notification, which anyone may
    /// forge); nil while it (re)connects. Past `evictedUpTo`, a notification kept may have been pushed out.
    private var recent: [(seq: Int64, kind: EntryKind, author: [UInt8], queryID: String?, claimed: Bool, arrival: Int)] = []
    private var recentHead = 0
    private var completeFrom: Int64?
    private var evictedUpTo: Int64 = 0
    static let kept = 4096

    /// A notification arrived: counted, kept, and the waiters woken.
    func notified(_ payload: String = "") {
        condition.lock()
        _notifications &+= 1
        let f = payload.split(separator: " ", omittingEmptySubsequences: false)
        if f.count == 4, let seq = Int64(f[0]), let kind = EntryKind(rawValue: String(f[1])), let author = unhex(String(f[2])), author.count == 32 {
            let n = (seq, kind, author, f[3].isEmpty ? nil : String(f[3]), false, _notifications)
            if recent.count < Wakeups.kept { recent.append(n) } else {
                evictedUpTo = max(evictedUpTo, recent[recentHead].seq)
                recent[recentHead] = n
                recentHead = (recentHead + 1) % Wakeups.kept
            }
        }
        condition.unlock()
        signal()
    }

    enum Relevance {
        /// A matching notification that has not woken a waiter yet (the newest such row's number).
        case fresh(Int64)
        /// Matching notifications, all of which woke a waiter before (they may be forged: check the table).
        case yes
        case no, unknown
    }

    /// Whether a row after `sequence` that may match `filters` was notified; `unknown` when notifications of rows
    /// after `sequence` may be missing (not listening, appended while the listener reconnected, or forgotten). With
    /// `claim`, the matching notifications are marked as having woken a waiter.
    func relevant(after sequence: Int64, filters: [EntryFilter], claim: Bool) -> Relevance {
        condition.lock(); defer { condition.unlock() }
        guard _listening else { return .unknown }
        // Only notifications on a channel that covers each filter can answer for it.
        if !channels.contains(PostgresLedger.channel) && !filters.allSatisfy({ channels.contains(PostgresLedger.channel(for: $0)) }) { return .unknown }
        guard let from = completeFrom, sequence + 1 >= from, evictedUpTo <= sequence else { return .unknown }
        var matched = false, fresh: Int64?
        for i in recent.indices {
            let n = recent[i]
            guard n.seq > sequence && filters.contains(where: { $0.matches(kind: n.kind, author: n.author, queryID: n.queryID) }) else { continue }
            matched = true
            if !n.claimed { fresh = max(fresh ?? n.seq, n.seq) }
            if claim { recent[i].claimed = true }
        }
        if let f = fresh { return .fresh(f) }
        if matched { return .yes }
        return .no
    }

    /// Drops the kept notifications of rows past `tail` (forged: no such row exists).
    func forget(above tail: Int64, arrivedBefore mark: Int) {
        condition.lock()
        // Only notifications that arrived before the read of `tail` began: a row commits before it is notified, so
        // such a row was there to be read. One that arrived during the read may be of a row committed after it.
        recent.removeAll { $0.seq > tail && $0.arrival <= mark }
        recentHead = 0
        // A notification pushed out that named a row past the tail was forged: it must not keep waits unsure.
        if evictedUpTo > tail { evictedUpTo = tail }
        condition.unlock()
    }

    /// A new listening session: until `complete(after:)`, rows may go unnotified.
    func restarted() {
        condition.lock()
        completeFrom = nil
        condition.unlock()
    }

    /// Every LISTEN of the session is in force, and `tail` was read after them: rows numbered past it are notified.
    func complete(after tail: Int64) {
        condition.lock()
        completeFrom = tail + 1
        condition.unlock()
    }

    func signal() {
        condition.lock()
        _generation &+= 1
        condition.broadcast()
        condition.unlock()
    }

    func wait(after generation: Int, for timeout: Duration) {
        let seconds = Double(timeout.components.seconds) + Double(timeout.components.attoseconds) * 1e-18
        let until = Date(timeIntervalSinceNow: max(0, seconds))
        condition.lock()
        while _generation == generation && condition.wait(until: until) {}
        condition.unlock()
    }
}

final class Outcome<T>: @unchecked Sendable {
    var result: Result<T, any Error>?
    let done = DispatchSemaphore(value: 0)
}

/// A task executor on a thread of its own: the ledger's async work runs there, never on the cooperative pool, so a
/// caller blocked waiting for it (the `Ledger` protocol is synchronous) can never starve it — not even when the caller
/// is itself a task on that pool.
final class LedgerExecutor: TaskExecutor, @unchecked Sendable {
    static let shared = LedgerExecutor()
    private let condition = NSCondition()
    private var jobs: [UnownedJob] = []

    private init() {
        let t = Thread { [unowned self] in self.run() }
        t.name = "deepring.ledger"
        t.start()
    }

    func enqueue(_ job: consuming ExecutorJob) {
        let j = UnownedJob(job)
        condition.lock()
        jobs.append(j)
        condition.signal()
        condition.unlock()
    }

    private func run() {
        while true {
            condition.lock()
            while jobs.isEmpty { condition.wait() }
            let j = jobs.removeFirst()
            condition.unlock()
            j.runSynchronously(on: asUnownedTaskExecutor())
        }
    }
}

/// Runs async work from synchronous code (the `Ledger` protocol is synchronous: blocks run on their own threads), with
/// a deadline: the work is cancelled when it passes. The work runs on `LedgerExecutor`.
func blocking<T>(timeout: Duration = .seconds(60), _ work: @escaping @Sendable () async throws -> T) throws -> T {
    let o = Outcome<T>()
    let task = Task(executorPreference: LedgerExecutor.shared) {
        do { o.result = .success(try await work()) } catch { o.result = .failure(error) }
        o.done.signal()
    }
    let seconds = Double(timeout.components.seconds) + Double(timeout.components.attoseconds) * 1e-18
    if o.done.wait(timeout: .now() + seconds) == .timedOut {
        task.cancel()
        _ = o.done.wait(timeout: .now() + 5)
        throw LedgerError.storage("the ledger did not answer within \(Int(seconds)) s")
    }
    guard let r = o.result else { throw LedgerError.storage("the ledger operation did not finish") }
    return try r.get()
}

// MARK: prepared statements

/// An insert of one entry, its columns bound as $1…$8.
protocol EntryInsert: PostgresPreparedStatement where Row == Bool {
    var entry: LedgerEntry { get }
    /// The entry the insert depends on ($9, $10: number and hash; 0 for none).
    var requiring: EntryReference? { get }
}

extension EntryInsert {
    static var bindingDataTypes: [PostgresDataType] { [.int8, .bytea, .text, .text, .bytea, .bytea, .bytea, .bytea, .int8, .bytea] }
    static var insertSQL: String {
        """
        INSERT INTO deepring_entries (seq, prev_hash, kind, query_id, author, payload, hash, signature)
        SELECT $1, $2, $3, $4, $5, $6, $7, $8
        WHERE $9 = 0 OR EXISTS (SELECT 1 FROM deepring_entries d WHERE d.seq = $9 AND d.hash = $10) RETURNING seq
        """
    }

    func makeBindings() -> PostgresBindings {
        var b = PostgresBindings()
        b.append(entry.sequence)
        b.append(ByteBuffer(bytes: entry.previousHash))
        b.append(entry.kind.rawValue)
        b.append(entry.queryID)
        b.append(ByteBuffer(bytes: entry.author))
        b.append(ByteBuffer(bytes: entry.payload))
        b.append(ByteBuffer(bytes: entry.hash))
        b.append(ByteBuffer(bytes: entry.signature))
        b.append(requiring?.sequence ?? 0)
        b.append(ByteBuffer(bytes: requiring?.hash ?? []))
        return b
    }

    func decodeRow(_ row: PostgresRow) -> Bool { true }
}

/// An append and its notifications on three channels (see `PostgresLedger.channel(kind:author:)`): every append's,
/// the kind's, and the kind and author's. Each names the row as `seq kind author-hex query-id`.
struct InsertNotified: EntryInsert {
    static let name = "deepring_insert_notified_v2"
    static let sql = """
        WITH ins AS (\(insertSQL)), n AS (SELECT seq::text || ' ' || $3 || ' ' || encode($5, 'hex') || ' ' || COALESCE($4, '') AS v FROM ins)
        SELECT pg_notify('\(PostgresLedger.channel)', v), pg_notify('deepring_' || $3, v),
               pg_notify('deepring_' || $3 || '_' || substr(encode($5, 'hex'), 1, 16), v) FROM n
        """
    let entry: LedgerEntry
    let requiring: EntryReference?
}

/// An append without notifications (when the server's notification queue is full).
struct InsertOnly: EntryInsert {
    static let name = "deepring_insert_v2"
    static let sql = insertSQL
    let entry: LedgerEntry
    let requiring: EntryReference?
}

/// The tail (number and hash) and, from the same snapshot, the rows after a cursor that match any of the filters, in
/// order, up to a payload budget (at least one row), and whether more match: the one read of a serving member's step.
/// The filters are bound as three arrays, one element per filter, an empty string (or bytes) for a field the filter
/// leaves open — no stored kind, author or query id is empty — so the statement is prepared once per connection.
struct PageAfter: PostgresPreparedStatement {
    static let name = "deepring_page_after_v1"
    static let sql = """
        WITH t AS (SELECT seq, hash FROM deepring_entries ORDER BY seq DESC LIMIT 1),
        f AS (SELECT * FROM unnest($4::text[], $5::bytea[], $6::text[]) AS f(kind, author, query_id)),
        m AS MATERIALIZED (
          SELECT e.seq, sum(octet_length(e.payload)::bigint) OVER (ORDER BY e.seq) AS run, row_number() OVER (ORDER BY e.seq) AS n
          FROM deepring_entries e WHERE e.seq > $1 AND e.seq <= (SELECT seq FROM t) AND e.seq <= $2
            AND EXISTS (SELECT 1 FROM f WHERE (f.kind = '' OR f.kind = e.kind) AND (f.author = '' OR f.author = e.author)
                                          AND (f.query_id = '' OR f.query_id = e.query_id))
          ORDER BY e.seq),
        k AS (SELECT seq FROM m WHERE n = 1 OR run <= $3)
        SELECT t.seq, t.hash, e.seq, e.prev_hash, e.kind, e.query_id, e.author, e.payload, e.hash, e.signature,
               (SELECT count(*) FROM m) > (SELECT count(*) FROM k)
        FROM t LEFT JOIN (k JOIN deepring_entries e ON e.seq = k.seq) ON true ORDER BY e.seq
        """
    static let bindingDataTypes: [PostgresDataType] = [.int8, .int8, .int8, .textArray, .byteaArray, .textArray]
    let cursor: Int64
    let maxBytes: Int64
    let filters: [EntryFilter]
    func makeBindings() -> PostgresBindings {
        // A filter on a query id that is not well formed, or on an empty author, matches no stored row: it is left
        // out (bound, its empty value would mean "any").
        let fs = filters.filter { ($0.queryID.map(LedgerEntry.isValidQueryID) ?? true) && ($0.author.map { !$0.isEmpty } ?? true) }
        var b = PostgresBindings()
        b.append(cursor)
        b.append(LedgerEntry.maxSequence)
        b.append(maxBytes)
        b.append(fs.map { $0.kind?.rawValue ?? "" })
        b.append(fs.map { ByteBuffer(bytes: $0.author ?? []) })
        b.append(fs.map { $0.queryID ?? "" })
        return b
    }
    func decodeRow(_ row: PostgresRow) -> PostgresRow { row }
}
