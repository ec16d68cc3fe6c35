import DeepRingLedger
import DeepRingLedgerPostgres
import Foundation
import Testing

/// The PostgreSQL server the tests use: `DEEPRING_TEST_POSTGRES_URL` (a superuser's URL; `.ci/run` starts a throw-away
/// server with `scripts/postgres.sh` and exports it). Without it these tests skip — unless `DEEPRING_REQUIRE_POSTGRES=1`
/// (CI), where a missing server is a failure.
public enum TestPostgres {
    public static let environment = ProcessInfo.processInfo.environment
    public static let url = environment["DEEPRING_TEST_POSTGRES_URL"]
    public static let ca = environment["DEEPRING_TEST_POSTGRES_CA"]
    public static let required = environment["DEEPRING_REQUIRE_POSTGRES"] == "1"
    public static var available: Bool { url != nil }
    public static let skipMessage: Comment = "no PostgreSQL server: set DEEPRING_TEST_POSTGRES_URL (scripts/postgres.sh start DIR prints one)"

    public static func admin() throws -> PostgresURL {
        guard let u = url else { throw LedgerError.invalidArgument("DEEPRING_TEST_POSTGRES_URL is not set") }
        return try PostgresURL.parse(u, environment: [:])
    }

    /// A fresh database holding an initialized ledger, dropped when the test ends.
    public static func database() throws -> TestDatabase {
        var server = try admin()
        let name = "deepring_t_" + UUID().uuidString.replacingOccurrences(of: "-", with: "").lowercased().prefix(16)
        try PostgresLedger.execute(["CREATE DATABASE \(name)"], on: server)
        server.database = String(name)
        try PostgresLedger.initialize(server)
        return TestDatabase(url: server)
    }

    /// A login role of `group` (deepring_member or deepring_querent) with a password; its URL on `db`.
    public static func role(_ group: String, on db: TestDatabase) throws -> PostgresURL {
        let name = "r_" + UUID().uuidString.replacingOccurrences(of: "-", with: "").lowercased().prefix(12)
        let password = UUID().uuidString
        try PostgresLedger.execute(["CREATE ROLE \(name) LOGIN PASSWORD '\(password)' IN ROLE \(group)"], on: db.url)
        var u = db.url
        u.user = String(name)
        u.password = password
        return u
    }
}

public final class TestDatabase: @unchecked Sendable {
    public let url: PostgresURL
    public init(url: PostgresURL) { self.url = url }
    deinit {
        var admin = url
        admin.database = "postgres"
        try? PostgresLedger.execute(["DROP DATABASE IF EXISTS \(url.database) WITH (FORCE)"], on: admin)
    }
}

/// A server of the test's own (`scripts/postgres.sh`), for faults that would disturb other tests: a crash and restart.
public final class OwnPostgres: @unchecked Sendable {
    public static let script = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent().appendingPathComponent("scripts/postgres.sh").path
    public static var canStart: Bool {
        FileManager.default.fileExists(atPath: script)
            && ((try? FileManager.default.contentsOfDirectory(atPath: "/usr/lib/postgresql")) ?? []).contains {
                FileManager.default.isExecutableFile(atPath: "/usr/lib/postgresql/\($0)/bin/initdb")
            }
    }
    public let dir: String
    public let url: PostgresURL

    public init() throws {
        dir = NSTemporaryDirectory() + "deepring-pg-\(UUID().uuidString.prefix(8))"
        let out = try OwnPostgres.run(["start", dir])
        guard let line = out.split(separator: "\n").first(where: { $0.hasPrefix("DEEPRING_TEST_POSTGRES_URL=") }) else {
            throw LedgerError.storage("scripts/postgres.sh printed no URL: \(out)")
        }
        url = try PostgresURL.parse(String(line.dropFirst("DEEPRING_TEST_POSTGRES_URL=".count)), environment: [:])
    }

    deinit {
        _ = try? OwnPostgres.run(["stop", dir, "--immediate"])
        try? FileManager.default.removeItem(atPath: dir)
    }

    public func crash() throws { _ = try OwnPostgres.run(["stop", dir, "--immediate"]) }
    public func restart() throws { _ = try OwnPostgres.run(["restart", dir]) }

    @discardableResult
    public static func run(_ args: [String]) throws -> String {
        // Output to a file, not a pipe: the server the script starts would inherit the pipe and hold it open.
        let log = NSTemporaryDirectory() + "deepring-pg-\(UUID().uuidString).log"
        FileManager.default.createFile(atPath: log, contents: nil)
        defer { try? FileManager.default.removeItem(atPath: log) }
        guard let h = FileHandle(forWritingAtPath: log) else { throw LedgerError.storage("cannot write \(log)") }
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/bin/bash")
        p.arguments = [script] + args
        p.standardOutput = h
        p.standardError = h
        p.standardInput = FileHandle.nullDevice
        try p.run()
        p.waitUntilExit()
        try? h.close()
        let out = (try? String(contentsOfFile: log, encoding: .utf8)) ?? ""
        guard p.terminationStatus == 0 else { throw LedgerError.storage("scripts/postgres.sh \(args.joined(separator: " ")): \(out)") }
        return out
    }
}
