import Foundation

public enum ModelFileError: Error, CustomStringConvertible {
    case unreadable(String)
    case format(String, String)

    public var description: String {
        switch self {
        case .unreadable(let p): return "\(p): cannot be read (missing file or no permission)"
        case .format(let p, let m): return "\(p): \(m)"
        }
    }
}

/// Model files are safetensors: one F32 tensor per parameter view, in buffer order (so the data section is
/// exactly the contiguous parameter buffer), and the architecture as JSON in `__metadata__["deepring.architecture"]`.
public enum ModelFile {
    public static let architectureKey = "deepring.architecture"
    public static let maxFileSize = 4 << 30

    public static func serialize(_ model: Model, extraMetadata: [String: String] = [:]) -> [UInt8] {
        let enc = JSONEncoder()
        enc.outputFormatting = [.sortedKeys]
        let arch = String(decoding: try! enc.encode(model.architecture), as: UTF8.self)
        var meta = extraMetadata
        meta[architectureKey] = arch
        meta["format"] = "pt"
        let p = model.parameters
        return SafeTensors.serialize(p.views.map { ($0.name, $0.shape, p.values[$0.range]) }, metadata: meta)
    }

    public static func save(_ model: Model, to path: String, extraMetadata: [String: String] = [:]) throws {
        try writeFileAtomically(serialize(model, extraMetadata: extraMetadata), to: path)
    }

    /// Builds a model from safetensors bytes, checking every tensor's name, dtype and shape.
    public static func load(bytes: [UInt8], path: String = "<memory>") throws -> (Model, [String: String]) {
        let st: SafeTensors
        do { st = try SafeTensors.parse(bytes) } catch let e as SafeTensors.Error {
            throw ModelFileError.format(path, e.description)
        }
        guard let archJSON = st.metadata[architectureKey] else {
            throw ModelFileError.format(path, "not a DeepRing model: __metadata__ has no \"\(architectureKey)\"")
        }
        let arch: Architecture
        do { arch = try JSONDecoder().decode(Architecture.self, from: Data(archJSON.utf8)) } catch {
            throw ModelFileError.format(path, "the stored architecture cannot be decoded (\(error))")
        }
        let model: Model
        do { model = try Model(arch, initialise: false, parameterLimit: st.data.count / 4) } catch let e as ModelError { throw ModelFileError.format(path, e.description) }
        let store = model.parameters
        var values = store.values
        for v in store.views {
            guard let e = st.entry(v.name) else { throw ModelFileError.format(path, "missing tensor \"\(v.name)\"") }
            guard e.dtype == .F32 else { throw ModelFileError.format(path, "tensor \"\(v.name)\" is \(e.dtype.rawValue), expected F32") }
            guard e.shape == v.shape else {
                throw ModelFileError.format(path, "tensor \"\(v.name)\" has shape \(e.shape), the architecture needs \(v.shape)")
            }
            st.data[e.range].withUnsafeBytes { raw in
                values.withUnsafeMutableBufferPointer { dst in
                    for k in 0..<v.count {
                        dst[v.offset + k] = Float(bitPattern: UInt32(littleEndian: raw.loadUnaligned(fromByteOffset: k * 4, as: UInt32.self)))
                    }
                }
            }
        }
        if st.entries.count != store.views.count {
            let known = Set(store.views.map(\.name))
            let extra = st.entries.map(\.name).filter { !known.contains($0) }
            throw ModelFileError.format(path, "unexpected tensors: \(extra.prefix(5).joined(separator: ", "))")
        }
        store.setAll(values)
        return (model, st.metadata)
    }

    public static func load(path: String) throws -> (Model, [String: String]) {
        let bytes: [UInt8]
        do { bytes = try InputFile.read(path, limit: maxFileSize) } catch let e as InputFile.Error {
            switch e {
            case .missing, .unreadable: throw ModelFileError.unreadable(path)
            default: throw ModelFileError.format(path, e.description)
            }
        }
        return try load(bytes: bytes, path: path)
    }
}
