import DeepRingEngine
import Foundation

/// Reader for the IDX format of MNIST (and any MNIST-format data set), raw or gzip-compressed.
/// Input is treated as hostile: every size is checked before anything is allocated.
public enum IDX {
    public static let mnistFiles = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                                    "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]
    /// Largest data section accepted (bytes).
    public static let maxBytes = 1 << 30

    public enum Error: Swift.Error, CustomStringConvertible, Equatable {
        case truncated(expected: Int, got: Int)
        case badMagic(UInt32)
        case unsupportedType(UInt8)
        case badDimensions([UInt64])
        case tooLarge(Int)
        case trailingBytes(Int)

        public var description: String {
            switch self {
            case .truncated(let e, let g): return "truncated IDX file: needs \(e) bytes, has \(g)"
            case .badMagic(let m): return String(format: "not an IDX file (magic 0x%08x)", m)
            case .unsupportedType(let t): return String(format: "unsupported IDX element type 0x%02x (only unsigned bytes, 0x08)", t)
            case .badDimensions(let d): return "invalid IDX dimensions \(d)"
            case .tooLarge(let n): return "IDX data too large (\(n) bytes)"
            case .trailingBytes(let n): return "IDX file has \(n) unexpected trailing bytes"
            }
        }
    }

    /// A parsed IDX array of unsigned bytes.
    public struct Array: Equatable {
        public var dimensions: [Int]
        public var values: [UInt8]
    }

    /// Parses IDX bytes (decompressing first when they are gzip).
    public static func parse(_ raw: [UInt8], maxBytes: Int = IDX.maxBytes) throws -> Array {
        let bytes = Gzip.isGzip(raw) ? try Gzip.decompress(raw, limit: maxBytes + 64) : raw
        let (dims, header, size) = try header(bytes, fileSize: bytes.count, maxBytes: maxBytes)
        guard bytes.count >= size else { throw Error.truncated(expected: size, got: bytes.count) }
        guard bytes.count == size else { throw Error.trailingBytes(bytes.count - size) }
        return Array(dimensions: dims, values: Swift.Array(bytes[header...]))
    }

    /// Reads and parses a file; `path` may name the raw file or its `.gz`. The file is opened as hostile input
    /// (`InputFile`: no FIFO or device, size bounded before reading): a raw file's header is read first and the
    /// size it declares must be the file's size, so a huge or sparse file is refused before its body is read; a
    /// gzip file may be at most `maxBytes` compressed and decompresses to at most `maxBytes`.
    public static func read(path: String, maxBytes: Int = IDX.maxBytes) throws -> Array {
        do {
            let f = try InputFile.open(path, limit: maxBytes + 64)
            let head = try f.read(count: min(f.size, 20))
            if !Gzip.isGzip(head) {
                let declared = try header(head, fileSize: f.size, maxBytes: maxBytes).size
                guard declared == f.size else {
                    throw declared > f.size ? Error.truncated(expected: declared, got: f.size) : Error.trailingBytes(f.size - declared)
                }
            }
            let bytes = try f.readAll()
            return try parse(bytes, maxBytes: maxBytes)
        } catch let e as Error {
            throw DatasetError.malformed(file: path, reason: e.description)
        } catch let e as GzipError {
            throw DatasetError.malformed(file: path, reason: e.description)
        } catch let e as InputFile.Error {
            throw DatasetError.malformed(file: path, reason: e.description)
        }
    }

