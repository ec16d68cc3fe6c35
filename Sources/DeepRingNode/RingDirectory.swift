import DeepRingEngine
import DeepRingProtocol
import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// The files of a ring folder:
///
///     DIR/ring.json                     public manifest, signed by the owner
///     DIR/ledger.sqlite                 the shared ledger
///     DIR/owner/identity.json           the owner's identity key (0600): signs ring.json, descriptors, the record
///     DIR/owner/keys.json               the ouroboros's key pairs (0600)
///     DIR/owner/manifest.json           the owner's copy of ring.json
///     DIR/owner/record.json             ring order, original hashes, digests; signed (0600)
///     DIR/owner/checkpoint.safetensors  every layer, for tracking (0600)
///     DIR/owner/ouroboros.safetensors   the ouroboros's holding (identity layer and a copy of layer 1)
///     DIR/owner/runtime.lock            held by the one process that runs the ring or repairs it
///     DIR/owner/state.lock              exclusive while files change, shared by readers
///     DIR/blocks/<random-id>/           params.safetensors, keys.json (0600), block.json (signed)
///     DIR/blocks.next/                  a placement being built (reshuffle), committed by the record
public struct RingPaths: Sendable {
    public let root: String
    public init(_ root: String) { self.root = root }

    public var manifest: String { root + "/ring.json" }
    public var ledger: String { root + "/ledger.sqlite" }
    public var owner: String { root + "/owner" }
    public var identity: String { owner + "/identity.json" }
    public var ouroborosKeys: String { owner + "/keys.json" }
    public var ownerManifest: String { owner + "/manifest.json" }
    public var record: String { owner + "/record.json" }
    public var checkpoint: String { owner + "/checkpoint.safetensors" }
    public var ouroborosParams: String { owner + "/ouroboros.safetensors" }
    public var runtimeLock: String { owner + "/runtime.lock" }
    public var stateLock: String { owner + "/state.lock" }
    public var blocks: String { root + "/blocks" }
    public var nextBlocks: String { root + "/blocks.next" }
    /// Spare blocks' folders (`seal --spares N`): each goes to a host of its own, like a block's.
    public var spares: String { root + "/spares" }
    public func block(_ id: String) -> String { blocks + "/" + id }

    /// `blocks.old-` and 16 hex digits: a placement retired by a reshuffle (and nothing else is ever deleted as one).
    package static func isRetiredPlacement(_ name: String) -> Bool {
        name.hasPrefix("blocks.old-") && name.utf8.count == 27 && isHexDigits(name.dropFirst(11))
    }

    package static let topNames: Set<String> = ["ring.json", "ledger.sqlite", "ledger.sqlite-wal", "ledger.sqlite-shm", "owner", "blocks", "blocks.next", "spares"]
    package static let ownerNames: Set<String> = ["identity.json", "keys.json", "manifest.json", "record.json", "checkpoint.safetensors",
                                          "ouroboros.safetensors", "runtime.lock", "state.lock"]
    /// A block's files; `serve.lock` is held by the `block serve` process serving the folder.
    /// `keys.next.json`: key pairs made for a rotation the owner has not placed yet.
    /// `spare.json`: a spare's owner-signed descriptor (a spare placed in the ring keeps it).
    package static let blockNames: Set<String> = ["params.safetensors", "keys.json", "block.json", "serve.lock", "keys.next.json", "spare.json"]

    /// `.NAME.tmp-PID`, the temporary file of an atomic write of `NAME` (one of `names`), which a crash may leave.
    package static func isTemporary(_ n: String, of names: Set<String>) -> Bool {
        guard n.hasPrefix("."), let r = n.range(of: ".tmp-", options: .backwards) else { return false }
        return names.contains(String(n[n.index(after: n.startIndex)..<r.lowerBound])) && Int32(n[r.upperBound...]) != nil
    }

