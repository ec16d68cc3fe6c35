import DeepRingEngine
import Foundation

/// A labelled image set held in memory: `count` images of `imageShape` ([H, W, C]) as float32 in [0, 1].
public struct Dataset: Sendable {
    public var name: String
    public var imageShape: [Int]
    public var images: [Float]
    public var labels: [Int]
    public var classes: Int

    public init(name: String, imageShape: [Int], images: [Float], labels: [Int], classes: Int) {
        precondition(images.count == labels.count * imageShape.reduce(1, *))
        self.name = name; self.imageShape = imageShape; self.images = images; self.labels = labels; self.classes = classes
    }

    public var count: Int { labels.count }
    public var imageSize: Int { imageShape.reduce(1, *) }

    /// Images `indices` as a batch tensor [n, H, W, C], and their labels.
    public func batch(_ indices: ArraySlice<Int>) -> (Tensor, [Int]) {
        let s = imageSize
        var t = Tensor(uninitialized: [indices.count] + imageShape)
        t.data.withUnsafeMutableBufferPointer { dst in
            images.withUnsafeBufferPointer { src in
                for (k, i) in indices.enumerated() {
                    (dst.baseAddress! + k * s).update(from: src.baseAddress! + i * s, count: s)
                }
            }
        }
        return (t, indices.map { labels[$0] })
    }

    public func batch(_ range: Range<Int>) -> (Tensor, [Int]) {
        let s = imageSize
        return (Tensor(shape: [range.count] + imageShape, data: Array(images[(range.lowerBound * s)..<(range.upperBound * s)])),
                Array(labels[range]))
    }

    /// All images as one tensor.
    public var tensor: Tensor { Tensor(shape: [count] + imageShape, data: images) }

    /// Centres every image on a `size`×`size` canvas of zeros (MNIST 28×28 → 32×32 for VGG-19).
    public func padded(to size: Int) -> Dataset {
        let h = imageShape[0], w = imageShape[1], c = imageShape[2]
        guard size > h || size > w else { return self }
        let oy = (size - h) / 2, ox = (size - w) / 2
        var out = [Float](repeating: 0, count: count * size * size * c)
        for n in 0..<count {
            for y in 0..<h {
                let src = (n * h + y) * w * c
                let dst = ((n * size + y + oy) * size + ox) * c
                out.replaceSubrange(dst..<(dst + w * c), with: images[src..<(src + w * c)])
            }
        }
        return Dataset(name: name, imageShape: [size, size, c], images: out, labels: labels, classes: classes)
    }

    /// The first `n` items.
    public func prefix(_ n: Int) -> Dataset {
        let k = min(n, count)
        return Dataset(name: name, imageShape: imageShape, images: Array(images[0..<(k * imageSize)]),
                       labels: Array(labels[0..<k]), classes: classes)
    }

    /// Number of items of each class.
    public var classCounts: [Int] {
        var c = [Int](repeating: 0, count: classes)
        for l in labels { c[l] += 1 }
        return c
    }
}

/// A training split and a test split.
public struct DatasetSplits: Sendable {
    public var train: Dataset
    public var test: Dataset
    /// Where the files came from (or "generated").
    public var source: String
    public init(train: Dataset, test: Dataset, source: String) { self.train = train; self.test = test; self.source = source }
}

public enum DatasetError: Error, CustomStringConvertible {
    case notFound(name: String, searched: [String], expected: [String])
    case malformed(file: String, reason: String)
    case unknown(String)

    public var description: String {
        switch self {
        case .notFound(let name, let searched, let expected):
            return """
            data set '\(name)' not found. Looked in:
            \(searched.map { "  - \($0)" }.joined(separator: "\n"))
            Put these files in one of those folders (or pass --data DIR, or set DEEPRING_DATA):
            \(expected.map { "  - \($0)" }.joined(separator: "\n"))
            """
        case .malformed(let f, let r): return "\(f): \(r)"
        case .unknown(let n): return "unknown data set '\(n)' (choose mnist, idx, cifar10 or synthetic)"
        }
    }
}

/// Finds and loads the named data sets.
public enum DatasetLoader {
    public static let names = ["mnist", "idx", "cifar10", "synthetic"]

    /// Candidate folders for a data set, in order: `--data`, `$DEEPRING_DATA` (itself, then `/<name>`),
    /// `./data/<name>`, `../shared/data/<name>`.
    public static func candidates(name: String, explicit: String?) -> [String] {
        if let e = explicit { return [e] }
        var c: [String] = []
        if let env = ProcessInfo.processInfo.environment["DEEPRING_DATA"], !env.isEmpty {
            c += [env, (env as NSString).appendingPathComponent(name)]
        }
        c += ["./data/\(name)", "../shared/data/\(name)"]
        return c
    }

    static func expectedFiles(_ name: String) -> [String] {
        switch name {
        case "cifar10": return CIFAR10.trainFiles + [CIFAR10.testFile]
        default: return IDX.mnistFiles.map { $0 + "[.gz]" }
        }
    }

    /// Loads a data set by name. `synthetic` is generated (deterministic by `seed`); the others are read from disk.
    public static func load(name: String, directory: String? = nil, seed: UInt64 = 1,
                            syntheticCounts: (train: Int, test: Int) = (10_000, 2_000)) throws -> DatasetSplits {
        switch name {
        case "synthetic":
            let all = SyntheticDigits.generate(count: syntheticCounts.train + syntheticCounts.test, seed: seed)
            let train = Dataset(name: "synthetic", imageShape: all.imageShape,
                                images: Array(all.images[0..<(syntheticCounts.train * all.imageSize)]),
                                labels: Array(all.labels[0..<syntheticCounts.train]), classes: 10)
            let test = Dataset(name: "synthetic", imageShape: all.imageShape,
                               images: Array(all.images[(syntheticCounts.train * all.imageSize)...]),
                               labels: Array(all.labels[syntheticCounts.train...]), classes: 10)
            return DatasetSplits(train: train, test: test, source: "generated (seed \(seed))")
        case "mnist", "idx", "cifar10":
            let dirs = candidates(name: name == "idx" ? "mnist" : name, explicit: directory)
            let fm = FileManager.default
            for d in dirs {
                var isDir: ObjCBool = false
                guard fm.fileExists(atPath: d, isDirectory: &isDir), isDir.boolValue else { continue }
                if name == "cifar10" {
                    if CIFAR10.present(in: d) { return try CIFAR10.load(directory: d) }
                } else if IDX.mnistPresent(in: d) {
                    return try IDX.loadMNIST(directory: d, name: name)
                }
            }
            throw DatasetError.notFound(name: name, searched: dirs.map { ($0 as NSString).standardizingPath },
                                        expected: expectedFiles(name))
        default:
            throw DatasetError.unknown(name)
        }
    }
}
