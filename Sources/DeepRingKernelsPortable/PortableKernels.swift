import DeepRingKernels

/// The kernels compiled with no target flags: plain SIMD types, the reference path for every other CPU (on an
/// x86-64 without FMA in the compiler's baseline, each fused multiply-add is a call to libm's `fmaf`, exact and
/// slow). Every chain is `DeepRingKernels`' one definition (`TilePlan.registers256`).
public enum PortableKernels: KernelSet {
    public static var plan: TilePlan { .registers256 }

    public static func tiles(rows: Int, cols: Int, kc: Int, aPack: UnsafePointer<Float>, bPack: UnsafePointer<Float>,
                             bRowStride: Int, bStripStride: Int,
                             c: UnsafeMutablePointer<Float>, ldc: Int, load: Bool, edge: UnsafeMutablePointer<Float>) {
        TileKernels.tiles(plan: .registers256, rows: rows, cols: cols, kc: kc, aPack: aPack, bPack: bPack,
                          bRowStride: bRowStride, bStripStride: bStripStride, c: c, ldc: ldc,
                          load: load, edge: edge)
    }

    public static func gemvPacked(strips: Range<Int>, x: UnsafePointer<Float>, storage: UnsafePointer<Float>,
                                  offsets: UnsafePointer<Int>, kBlocks: Int, step: Int, stripsPerBlock: Int,
                                  n: Int, k: Int, y: UnsafeMutablePointer<Float>, accumulate: Bool) {
        GEMVKernels.packed(plan: .registers256, strips: strips, x: x, storage: storage, offsets: offsets, kBlocks: kBlocks,
                           step: step, stripsPerBlock: stripsPerBlock, n: n, k: k, y: y, accumulate: accumulate)
    }

    public static func gemv(columns: Range<Int>, k: Int, x: UnsafePointer<Float>, w: UnsafePointer<Float>, ldw: Int,
                            y: UnsafeMutablePointer<Float>, accumulate: Bool) {
        GEMVKernels.rowMajor(plan: .registers256, columns: columns, k: k, x: x, w: w, ldw: ldw, y: y, accumulate: accumulate)
    }

    public static func winogradInput(tiles: Range<Int>, first: Int, perImage: Int, tilesWide: Int, x: UnsafePointer<Float>,
                                     h: Int, w: Int, inC: Int, v: UnsafeMutablePointer<Float>, ldv: Int) {
        WinogradKernels.input(SIMD8<Float>.self, tiles: tiles, first: first, perImage: perImage, tilesWide: tilesWide,
                              x: x, h: h, w: w, inC: inC, v: v, ldv: ldv)
    }

    public static func winogradOutput(tiles: Range<Int>, first: Int, perImage: Int, tilesWide: Int, m: UnsafePointer<Float>,
                                      ldm: Int, outC: Int, cols: Range<Int>, bias: UnsafePointer<Float>, relu: Bool,
                                      y: UnsafeMutablePointer<Float>, h: Int, w: Int) {
        WinogradKernels.output(SIMD8<Float>.self, tiles: tiles, first: first, perImage: perImage, tilesWide: tilesWide,
                               m: m, ldm: ldm, outC: outC, cols: cols, bias: bias, relu: relu, y: y, h: h, w: w)
    }
}
