import ArgumentParser
import DeepRingNode
import DeepRingOwner
import DeepRingEngine
import DeepRingLedger
import DeepRingLedgerPostgres
import DeepRingLedgerSQLite
import DeepRingProtocol
import Foundation
import Logging

/// Where a command finds the ring's ledger: a PostgreSQL database (`--ledger URL`), a SQLite ledger file
/// (`--ledger PATH`: a ring's ledger.sqlite, for processes on one host), or by default the ring folder's
/// `ledger.sqlite`.
struct LedgerOptions: ParsableArguments {
    @Option(help: ArgumentHelp("The ring's ledger: a PostgreSQL database, or the path of a SQLite ledger file (default: the ring folder's ledger.sqlite).",
                               discussion: "postgres://USER[:PASSWORD]@HOST:PORT/DB[?sslmode=disable|require|verify-full&sslrootcert=FILE]",
                               valueName: "url|path"))
    var ledger: String?
    @Option(help: ArgumentHelp("A file whose first line is the database password (or set PGPASSWORD).", valueName: "file"))
    var passwordFile: String?

    func validate() throws {
        if let l = ledger { try LedgerOptions.check(l) }
        if passwordFile != nil && !(ledger.map(PostgresURL.isPostgres) ?? false) {
            throw ValidationError("--password-file goes with --ledger postgres://…")
        }
    }

    /// Refuses a malformed PostgreSQL URL, or a path that is not a regular file (before anything connects).
    static func check(_ text: String) throws {
        if PostgresURL.isPostgres(text) {
            do { _ = try PostgresURL.parse(text, passwordFile: nil, environment: [:]) } catch { throw ValidationError("\(error)") }
        } else {
            guard !text.contains("://") else { throw ValidationError("--ledger takes a postgres:// URL or the path of a SQLite ledger file") }
            guard InputFile.isRegular(text) else {
                throw ValidationError("--ledger \(text): no such ledger file (a postgres:// URL, or the path of a ring's ledger.sqlite)")
            }
        }
    }

    /// Refuses what is not a well-formed PostgreSQL URL.
    static func checkPostgres(_ text: String) throws {
        guard PostgresURL.isPostgres(text) else { throw ValidationError("--ledger takes a postgres:// URL") }
        try check(text)
    }

    /// The PostgreSQL ledger's URL (with its password), or nil for a SQLite file.
    func postgresURL() throws -> PostgresURL? {
        guard let l = ledger, PostgresURL.isPostgres(l) else { return nil }
        return try PostgresURL.parse(l, passwordFile: passwordFile)
    }

    /// Opens the ledger: the database, the file given, or `ring`'s ledger.sqlite. A reader's ledger cannot write.
    func open(ring: String?, readOnly: Bool, logger: Logger = quietLogger("deepring.ledger")) throws -> any Ledger {
        if let url = try postgresURL() { return try PostgresLedger(url: url, readOnly: readOnly, logger: logger) }
        if let path = ledger { return try SQLiteLedger(path: path, readOnly: readOnly) }
        guard let ring else { throw ValidationError("give --ring DIR or --ledger URL") }
        let path = RingPaths(ring).ledger
        guard InputFile.isRegular(path) else {
            throw RingError.notARing("\(ring) has no ledger.sqlite (its ledger is in a database? give --ledger URL)")
        }
        return try SQLiteLedger(path: path, readOnly: readOnly)
    }
}