    /// The spare folders in `spares/` (names of 32 hex digits, real folders), sorted.
    public var spareIDs: [String] {
        (RingPaths.realFolder(spares) ?? []).filter { $0.utf8.count == 32 && isHexDigits($0) && RingPaths.realFolder(spares + "/" + $0) != nil }.sorted()
    }

    /// The block folders in `blocks/` (names of 32 hex digits, real folders), sorted.
    public var blockIDs: [String] {
        (RingPaths.realFolder(blocks) ?? []).filter { $0.utf8.count == 32 && isHexDigits($0) && RingPaths.realFolder(block($0)) != nil }.sorted()
    }

    /// The entries of a folder, when it is a real folder (not a link); nil otherwise.
    package static func realFolder(_ path: String) -> [String]? {
        var st = stat()
        guard lstat(path, &st) == 0, (st.st_mode & S_IFMT) == S_IFDIR else { return nil }
        return try? FileManager.default.contentsOfDirectory(atPath: path)
    }

    /// True when `root` holds a ring and nothing else: a `ring.json` signed by the owner whose identity key is in
    /// `owner/`, and only the names a ring's files have — at the top, in `owner/`, and in every block folder of
    /// `blocks/`, `blocks.next/` and retired placements. Only such a folder may `--force` replace.
    public var isRing: Bool {
        guard let manifest = try? RingManifest.read(manifest), let identity = try? KeyFile.read(identity),
              manifest.ownerKey == Array(identity.signing.publicKey.rawRepresentation),
              let top = RingPaths.realFolder(root), let own = RingPaths.realFolder(owner) else { return false }
        func placement(_ path: String) -> Bool {
            guard let ids = RingPaths.realFolder(path) else { return false }
            return ids.allSatisfy { id in
                id.utf8.count == 32 && isHexDigits(id) && (RingPaths.realFolder(path + "/" + id)?.allSatisfy {
                    RingPaths.blockNames.contains($0) || RingPaths.isTemporary($0, of: RingPaths.blockNames)
                } ?? false)
            }
        }
        let topOK = top.allSatisfy { n in
            if n == "owner" { return true }   // its entries are checked below
            if n == "blocks" || n == "blocks.next" || n == "spares" || RingPaths.isRetiredPlacement(n) { return placement(root + "/" + n) }
            if RingPaths.topNames.contains(n) { return InputFile.isRegular(root + "/" + n) }
            return RingPaths.isTemporary(n, of: RingPaths.topNames)
        }
        return topOK && own.allSatisfy { RingPaths.ownerNames.contains($0) || RingPaths.isTemporary($0, of: RingPaths.ownerNames) }
    }
}

/// The bound of a ring's JSON files. Parameter files and the checkpoint are bounded by the sizes the owner's signed
/// record (and each block's signed descriptor) give them: a file is never read beyond the size it was sealed with.
package enum RingFileLimits {
    package static let json = 1 << 20
}

// MARK: locks

/// An advisory `flock` on a ring's lock file, released when the value is dropped. Waiting is bounded: the lock is
/// polled until a deadline, with one message through `onWait` when it is not free at once.
public final class RingLock {
    let fd: Int32

    private init(fd: Int32) { self.fd = fd }
    deinit { flock(fd, LOCK_UN); close(fd) }

    /// Takes the lock at `path`. `create`: make the file if missing (writers); readers never create it and get
    /// nil when it does not exist (a copied or older ring).
    package static func acquire(_ path: String, exclusive: Bool, create: Bool, timeout: Double, what: String,
                        onWait: ((String) -> Void)? = nil) throws -> RingLock? {
        let fd = create ? open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0o600) : open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else {
            if !create && errno == ENOENT { return nil }
            throw RingError.notARing("\(path) cannot be opened (\(String(cString: strerror(errno))))")
        }
        let op = exclusive ? LOCK_EX : LOCK_SH
        let deadline = now() + timeout
        var told = false
        while flock(fd, op | LOCK_NB) != 0 {
            guard errno == EWOULDBLOCK || errno == EINTR else { close(fd); throw RingError.busy("\(path): flock failed") }
            if now() >= deadline {
                close(fd)
                throw RingError.busy("\(what): still busy after \(Int(timeout.rounded())) s; try again later")
            }
            if !told { onWait?("\(what): waiting up to \(Int(timeout.rounded())) s…"); told = true }
            usleep(20_000)
        }
        return RingLock(fd: fd)
    }
}

