import Foundation
import Dispatch

/// Engine-wide settings.
public enum Engine {
    /// Number of worker threads used by kernels (the CLI's `--threads`). Results never depend on it:
    /// work is split over output tiles only, never over a reduction.
    nonisolated(unsafe) public static var threads: Int = max(1, ProcessInfo.processInfo.activeProcessorCount)
}

/// A tiny fork-join helper over Dispatch.
public enum Parallel {
    /// Runs `body(i)` for every `i` in `0..<count` using up to `threads` threads.
    /// Each index is run exactly once; the split never changes what a single index computes.
    @inline(__always)
    public static func forEach(_ count: Int, threads: Int = Engine.threads, _ body: (Int) -> Void) {
        if count <= 0 { return }
        if count == 1 || threads <= 1 {
            for i in 0..<count { body(i) }
            return
        }
        let workers = min(count, threads)
        withoutActuallyEscaping(body) { body in
            let box = UnsafeSendableBox(body)
            DispatchQueue.concurrentPerform(iterations: workers) { w in
                var i = w
                while i < count {
                    box.value(i)
                    i += workers
                }
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

/// Wraps a non-Sendable value for hand-off to a fork-join region that finishes before the caller continues.
public struct UnsafeSendableBox<T>: @unchecked Sendable {
    public let value: T
    public init(_ value: T) { self.value = value }
}
