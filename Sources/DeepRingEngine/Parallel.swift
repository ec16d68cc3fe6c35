import Foundation
import Synchronization

/// Engine-wide settings.
public enum Engine {
    /// Number of threads used by kernels (the CLI's `--threads`). Results never depend on it:
    /// work is split over output tiles only, never over a reduction.
    nonisolated(unsafe) public static var threads: Int = max(1, ProcessInfo.processInfo.activeProcessorCount)
}

/// A tiny fork-join helper on a persistent pool of spinning worker threads (Dispatch's wake-up latency,
/// ~20–50 µs per region, was a third of the batch-1 MLP inference time).
public enum Parallel {
    /// Runs `body(i)` for every `i` in `0..<count` using up to `threads` threads. Participant `w` runs the
    /// indices w, w + P, w + 2P, …; each index is run exactly once. Nested or concurrent calls run serially.
    @inline(__always)
    public static func forEach(_ count: Int, threads: Int = Engine.threads, _ body: (Int) -> Void) {
        if count <= 0 { return }
        let participants = min(count, threads)
        if participants <= 1 {
            for i in 0..<count { body(i) }
            return
        }
        withoutActuallyEscaping(body) { body in
            let task: (Int) -> Void = { w in
                var i = w
                while i < count { body(i); i += participants }
            }
            if !WorkerPool.shared.run(participants: participants, task) {
                for i in 0..<count { body(i) }
            }
        }
    }

    /// Splits `0..<count` into at most `threads` contiguous ranges (each a multiple of `granule`, except the last)
    /// and runs them in parallel.
    public static func ranges(_ count: Int, granule: Int = 1, threads: Int = Engine.threads,
                              _ body: (Range<Int>) -> Void) {
        if count <= 0 { return }
        let units = (count + granule - 1) / granule
        let parts = max(1, min(threads, units))
        if parts == 1 { body(0..<count); return }
        let per = (units + parts - 1) / parts
        forEach(parts, threads: parts) { p in
            let lo = p * per * granule
            let hi = min(count, (p + 1) * per * granule)
            if lo < hi { body(lo..<hi) }
        }
    }
}

/// Persistent workers that spin briefly on a generation counter, then sleep on a condition variable.
final class WorkerPool: @unchecked Sendable {
    static let shared = WorkerPool()

    private let generation = Atomic<Int>(0)
    private let remaining = Atomic<Int>(0)
    private let busy = Atomic<Bool>(false)
    private let lock = NSCondition()
    private var sleepers = 0
    private var workers = 0
    private var job: ((Int) -> Void)?
    private var participants = 0

    /// Runs `task(0)` on the caller and `task(w)` for w in 1..<participants on workers. Returns false (having
    /// run nothing) when the pool is already in use, for example by a nested call.
    func run(participants n: Int, _ task: @escaping (Int) -> Void) -> Bool {
        guard busy.compareExchange(expected: false, desired: true, ordering: .acquiring).exchanged else { return false }
        while workers < n - 1 { spawn(index: workers + 1) }
        job = task
        participants = n
        remaining.store(workers, ordering: .relaxed)
        generation.add(1, ordering: .releasing)
        lock.lock()
        if sleepers > 0 { lock.broadcast() }
        lock.unlock()
        task(0)
        var spins = 0
        while remaining.load(ordering: .acquiring) > 0 {
            spins += 1
            if spins > 1000 { sched_yield() }
        }
        job = nil
        busy.store(false, ordering: .releasing)
        return true
    }

    private func spawn(index: Int) {
        workers += 1
        let seen = generation.load(ordering: .acquiring)
        let t = Thread { [unowned self] in self.loop(index: index, seen: seen) }
        t.stackSize = 1 << 20
        t.start()
    }

    private func loop(index: Int, seen start: Int) {
        var seen = start
        while true {
            var spins = 0
            while generation.load(ordering: .acquiring) == seen {
                spins += 1
                if spins > 200_000 {
                    lock.lock()
                    sleepers += 1
                    while generation.load(ordering: .acquiring) == seen { lock.wait() }
                    sleepers -= 1
                    lock.unlock()
                    break
                }
            }
            seen = generation.load(ordering: .acquiring)
            if index < participants, let j = job { j(index) }
            remaining.subtract(1, ordering: .releasing)
        }
    }
}

/// Wraps a non-Sendable value for hand-off to a fork-join region that finishes before the caller continues.
public struct UnsafeSendableBox<T>: @unchecked Sendable {
    public let value: T
    public init(_ value: T) { self.value = value }
}