extension RingPaths {
    /// One process at a time runs or repairs the ring (a query, `verify --restore`).
    public func runtimeLock(timeout: Double, onWait: ((String) -> Void)? = nil) throws -> RingLock {
        guard let l = try RingLock.acquire(runtimeLock, exclusive: true, create: true, timeout: timeout,
                                           what: "another deepring process is running this ring (\(root))", onWait: onWait) else {
            throw RingError.notARing("\(owner) is missing")
        }
        return l
    }

    /// Held exclusively while the ring's files change (a restore, a reshuffle's commit) — a few milliseconds.
    package func stateLockExclusive() throws -> RingLock? {
        try RingLock.acquire(stateLock, exclusive: true, create: true, timeout: 60, what: "the ring's files are being read")
    }

    /// Held shared by readers (`verify`, `ledger audit`, `ring inspect`) while they read: they see the files before
    /// or after a change, never half of one. Readers never create or change a file.
    package func stateLockShared(timeout: Double = 60) throws -> RingLock? {
        try RingLock.acquire(stateLock, exclusive: false, create: false, timeout: timeout, what: "the ring's files are being changed")
    }
}

// MARK: files

/// Creates a new file (it must not exist) with `bytes`, without fsync: for files inside a folder that is synced and
/// then committed as a whole (a new placement, a new ring).
package func writeNewFile(_ bytes: [UInt8], to path: String, permissions: Int) throws {
    let fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, mode_t(permissions))
    guard fd >= 0 else { throw RingError.restoreFailed("cannot create \(path)") }
    defer { close(fd) }
    guard writeAll(fd, bytes) else { throw RingError.restoreFailed("cannot write \(path)") }
}

/// fsync of one file or folder.
package func fsyncPath(_ path: String) throws {
    let fd = open(path, O_RDONLY | O_CLOEXEC)
    guard fd >= 0 else { throw RingError.restoreFailed("cannot open \(path)") }
    defer { close(fd) }
    guard fsync(fd) == 0 else { throw RingError.restoreFailed("cannot sync \(path)") }
}

@_silgen_name("syncfs") private func c_syncfs(_ fd: Int32) -> Int32

/// Flushes the file system holding `path` (one call for a whole folder of new files).
package func syncFileSystem(_ path: String) {
    let fd = open(path, O_RDONLY | O_CLOEXEC)
    if fd >= 0 { _ = c_syncfs(fd); close(fd) }
}

