@testable import DeepRingClient
@testable import DeepRingOwner
import DeepRingEngine
import DeepRingData
import DeepRingLedger
import DeepRingLedgerPostgres
import DeepRingProtocol
import DeepRingTestSupport
import Foundation
import Testing
#if canImport(Glibc)
import Glibc
#endif

let packageRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
/// `../shared/data/mnist` beside the package, when present (CI has it).
let mnistDirectory: String? = {
    let p = packageRoot.deletingLastPathComponent().appendingPathComponent("shared/data/mnist").path
    return IDX.mnistPresent(in: p) ? p : nil
}()

func smallModel(seed: UInt64 = 3) throws -> Model {
    try Model(.mlp(inputShape: [6, 6, 1], classes: 4, hidden: [16, 12, 8, 6]), seed: seed)
}

/// Roles for a ring on a test database: a member login for the owner and blocks, a querent login.
func roles(_ db: TestDatabase) throws -> (member: PostgresURL, querent: PostgresURL) {
    (try TestPostgres.role("deepring_member", on: db), try TestPostgres.role("deepring_querent", on: db))
}

/// Queries `inputs` one image at a time on `threads` querents at once; each answer is checked bit for bit against
/// the plain model's row.
func stream(_ ring: ProcessRing, _ inputs: Tensor, threads: Int, timeout: Double = 30, log: QueryLog,
            stopWhen: @escaping @Sendable () -> Bool = { false }) throws {
    let expected = try ring.expected(inputs)
    let n = inputs.batch, classes = expected.shape[1]
    let sessions = try (0..<threads).map { _ in try ring.querent() }
    DispatchQueue.concurrentPerform(iterations: threads) { t in
        var i = t
        while i < n && !stopWhen() {
            let x = inputs.slice(i..<(i + 1))
            log.record(Result {
                let r = try sessions[t].query(x, timeout: timeout)
                return r.logits.data == Array(expected.data[(i * classes)..<((i + 1) * classes)])
            })
            i += threads
        }
    }
    for s in sessions { (s.ledger as? PostgresLedger)?.close() }
}

/// (author, query) pairs with more than one layer post, and the validation alarms: a restarted member that answered
/// an input twice shows in both.
func doublePosts(_ ring: ProcessRing) throws -> (posts: [String], validationAlarms: Int) {
    let l = try PostgresLedger(url: ring.querentURL, readOnly: true)
    defer { l.close() }
    let tail = try l.lastSequence()
    let heads = try l.headers(in: 1...max(1, tail), matching: [EntryFilter(kind: .layer), EntryFilter(kind: .alarm)])
    var seen: [String: Int] = [:]
    var alarms = 0
    for h in heads where h.kind == .layer { seen[hex(h.author) + " " + (h.queryID ?? ""), default: 0] += 1 }
    for h in heads where h.kind == .alarm {
        if let e = try l.entry(at: h.sequence), let a = try? Alarm.decode(e), case .validation = a.body { alarms += 1 }
    }
    return (seen.filter { $0.value > 1 }.map(\.key), alarms)
}

/// Audits the ring's ledger as the querent would (the owner-signed manifest).
func audit(_ ring: ProcessRing) throws -> AuditReport {
    let l = try PostgresLedger(url: ring.querentURL, readOnly: true)
    defer { l.close() }
    return RingAudit.audit(l, manifest: ring.manifest)
}