struct LedgerCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "ledger", abstract: "Create, audit or show a ring's ledger.", subcommands: [Init.self, Audit.self, Show.self])

    struct Init: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Create the ledger's table, append-only triggers and least-privilege roles in a PostgreSQL database.",
            discussion: """
            Idempotent: run it again to bring a database up to date; entries already there are kept. Run it as the \
            database's owner. It creates the group roles deepring_member (SELECT and INSERT: the owner and the blocks) \
            and deepring_querent (SELECT, and INSERT of query rows only); give each party a login role of its own, for \
            example: CREATE ROLE block7 LOGIN PASSWORD '…' IN ROLE deepring_member. UPDATE, DELETE and TRUNCATE are \
            refused by a trigger, whoever asks. The password is never printed or logged.
            """)
        @Option(help: ArgumentHelp("The database: postgres://USER[:PASSWORD]@HOST:PORT/DB[?sslmode=…&sslrootcert=FILE].", valueName: "url"))
        var ledger: String
        @Option(help: ArgumentHelp("A file whose first line is the database password (or set PGPASSWORD).", valueName: "file"))
        var passwordFile: String?

        func validate() throws { try LedgerOptions.checkPostgres(ledger) }

        func run() throws {
            do {
                let url = try PostgresURL.parse(ledger, passwordFile: passwordFile)
                try PostgresLedger.initialize(url, logger: quietLogger("deepring.ledger"))
                let l = try PostgresLedger(url: url, readOnly: true, logger: quietLogger("deepring.ledger"))
                let n = try l.lastSequence()
                l.close()
                print("ledger ready at \(url): table \(PostgresLedger.table) (\(plural(Int(n), "entry", "entries"))), append-only triggers, roles deepring_member and deepring_querent")
            } catch let e as ExitCode { throw e } catch { throw ringFail(error) }
        }
    }

    struct Audit: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Re-verify the whole chain, every signature and every author; name the first bad row.",
            discussion: """
            Member keys are taken only from the seal and reshuffle entries the ouroboros signed, and the ouroboros's \
            key only from a manifest the owner signed (the owner's folder, or ring.json checked against the pinned \
            owner key). Reads only: it can run beside a query. Exit status: 0 clean, 3 compromised, 1 error.
            """)
        @Option(help: "Ring directory (or a folder holding only its ring.json).") var ring: String
        @Option(help: "The owner key's fingerprint (or hex key) to trust for ring.json when the owner's folder is absent.") var ownerKey: String?
        @OptionGroup var ledgerOptions: LedgerOptions

        func validate() throws {
            if let k = ownerKey, !KeyFingerprint.isWellFormed(k) { throw ValidationError("--owner-key must be SHA256:… (as `seal` prints it) or 64 hex digits") }
        }

        func run() throws {
            do {
                let manifest = try trustedManifest(ring, ownerKey: ownerKey)
                let report: AuditReport
                if ledgerOptions.ledger == nil {
                    report = try RingAudit.audit(ledgerPath: RingPaths(ring).ledger, manifest: manifest)
                } else {
                    report = RingAudit.audit(try ledgerOptions.open(ring: ring, readOnly: true), manifest: manifest)
                }
                print(report)
                if !report.isClean { throw ExitCode(exitNotAuthentic) }
            } catch let e as ExitCode { throw e } catch { throw ringFail(error) }
        }
    }

    struct Show: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Print ledger entries (public data only: hashes, sizes, keys); rows that cannot be decoded are named.")
        @Option(help: "Ring directory (its ledger.sqlite; not needed with --ledger).") var ring: String?
        @OptionGroup var ledgerOptions: LedgerOptions
        @Option(help: "Only the last N entries.") var last: Int?
        @Flag(help: "One JSON object per line.") var json = false

        func validate() throws {
            if let n = last, n < 0 { throw ValidationError("--last must be 0 or more") }
            if ring == nil && ledgerOptions.ledger == nil { throw ValidationError("give --ring DIR or --ledger URL") }
        }

        func run() throws {
            do {
                let ledger = try ledgerOptions.open(ring: ring, readOnly: true)
                // Paged, so that a ledger of many gigabytes is printed in bounded memory.
                let tail = try ledger.lastSequence()
                var next: Int64 = last.map { tail - Int64($0) + 1 } ?? 1
                next = max(1, next)
                if last == 0 { next = tail + 1 }
                var malformed = 0
                while next <= tail {
                    let page = try ledger.rows(from: next, limit: 16)
                    guard let lastInPage = page.last else { break }
                    next = lastInPage.sequence + 1
                    for r in page {
                        switch r {
                        case .entry(let e):
                            let h = hex(e.hash.prefix(8)), a = hex(e.author.prefix(6))
                            if json {
                                let obj: [String: Any] = ["seq": e.sequence, "kind": e.kind.rawValue, "query": e.queryID ?? NSNull(),
                                                          "author": hex(e.author), "payload_bytes": e.payload.count, "hash": hex(e.hash)]
                                print(String(decoding: try JSONSerialization.data(withJSONObject: obj, options: [.sortedKeys]), as: UTF8.self))
                            } else {
                                print("\(e.sequence)\t\(e.kind.rawValue)\t\(e.queryID ?? "-")\tauthor \(a)…\t\(e.payload.count) B\thash \(h)…")
                            }
                        case .malformed(let seq, let reason):
                            malformed += 1
                            if json {
                                let obj: [String: Any] = ["seq": seq, "malformed": reason]
                                print(String(decoding: try JSONSerialization.data(withJSONObject: obj, options: [.sortedKeys]), as: UTF8.self))
                            } else {
                                print("\(seq)\tMALFORMED\t\(reason)")
                            }
                        }
                    }
                }
                if malformed > 0 { stderrPrint("note: \(malformed) row\(malformed == 1 ? "" : "s") cannot be decoded; run `deepring ledger audit`") }
            } catch let e as ExitCode { throw e } catch { throw ringFail(error) }
        }
    }
}

/// A logger for a command's libraries: warnings and errors only, on stderr (serving processes log more).
func quietLogger(_ label: String) -> Logger {
    var l = Logger(label: label)
    l.logLevel = .warning
    return l
}
