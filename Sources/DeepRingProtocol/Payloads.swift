import DeepRingLedger

/// The type of a ledger payload: its second byte, after the encoding version. A payload of one type never decodes
/// as another, whatever entry kind it is found in.
public enum PayloadType: UInt8, Sendable, CaseIterable {
    case members = 1, query = 2, layerPost = 3, alarm = 4, delivery = 5, restore = 6
    case challenge = 7, attestation = 8, restoreOrder = 9
    case rotationCall = 10, rekey = 11, placement = 12
    case sparePlacement = 13, eviction = 14
}

/// A typed, versioned ledger payload, encoded with the `BinaryWriter` codec as
/// `u8 version ‖ u8 type ‖ fields`. Decoding treats the bytes as hostile and fails with a `ProtocolError`.
public protocol LedgerPayload: Sendable, Equatable {
    static var type: PayloadType { get }
    /// The entry kinds this payload travels in.
    static var kinds: Set<EntryKind> { get }
    func encodeFields(into w: inout BinaryWriter)
    static func decodeFields(from r: inout BinaryReader<ArraySlice<UInt8>>) throws -> Self
}

/// The payload encoding this build writes and reads.
public let payloadVersion: UInt8 = 1

extension LedgerPayload {
    public func encoded(capacity: Int = 256) -> [UInt8] {
        var w = BinaryWriter(capacity: capacity)
        w.u8(payloadVersion)
        w.u8(Self.type.rawValue)
        encodeFields(into: &w)
        return w.bytes
    }

    /// Decodes a payload (a slice keeps large fields, such as a layer post's X, in the caller's buffer).
    public static func decode(_ bytes: ArraySlice<UInt8>) throws -> Self {
        var r = BinaryReader(bytes)
        let v = try r.u8("payload version")
        guard v == payloadVersion else { throw ProtocolError.unsupported("payload version \(v)") }
        let t = try r.u8("payload type")
        guard t == Self.type.rawValue else {
            throw ProtocolError.malformed("payload of type \(PayloadType(rawValue: t).map { "\($0)" } ?? "\(t)"), expected \(Self.type)")
        }
        let p = try decodeFields(from: &r)
        try r.end()
        return p
    }

    public static func decode(_ bytes: [UInt8]) throws -> Self { try decode(bytes[...]) }

    /// Decodes an entry's payload after checking that this payload may travel in the entry's kind.
    public static func decode(_ e: LedgerEntry) throws -> Self {
        guard kinds.contains(e.kind) else { throw ProtocolError.malformed("a \(e.kind.rawValue) entry cannot carry a \(type) payload") }
        return try decode(e.payload[...])
    }
}

/// Most members a ring may announce (blocks plus spares), and the longest names and messages in payloads.
public enum PayloadLimits {
    public static let members = 4096
    public static let name = 128
    public static let message = 1024
    public static let sealedKey = 256
}

// MARK: seal and reshuffle

/// The ring's member signing keys, announced by the ouroboros in random order (the order is a secret): in the
/// `seal` entry (generation 0) and after every reshuffle. `ledger audit` accepts an author only after such an
/// announcement named it.
public struct MembersAnnouncement: LedgerPayload {
    public static let type = PayloadType.members
    public static let kinds: Set<EntryKind> = [.seal, .reshuffle]
    public var ringID: String
    public var generation: UInt64
    public var members: [[UInt8]]

    public init(ringID: String, generation: UInt64, members: [[UInt8]]) {
        self.ringID = ringID; self.generation = generation; self.members = members
    }

    public func encodeFields(into w: inout BinaryWriter) {
        w.string(ringID)
        w.u64(generation)
        w.list(members) { w, k in w.raw(k) }
    }

    public static func decodeFields(from r: inout BinaryReader<ArraySlice<UInt8>>) throws -> Self {
        let id = try r.string(max: PayloadLimits.name, "ring id")
        let g = try r.u64("generation")
        let m = try r.list(max: PayloadLimits.members, "members") { try $0.key("member key") }
        return Self(ringID: id, generation: g, members: m)
    }
}

