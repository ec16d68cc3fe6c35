import DeepRingEngine
import CZlib
import Foundation

public enum GzipError: Error, CustomStringConvertible, Equatable {
    case corrupt(String)
    case truncated
    case tooLarge(limit: Int)

    public var description: String {
        switch self {
        case .corrupt(let m): return "corrupt gzip data (\(m))"
        case .truncated: return "the gzip stream is truncated"
        case .tooLarge(let l): return "the decompressed data exceeds the \(l)-byte limit"
        }
    }
}

public enum Gzip {
    /// True when `data` starts with the gzip magic bytes.
    public static func isGzip(_ data: [UInt8]) -> Bool { data.count >= 2 && data[0] == 0x1f && data[1] == 0x8b }

    /// Decompresses a gzip (or zlib) stream, refusing to produce more than `limit` bytes.
    public static func decompress(_ input: [UInt8], limit: Int = 1 << 30) throws -> [UInt8] {
        var stream = z_stream()
        var status = inflateInit2_(&stream, 15 + 32, ZLIB_VERSION, Int32(MemoryLayout<z_stream>.size))
        guard status == Z_OK else { throw GzipError.corrupt("inflateInit failed: \(status)") }
        defer { inflateEnd(&stream) }
        var out = [UInt8]()
        out.reserveCapacity(min(limit, max(input.count * 4, 1 << 16)))
        let chunk = 1 << 18
        var buffer = [UInt8](repeating: 0, count: chunk)
        try input.withUnsafeBufferPointer { inp in
            stream.next_in = UnsafeMutablePointer(mutating: inp.baseAddress)
            stream.avail_in = uInt(inp.count)
            repeat {
                let produced: Int = buffer.withUnsafeMutableBufferPointer { bp in
                    stream.next_out = bp.baseAddress
                    stream.avail_out = uInt(chunk)
                    status = inflate(&stream, Z_NO_FLUSH)
                    return chunk - Int(stream.avail_out)
                }
                switch status {
                case Z_OK, Z_STREAM_END: break
                case Z_BUF_ERROR where stream.avail_in == 0: throw GzipError.truncated
                case Z_DATA_ERROR: throw GzipError.corrupt(stream.msg.map { String(cString: $0) } ?? "data error")
                case Z_MEM_ERROR: throw GzipError.corrupt("out of memory")
                default: throw GzipError.corrupt("inflate status \(status)")
                }
                if out.count + produced > limit { throw GzipError.tooLarge(limit: limit) }
                out.append(contentsOf: buffer[0..<produced])
                if status != Z_STREAM_END && stream.avail_in == 0 && produced < chunk { throw GzipError.truncated }
            } while status != Z_STREAM_END
        }
        return out
    }

    /// Compresses with gzip framing (used by tests to build fixtures).
    public static func compress(_ input: [UInt8], level: Int32 = 6) throws -> [UInt8] {
        var stream = z_stream()
        guard deflateInit2_(&stream, level, Z_DEFLATED, 15 + 16, 8, Z_DEFAULT_STRATEGY, ZLIB_VERSION,
                            Int32(MemoryLayout<z_stream>.size)) == Z_OK else { throw GzipError.corrupt("deflateInit failed") }
        defer { deflateEnd(&stream) }
        var out = [UInt8](repeating: 0, count: Int(deflateBound(&stream, uLong(input.count))) + 64)
        let n: Int = input.withUnsafeBufferPointer { inp in
            out.withUnsafeMutableBufferPointer { op in
                stream.next_in = UnsafeMutablePointer(mutating: inp.baseAddress)
                stream.avail_in = uInt(inp.count)
                stream.next_out = op.baseAddress
                stream.avail_out = uInt(op.count)
                _ = deflate(&stream, Z_FINISH)
                return op.count - Int(stream.avail_out)
            }
        }
        return Array(out[0..<n])
    }
}
