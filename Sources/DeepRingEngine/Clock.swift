import Foundation

/// Seconds on the monotonic clock (for durations: timings, deadlines, progress), never the wall clock.
@inline(__always) public func now() -> Double { Double(DispatchTime.now().uptimeNanoseconds) * 1e-9 }
