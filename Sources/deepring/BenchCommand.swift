import ArgumentParser
import DeepRingClient
import DeepRingEmbedded
import DeepRingNode
import DeepRingOwner
import DeepRingEngine
import DeepRingTraining
import DeepRingLedger
import DeepRingLedgerPostgres
import DeepRingLedgerSQLite
import DeepRingProtocol
import Foundation

/// The median of the benchmarks' samples (the mean of the middle two for an even count).
func median(_ xs: [Double]) -> Double {
    let s = xs.sorted(), h = s.count / 2
    return s.count % 2 == 1 ? s[h] : (s[h - 1] + s[h]) / 2
}

struct Bench: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Benchmarks that print figures.",
        subcommands: [BenchEngine.self, BenchRing.self, BenchLedger.self])
}

struct BenchEngine: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "engine",
        abstract: "GEMM GFLOP/s, MLP training and inference speed, VGG-19 forward speed.",
        discussion: """
        With --reference PYTHON, the JAX peer (../shared/bench/jax_reference.py) runs before and after ours in the \
        same run and the ratios are printed; with --torch PYTHON, PyTorch (CPU) runs the same figures likewise, and \
        with --ort PYTHON, ONNX Runtime (../shared/bench/ort_reference.py) the MLP's inference figures. \
        Shared machines are noisy: compare only figures from one run. With --rounds N the whole sequence runs N \
        times and each ratio is the median of the N same-round ratios; with a peer the default is 3 rounds (about \
        8 minutes with both peers), without one a single round.

        The first line names the kernels that ran (DEEPRING_ISA=avx512|avx2|generic forces a path; the default is \
        the fastest this CPU runs); the GEMM figures are measured under every other vector path this CPU runs too \
        (keys ending _avx2, _avx512), for the ratio between paths in the same run.
        """)

    @Flag(help: "Print one JSON object.") var json = false
    @Option(help: "Timed repetitions per figure (median reported).") var repeats: Int = 3
    @Option(name: .customLong("rounds"), help: "Rounds of ours-between-the-peers; each figure's ratio is the median of the rounds' ratios (a slow phase of the machine, which lasts seconds, then spoils one round, not the figure). Default: 3 with --reference or --torch, else 1.") var roundsOption: Int?
    /// Three rounds when a peer runs (a single round's ratio is at the mercy of the machine's slow phases).
    var rounds: Int { roundsOption ?? (reference != nil || torch != nil || ort != nil ? 3 : 1) }
    @Flag(help: "Skip the VGG-19 figures.") var noVgg = false
    @Option(help: "Run only these parts, comma-separated: gemm, mlp, vgg, and step (the distribution of one MLP training step's time: min, quartile, median of 60 blocks of 20 steps; no peer runs it; only when named).") var only: String?
    @Option(help: "Python with jax installed, to run the JAX reference in the same run.") var reference: String?
    @Option(help: "Path of jax_reference.py.") var referenceScript: String = "../shared/bench/jax_reference.py"
    @Option(help: "Python with torch installed, to run the same figures in PyTorch (CPU) in the same run.") var torch: String?
    @Option(help: "Python with onnxruntime and onnx installed, to run the MLP inference figures in ONNX Runtime in the same run.") var ort: String?
    @Option(help: "Path of ort_reference.py.") var ortScript: String = "../shared/bench/ort_reference.py"
    @Flag(help: "Print per-layer forward times of full-width VGG-19 at batch 64 instead (where the time goes; GFLOP/s counted as direct convolution, so Winograd layers, marked wino, show more than the peak); with --only mlp, of the MLP at batch 256.")
    var layers = false
    @OptionGroup var threadOptions: ThreadOptions

    func validate() throws {
        if let r = roundsOption, r < 1 || r > 100 { throw ValidationError("--rounds must be between 1 and 100") }
        guard repeats >= 1 && repeats <= 1000 else { throw ValidationError("--repeats must be between 1 and 1000") }
    }

    func run() throws {
        threadOptions.apply()
        if !json {
            print("cpu: \(ISA.cpuIdentity)")
            print("kernels: \(Engine.isa.summary); this CPU runs \(ISA.supported.map(\.rawValue).joined(separator: ", "))")
        }
        if layers {
            let mlp = try parts() == [.mlp]
            for line in try mlp ? EngineBenchmark.mlpLayers(batch: 256, repeats: repeats) : EngineBenchmark.vggLayers(batch: 64, repeats: repeats) {
                print(line)
            }
            return
        }
        do {
            let selected = try parts()
            var results: [Round] = []
            for r in 1...rounds {
                if rounds > 1 && !json { print("round \(r) of \(rounds)") }
                results.append(try round(selected))
            }
            // Per figure: the ratio of each round, then their median (one round: its ratio).
            func ratios(_ peer: KeyPath<Round, PeerRuns>, _ name: String) -> [String: Double] {
                var out: [String: Double] = [:]
                for f in results[0].figures {
                    let each = results.compactMap { $0.ratio(f.key, $0[keyPath: peer]) }
                    guard each.count == results.count else { continue }
                    let mid = median(each)
                    out[f.key] = mid
                    if json { continue }
                    // The reference Python runs numpy's matmul (OpenBLAS) for the GEMM figures, JAX for the rest.
                    let who = (f.key.hasPrefix("gemm_") && name == "JAX" ? "numpy" : name) as NSString
                    let label = "ratio " + f.key.padding(toLength: 27, withPad: " ", startingAt: 0)
                    if results.count == 1 {
                        let runs = results[0][keyPath: peer]
                        print(label + String(format: "ours %10.2f / %@ %10.2f (runs %.2f, %.2f) = %.2f  %@", f.value, who,
                                             runs.mean[f.key]!, runs.before[f.key]!, runs.after[f.key]!, mid, f.unit as NSString))
                    } else {
                        print(label + String(format: "ours / %@ per round %@ → median %.2f  (%@)", who,
                                             each.map { String(format: "%.2f", $0) }.joined(separator: ", ") as NSString, mid,
                                             f.unit as NSString))
                    }
                }
                return out
            }
            let jaxRatios = ratios(\.jax, "JAX"), torchRatios = ratios(\.torch, "PyTorch"), ortRatios = ratios(\.ort, "ONNX Runtime")
            if json {
                var obj: [String: Any] = ["threads": Engine.threads, "rounds": rounds, "isa": Engine.isa.rawValue,
                                          "isa_supported": ISA.supported.map(\.rawValue), "cpu": ISA.cpuIdentity]
                // Our figures and the peers' (each the mean of its two runs in a round): the median over the rounds.
                for f in results[0].figures {
                    obj[f.key] = median(results.compactMap { r in r.figures.first { $0.key == f.key }?.value })
                }
                func peerMedians(_ peer: KeyPath<Round, PeerRuns>) -> [String: Double] {
                    let means = results.map { $0[keyPath: peer].mean }
                    return means[0].keys.reduce(into: [:]) { out, k in
                        let vs = means.compactMap { $0[k] }
                        if vs.count == means.count { out[k] = median(vs) }
                    }
                }
                if !jaxRatios.isEmpty { obj["ratio_to_peer"] = jaxRatios; obj["peer"] = peerMedians(\.jax) }
                if !torchRatios.isEmpty { obj["ratio_to_torch"] = torchRatios; obj["torch"] = peerMedians(\.torch) }
                if !ortRatios.isEmpty { obj["ratio_to_ort"] = ortRatios; obj["ort"] = peerMedians(\.ort) }
                let d = try JSONSerialization.data(withJSONObject: obj, options: [.sortedKeys])
                print(String(decoding: d, as: UTF8.self))
            }
        } catch let e as ExitCode { throw e } catch { throw fail(error) }
    }

    /// A peer's figures from its run right before ours and right after.
    struct PeerRuns {
        var before: [String: Double] = [:], after: [String: Double] = [:]
        /// The mean of the two runs, for figures both have.
        var mean: [String: Double] {
            var out: [String: Double] = [:]
            for (k, v) in before { if let w = after[k] { out[k] = (v + w) / 2 } }
            return out
        }
    }

    /// One round: our figures, and each peer's runs around ours.
    struct Round {
        var figures: [EngineBenchmark.Figure] = []
        var jax = PeerRuns(), torch = PeerRuns(), ort = PeerRuns()
        /// Ours / the peer's mean, for times and rates alike (the unit says which way is better).
        func ratio(_ key: String, _ peer: PeerRuns) -> Double? {
            guard let mine = figures.first(where: { $0.key == key })?.value, let p = peer.mean[key] else { return nil }
            return mine / p
        }
    }

    /// Part by part, the peers run right before and right after ours (the mean of the two is compared), so that
    /// both sides of a ratio see the same minutes of a shared machine, whose speed drifts.
    func round(_ selected: Set<EngineBenchmark.Part>) throws -> Round {
        var r = Round()
        func merge(_ into: inout [String: Double], _ new: [String: Double]) { into.merge(new) { a, _ in a } }
        for part in EngineBenchmark.Part.allCases where selected.contains(part) {
            let peers = part != .step
            if let py = reference, peers { merge(&r.jax.before, try runReference(py, part)) }
            if let py = torch, peers, part != .gemm { merge(&r.torch.before, try runTorch(py, part)) }
            if let py = ort, part == .mlp { merge(&r.ort.before, try runORT(py)) }
            r.figures += try EngineBenchmark.run(repeats: repeats, parts: [part]) { if !json { print($0) } }
            if let py = ort, part == .mlp { merge(&r.ort.after, try runORT(py)) }
            if let py = torch, peers, part != .gemm { merge(&r.torch.after, try runTorch(py, part)) }
            if let py = reference, peers { merge(&r.jax.after, try runReference(py, part)) }
        }
        return r
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

    /// PyTorch (CPU) peer: the same MLP (training epoch on 60,000 random samples, batch 128, SGD; inference at
    /// batch 1 and 256) and the same full-width VGG-19 forward (random weights, 32×32×3), same thread count.
    static let torchReference = #"""
    import sys, time, torch, torch.nn as nn
    threads = int(sys.argv[1]) if len(sys.argv) > 1 else 2
    repeats = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    what = sys.argv[3] if len(sys.argv) > 3 else "all"
    torch.set_num_threads(threads)
    torch.manual_seed(1)
    def med(fn, reps):
        ts = []
        for _ in range(reps):
            t = time.perf_counter(); fn(); ts.append(time.perf_counter() - t)
        return sorted(ts)[len(ts) // 2]
    def infer(net, name, batch_of, sizes, unit, scale):
        with torch.inference_mode():
            for bs, iters in sizes:
                xb = batch_of(bs)
                net(xb)
                def go():
                    for _ in range(iters): net(xb)
                t = med(go, repeats)
                print(f"REF {name}_infer_b{bs}_{unit} {t / iters * scale:.1f} {unit}")
                print(f"REF {name}_infer_b{bs}_img_per_s {bs * iters / t:.1f} img/s")
    print(f"REF info torch={torch.__version__} threads={torch.get_num_threads()}")
    if what in ("mlp", "all"):
        sizes = [784, 900, 600, 300, 100, 10]
        layers = []
        for a, b in zip(sizes[:-1], sizes[1:]):
            layers += [nn.Linear(a, b), nn.ReLU()]
        mlp = nn.Sequential(*layers[:-1])
        x = torch.rand(60000, 784); y = torch.randint(0, 10, (60000,))
        opt = torch.optim.SGD(mlp.parameters(), lr=0.05)
        lossf = nn.CrossEntropyLoss()
        def epoch():
            for i in range(0, 60000, 128):
                opt.zero_grad(set_to_none=True)
                lossf(mlp(x[i:i+128]), y[i:i+128]).backward()
                opt.step()
        epoch()
        print(f"REF mlp_train_epoch_s {med(epoch, repeats):.3f} s")
        infer(mlp, "mlp", lambda bs: x[:bs].clone(), ((1, 2000), (256, 100)), "us", 1e6)
    if what in ("vgg", "all"):
        cfg = [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M"]
        layers, cin = [], 3
        for c in cfg:
            if c == "M": layers.append(nn.MaxPool2d(2)); continue
            layers += [nn.Conv2d(cin, c, 3, padding=1), nn.ReLU()]; cin = c
        vgg = nn.Sequential(*layers, nn.Flatten(), nn.Linear(512, 10)).eval()
        infer(vgg, "vgg19", lambda bs: torch.rand(bs, 3, 32, 32), ((1, 10), (64, 2)), "ms", 1e3)
    """#

    func runTorch(_ python: String, _ part: EngineBenchmark.Part) throws -> [String: Double] {
        try runPython(python, ["-c", BenchEngine.torchReference, "\(Engine.threads)", "\(repeats)", part.rawValue])
    }

    /// ONNX Runtime's MLP inference at batch 1 and 256, same thread count.
    func runORT(_ python: String) throws -> [String: Double] {
        try runPython(python, [ortScript, "--threads", "\(Engine.threads)", "--repeats", "\(max(repeats, 5))"])
    }

    func parts() throws -> Set<EngineBenchmark.Part> {
        var p = EngineBenchmark.defaultParts
        if let only {
            p = []
            for name in only.split(separator: ",") {
                guard let part = EngineBenchmark.Part(rawValue: name.trimmingCharacters(in: .whitespaces).lowercased()) else {
                    throw ValidationError("--only: unknown part '\(name)' (expected gemm, mlp, vgg or step)")
                }
                p.insert(part)
            }
        }
        if noVgg { p.remove(.vgg) }
        return p
    }

    /// numpy's GEMM for the gemm part, the JAX reference script for mlp and vgg.
    func runReference(_ python: String, _ part: EngineBenchmark.Part) throws -> [String: Double] {
        part == .gemm ? try runPython(python, ["-c", BenchEngine.numpyGEMM])
                      : try runPython(python, [referenceScript, part.rawValue, "--repeats", "\(repeats)"])
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
        guard p.terminationStatus == 0 else { throw ValidationError("the reference \(python) failed (exit \(p.terminationStatus))") }
        return out
    }
}

struct BenchRing: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "ring",
        abstract: "End-to-end query latency and throughput of a sealed MLP ring against the plain model.",
        discussion: """
        Seals the paper's MLP (random weights, or --model) into a temporary ring and times queries through the ledger: \
        batch 1 latency with a per-phase breakdown (compute, crypto, ledger) and batch 256 throughput. The \
        authenticity check that runs before queries is timed on its own (queries here use --verify-every ∞). \
        ring_b1_ms is the time until the querent has its answer; the reshuffle that follows each delivery (new \
        placement, fresh keys) is timed on its own, and ring_b1_cycle_ms and the batch-256 throughput include it. \
        ring_b256_bound_* is what no implementation of the protocol could beat on this machine: every layer \
        computed twice at the plain model's speed, plus the SHA-256 and AES-256-GCM passes the protocol requires \
        over every posted tensor (timed here: sha256_gb_per_s, aes_gcm_gb_per_s), spread perfectly over all \
        threads, and nothing else.

        With --deployment, the processes deployment's batch-1 breakdown comes from every member's closing totals \
        (summed over the members, per query): compute, crypto (signatures, HPKE, AES-GCM, SHA-256), ledger round \
        trips, the rest of the members' busy time, and what is left of the latency — wake-ups, hops between \
        processes and the querent's own work.
        """)

    @Option(help: "Model file to seal (default: the paper's MLP with random weights).") var model: String?
    @Option(help: "Timed queries for the batch-1 figure.") var queries: Int = 200
    @Option(help: ArgumentHelp("Compare deployments in one run: embedded (one process, SQLite), processes (owner and blocks as processes, over --ledger or a SQLite file), or both.", valueName: "embedded|processes|both"))
    var deployment: String?
    @Option(help: "Querents at once for the processes deployment's queries_per_s_k figure.") var querents: Int = 8
    @Option(help: "Kernel threads of each member process (default: the machine's cores, as each process alone would use).") var memberThreads: Int?
    @Option(help: ArgumentHelp("The processes deployment's ledger: an empty PostgreSQL database (`ledger init`); default: a SQLite file.", valueName: "url"))
    var ledger: String?
    @Option(help: ArgumentHelp("A file whose first line is the database password (or set PGPASSWORD).", valueName: "file")) var passwordFile: String?
    @Flag(help: "Print one JSON object.") var json = false
    @OptionGroup var threadOptions: ThreadOptions

    func validate() throws {
        guard queries >= 1 && queries <= 1_000_000 else { throw ValidationError("--queries must be between 1 and 1000000") }
        if let d = deployment, !["embedded", "processes", "both"].contains(d) { throw ValidationError("--deployment must be embedded, processes or both") }
        guard querents >= 1 && querents <= 64 else { throw ValidationError("--querents must be between 1 and 64") }
        if let t = memberThreads, t < 1 || t > 256 { throw ValidationError("--member-threads must be between 1 and 256") }
        if let l = ledger {
            try LedgerOptions.checkPostgres(l)
            guard deployment != nil else { throw ValidationError("--ledger goes with --deployment processes|both") }
        }
    }

    func run() throws {
        threadOptions.apply()
        if let d = deployment {
            do { try runDeployments(d == "both" ? ["embedded", "processes"] : [d]) } catch let e as ExitCode { throw e } catch { throw fail(error) }
            return
        }
        do {
            let m = try model.map { try ModelFile.load(path: $0).0 } ?? Model(.mlp(inputShape: [784], classes: 10), seed: 1)
            let dir = try TemporaryPaths.makeDirectory(purpose: "bench")
            defer { TemporaryPaths.unregister(dir); removeRingFolder(dir) }
            try SealedRing.seal(m, into: dir)
            let rt = try RingRuntime(directory: dir)
            rt.verifyEvery = Int.max
            let n = m.inputShape.reduce(1, *)
            var r = SeededRandom(seed: 3)
            let x1 = Tensor(shape: [1] + m.inputShape, data: (0..<n).map { _ in r.uniform() })
            let x256 = Tensor(shape: [256] + m.inputShape, data: (0..<(256 * n)).map { _ in r.uniform() })
            _ = try rt.query(x1); _ = try rt.query(x256)
            var plain1: [Double] = []
            for _ in 0..<max(20, queries) { let t0 = now(); _ = m.forward(x1); plain1.append(now() - t0) }
            rt.timing.reset()
            let before = try rt.ledger.lastSequence()
            var ring1: [Double] = []
            var cycle1: [Double] = []
            for _ in 0..<max(5, queries) { let t0 = now(); ring1.append(try rt.query(x1).seconds); cycle1.append(now() - t0) }
            let per = Double(ring1.count)
            let reshuffle = rt.timing.reshuffle / per
            let phases = (rt.timing.compute / per, rt.timing.crypto / per, rt.timing.ledger / per)
            let perQuery = try rt.ledger.entries(from: before + 1, limit: Int.max / 2)
            // Stored bytes per entry: payload + previous hash, author, hash (32 each), signature (64), ~40 of row fields.
            var stored = 0
            for e in perQuery { stored += e.payload.count + 32 * 3 + 64 + 40 + (e.queryID?.utf8.count ?? 0) }
            let bytesB1 = Double(stored) / per
            rt.timing.reset()
            let t0 = now(); var k = 0
            while now() - t0 < 2 || k < 3 { _ = try rt.query(x256); k += 1 }
            let ring256 = Double(256 * k) / (now() - t0)
            let per256 = (now() - t0) / Double(k)
            let phases256 = (rt.timing.compute / Double(k), rt.timing.crypto / Double(k), rt.timing.ledger / Double(k), rt.timing.reshuffle / Double(k))
            let t1 = now(); var k2 = 0
            while now() - t1 < 1 || k2 < 3 { _ = m.forward(x256); k2 += 1 }
            let plain256 = Double(256 * k2) / (now() - t1)
            let bound = try RingThroughputBound.measure(m, batch: 256, plainSeconds: 256 / plain256)
            let tc = now(); _ = rt.ring.checkAuthenticity(); let check = now() - tc
            let fig: [(String, Double, String)] = [
                ("ring_b1_ms", median(ring1) * 1e3, "ms"), ("plain_b1_ms", median(plain1) * 1e3, "ms"),
                ("ring_b1_compute_ms", phases.0 * 1e3, "ms"), ("ring_b1_crypto_ms", phases.1 * 1e3, "ms"),
                ("ring_b1_ledger_ms", phases.2 * 1e3, "ms"),
                ("reshuffle_ms", reshuffle * 1e3, "ms"), ("ring_b1_cycle_ms", median(cycle1) * 1e3, "ms"),
                ("ring_b256_img_per_s", ring256, "img/s"), ("plain_b256_img_per_s", plain256, "img/s"),
                ("ring_b256_over_plain", ring256 / plain256, "x"),
                ("ring_b256_query_ms", per256 * 1e3, "ms"), ("ring_b256_compute_ms", phases256.0 * 1e3, "ms"),
                ("ring_b256_crypto_ms", phases256.1 * 1e3, "ms"), ("ring_b256_ledger_ms", phases256.2 * 1e3, "ms"),
                ("ring_b256_reshuffle_ms", phases256.3 * 1e3, "ms"),
                ("ring_b256_bound_img_per_s", 256 / bound.seconds, "img/s"),
                ("ring_b256_bound_over_plain", bound.ratioToPlain, "x"),
                ("sha256_gb_per_s", bound.sha256BytesPerSecond / 1e9, "GB/s"),
                ("aes_gcm_gb_per_s", bound.aesGCMBytesPerSecond / 1e9, "GB/s"),
                ("authenticity_check_ms", check * 1e3, "ms"), ("ledger_bytes_per_b1_query", bytesB1, "B"),
            ]
            if json {
                var obj: [String: Any] = ["threads": Engine.threads]
                for (k, v, _) in fig { obj[k] = v }
                print(String(decoding: try JSONSerialization.data(withJSONObject: obj, options: [.sortedKeys]), as: UTF8.self))
            } else {
                for (k, v, u) in fig { print(k.padding(toLength: 28, withPad: " ", startingAt: 0) + String(format: "%12.3f ", v) + u) }
            }
        } catch let e as ExitCode { throw e } catch { throw fail(error) }
    }
}

extension BenchRing {
    /// `--deployment`: the same model and inputs through the embedded ring and through the owner and blocks as
    /// separate processes, in one run.
    func runDeployments(_ which: [String]) throws {
        let m = try model.map { try ModelFile.load(path: $0).0 } ?? Model(.mlp(inputShape: [784], classes: 10), seed: 1)
        let n = m.inputShape.reduce(1, *)
        var r = SeededRandom(seed: 3)
        let x1 = Tensor(shape: [1] + m.inputShape, data: (0..<n).map { _ in r.uniform() })
        let x256 = Tensor(shape: [256] + m.inputShape, data: (0..<(256 * n)).map { _ in r.uniform() })
        var figures: [(String, Double)] = []
        for d in which {
            stderrPrint("bench ring: \(d)…")
            let f = d == "embedded" ? try embedded(m, x1, x256) : try processes(m, x1, x256)
            figures += f.map { ("\(d)_\($0.0)", $0.1) }
        }
        let byKey = Dictionary(figures, uniquingKeysWith: { a, _ in a })
        if let e = byKey["embedded_ring_b1_p50_ms"], let p = byKey["processes_ring_b1_p50_ms"] { figures.append(("processes_over_embedded_b1_p50", p / e)) }
        if let e = byKey["embedded_ring_b1_p99_ms"], let p = byKey["processes_ring_b1_p99_ms"] { figures.append(("processes_over_embedded_b1_p99", p / e)) }
        if let e = byKey["embedded_ring_b256_img_per_s"], let p = byKey["processes_ring_b256_img_per_s"] { figures.append(("processes_over_embedded_b256", p / e)) }
        if let one = byKey["processes_queries_per_s"], let k = byKey["processes_queries_per_s_k"] { figures.append(("processes_k_over_one_querent", k / one)) }
        if json {
            var obj: [String: Any] = ["threads": Engine.threads, "querents": querents, "ledger": ledger == nil ? "sqlite" : "postgres"]
            for (k, v) in figures { obj[k] = v }
            print(String(decoding: try JSONSerialization.data(withJSONObject: obj, options: [.sortedKeys]), as: UTF8.self))
        } else {
            for (k, v) in figures { print(k.padding(toLength: 40, withPad: " ", startingAt: 0) + String(format: "%12.3f", v)) }
        }
    }

    static func percentile(_ xs: [Double], _ p: Double) -> Double {
        let s = xs.sorted()
        return s.isEmpty ? 0 : s[min(s.count - 1, Int((Double(s.count - 1) * p).rounded()))]
    }

    /// The embedded ring (as `query` runs it: a reshuffle after every query, timed apart; no check per query).
    func embedded(_ m: Model, _ x1: Tensor, _ x256: Tensor) throws -> [(String, Double)] {
        let dir = try TemporaryPaths.makeDirectory(purpose: "bench")
        defer { TemporaryPaths.unregister(dir); removeRingFolder(dir) }
        try SealedRing.seal(m, into: dir)
        let rt = try RingRuntime(directory: dir)
        rt.verifyEvery = Int.max
        _ = try rt.query(x1); _ = try rt.query(x256)
        rt.timing.reset()
        var lat: [Double] = []
        let t0 = now()
        for _ in 0..<max(5, queries) { lat.append(try rt.query(x1).seconds) }
        let cycle = now() - t0
        let per = Double(lat.count)
        let phases = (rt.timing.compute / per, rt.timing.crypto / per, rt.timing.ledger / per)
        let t1 = now(); var k = 0
        while now() - t1 < 2 || k < 3 { _ = try rt.query(x256); k += 1 }
        let img = Double(256 * k) / (now() - t1)
        rt.close()
        return [("ring_b1_p50_ms", BenchRing.percentile(lat, 0.5) * 1e3), ("ring_b1_p99_ms", BenchRing.percentile(lat, 0.99) * 1e3),
                ("queries_per_s", per / cycle), ("ring_b256_img_per_s", img),
                ("b1_compute_ms", phases.0 * 1e3), ("b1_crypto_ms", phases.1 * 1e3), ("b1_ledger_ms", phases.2 * 1e3)]
    }

    /// The owner and every block as processes of this machine (`ring up`), queried by querents in this process.
    func processes(_ m: Model, _ x1: Tensor, _ x256: Tensor) throws -> [(String, Double)] {
        let dir = try TemporaryPaths.makeDirectory(purpose: "bench")
        defer { TemporaryPaths.unregister(dir); removeRingFolder(dir) }
        let ring = dir + "/ring"
        let url = try ledger.map { try PostgresURL.parse($0, passwordFile: passwordFile) }
        let options = try LedgerOptions.parse(url == nil ? [] : ["--ledger", ledger ?? ""] + (passwordFile.map { ["--password-file", $0] } ?? []))
        func openLedger() throws -> any Ledger {
            if let u = url { return try PostgresLedger(url: u, logger: quietLogger("deepring.ledger")) }
            return try SQLiteLedger(path: RingPaths(ring).ledger)
        }
        do {
            let l = url == nil ? nil : try openLedger()
            defer { (l as? PostgresLedger)?.close() }
            try SealedRing.seal(m, into: ring, ledger: l)
        }
        let manifest = try RingManifest.read(RingPaths(ring).manifest)
        let logs = dir + "/logs"
        let local = try LocalRing(ring: ring, ledgerOptions: options, logDir: logs, ownerArguments: ["--check-every", "0"], logLevel: "info",
                                  memberArguments: memberThreads.map { ["--threads", "\($0)"] } ?? [])
        local.startAll()
        defer { local.stopAll(quiet: true) }
        let sessions = try (0..<querents).map { _ in QuerentSession(manifest: manifest, ledger: try openLedger()) }
        defer { for s in sessions { (s.ledger as? PostgresLedger)?.close() } }
        let s0 = sessions[0]
        _ = try s0.query(x1, timeout: 120)   // the processes start, and the owner's first authenticity round runs
        var lat: [Double] = []
        let t0 = now()
        for _ in 0..<max(5, queries) { lat.append(try s0.query(x1, timeout: 60).seconds) }
        let one = Double(lat.count) / (now() - t0)
        // The per-phase breakdown of batch 1: every member's closing totals (its log's last line), summed over the
        // members and divided by the queries; then the members start again for the other figures.
        local.stopAll(quiet: true)
        let phases = BenchRing.memberTotals(logs).mapValues { $0 / Double(lat.count + 1) }
        let busy = phases["busy_ms"] ?? 0
        // The ledger's time within the members' rounds (page reads and appends, as each member timed them); the
        // round trips counted by the client also hold those made while waiting for a wake-up.
        let ledgerMS = phases["ledger_ms"] ?? 0
        let breakdown: [(String, Double)] = [
            ("b1_compute_ms", phases["compute_ms"] ?? 0), ("b1_crypto_ms", phases["crypto_ms"] ?? 0),
            ("b1_ledger_ms", ledgerMS), ("b1_ledger_calls", phases["ledger_calls"] ?? 0),
            ("b1_ledger_round_trips_ms", phases["ledger_round_trip_ms"] ?? 0),
            ("b1_members_busy_ms", busy),
            ("b1_other_cpu_ms", max(0, busy - (phases["compute_ms"] ?? 0) - (phases["crypto_ms"] ?? 0) - ledgerMS)),
            ("b1_wakeups_and_querent_ms", max(0, lat.reduce(0, +) / Double(lat.count) * 1e3 - busy)),
        ]
        local.startAll()
        _ = try s0.query(x1, timeout: 120)
        _ = try s0.query(x256, timeout: 120)
        // K querents at once, each asking one image at a time: the ring pipelines them.
        let each = max(10, queries / querents)
        let errors = ErrorList()
        let t1 = now()
        DispatchQueue.concurrentPerform(iterations: querents) { q in
            for _ in 0..<each { do { _ = try sessions[q].query(x1, timeout: 60) } catch { errors.add("\(error)") } }
        }
        let k = Double(querents * each - errors.count) / (now() - t1)
        if errors.count > 0 { stderrPrint("bench ring: \(errors.count) of \(querents * each) concurrent queries failed: \(errors.first ?? "")") }
        let t2 = now(); var n256 = 0
        while now() - t2 < 3 || n256 < 3 { _ = try s0.query(x256, timeout: 120); n256 += 1 }
        let img = Double(256 * n256) / (now() - t2)
        // One ledger round trip and one wake-up, as a querent sees them.
        var rtt: [Double] = []
        for _ in 0..<50 { let t = now(); _ = try s0.ledger.lastSequence(); rtt.append(now() - t) }
        return [("ring_b1_p50_ms", BenchRing.percentile(lat, 0.5) * 1e3), ("ring_b1_p99_ms", BenchRing.percentile(lat, 0.99) * 1e3),
                ("queries_per_s", one), ("queries_per_s_k", k), ("ring_b256_img_per_s", img),
                ("ledger_round_trip_ms", BenchRing.percentile(rtt, 0.5) * 1e3), ("hops_per_query", Double(manifest.blockCount + 1))] + breakdown
    }

    /// The figures of every member's last `totals` log line in `logDir` (`key=value` metadata), summed.
    static func memberTotals(_ logDir: String) -> [String: Double] {
        var sum: [String: Double] = [:]
        for name in (try? FileManager.default.contentsOfDirectory(atPath: logDir)) ?? [] where name.hasSuffix(".log") {
            guard let text = try? String(contentsOfFile: logDir + "/" + name, encoding: .utf8),
                  let line = text.split(separator: "\n").last(where: { $0.hasSuffix(" totals") }) else { continue }
            for field in line.split(separator: " ") {
                let kv = field.split(separator: "=", maxSplits: 1)
                if kv.count == 2, let v = Double(kv[1]) { sum[String(kv[0]), default: 0] += v }
            }
        }
        return sum
    }
}

final class ErrorList: @unchecked Sendable {
    private let lock = NSLock()
    private var items: [String] = []
    func add(_ s: String) { lock.lock(); items.append(s); lock.unlock() }
    var count: Int { lock.lock(); defer { lock.unlock() }; return items.count }
    var first: String? { lock.lock(); defer { lock.unlock() }; return items.first }
}
