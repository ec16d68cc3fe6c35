import Crypto
import DeepRingEngine
import Foundation

/// One layer in the paper's sense — the unit a DeepRing block holds: a layer with parameters (dense or
/// convolution) together with the parameter-free operations that follow it (activation, pooling, flatten,
/// normalisation, dropout). Operations before the first parameterised layer join the first group. The paper's
/// MLP gives five: dense-ReLU ×4 and the dense output layer (whose softmax is applied at delivery).
public struct RingLayer: Sendable, Equatable {
    /// The architecture slice this layer runs.
    public var specs: [LayerSpec]
    /// Input shape (without batch).
    public var inputShape: [Int]
    /// Its parameter tensors, in buffer order: (name without the "layers.N." prefix, shape, values).
    public var tensors: [Tensor]
    public var tensorNames: [String]

    public init(specs: [LayerSpec], inputShape: [Int], tensors: [Tensor], tensorNames: [String]) {
        self.specs = specs; self.inputShape = inputShape; self.tensors = tensors; self.tensorNames = tensorNames
    }

    /// An engine model that computes this layer (Eq. 5: output = Φ(W·input + b)), with this layer's parameters.
    public func model() throws -> Model {
        let arch = Architecture(name: "ring-layer", inputShape: inputShape, classes: 0, layers: specs)
        // Every parameter is set below, and the layer's own tensors bound what the architecture may allocate.
        let m = try Model(arch, segment: true, initialise: false, parameterLimit: tensors.reduce(0) { $0 + $1.count })
        let p = m.parameters
        for (t, name) in zip(tensors, tensorNames) {
            guard let v = p.view(named: "layers.\(name)"), v.shape == t.shape else {
                throw ModelError.invalidArchitecture("ring layer tensor \(name) \(t.shape) does not fit its architecture")
            }
            p.set(v, t.data)
        }
        guard p.views.count == tensors.count else {
            throw ModelError.invalidArchitecture("ring layer has \(tensors.count) tensors, its architecture \(p.views.count)")
        }
        return m
    }

    /// True when `other` is this layer bit for bit: the same architecture slice, tensor names and shapes, and every
    /// value's bits (so −0 and +0 differ, which `==` on the values does not see).
    public func isBitIdentical(to other: RingLayer) -> Bool {
        guard specs == other.specs, inputShape == other.inputShape, tensorNames == other.tensorNames,
              tensors.count == other.tensors.count else { return false }
        for (a, b) in zip(tensors, other.tensors) {
            guard a.shape == b.shape, a.data.count == b.data.count else { return false }
            let same = a.data.withUnsafeBytes { x in
                b.data.withUnsafeBytes { y in
                    guard let p = x.baseAddress, let q = y.baseAddress else { return x.count == y.count }
                    return memcmp(p, q, x.count) == 0
                }
            }
            if !same { return false }
        }
        return true
    }

    /// This layer with the values `m` computes with now (a model made by `model()`): what the authenticity round
    /// hashes, so that a change in memory shows as well as one in the file. A tensor `m` lacks reads as empty (and so
    /// hashes differently: it fails closed).
    public func current(in m: Model) -> RingLayer {
        var out = self
        let p = m.parameters
        out.tensors = zip(tensors, tensorNames).map { t, name in
            guard let v = p.view(named: "layers.\(name)"), v.shape == t.shape else { return Tensor(shape: [0], data: []) }
            return p.tensor(v)
        }
        return out
    }

    /// The ouroboros's identity layer of width `n` (W = I, b = 0, identity activation), Eq. 2's params_O.
    public static func identity(inputShape: [Int]) -> RingLayer {
        let n = inputShape.reduce(1, *)
        var w = [Float](repeating: 0, count: n * n)
        for i in 0..<n { w[i * n + i] = 1 }
        let flat = inputShape.count > 1
        return RingLayer(specs: flat ? [.flatten, .dense(n)] : [.dense(n)], inputShape: inputShape,
                         tensors: [Tensor(shape: [n, n], data: w), Tensor(zeros: [n])],
                         tensorNames: flat ? ["1.weight", "1.bias"] : ["0.weight", "0.bias"])
    }

