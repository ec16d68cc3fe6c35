import ArgumentParser
import DeepRingBlock
import DeepRingNode
import DeepRingOwner
import DeepRingEngine
import DeepRingLedger
import DeepRingLedgerPostgres
import DeepRingProtocol
import Foundation
import Logging
#if canImport(Glibc)
import Glibc
#endif

/// Log options of a serving process: structured lines on stderr (swift-log: time, level, label, key=value
/// metadata, message). Keys and passwords are never logged; public keys appear as 12-digit prefixes.
struct LogOptions: ParsableArguments {
    @Option(help: "Log level: trace, debug, info, notice, warning, error or critical.") var logLevel: String = "info"

    func validate() throws {
        guard Logger.Level(rawValue: logLevel) != nil else {
            throw ValidationError("--log-level must be one of trace, debug, info, notice, warning, error, critical")
        }
    }

    func logger(_ label: String) -> Logger {
        LoggingSystem.bootstrap { StreamLogHandler.standardError(label: $0) }
        var l = Logger(label: label)
        l.logLevel = Logger.Level(rawValue: logLevel) ?? .info
        return l
    }
}

/// Opens a serving member's ledger, waiting (with backoff, up to `patience` seconds, or until stopped) while it
/// cannot be reached: a block may start before the database does.
func openServingLedger(_ options: LedgerOptions, logger: Logger, stop: StopSignal, patience: Double = 120) throws -> any Ledger {
    var backoff = 0.2
    let deadline = now() + patience
    while true {
        do { return try options.open(ring: nil, readOnly: false, logger: logger) } catch {
            if case LedgerError.untrusted = error { throw error }
            guard now() + backoff < deadline, !stop.isStopped else { throw error }
            logger.warning("ledger not reachable; retrying", metadata: ["error": "\(error)", "retry_in_ms": "\(Int(backoff * 1000))"])
            Thread.sleep(forTimeInterval: backoff)
            backoff = min(backoff * 2, 5)
        }
    }
}

func keyPrefix(_ k: [UInt8]) -> String { String(hex(k).prefix(12)) }

/// SIGUSR1 requests for the bit-flip test hook, taken by the serving loop between rounds.
final class FlipRequests: @unchecked Sendable {
    private let lock = NSLock()
    private var pending = 0
    private var source: DispatchSourceSignal?
    func install() {
        TemporaryPaths.handleElsewhere(SIGUSR1)   // not the end of the process, as it is for other commands
        let s = DispatchSource.makeSignalSource(signal: SIGUSR1, queue: .global())
        s.setEventHandler { [weak self] in self?.lock.withLock { self?.pending += 1 } }
        s.resume()
        source = s
    }
    func take() -> Bool { lock.withLock { defer { if pending > 0 { pending -= 1 } }; return pending > 0 } }
}

/// The variable `ring up` sets in its children: they stop when it is gone.
let supervisorVariable = "DEEPRING_SUPERVISOR_PID"

/// A serving process's stop signal: SIGTERM, Ctrl-C, or (started by `ring up`) its supervisor gone.
func serveStopSignal() -> StopSignal {
    let stop = StopSignal()
    stop.install()
    if let p = ProcessInfo.processInfo.environment[supervisorVariable].flatMap(Int32.init), p == getppid() { stop.stopWithParent(p) }
    return stop
}

