/// All parameters of a model in one contiguous float32 buffer (llm.c style), with named views.
/// A layer's bytes are one slice of the buffer: hash it, copy it, restore it.
public final class ParameterStore: @unchecked Sendable {
    /// One named tensor inside the buffer.
    public struct View: Sendable, Equatable {
        public var name: String
        public var offset: Int
        public var shape: [Int]
        /// Updated by the optimizer (false for running statistics such as BatchNorm's mean and variance).
        public var trainable: Bool
        /// Weight decay applies (weights, not biases or normalisation parameters).
        public var decays: Bool
        public var count: Int { shape.reduce(1, *) }
        public var range: Range<Int> { offset..<(offset + count) }
    }

    public private(set) var views: [View] = []
    public private(set) var values: [Float] = []
    /// Changes whenever the values may have changed (every mutable access). Layers key caches derived from
    /// their weights — the packed GEMM operands — on it, so a cache never outlives the values it was made from.
    public private(set) var generation: UInt64 = 0
    public var gradients: [Float] = []

    public init() {}

    public var count: Int { values.count }

    /// Appends a zero-initialised tensor and returns its view.
    @discardableResult
    public func add(name: String, shape: [Int], trainable: Bool = true, decays: Bool = false) -> View {
        precondition(!views.contains { $0.name == name }, "duplicate parameter \(name)")
        let v = View(name: name, offset: values.count, shape: shape, trainable: trainable, decays: decays)
        views.append(v)
        values.append(contentsOf: [Float](repeating: 0, count: v.count))
        generation &+= 1
        gradients.append(contentsOf: [Float](repeating: 0, count: v.count))
        return v
    }

    public func view(named name: String) -> View? { views.first { $0.name == name } }

    public func zeroGradients() {
        gradients.withUnsafeMutableBufferPointer { g in g.update(repeating: 0) }
    }

    /// A copy of one view's values.
    public func tensor(_ v: View) -> Tensor { Tensor(shape: v.shape, data: Array(values[v.range])) }

    public func set(_ v: View, _ data: [Float]) {
        precondition(data.count == v.count)
        values.replaceSubrange(v.range, with: data)
        generation &+= 1
    }

    /// Replaces every value (same layout).
    public func setAll(_ data: [Float]) {
        precondition(data.count == values.count)
        values = data
        generation &+= 1
    }

    /// Direct mutable access (optimizer steps, tampering, running statistics). Counts as a change: caches
    /// keyed on `generation` are dropped.
    @inline(__always)
    public func withValues<R>(_ body: (UnsafeMutablePointer<Float>) throws -> R) rethrows -> R {
        defer { generation &+= 1 }
        return try values.withUnsafeMutableBufferPointer { try body($0.baseAddress!) }
    }

    /// Read-only access for kernels; leaves `generation` alone.
    @inline(__always)
    public func withReadOnlyValues<R>(_ body: (UnsafePointer<Float>) throws -> R) rethrows -> R {
        try values.withUnsafeBufferPointer { try body($0.baseAddress!) }
    }

    @inline(__always)
    public func withGradients<R>(_ body: (UnsafeMutablePointer<Float>) throws -> R) rethrows -> R {
        try gradients.withUnsafeMutableBufferPointer { try body($0.baseAddress!) }
    }
}