extension DeploymentTests {
    @Suite(.enabled(if: TestPostgres.available, TestPostgres.skipMessage), .serialized)
    struct ProcessRingTests {
        /// The deployment of issue 14: the owner and five blocks as six processes, each on a private copy of its own folder
        /// only, over PostgreSQL; four querents at once. 1,000 MNIST test images, one per query, each answer bit-identical
        /// to the plain model's (784→900→600→300→100→10, as in the paper; its weights need not be trained for that).
        @Test(.timeLimit(.minutes(10)))
        func thousandMNISTQueriesThroughSeparateProcessesAreBitIdentical() throws {
            guard let dir = mnistDirectory else {
                if TestPostgres.required { Issue.record("MNIST is missing in CI (../shared/data/mnist)") }
                print("skipped: MNIST is not in ../shared/data/mnist")
                return
            }
            let db = try TestPostgres.database()
            let (member, querent) = try roles(db)
            let model = try Model(.mlp(inputShape: [28, 28, 1], classes: 10, hidden: [900, 600, 300, 100]), seed: 14)
            let ring = try ProcessRing(model: model, database: db.url, memberURL: member, querentURL: querent)
            let test = try DatasetLoader.load(name: "mnist", directory: dir).test.prefix(1000)
            let log = QueryLog()
            try stream(ring, test.tensor, threads: 4, log: log)
            #expect(log.answered == 1000, "\(log.errors.prefix(3))\n\(ring.logs)")
            #expect(log.wrong == 0)
            let report = try audit(ring)
            #expect(report.isClean, "\(report)")
            // Keys rotated over the ledger on the way (`owner serve` rotates every 100 queries by default): every
            // block process took on new keys at least once.
            #expect(ring.waitForLog(ring.owner, "] rotated", times: 5, timeout: 1), "\(ring.logs)")
            for b in ring.blocks { #expect(ring.waitForLog(b, "] rotated", timeout: 1), "\(b.logText)") }
            // Each process holds only its own folder: the block processes were given nothing but their bundle.
            for (i, b) in ring.blocks.enumerated() {
                let args = b.arguments.joined(separator: " ")
                #expect(!args.contains(ring.sealed) && !args.contains("/owner"), "block \(i): \(args)")
            }
            // … and what each process has open (its /proc/PID/fd) of the ring's files is in its own folder only.
            for m in [ring.owner] + ring.blocks {
                let own = m === ring.owner ? ring.root + "/hosts/owner" : (m.arguments.drop { $0 != "--dir" }.dropFirst().first ?? "?")
                // (Its log, which the test keeps beside the hosts, aside.)
                let open = openFiles(m.pid).filter { $0.hasPrefix(ring.root + "/hosts/") || $0.hasPrefix(ring.sealed) }
                #expect(!open.isEmpty, "\(m.name) holds its lock file open: the listing sees it")
                #expect(open.allSatisfy { $0.hasPrefix(own + "/") }, "\(m.name) has open: \(open)")
            }
            #expect(ring.stop().allSatisfy { $0 == 0 }, "every member stops cleanly on SIGTERM\n\(ring.logs)")
        }

        /// Issue 15's mixed-CPU ring: the blocks run different kernel paths (`DEEPRING_ISA`, every path this CPU runs,
        /// the portable one among them), as blocks on hosts with different CPUs would. Every answer is bit-identical to
        /// the plain model computed here, and no block's validation of its predecessor (Eq. 13) raises an alarm: every
        /// path computes the same bits.
        @Test(.timeLimit(.minutes(20)))   // 300 images take seconds; the whole test set (see below) minutes
        func blocksOnDifferentKernelPathsAgreeBitForBit() throws {
            // 300 images by default; DEEPRING_MIXED_RING_IMAGES=10000 runs the whole MNIST test set (issue 15's check).
            var count = 300
            if let requested = ProcessInfo.processInfo.environment["DEEPRING_MIXED_RING_IMAGES"] {
                count = try #require(Int(requested), "DEEPRING_MIXED_RING_IMAGES=\(requested) is not a count")
                try #require(count > 0, "DEEPRING_MIXED_RING_IMAGES must be at least 1")
            }
            let db = try TestPostgres.database()
            let (member, querent) = try roles(db)
            let model = try Model(.mlp(inputShape: [28, 28, 1], classes: 10, hidden: [900, 600, 300, 100]), seed: 15)
            let isas = ISA.supported.map(\.rawValue)
            #expect(isas.count >= 2, "this CPU runs one kernel path only: \(isas)")
            let ring = try ProcessRing(model: model, database: db.url, blockISAs: isas, memberURL: member, querentURL: querent)
            let images: Tensor
            if let dir = mnistDirectory {
                images = try DatasetLoader.load(name: "mnist", directory: dir).test.prefix(count).tensor
            } else {
                print("MNIST is not in ../shared/data/mnist: synthetic digits instead")
                images = SyntheticDigits.generate(count: count, seed: 15).tensor
            }
            let log = QueryLog()
            try stream(ring, images, threads: 2, log: log)
            print("mixed-ISA ring (\(isas.joined(separator: ", "))): \(log.answered) of \(images.batch) answered, \(log.wrong) wrong")
            #expect(log.answered == images.batch, "\(log.errors.prefix(3))\n\(ring.logs)")
            #expect(log.wrong == 0)
            #expect(try doublePosts(ring).validationAlarms == 0, "\(ring.logs)")
            let report = try audit(ring)
            #expect(report.isClean, "\(report)")
            // Each block said which path it runs, and together they ran every one.
            for (i, b) in ring.blocks.enumerated() {
                #expect(b.logText.contains("isa=\(isas[i % isas.count])"), "\(b.name): \(b.logText.prefix(1500))")
            }
            #expect(ring.stop().allSatisfy { $0 == 0 }, "every member stops cleanly on SIGTERM\n\(ring.logs)")
        }

        /// kill -9 of a block, then of the owner, during a stream of queries; each restarted on its folder. Queries in
        /// flight are answered or refused with a clear error — never answered wrongly — later ones are answered, and the
        /// ledger audits clean.
        @Test(.timeLimit(.minutes(5)))
        func killedMembersAreRestartedAndTheStreamGoesOn() throws {
            let db = try TestPostgres.database()
            let (member, querent) = try roles(db)
            let ring = try ProcessRing(model: try smallModel(), database: db.url, queryTimeout: 8, memberURL: member, querentURL: querent)
            let inputs = Tensor(shape: [400, 6, 6, 1], data: (0..<(400 * 36)).map { Float(($0 * 37) % 101) / 101 })
            let background = BackgroundStream(ring, inputs, timeout: 30)
            let log = background.log
            func waitFor(answers n: Int, _ what: String) { background.waitFor(answers: n, what, within: 60) }
            waitFor(answers: 10, "before the faults")
            let victim = try ring.block(position: 3)
            victim.kill9()
            usleep(300_000)
            try victim.start()
            try victim.waitUntilServing()
            let afterBlock = log.answeredCount
            waitFor(answers: afterBlock + 10, "after the block's restart")
            ring.owner.kill9()
            usleep(300_000)
            try ring.owner.start()
            try ring.owner.waitUntilServing()
            let afterOwner = log.answeredCount
            waitFor(answers: afterOwner + 10, "after the owner's restart")
            background.finish()
            #expect(log.wrong == 0, "nothing wrong is ever delivered")
            // Whatever was not answered failed with a clear error (a refusal or a timeout), never silently.
            for e in log.errors { #expect(e.contains("refused") || e.contains("timed out"), "\(e)") }
            #expect(log.errors.count <= 4, "at most the queries in flight at the two kills fail: \(log.errors)")
            let report = try audit(ring)
            #expect(report.isClean, "\(report)")
            #expect(victim.logText.contains("resumed_posts="), "the restarted block resumed")
            let twice = try doublePosts(ring)
            #expect(twice.posts.isEmpty && twice.validationAlarms == 0, "a restarted member never answers an input twice: \(twice)")
        }

        /// A block that perturbs its input (an explicit attack flag), in a ring with a spare: its successor's validation
        /// names it, the owner evicts it to the spare (which receives the block's parameters over the ledger), and the
        /// query is answered, bit-identical to the plain model; the evicted block stops (status 4), and the next
        /// queries pass through the spare.
        @Test(.timeLimit(.minutes(3)))
        func aPerturbingBlockIsEvictedToASpareAndTheQueryIsAnswered() throws {
            let db = try TestPostgres.database()
            let (member, querent) = try roles(db)
            let ring = try ProcessRing(model: try smallModel(), database: db.url, spares: 1, memberURL: member, querentURL: querent)
            let perturbing = try ring.restartPerturbing(position: 2)
            defer { perturbing.kill9() }
            let session = try ring.querent()
            for k in 0..<3 {
                let x = Tensor(shape: [1, 6, 6, 1], data: (0..<36).map { Float(($0 * (k + 5)) % 36) / 36 })
                let y = try session.query(x, timeout: 60)
                #expect(y.logits.data.map(\.bitPattern) == (try ring.expected(x)).data.map(\.bitPattern), "query \(k): \(ring.logs)")
            }
            let spare = try #require(ring.spares.first)
            #expect(ring.waitForLog(spare, "] placed") && ring.waitForLog(spare, "] serving"), "the spare took the slot: \(spare.logText.suffix(2000))")
            #expect(ring.waitForLog(ring.owner, "] evicted"), "\(ring.owner.logText.suffix(3000))")
            let until = Date().addingTimeInterval(10)
            while perturbing.isRunning && Date() < until { usleep(50_000) }
            #expect(!perturbing.isRunning && perturbing.process?.terminationStatus == 4, "the evicted block stopped: \(perturbing.logText.suffix(2000))")
            let report = try audit(ring)
            #expect(report.isClean, "\(report)")
        }

        /// A block that perturbs its input (an explicit attack flag) in a ring without spares: its successor's validation
        /// names it, and the query is refused, naming it — never a wrong answer.
        @Test(.timeLimit(.minutes(3)))
        func aPerturbingBlockIsNamedAndNothingWrongIsDelivered() throws {
            let db = try TestPostgres.database()
            let (member, querent) = try roles(db)
            let ring = try ProcessRing(model: try smallModel(), database: db.url, memberURL: member, querentURL: querent)
            let perturbing = try ring.restartPerturbing(position: 2)
            defer { perturbing.kill9() }
            let session = try ring.querent()
            let x = Tensor(shape: [1, 6, 6, 1], data: (0..<36).map { Float($0) / 36 })
            #expect(throws: QueryError.self) { try session.query(x, timeout: 30) }
            do { _ = try session.query(x, timeout: 30); Issue.record("a query through the perturbing block was answered") } catch {
                #expect("\(error)".contains(String(try SealedRing.open(ring.sealed).placement[1])), "names the perturbing block: \(error)")
            }
            let report = try audit(ring)
            #expect(report.isClean, "\(report)")
        }
    }
}


/// Tracking across hosts (§3.3, §3.4.4): the owner's authenticity rounds find a block whose file changed on its host,
/// or whose parameters changed in memory, and restore it over the ledger, bit-identical to the seal.
extension DeploymentTests {
    @Suite(.enabled(if: TestPostgres.available, TestPostgres.skipMessage), .serialized)
    struct ProcessRingTrackingTests {
        func answersAreRight(_ ring: ProcessRing, count: Int = 5) throws -> Bool {
            let inputs = Tensor(shape: [count, 6, 6, 1], data: (0..<(count * 36)).map { Float(($0 * 29) % 83) / 83 })
            let log = QueryLog()
            try stream(ring, inputs, threads: 1, log: log)
            return log.answered == count
        }

