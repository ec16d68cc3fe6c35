import ArgumentParser
import DeepRingNode
import DeepRingEngine
import DeepRingData
import Foundation

@main
struct DeepRingCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "deepring",
        abstract: "Protect a trained neural network with a ring of hash-chained blocks (DeepRing, Goel et al. 2019).",
        discussion: """
        Start with `deepring demo`. Engine: train, eval, bench engine. Ring: seal, query, verify, ledger audit|show, \
        ring inspect, bench ring. Decentralised (one process per block, on any host, over PostgreSQL): ledger init, \
        seal --ledger, block serve, owner serve, query --ledger, ring up. Attacks and the paper's tables: attack, reproduce. Data sets are looked up in \
        --data DIR, then $DEEPRING_DATA, ./data/<name> and ../shared/data/<name>; `synthetic` is generated and \
        always available. DEEPRING_ISA=avx512|avx2|generic forces the engine's kernel path (default: the fastest this \
        CPU runs); every path computes the same bits.
        """,
        subcommands: [Demo.self, Train.self, Eval.self, Bench.self, Seal.self, Query.self, Verify.self, LedgerCommand.self, RingCommand.self,
                      BlockCommand.self, OwnerCommand.self,
                      Attack.self, Reproduce.self]
    )

    /// Temporary folders holding secrets are removed on SIGINT and SIGTERM too (`TemporaryPaths`).
    /// `DEEPRING_ISA` naming no path this CPU runs is refused before anything else runs.
    static func main() {
        TemporaryPaths.installSignalHandlers()
        do {
            try Engine.useEnvironmentISA()
        } catch {
            FileHandle.standardError.write(Data("Error: \(error)\n".utf8))
            Foundation.exit(64)
        }
        main(nil)
    }
}

/// Options shared by commands that read a data set.
struct DataOptions: ParsableArguments {
    @Option(help: "Data set: mnist, idx (any MNIST-format folder), cifar10 or synthetic.")
    var dataset: String = "synthetic"

    @Option(help: "Folder holding the data set files (default: $DEEPRING_DATA, ./data/<name>, ../shared/data/<name>).")
    var data: String?

    func validate() throws {
        guard DatasetLoader.names.contains(dataset) else {
            throw ValidationError("unknown data set '\(dataset)'; choose one of \(DatasetLoader.names.joined(separator: ", "))")
        }
    }

    func load(seed: UInt64 = 1) throws -> DatasetSplits {
        try DatasetLoader.load(name: dataset, directory: data, seed: seed)
    }
}

struct ThreadOptions: ParsableArguments {
    @Option(help: "Worker threads for the kernels (results are bit-identical for any value).")
    var threads: Int?

    func validate() throws {
        if let t = threads, t < 1 || t > 256 { throw ValidationError("--threads must be between 1 and 256") }
    }

    func apply() { if let t = threads { Engine.threads = t } }
}

/// Prints an error to stderr and exits non-zero, so that no bad input ends in a crash.
func fail(_ error: Error) -> ExitCode {
    let message = String(describing: error)
    FileHandle.standardError.write(Data("error: \(message)\n".utf8))
    return ExitCode(1)
}

func stderrPrint(_ s: String) { FileHandle.standardError.write(Data((s + "\n").utf8)) }