// MARK: query (Eq. 3)

/// A query: the input tensor sealed to the ouroboros's HPKE key (the query id and the querent's key as associated
/// data), and the querent's fresh X25519 public key, to which the answer is sealed. Anyone may post one.
public struct QueryRequest: LedgerPayload {
    public static let type = PayloadType.query
    public static let kinds: Set<EntryKind> = [.query]
    public var querent: [UInt8]
    public var sealedInput: [UInt8]

    public init(querent: [UInt8], sealedInput: [UInt8]) { self.querent = querent; self.sealedInput = sealedInput }

    public func encodeFields(into w: inout BinaryWriter) {
        w.raw(querent)
        w.bytes(sealedInput)
    }

    public static func decodeFields(from r: inout BinaryReader<ArraySlice<UInt8>>) throws -> Self {
        Self(querent: try r.key("querent key"), sealedInput: try r.bytes(max: HPKEBox.maxSealed, "sealed input"))
    }

    /// The associated data of the sealed input and of the sealed answer: the query id and the querent's key.
    public static func aad(queryID: String, querent: [UInt8]) -> [UInt8] { Array(queryID.utf8) + querent }
}

// MARK: processing (Eqs. 4–11)

/// What a block posts for a query: S is the entry's signature; K, X and H are here. The post names the entry it
/// computed from (`consumed`, with that entry's hash) and its recipient — the successor's signing key — so that the
/// receiver can establish the H it validates against (Eq. 13) and anything else is an alarm, never a skip.
public struct LayerPost: LedgerPayload {
    public static let type = PayloadType.layerPost
    public static let kinds: Set<EntryKind> = [.layer]
    /// Sequence number and entry hash of the entry whose output this post's input was: the predecessor's layer post,
    /// or, for the ouroboros's post only, the query.
    public var consumed: Int64
    public var consumedHash: [UInt8]
    /// The successor's signing key.
    public var recipient: [UInt8]
    /// K: a fresh AES-256 key sealed to the successor's HPKE key (Eq. 8).
    public var sealedKey: [UInt8]
    /// X: this block's output under K, AES-256-GCM (Eq. 9); a slice of the entry's payload when decoded.
    public var ciphertext: ArraySlice<UInt8>
    /// H: SHA-256 of the next layer's output, computed with this block's copy of the next layer (Eq. 11).
    public var nextHash: [UInt8]

    public init(consumed: Int64, consumedHash: [UInt8], recipient: [UInt8], sealedKey: [UInt8], ciphertext: ArraySlice<UInt8>, nextHash: [UInt8]) {
        self.consumed = consumed; self.consumedHash = consumedHash; self.recipient = recipient
        self.sealedKey = sealedKey; self.ciphertext = ciphertext; self.nextHash = nextHash
    }

    public func encodeFields(into w: inout BinaryWriter) {
        w.i64(consumed)
        w.raw(consumedHash)
        w.raw(recipient)
        w.bytes(sealedKey)
        w.bytes(ciphertext)
        w.raw(nextHash)
    }

    public static func decodeFields(from r: inout BinaryReader<ArraySlice<UInt8>>) throws -> Self {
        let c = try r.i64("consumed entry")
        let ch = try r.key("consumed entry hash")
        let to = try r.key("recipient")
        let k = try r.bytes(max: PayloadLimits.sealedKey, "K")
        let x = r.bytes[try r.bytesRange(max: HPKEBox.maxSealed, "X")]
        let h = try r.key("H")
        return Self(consumed: c, consumedHash: ch, recipient: to, sealedKey: k, ciphertext: x, nextHash: h)
    }

    public func encoded() -> [UInt8] { encoded(capacity: 128 + sealedKey.count + ciphertext.count) }

    /// Associated data of K and X: the query id, the sender's and the recipient's signing keys.
    public static func aad(queryID: String, from: [UInt8], to: [UInt8]) -> [UInt8] { Array(queryID.utf8) + from + to }
}

// MARK: validation (Eq. 13, Prop. 1)