struct BlockCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "block", abstract: "Run one block of a ring as its own process.",
                                                    subcommands: [Serve.self])

    struct Serve: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Serve one block: validate its predecessor's output, compute its layer, post to its successor — through the ledger only.",
            discussion: """
            BLOCKDIR is one block's bundle, as `seal` wrote it in DIR/blocks/<id>/ — copy it to the block's host; \
            nothing else of the ring is needed there: params.safetensors (its layer and its copy of the next), \
            keys.json (its key pairs, 0600, and the owner's public key as its trust anchor) and block.json (its \
            owner-signed descriptor: its neighbours' and the ouroboros's public keys, its hashes). The block refuses to \
            start on a descriptor not signed by that owner, a parameter file that is not the sealed one, or a ledger \
            whose first entry is not its ring's seal. After a restart it answers what arrived while it was down and \
            never answers an input twice. Logs structured lines on stderr; stops cleanly on SIGTERM or Ctrl-C; \
            reconnects with backoff. Example: deepring block serve --dir /srv/block --ledger postgres://block7@db:5432/ring

            With --spare, BLOCKDIR is a spare's folder (`seal --spares N` wrote DIR/spares/<id>/: its keys.json and \
            its owner-signed spare.json, no parameters): it waits until the owner evicts a block that validation named \
            (Prop. 1) and sends it that block's slot — its descriptor and parameter file, sealed to it — then serves \
            as a block (started again, it serves as that block). A block the owner evicts stops serving and exits \
            with status 4.
            """)
        @Option(help: "The block's folder (its bundle), or with --spare a spare's folder.") var dir: String
        @Flag(help: "Serve a spare: wait for the owner to place it in the ring (after an eviction), then serve as a block.") var spare = false
        @OptionGroup var ledgerOptions: LedgerOptions
        @OptionGroup var logOptions: LogOptions
        @Option(help: ArgumentHelp("ATTACK (experiments only): add this value to every input the block computes on — a compromised block, for the validation and eviction tests.", visibility: .hidden))
        var attackPerturb: Float?
        @Flag(help: ArgumentHelp("TEST HOOK: on SIGUSR1, flip one bit of the block's parameters in memory (for the tests of the authenticity round).", visibility: .hidden))
        var testHooks = false
        @OptionGroup var threadOptions: ThreadOptions

        func validate() throws {
            guard ledgerOptions.ledger != nil else { throw ValidationError("give --ledger URL (or the path of the ring's ledger.sqlite)") }
            guard InputFile.isDirectory(dir) else { throw ValidationError("--dir \(dir) is not a folder") }
            if let e = attackPerturb { guard e.isFinite else { throw ValidationError("--attack-perturb must be a finite number") } }
        }

        func run() throws {
            threadOptions.apply()
            var log = logOptions.logger("deepring.block")
            let stop = serveStopSignal()
            do {
                let ledger = try openServingLedger(ledgerOptions, logger: log, stop: stop)
                defer { (ledger as? PostgresLedger)?.close() }
                if SpareAgent.isWaitingSpare(dir) {
                    guard spare else {
                        throw RingError.refused("\(dir) is a spare's folder that holds no block yet: serve it with --spare")
                    }
                    let s = try SpareAgent(directory: dir, ledger: ledger)
                    log[metadataKey: "spare"] = "\(s.id)"
                    log.info("waiting as a spare", metadata: ["key": "\(keyPrefix(s.signingKey))", "pid": "\(getpid())", "isa": "\(Engine.isa)"])
                    ServeLoop.run(ledger: ledger, logger: log, stop: stop, wakeFor: { s.wakeFilters }, cursor: { s.cursor },
                                  until: { s.placedAt != nil }) {
                        let placed = try s.step()
                        for e in s.takeEvents() { log.notice("\(e.event)", metadata: ["call": "\(e.call)", "detail": "\(e.detail)"]) }
                        return placed
                    }
                    if stop.isStopped { return }
                    log[metadataKey: "spare"] = nil
                }
                let agent = try BlockAgent(directory: dir, ledger: ledger)
                log[metadataKey: "block"] = "\(agent.id)"
                if let e = attackPerturb {
                    agent.perturbInputs(by: e)
                    log.warning("ATTACK: this block perturbs its inputs", metadata: ["epsilon": "\(e)"])
                }
                let flip = FlipRequests()
                if testHooks {
                    flip.install()
                    log.warning("TEST HOOKS on: SIGUSR1 flips a bit of this block's parameters in memory")
                }
                log.info("serving", metadata: ["key": "\(keyPrefix(agent.signingKey))", "ledger": "\((try? ledgerOptions.postgresURL())??.description ?? ledgerOptions.ledger ?? "")",
                                               "resumed_posts": "\(agent.resumedPosts)", "pid": "\(getpid())", "isa": "\(Engine.isa)"])
                let totals = ServeLoop.run(ledger: ledger, logger: log, stop: stop, wakeFor: { agent.wakeFilters }, cursor: { agent.cursor },
                                           until: { agent.evictedReason != nil }) {
                    if flip.take() {
                        agent.flipBitInMemory()
                        log.warning("TEST HOOK: flipped a bit of the parameters in memory")
                    }
                    let acted = try agent.step()
                    for f in agent.takeFailures() { log.warning("query failed here", metadata: ["query": "\(f.queryID)", "error": "\(f.error)"]) }
                    for e in agent.takeEvents() {
                        log.notice("\(e.event)", metadata: ["round": "\(e.round)", "detail": "\(e.detail)"])
                    }
                    return acted
                }
                log.info("totals", metadata: ServeLoop.totalsMetadata(totals, phases: agent.timing, ledger: ledger))
                if let why = agent.evictedReason, !stop.isStopped {
                    log.warning("evicted: stopping", metadata: ["detail": "\(why)"])
                    throw ExitCode(exitEvicted)
                }
            } catch let e as ExitCode {
                throw e
            } catch {
                log.error("cannot serve", metadata: ["error": "\(error)"])
                throw ringFail(error)
            }
        }
    }
}

