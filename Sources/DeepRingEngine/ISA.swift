import CDeepRingCPU
import DeepRingKernels
import DeepRingKernelsAVX2
import DeepRingKernelsAVX512
import DeepRingKernelsPortable
import Foundation
import Synchronization

/// An instruction set the engine has kernels for, each compiled in a target of its own (`DeepRingKernelsAVX512`,
/// `…AVX2`, `…Portable`) and called only when the CPU runs it.
///
/// All three give the same bytes: every output element is one sequential FMA chain over k from the same start,
/// whatever the vector width (see `KernelSet`), and everything else the engine computes is IEEE basic arithmetic
/// in a fixed order, or its own scalar definition (`DeterministicMath`). So blocks on different CPUs of one ring
/// hash identical outputs (paper Eqs. 9–13).
public enum ISA: String, CaseIterable, Sendable, CustomStringConvertible {
    /// 512-bit vectors (`-target-cpu znver4`): AMD Zen 4 and 5, Intel Sapphire Rapids and later.
    case avx512
    /// 256-bit vectors with FMA (`-target-cpu haswell`): Intel Haswell, AMD Zen 1 and later.
    case avx2
    /// No target flags: the reference path for other CPUs (slow on x86-64, where FMA is a libm call).
    case generic

    /// The environment variable that forces a path: `DEEPRING_ISA=avx512|avx2|generic`.
    public static let environmentVariable = "DEEPRING_ISA"

    /// Whether this CPU and its operating system run this path's code (CPUID and XGETBV, asked once).
    public var isSupported: Bool {
        switch self {
        case .avx512: ISA.cpu.znver4
        case .avx2: ISA.cpu.haswell
        case .generic: true
        }
    }

    /// The fastest path this CPU runs.
    public static var best: ISA { ISA.allCases.first { $0.isSupported } ?? .generic }

    /// The paths this CPU runs, fastest first.
    public static var supported: [ISA] { ISA.allCases.filter(\.isSupported) }

    public var description: String { rawValue }

    /// What the path's kernels are, for `bench engine` and `--help`.
    public var summary: String {
        switch self {
        case .avx512: "avx512 (512-bit zmm, 6×64 register tiles over K blocks of at most 200)"
        case .avx2: "avx2 (256-bit ymm and FMA, 6×16 register tiles)"
        case .generic: "generic (portable SIMD, no target flags)"
        }
    }

    var kernels: any KernelSet.Type {
        switch self {
        case .avx512: AVX512Kernels.self
        case .avx2: AVX2Kernels.self
        case .generic: PortableKernels.self
        }
    }

    /// This CPU for benchmark reports: CPUID's vendor, display family and model, e.g. "AuthenticAMD family 25
    /// model 17 (Zen 4: 512-bit FMAs at the 256-bit rate)". On Zen 4 a zmm FMA issues at the rate of a ymm one
    /// (measured here: 115 GFLOP/s per core with SIMD16 and with SIMD8), so the AVX-512 path gains from fewer
    /// instructions and more registers, not from width; Zen 5 and Intel's AVX-512 cores run twice the ymm rate.
    public static let cpuIdentity: String = {
        var vendor = [CChar](repeating: 0, count: 16)
        let id = vendor.withUnsafeMutableBufferPointer { buffer in buffer.baseAddress.map { deepring_cpu_identity($0) } ?? -1 }
        guard id >= 0 else { return "unknown (no CPUID)" }
        let name = String(decoding: vendor.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
        let family = Int(id >> 8), model = Int(id & 0xFF)
        var text = "\(name) family \(family) model \(model)"
        // Family 0x19 is Zen 3 and Zen 4; Zen 4's models are 0x10–0x1F (Genoa), 0x60–0x7F (Raphael, Phoenix) and
        // 0xA0–0xAF (Bergamo, Siena).
        let zen4Models: [ClosedRange<Int>] = [0x10...0x1F, 0x60...0x7F, 0xA0...0xAF]
        if name == "AuthenticAMD" && family == 0x19 && zen4Models.contains(where: { $0.contains(model) }) {
            text += " (Zen 4: 512-bit FMAs at the 256-bit rate)"
        } else if name == "AuthenticAMD" && family == 0x1A {
            text += " (Zen 5)"
        }
        return text
    }()

    private static let cpu = (haswell: deepring_cpu_runs_haswell() != 0, znver4: deepring_cpu_runs_znver4() != 0)

    /// The path `DEEPRING_ISA` names in `environment`, nil when it is unset or empty.
    public static func named(inEnvironment environment: [String: String]) throws(ISAError) -> ISA? {
        guard let value = environment[environmentVariable], !value.isEmpty else { return nil }
        guard let isa = ISA(rawValue: value.lowercased()) else { throw .unknown(value) }
        guard isa.isSupported else { throw .unsupported(isa) }
        return isa
    }
}

/// Why a path cannot be used.
public enum ISAError: Error, CustomStringConvertible, Equatable {
    case unknown(String)
    case unsupported(ISA)

