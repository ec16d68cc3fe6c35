import DeepRingEngine
import DeepRingData
import Foundation

/// The package root, found from this file's path (tests may run from any folder).
let packageRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()

/// `../shared/data/mnist` beside the package, when present (CI has it; a user's fresh clone may not).
let mnistDirectory: String? = {
    let p = packageRoot.deletingLastPathComponent().appendingPathComponent("shared/data/mnist").path
    return IDX.mnistPresent(in: p) ? p : nil
}()

func randomFloats(_ n: Int, seed: UInt64, scale: Float = 1) -> [Float] {
    var r = SeededRandom(seed: seed)
    return (0..<n).map { _ in (r.uniform() * 2 - 1) * scale }
}

func temporaryDirectory() -> String {
    let d = NSTemporaryDirectory() + "deepring-tests-\(UUID().uuidString)"
    try! FileManager.default.createDirectory(atPath: d, withIntermediateDirectories: true)
    return d
}

/// Runs `body` with `Engine.threads` set to `t`, restoring it afterwards.
func withThreads<R>(_ t: Int, _ body: () throws -> R) rethrows -> R {
    let old = Engine.threads
    Engine.threads = t
    defer { Engine.threads = old }
    return try body()
}

func bitPatterns(_ t: Tensor) -> [UInt32] { t.data.map(\.bitPattern) }