struct OwnerCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "owner", abstract: "Run the ring's owner (the ouroboros) as its own process.",
                                                    subcommands: [Serve.self])

    struct Serve: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Serve the ouroboros: open queries (Eq. 3), deliver validated answers (Eq. 12), end every query it starts.",
            discussion: """
            Reads only DIR/owner/ (the owner's identity, the ouroboros's keys, the signed record — which names every \
            member's public keys — the checkpoint) and DIR/ring.json; blocks run elsewhere (`block serve`). A query \
            ends with an answer sealed to its querent, or with a refusal saying why: a member's final validation alarm \
            names the compromised block (Prop. 1); a member silent past --query-timeout is named in an alarm. Logs \
            structured lines on stderr; stops cleanly on SIGTERM or Ctrl-C; reconnects with backoff. After a restart \
            it finishes the queries still open on the ledger.
            """)
        @Option(help: "Ring directory (only its owner/ folder and ring.json are read).") var ring: String
        @OptionGroup var ledgerOptions: LedgerOptions
        @OptionGroup var logOptions: LogOptions
        @Option(help: "Seconds a query may stay open before it is refused, naming the silent member.") var queryTimeout: Double = 60
        @Option(help: "Seconds between authenticity rounds (the first runs before any query); 0: only the first.") var checkEvery: Double = 30
        @Option(help: ArgumentHelp("PostgreSQL: end other sessions that hold an uncommitted append to the ledger longer than this many seconds (a denial of service: every other append waits); 0: off. Needs a role that may (a superuser, or GRANT pg_signal_backend TO the owner's role).", valueName: "seconds")) var watchdog: Double = 10
        @Option(help: ArgumentHelp("Rotate every block's key pairs after this many queries have ended (0: never): queries wait while the ring drains, the blocks post new public keys sealed to the owner, and the owner sends each its new neighbours' keys (the paper's reshuffle, across hosts).", valueName: "queries")) var rotateEvery: Int = 100
        @OptionGroup var threadOptions: ThreadOptions

        func validate() throws {
            guard rotateEvery >= 0 else { throw ValidationError("--rotate-every must be 0 (never) or more") }
            guard watchdog == 0 || (watchdog >= 1 && watchdog <= 3600) else { throw ValidationError("--watchdog must be 0 or between 1 and 3600 seconds") }
            guard ledgerOptions.ledger != nil else { throw ValidationError("give --ledger URL (or the path of the ring's ledger.sqlite)") }
            guard queryTimeout >= 1 && queryTimeout <= 86_400 else { throw ValidationError("--query-timeout must be between 1 and 86400 seconds") }
            guard checkEvery == 0 || (checkEvery >= 0.5 && checkEvery <= 86_400) else { throw ValidationError("--check-every must be 0 or between 0.5 and 86400 seconds") }
        }

        func run() throws {
            threadOptions.apply()
            let log = logOptions.logger("deepring.owner")
            let stop = serveStopSignal()
            do {
                let ledger = try openServingLedger(ledgerOptions, logger: log, stop: stop)
                defer { (ledger as? PostgresLedger)?.close() }
                let agent = try OwnerAgent(directory: ring, ledger: ledger)
                agent.queryTimeout = queryTimeout
                agent.checkEvery = checkEvery
                agent.rotateEvery = rotateEvery
                log.info("serving", metadata: ["ring": "\(agent.ring.manifest.ringID)", "blocks": "\(agent.ring.manifest.blockCount)",
                                               "ouroboros": "\(keyPrefix(agent.ring.manifest.ouroboros.signing))", "pid": "\(getpid())",
                                               "isa": "\(Engine.isa)"])
                // The watchdog, where the database lets this role end other sessions (asked in the loop, so that an
                // outage at the start is retried like any other).
                let watched = watchdog > 0 ? ledger as? PostgresLedger : nil
                var mayWatch: Bool?
                var lastWatch = 0.0
                let totals = ServeLoop.run(ledger: ledger, logger: log, stop: stop, wakeFor: { agent.wakeFilters }, cursor: { agent.cursor }) {
                    if let pg = watched, mayWatch == nil {
                        mayWatch = try pg.mayEndOtherSessions()
                        if mayWatch == false {
                            log.warning("watchdog off: this role may not end other sessions (GRANT pg_signal_backend TO it, or run with --watchdog 0)")
                        }
                    }
                    if let pg = watched, mayWatch == true, now() - lastWatch >= 1 {
                        lastWatch = now()
                        for h in try pg.endHeldAppends(olderThan: .milliseconds(Int(watchdog * 1000))) {
                            log.warning(h.ended ? "ended a session holding an append open" : "a session holds an append open (may not end it)",
                                        metadata: ["pid": "\(h.pid)", "user": "\(h.user)", "held_s": "\(Int(h.seconds))"])
                        }
                    }
                    let acted = try agent.step()
                    for e in agent.takeEvents() {
                        if e.event == "delivered" { log.debug("delivered", metadata: ["query": "\(e.queryID)"]) }
                        else if ["authentic", "restoring", "restored", "not authentic", "rotation called", "rotated", "rotation completed",
                                  "running again", "enrolling"].contains(e.event) {
                            log.notice("\(e.event)", metadata: ["round": "\(e.queryID)", "detail": "\(e.detail)"])
                        } else {
                            log.warning("\(e.event)", metadata: ["query": "\(e.queryID)", "detail": "\(e.detail)"])
                        }
                    }
                    return acted
                }
                log.info("totals", metadata: ["delivered": "\(agent.answered)", "refused": "\(agent.refused)",
                                              "authenticity_rounds": "\(agent.rounds)", "restores": "\(agent.restores)", "rotations": "\(agent.rotations)",
                                              "evictions": "\(agent.evictions)"].merging(ServeLoop.totalsMetadata(totals, phases: agent.timing, ledger: ledger)) { a, _ in a })
            } catch {
                log.error("cannot serve", metadata: ["error": "\(error)"])
                throw ringFail(error)
            }
        }
    }
}