/// Why a receiver could not accept a layer post. Only a hash mismatch may be a transient fault (the paper's
/// retry); every other failure is a protocol violation by a block holding valid keys, final at once.
public enum ValidationFailure: UInt8, Sendable, CaseIterable, CustomStringConvertible, Error {
    /// SHA-256 of the output differs from the H its predecessor's post carried (Eq. 13).
    case hashMismatch = 1
    /// The payload does not decode as a layer post.
    case malformedPost
    /// The post names a recipient other than the block that holds the author as predecessor.
    case misaddressed
    /// The entry the post claims to have consumed does not exist, or its hash is not the one named.
    case missingInput
    /// The consumed entry is not authentic (stored hash or signature).
    case inputNotAuthentic
    /// The consumed entry belongs to another query.
    case inputOfAnotherQuery
    /// A block other than the ouroboros consumed a query row (only the ouroboros's post may).
    case queryRowConsumed
    /// The consumed entry is neither the author's input (a layer post) nor, for the ouroboros, the query.
    case unexpectedInput
    /// The consumed layer post was not addressed to the post's author.
    case inputNotAddressedToSender
    /// The consumed post (whose H is the reference) was not written by the author's own predecessor.
    case inputNotFromPredecessor
    /// A second post for the same input without a retry having been asked for.
    case secondPost
    /// K or X cannot be opened with the receiver's key.
    case undecryptable
    /// The output does not have the shape the receiver's layer takes.
    case wrongShape

    public var retryable: Bool { self == .hashMismatch }

    public var description: String {
        switch self {
        case .hashMismatch: return "its output's hash differs from the H computed for it (Eq. 13)"
        case .malformedPost: return "its post does not decode"
        case .misaddressed: return "its post is addressed to another block"
        case .missingInput: return "its post consumes an entry that does not exist"
        case .inputNotAuthentic: return "its post consumes an entry that is not authentic"
        case .inputOfAnotherQuery: return "its post consumes an entry of another query"
        case .queryRowConsumed: return "its post consumes the query row, which only the ouroboros may"
        case .unexpectedInput: return "its post consumes an entry that was not its input"
        case .inputNotAddressedToSender: return "its post consumes a post that was not addressed to it"
        case .inputNotFromPredecessor: return "its post consumes a post that its own predecessor did not write"
        case .secondPost: return "it posted a second output for the same input"
        case .undecryptable: return "its post cannot be decrypted"
        case .wrongShape: return "its output has the wrong shape"
        }
    }
}

/// A receiver's alarm: the suspect (the author of the post that failed), and for a hash mismatch the block whose H
/// it was (Prop. 1: one of the two is compromised). Not final: the suspect is asked to post again from `input`.
public struct ValidationAlarm: Sendable, Equatable {
    public var suspect: [UInt8]
    public var hashFrom: [UInt8]?
    /// The post that failed.
    public var entry: Int64
    /// The entry the suspect computed from (what a retry recomputes from), when known.
    public var input: Int64?
    public var reason: ValidationFailure
    public var final: Bool

    public init(suspect: [UInt8], hashFrom: [UInt8]?, entry: Int64, input: Int64?, reason: ValidationFailure, final: Bool) {
        self.suspect = suspect; self.hashFrom = hashFrom; self.entry = entry; self.input = input; self.reason = reason; self.final = final
    }
}

public struct Alarm: LedgerPayload {
    public static let type = PayloadType.alarm
    public static let kinds: Set<EntryKind> = [.alarm]

    public enum Body: Sendable, Equatable {
        /// Validation failed at a receiver (per query).
        case validation(ValidationAlarm)
        /// The owner's authenticity check failed (§3.3): tracking starts at this holder.
        case authenticity(firstTampered: String)
        /// A member never posted for a query before its deadline.
        case silent(member: [UInt8])
    }

    public var body: Body
    public init(_ body: Body) { self.body = body }

