import ArgumentParser
import DeepRingEngine
import DeepRingLedger
import DeepRingLedgerPostgres
import DeepRingLedgerSQLite
import Foundation

/// `deepring bench ledger`: what one ledger operation costs on each backend, measured in the same run — the ledger
/// round trips and wake-ups in a query's path (issue "Decentralised DeepRing", performance).
struct BenchLedger: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "ledger",
        abstract: "Time appends, reads and wake-ups on the SQLite ledger and (with --ledger) a PostgreSQL ledger.",
        discussion: """
        Per backend: the latency of an append (p50, p99) with a layer post's payload, on the path a block takes \
        (chaining on the tail it knows, layer posts committed without waiting for their own flush), and with every \
        optimisation off (reading the tail first, durable); a read of the new row; the tail (one round trip); and the wake-up — from an append in one \
        session until another session waiting for rows has it. It writes test entries: --ledger must name an empty, \
        scratch database (it is initialized if needed).
        """)
    @Option(help: ArgumentHelp("A scratch PostgreSQL database: postgres://USER@HOST:PORT/DB[?sslmode=…].", valueName: "url"))
    var ledger: String?
    @Option(help: ArgumentHelp("A file whose first line is the database password (or set PGPASSWORD).", valueName: "file"))
    var passwordFile: String?
    @Option(help: "Timed operations per figure.") var count: Int = 300
    @Option(help: "Payload bytes per append (about a batch-1 MLP layer post).") var payload: Int = 4096
    @Flag(help: "Print one JSON object.") var json = false

    func validate() throws {
        if let l = ledger { try LedgerOptions.checkPostgres(l) }
        if passwordFile != nil && ledger == nil { throw ValidationError("--password-file goes with --ledger") }
        guard (10...100_000).contains(count) else { throw ValidationError("--count must be between 10 and 100000") }
        guard (0...(16 << 20)).contains(payload) else { throw ValidationError("--payload must be between 0 and 16777216") }
    }

    struct Figures { var appendFast: [Double] = [], appendPlain: [Double] = [], read: [Double] = [], wake: [Double] = [], tail: [Double] = [] }

    func run() throws {
        do {
            var results: [(String, Figures)] = []
            let dir = NSTemporaryDirectory() + "deepring-bench-ledger-\(UUID().uuidString.prefix(8))"
            try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
            defer { try? FileManager.default.removeItem(atPath: dir) }
            let path = dir + "/ledger.sqlite"
            results.append(("sqlite", try measure(writer: try SQLiteLedger(path: path), waiter: try SQLiteLedger(path: path),
                                                  plain: nil)))
            if let text = ledger {
                let url = try PostgresURL.parse(text, passwordFile: passwordFile)
                try PostgresLedger.initialize(url, logger: quietLogger("deepring.ledger"))
                let writer = try PostgresLedger(url: url, logger: quietLogger("deepring.ledger"))
                guard try writer.lastSequence() == 0 else {
                    throw ValidationError("\(url) holds a ledger with entries: bench ledger writes test entries, give it an empty scratch database")
                }
                let waiter = try PostgresLedger(url: url, logger: quietLogger("deepring.ledger"))
                let plain = try PostgresLedger(url: url, logger: quietLogger("deepring.ledger"))
                plain.lazyCommits = false
                plain.chainOnKnownTail = false
                // Let the waiter's LISTEN connection come up.
                let until = Date().addingTimeInterval(10)
                while !waiter.isListening && Date() < until { Thread.sleep(forTimeInterval: 0.01) }
                results.append(("postgres", try measure(writer: writer, waiter: waiter, plain: plain)))
            }
            report(results)
        } catch let e as ValidationError { throw e } catch let e as ExitCode { throw e } catch { throw ringFail(error) }
    }

    /// Times `count` operations of each kind, interleaved so that a slow phase of the machine spoils all figures alike.
    func measure(writer: any Ledger, waiter: any Ledger, plain: (any Ledger)?) throws -> Figures {
        let signer = LedgerSigner()
        let body = [UInt8](repeating: 0xA5, count: payload)
        var f = Figures()
        try writer.append(kind: .seal, queryID: nil, payload: [0], signer: signer)
        _ = try writer.rows(from: 1, limit: 1)
        for i in 0..<count {
            let q = "bench\(i)"
            var t0 = now()
            let e = try writer.append(kind: .layer, queryID: q, payload: body, signer: signer)
            f.appendFast.append(now() - t0)
            t0 = now()
            _ = try waiter.rows(from: e.sequence, limit: 1)
            f.read.append(now() - t0)
            t0 = now()
            _ = try waiter.lastSequence()
            f.tail.append(now() - t0)
            if let plain {
                t0 = now()
                try plain.append(kind: .layer, queryID: q, payload: body, signer: signer)
                f.appendPlain.append(now() - t0)
            }
            // The wake-up: the waiter blocks for rows after the tail; the writer appends from another thread.
            let tail = try writer.lastSequence()
            let stamp = TimeBox()
            let appended = DispatchSemaphore(value: 0)
            let appender = Thread {
                Thread.sleep(forTimeInterval: 0.002)
                stamp.set(now())
                _ = try? writer.append(kind: .layer, queryID: q, payload: body, signer: signer)
                appended.signal()
            }
            appender.start()
            let got = try waiter.waitForRows(after: tail, timeout: .seconds(10))
            let woke = now()
            guard !got.isEmpty, let sent = stamp.value else { throw ValidationError("no wake-up within 10 s") }
            f.wake.append(woke - sent)
            appended.wait()
        }
        return f
    }

    func report(_ results: [(String, Figures)]) {
        func pct(_ xs: [Double], _ p: Double) -> Double {
            guard !xs.isEmpty else { return .nan }
            let s = xs.sorted()
            return s[min(s.count - 1, Int((Double(s.count - 1) * p).rounded()))] * 1000
        }
        if json {
            var obj: [String: Any] = ["count": count, "payload_bytes": payload]
            for (name, f) in results {
                obj["\(name)_append_p50_ms"] = pct(f.appendFast, 0.5)
                obj["\(name)_append_p99_ms"] = pct(f.appendFast, 0.99)
                if !f.appendPlain.isEmpty {
                    obj["\(name)_append_plain_p50_ms"] = pct(f.appendPlain, 0.5)
                    obj["\(name)_append_plain_p99_ms"] = pct(f.appendPlain, 0.99)
                }
                obj["\(name)_read_p50_ms"] = pct(f.read, 0.5)
                obj["\(name)_tail_p50_ms"] = pct(f.tail, 0.5)
                obj["\(name)_wake_p50_ms"] = pct(f.wake, 0.5)
                obj["\(name)_wake_p99_ms"] = pct(f.wake, 0.99)
            }
            if let d = try? JSONSerialization.data(withJSONObject: obj, options: [.sortedKeys]) { print(String(decoding: d, as: UTF8.self)) }
            return
        }
        print("ledger operations, \(count) each, \(payload)-byte payloads (milliseconds: p50 / p99)")
        for (name, f) in results {
            print("  " + name.padding(toLength: 9, withPad: " ", startingAt: 0) + String(format: "append %.3f / %.3f", pct(f.appendFast, 0.5), pct(f.appendFast, 0.99))
                  + (f.appendPlain.isEmpty ? "" : String(format: "   (reading the tail first, durable: %.3f / %.3f)", pct(f.appendPlain, 0.5), pct(f.appendPlain, 0.99)))
                  + String(format: "   read %.3f   tail %.3f   wake-up %.3f / %.3f", pct(f.read, 0.5), pct(f.tail, 0.5), pct(f.wake, 0.5), pct(f.wake, 0.99)))
        }
    }
}

final class TimeBox: @unchecked Sendable {
    private let lock = NSLock()
    private var t: Double?
    func set(_ v: Double) { lock.withLock { t = v } }
    var value: Double? { lock.withLock { t } }
}
