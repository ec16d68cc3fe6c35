import DeepRingEngine
import DeepRingProtocol
import Foundation

/// The querent's pins of ring owners, like SSH's known hosts: one line per ring, `<ring id> <owner fingerprint>`.
/// A querent sends nothing to a ring whose `ring.json` is signed by another owner than the one pinned for it. The
/// pin comes from `--owner-key`, from `seal` (the sealer trusts its own ring), or is trusted on first use and
/// remembered. Default location: `$DEEPRING_HOME/known_rings`, else `~/.deepring/known_rings`.
public struct KnownRings: Sendable {
    public let path: String
    public static let maxSize = 1 << 20

    public init(path: String) { self.path = path }

    public static var defaultPath: String {
        let env = ProcessInfo.processInfo.environment
        if let h = env["DEEPRING_HOME"], !h.isEmpty { return h + "/known_rings" }
        return (env["HOME"] ?? NSHomeDirectory()) + "/.deepring/known_rings"
    }

    /// How a manifest's owner came to be trusted.
    public enum Trust: Sendable, Equatable {
        case pinned
        case givenOnCommandLine
        case firstUse
    }

    /// The pins, ring id → fingerprint. A missing file is empty; a malformed one is an error (a querent does not
    /// guess which owner it meant to trust).
    public func pins() throws -> [String: String] {
        guard FileManager.default.fileExists(atPath: path) else { return [:] }
        return try KnownRings.parse(try InputFile.read(path, limit: KnownRings.maxSize), path: path)
    }

    public static func parse(_ bytes: [UInt8], path: String) throws -> [String: String] {
        guard let text = String(validating: bytes, as: UTF8.self) else { throw RingError.malformedFile(path, "not UTF-8 text") }
        var out: [String: String] = [:]
        for (n, line) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            let t = line.trimmingCharacters(in: .whitespaces)
            if t.isEmpty || t.hasPrefix("#") { continue }
            let f = t.split(separator: " ", omittingEmptySubsequences: true)
            guard f.count == 2, f[0].utf8.count <= PayloadLimits.name, KeyFingerprint.isWellFormed(String(f[1])) else {
                throw RingError.malformedFile(path, "line \(n + 1) is not \"<ring id> <owner fingerprint>\"")
            }
            guard out[String(f[0])] == nil else { throw RingError.malformedFile(path, "ring \(f[0]) is pinned twice") }
            out[String(f[0])] = String(f[1])
        }
        return out
    }

    /// Pins `fingerprint` for `ringID` (replacing nothing: an existing different pin is an error).
    public func remember(_ ringID: String, fingerprint: String) throws {
        var pins = try pins()
        if let old = pins[ringID] {
            guard old == fingerprint else { throw RingError.notAuthentic("ring \(ringID) is already pinned to owner \(old)") }
            return
        }
        pins[ringID] = fingerprint
        let dir = (path as NSString).deletingLastPathComponent
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
        let text = "# DeepRing: owners trusted per ring (<ring id> <owner key fingerprint>)\n"
            + pins.sorted { $0.key < $1.key }.map { "\($0.key) \($0.value)\n" }.joined()
        try writeFileAtomically(Array(text.utf8), to: path, permissions: 0o600)
    }

    /// Decides whether to trust `manifest` (parsed, and signed by the owner it names): its owner must be the one
    /// given on the command line (`ownerKey`: a fingerprint or a hex key), or the one pinned for the ring; with
    /// neither, it is trusted on first use and remembered. Throws `RingError.notAuthentic` on a mismatch.
    public func authenticate(_ manifest: RingManifest, ownerKey: String?) throws -> Trust {
        let key = manifest.ownerKey
        let pinned = try pins()[manifest.ringID]
        if let given = ownerKey {
            guard KeyFingerprint.matches(given, key) else {
                throw RingError.notAuthentic("ring.json of ring \(manifest.ringID) is signed by owner \(manifest.ownerFingerprint), not by the owner key given (\(given)); refusing to send anything")
            }
            if let pinned {
                guard pinned == manifest.ownerFingerprint else {
                    throw RingError.notAuthentic("ring \(manifest.ringID) is pinned to owner \(pinned) in \(path), but --owner-key and ring.json name \(manifest.ownerFingerprint); remove the old pin first if the owner really changed")
                }
            } else {
                try remember(manifest.ringID, fingerprint: manifest.ownerFingerprint)
            }
            return .givenOnCommandLine
        }
        if let pinned {
            guard pinned == manifest.ownerFingerprint else {
                throw RingError.notAuthentic("ring.json of ring \(manifest.ringID) is signed by owner \(manifest.ownerFingerprint), but \(pinned) is pinned for it in \(path); refusing to send anything")
            }
            return .pinned
        }
        try remember(manifest.ringID, fingerprint: manifest.ownerFingerprint)
        return .firstUse
    }
}
