import ArgumentParser
import DeepRing
import DeepRingEngine
import DeepRingLedger
import Foundation

struct Seal: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Seal a trained model into a DeepRing: an ouroboros block plus one block per layer.",
        discussion: """
        Writes DIR/ring.json (public), DIR/ledger.sqlite, DIR/owner/ (ouroboros secrets, original hashes, \
        checkpoint) and DIR/blocks/<random-id>/ (params.safetensors with the block's layer and a copy of the next, \
        its keys, mode 0600). Example: deepring seal mlp.safetensors --ring ring/
        """)

    @Argument(help: "Model file (.safetensors written by `deepring train`).") var model: String
    @Option(help: "Ring directory to create (must not exist or be empty).") var ring: String

    func run() throws {
        do {
            let (m, _) = try ModelFile.load(path: model)
            let t0 = now()
            let r = try SealedRing.seal(m, into: ring)
            print(String(format: "sealed %@ into %@: ouroboros + %d blocks, ring %@ (%.2f s)", model as NSString, ring as NSString,
                         r.manifest.blockCount, r.manifest.ringID as NSString, now() - t0))
        } catch let e as ExitCode { throw e } catch { throw fail(error) }
    }
}

struct Verify: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Check the ring's authenticity (recompute the hash chain); with --restore, track and restore.",
        discussion: "Exit status: 0 intact (or restored with --restore), 3 tampered, 1 error.")

    @Option(help: "Ring directory.") var ring: String
    @Flag(help: "Restore tampered blocks from the owner's checkpoint until authenticity is back.") var restore = false
    @Flag(help: "Print one JSON object.") var json = false

    func run() throws {
        do {
            let r = try SealedRing.open(ring)
            let report = r.checkAuthenticity()
            var restored: [String] = []
            if !report.authentic && restore { restored = try r.restore() }
            let after = restore ? r.checkAuthenticity() : report
            if json {
                let obj: [String: Any] = ["authentic": report.authentic, "first_tampered": report.firstTampered ?? NSNull(),
                                          "restored": restored, "authentic_after": after.authentic]
                print(String(decoding: try JSONSerialization.data(withJSONObject: obj, options: [.sortedKeys]), as: UTF8.self))
            } else if report.authentic {
                print("authentic: every block's hash matches the ouroboros's record")
            } else {
                print("TAMPERED: first block whose hash differs from the record: \(report.firstTampered!)")
                for b in restored { print("restored \(b) from the checkpoint") }
                if restore { print(after.authentic ? "authentic again" : "still not authentic") }
            }
            if !after.authentic { throw ExitCode(3) }
        } catch let e as ExitCode { throw e } catch { throw fail(error) }
    }
}

struct LedgerCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "ledger", abstract: "Audit or show the ring's ledger.", subcommands: [Audit.self, Show.self])

    struct Audit: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Re-verify the whole chain and every signature; name the first bad row.",
            discussion: "Exit status: 0 clean, 3 compromised, 1 error.")
        @Option(help: "Ring directory.") var ring: String

        func run() throws {
            do {
                let r = try SealedRing.open(ring)
                let report = try r.auditLedger()
                print(report)
                if !report.isClean { throw ExitCode(3) }
            } catch let e as ExitCode { throw e } catch { throw fail(error) }
        }
    }

    struct Show: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Print ledger entries (public data only: hashes, sizes, keys).")
        @Option(help: "Ring directory.") var ring: String
        @Option(help: "Only the last N entries.") var last: Int?
        @Flag(help: "One JSON object per line.") var json = false

        func run() throws {
            do {
                let path = ring + "/ledger.sqlite"
                guard FileManager.default.fileExists(atPath: ring + "/ring.json"), FileManager.default.fileExists(atPath: path) else {
                    throw RingError.notARing("\(ring) has no ring.json and ledger.sqlite (create one with `deepring seal`)")
                }
                let ledger = try SQLiteLedger(path: path)
                // Paged, so that a ledger of many gigabytes is printed in bounded memory.
                let tail = try ledger.lastSequence()
                var next: Int64 = last.map { max(1, tail - Int64(max(0, $0)) + 1) } ?? 1
                if last == 0 { next = tail + 1 }
                while next <= tail {
                    let page = try ledger.entries(from: next, limit: 16)
                    guard let lastInPage = page.last else { break }
                    next = lastInPage.sequence + 1
                    for e in page {
                        let h = hex(e.hash.prefix(8)), a = hex(e.author.prefix(6))
                        if json {
                            let obj: [String: Any] = ["seq": e.sequence, "kind": e.kind.rawValue, "query": e.queryID ?? NSNull(),
                                                      "author": hex(e.author), "payload_bytes": e.payload.count, "hash": hex(e.hash)]
                            print(String(decoding: try JSONSerialization.data(withJSONObject: obj, options: [.sortedKeys]), as: UTF8.self))
                        } else {
                            print("\(e.sequence)\t\(e.kind.rawValue)\t\(e.queryID ?? "-")\tauthor \(a)…\t\(e.payload.count) B\thash \(h)…")
                        }
                    }
                }
            } catch let e as ExitCode { throw e } catch { throw fail(error) }
        }
    }
}

