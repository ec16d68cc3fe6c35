import ArgumentParser
import DeepRingClient
import DeepRingEmbedded
import DeepRingNode
import DeepRingOwner
import DeepRingEngine
import DeepRingData
import DeepRingLedger
import DeepRingLedgerPostgres
import DeepRingLedgerSQLite
import DeepRingProtocol
import Foundation
import Logging

/// Exit status for "not authentic": a tampered ring, a ring.json that is not the pinned owner's, a dirty ledger.
let exitNotAuthentic: Int32 = 3
/// The exit status of a block the owner evicted from its ring (`ring up` does not restart it).
let exitEvicted: Int32 = 4

/// Maps an error to the exit status: 3 for anything that is not authentic, 1 for the rest.
func ringFail(_ error: Error) -> ExitCode {
    let code = fail(error)
    if case RingError.notAuthentic = error { return ExitCode(exitNotAuthentic) }
    if case LedgerError.untrusted = error { return ExitCode(exitNotAuthentic) }
    return code
}

struct Seal: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Seal a trained model into a DeepRing: an ouroboros block plus one block per layer.",
        discussion: """
        Writes DIR/ring.json (public, signed by the owner), DIR/ledger.sqlite, DIR/owner/ (the owner's identity key, \
        the ouroboros's keys, the signed record of original hashes, the checkpoint) and DIR/blocks/<random-id>/ \
        (params.safetensors with the block's layer and a copy of the next, keys.json (0600) and block.json, its \
        owner-signed descriptor). Prints the owner key's fingerprint, which querents pin (`query --owner-key`), and \
        pins it for this user. DIR may not exist or must be empty; --force replaces an existing ring folder, never \
        any other file or folder. With --ledger postgres://…, the ring's ledger is that (empty, `ledger init`-ed) \
        database instead of DIR/ledger.sqlite: copy each DIR/blocks/<id>/ to a block's host and start it with \
        `block serve`, keep DIR/owner/ on the owner's host (`owner serve`), and give querents DIR/ring.json. \
        --spares N also writes DIR/spares/<id>/ (a spare's key pairs and owner-signed spare.json, no parameters): \
        start each on a host of its own with `block serve --spare`; when validation names a compromised block, the \
        owner evicts it and gives its slot to a spare. \
        Example: deepring seal mlp.safetensors --ring ring/ --spares 2
        """)

    @Argument(help: "Model file (.safetensors written by `deepring train`).") var model: String
    @Option(help: "Ring directory to create (must not exist or be empty).") var ring: String
    @Flag(help: "Replace DIR if it is an existing ring folder.") var force = false
    @Option(help: "Spare blocks to provision (0–\(OwnerRecord.maxSpares)): they take the slots of evicted blocks.") var spares = 0
    @OptionGroup var ledgerOptions: LedgerOptions

    func validate() throws {
        if let l = ledgerOptions.ledger { try LedgerOptions.checkPostgres(l) }
        guard (0...OwnerRecord.maxSpares).contains(spares) else { throw ValidationError("--spares must be between 0 and \(OwnerRecord.maxSpares)") }
    }

    func run() throws {
        do {
            let (m, _) = try ModelFile.load(path: model)
            let t0 = now()
            let shared = try ledgerOptions.postgresURL().map { try PostgresLedger(url: $0, logger: quietLogger("deepring.ledger")) }
            defer { shared?.close() }
            let r = try SealedRing.seal(m, into: ring, force: force, protecting: [model], ledger: shared, spares: spares)
            let fp = r.manifest.ownerFingerprint
            print(String(format: "sealed %@ into %@: ouroboros + %d blocks, ring %@ (%.2f s)", model as NSString, ring as NSString,
                         r.manifest.blockCount, r.manifest.ringID as NSString, now() - t0))
            if spares > 0 { print("spares: \(spares) in \(ring)/spares/ (serve each with `deepring block serve --spare --dir …`)") }
            print("owner key fingerprint: \(fp)")
            do {
                try KnownRings(path: KnownRings.defaultPath).remember(r.manifest.ringID, fingerprint: fp, location: KnownRings.location(of: ring))
                print("pinned in \(KnownRings.defaultPath); querents elsewhere: deepring query --owner-key \(fp) …")
            } catch {
                stderrPrint("note: could not pin the owner key (\(error)); querents must pass --owner-key \(fp)")
            }
        } catch let e as ExitCode { throw e } catch { throw ringFail(error) }
    }
}