    public var description: String {
        switch self {
        case .unknown(let name):
            "\(ISA.environmentVariable)='\(name.prefix(40))' names no instruction set; use one of "
                + ISA.allCases.map(\.rawValue).joined(separator: ", ")
        case .unsupported(let isa):
            "this CPU does not run the \(isa.rawValue) kernels (it runs "
                + ISA.supported.map(\.rawValue).joined(separator: ", ") + ")"
        }
    }
}

extension Engine {
    /// The path the kernels run: at start the one `DEEPRING_ISA` names (when it names one this CPU runs; the CLI
    /// refuses any other value) or else `ISA.best`. Changing it mid-computation is harmless: every path gives the
    /// same bytes.
    public static var isa: ISA { selectedISA.load(ordering: .relaxed).isa }

    /// Runs the kernels of `isa` from now on.
    public static func use(_ isa: ISA) throws(ISAError) {
        guard isa.isSupported else { throw .unsupported(isa) }
        selectedISA.store(Selection(isa), ordering: .releasing)
        selectedKernels.store(Selection(isa), ordering: .releasing)
    }

    /// Applies `DEEPRING_ISA` from the process environment, or throws when it names no path this CPU runs.
    public static func useEnvironmentISA() throws(ISAError) {
        if let isa = try ISA.named(inEnvironment: ProcessInfo.processInfo.environment) { try use(isa) }
    }

    /// Runs `body` with `kernels` in place of the current path's, then restores them: for the tests, which check
    /// a tile plan on a CPU that cannot run the instruction set it was made for (the AVX-512 plan compiled for
    /// AVX2). Not for concurrent use with itself or `use`.
    package static func withKernels<R>(_ kernels: any KernelSet.Type, _ body: () throws -> R) rethrows -> R {
        let saved = selectedKernels.load(ordering: .acquiring)
        substitute.withLock { $0 = KernelSetBox(kernels: kernels) }
        selectedKernels.store(.substitute, ordering: .releasing)
        defer { selectedKernels.store(saved, ordering: .releasing) }
        return try body()
    }

    /// The kernels of the current path: one relaxed atomic load on the hot path (every register-tile call), no
    /// lock.
    @inline(__always)
    static var kernels: any KernelSet.Type {
        switch selectedKernels.load(ordering: .acquiring) {
        case .avx512: AVX512Kernels.self
        case .avx2: AVX2Kernels.self
        case .generic: PortableKernels.self
        case .substitute: substitute.withLock { $0.kernels }
        }
    }

    private static let selectedISA = Atomic<Selection>(Selection(initialISA))
    private static let selectedKernels = Atomic<Selection>(Selection(initialISA))
    private static let substitute = Mutex(KernelSetBox(kernels: PortableKernels.self))
    private static let initialISA = ((try? ISA.named(inEnvironment: ProcessInfo.processInfo.environment)) ?? nil) ?? ISA.best
}

/// Which kernels run, as an atomic value: a path, or the tests' substitute (`Engine.withKernels`).
private enum Selection: UInt8, AtomicRepresentable {
    case avx512, avx2, generic, substitute

    init(_ isa: ISA) {
        switch isa {
        case .avx512: self = .avx512
        case .avx2: self = .avx2
        case .generic: self = .generic
        }
    }

    var isa: ISA {
        switch self {
        case .avx512: .avx512
        case .avx2: .avx2
        case .generic, .substitute: .generic
        }
    }
}

/// A kernel set is a stateless type (its metatype is immutable), so sharing it between threads is safe.
private struct KernelSetBox: @unchecked Sendable {
    var kernels: any KernelSet.Type
}