struct Query: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Ask a sealed ring for predictions, through the ledger only (input sealed to the ouroboros).",
        discussion: """
        Inputs come from a data set's test split (--dataset, --count) or from an IDX image file (--image). Each batch \
        goes through the ring as one tensor. With --json: predictions, accuracy when labels are known, and \
        plain_agreement, the fraction of predictions equal to the plain model's (rebuilt from the owner's checkpoint).
        """)

    @Option(help: "Ring directory.") var ring: String
    @Option(help: "Data set whose test split to query: mnist, idx, cifar10 or synthetic.") var dataset: String?
    @Option(help: "Folder holding the data set files.") var data: String?
    @Option(help: "Number of test images (default: all).") var count: Int?
    @Option(help: "An IDX image file (one or more images) instead of a data set.") var image: String?
    @Option(help: "Images per query.") var batch: Int = 256
    @Option(help: "Check authenticity before every N-th query.") var verifyEvery: Int = 1
    @Option(help: "Reshuffle the block placement and rotate block keys after every N-th query (0 = never).") var reshuffleEvery: Int = 1
    @Option(help: "When validation keeps failing: refuse (the paper's retries, then no answer) or evict (re-provision both suspects and answer again).")
    var onCompromise: String = "refuse"
    @Flag(help: "Print one JSON object.") var json = false
    @OptionGroup var threadOptions: ThreadOptions

    func validate() throws {
        guard (dataset == nil) != (image == nil) else { throw ValidationError("give either --dataset or --image") }
        guard batch >= 1 && batch <= 65536 else { throw ValidationError("--batch must be between 1 and 65536") }
        guard verifyEvery >= 1 else { throw ValidationError("--verify-every must be at least 1") }
        guard reshuffleEvery >= 0 else { throw ValidationError("--reshuffle-every must be 0 (never) or more") }
        guard ["refuse", "evict"].contains(onCompromise) else { throw ValidationError("--on-compromise must be refuse or evict") }
    }

    func run() throws {
        threadOptions.apply()
        do {
            let rt = try RingRuntime(directory: ring)
            rt.verifyEvery = verifyEvery
            rt.reshuffleEvery = reshuffleEvery
            rt.onCompromisedBlock = onCompromise == "evict" ? .evictAndRetry : .refuse
            let incomplete = try rt.incompleteQueries()
            if !incomplete.isEmpty {
                stderrPrint("note: \(incomplete.count) earlier quer\(incomplete.count == 1 ? "y was" : "ies were") interrupted and never answered (incomplete): \(incomplete.prefix(5).joined(separator: ", "))")
            }
            let shape = rt.ring.manifest.inputShape
            var inputs: Tensor, labels: [Int]?
            if let path = image {
                let a = try IDX.images(try IDX.read(path: path), file: path)
                inputs = Tensor(shape: [a.count] + a.shape, data: a.values); labels = nil
            } else {
                var test = try DatasetLoader.load(name: dataset!, directory: data).test
                if let c = count { test = test.prefix(max(1, c)) }
                if shape.count == 3, test.imageShape.count == 3, test.imageShape[0] < shape[0] { test = test.padded(to: shape[0]) }
                inputs = test.tensor; labels = test.labels
            }
            guard inputs.itemSize == shape.reduce(1, *) else {
                throw QueryError.badInput("the ring takes inputs of shape \(shape), the data has \(Array(inputs.shape.dropFirst()))")
            }
            let t0 = now()
            var logits: [Tensor] = [], alarms = 0, queries = 0
            var i = 0
            while i < inputs.batch {
                let j = min(inputs.batch, i + batch)
                let r = try rt.query(inputs.slice(i..<j))
                logits.append(r.logits); alarms += r.alarms; queries += 1
                i = j
            }
            let secs = now() - t0
            let preds = Tensor.concatenate(logits).argmaxRows()
            var plain = inputs.reshaped([inputs.batch] + shape)
            for l in try rt.ring.plainLayers() { plain = try l.model().forward(plain) }
            let plainPreds = plain.argmaxRows()
            let agreement = Double(zip(preds, plainPreds).filter { $0 == $1 }.count) / Double(max(1, preds.count))
            let accuracy = labels.map { l in Double(zip(preds, l).filter { $0 == $1 }.count) / Double(max(1, l.count)) }
            if json {
                var obj: [String: Any] = ["predictions": preds, "plain_agreement": agreement, "count": preds.count,
                                          "incomplete_earlier_queries": incomplete,
                                          "queries": queries, "alarms": alarms, "seconds": secs, "restored": rt.restores]
                if let a = accuracy { obj["accuracy"] = a }
                print(String(decoding: try JSONSerialization.data(withJSONObject: obj, options: [.sortedKeys]), as: UTF8.self))
            } else {
                print(String(format: "%d images in %d queries, %.2f s; agreement with the plain model %.2f%%; %d validation alarms",
                             preds.count, queries, secs, agreement * 100, alarms))
                if let a = accuracy { print(String(format: "accuracy %.2f%%", a * 100)) }
                if !rt.restores.isEmpty { print("restored before answering: \(rt.restores.joined(separator: ", "))") }
                if preds.count <= 20 { print("predictions: \(preds)") }
            }
        } catch let e as ExitCode { throw e } catch { throw fail(error) }
    }
}

