import DeepRingLedger
import Foundation

/// Where a PostgreSQL ledger lives:
///
///     postgres://USER[:PASSWORD]@HOST[:PORT]/DB[?sslmode=disable|require|verify-full&sslrootcert=FILE]
///
/// (`postgresql://` too). The password may also come from `PGPASSWORD` or a password file; it is never printed or
/// logged: `description` shows the URL without it.
public struct PostgresURL: Sendable, Equatable, CustomStringConvertible {
    public enum SSLMode: String, Sendable {
        /// No TLS.
        case disable
        /// TLS, without checking the server's certificate.
        case require
        /// TLS; the server's certificate must chain to `sslrootcert` and name the host.
        case verifyFull = "verify-full"
    }

    public var host: String
    public var port: Int
    public var user: String
    public var password: String?
    public var database: String
    public var sslMode: SSLMode
    public var sslRootCert: String?

    public var description: String {
        var s = "postgres://\(user)@\(host):\(port)/\(database)"
        var q: [String] = []
        if sslMode != .disable { q.append("sslmode=\(sslMode.rawValue)") }
        if let c = sslRootCert { q.append("sslrootcert=\(c)") }
        if !q.isEmpty { s += "?" + q.joined(separator: "&") }
        return s
    }

    /// True when `text` names a PostgreSQL ledger (and so should be parsed by `parse`).
    public static func isPostgres(_ text: String) -> Bool { text.hasPrefix("postgres://") || text.hasPrefix("postgresql://") }

    /// Parses a ledger URL. Without a password in it, `PGPASSWORD` or the first line of `passwordFile` is used.
    public static func parse(_ text: String, passwordFile: String? = nil,
                             environment: [String: String] = ProcessInfo.processInfo.environment) throws -> PostgresURL {
        func bad(_ why: String) -> LedgerError {
            .invalidArgument("not a PostgreSQL ledger URL (\(why)); expected postgres://USER[:PASSWORD]@HOST:PORT/DB[?sslmode=disable|require|verify-full&sslrootcert=FILE]")
        }
        guard isPostgres(text), let c = URLComponents(string: text) else { throw bad("it does not parse") }
        guard let host = c.host, !host.isEmpty else { throw bad("no host") }
        guard let user = c.user, !user.isEmpty else { throw bad("no user") }
        let db = String(c.path.dropFirst())
        guard !db.isEmpty, !db.contains("/") else { throw bad("no database name") }
        let port = c.port ?? 5432
        guard (1...65535).contains(port) else { throw bad("port \(port)") }
        var mode = SSLMode.disable, root: String?
        for item in c.queryItems ?? [] {
            switch item.name {
            case "sslmode":
                guard let v = item.value, let m = SSLMode(rawValue: v) else { throw bad("sslmode must be disable, require or verify-full") }
                mode = m
            case "sslrootcert":
                guard let v = item.value, !v.isEmpty else { throw bad("sslrootcert needs a file") }
                root = v
            default:
                throw bad("unknown parameter \(item.name)")
            }
        }
        if mode == .verifyFull && root == nil { throw bad("sslmode=verify-full needs sslrootcert=FILE") }
        var password = c.password
        if password == nil, let p = environment["PGPASSWORD"], !p.isEmpty { password = p }
        if password == nil, let f = passwordFile {
            guard let d = PostgresURL.readSmallRegularFile(f, limit: 4096),
                  let line = String(data: d, encoding: .utf8)?.split(separator: "\n").first else {
                throw LedgerError.invalidArgument("\(f): cannot read a password from it (a regular file of at most 4096 bytes)")
            }
            password = String(line)
        }
        return PostgresURL(host: host, port: port, user: user, password: password, database: db, sslMode: mode, sslRootCert: root)
    }

    /// The bytes of `path` if it is a regular file of at most `limit` bytes: opened without blocking (a FIFO in its
    /// place cannot hang the caller) and sized before it is read.
    static func readSmallRegularFile(_ path: String, limit: Int) -> Data? {
        let fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        var st = stat()
        guard fstat(fd, &st) == 0, (st.st_mode & S_IFMT) == S_IFREG, st.st_size <= limit else { return nil }
        var buffer = [UInt8](repeating: 0, count: limit + 1)
        let n = read(fd, &buffer, limit + 1)
        guard n >= 0, n <= limit else { return nil }
        return Data(buffer[0..<n])
    }
}
