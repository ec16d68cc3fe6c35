@testable import DeepRingClient
@testable import DeepRingNode
@testable import DeepRingOwner
import DeepRingEngine
import DeepRingLedger
import DeepRingLedgerPostgres
import DeepRingProtocol
import DeepRingTestSupport
import Foundation
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// The `deepring` executable that `swift test` builds beside the test bundle.
let deepringBinary: String = {
    let exe = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? CommandLine.arguments[0]
    return URL(fileURLWithPath: exe).deletingLastPathComponent().appendingPathComponent("deepring").path
}()

/// Every suite of this target, one at a time: each keeps a test thread blocked for seconds to minutes (real
/// processes, querents waiting), and Swift Testing's pool has as many threads as the machine has cores — run side by
/// side, these suites starved the rest of the test run.
@Suite(.serialized) struct DeploymentTests {}

/// One member's process (`deepring block serve` or `owner serve`), its log in a file.
final class MemberProcess: @unchecked Sendable {
    let name: String
    let arguments: [String]
    let environment: [String: String]
    let log: String
    private(set) var process: Process?
    private(set) var starts = 0

    init(name: String, arguments: [String], environment: [String: String], log: String) {
        self.name = name; self.arguments = arguments; self.environment = environment; self.log = log
    }

    func start() throws {
        if !FileManager.default.fileExists(atPath: log) { FileManager.default.createFile(atPath: log, contents: nil) }
        guard let h = FileHandle(forWritingAtPath: log) else { throw RingError.notARing("cannot write \(log)") }
        h.seekToEndOfFile()
        let p = Process()
        p.executableURL = URL(fileURLWithPath: deepringBinary)
        p.arguments = arguments
        p.environment = environment
        p.standardError = h
        p.standardOutput = FileHandle.nullDevice
        p.standardInput = FileHandle.nullDevice
        try p.run()
        process = p
        starts += 1
    }

    var pid: Int32 { process?.processIdentifier ?? 0 }
    var isRunning: Bool { process?.isRunning ?? false }

    /// kill -9: no chance to clean up.
    func kill9() {
        guard let p = process, p.isRunning else { return }
        kill(p.processIdentifier, SIGKILL)
        p.waitUntilExit()
    }

    /// SIGTERM, then the exit status (nil if it did not stop within `seconds`).
    @discardableResult
    func terminate(within seconds: Double = 10) -> Int32? {
        guard let p = process, p.isRunning else { return process?.terminationStatus }
        kill(p.processIdentifier, SIGTERM)
        let until = Date().addingTimeInterval(seconds)
        while p.isRunning && Date() < until { usleep(20_000) }
        if p.isRunning { kill(p.processIdentifier, SIGKILL); p.waitUntilExit(); return nil }
        return p.terminationStatus
    }

    var logText: String { (try? String(contentsOfFile: log, encoding: .utf8)) ?? "" }

    /// Waits until the process has logged "serving" `times` times in all (once per start).
    func waitUntilServing(times: Int? = nil, timeout: Double = 60) throws {
        let want = times ?? starts
        let until = Date().addingTimeInterval(timeout)
        while Date() < until {
            if logText.components(separatedBy: "] serving").count - 1 >= want { return }
            if let p = process, !p.isRunning { throw RingError.notARing("\(name) exited with \(p.terminationStatus): \(logText.suffix(2000))") }
            usleep(50_000)
        }
        throw RingError.notARing("\(name) did not start serving within \(timeout) s: \(logText.suffix(2000))")
    }
}

/// A ring sealed into a PostgreSQL ledger and run as separate processes, each started on a private copy of only its
/// own folder — as on separate hosts: `hosts/<block id>/` holds one block's bundle, `hosts/owner/` the owner's
/// folder and ring.json. Blocks and owner log in as `deepring_member` roles, querents as a `deepring_querent` role.
final class ProcessRing: @unchecked Sendable {
    let root: String
    let sealed: String
    let manifest: RingManifest
    let owner: MemberProcess
    let blocks: [MemberProcess]
    /// Spare processes (`block serve --spare`), each on its own copy of its folder.
    let spares: [MemberProcess]
    let memberURL: PostgresURL
    let querentURL: PostgresURL
    let plain: [RingLayer]

