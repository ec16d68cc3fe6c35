import DeepRingEngine
import Foundation

/// Reader for the CIFAR-10 binary format: records of 1 label byte + 3072 pixel bytes
/// (32×32 red plane, then green, then blue). Converted to NHWC float32 in [0, 1].
public enum CIFAR10 {
    public static let trainFiles = (1...5).map { "data_batch_\($0).bin" }
    public static let testFile = "test_batch.bin"
    public static let recordSize = 1 + 3072
    public static let classNames = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]

    public enum Error: Swift.Error, CustomStringConvertible, Equatable {
        case empty
        case partialRecord(bytes: Int)
        case badLabel(record: Int, label: UInt8)

        public var description: String {
            switch self {
            case .empty: return "the file holds no records"
            case .partialRecord(let b): return "size \(b) is not a whole number of \(recordSize)-byte records (truncated?)"
            case .badLabel(let r, let l): return "record \(r) has label \(l), CIFAR-10 labels are 0–9"
            }
        }
    }

    /// Parses one batch file's bytes.
    public static func parse(_ bytes: [UInt8]) throws -> (images: [Float], labels: [Int]) {
        guard !bytes.isEmpty else { throw Error.empty }
        guard bytes.count % recordSize == 0 else { throw Error.partialRecord(bytes: bytes.count) }
        let n = bytes.count / recordSize
        var images = [Float](repeating: 0, count: n * 3072)
        var labels = [Int](repeating: 0, count: n)
        let scale: Float = 1 / 255
        for r in 0..<n {
            let base = r * recordSize
            let label = bytes[base]
            guard label < 10 else { throw Error.badLabel(record: r, label: label) }
            labels[r] = Int(label)
            for c in 0..<3 {
                for p in 0..<1024 {
                    images[r * 3072 + p * 3 + c] = Float(bytes[base + 1 + c * 1024 + p]) * scale
                }
            }
        }
        return (images, labels)
    }

    public static func present(in dir: String) -> Bool {
        let fm = FileManager.default
        return fm.fileExists(atPath: (dir as NSString).appendingPathComponent(testFile))
            && fm.fileExists(atPath: (dir as NSString).appendingPathComponent(trainFiles[0]))
    }

    /// Loads whichever training batches exist (at least `data_batch_1.bin`) and `test_batch.bin`.
    public static func load(directory: String) throws -> DatasetSplits {
        func read(_ name: String) throws -> (images: [Float], labels: [Int])? {
            let p = (directory as NSString).appendingPathComponent(name)
            guard FileManager.default.fileExists(atPath: p) else { return nil }
            let d: [UInt8]
            do { d = try InputFile.read(p, limit: 64 * recordSize * 10_000) } catch let e as InputFile.Error {
                throw DatasetError.malformed(file: p, reason: e.description)
            }
            do { return try parse(d) } catch let e as Error {
                throw DatasetError.malformed(file: p, reason: e.description)
            }
        }
        var trainImages: [Float] = [], trainLabels: [Int] = []
        for f in trainFiles {
            if let b = try read(f) { trainImages += b.images; trainLabels += b.labels }
        }
        guard let t = try read(testFile) else {
            throw DatasetError.malformed(file: directory, reason: "\(testFile) is missing")
        }
        return DatasetSplits(
            train: Dataset(name: "cifar10", imageShape: [32, 32, 3], images: trainImages, labels: trainLabels, classes: 10),
            test: Dataset(name: "cifar10", imageShape: [32, 32, 3], images: t.images, labels: t.labels, classes: 10),
            source: directory)
    }

    /// Encodes NHWC images in [0, 1] and labels as CIFAR-10 binary records (for tests and fixtures).
    public static func encode(images: [Float], labels: [Int]) -> [UInt8] {
        var out = [UInt8]()
        out.reserveCapacity(labels.count * recordSize)
        for (r, l) in labels.enumerated() {
            out.append(UInt8(l))
            for c in 0..<3 {
                for p in 0..<1024 {
                    out.append(UInt8((images[r * 3072 + p * 3 + c] * 255).rounded().clamped(0, 255)))
                }
            }
        }
        return out
    }
}

extension Float {
    @inline(__always) func clamped(_ lo: Float, _ hi: Float) -> Float { Swift.min(Swift.max(self, lo), hi) }
}