/// Removes a folder tree without ever following a symbolic link, even one swapped in while it runs: every level is
/// opened relative to its parent's open descriptor with `O_NOFOLLOW`, and entries are removed with `unlinkat` in
/// that descriptor, so a path component replaced by a link to somewhere else is never walked into.
package func removeTree(_ path: String) {
    var st = stat()
    guard lstat(path, &st) == 0 else { return }
    guard (st.st_mode & S_IFMT) == S_IFDIR else { unlink(path); return }
    let url = URL(fileURLWithPath: path)
    let parent = open(url.deletingLastPathComponent().path, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
    guard parent >= 0 else { return }
    defer { close(parent) }
    removeTree(in: parent, name: url.lastPathComponent, depth: 0)
}

/// Removes entry `name` of the folder open at `dirFD`.
private func removeTree(in dirFD: Int32, name: String, depth: Int) {
    var st = stat()
    guard fstatat(dirFD, name, &st, AT_SYMLINK_NOFOLLOW) == 0 else { return }
    guard (st.st_mode & S_IFMT) == S_IFDIR, depth < 64 else { _ = unlinkat(dirFD, name, 0); return }
    let fd = openat(dirFD, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
    guard fd >= 0 else { return }
    if let dir = fdopendir(dup(fd)) {
        var names: [String] = []
        while let ent = readdir(dir) {
            let n = withUnsafePointer(to: ent.pointee.d_name) { String(cString: UnsafeRawPointer($0).assumingMemoryBound(to: CChar.self)) }
            if n != "." && n != ".." { names.append(n) }
        }
        closedir(dir)
        for n in names { removeTree(in: fd, name: n, depth: depth + 1) }
    }
    close(fd)
    _ = unlinkat(dirFD, name, AT_REMOVEDIR)
}

func processIsAlive(_ pid: Int32) -> Bool { pid > 0 && (kill(pid, 0) == 0 || errno == EPERM) }

func isHexDigits<S: StringProtocol>(_ s: S) -> Bool {
    !s.isEmpty && s.utf8.allSatisfy { ($0 >= 48 && $0 <= 57) || ($0 >= 97 && $0 <= 102) }
}

// MARK: destructive requests

/// What may be done with the folder a new ring (or an attack's ring) is to be written to.
public enum RingTarget {
    /// Checks `path` before a ring is written there: it may not exist, or be an empty folder; with `force`, it may be
    /// an existing ring folder (replaced only once the new one is complete). A file, or a folder that is not a ring,
    /// is never replaced. `protected` paths (the model being sealed) may not lie inside it. Returns true when an
    /// existing ring will be replaced.
    @discardableResult
    public static func check(_ path: String, force: Bool, protected: [String] = []) throws -> Bool {
        var st = stat()
        guard lstat(path, &st) == 0 else { return false }
        guard (st.st_mode & S_IFMT) == S_IFDIR else {
            throw RingError.refused("\(path) exists and is not a folder; refusing to replace it (choose another --ring)")
        }
        let contents = (try? FileManager.default.contentsOfDirectory(atPath: path)) ?? []
        if contents.isEmpty { return false }
        guard force else {
            throw RingError.refused("\(path) exists and is not empty; refusing to replace it (use --force to replace a ring folder)")
        }
        guard RingPaths(path).isRing else {
            throw RingError.refused("\(path) is not a ring folder; --force replaces only a ring folder, never other files")
        }
        let root = URL(fileURLWithPath: path).resolvingSymlinksInPath().path + "/"
        for p in protected where URL(fileURLWithPath: p).resolvingSymlinksInPath().path.hasPrefix(root) {
            throw RingError.refused("\(p) is inside \(path); refusing to replace the folder that holds it")
        }
        return true
    }
}

// MARK: temporary paths

/// Folders that hold secrets only for a while — a ring being sealed, the temporary rings of `attack`, `reproduce`
/// and `bench` — are registered here and removed on every exit path: normal exit, an error, SIGINT and SIGTERM
/// (after `installSignalHandlers()`). Leftovers of a process that was killed outright (kill -9) carry its pid in
/// their name and are removed by the next run (`removeStale`).
public enum TemporaryPaths {
    nonisolated(unsafe) private static var paths: Set<String> = []
    private static let lock = NSLock()
    nonisolated(unsafe) private static var installed = false
    nonisolated(unsafe) private static var sources: [DispatchSourceSignal] = []

    public static func register(_ path: String) {
        lock.lock(); defer { lock.unlock() }
        if !installed {
            installed = true
            atexit { TemporaryPaths.removeAll() }
        }
        paths.insert(path)
    }

    public static func unregister(_ path: String) {
        lock.lock(); defer { lock.unlock() }
        paths.remove(path)
    }

    /// Removes every registered path. Threads of the process may still be writing into them (a placement built in
    /// the background), so the removal is repeated once they have had a moment to stop.
    public static func removeAll(settle: Bool = false) {
        lock.lock()
        let all = paths
        paths.removeAll()
        lock.unlock()
        for p in all { removeTree(p) }
        guard settle, !all.isEmpty else { return }
        for _ in 0..<3 {
            usleep(30_000)
            for p in all { removeTree(p) }
        }
    }

    /// On SIGINT, SIGTERM and every other signal that would end the process (HUP, QUIT, PIPE, USR1, USR2, ALRM,
    /// XCPU, XFSZ, VTALRM, PROF): remove the registered paths, then exit with 128 + the signal number. (SIGKILL
    /// cannot be caught: `removeStale` cleans up after it.)
    /// Signals a serving process turns into a clean stop (`StopSignal`) instead of an exit.
    nonisolated(unsafe) private static var elsewhere: Set<Int32> = []

    public static func handleElsewhere(_ sig: Int32) { lock.lock(); elsewhere.insert(sig); lock.unlock() }
    private static func handledElsewhere(_ sig: Int32) -> Bool { lock.lock(); defer { lock.unlock() }; return elsewhere.contains(sig) }

    public static func installSignalHandlers() {
        for sig in [SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGPIPE, SIGUSR1, SIGUSR2, SIGALRM, SIGXCPU, SIGXFSZ, SIGVTALRM, SIGPROF] {
            signal(sig, SIG_IGN)
            let s = DispatchSource.makeSignalSource(signal: sig, queue: .global())
            s.setEventHandler {
                if handledElsewhere(sig) { return }
                removeAll(settle: true)
                _exit(128 + sig)
            }
            s.resume()
            sources.append(s)
        }
    }

    /// A new folder in the system's temporary folder, `deepring-<purpose>.<pid>.<12 hex digits>`, mode 0700,
    /// registered. Leftovers of dead processes — such folders, and the `.…sealing-…` folders of rings being sealed
    /// into them — are removed first.
    public static func makeDirectory(purpose: String) throws -> String {
        let base = NSTemporaryDirectory()
        removeStale(in: base, prefix: "deepring-\(purpose).", separator: ".", suffix: 12)
        removeStale(in: base, prefix: ".deepring-\(purpose).", separator: ".", suffix: nil)
        let dir = (base as NSString).appendingPathComponent("deepring-\(purpose).\(getpid()).\(randomID().prefix(12))")
        register(dir)
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
        return dir
    }

    /// Removes entries of `dir` named exactly `<prefix><pid><separator><suffix hex digits>` — with `suffix` nil,
    /// `<prefix><pid><separator><12 hex digits>.sealing-<pid>-<8 hex digits>`, a ring being sealed into such a
    /// folder — whose process no longer exists. Nothing of another name is ever touched.
    public static func removeStale(in dir: String, prefix: String, separator: Character, suffix: Int?) {
        for name in (try? FileManager.default.contentsOfDirectory(atPath: dir)) ?? [] where name.hasPrefix(prefix) {
            let rest = name.dropFirst(prefix.count)
            guard let sep = rest.firstIndex(of: separator), let pid = Int32(rest[..<sep]), pid != getpid() else { continue }
            let tail = rest[rest.index(after: sep)...]
            if let n = suffix {
                guard tail.count == n, isHexDigits(tail) else { continue }
            } else {
                let parts = tail.split(separator: ".", maxSplits: 1)
                guard parts.count == 2, parts[0].count == 12, isHexDigits(parts[0]), isSealingFolder(parts[1]) else { continue }
            }
            guard !processIsAlive(pid) else { continue }
            removeTree((dir as NSString).appendingPathComponent(name))
        }
    }

    /// `sealing-<pid>-<8 hex digits>`.
    static func isSealingFolder<S: StringProtocol>(_ s: S) -> Bool {
        guard s.hasPrefix("sealing-") else { return false }
        let f = s.dropFirst(8).split(separator: "-")
        return f.count == 2 && Int32(f[0]) != nil && f[1].count == 8 && isHexDigits(f[1])
    }
}