    /// A raw IDX header's dimensions, its length, and the total size (header and data) it declares; `fileSize` is
    /// what truncation errors report.
    static func header(_ head: [UInt8], fileSize: Int, maxBytes: Int) throws -> (dims: [Int], header: Int, size: Int) {
        guard head.count >= 4 else { throw Error.truncated(expected: 4, got: fileSize) }
        let magic = UInt32(head[0]) << 24 | UInt32(head[1]) << 16 | UInt32(head[2]) << 8 | UInt32(head[3])
        guard head[0] == 0, head[1] == 0 else { throw Error.badMagic(magic) }
        guard head[2] == 0x08 else { throw Error.unsupportedType(head[2]) }
        let nd = Int(head[3])
        guard nd >= 1 && nd <= 4 else { throw Error.badDimensions([UInt64(nd)]) }
        let header = 4 + 4 * nd
        guard head.count >= header else { throw Error.truncated(expected: header, got: fileSize) }
        var total = 1
        var dims: [Int] = []
        for i in 0..<nd {
            let o = 4 + 4 * i
            dims.append(Int(head[o]) << 24 | Int(head[o + 1]) << 16 | Int(head[o + 2]) << 8 | Int(head[o + 3]))
        }
        for d in dims {
            guard d > 0 else { throw Error.badDimensions(dims.map { UInt64($0) }) }
            let (p, o) = total.multipliedReportingOverflow(by: d)
            guard !o, p <= maxBytes else { throw Error.tooLarge(o ? Int.max : p) }
            total = p
        }
        return (dims, header, header + total)
    }

    /// Resolves `base` or `base.gz` (also the `base` spelled with a dot, `train-images.idx3-ubyte`).
    static func locate(_ base: String, in dir: String) -> String? {
        let alt = base.replacingOccurrences(of: "-idx", with: ".idx")
        for name in [base + ".gz", base, alt + ".gz", alt] {
            let p = (dir as NSString).appendingPathComponent(name)
            if FileManager.default.fileExists(atPath: p) { return p }
        }
        return nil
    }

    public static func mnistPresent(in dir: String) -> Bool { mnistFiles.allSatisfy { locate($0, in: dir) != nil } }

    /// Images as [N, rows, cols, 1] in [0, 1].
    public static func images(_ a: Array, file: String) throws -> (shape: [Int], values: [Float], count: Int) {
        guard a.dimensions.count == 3 || a.dimensions.count == 4 else {
            throw DatasetError.malformed(file: file, reason: "image files need 3 dimensions (count, rows, cols), got \(a.dimensions)")
        }
        let shape = a.dimensions.count == 3 ? [a.dimensions[1], a.dimensions[2], 1] : Swift.Array(a.dimensions[1...])
        let scale: Float = 1 / 255
        return (shape, a.values.map { Float($0) * scale }, a.dimensions[0])
    }

    public static func labels(_ a: Array, file: String) throws -> [Int] {
        guard a.dimensions.count == 1 else {
            throw DatasetError.malformed(file: file, reason: "label files need 1 dimension, got \(a.dimensions)")
        }
        return a.values.map { Int($0) }
    }

    /// Loads the four MNIST-format files of a folder.
    public static func loadMNIST(directory: String, name: String = "mnist") throws -> DatasetSplits {
        func split(_ img: String, _ lab: String) throws -> Dataset {
            let ip = locate(img, in: directory)!, lp = locate(lab, in: directory)!
            let i = try images(try read(path: ip), file: ip)
            let l = try labels(try read(path: lp), file: lp)
            guard l.count == i.count else {
                throw DatasetError.malformed(file: lp, reason: "\(l.count) labels for \(i.count) images in \(ip)")
            }
            return Dataset(name: name, imageShape: i.shape, images: i.values, labels: l, classes: 0)
        }
        var train = try split(mnistFiles[0], mnistFiles[1])
        var test = try split(mnistFiles[2], mnistFiles[3])
        guard train.imageShape == test.imageShape else {
            throw DatasetError.malformed(file: directory, reason: "train images are \(train.imageShape), test images \(test.imageShape)")
        }
        let classes = max(train.labels.max() ?? 0, test.labels.max() ?? 0) + 1
        guard classes >= 2 else { throw DatasetError.malformed(file: directory, reason: "fewer than two classes") }
        train.classes = classes; test.classes = classes
        return DatasetSplits(train: train, test: test, source: directory)
    }
}