/// `deepring ring up`: the decentralised deployment on one machine — the owner and every block as separate
/// processes (the same programs one would start on separate hosts), supervised.
struct RingUp: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "up",
        abstract: "Start the owner and every block of a ring as separate local processes; report their health; stop them all on Ctrl-C.",
        discussion: """
        Starts `owner serve --ring DIR` and, for every DIR/blocks/<id>/, `block serve --dir DIR/blocks/<id>` (and \
        for every spare DIR/spares/<id>/, `block serve --spare --dir …`) — each \
        its own process holding only its own folder — on the ring's ledger (--ledger, or DIR/ledger.sqlite). Their \
        log lines go to stderr (or to --log-dir/<name>.log). A process that exits is reported and restarted with \
        backoff (1 s doubling to 30 s); one that refuses to start on untrusted files (exit status 3) is not. Ctrl-C \
        or SIGTERM stops them all (SIGTERM, then SIGKILL after 10 s); killed outright, `ring up` leaves no process \
        behind: each one stops within a second of its supervisor's end. Query it from any host with \
        `deepring query --ring DIR/ring.json --ledger …`. A password in the URL is passed to the children in \
        PGPASSWORD, never on their command lines.
        """)
    @Option(help: "Ring directory.") var ring: String
    @OptionGroup var ledgerOptions: LedgerOptions
    @Option(help: "Write each process's log to FOLDER/<owner|block-id>.log instead of stderr.") var logDir: String?
    @Option(help: "Seconds a query may stay open before the owner refuses it.") var queryTimeout: Double = 60
    @Option(help: "Seconds between the owner's authenticity rounds (0: only the first).") var checkEvery: Double = 30
    @Option(help: "Log level of the processes.") var logLevel: String = "info"
    @Option(help: "Compute threads of each block process (default: one per core; the processes share this machine's cores).") var memberThreads: Int?
    @Option(help: "Rotate every block's key pairs after this many queries (0: never); see `owner serve --help`.") var rotateEvery: Int = 100

    func validate() throws {
        guard rotateEvery >= 0 else { throw ValidationError("--rotate-every must be 0 (never) or more") }
        if let t = memberThreads, !(1...256).contains(t) { throw ValidationError("--member-threads must be between 1 and 256") }
        guard InputFile.isDirectory(ring) else { throw ValidationError("--ring \(ring) is not a folder") }
        guard Logger.Level(rawValue: logLevel) != nil else { throw ValidationError("--log-level must be one of trace, debug, info, notice, warning, error, critical") }
        guard queryTimeout >= 1 && queryTimeout <= 86_400 else { throw ValidationError("--query-timeout must be between 1 and 86400 seconds") }
    }

    func run() throws {
        let stop = StopSignal()
        stop.install()
        do {
            let local = try LocalRing(ring: ring, ledgerOptions: ledgerOptions, logDir: logDir,
                                      ownerArguments: ["--query-timeout", "\(queryTimeout)", "--check-every", "\(checkEvery)", "--rotate-every", "\(rotateEvery)"],
                                      logLevel: logLevel, memberArguments: memberThreads.map { ["--threads", "\($0)"] } ?? [])
            local.startAll()
            print("ring up: owner + \(local.children.count - 1) blocks on \(local.ledgerArgument) — pids "
                  + local.children.map { "\($0.name)=\($0.process?.processIdentifier ?? 0)" }.joined(separator: " "))
            print("query: deepring query --ring \(local.root)/ring.json --ledger \(local.ledgerArgument) --dataset …   (Ctrl-C stops the ring)")
            fflush(nil)
            while !stop.isStopped {
                usleep(200_000)
                local.supervise()
            }
            local.stopAll()
        } catch let e as ExitCode { throw e } catch { throw ringFail(error) }
    }
}

