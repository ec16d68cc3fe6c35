import Foundation

/// One layer of an architecture, as stored in a model file's metadata.
public struct LayerSpec: Codable, Equatable, Sendable {
    public enum Kind: String, Codable, Sendable {
        case dense, conv2d, maxpool, relu, flatten, batchnorm, dropout
    }
    public var type: Kind
    /// Dense: output features.
    public var units: Int?
    /// Conv2D: output channels.
    public var filters: Int?
    /// Conv2D / MaxPool: window size.
    public var kernel: Int?
    public var stride: Int?
    public var padding: Int?
    /// Dropout: drop probability.
    public var rate: Float?

    public init(type: Kind, units: Int? = nil, filters: Int? = nil, kernel: Int? = nil, stride: Int? = nil,
                padding: Int? = nil, rate: Float? = nil) {
        self.type = type; self.units = units; self.filters = filters; self.kernel = kernel
        self.stride = stride; self.padding = padding; self.rate = rate
    }

    public static func dense(_ units: Int) -> LayerSpec { LayerSpec(type: .dense, units: units) }
    public static func conv(_ filters: Int, kernel: Int = 3, stride: Int = 1, padding: Int = 1) -> LayerSpec {
        LayerSpec(type: .conv2d, filters: filters, kernel: kernel, stride: stride, padding: padding)
    }
    public static func maxPool(_ size: Int = 2) -> LayerSpec { LayerSpec(type: .maxpool, kernel: size, stride: size) }
    public static let relu = LayerSpec(type: .relu)
    public static let flatten = LayerSpec(type: .flatten)
    public static let batchNorm = LayerSpec(type: .batchnorm)
    public static func dropout(_ rate: Float) -> LayerSpec { LayerSpec(type: .dropout, rate: rate) }
}

/// A network architecture: stored in the model file so that a file is self-describing.
public struct Architecture: Codable, Equatable, Sendable {
    public var name: String
    /// Input shape without the batch: [features] or [H, W, C].
    public var inputShape: [Int]
    public var classes: Int
    public var layers: [LayerSpec]
    public var widthDivisor: Int?

    public init(name: String, inputShape: [Int], classes: Int, layers: [LayerSpec], widthDivisor: Int? = nil) {
        self.name = name; self.inputShape = inputShape; self.classes = classes
        self.layers = layers; self.widthDivisor = widthDivisor
    }

    /// The paper's MLP: dense 900-600-300-100-C with ReLU, softmax output (the softmax is applied by the loss
    /// and by `Model.probabilities`).
    public static func mlp(inputShape: [Int], classes: Int, hidden: [Int] = [900, 600, 300, 100],
                           dropout: Float = 0) -> Architecture {
        var layers: [LayerSpec] = inputShape.count > 1 ? [.flatten] : []
        for h in hidden {
            layers += [.dense(h), .relu]
            if dropout > 0 { layers.append(.dropout(dropout)) }
        }
        layers.append(.dense(classes))
        return Architecture(name: "mlp", inputShape: inputShape, classes: classes, layers: layers)
    }

    /// The standard VGG-19 configuration (16 3×3 convolutions, 5 max-pools) for 32×32 inputs, followed by a
    /// linear classifier, with every width divided by `widthDivisor` (1 = full width).
    public static let vgg19Plan: [Int] = [64, 64, 0, 128, 128, 0, 256, 256, 256, 256, 0,
                                          512, 512, 512, 512, 0, 512, 512, 512, 512, 0]
    public static func vgg19(inputShape: [Int], classes: Int, widthDivisor: Int = 1, batchNorm: Bool = true) -> Architecture {
        var layers: [LayerSpec] = []
        for c in vgg19Plan {
            if c == 0 { layers.append(.maxPool(2)); continue }
            layers.append(.conv(max(1, c / max(1, widthDivisor))))
            if batchNorm { layers.append(.batchNorm) }
            layers.append(.relu)
        }
        layers += [.flatten, .dense(classes)]
        return Architecture(name: "vgg19", inputShape: inputShape, classes: classes, layers: layers,
                            widthDivisor: widthDivisor)
    }
}

public enum ModelError: Error, CustomStringConvertible {
    case invalidArchitecture(String)
    case inputMismatch(expected: [Int], got: [Int])

    public var description: String {
        switch self {
        case .invalidArchitecture(let m): return "invalid architecture: \(m)"
        case .inputMismatch(let e, let g): return "the model expects inputs of shape \(e), the data has \(g)"
        }
    }
}

/// A sequential network whose parameters live in one `ParameterStore`.
public final class Model: @unchecked Sendable {
    public let architecture: Architecture
    public let parameters: ParameterStore
    public let layers: [Layer]
    /// `reluFusedAfter[i]`: layer i (dense or convolution) applies the ReLU at i + 1 inside its GEMM.
    private let reluFusedAfter: [Bool]

    /// Largest parameter count accepted from a file (guards against hostile architectures).
    public static let maxParameters = 1 << 30