    /// Seals `model` through `admin` (a database with an initialized ledger) and starts every member; block i runs
    /// with `DEEPRING_ISA=blockISAs[i mod count]` when `blockISAs` is not empty (blocks on different kernel paths,
    /// as on different CPUs).
    init(model: Model, database admin: PostgresURL, queryTimeout: Double = 20, checkEvery: Double = 0, blockArguments: [String] = [],
         blockISAs: [String] = [],
         spares spareCount: Int = 0, memberURL member: PostgresURL, querentURL querent: PostgresURL) throws {
        root = NSTemporaryDirectory() + "deepring-processes-\(UUID().uuidString.prefix(8))"
        sealed = root + "/sealed"
        try FileManager.default.createDirectory(atPath: root + "/hosts", withIntermediateDirectories: true)
        let ledger = try PostgresLedger(url: member)
        defer { ledger.close() }
        let ring = try SealedRing.seal(model, into: sealed, ledger: ledger, spares: spareCount)
        manifest = ring.manifest
        plain = try ring.plainLayers()
        memberURL = member
        querentURL = querent
        func copy(_ from: String, _ to: String) throws {
            let p = Process()
            p.executableURL = URL(fileURLWithPath: "/bin/cp")
            p.arguments = ["-a", from, to]
            try p.run()
            p.waitUntilExit()
            guard p.terminationStatus == 0 else { throw RingError.notARing("cp -a \(from) \(to) failed") }
        }
        let ownerHost = root + "/hosts/owner"
        try FileManager.default.createDirectory(atPath: ownerHost, withIntermediateDirectories: true)
        try copy(sealed + "/owner", ownerHost + "/owner")
        try copy(sealed + "/ring.json", ownerHost + "/ring.json")
        var env = ProcessInfo.processInfo.environment
        env["PGPASSWORD"] = member.password ?? ""
        env.removeValue(forKey: "DEEPRING_SUPERVISOR_PID")
        let ledgerArgument = member.description   // without the password: that is in PGPASSWORD
        owner = MemberProcess(name: "owner", arguments: ["owner", "serve", "--ring", ownerHost, "--ledger", ledgerArgument,
                                                         "--query-timeout", "\(queryTimeout)", "--check-every", "\(checkEvery)",
                                                         "--log-level", "info"],
                              environment: env, log: root + "/owner.log")
        var bs: [MemberProcess] = []
        for (i, id) in RingPaths(sealed).blockIDs.enumerated() {
            let host = root + "/hosts/" + id
            try copy(sealed + "/blocks/" + id, host)
            var blockEnv = env
            if !blockISAs.isEmpty { blockEnv["DEEPRING_ISA"] = blockISAs[i % blockISAs.count] }
            bs.append(MemberProcess(name: "block \(id)", arguments: ["block", "serve", "--dir", host, "--ledger", ledgerArgument] + blockArguments,
                                    environment: blockEnv, log: root + "/block-\(id).log"))
        }
        blocks = bs
        var ss: [MemberProcess] = []
        for id in RingPaths(sealed).spareIDs {
            let host = root + "/hosts/" + id
            try copy(sealed + "/spares/" + id, host)
            ss.append(MemberProcess(name: "spare \(id)", arguments: ["block", "serve", "--spare", "--dir", host, "--ledger", ledgerArgument],
                                    environment: env, log: root + "/spare-\(id).log"))
        }
        spares = ss
        for m in [owner] + blocks + spares { try m.start() }
        for m in [owner] + blocks { try m.waitUntilServing() }
        for m in spares where !waitForLog(m, "waiting as a spare", timeout: 60) {
            throw RingError.notARing("\(m.name) did not start: \(m.logText.suffix(2000))")
        }
    }

    /// Where block `position`'s process keeps its folder (its host's copy).
    func host(position: Int) throws -> String {
        root + "/hosts/" + (try SealedRing.open(sealed).placement[position - 1])
    }

    /// Waits until `member`'s log holds `text` `times` times.
    func waitForLog(_ member: MemberProcess, _ text: String, times: Int = 1, timeout: Double = 30) -> Bool {
        let until = Date().addingTimeInterval(timeout)
        while Date() < until {
            if member.logText.components(separatedBy: text).count - 1 >= times { return true }
            usleep(50_000)
        }
        return false
    }

    /// The block process that computes layer `position` (1-based; only the owner's record knows it).
    func block(position: Int) throws -> MemberProcess {
        let ring = try SealedRing.open(sealed)
        let id = ring.placement[position - 1]
        guard let m = blocks.first(where: { $0.name == "block \(id)" }) else { throw RingError.notARing("no process for block \(id)") }
        return m
    }

    /// Stops the block at `position` and starts it again with `--attack-perturb 0.5` (a compromised block): the
    /// running process.
    func restartPerturbing(position: Int) throws -> MemberProcess {
        let bad = try block(position: position)
        _ = bad.terminate()
        let perturbing = MemberProcess(name: bad.name, arguments: bad.arguments + ["--attack-perturb", "0.5"],
                                       environment: bad.environment, log: bad.log + ".attack")
        try perturbing.start()
        try perturbing.waitUntilServing()
        return perturbing
    }

    /// The plain model's logits for `x`, from the owner's checkpoint.
    func expected(_ x: Tensor) throws -> Tensor {
        var y = x.reshaped([x.batch] + manifest.inputShape)
        for l in plain { y = try l.model().checkedForward(y) }
        return y
    }

    func querent() throws -> QuerentSession {
        QuerentSession(manifest: manifest, ledger: try PostgresLedger(url: querentURL))
    }

    /// Every member stopped by SIGTERM: their exit statuses (nil for one that had to be killed).
    func stop() -> [Int32?] { ([owner] + blocks + spares).map { $0.terminate() } }

    deinit {
        for m in [owner] + blocks + spares where m.isRunning { m.kill9() }
        try? FileManager.default.removeItem(atPath: root)
    }

    var logs: String { ([owner] + blocks + spares).map { "== \($0.name)\n" + String($0.logText.suffix(3000)) }.joined(separator: "\n") }
}

/// The files process `pid` has open now (the targets of /proc/PID/fd that are paths).
func openFiles(_ pid: Int32) -> [String] {
    let dir = "/proc/\(pid)/fd"
    return ((try? FileManager.default.contentsOfDirectory(atPath: dir)) ?? []).compactMap { fd in
        guard let t = try? FileManager.default.destinationOfSymbolicLink(atPath: dir + "/" + fd), t.hasPrefix("/") else { return nil }
        return t
    }
}

/// Outcomes of a stream of queries.
final class QueryLog: @unchecked Sendable {
    private let lock = NSLock()
    private(set) var answered = 0, wrong = 0
    private(set) var errors: [String] = []
    func record(_ r: Result<Bool, Error>) {
        lock.lock(); defer { lock.unlock() }
        switch r {
        case .success(true): answered += 1
        case .success(false): wrong += 1
        case .failure(let e): errors.append("\(e)")
        }
    }
    var count: Int { lock.lock(); defer { lock.unlock() }; return answered + wrong + errors.count }
    var answeredCount: Int { lock.lock(); defer { lock.unlock() }; return answered }
}