        @Test(.timeLimit(.minutes(3)))
        func aBlockFileModifiedOnItsHostIsRestoredOverTheLedger() throws {
            let db = try TestPostgres.database()
            let (member, querent) = try roles(db)
            let ring = try ProcessRing(model: try smallModel(), database: db.url, checkEvery: 1, memberURL: member, querentURL: querent)
            #expect(ring.waitForLog(ring.owner, "] authentic"), "the first round finds the ring authentic\n\(ring.logs)")
            let path = try ring.host(position: 3) + "/params.safetensors"
            let id = try SealedRing.open(ring.sealed).placement[2]
            let sealed = try Data(contentsOf: URL(fileURLWithPath: ring.sealed + "/blocks/" + id + "/params.safetensors"))
            var bytes = [UInt8](sealed)
            bytes[bytes.count - 5] ^= 0x10
            try Data(bytes).write(to: URL(fileURLWithPath: path))
            let victim = try ring.block(position: 3)
            #expect(ring.waitForLog(ring.owner, "] restoring"), "the owner names the block and restores it\n\(ring.logs)")
            #expect(ring.waitForLog(victim, "] restored"), "the block takes the restore\n\(ring.logs)")
            #expect(ring.waitForLog(ring.owner, "] authentic", times: 2), "the next round is authentic\n\(ring.logs)")
            #expect(try Data(contentsOf: URL(fileURLWithPath: path)) == sealed, "the file is bit-identical to the sealed one")
            #expect(try answersAreRight(ring))
            let report = try audit(ring)
            #expect(report.isClean, "\(report)")
        }