/// A ring's owner and blocks as processes of this machine (`ring up`, `bench ring --deployment processes`): the
/// programs one would start on separate hosts, each given only its folder, with the ledger's password (if any) in
/// PGPASSWORD rather than on a command line.
final class LocalRing {
    final class Child {
        let name: String
        let arguments: [String]
        var process: Process?
        var restarts = 0
        var nextStart = 0.0
        var backoff = 1.0
        var givenUp = false
        init(name: String, arguments: [String]) { self.name = name; self.arguments = arguments }
    }

    let root: String
    let ledgerArgument: String
    var environment: [String: String]
    let logDir: String?
    var children: [Child] = []
    let executable: String

    init(ring: String, ledgerOptions: LedgerOptions, logDir: String?, ownerArguments: [String], logLevel: String,
         memberArguments: [String] = []) throws {
        let paths = RingPaths(ring)
        var environment = ProcessInfo.processInfo.environment
        var ledgerArgument: String
        if let url = try ledgerOptions.postgresURL() {
            ledgerArgument = url.description
            if let p = url.password { environment["PGPASSWORD"] = p }
        } else if let path = ledgerOptions.ledger {
            ledgerArgument = path
        } else {
            ledgerArgument = paths.ledger
            guard InputFile.isRegular(ledgerArgument) else {
                throw RingError.notARing("\(ring) has no ledger.sqlite (its ledger is in a database? give --ledger URL)")
            }
        }
        if !PostgresURL.isPostgres(ledgerArgument) { ledgerArgument = URL(fileURLWithPath: ledgerArgument).standardizedFileURL.path }
        environment[supervisorVariable] = "\(getpid())"
        self.environment = environment
        self.ledgerArgument = ledgerArgument
        self.logDir = logDir
        executable = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? CommandLine.arguments[0]
        root = URL(fileURLWithPath: ring).standardizedFileURL.path
        let blocks = RingPaths(root).blockIDs
        guard !blocks.isEmpty else { throw RingError.notARing("\(ring)/blocks holds no block folders") }
        if let d = logDir { try FileManager.default.createDirectory(atPath: d, withIntermediateDirectories: true) }
        let common = ["--ledger", ledgerArgument, "--log-level", logLevel] + memberArguments
        children = [Child(name: "owner", arguments: ["owner", "serve", "--ring", root] + ownerArguments + common)]
        children += blocks.map { Child(name: "block-" + $0, arguments: ["block", "serve", "--dir", root + "/blocks/" + $0] + common) }
        // Spares (`seal --spares N`): each waits for a slot, then serves as a block.
        children += RingPaths(root).spareIDs.map { Child(name: "spare-" + $0, arguments: ["block", "serve", "--spare", "--dir", RingPaths(root).spares + "/" + $0] + common) }
    }

