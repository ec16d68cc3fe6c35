import DeepRingLedger
import DeepRingProtocol
import Foundation
import Logging
#if canImport(Glibc)
import Glibc
#endif

/// Set by SIGTERM or SIGINT: a serving process finishes the entry it is handling, then stops.
public final class StopSignal: @unchecked Sendable {
    private let lock = NSLock()
    private var stopped = false
    private var sources: [DispatchSourceSignal] = []
    public private(set) var signalName: String?

    public init() {}

    /// Turns SIGTERM and SIGINT into a stop request (instead of ending the process at once).
    public func install() {
        for (sig, name) in [(SIGTERM, "SIGTERM"), (SIGINT, "SIGINT")] {
            // No signal(SIG_IGN) here: on Linux the dispatch source installs its own handler, and replacing it would
            // leave the signal ignored altogether.
            TemporaryPaths.handleElsewhere(sig)
            let s = DispatchSource.makeSignalSource(signal: sig, queue: .global())
            s.setEventHandler { [weak self] in self?.stop(name) }
            s.resume()
            sources.append(s)
        }
    }

    /// Stops too when the process that started this one (`ring up`) is gone — killed outright, it could not stop
    /// its children — so that no block outlives its supervisor unseen.
    public func stopWithParent(_ parent: Int32) {
        let t = DispatchSource.makeTimerSource(queue: .global())
        t.schedule(deadline: .now() + 1, repeating: 1)
        t.setEventHandler { [weak self] in if getppid() != parent { self?.stop("parent \(parent) gone") } }
        t.resume()
        timers.append(t)
    }
    private var timers: [DispatchSourceTimer] = []

    public func stop(_ why: String = "stop requested") {
        lock.lock(); defer { lock.unlock() }
        if !stopped { stopped = true; signalName = why }
    }

    public var isStopped: Bool { lock.lock(); defer { lock.unlock() }; return stopped }
}

/// The loop of a serving member (`block serve`, `owner serve`): handle what is new on the ledger; when there is
/// nothing, sleep until something that may concern it (`filters`) is appended — PostgreSQL wakes only the process
/// a notification's row is for — at most `idle` at a time so
/// that timers (the owner's deadlines) run and a stop request is seen. An error — the database gone, a network
/// cut — is logged and retried with exponential backoff (0.1 s doubling to 5 s); the process never spins, never
/// dies of an outage, and stops cleanly on SIGTERM.
public enum ServeLoop {
    /// Where a serving process's time went, for its closing log line and `bench ring`'s per-phase breakdown.
    public struct Totals: Sendable {
        /// Steps that acted (read, computed or posted something) and the seconds they took.
        public var rounds = 0
        public var busySeconds = 0.0
        /// Seconds spent waiting for a wake-up.
        public var waitingSeconds = 0.0
    }

    /// `until`: the loop also ends (without a stop) once it is true after a step — a spare once placed, a block once
    /// evicted.
    @discardableResult
    public static func run(ledger: any Ledger, logger: Logger, stop: StopSignal, idle: Duration = .milliseconds(500),
                           wakeFor filters: () -> [EntryFilter] = { [] }, cursor: () -> Int64, until: () -> Bool = { false },
                           step: () throws -> Bool) -> Totals {
        var totals = Totals()
        var backoff = 0.1
        var failing = false
        while !stop.isStopped && !until() {
            do {
                let t0 = Date().timeIntervalSince1970
                let trips = ledger.roundTrips
                let acted = try step()
                if failing { logger.notice("ledger reachable again"); failing = false }
                backoff = 0.1
                let t1 = Date().timeIntervalSince1970
                if acted {
                    totals.rounds += 1
                    totals.busySeconds += t1 - t0
                    let r = ledger.roundTrips - trips
                    logger.debug("round", metadata: ["t": "\(String(format: "%.4f", t0))", "ms": "\(String(format: "%.2f", (t1 - t0) * 1000))",
                                                     "ledger_calls": "\(r.count)", "ledger_ms": "\(String(format: "%.2f", r.seconds * 1000))"])
                }
                if !acted {
                    let tail = try ledger.waitForAppend(after: cursor(), matching: filters(), timeout: idle)
                    let t2 = Date().timeIntervalSince1970
                    totals.waitingSeconds += t2 - t1
                    logger.trace("woke", metadata: ["t": "\(String(format: "%.4f", t2))", "waited_ms": "\(String(format: "%.2f", (t2 - t1) * 1000))", "tail": "\(tail)"])
                }
            } catch {
                logger.error("round failed; retrying", metadata: ["error": "\(error)", "retry_in_ms": "\(Int(backoff * 1000))"])
                failing = true
                let until = Date().addingTimeInterval(backoff)
                while !stop.isStopped && Date() < until { usleep(20_000) }
                backoff = min(backoff * 2, 5)
            }
        }
        if stop.isStopped { logger.notice("stopped", metadata: ["signal": "\(stop.signalName ?? "")"]) }
        return totals
    }

    /// The closing log line's figures: the loop's totals, the phases the member timed (compute: its layers; crypto:
    /// signatures, HPKE, AES-GCM, SHA-256; ledger: its calls) and the ledger's round trips, in milliseconds.
    public static func totalsMetadata(_ t: Totals, phases: PhaseTiming, ledger: any Ledger) -> Logger.Metadata {
        func ms(_ s: Double) -> Logger.MetadataValue { "\(String(format: "%.1f", s * 1000))" }
        let trips = ledger.roundTrips
        return ["rounds": "\(t.rounds)", "busy_ms": ms(t.busySeconds), "waiting_ms": ms(t.waitingSeconds),
                "compute_ms": ms(phases.compute), "crypto_ms": ms(phases.crypto), "ledger_ms": ms(phases.ledger),
                "ledger_calls": "\(trips.count)", "ledger_round_trip_ms": ms(trips.seconds)]
    }
}

/// Checks that a ledger is the one a ring was sealed into: its first entry is the `seal` entry of ring `ringID`,
/// signed by the ouroboros. A member started against another ring's ledger (or an empty database) refuses to serve.
public enum RingGenesis {
    public static func check(_ ledger: any Ledger, ringID: String, ouroboros: [UInt8]) throws {
        guard let first = try ledger.entry(at: 1) else {
            throw RingError.notARing("the ledger is empty: seal the ring into it first (`deepring seal MODEL --ring DIR --ledger URL`)")
        }
        guard first.kind == .seal, first.author == ouroboros, first.isAuthentic,
              let m = try? MembersAnnouncement.decode(first), m.ringID == ringID else {
            throw RingError.notAuthentic("the ledger's first entry is not the seal of ring \(ringID) by its ouroboros (another ring's ledger?)")
        }
    }
}