struct RingCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "ring", abstract: "Look at a sealed ring.", subcommands: [Inspect.self])

    struct Inspect: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "What each block knows (public keys, neighbours' keys, hashes, layer shapes) — never secrets.")
        @Option(help: "Ring directory.") var ring: String

        func run() throws {
            do {
                let (m, blocks) = try SealedRing.inspect(ring)
                func short(_ h: String) -> String { String(h.prefix(12)) + "…" }
                print("ring \(m.ringID): ouroboros + \(m.blockCount) blocks, input \(m.inputShape), \(m.classes) classes")
                print("ouroboros signing key \(short(hex(m.ouroboros.signing))), HPKE key \(short(hex(m.ouroboros.agreement)))")
                print("algorithms: " + m.algorithms.keys.sorted().map { "\($0) \(m.algorithms[$0]!)" }.joined(separator: "; "))
                print("blocks (directory order; the ring order is known only to the owner):")
                for b in blocks {
                    print("  \(b.id)  key \(short(b.signingKey))  after \(short(b.predecessorSigningKey))  before \(short(b.successorSigningKey))")
                    print("      own: \(b.ownLayer)    next (copy): \(b.nextLayer)")
                    print("      HASH_prev \(short(b.previousHash))  HASH \(short(b.hash))")
                }
            } catch let e as ExitCode { throw e } catch { throw fail(error) }
        }
    }
}