    func start(_ c: Child) {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: executable)
        p.arguments = c.arguments
        p.environment = environment
        if let d = logDir {
            let path = d + "/" + c.name + ".log"
            if !FileManager.default.fileExists(atPath: path) { FileManager.default.createFile(atPath: path, contents: nil) }
            if let h = FileHandle(forWritingAtPath: path) { h.seekToEndOfFile(); p.standardError = h }
        }
        p.standardOutput = FileHandle.nullDevice
        do { try p.run(); c.process = p } catch {
            stderrPrint("ring up: cannot start \(c.name): \(error)")
            c.process = nil
        }
    }

    func startAll() { for c in children { start(c) } }

    /// Reports and restarts (with backoff) the processes that exited; one that refused to serve on untrusted files
    /// (exit status 3) is not restarted.
    func supervise() {
        let t = now()
        for c in children where !c.givenUp {
            if let p = c.process, p.isRunning { continue }
            if let p = c.process {
                let status = p.terminationStatus
                let how = p.terminationReason == .uncaughtSignal ? "killed by signal \(status)" : "status \(status)"
                c.process = nil
                if p.terminationReason == .exit && status == exitNotAuthentic {
                    c.givenUp = true
                    stderrPrint("ring up: \(c.name) refused to serve (its files or the ledger are not authentic; see its log) — not restarted")
                    continue
                }
                if p.terminationReason == .exit && status == exitEvicted {
                    c.givenUp = true
                    stderrPrint("ring up: \(c.name) was evicted from the ring by its owner (see its log) — not restarted")
                    continue
                }
                c.nextStart = t + c.backoff
                stderrPrint("ring up: \(c.name) exited (\(how)); restarting in \(Int(c.backoff)) s")
                c.backoff = min(c.backoff * 2, 30)
            }
            if t >= c.nextStart {
                c.restarts += 1
                start(c)
                if let p = c.process { stderrPrint("ring up: \(c.name) restarted (pid \(p.processIdentifier), restart \(c.restarts))") }
            }
        }
    }

    /// SIGTERM to every process, SIGKILL to those still running after 10 s.
    func stopAll(quiet: Bool = false) {
        if !quiet { stderrPrint("ring up: stopping \(children.filter { $0.process?.isRunning ?? false }.count) processes") }
        for c in children { if let p = c.process, p.isRunning { kill(p.processIdentifier, SIGTERM) } }
        let until = now() + 10
        while now() < until && children.contains(where: { $0.process?.isRunning ?? false }) { usleep(50_000) }
        for c in children {
            if let p = c.process, p.isRunning { kill(p.processIdentifier, SIGKILL); stderrPrint("ring up: \(c.name) killed (did not stop in 10 s)") }
        }
        if !quiet { stderrPrint("ring up: stopped") }
    }
}