        @Test(.timeLimit(.minutes(3)))
        func aBitFlippedInMemoryIsFoundAndRestored() throws {
            let db = try TestPostgres.database()
            let (member, querent) = try roles(db)
            let ring = try ProcessRing(model: try smallModel(), database: db.url, checkEvery: 1, memberURL: member, querentURL: querent)
            let b = try ring.block(position: 2)
            _ = b.terminate()
            let hooked = MemberProcess(name: b.name, arguments: b.arguments + ["--test-hooks"], environment: b.environment, log: b.log + ".hooks")
            try hooked.start()
            try hooked.waitUntilServing()
            defer { hooked.kill9() }
            #expect(ring.waitForLog(ring.owner, "] authentic"), "\(ring.logs)")
            #expect(try answersAreRight(ring))
            kill(hooked.pid, SIGUSR1)
            #expect(ring.waitForLog(hooked, "flipped a bit"), "\(hooked.logText)")
            #expect(ring.waitForLog(ring.owner, "] restoring"), "the owner finds the block's HASH off and restores it\n\(ring.logs)")
            #expect(ring.waitForLog(hooked, "] restored"), "\(hooked.logText)")
            let authenticBefore = ring.owner.logText.components(separatedBy: "] authentic").count - 1
            #expect(ring.waitForLog(ring.owner, "] authentic", times: authenticBefore + 1), "\(ring.logs)")
            #expect(try answersAreRight(ring), "after the restore, answers are bit-identical again")
            let report = try audit(ring)
            #expect(report.isClean, "\(report)")
        }
    }
}


/// kill -9 of PostgreSQL itself (`pg_ctl stop -m immediate`) under a stream of queries, on a server of the test's own.
extension DeploymentTests {
    @Suite(.enabled(if: OwnPostgres.canStart || TestPostgres.required, "no PostgreSQL server binaries (apt-get install postgresql)"), .serialized)
    struct ProcessRingDatabaseCrashTests {
        @Test(.timeLimit(.minutes(5)))
        func aCrashedDatabaseIsSurvived() throws {
            let server = try OwnPostgres()
            var admin = server.url
            try PostgresLedger.execute(["CREATE DATABASE ring"], on: admin)
            admin.database = "ring"
            try PostgresLedger.initialize(admin)
            let db = TestDatabase(url: admin)
            let (member, querent) = try roles(db)
            let ring = try ProcessRing(model: try smallModel(), database: admin, queryTimeout: 8, memberURL: member, querentURL: querent)
            let inputs = Tensor(shape: [400, 6, 6, 1], data: (0..<(400 * 36)).map { Float(($0 * 53) % 97) / 97 })
            let background = BackgroundStream(ring, inputs, timeout: 40)
            let log = background.log
            func waitFor(answers n: Int, _ what: String) { background.waitFor(answers: n, what, within: 90) }
            waitFor(answers: 10, "before the crash")
            try server.crash()
            usleep(500_000)
            try server.restart()
            let after = log.answeredCount
            waitFor(answers: after + 10, "after the restart")
            background.finish()
            #expect(log.wrong == 0, "nothing wrong is ever delivered")
            for e in log.errors { #expect(e.contains("refused") || e.contains("timed out"), "\(e)") }
            let running = ([ring.owner] + ring.blocks).allSatisfy { $0.isRunning }
            #expect(running, "every member outlived the outage\n\(ring.logs)")
            let report = try audit(ring)
            #expect(report.isClean, "\(report)")
            _ = db
        }
    }
}


/// A stream of queries on two querents in the background, while a test injects faults.
final class BackgroundStream: @unchecked Sendable {
    let log = QueryLog()
    let ring: ProcessRing
    private let done = DispatchSemaphore(value: 0)
    private let stopFlag = StopFlag()

    init(_ ring: ProcessRing, _ inputs: Tensor, timeout: Double) {
        self.ring = ring
        DispatchQueue.global().async { [log, stopFlag, done] in
            try? stream(ring, inputs, threads: 2, timeout: timeout, log: log, stopWhen: { stopFlag.isSet })
            done.signal()
        }
    }

    func waitFor(answers n: Int, _ what: String, within seconds: Double) {
        let until = Date().addingTimeInterval(seconds)
        while log.answeredCount < n && Date() < until { usleep(20_000) }
        #expect(log.answeredCount >= n, "\(what): \(log.answeredCount) answers\n\(log.errors.prefix(3))\n\(ring.logs)")
    }

    func finish() { stopFlag.set(); done.wait() }
}

final class StopFlag: @unchecked Sendable {
    private let lock = NSLock()
    private var value = false
    func set() { lock.lock(); value = true; lock.unlock() }
    var isSet: Bool { lock.lock(); defer { lock.unlock() }; return value }
}
