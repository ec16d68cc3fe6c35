// swift-tools-version:6.0
import PackageDescription

// The numeric kernels need FMA code generation on x86-64: with the default target
// `addingProduct` becomes a libm call and GEMM falls from ~60 to ~0.6 GFLOP/s.
// The engine is also compiled optimized in debug builds so that `swift test`
// (debug) runs the numeric tests at release speed.
// The kernels of each instruction set are a target of their own with that set's `-target-cpu` (Swift has no
// per-function target attributes); the engine calls one only after asking the CPU (`ISA`).
#if arch(x86_64)
let cpuFlags: [String] = ["-target-cpu", "haswell"]
let avx512Flags: [String] = ["-target-cpu", "znver4"]
#else
let cpuFlags: [String] = []
let avx512Flags: [String] = []
#endif

func optimized(cpu flags: [String]) -> [SwiftSetting] {
    [
        .unsafeFlags(flags),
        .unsafeFlags(["-O", "-enforce-exclusivity=unchecked"], .when(configuration: .debug)),
        .unsafeFlags(["-enforce-exclusivity=unchecked"], .when(configuration: .release)),
    ]
}

let engineSettings = optimized(cpu: cpuFlags)

let package = Package(
    name: "DeepRing",
    platforms: [.macOS(.v15)],
    products: [
        .library(name: "DeepRingEngine", targets: ["DeepRingEngine"]),
        .library(name: "DeepRingData", targets: ["DeepRingData"]),
        .library(name: "DeepRingTraining", targets: ["DeepRingTraining"]),
        .library(name: "DeepRingLedger", targets: ["DeepRingLedger"]),
        .library(name: "DeepRingProtocol", targets: ["DeepRingProtocol"]),
        .library(name: "DeepRingBlock", targets: ["DeepRingBlock"]),
        .library(name: "DeepRingOwner", targets: ["DeepRingOwner"]),
        .library(name: "DeepRingClient", targets: ["DeepRingClient"]),
        .library(name: "DeepRingEmbedded", targets: ["DeepRingEmbedded"]),
        .library(name: "DeepRingAttacks", targets: ["DeepRingAttacks"]),
        .executable(name: "deepring", targets: ["deepring"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        .package(url: "https://github.com/apple/swift-crypto", "3.12.3"..<"5.0.0"),
        .package(url: "https://github.com/groue/GRDB.swift", from: "7.0.0"),
        .package(url: "https://github.com/vapor/postgres-nio", from: "1.33.0"),
        .package(url: "https://github.com/apple/swift-nio", from: "2.101.0"),
        .package(url: "https://github.com/apple/swift-nio-ssl", from: "2.37.0"),
        .package(url: "https://github.com/apple/swift-log", from: "1.16.0"),
    ],
    targets: [
        .systemLibrary(name: "CZlib", path: "Sources/CZlib"),
        // CPUID and XGETBV: which kernel targets this CPU runs.
        .target(name: "CDeepRingCPU"),
        // The one definition of every kernel's FMA chains (inlinable) and the interface of a kernel set.
        .target(name: "DeepRingKernels", swiftSettings: optimized(cpu: [])),
        // The same kernels compiled for each instruction set. (Their bodies are DeepRingKernels' inlinable code: after
        // editing it, touch these targets' files, as an incremental build may not recompile them.)
        .target(name: "DeepRingKernelsAVX512", dependencies: ["DeepRingKernels"], swiftSettings: optimized(cpu: avx512Flags)),
        .target(name: "DeepRingKernelsAVX2", dependencies: ["DeepRingKernels"], swiftSettings: optimized(cpu: cpuFlags)),
        .target(name: "DeepRingKernelsPortable", dependencies: ["DeepRingKernels"], swiftSettings: optimized(cpu: [])),
        // Inference: tensors, the one parameter buffer, layers, models, kernels, model files. What a block links.
        .target(
            name: "DeepRingEngine",
            dependencies: ["CDeepRingCPU", "DeepRingKernels", "DeepRingKernelsAVX512", "DeepRingKernelsAVX2", "DeepRingKernelsPortable"],
            swiftSettings: engineSettings
        ),
        // Data sets: IDX (MNIST), CIFAR-10, Tiny-ImageNet lookup, the synthetic digits.
        .target(
            name: "DeepRingData",
            dependencies: ["DeepRingEngine", "CZlib"],
            swiftSettings: engineSettings
        ),
        // Training (the layers' backward passes drive it), evaluation and the engine benchmark.
        .target(
            name: "DeepRingTraining",
            dependencies: ["DeepRingEngine", "DeepRingData"],
            swiftSettings: engineSettings
        ),
        .target(
            name: "DeepRingLedger",
            dependencies: [
                .product(name: "Crypto", package: "swift-crypto"),
            ]
        ),
        .target(
            name: "DeepRingLedgerSQLite",
            dependencies: [
                "DeepRingLedger",
                .product(name: "GRDB", package: "GRDB.swift"),
            ]
        ),
        .target(
            name: "DeepRingLedgerPostgres",
            dependencies: [
                "DeepRingLedger",
                .product(name: "PostgresNIO", package: "postgres-nio"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        .target(
            name: "DeepRingProtocol",
            dependencies: [
                "DeepRingEngine", "DeepRingLedger",
                .product(name: "Crypto", package: "swift-crypto"),
            ]
        ),
        // What every member of the ring runs (paper §3.4, Eqs. 4–13): processing, validation, the serving loop and
        // the ring folder's files. The block, the owner's ouroboros and the embedded ring are built on it.
        .target(
            name: "DeepRingNode",
            dependencies: [
                "DeepRingEngine", "DeepRingLedger", "DeepRingProtocol",
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        // One block on its own host: only its folder, its keys, its layer and its copy of the next (no backend:
        // the caller picks one).
        .target(
            name: "DeepRingBlock",
            dependencies: [
                "DeepRingEngine", "DeepRingLedger", "DeepRingProtocol", "DeepRingNode",
                .product(name: "Crypto", package: "swift-crypto"),
            ]
        ),
        // The owner: sealing, the ouroboros, authenticity rounds and tracking, key rotation, reshuffles, eviction.
        .target(
            name: "DeepRingOwner",
            dependencies: [
                "DeepRingEngine", "DeepRingLedger", "DeepRingLedgerSQLite", "DeepRingProtocol", "DeepRingNode",
                .product(name: "Crypto", package: "swift-crypto"),
            ]
        ),
        // A querent: only the public manifest and the pinned owner key.
        .target(
            name: "DeepRingClient",
            dependencies: [
                "DeepRingEngine", "DeepRingLedger", "DeepRingProtocol",
                .product(name: "Crypto", package: "swift-crypto"),
            ]
        ),
        // Every role in one process over the ring folder's SQLite ledger: the demo, the attacks and the tests.
        .target(
            name: "DeepRingEmbedded",
            dependencies: [
                "DeepRingEngine", "DeepRingLedger", "DeepRingLedgerSQLite", "DeepRingProtocol",
                "DeepRingNode", "DeepRingBlock", "DeepRingOwner", "DeepRingClient",
                .product(name: "Crypto", package: "swift-crypto"),
            ]
        ),
        .target(
            name: "DeepRingAttacks",
            dependencies: ["DeepRingEngine", "DeepRingData", "DeepRingLedger", "DeepRingProtocol", "DeepRingOwner", "DeepRingClient", "DeepRingEmbedded"],
            swiftSettings: engineSettings
        ),
        .target(
            name: "DeepRingFuzz",
            dependencies: [
                "DeepRingEngine", "DeepRingData", "DeepRingLedger", "DeepRingLedgerSQLite", "DeepRingProtocol", "DeepRingOwner", "DeepRingClient",
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "GRDB", package: "GRDB.swift"),
            ]
        ),
        .executableTarget(
            name: "deepring-fuzz",
            dependencies: ["DeepRingFuzz"]
        ),
        .executableTarget(
            name: "deepring",
            dependencies: [
                "DeepRingEngine", "DeepRingData", "DeepRingTraining", "DeepRingLedger", "DeepRingLedgerSQLite", "DeepRingLedgerPostgres", "DeepRingProtocol", "DeepRingNode", "DeepRingBlock", "DeepRingOwner", "DeepRingClient", "DeepRingEmbedded", "DeepRingAttacks",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: [.unsafeFlags(cpuFlags)]
        ),
        // The AVX-512 tile plan compiled for AVX2: checks its tile logic on a CPU without AVX-512.
        .target(
            name: "DeepRingKernelsTestSupport",
            dependencies: ["DeepRingKernels"],
            path: "Tests/DeepRingKernelsTestSupport",
            swiftSettings: optimized(cpu: cpuFlags)
        ),
        .testTarget(
            name: "DeepRingEngineTests",
            dependencies: ["DeepRingEngine", "DeepRingData", "DeepRingTraining", "DeepRingKernels", "DeepRingKernelsTestSupport"],
            exclude: ["Fixtures"],
            swiftSettings: [.unsafeFlags(cpuFlags)]
        ),
        .testTarget(
            name: "DeepRingTests",
            dependencies: ["DeepRingNode", "DeepRingBlock", "DeepRingOwner", "DeepRingClient", "DeepRingEmbedded", "DeepRingProtocol", "DeepRingLedger", "DeepRingLedgerSQLite", "DeepRingEngine", "DeepRingData",
                           .product(name: "Crypto", package: "swift-crypto"), .product(name: "GRDB", package: "GRDB.swift")]
        ),
        .testTarget(
            name: "DeepRingAttacksTests",
            dependencies: ["DeepRingAttacks", "DeepRingProtocol", "DeepRingEngine", "DeepRingData", "DeepRingTraining"]
        ),
        .testTarget(
            name: "DeepRingFuzzTests",
            dependencies: ["DeepRingFuzz"],
            exclude: ["Fixtures"]
        ),
        // The tests' PostgreSQL servers (a database per test, or a server of the test's own to crash).
        .target(
            name: "DeepRingTestSupport",
            dependencies: ["DeepRingLedger", "DeepRingLedgerPostgres"],
            path: "Tests/DeepRingTestSupport"
        ),
        .testTarget(
            name: "DeepRingLedgerTests",
            dependencies: ["DeepRingLedger", "DeepRingLedgerSQLite", "DeepRingLedgerPostgres", "DeepRingTestSupport",
                           .product(name: "Crypto", package: "swift-crypto"), .product(name: "GRDB", package: "GRDB.swift")]
        ),
        // The decentralised deployment: the owner and every block as separate `deepring` processes.
        .testTarget(
            name: "DeepRingDeploymentTests",
            dependencies: ["DeepRingNode", "DeepRingBlock", "DeepRingOwner", "DeepRingClient", "DeepRingEngine", "DeepRingData", "DeepRingLedger", "DeepRingLedgerPostgres", "DeepRingLedgerSQLite",
                           "DeepRingProtocol", "DeepRingTestSupport"]
        ),
    ]
)
