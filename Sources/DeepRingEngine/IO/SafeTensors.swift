import Foundation

/// Reader and writer for the safetensors format: an 8-byte little-endian header length N, N bytes of JSON
/// header (`{name: {dtype, shape, data_offsets: [begin, end]}, "__metadata__": {string: string}}`), then the
/// data section. Input is hostile: the header size is capped, offsets must lie in bounds and tile the data
/// section without overlap, every tensor's byte length must equal shape × dtype size, names are unique.
public struct SafeTensors: Sendable {
    public enum DType: String, Sendable, CaseIterable {
        case F64, F32, F16, BF16, I64, I32, I16, I8, U8, BOOL, U16, U32, U64
        public var size: Int {
            switch self {
            case .F64, .I64, .U64: return 8
            case .F32, .I32, .U32: return 4
            case .F16, .BF16, .I16, .U16: return 2
            case .I8, .U8, .BOOL: return 1
            }
        }
    }

    public struct Entry: Sendable, Equatable {
        public var name: String
        public var dtype: DType
        public var shape: [Int]
        /// Byte range inside the data section.
        public var range: Range<Int>
    }

    public enum Error: Swift.Error, CustomStringConvertible, Equatable {
        case tooShort(Int)
        case headerTooLarge(UInt64)
        case headerTruncated(declared: UInt64, available: Int)
        case badHeader(String)
        case badEntry(String, String)
        case overlap(String, String)
        case gap(at: Int)
        case missingTensor(String)

        public var description: String {
            switch self {
            case .tooShort(let n): return "not a safetensors file: \(n) bytes is shorter than the 8-byte header length"
            case .headerTooLarge(let n): return "header length \(n) exceeds the \(SafeTensors.maxHeaderSize)-byte limit"
            case .headerTruncated(let d, let a): return "header declares \(d) bytes but only \(a) follow (truncated file?)"
            case .badHeader(let m): return "invalid header: \(m)"
            case .badEntry(let n, let m): return "tensor \"\(n)\": \(m)"
            case .overlap(let a, let b): return "tensors \"\(a)\" and \"\(b)\" overlap"
            case .gap(let at): return "the data section has bytes not covered by any tensor at offset \(at)"
            case .missingTensor(let n): return "no tensor named \"\(n)\""
            }
        }
    }

    public static let maxHeaderSize = 100 << 20

    public var metadata: [String: String]
    /// Entries in data order.
    public var entries: [Entry]
    public var data: [UInt8]

    public func entry(_ name: String) -> Entry? { entries.first { $0.name == name } }

    /// The values of an F32 tensor.
    public func floats(_ name: String) throws -> [Float] {
        guard let e = entry(name) else { throw Error.missingTensor(name) }
        guard e.dtype == .F32 else { throw Error.badEntry(name, "dtype \(e.dtype.rawValue), expected F32") }
        return data[e.range].withUnsafeBytes { raw in
            (0..<(e.range.count / 4)).map { Float(bitPattern: UInt32(littleEndian: raw.loadUnaligned(fromByteOffset: $0 * 4, as: UInt32.self))) }
        }
    }

    // MARK: parse

    public static func parse(_ bytes: [UInt8]) throws -> SafeTensors {
        guard bytes.count >= 8 else { throw Error.tooShort(bytes.count) }
        var n: UInt64 = 0
        for k in 0..<8 { n |= UInt64(bytes[k]) << (8 * UInt64(k)) }
        guard n <= UInt64(maxHeaderSize) else { throw Error.headerTooLarge(n) }
        guard Int(n) <= bytes.count - 8 else { throw Error.headerTruncated(declared: n, available: bytes.count - 8) }
        let headerEnd = 8 + Int(n)
        let json: JSONValue
        do { json = try StrictJSONParser.parse(Array(bytes[8..<headerEnd])) } catch let e as JSONParseError {
            throw Error.badHeader(e.description)
        }
        guard case .object(let top) = json else { throw Error.badHeader("the header is not a JSON object") }
        let dataLen = bytes.count - headerEnd
        var metadata: [String: String] = [:]
        var entries: [Entry] = []
        for (name, v) in top {
            if name == "__metadata__" {
                guard case .object(let kv) = v else { throw Error.badHeader("__metadata__ must be an object of strings") }
                for (k, mv) in kv {
                    guard case .string(let s) = mv else { throw Error.badHeader("__metadata__[\"\(k)\"] is not a string") }
                    metadata[k] = s
                }
                continue
            }
            guard case .object = v else { throw Error.badEntry(name, "not an object") }
            guard case .string(let dt)? = v["dtype"] else { throw Error.badEntry(name, "missing dtype") }
            guard let dtype = DType(rawValue: dt) else { throw Error.badEntry(name, "unknown dtype \(dt)") }
            guard case .array(let sh)? = v["shape"] else { throw Error.badEntry(name, "missing shape") }
            guard sh.count <= 8 else { throw Error.badEntry(name, "\(sh.count) dimensions") }
            var shape: [Int] = []
            var elems = 1
            for d in sh {
                guard case .int(let x) = d, x >= 0 else { throw Error.badEntry(name, "shape entries must be non-negative integers") }
                let (p, o) = elems.multipliedReportingOverflow(by: x)
                guard !o else { throw Error.badEntry(name, "shape \(sh) overflows") }
                shape.append(x); elems = p
            }
            guard case .array(let off)? = v["data_offsets"], off.count == 2,
                  case .int(let b0) = off[0], case .int(let b1) = off[1] else {
                throw Error.badEntry(name, "data_offsets must be [begin, end]")
            }
            guard b0 >= 0, b1 >= b0, b1 <= dataLen else {
                throw Error.badEntry(name, "data_offsets [\(b0), \(b1)] outside the \(dataLen)-byte data section")
            }
            let (bytesNeeded, o) = elems.multipliedReportingOverflow(by: dtype.size)
            guard !o, bytesNeeded == b1 - b0 else {
                throw Error.badEntry(name, "shape \(shape) × \(dtype.size) bytes ≠ \(b1 - b0) bytes of data")
            }
            for (k, _) in v.objectKeys where !["dtype", "shape", "data_offsets"].contains(k) {
                throw Error.badEntry(name, "unexpected field \"\(k)\"")
            }
            entries.append(Entry(name: name, dtype: dtype, shape: shape, range: b0..<b1))
        }
        entries.sort { ($0.range.lowerBound, $0.range.upperBound) < ($1.range.lowerBound, $1.range.upperBound) }
        var end = 0
        for (k, e) in entries.enumerated() {
            if e.range.lowerBound < end { throw Error.overlap(entries[k - 1].name, e.name) }
            if e.range.lowerBound > end { throw Error.gap(at: end) }
            end = e.range.upperBound
        }
        if end != dataLen { throw Error.gap(at: end) }
        return SafeTensors(metadata: metadata, entries: entries, data: Array(bytes[headerEnd...]))
    }

