import DeepRingEngine
import DeepRingProtocol
import Foundation

/// The querent's pins of ring owners, like SSH's known hosts: one line per pin, `<ring id> <owner fingerprint>
/// [<location>]`. A querent sends nothing to a ring whose `ring.json` is signed by another owner than the one pinned
/// for it. A pin is keyed by the ring's id *and* by where the ring was found (its folder, percent-encoded): a
/// location that held one ring never silently holds another — as SSH keys host keys by host name, not by what the
/// host claims — so swapping a folder's `ring.json` and ledger for another ring's is refused, not trusted anew.
/// The pin comes from `--owner-key`, from `seal` (the sealer trusts its own ring), or is trusted on first use and
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

    public struct Pin: Sendable, Equatable {
        public var ringID: String
        public var fingerprint: String
        public var location: String?
    }

    /// The pins. A missing file has none; a malformed one is an error (a querent does not guess whom it meant to trust).
    public func pins() throws -> [Pin] {
        guard FileManager.default.fileExists(atPath: path) else { return [] }
        return try KnownRings.parse(try InputFile.read(path, limit: KnownRings.maxSize), path: path)
    }

    public static func parse(_ bytes: [UInt8], path: String) throws -> [Pin] {
        guard let text = String(validating: bytes, as: UTF8.self) else { throw RingError.malformedFile(path, "not UTF-8 text") }
        var out: [Pin] = []
        for (n, line) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            let t = line.trimmingCharacters(in: .whitespaces)
            if t.isEmpty || t.hasPrefix("#") { continue }
            let f = t.split(separator: " ", omittingEmptySubsequences: true).map(String.init)
            guard f.count == 2 || f.count == 3, f[0].utf8.count <= PayloadLimits.name, KeyFingerprint.isWellFormed(f[1]),
                  f.count == 2 || f[2].removingPercentEncoding != nil else {
                throw RingError.malformedFile(path, "line \(n + 1) is not \"<ring id> <owner fingerprint> [<location>]\"")
            }
            let pin = Pin(ringID: f[0], fingerprint: f[1], location: f.count == 3 ? f[2].removingPercentEncoding : nil)
            guard !out.contains(where: { $0.ringID == pin.ringID && $0.fingerprint != pin.fingerprint }) else {
                throw RingError.malformedFile(path, "ring \(f[0]) is pinned to two owners")
            }
            guard pin.location == nil || !out.contains(where: { $0.location == pin.location && $0.ringID != pin.ringID }) else {
                throw RingError.malformedFile(path, "line \(n + 1): its location is pinned to another ring")
            }
            out.append(pin)
        }
        return out
    }

    /// A folder's location as pins record it: its absolute, standardized path.
    public static func location(of folder: String) -> String {
        URL(fileURLWithPath: folder).standardizedFileURL.resolvingSymlinksInPath().path
    }

    /// Pins `fingerprint` for `ringID` (and `location`). An existing different pin is an error.
    public func remember(_ ringID: String, fingerprint: String, location: String? = nil) throws {
        var all = try pins()
        if let p = all.first(where: { $0.ringID == ringID }), p.fingerprint != fingerprint {
            throw RingError.notAuthentic("ring \(ringID) is already pinned to owner \(p.fingerprint)")
        }
        if let l = location, let p = all.first(where: { $0.location == l }), p.ringID != ringID {
            throw RingError.notAuthentic("\(l) is already pinned to ring \(p.ringID)")
        }
        if all.contains(where: { $0.ringID == ringID && $0.location == location }) { return }
        all.append(Pin(ringID: ringID, fingerprint: fingerprint, location: location))
        let dir = (path as NSString).deletingLastPathComponent
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
        let allowed = CharacterSet.urlPathAllowed.subtracting(CharacterSet(charactersIn: " %"))
        let text = "# DeepRing: owners trusted per ring (<ring id> <owner key fingerprint> [<location>])\n"
            + all.map { p in
                "\(p.ringID) \(p.fingerprint)" + (p.location.map { " " + ($0.addingPercentEncoding(withAllowedCharacters: allowed) ?? $0) } ?? "") + "\n"
            }.joined()
        try writeFileAtomically(Array(text.utf8), to: path, permissions: 0o600)
    }

    /// Decides whether to trust `manifest` (parsed, and signed by the owner it names), found at `location`: the
    /// location must not be pinned to another ring, and the owner must be the one given on the command line
    /// (`ownerKey`: a fingerprint or a hex key) or the one pinned for the ring; with neither, it is trusted on first
    /// use and remembered. Throws `RingError.notAuthentic` on a mismatch.
    public func authenticate(_ manifest: RingManifest, ownerKey: String?, location: String? = nil) throws -> Trust {
        let all = try pins()
        if let l = location, let here = all.first(where: { $0.location == l }), here.ringID != manifest.ringID {
            throw RingError.notAuthentic("\(l) held ring \(here.ringID) (pinned in \(path)); it now holds ring \(manifest.ringID): refusing to send anything (remove that pin if the ring there really changed)")
        }
        let pinned = all.first { $0.ringID == manifest.ringID }?.fingerprint
        if let given = ownerKey {
            guard KeyFingerprint.matches(given, manifest.ownerKey) else {
                throw RingError.notAuthentic("ring.json of ring \(manifest.ringID) is signed by owner \(manifest.ownerFingerprint), not by the owner key given (\(given)); refusing to send anything")
            }
            if let pinned, pinned != manifest.ownerFingerprint {
                throw RingError.notAuthentic("ring \(manifest.ringID) is pinned to owner \(pinned) in \(path), but --owner-key and ring.json name \(manifest.ownerFingerprint); remove the old pin first if the owner really changed")
            }
            try remember(manifest.ringID, fingerprint: manifest.ownerFingerprint, location: location)
            return .givenOnCommandLine
        }
        if let pinned {
            guard pinned == manifest.ownerFingerprint else {
                throw RingError.notAuthentic("ring.json of ring \(manifest.ringID) is signed by owner \(manifest.ownerFingerprint), but \(pinned) is pinned for it in \(path); refusing to send anything")
            }
            try remember(manifest.ringID, fingerprint: pinned, location: location)
            return .pinned
        }
        try remember(manifest.ringID, fingerprint: manifest.ownerFingerprint, location: location)
        return .firstUse
    }
}