struct Verify: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Check everything the ring depends on; with --restore, repair what the owner can.",
        discussion: """
        Checks the owner's identity key and signed record, ring.json (signed by the owner, equal to the owner's copy), \
        the ouroboros's keys, the checkpoint, and for every block its folder, keys.json (present, 0600, anchored to the \
        owner), block.json (signed by the owner; its id, keys, neighbours' keys and hashes as recorded) and its \
        parameters, and the hash chain (Eqs. 1–2) — and names each problem. Without --restore it only reads: it can \
        run beside a query. --restore (one writer at a time: it waits for a running query) restores tampered \
        parameters from the checkpoint, re-provisions lost or mismatched blocks with fresh keys and new descriptors \
        (neighbours updated), re-issues ring.json, rebuilds a corrupted checkpoint from the blocks' verified copies, \
        and says what it cannot repair. Exit status: 0 intact (or repaired), 3 not authentic, 1 error.

        With --ledger URL|PATH (a ring whose blocks run as their own processes, `block serve`), the ledger checked is \
        that one (its form, and its first entry this ring's seal), and then an authenticity round runs through it \
        (§3.3), beside a running `owner serve` or without one: a challenge signed by the ouroboros; each block \
        attests HASH_j over the parameters it holds in memory, chained on its predecessor's, and whether its file is \
        intact; the chain is compared with the owner's record. A block that does not attest within --round-timeout \
        is named. With --restore, a block found tampered is sent its sealed parameters over the ledger and the round \
        called again, until authentic. --no-round checks only the files and the ledger's form (and only reads).
        """)

    @Option(help: "Ring directory.") var ring: String
    @OptionGroup var ledgerOptions: LedgerOptions
    @Flag(help: "Repair what the owner can (restore, re-provision, re-issue) until the ring is authentic.") var restore = false
    @Option(help: "Seconds to wait for a running query before --restore gives up.") var lockTimeout: Double = 60
    @Flag(help: "Print one JSON object.") var json = false
    @Option(help: "With --ledger: seconds the blocks have to attest in the authenticity round.") var roundTimeout: Double = 15
    @Flag(help: "With --ledger: no authenticity round (check the files and the ledger's form only).") var noRound = false

    func validate() throws {
        guard lockTimeout >= 0 && lockTimeout.isFinite else { throw ValidationError("--lock-timeout must be a non-negative number of seconds") }
        guard roundTimeout >= 1 && roundTimeout <= 3600 else { throw ValidationError("--round-timeout must be between 1 and 3600 seconds") }
        if ledgerOptions.ledger == nil && noRound { throw ValidationError("--no-round goes with --ledger") }
        if noRound && restore { throw ValidationError("--restore with --ledger restores in the authenticity round: drop --no-round") }
    }

    func run() throws {
        do {
            let before: RingCheckReport; var after: RingCheckReport
            var repairs = RingCheck.Repairs()
            var round: LedgerRoundReport?
            var roundNotRun = false
            if ledgerOptions.ledger != nil {
                let l = try ledgerOptions.open(ring: ring, readOnly: noRound)
                defer { (l as? PostgresLedger)?.close() }
                before = try RingCheck.run(ring, ledger: l)
                after = before
                if !noRound {
                    do {
                        round = try LedgerRound.run(directory: ring, ledger: l, restore: restore, timeout: roundTimeout, progress: { stderrPrint($0) })
                    } catch RingError.notAuthentic(let why) {
                        // What cannot be checked is not authentic (the findings name it too, as a rule).
                        stderrPrint("no authenticity round through the ledger: \(why)")
                        roundNotRun = true
                    }
                    // What the round restored shows in the files of blocks that live here.
                    if restore, round?.restores ?? 0 > 0 { after = try RingCheck.run(ring, ledger: l) }
                }
            } else if restore {
                (before, repairs, after) = try RingCheck.repair(ring, lockTimeout: lockTimeout, onWait: { stderrPrint($0) })
            } else {
                before = try RingCheck.run(ring)
                after = before
            }
            if json {
                func findings(_ r: RingCheckReport) -> [[String: Any]] {
                    r.findings.map { ["subject": "\($0.subject)", "problem": $0.problem, "repairable": $0.repairable] }
                }
                let obj: [String: Any] = ["authentic": before.authentic, "first_tampered": before.firstTampered?.name ?? NSNull(),
                                          "findings": findings(before), "notes": before.notes,
                                          "restored": repairs.restored, "reprovisioned": repairs.reprovisioned, "actions": repairs.actions,
                                          "authentic_after": after.authentic, "findings_after": findings(after),
                                          "round": round.map { r -> [String: Any] in
                                              ["authentic": r.authentic, "detail": r.detail, "rounds": r.rounds, "restores": r.restores,
                                               "events": r.events.map { ["round": $0.round, "event": $0.event, "detail": $0.detail] }]
                                          } ?? NSNull()]
                print(String(decoding: try JSONSerialization.data(withJSONObject: obj, options: [.sortedKeys]), as: UTF8.self))
            } else {
                for n in before.notes { print("note: \(n)") }
                if before.authentic {
                    print("authentic: every file the ring depends on is as the owner sealed and signed it, and every block's hash matches the record")
                } else {
                    let n = before.findings.count
                    print("TAMPERED: \(n) problem\(n == 1 ? "" : "s")" + (before.firstTampered.map { "; first block whose hash differs from the record: \($0.name)" } ?? ""))
                    for f in before.findings { print("  - \(f)") }
                    for a in repairs.actions { print(a) }
                    if restore {
                        if after.authentic { print("authentic again") } else {
                            print("still not authentic:")
                            for f in after.findings { print("  - \(f)") }
                        }
                    }
                }
            }
            if let r = round, !json {
                for e in r.events where e.event == "restoring" { print("restored over the ledger: \(e.detail)") }
                print(r.authentic ? "authentic through the ledger: \(r.detail) (\(plural(r.rounds, "round")))"
                                  : "NOT AUTHENTIC through the ledger: \(r.detail)")
            }
            if !after.authentic || roundNotRun || round.map({ !$0.authentic }) == true { throw ExitCode(exitNotAuthentic) }
        } catch let e as ExitCode { throw e } catch { throw ringFail(error) }
    }
}