    public func encodeFields(into w: inout BinaryWriter) {
        switch body {
        case .validation(let a):
            w.u8(1)
            w.raw(a.suspect)
            w.bool(a.hashFrom != nil)
            if let h = a.hashFrom { w.raw(h) }
            w.i64(a.entry)
            w.bool(a.input != nil)
            if let i = a.input { w.i64(i) }
            w.u8(a.reason.rawValue)
            w.bool(a.final)
        case .authenticity(let holder):
            w.u8(2)
            w.string(holder)
        case .silent(let m):
            w.u8(3)
            w.raw(m)
        }
    }

    public static func decodeFields(from r: inout BinaryReader<ArraySlice<UInt8>>) throws -> Self {
        switch try r.u8("alarm type") {
        case 1:
            let s = try r.key("suspect")
            let h = try r.bool("hash-from flag") ? try r.key("hash-from key") : nil
            let e = try r.i64("entry")
            let i = try r.bool("input flag") ? try r.i64("input") : nil
            let code = try r.u8("reason")
            guard let reason = ValidationFailure(rawValue: code) else { throw ProtocolError.unsupported("validation failure \(code)") }
            return Alarm(.validation(ValidationAlarm(suspect: s, hashFrom: h, entry: e, input: i, reason: reason, final: try r.bool("final"))))
        case 2:
            return Alarm(.authenticity(firstTampered: try r.string(max: PayloadLimits.name, "holder")))
        case 3:
            return Alarm(.silent(member: try r.key("member")))
        case let t:
            throw ProtocolError.unsupported("alarm type \(t)")
        }
    }
}

// MARK: delivery (Eq. 12)

/// Why the ouroboros refused to answer a query.
public enum RefusalReason: UInt8, Sendable, CaseIterable, CustomStringConvertible {
    /// The input does not decode, has the wrong shape or holds NaN or infinite values.
    case badInput = 1
    /// The sealed input cannot be opened with the ouroboros's key (sealed to another key?).
    case undecryptable
    /// A query with this id was already asked.
    case duplicateQuery
    /// Validation kept failing: a block (or the holder of the copy of its layer) is compromised.
    case compromised
    /// The ring did not answer in time.
    case timeout

    public var description: String {
        switch self {
        case .badInput: return "bad input"
        case .undecryptable: return "the input cannot be opened with the ouroboros's key"
        case .duplicateQuery: return "duplicate query id"
        case .compromised: return "a block is compromised"
        case .timeout: return "timed out"
        }
    }
}

/// The end of a query, posted by the ouroboros: the last layer's output sealed to the querent's key, or a refusal
/// (never a wrong answer).
public struct Delivery: LedgerPayload {
    public static let type = PayloadType.delivery
    public static let kinds: Set<EntryKind> = [.delivery]

    public enum Outcome: Sendable, Equatable {
        case answer(sealed: [UInt8])
        case refusal(RefusalReason, detail: String)
    }

    public var outcome: Outcome
    public init(_ outcome: Outcome) { self.outcome = outcome }

    public func encodeFields(into w: inout BinaryWriter) {
        switch outcome {
        case .answer(let s):
            w.u8(1)
            w.bytes(s)
        case .refusal(let reason, let detail):
            w.u8(2)
            w.u8(reason.rawValue)
            w.string(truncatedUTF8(detail, max: PayloadLimits.message))
        }
    }

    public static func decodeFields(from r: inout BinaryReader<ArraySlice<UInt8>>) throws -> Self {
        switch try r.u8("delivery type") {
        case 1:
            return Delivery(.answer(sealed: try r.bytes(max: HPKEBox.maxSealed, "sealed answer")))
        case 2:
            let code = try r.u8("refusal reason")
            guard let reason = RefusalReason(rawValue: code) else { throw ProtocolError.unsupported("refusal reason \(code)") }
            return Delivery(.refusal(reason, detail: try r.string(max: PayloadLimits.message, "refusal detail")))
        case let t:
            throw ProtocolError.unsupported("delivery type \(t)")
        }
    }
}

// MARK: tracking (§3.4.4)

/// A holder restored from the owner's checkpoint, or re-provisioned with fresh keys.
public struct RestoreRecord: LedgerPayload {
    public static let type = PayloadType.restore
    public static let kinds: Set<EntryKind> = [.restore]

