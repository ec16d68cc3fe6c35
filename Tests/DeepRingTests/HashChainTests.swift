import Crypto
import DeepRingEngine
import DeepRingProtocol
import Testing

@Suite struct RingLayerTests {
    @Test func theMLPSplitsIntoThePapersFiveLayers() throws {
        let m = try Model(.mlp(inputShape: [28, 28, 1], classes: 10), seed: 1)
        let layers = RingLayer.split(m)
        #expect(layers.count == 5)
        #expect(layers[0].specs.map(\.type) == [.flatten, .dense, .relu])
        #expect(layers[4].specs.map(\.type) == [.dense])
        #expect(layers.map { $0.tensors[0].shape } == [[784, 900], [900, 600], [600, 300], [300, 100], [100, 10]])
        #expect(layers[1].inputShape == [900] && layers[0].inputShape == [28, 28, 1])
        #expect(layers.reduce(0) { $0 + $1.tensors.reduce(0) { $0 + $1.count } } == m.parameters.count)
    }

    @Test func vggSplitsIntoSixteenConvLayersAndTheClassifier() throws {
        let m = try Model(.vgg19(inputShape: [32, 32, 1], classes: 10, widthDivisor: 16), seed: 1)
        let layers = RingLayer.split(m)
        #expect(layers.count == 17)
        #expect(layers[1].specs.map(\.type) == [.conv2d, .batchnorm, .relu, .maxpool])
        #expect(layers[16].specs.map(\.type) == [.dense])
    }

    /// Running the ring layers one after the other gives the plain model's logits bit for bit.
    @Test func ringLayersComposeToThePlainModelBitForBit() throws {
        for arch in [Architecture.mlp(inputShape: [28, 28, 1], classes: 10),
                     .vgg19(inputShape: [32, 32, 1], classes: 10, widthDivisor: 16)] {
            let m = try Model(arch, seed: 5)
            let n = 5
            let x = Tensor(shape: [n] + arch.inputShape,
                           data: (0..<(n * arch.inputShape.reduce(1, *))).map { Float(($0 * 7919) % 255) / 255 })
            var h = x
            for l in RingLayer.split(m) { h = try l.model().forward(h) }
            #expect(h.data.map(\.bitPattern) == m.forward(x).data.map(\.bitPattern), "\(arch.name)")
            let ident = try RingLayer.identity(inputShape: arch.inputShape).model().forward(x)
            #expect(ident.data == x.data)
        }
    }

    @Test func identityLayerIsTheIdentity() {
        let o = RingLayer.identity(inputShape: [3])
        #expect(o.tensors[0].data == [1, 0, 0, 0, 1, 0, 0, 0, 1])
        #expect(o.tensors[1].data == [0, 0, 0])
    }
}

@Suite struct HashChainTests {
    func smallRing(seed: UInt64 = 1) throws -> (RingLayer, [RingLayer]) {
        let m = try Model(.mlp(inputShape: [12], classes: 3, hidden: [8, 6, 4]), seed: seed)
        return (RingLayer.identity(inputShape: [12]), RingLayer.split(m))
    }

    @Test func encodingIsCanonicalAndSeesEveryBit() throws {
        let (_, layers) = try smallRing()
        let e = ParamsEncoding.encode(layers[1])
        #expect(ParamsEncoding.encode(layers[1]) == e)
        var r = SeededRandom(seed: 3)
        for _ in 0..<200 {
            var l = layers[1]
            let t = r.int(below: l.tensors.count), i = r.int(below: l.tensors[t].count)
            l.tensors[t].data[i] = Float(bitPattern: l.tensors[t].data[i].bitPattern ^ (1 << UInt32(r.int(below: 32))))
            #expect(ParamsEncoding.encode(l) != e)
        }
        var changedSpec = layers[1]
        changedSpec.specs[1] = .relu
        changedSpec.specs.append(.relu)
        #expect(ParamsEncoding.encode(changedSpec) != e)
    }

    @Test func chainFollowsEquations1And2() throws {
        let (o, layers) = try smallRing()
        let (ho, hb) = HashChain.holdings(ouroboros: o, layers: layers)
        let h = HashChain.hashes(ouroboros: ho, blocks: hb)
        #expect(h.count == layers.count + 1)
        #expect(hb.last!.next == ho.own)        // the ring is closed
        #expect(hb[0].next == hb[1].own)
        #expect(HashChain.firstMismatch(h, record: h) == nil)
        #expect(Set(h).count == h.count)
        // Hashing the layers in place gives the same chain as hashing their encodings.
        let holders = [(own: o, next: layers[0])] + layers.indices.map { (own: layers[$0], next: $0 + 1 < layers.count ? layers[$0 + 1] : o) }
        #expect(HashChain.hashes(holders: holders) == h)
        var sha = SHA256()
        ParamsEncoding.hash(layers[1], into: &sha)
        #expect(Array(sha.finalize()) == Array(SHA256.hash(data: ParamsEncoding.encode(layers[1]))))
    }

    /// A random bit flip in any block's holding (own layer or next-layer copy) is located at that block.
    @Test func everyFlipIsLocatedAtItsBlock() throws {
        let (o, layers) = try smallRing(seed: 7)
        let (ho, hb) = HashChain.holdings(ouroboros: o, layers: layers)
        let record = HashChain.hashes(ouroboros: ho, blocks: hb)
        var r = SeededRandom(seed: 11)
        var located = 0
        let trials = 1000
        for _ in 0..<trials {
            var blocks = hb
            var ouro = ho
            let j = r.int(below: blocks.count + 1)   // 0 = ouroboros
            let own = r.int(below: 2) == 0
            func flip(_ b: inout [UInt8]) { let i = r.int(below: b.count); b[i] ^= UInt8(1 << r.int(below: 8)) }
            if j == 0 { if own { flip(&ouro.own) } else { flip(&ouro.next) } }
            else if own { flip(&blocks[j - 1].own) } else { flip(&blocks[j - 1].next) }
            let now = HashChain.hashes(ouroboros: ouro, blocks: blocks)
            if HashChain.firstMismatch(now, record: record) == j && now.last != record.last { located += 1 }
        }
        #expect(located == trials)
    }
}