/// The manifest a reader of `dir` trusts: with the owner's folder, the owner's own signed manifest; without it,
/// `ring.json` if its owner is the one given or pinned (trusted and pinned on first use).
func trustedManifest(_ dir: String, ownerKey: String?) throws -> RingManifest {
    let paths = RingPaths(dir)
    if FileManager.default.fileExists(atPath: paths.identity) {
        let owner = Array(try KeyFile.read(paths.identity).signing.publicKey.rawRepresentation)
        let m: RingManifest
        if let own = try? RingManifest.read(paths.ownerManifest) { m = own } else { m = try RingManifest.read(paths.manifest) }
        guard m.ownerKey == owner else { throw RingError.notAuthentic("the manifest is not signed by this ring's owner") }
        if let given = ownerKey, !KeyFingerprint.matches(given, owner) {
            throw RingError.notAuthentic("this ring's owner is \(KeyFingerprint.of(owner)), not \(given)")
        }
        return m
    }
    let m = try RingManifest.read(paths.manifest)
    if try KnownRings(path: KnownRings.defaultPath).authenticate(m, ownerKey: ownerKey, location: KnownRings.location(of: dir)) == .firstUse {
        stderrPrint("note: trusting owner \(m.ownerFingerprint) for ring \(m.ringID) on first use (pinned in \(KnownRings.defaultPath))")
    }
    return m
}