    public enum Action: UInt8, Sendable { case parameters = 1, reprovisioned = 2 }

    public var holder: String
    public var action: Action

    public init(holder: String, action: Action) { self.holder = holder; self.action = action }

    public func encodeFields(into w: inout BinaryWriter) {
        w.string(holder)
        w.u8(action.rawValue)
    }

    public static func decodeFields(from r: inout BinaryReader<ArraySlice<UInt8>>) throws -> Self {
        let h = try r.string(max: PayloadLimits.name, "holder")
        let a = try r.u8("restore action")
        guard let action = Action(rawValue: a) else { throw ProtocolError.unsupported("restore action \(a)") }
        return Self(holder: h, action: action)
    }
}

// MARK: the authenticity round across hosts (§3.3)

/// The owner's call for an authenticity round (entry kind `challenge`, query id: the round's id): every block is to
/// chain its hash (Eq. 1) onto its predecessor's. It carries HASH_O (Eq. 2), computed by the ouroboros from the
/// parameters it computes with: the first block chains on it.
public struct AuthenticityChallenge: LedgerPayload {
    public static let type = PayloadType.challenge
    public static let kinds: Set<EntryKind> = [.challenge]
    public var ouroborosHash: [UInt8]

    public init(ouroborosHash: [UInt8]) { self.ouroborosHash = ouroborosHash }

    public func encodeFields(into w: inout BinaryWriter) { w.raw(ouroborosHash) }

    public static func decodeFields(from r: inout BinaryReader<ArraySlice<UInt8>>) throws -> Self {
        Self(ouroborosHash: try r.key("HASH_O"))
    }
}

/// A block's answer to a challenge (entry kind `attestation`, query id: the round's id), signed by its key:
/// HASH_j = SHA256(HASH_{j−1} ‖ enc(params_j) ‖ enc(params_{j+1})) over the parameters it holds in memory, the
/// HASH_{j−1} it chained on (its predecessor's attestation, or the challenge's HASH_O), and whether its parameter file
/// still has the digest its descriptor names.
public struct Attestation: LedgerPayload {
    public static let type = PayloadType.attestation
    public static let kinds: Set<EntryKind> = [.attestation]
    public var previousHash: [UInt8]
    public var hash: [UInt8]
    public var fileIntact: Bool

    public init(previousHash: [UInt8], hash: [UInt8], fileIntact: Bool) {
        self.previousHash = previousHash; self.hash = hash; self.fileIntact = fileIntact
    }

    public func encodeFields(into w: inout BinaryWriter) {
        w.raw(previousHash)
        w.raw(hash)
        w.bool(fileIntact)
    }

    public static func decodeFields(from r: inout BinaryReader<ArraySlice<UInt8>>) throws -> Self {
        Self(previousHash: try r.key("HASH_prev"), hash: try r.key("HASH"), fileIntact: try r.bool("file intact"))
    }
}

/// Tracking across hosts (§3.4.4): the owner sends a tampered block its two tensors from the checkpoint — its sealed
/// parameter file, sealed to the block's HPKE key (entry kind `restore`, query id: the round's id). The block accepts
/// only a file with the digest its owner-signed descriptor names.
public struct RestoreOrder: LedgerPayload {
    public static let type = PayloadType.restoreOrder
    public static let kinds: Set<EntryKind> = [.restore]
    /// The block's signing key.
    public var recipient: [UInt8]
    /// The parameter file, HPKE-sealed to the block's agreement key (associated data: `aad`).
    public var sealedFile: [UInt8]

    public init(recipient: [UInt8], sealedFile: [UInt8]) { self.recipient = recipient; self.sealedFile = sealedFile }

    public func encodeFields(into w: inout BinaryWriter) {
        w.raw(recipient)
        w.bytes(sealedFile)
    }

    public static func decodeFields(from r: inout BinaryReader<ArraySlice<UInt8>>) throws -> Self {
        Self(recipient: try r.key("recipient"), sealedFile: try r.bytes(max: HPKEBox.maxSealed, "sealed parameter file"))
    }

