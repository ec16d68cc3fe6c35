import ArgumentParser
import DeepRingEngine
import Foundation

struct Bench: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Benchmarks that print figures.",
        subcommands: [BenchEngine.self])
}

struct BenchEngine: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "engine",
        abstract: "GEMM GFLOP/s, MLP training and inference speed, VGG-19 forward speed.",
        discussion: """
        With --reference PYTHON, the JAX peer (../shared/bench/jax_reference.py) runs before and after ours in the
        same run and the ratios are printed. Shared machines are noisy: compare only figures from one run.
        """)

    @Flag(help: "Print one JSON object.") var json = false
    @Option(help: "Timed repetitions per figure (median reported).") var repeats: Int = 3
    @Flag(help: "Skip the VGG-19 figures.") var noVgg = false
    @Option(help: "Python with jax installed, to run the JAX reference in the same run.") var reference: String?
    @Option(help: "Path of jax_reference.py.") var referenceScript: String = "../shared/bench/jax_reference.py"
    @OptionGroup var threadOptions: ThreadOptions

    func run() throws {
        threadOptions.apply()
        do {
            var ref1: [String: Double] = [:], ref2: [String: Double] = [:]
            if let py = reference { ref1 = try runReference(py) }
            let figures = try EngineBenchmark.run(repeats: repeats, includeVGG: !noVgg) { if !json { print($0) } }
            if let py = reference { ref2 = try runReference(py) }
            var ratios: [String: Double] = [:]
            if reference != nil {
                for f in figures {
                    guard let a = ref1[f.key], let b = ref2[f.key] else { continue }
                    let jax = (a + b) / 2
                    // Ratio as "ours / JAX" for times, "ours / JAX" for rates; the reader knows which is better.
                    ratios[f.key] = f.value / jax
                    if !json {
                        print("ratio " + f.key.padding(toLength: 27, withPad: " ", startingAt: 0)
                              + String(format: "ours %10.2f / peer %10.2f (peer runs %.2f, %.2f) = %.2f  %@", f.value, jax, a, b,
                                       f.value / jax, f.unit as NSString))
                    }
                }
            }
            if json {
                var obj: [String: Any] = ["threads": Engine.threads]
                for f in figures { obj[f.key] = f.value }
                if !ratios.isEmpty { obj["ratio_to_peer"] = ratios; obj["peer"] = ref1.merging(ref2) { ($0 + $1) / 2 } }
                let d = try JSONSerialization.data(withJSONObject: obj, options: [.sortedKeys])
                print(String(decoding: d, as: UTF8.self))
            }
        } catch let e as ExitCode { throw e } catch { throw fail(error) }
    }

    /// numpy's matmul (OpenBLAS) at the same GEMM shapes, printed in the reference's `REF name value unit` form.
    static let numpyGEMM = """
    import numpy as np, time
    for m, k, n in ((128, 784, 900), (128, 900, 600), (1024, 1024, 1024)):
        a = np.random.rand(m, k).astype(np.float32); b = np.random.rand(k, n).astype(np.float32)
        reps = max(1, int(4e8 / (2 * m * n * k))); ts = []
        for _ in range(4):
            t = time.perf_counter()
            for _ in range(reps): a @ b
            ts.append(time.perf_counter() - t)
        name = "gemm_gflops_1024" if m == 1024 else f"gemm_gflops_{m}x{k}x{n}"
        print(f"REF {name} {2 * m * n * k * reps / sorted(ts)[2] / 1e9:.2f} GFLOP/s (numpy {np.__version__})")
    """

    func runReference(_ python: String) throws -> [String: Double] {
        var out = try runPython(python, ["-c", BenchEngine.numpyGEMM])
        out.merge(try runPython(python, [referenceScript, noVgg ? "mlp" : "all", "--repeats", "\(repeats)"])) { a, _ in a }
        return out
    }

    func runPython(_ python: String, _ arguments: [String]) throws -> [String: Double] {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: python)
        p.arguments = arguments
        let pipe = Pipe()
        p.standardOutput = pipe
        try p.run()
        let data = pipe.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        var out: [String: Double] = [:]
        for line in String(decoding: data, as: UTF8.self).split(separator: "\n") {
            if !json { print(line) }
            let parts = line.split(separator: " ")
            if parts.count >= 3, parts[0] == "REF", let v = Double(parts[2]) { out[String(parts[1])] = v }
        }
        guard p.terminationStatus == 0 else { throw ValidationError("the JAX reference failed (exit \(p.terminationStatus))") }
        return out
    }
}
