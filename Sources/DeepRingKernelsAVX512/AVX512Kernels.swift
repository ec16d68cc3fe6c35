import DeepRingKernels

/// The kernels compiled for AVX-512 (`-target-cpu znver4`): 6×64 register tiles of 16-lane zmm chains (6×32 for
/// k blocks deeper than 200).
/// Run only on a CPU with every extension znver4 code may use (AMD Zen 4 and 5, Intel Sapphire Rapids and later;
/// the engine's `ISA` asks the CPU). Every chain is `DeepRingKernels`' one definition (`TilePlan.registers512`).
public enum AVX512Kernels: KernelSet {
    public static var plan: TilePlan { .registers512 }

    /// 6×64 tiles up to the plan's depth, 6×32 (`halved`) for deeper k blocks. Each width is its own function so
    /// that the optimiser inlines every tile kernel into it (one function holding both did not: its 4-row edge tile
    /// became a call into the unflagged `DeepRingKernels`, where an FMA is a libm call).
    public static func tiles(rows: Int, cols: Int, kc: Int, aPack: UnsafePointer<Float>, bPack: UnsafePointer<Float>,
                             bRowStride: Int, bStripStride: Int,
                             c: UnsafeMutablePointer<Float>, ldc: Int, load: Bool, edge: UnsafeMutablePointer<Float>) {
        if kc <= TilePlan.registers512.wholeTileMaxDepth {
            shallowTiles(rows: rows, cols: cols, kc: kc, aPack: aPack, bPack: bPack,
                         bRowStride: bRowStride, bStripStride: bStripStride, c: c, ldc: ldc, load: load, edge: edge)
        } else {
            deepTiles(rows: rows, cols: cols, kc: kc, aPack: aPack, bPack: bPack,
                      bRowStride: bRowStride, bStripStride: bStripStride, c: c, ldc: ldc, load: load, edge: edge)
        }
    }

    @inline(never)
    static func shallowTiles(rows: Int, cols: Int, kc: Int, aPack: UnsafePointer<Float>, bPack: UnsafePointer<Float>,
                             bRowStride: Int, bStripStride: Int,
                             c: UnsafeMutablePointer<Float>, ldc: Int, load: Bool, edge: UnsafeMutablePointer<Float>) {
        TileKernels.tiles(plan: .registers512, rows: rows, cols: cols, kc: kc, aPack: aPack, bPack: bPack,
                          bRowStride: bRowStride, bStripStride: bStripStride, c: c, ldc: ldc,
                          load: load, edge: edge)
    }

    @inline(never)
    static func deepTiles(rows: Int, cols: Int, kc: Int, aPack: UnsafePointer<Float>, bPack: UnsafePointer<Float>,
                          bRowStride: Int, bStripStride: Int,
                          c: UnsafeMutablePointer<Float>, ldc: Int, load: Bool, edge: UnsafeMutablePointer<Float>) {
        TileKernels.tiles(plan: TilePlan.registers512.halved, rows: rows, cols: cols, kc: kc, aPack: aPack, bPack: bPack,
                          bRowStride: bRowStride, bStripStride: bStripStride,
                          c: c, ldc: ldc, load: load, edge: edge)
    }

    public static func gemvPacked(strips: Range<Int>, x: UnsafePointer<Float>, storage: UnsafePointer<Float>,
                                  offsets: UnsafePointer<Int>, kBlocks: Int, step: Int, stripsPerBlock: Int,
                                  n: Int, k: Int, y: UnsafeMutablePointer<Float>, accumulate: Bool) {
        GEMVKernels.packed(plan: .registers512, strips: strips, x: x, storage: storage, offsets: offsets, kBlocks: kBlocks,
                           step: step, stripsPerBlock: stripsPerBlock, n: n, k: k, y: y, accumulate: accumulate)
    }

    public static func gemv(columns: Range<Int>, k: Int, x: UnsafePointer<Float>, w: UnsafePointer<Float>, ldw: Int,
                            y: UnsafeMutablePointer<Float>, accumulate: Bool) {
        GEMVKernels.rowMajor(plan: .registers512, columns: columns, k: k, x: x, w: w, ldw: ldw, y: y, accumulate: accumulate)
    }

    public static func winogradInput(tiles: Range<Int>, first: Int, perImage: Int, tilesWide: Int, x: UnsafePointer<Float>,
                                     h: Int, w: Int, inC: Int, v: UnsafeMutablePointer<Float>, ldv: Int) {
        WinogradKernels.input(SIMD16<Float>.self, tiles: tiles, first: first, perImage: perImage, tilesWide: tilesWide,
                              x: x, h: h, w: w, inC: inC, v: v, ldv: ldv)
    }

    public static func winogradOutput(tiles: Range<Int>, first: Int, perImage: Int, tilesWide: Int, m: UnsafePointer<Float>,
                                      ldm: Int, outC: Int, cols: Range<Int>, bias: UnsafePointer<Float>, relu: Bool,
                                      y: UnsafeMutablePointer<Float>, h: Int, w: Int) {
        WinogradKernels.output(SIMD16<Float>.self, tiles: tiles, first: first, perImage: perImage, tilesWide: tilesWide,
                               m: m, ldm: ldm, outC: outC, cols: cols, bias: bias, relu: relu, y: y, h: h, w: w)
    }
}