/// "1 image", "3 images".
func plural(_ n: Int, _ one: String, _ many: String? = nil) -> String { "\(n) \(n == 1 ? one : (many ?? one + "s"))" }

struct Query: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Ask a sealed ring for predictions, through the ledger only (input sealed to the ouroboros).",
        discussion: """
        Inputs come from a data set's test split (--dataset, --count) or from an IDX image file (--image). Each batch \
        goes through the ring as one tensor. Before anything is sent, ring.json must be signed by the ring's pinned \
        owner: the key given with --owner-key, the one pinned by `seal` or an earlier query, or — the first time — \
        the one it names, which is then pinned (like SSH's known hosts; $DEEPRING_HOME/known_rings). A mismatch exits \
        with status 3 and sends nothing. One process runs a ring at a time: a second query waits up to \
        --lock-timeout seconds. With --json: predictions, accuracy when labels are known, logits_sha256 (SHA-256 of \
        all logits as a tensor, to compare bit for bit), and — where the owner's folder is — plain_agreement, the \
        fraction of predictions equal to the plain model's (rebuilt from the owner's checkpoint), and on the \
        embedded ring plain_logits_sha256, the same hash of the plain model's logits.

        With --ledger (a postgres:// URL, or the path of a ring's ledger.sqlite), this host is only a querent of a \
        ring whose members serve elsewhere (`owner serve`, `block serve`, or `ring up`): it needs only ring.json \
        (--ring ring.json, or a folder holding it) and the pinned owner key, posts each query and waits for the \
        ouroboros's delivery, at most --timeout seconds. --verify-every, --reshuffle-every, --on-compromise and \
        --lock-timeout apply to the embedded ring only.
        """)

    @Option(help: "Ring directory, or (with --ledger) its ring.json.") var ring: String
    @OptionGroup var ledgerOptions: LedgerOptions
    @Option(help: "Data set whose test split to query: mnist, idx, cifar10 or synthetic.") var dataset: String?
    @Option(help: "Folder holding the data set files.") var data: String?
    @Option(help: "Number of test images (default: all).") var count: Int?
    @Option(help: "An IDX image file (one or more images) instead of a data set.") var image: String?
    @Option(help: "Images per query.") var batch: Int = 256
    @Option(help: "Check the ring before every N-th query.") var verifyEvery: Int = 1
    @Option(help: "Reshuffle the block placement and rotate block keys after every N-th query (0 = never).") var reshuffleEvery: Int = 1
    @Option(help: "When validation fails for good: refuse (the paper's retries, then no answer) or evict (re-provision the suspects and answer again).")
    var onCompromise: String = "refuse"
    @Option(help: "The ring owner's key fingerprint (SHA256:…, as `seal` prints it) or hex key; refuses a ring.json signed by anyone else.") var ownerKey: String?
    @Option(help: "Seconds to wait for another process running this ring.") var lockTimeout: Double = 60
    @Option(help: "Seconds one query may take before it is given up.") var timeout: Double = 120
    @Option(help: "With --ledger: ask a query that failed (refused, timed out, the ledger unreachable) again, as a new query, up to N times; each retry is reported on stderr.")
    var retries: Int = 0
    @Flag(help: "Print one JSON object.") var json = false
    @OptionGroup var threadOptions: ThreadOptions

    static let maxImageFile = 256 << 20

    func validate() throws {
        guard (dataset == nil) != (image == nil) else { throw ValidationError("give either --dataset or --image") }
        if let d = dataset, !DatasetLoader.names.contains(d) {
            throw ValidationError("unknown data set '\(d)'; choose one of \(DatasetLoader.names.joined(separator: ", "))")
        }
        if let c = count { guard c >= 1 else { throw ValidationError("--count must be at least 1") } }
        if count != nil && image != nil { throw ValidationError("--count applies to --dataset, not to --image") }
        guard batch >= 1 && batch <= 65536 else { throw ValidationError("--batch must be between 1 and 65536") }
        guard verifyEvery >= 1 else { throw ValidationError("--verify-every must be at least 1") }
        guard reshuffleEvery >= 0 else { throw ValidationError("--reshuffle-every must be 0 (never) or more") }
        guard ["refuse", "evict"].contains(onCompromise) else { throw ValidationError("--on-compromise must be refuse or evict") }
        if let k = ownerKey, !KeyFingerprint.isWellFormed(k) { throw ValidationError("--owner-key must be SHA256:… (as `seal` prints it) or 64 hex digits") }
        guard lockTimeout >= 0 && lockTimeout.isFinite else { throw ValidationError("--lock-timeout must be a non-negative number of seconds") }
        guard timeout >= 1 && timeout <= 86_400 else { throw ValidationError("--timeout must be between 1 and 86400 seconds") }
        guard retries >= 0 && retries <= 100 else { throw ValidationError("--retries must be between 0 and 100") }
        if retries > 0 && ledgerOptions.ledger == nil { throw ValidationError("--retries applies to a querent of a served ring (--ledger)") }
    }

    func run() throws {
        threadOptions.apply()
        do {
            // The querent: nothing is sent to a ring whose manifest is not the pinned owner's. On the owner's own host
            // (the owner's folder is here) that owner is known for sure: a ring.json from anyone else is refused before
            // it could be trusted on first use, and before the runtime (which would re-issue it) starts.
            let remote = ledgerOptions.ledger != nil
            let ringFile = remote && InputFile.isRegular(ring)
            let paths = RingPaths(ringFile ? (ring as NSString).deletingLastPathComponent : ring)
            let manifest = try RingManifest.read(ringFile ? ring : paths.manifest)
            if InputFile.isRegular(paths.identity) {
                let owner = Array(try KeyFile.read(paths.identity).signing.publicKey.rawRepresentation)
                guard manifest.ownerKey == owner else {
                    throw RingError.notAuthentic("ring.json is signed by owner \(manifest.ownerFingerprint), not by this ring's owner \(KeyFingerprint.of(owner)) (owner/identity.json); refusing to send anything (`deepring verify --ring \(ring) --restore` re-issues it)")
                }
            }
            if try KnownRings(path: KnownRings.defaultPath).authenticate(manifest, ownerKey: ownerKey, location: KnownRings.location(of: ring)) == .firstUse {
                stderrPrint("note: trusting owner \(manifest.ownerFingerprint) for ring \(manifest.ringID) on first use (pinned in \(KnownRings.defaultPath))")
            }
            let shape = manifest.inputShape
            var inputs: Tensor, labels: [Int]?
            if let path = image {
                let a = try IDX.images(try IDX.read(path: path, maxBytes: Query.maxImageFile), file: path)
                inputs = Tensor(shape: [a.count] + a.shape, data: a.values); labels = nil
            } else if let name = dataset {
                var test = try DatasetLoader.load(name: name, directory: data).test
                if let c = count { test = test.prefix(c) }
                if shape.count == 3, test.imageShape.count == 3, test.imageShape[0] < shape[0] { test = test.padded(to: shape[0]) }
                inputs = test.tensor; labels = test.labels
            } else {
                throw ValidationError("give either --dataset or --image")
            }
            guard inputs.itemSize == shape.reduce(1, *) else {
                throw QueryError.badInput("the ring takes inputs of shape \(shape), the data has \(Array(inputs.shape.dropFirst()))")
            }
            guard inputs.batch >= 1 else { throw QueryError.badInput("no images to query") }
            if remote { return try queryRemote(manifest, inputs: inputs, labels: labels, owner: InputFile.isRegular(paths.identity) ? paths.root : nil) }
            let rt = try RingRuntime(directory: ring, lockTimeout: lockTimeout, onWait: { stderrPrint($0) })
            guard rt.ring.manifest == manifest else {
                throw RingError.notAuthentic("ring.json differs from the owner's manifest; refusing to send anything")
            }
            guard batch <= rt.maxBatch else {
                throw QueryError.badInput("--batch \(batch): this ring takes at most \(rt.maxBatch) inputs per query (every post must fit in a ledger entry)")
            }
            rt.querent = Querent(manifest: manifest)
            rt.verifyEvery = verifyEvery
            rt.reshuffleEvery = reshuffleEvery
            rt.queryTimeout = timeout
            rt.onCompromisedBlock = onCompromise == "evict" ? .evictAndRetry : .refuse
            let incomplete = try rt.incompleteQueries()
            if !incomplete.isEmpty {
                stderrPrint("note: \(incomplete.count) earlier quer\(incomplete.count == 1 ? "y was" : "ies were") interrupted and never answered (incomplete): \(incomplete.prefix(5).joined(separator: ", "))")
            }
            if !rt.restores.isEmpty { stderrPrint("note: repaired before serving: \(rt.restores.joined(separator: ", "))") }
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
            let all = Tensor.concatenate(logits)
            let preds = all.argmaxRows()
            var plain = inputs.reshaped([inputs.batch] + shape)
            for l in try rt.ring.plainLayers() { plain = try l.model().checkedForward(plain) }
            let plainPreds = plain.argmaxRows()
            let agreement = Double(zip(preds, plainPreds).filter { $0 == $1 }.count) / Double(max(1, preds.count))
            let accuracy = labels.map { l in Double(zip(preds, l).filter { $0 == $1 }.count) / Double(max(1, l.count)) }
            if json {
                var obj: [String: Any] = ["predictions": preds, "plain_agreement": agreement, "count": preds.count,
                                          "logits_sha256": hex(TensorWire.hash(all)), "plain_logits_sha256": hex(TensorWire.hash(plain)),
                                          "incomplete_earlier_queries": incomplete,
                                          "queries": queries, "alarms": alarms, "seconds": secs, "restored": rt.restores]
                if let a = accuracy { obj["accuracy"] = a }
                print(String(decoding: try JSONSerialization.data(withJSONObject: obj, options: [.sortedKeys]), as: UTF8.self))
            } else {
                print(String(format: "%@ in %@, %.2f s; agreement with the plain model %.2f%%; %@",
                             plural(preds.count, "image") as NSString, plural(queries, "query", "queries") as NSString, secs,
                             agreement * 100, plural(alarms, "validation alarm") as NSString))
                if let a = accuracy { print(String(format: "accuracy %.2f%%", a * 100)) }
                if !rt.restores.isEmpty { print("restored before answering: \(rt.restores.joined(separator: ", "))") }
                if preds.count <= 20 { print("predictions: \(preds)") }
            }
        } catch let e as ExitCode { throw e } catch { throw ringFail(error) }
    }

    /// A querent of a ring served by other processes: post each batch and wait for its delivery.
    func queryRemote(_ manifest: RingManifest, inputs: Tensor, labels: [Int]?, owner: String?) throws {
        let ledger = try ledgerOptions.open(ring: nil, readOnly: false)
        defer { (ledger as? PostgresLedger)?.close() }
        let session = QuerentSession(manifest: manifest, ledger: ledger)
        let t0 = now()
        var logits: [Tensor] = [], latencies: [Double] = []
        var i = 0, retried = 0
        while i < inputs.batch {
            let j = min(inputs.batch, i + batch)
            var attempt = 0
            while true {
                do {
                    let r = try session.query(inputs.slice(i..<j), timeout: timeout)
                    logits.append(r.logits); latencies.append(r.seconds)
                    break
                } catch {
                    guard attempt < retries else { throw error }
                    attempt += 1; retried += 1
                    stderrPrint("query: images \(i + 1)–\(j) failed (\(error)); asking again (\(attempt) of \(retries))")
                    Thread.sleep(forTimeInterval: 1)
                }
            }
            i = j
        }
        let secs = now() - t0
        let all = Tensor.concatenate(logits)
        let preds = all.argmaxRows()
        let accuracy = labels.map { l in Double(zip(preds, l).filter { $0 == $1 }.count) / Double(max(1, l.count)) }
        // The plain model's predictions, where the owner's checkpoint is on this host.
        var agreement: Double?
        if let dir = owner {
            var plain = inputs.reshaped([inputs.batch] + manifest.inputShape)
            for l in try SealedRing.open(dir).plainLayers() { plain = try l.model().checkedForward(plain) }
            agreement = Double(zip(preds, plain.argmaxRows()).filter { $0 == $1 }.count) / Double(max(1, preds.count))
        }
        let sorted = latencies.sorted()
        let p50 = sorted[sorted.count / 2] * 1000
        if json {
            var obj: [String: Any] = ["predictions": preds, "count": preds.count, "queries": logits.count, "seconds": secs,
                                      "logits_sha256": hex(TensorWire.hash(all)), "latency_p50_ms": p50, "retried": retried]
            if let a = accuracy { obj["accuracy"] = a }
            if let a = agreement { obj["plain_agreement"] = a }
            print(String(decoding: try JSONSerialization.data(withJSONObject: obj, options: [.sortedKeys]), as: UTF8.self))
        } else {
            print(String(format: "%@ in %@, %.2f s (median %.1f ms per query) through the ledger", plural(preds.count, "image") as NSString,
                         plural(logits.count, "query", "queries") as NSString, secs, p50))
            if let a = agreement { print(String(format: "agreement with the plain model %.2f%%", a * 100)) }
            if let a = accuracy { print(String(format: "accuracy %.2f%%", a * 100)) }
            if retried > 0 { print("\(plural(retried, "query", "queries")) asked again after a failure") }
            if preds.count <= 20 { print("predictions: \(preds)") }
        }
    }
}