    /// Splits a model into ring layers.
    public static func split(_ model: Model) -> [RingLayer] {
        let arch = model.architecture
        var groups: [[Int]] = []
        var groupHasParams = false
        for (i, s) in arch.layers.enumerated() {
            let hasParams = s.type == .dense || s.type == .conv2d
            if groups.isEmpty || (hasParams && groupHasParams) {
                groups.append([i])
                groupHasParams = hasParams
            } else {
                groups[groups.count - 1].append(i)
                groupHasParams = groupHasParams || hasParams
            }
        }
        var shape = arch.inputShape
        var out: [RingLayer] = []
        for g in groups {
            var tensors: [Tensor] = [], names: [String] = []
            for i in g {
                let prefix = "layers.\(i)."
                for v in model.parameters.views where v.name.hasPrefix(prefix) {
                    tensors.append(model.parameters.tensor(v))
                    names.append("\(i - g[0]).\(v.name.dropFirst(prefix.count))")
                }
            }
            out.append(RingLayer(specs: g.map { arch.layers[$0] }, inputShape: shape, tensors: tensors, tensorNames: names))
            shape = model.layers[g.last!].outputShape
        }
        return out
    }
}

/// The canonical encoding `enc(params)` hashed by Eqs. 1–2:
///
///     "DeepRing params v1" ‖ u32 n_specs ‖ per spec: u8 kind-length, kind, u32 units, u32 filters,
///     u32 kernel, u32 stride, u32 padding, f32 rate (absent values as 0xFFFFFFFF)
///     ‖ u32 n_dims(input) ‖ dims ‖ u32 n_tensors ‖ per tensor: u32 name-length, name, u32 n_dims, dims,
///     values as little-endian IEEE-754 float32
///
/// All integers are little-endian u32. Two encodings are equal iff architecture slice, shapes and every bit
/// of every parameter are equal.
public enum ParamsEncoding {
    public static let domainTag = Array("DeepRing params v1".utf8)

    public static func encode(_ layer: RingLayer) -> [UInt8] {
        var b: [UInt8] = []
        b.reserveCapacity(domainTag.count + 256 + layer.tensors.reduce(0) { $0 + 4 * $1.count + 64 })
        walk(layer) { b.append(contentsOf: $0) }
        return b
    }

    /// Feeds `enc(layer)` to a SHA-256 without building it (megabytes of weights are hashed in place).
    public static func hash(_ layer: RingLayer, into sha: inout SHA256) {
        walk(layer) { sha.update(bufferPointer: $0) }
    }

    /// The encoding, piece by piece: domain tag, layer specs, input shape, then each tensor's name, shape and
    /// little-endian float32 values.
    static func walk(_ layer: RingLayer, _ emit: (UnsafeRawBufferPointer) -> Void) {
        var head = domainTag
        func u32(_ v: Int?) {
            let x = v.map { UInt32(truncatingIfNeeded: $0) } ?? 0xFFFF_FFFF
            head += [UInt8(x & 255), UInt8((x >> 8) & 255), UInt8((x >> 16) & 255), UInt8(x >> 24)]
        }
        u32(layer.specs.count)
        for s in layer.specs {
            let k = Array(s.type.rawValue.utf8)
            head.append(UInt8(k.count)); head += k
            u32(s.units); u32(s.filters); u32(s.kernel); u32(s.stride); u32(s.padding)
            u32(s.rate.map { Int($0.bitPattern) })
        }
        u32(layer.inputShape.count); layer.inputShape.forEach { u32($0) }
        u32(layer.tensors.count)
        for (t, name) in zip(layer.tensors, layer.tensorNames) {
            let n = Array(name.utf8)
            u32(n.count); head += n
            u32(t.shape.count); t.shape.forEach { u32($0) }
            head.withUnsafeBytes(emit)
            head.removeAll(keepingCapacity: true)
            t.data.withUnsafeBytes(emit)   // little-endian hosts only
        }
        head.withUnsafeBytes(emit)
    }
}
