/// A dense float32 tensor: a shape and contiguous row-major storage (last dimension fastest).
/// Images are NHWC; dense activations are [batch, features].
public struct Tensor: Sendable, Equatable {
    public var shape: [Int]
    public var data: [Float]

    public init(shape: [Int], data: [Float]) {
        precondition(shape.reduce(1, *) == data.count, "tensor shape \(shape) does not match \(data.count) values")
        self.shape = shape
        self.data = data
    }

    public init(zeros shape: [Int]) {
        self.shape = shape
        self.data = [Float](repeating: 0, count: shape.reduce(1, *))
    }

    /// Allocates without initialising the values (they are set by the caller before use).
    @inline(__always)
    public init(uninitialized shape: [Int]) {
        let n = shape.reduce(1, *)
        self.shape = shape
        self.data = [Float](unsafeUninitializedCapacity: n) { _, count in count = n }
    }

    public var count: Int { data.count }
    /// The first dimension (the batch).
    public var batch: Int { shape.first ?? 1 }
    /// Number of values per batch item.
    public var itemSize: Int { shape.count <= 1 ? 1 : shape.dropFirst().reduce(1, *) }

    public func reshaped(_ newShape: [Int]) -> Tensor {
        Tensor(shape: newShape, data: data)
    }

    /// Rows `range` of the first dimension.
    public func slice(_ range: Range<Int>) -> Tensor {
        let s = itemSize
        var sh = shape
        sh[0] = range.count
        return Tensor(shape: sh, data: Array(data[(range.lowerBound * s)..<(range.upperBound * s)]))
    }

    /// Concatenates along the first dimension.
    public static func concatenate(_ parts: [Tensor]) -> Tensor {
        precondition(!parts.isEmpty)
        var sh = parts[0].shape
        sh[0] = parts.reduce(0) { $0 + $1.batch }
        var d = [Float]()
        d.reserveCapacity(sh.reduce(1, *))
        for p in parts { d.append(contentsOf: p.data) }
        return Tensor(shape: sh, data: d)
    }

    /// Index of the largest value in each row (ties: first).
    public func argmaxRows() -> [Int] {
        let cols = itemSize
        var out = [Int](repeating: 0, count: batch)
        data.withUnsafeBufferPointer { p in
            for r in 0..<batch {
                var best = 0
                var bv = p[r * cols]
                for c in 1..<max(cols, 1) where p[r * cols + c] > bv {
                    bv = p[r * cols + c]; best = c
                }
                out[r] = best
            }
        }
        return out
    }

    /// The raw little-endian bytes of the values (for hashing).
    public var bytes: [UInt8] {
        data.withUnsafeBytes { Array($0) }
    }
}