struct RingCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "ring", abstract: "Look at a sealed ring, or run it as separate processes.", subcommands: [Inspect.self, RingUp.self])

    struct Inspect: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "What each block knows (public keys, neighbours' keys, hashes, layer shapes) — never secrets. Reads only.")
        @Option(help: "Ring directory.") var ring: String

        func run() throws {
            do {
                let (m, blocks) = try SealedRing.inspect(ring)
                func short(_ h: String) -> String { String(h.prefix(12)) + "…" }
                print("ring \(m.ringID): ouroboros + \(m.blockCount) blocks, input \(m.inputShape), \(m.classes) classes")
                print("owner \(m.ownerFingerprint) (ring.json is signed by it)")
                print("ouroboros signing key \(short(hex(m.ouroboros.signing))), HPKE key \(short(hex(m.ouroboros.agreement)))")
                print("algorithms: " + m.algorithms.keys.sorted().map { "\($0) \(m.algorithms[$0] ?? "")" }.joined(separator: "; "))
                print("blocks (directory order; the ring order is known only to the owner):")
                for b in blocks {
                    print("  \(b.id)  key \(short(b.signingKey))  after \(short(b.predecessorSigningKey))  before \(short(b.successorSigningKey))"
                          + (b.signedByOwner ? "" : "  NOT SIGNED BY THE OWNER"))
                    print("      own: \(b.ownLayer)    next (copy): \(b.nextLayer)")
                    print("      HASH_prev \(short(b.previousHash))  HASH \(short(b.hash))")
                }
            } catch let e as ExitCode { throw e } catch { throw ringFail(error) }
        }
    }
}
