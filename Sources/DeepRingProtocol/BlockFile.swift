import DeepRingEngine
import Foundation

/// Describes a ring layer inside a block's file (no layer index: blocks do not know their position).
public struct RingLayerHeader: Codable, Equatable {
    var specs: [LayerSpec]
    var inputShape: [Int]
    var tensorNames: [String]
    var shapes: [[Int]]
}

/// A block's `params.safetensors`: its own layer as `own.*` tensors and its copy of the next layer as `next.*`,
/// with each layer's architecture slice in the metadata. Read as hostile input.
public enum BlockFile {
    static let ownKey = "deepring.own", nextKey = "deepring.next"

    static func header(_ l: RingLayer) -> RingLayerHeader {
        RingLayerHeader(specs: l.specs, inputShape: l.inputShape, tensorNames: l.tensorNames, shapes: l.tensors.map(\.shape))
    }

    public static func serialize(layers: [(prefix: String, layer: RingLayer)], metadata extra: [String: String] = [:]) -> [UInt8] {
        let enc = JSONEncoder()
        enc.outputFormatting = [.sortedKeys]
        var meta = extra
        var tensors: [(name: String, shape: [Int], values: ArraySlice<Float>)] = []
        for (prefix, l) in layers {
            meta["deepring.\(prefix)"] = String(decoding: try! enc.encode(header(l)), as: UTF8.self)
            for (t, n) in zip(l.tensors, l.tensorNames) { tensors.append(("\(prefix).\(n)", t.shape, t.data[...])) }
        }
        return SafeTensors.serialize(tensors, metadata: meta)
    }

    public static func parse(_ bytes: [UInt8], prefixes: [String], path: String) throws -> [RingLayer] {
        let st: SafeTensors
        do { st = try SafeTensors.parse(bytes) } catch let e as SafeTensors.Error { throw RingError.malformedFile(path, e.description) }
        var out: [RingLayer] = []
        for prefix in prefixes {
            guard let json = st.metadata["deepring.\(prefix)"], (try? StrictJSONParser.parse(Array(json.utf8))) != nil,
                  let h = try? JSONDecoder().decode(RingLayerHeader.self, from: Data(json.utf8)),
                  h.tensorNames.count == h.shapes.count, h.tensorNames.count <= 64 else {
                throw RingError.malformedFile(path, "missing or invalid \(prefix) layer description")
            }
            var tensors: [Tensor] = []
            for (n, shape) in zip(h.tensorNames, h.shapes) {
                guard let e = st.entry("\(prefix).\(n)"), e.shape == shape, e.dtype == .F32 else {
                    throw RingError.malformedFile(path, "tensor \(prefix).\(n) missing or of the wrong shape")
                }
                tensors.append(Tensor(shape: shape, data: try st.floats("\(prefix).\(n)")))
            }
            out.append(RingLayer(specs: h.specs, inputShape: h.inputShape, tensors: tensors, tensorNames: h.tensorNames))
        }
        guard st.entries.count == out.reduce(0, { $0 + $1.tensors.count }) else {
            throw RingError.malformedFile(path, "unexpected extra tensors")
        }
        return out
    }
}

/// Errors about a ring's files and folder.
public enum RingError: Error, CustomStringConvertible {
    case malformedFile(String, String)
    case notARing(String)
    case checkpointCorrupted(layer: Int?)
    case restoreFailed(String)
    case busy(String)
    /// A file the ring trusts whose owner signature or digest does not verify, or that disagrees with the owner.
    case notAuthentic(String)
    /// A destructive request refused (a file or a non-ring folder in the way).
    case refused(String)

    public var description: String {
        switch self {
        case .malformedFile(let p, let m): return "\(p): \(m)"
        case .notARing(let m): return "not a DeepRing directory: \(m)"
        case .checkpointCorrupted(let l?):
            return "the owner's checkpoint is corrupted (layer \(l) does not match its recorded hash); refusing to restore from it"
        case .checkpointCorrupted(nil):
            return "the owner's checkpoint cannot be read or parsed (truncated or replaced?); refusing to restore from it"
        case .restoreFailed(let m): return "restore failed: \(m)"
        case .busy(let m): return m
        case .notAuthentic(let m): return "not authentic: \(m)"
        case .refused(let m): return m
        }
    }
}