    /// Builds a model. With `segment: true` the architecture may be a slice of a network (a DeepRing block's
    /// layer): its output need not be one value per class. With `initialise: false` the parameters stay zero — for
    /// callers that overwrite every value right away (copies, layers loaded from files). `parameterLimit` bounds
    /// the parameter count before anything is allocated: a loader passes what its file can actually hold, so that a
    /// small hostile file cannot make it allocate gigabytes for an architecture it then fails to fill.
    public init(_ arch: Architecture, seed: UInt64 = 0, segment: Bool = false, initialise: Bool = true,
                parameterLimit: Int = Model.maxParameters) throws {
        let maxParameters = min(parameterLimit, Model.maxParameters)
        architecture = arch
        let store = ParameterStore()
        parameters = store
        func bad(_ m: String) -> ModelError { .invalidArchitecture(m) }
        guard (1...4).contains(arch.inputShape.count), arch.inputShape.allSatisfy({ $0 > 0 && $0 <= 1 << 16 }),
              arch.inputShape.reduce(1, { $0.multipliedReportingOverflow(by: $1).partialValue }) <= 1 << 24 else {
            throw bad("input shape \(arch.inputShape) is not a positive shape of 1–3 dimensions")
        }
        guard segment || (arch.classes >= 2 && arch.classes <= 100_000) else { throw bad("\(arch.classes) classes") }
        guard !arch.layers.isEmpty && arch.layers.count <= 1000 else { throw bad("\(arch.layers.count) layers") }
        var shape = arch.inputShape
        var built: [Layer] = []
        var total = 0
        for (i, s) in arch.layers.enumerated() {
            let size = shape.reduce(1, *)
            let layer: Layer
            switch s.type {
            case .dense:
                guard let u = s.units, u > 0, u <= 1 << 20 else { throw bad("layer \(i): dense needs 1…2²⁰ units") }
                guard shape.count == 1 else { throw bad("layer \(i): dense needs a flat input, got \(shape) (add a flatten layer)") }
                let (p, o) = size.multipliedReportingOverflow(by: u)
                guard !o, p <= maxParameters else { throw bad("layer \(i): too many parameters") }
                total += p + u
                guard total <= maxParameters else { throw bad("more than \(maxParameters) parameters") }
                layer = Dense(spec: s, inFeatures: size, store: store, index: i)
            case .conv2d:
                guard shape.count == 3 else { throw bad("layer \(i): conv2d needs an [H, W, C] input, got \(shape)") }
                guard let f = s.filters, f > 0, f <= 1 << 16 else { throw bad("layer \(i): conv2d needs 1…65536 filters") }
                let k = s.kernel ?? 3, st = s.stride ?? 1, pd = s.padding ?? 1
                guard k > 0, k <= 64, st > 0, st <= 64, pd >= 0, pd < k,
                      shape[0] + 2 * pd >= k, shape[1] + 2 * pd >= k else {
                    throw bad("layer \(i): conv2d kernel \(k), stride \(st), padding \(pd) do not fit input \(shape)")
                }
                total += k * k * shape[2] * f + f
                guard total <= maxParameters else { throw bad("more than \(maxParameters) parameters") }
                layer = Conv2D(spec: s, inputShape: shape, store: store, index: i)
            case .maxpool:
                let k = s.kernel ?? 2, st = s.stride ?? k
                guard shape.count == 3, k > 0, st > 0, shape[0] >= k, shape[1] >= k else {
                    throw bad("layer \(i): maxpool \(k) does not fit input \(shape)")
                }
                layer = MaxPool2D(spec: s, inputShape: shape)
            case .relu: layer = ReLU(spec: s, shape: shape)
            case .flatten: layer = Flatten(spec: s, shape: shape)
            case .batchnorm:
                total += 4 * (shape.last ?? 1)
                guard total <= maxParameters else { throw bad("more than \(maxParameters) parameters") }
                layer = BatchNorm(spec: s, shape: shape, store: store, index: i)
            case .dropout:
                guard let r = s.rate, r >= 0, r < 1 else { throw bad("layer \(i): dropout rate must be in [0, 1)") }
                layer = Dropout(spec: s, shape: shape, seed: seed &+ UInt64(i) &* 7919)
            }
            shape = layer.outputShape
            built.append(layer)
        }
        guard segment || shape == [arch.classes] else {
            throw bad("the last layer gives shape \(shape), expected [\(arch.classes)] (one value per class)")
        }
        // Nothing before (and including) the first layer with parameters needs an input gradient.
        for l in built {
            l.needsInputGradient = false
            if l is Dense || l is Conv2D || l is BatchNorm { break }
        }
        // Dense and convolution layers followed by a ReLU apply it inside their GEMM (see `forward`).
        reluFusedAfter = built.indices.map { i in
            i + 1 < built.count && (built[i] is Dense || built[i] is Conv2D) && built[i + 1] is ReLU
        }
        for (l, fused) in zip(built, reluFusedAfter) where fused {
            (l as? Dense)?.fusedReLU = true
            (l as? Conv2D)?.fusedReLU = true
        }
        layers = built
        if initialise { self.initialise(seed: seed) }
    }