    public static func aad(round: String, recipient: [UInt8]) -> [UInt8] { Array("DeepRing restore v1".utf8) + Array(round.utf8) + recipient }
}

// MARK: key rotation across hosts (the paper's reshuffle, §3.4)

/// The owner's call for a key rotation (entry kind `rotation`, query id: the call's id): every member is to make new
/// key pairs for placement generation `generation` and post their public keys sealed to the ouroboros.
public struct RotationCall: LedgerPayload {
    public static let type = PayloadType.rotationCall
    public static let kinds: Set<EntryKind> = [.rotation]
    public var ringID: String
    public var generation: UInt64

    public init(ringID: String, generation: UInt64) { self.ringID = ringID; self.generation = generation }

    public func encodeFields(into w: inout BinaryWriter) {
        w.string(ringID)
        w.u64(generation)
    }

    public static func decodeFields(from r: inout BinaryReader<ArraySlice<UInt8>>) throws -> Self {
        Self(ringID: try r.string(max: PayloadLimits.name, "ring id"), generation: try r.u64("generation"))
    }
}

/// A member's answer to a rotation call (entry kind `rekey`, query id: the call's id), signed by its current key:
/// its new public keys, HPKE-sealed to the ouroboros — so that no ledger observer can link the old key to the new.
public struct RekeyPost: LedgerPayload {
    public static let type = PayloadType.rekey
    public static let kinds: Set<EntryKind> = [.rekey]
    public var generation: UInt64
    /// The new `PublicKeys` (signing ‖ agreement) and the new signing key's signature over `proof(call:author:)` —
    /// proof that the member holds the key it asks to be placed under — sealed to the ouroboros's agreement key
    /// (associated data: `aad`).
    public var sealedKeys: [UInt8]

    public init(generation: UInt64, sealedKeys: [UInt8]) { self.generation = generation; self.sealedKeys = sealedKeys }

    public func encodeFields(into w: inout BinaryWriter) {
        w.u64(generation)
        w.bytes(sealedKeys)
    }

    public static func decodeFields(from r: inout BinaryReader<ArraySlice<UInt8>>) throws -> Self {
        Self(generation: try r.u64("generation"), sealedKeys: try r.bytes(max: PayloadLimits.sealedKey, "sealed keys"))
    }

    /// Binds the sealed keys to the call and to the member that posts them (its current signing key).
    public static func aad(call: String, author: [UInt8]) -> [UInt8] { Array("DeepRing rekey v1".utf8) + Array(call.utf8) + author }
    /// What the new signing key signs: the call and the member's current key (a key cannot be claimed by another).
    public static func proof(call: String, author: [UInt8]) -> [UInt8] { Array("DeepRing rekey proof v1".utf8) + Array(call.utf8) + author }
}

/// The owner's answer to a member's new keys (entry kind `placement`, query id: the call's id): the member's new
/// owner-signed descriptor — its new keys, its new neighbours' — sealed to its new agreement key and addressed to
/// its new signing key. The placements of one rotation are posted in random order.
public struct PlacementOrder: LedgerPayload {
    public static let type = PayloadType.placement
    public static let kinds: Set<EntryKind> = [.placement]
    public var generation: UInt64
    /// The member's new signing key.
    public var recipient: [UInt8]
    /// The descriptor's JSON, HPKE-sealed to the member's new agreement key (associated data: `aad`).
    public var sealedDescriptor: [UInt8]

    public init(generation: UInt64, recipient: [UInt8], sealedDescriptor: [UInt8]) {
        self.generation = generation; self.recipient = recipient; self.sealedDescriptor = sealedDescriptor
    }

    public func encodeFields(into w: inout BinaryWriter) {
        w.u64(generation)
        w.raw(recipient)
        w.bytes(sealedDescriptor)
    }

    public static func decodeFields(from r: inout BinaryReader<ArraySlice<UInt8>>) throws -> Self {
        Self(generation: try r.u64("generation"), recipient: try r.key("recipient"),
             sealedDescriptor: try r.bytes(max: 2 * BlockDescriptor.maxSize, "sealed descriptor"))
    }