    // MARK: write

    /// Serialises F32 tensors, in the given order, with optional string metadata.
    public static func serialize(_ tensors: [(name: String, shape: [Int], values: ArraySlice<Float>)],
                                 metadata: [String: String] = [:]) -> [UInt8] {
        var fields: [String] = []
        if !metadata.isEmpty {
            let kv = metadata.keys.sorted().map { "\(StrictJSONParser.quote($0)):\(StrictJSONParser.quote(metadata[$0]!))" }
            fields.append("\"__metadata__\":{\(kv.joined(separator: ","))}")
        }
        var offset = 0
        for t in tensors {
            precondition(t.shape.reduce(1, *) == t.values.count, "shape of \(t.name) does not match its values")
            let end = offset + t.values.count * 4
            fields.append("\(StrictJSONParser.quote(t.name)):{\"dtype\":\"F32\",\"shape\":[\(t.shape.map(String.init).joined(separator: ","))],\"data_offsets\":[\(offset),\(end)]}")
            offset = end
        }
        var header = Array("{\(fields.joined(separator: ","))}".utf8)
        while (8 + header.count) % 8 != 0 { header.append(0x20) }
        var out = [UInt8]()
        out.reserveCapacity(8 + header.count + offset)
        let n = UInt64(header.count)
        for k in 0..<8 { out.append(UInt8(truncatingIfNeeded: n >> (8 * UInt64(k)))) }
        out += header
        for t in tensors {
            t.values.withUnsafeBytes { raw in
                // Float32 is stored little-endian; this engine only runs on little-endian hosts.
                out.append(contentsOf: raw)
            }
        }
        return out
    }
}

extension JSONValue {
    var objectKeys: [(String, JSONValue)] {
        if case .object(let kv) = self { return kv }
        return []
    }
}

/// Writes a file atomically: the bytes go to a temporary file in the same folder, which is then renamed
/// over the destination, so an interrupted write (Ctrl-C, crash) leaves the previous file intact.
public func writeFileAtomically(_ bytes: [UInt8], to path: String, permissions: Int? = nil) throws {
    let url = URL(fileURLWithPath: path)
    let dir = url.deletingLastPathComponent().path
    try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    let tmp = (dir as NSString).appendingPathComponent(".\(url.lastPathComponent).tmp-\(getpid())")
    // A new file, never one found there: a leftover (or a link planted by someone who may write in the folder) is
    // removed — unlink removes a link itself, never its target — and the file created exclusively, without following
    // a link; a link planted again in between makes the write fail instead of going elsewhere.
    unlink(tmp)
    let fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, mode_t(permissions ?? 0o644))
    guard fd >= 0 else { throw CocoaError(.fileWriteNoPermission, userInfo: [NSFilePathErrorKey: tmp]) }
    var ok = writeAll(fd, bytes)
    if fsync(fd) != 0 { ok = false }
    close(fd)
    guard ok, rename(tmp, path) == 0 else {
        unlink(tmp)
        throw CocoaError(.fileWriteUnknown, userInfo: [NSFilePathErrorKey: path])
    }
}

/// Writes all of `bytes` to `fd` (retrying short writes); false on an error.
public func writeAll(_ fd: Int32, _ bytes: [UInt8]) -> Bool {
    bytes.withUnsafeBytes { raw -> Bool in
        var off = 0
        while off < raw.count {
            let w = write(fd, raw.baseAddress! + off, raw.count - off)
            if w <= 0 { return false }
            off += w
        }
        return true
    }
}