    /// He-normal initialisation of weights (std √(2/fan_in)), zero biases, BatchNorm γ = 1, running var = 1.
    public func initialise(seed: UInt64) {
        var rng = SeededRandom(seed: seed)
        for v in parameters.views where v.decays {
            let fanIn = v.shape.dropLast().reduce(1, *)
            let std = (2 / Float(max(fanIn, 1))).squareRoot()
            parameters.set(v, (0..<v.count).map { _ in rng.normal() * std })
        }
        for l in layers { (l as? BatchNorm)?.initialise() }
    }

    public var inputShape: [Int] { architecture.inputShape }
    /// The shape (without batch) of this model's output.
    public var outputShape: [Int] { layers.last?.outputShape ?? inputShape }

    /// Forward pass over a batch ([N] + inputShape), returning logits [N, classes].
    public func forward(_ x: Tensor, training: Bool = false) -> Tensor {
        forward(x, training: training, timing: nil)
    }

    /// Inference on a batch that came from outside (a ring block's input off the ledger): the shape must be
    /// [N] + `inputShape` with N ≥ 1, else a typed error — never a trap in a layer.
    public func checkedForward(_ x: Tensor) throws -> Tensor {
        guard x.shape.count == inputShape.count + 1, x.batch >= 1, Array(x.shape.dropFirst()) == inputShape else {
            throw ModelError.inputMismatch(expected: inputShape, got: Array(x.shape.dropFirst()))
        }
        return forward(x)
    }

    /// Inference forward pass that also reports each layer's wall time (seconds, by layer index; a ReLU fused
    /// into the layer before it counts with that layer).
    public func profiledForward(_ x: Tensor) -> (output: Tensor, seconds: [Double]) {
        var t = [Double](repeating: 0, count: layers.count)
        let y = forward(x, training: false) { t[$0] += $1 }
        return (y, t)
    }

    private func forward(_ x: Tensor, training: Bool, timing: ((Int, Double) -> Void)?) -> Tensor {
        var h = x
        var i = 0
        while i < layers.count {
            let layer = i, start = timing == nil ? 0 : now()
            defer { timing?(layer, now() - start) }
            h = layers[i].forward(h, training: training)
            // A ReLU after a dense or convolution layer has been applied by that layer's GEMM, tile by tile (same
            // values, no separate pass or copy); in training the ReLU keeps the output for its backward pass.
            if reluFusedAfter[i] {
                if training { (layers[i + 1] as! ReLU).keep(output: h) }
                i += 1
            }
            i += 1
        }
        return h
    }

    /// Backward pass from ∂L/∂logits; writes every trainable gradient in `parameters.gradients` and returns ∂L/∂input when
    /// `layers[0].needsInputGradient` is set (an empty tensor otherwise).
    @discardableResult
    public func backward(_ dlogits: Tensor) -> Tensor {
        backward(dlogits, parametersDone: nil)
    }

    /// Backward pass that reports, right after each layer's backward, the parameter range whose gradients are
    /// now final (`Trainer` updates them there, while they are still in cache). Ranges of layers that the pass
    /// stops before (no input gradient needed further down) are reported at the end.
    public func backward(_ dlogits: Tensor, parametersDone: ((Range<Int>) -> Void)?) -> Tensor {
        var g = dlogits
        var i = layers.count - 1
        while i >= 0 {
            let l = layers[i]
            if let relu = l as? ReLU { relu.backward(inPlace: &g) } else { g = l.backward(g) }
            if let done = parametersDone, let r = parameterRanges[i] { done(r) }
            if !l.needsInputGradient {
                if let done = parametersDone { for j in 0..<i { if let r = parameterRanges[j] { done(r) } } }
                return Tensor(zeros: [0])
            }
            i -= 1
        }
        return g
    }

    /// Each layer's span of the parameter buffer (nil for layers without parameters).
    public private(set) lazy var parameterRanges: [Range<Int>?] = layers.indices.map { i in
        let views = parameters.views.filter { $0.name.hasPrefix("layers.\(i).") }
        guard let lo = views.map(\.offset).min(), let hi = views.map({ $0.offset + $0.count }).max() else { return nil }
        return lo..<hi
    }

    /// Logits for many inputs, computed `batchSize` at a time (results do not depend on the batch size).
    public func logits(_ x: Tensor, batchSize: Int = 256) throws -> Tensor {
        guard Array(x.shape.dropFirst()) == inputShape || x.itemSize == inputShape.reduce(1, *) else {
            throw ModelError.inputMismatch(expected: inputShape, got: Array(x.shape.dropFirst()))
        }
        let n = x.batch
        if n <= batchSize { return forward(x.reshaped([n] + inputShape)) }
        var parts: [Tensor] = []
        var i = 0
        while i < n {
            let j = min(n, i + batchSize)
            parts.append(forward(x.slice(i..<j).reshaped([j - i] + inputShape)))
            i = j
        }
        return Tensor.concatenate(parts)
    }

    /// Softmax probabilities (the paper's output layer).
    public func probabilities(_ x: Tensor) throws -> Tensor { softmax(try logits(x)) }
}