    public static func aad(call: String, recipient: [UInt8]) -> [UInt8] { Array("DeepRing placement v1".utf8) + Array(call.utf8) + recipient }
}

// MARK: eviction to spares (Prop. 1's compromised block leaves the ring)

/// The owner's order to a spare block (entry kind `placement`, query id: the rotation call's id): the slot of an
/// evicted block is the spare's from the next generation on. `sealed` is HPKE-sealed to the spare's agreement key
/// (associated data: `aad`) and holds, as two length-prefixed fields, the spare's owner-signed descriptor (JSON)
/// and its parameter file — the evicted block's layer and its copy of the next one, from the owner's checkpoint.
public struct SparePlacement: LedgerPayload {
    public static let type = PayloadType.sparePlacement
    public static let kinds: Set<EntryKind> = [.placement]
    public var generation: UInt64
    /// The spare's signing key.
    public var recipient: [UInt8]
    public var sealed: [UInt8]

    public init(generation: UInt64, recipient: [UInt8], sealed: [UInt8]) {
        self.generation = generation; self.recipient = recipient; self.sealed = sealed
    }

    public func encodeFields(into w: inout BinaryWriter) {
        w.u64(generation)
        w.raw(recipient)
        w.bytes(sealed)
    }

    public static func decodeFields(from r: inout BinaryReader<ArraySlice<UInt8>>) throws -> Self {
        Self(generation: try r.u64("generation"), recipient: try r.key("recipient"), sealed: try r.bytes(max: HPKEBox.maxSealed, "sealed placement"))
    }

    public static func aad(call: String, recipient: [UInt8]) -> [UInt8] { Array("DeepRing spare placement v1".utf8) + Array(call.utf8) + recipient }

    /// What `sealed` holds once opened: the descriptor's JSON and the parameter file, length-prefixed.
    public static func plaintext(descriptor: [UInt8], file: [UInt8]) -> [UInt8] {
        var w = BinaryWriter(capacity: descriptor.count + file.count + 16)
        w.bytes(descriptor)
        w.bytes(file)
        return w.bytes
    }

    /// Splits an opened `sealed` into the descriptor's JSON and the parameter file (bounded; nothing after them).
    public static func contents(_ plain: [UInt8]) throws -> (descriptor: [UInt8], file: [UInt8]) {
        var r = BinaryReader(plain[...])
        let d = try r.bytes(max: BlockDescriptor.maxSize, "descriptor")
        let f = try r.bytes(max: LedgerEntry.maxPayload, "parameter file")
        try r.end()
        return (d, f)
    }
}

/// The owner's notice to an evicted block (entry kind `placement`, query id: the rotation call's id): its keys left
/// the member set at `generation`. An honest block that was named (Prop. 1 names one of two) stops serving; a
/// compromised one may ignore it, but no member validates its posts any more.
public struct EvictionNotice: LedgerPayload {
    public static let type = PayloadType.eviction
    public static let kinds: Set<EntryKind> = [.placement]
    public var generation: UInt64
    /// The evicted block's signing key.
    public var evicted: [UInt8]
    public var reason: String

    public init(generation: UInt64, evicted: [UInt8], reason: String) {
        self.generation = generation; self.evicted = evicted; self.reason = truncatedUTF8(reason, max: PayloadLimits.message)
    }

    public func encodeFields(into w: inout BinaryWriter) {
        w.u64(generation)
        w.raw(evicted)
        w.string(reason)
    }

    public static func decodeFields(from r: inout BinaryReader<ArraySlice<UInt8>>) throws -> Self {
        Self(generation: try r.u64("generation"), evicted: try r.key("evicted"), reason: try r.string(max: PayloadLimits.message, "reason"))
    }
}

/// `s` cut at a character boundary to at most `max` bytes of UTF-8.
public func truncatedUTF8(_ s: String, max: Int) -> String {
    if s.utf8.count <= max { return s }
    var out = ""
    var n = 0
    for c in s {
        let k = String(c).utf8.count
        if n + k > max { break }
        out.append(c); n += k
    }
    return out
}
