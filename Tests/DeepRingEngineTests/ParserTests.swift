import DeepRingEngine
import DeepRingData
import Foundation
import Testing

/// Every parser treats its input as hostile: a typed error, never a crash or a huge allocation.
@Suite struct IDXParserTests {
    func idx(_ dims: [UInt32], payload: Int? = nil, type: UInt8 = 8) -> [UInt8] {
        var b: [UInt8] = [0, 0, type, UInt8(dims.count)]
        for d in dims { b += [UInt8(d >> 24), UInt8((d >> 16) & 255), UInt8((d >> 8) & 255), UInt8(d & 255)] }
        let n = payload ?? dims.reduce(1) { $0 * Int($1) }
        b += (0..<n).map { UInt8($0 % 251) }
        return b
    }

    @Test func parsesRawAndGzip() throws {
        let raw = idx([3, 2, 2])
        let a = try IDX.parse(raw)
        #expect(a.dimensions == [3, 2, 2])
        #expect(a.values.count == 12)
        #expect(try IDX.parse(try Gzip.compress(raw)) == a)
    }

    @Test func rejectsTruncated() {
        #expect(throws: IDX.Error.truncated(expected: 16, got: 12)) { try IDX.parse(idx([3, 2, 2])[0..<12].map { $0 }) }
        #expect(throws: IDX.Error.self) { try IDX.parse(idx([3, 2, 2], payload: 11)) }
        #expect(throws: IDX.Error.self) { try IDX.parse([0, 0]) }
    }

    @Test func rejectsWrongMagicAndType() {
        var b = idx([2])
        b[0] = 0x1f
        #expect(throws: IDX.Error.badMagic(0x1f00_0801)) { try IDX.parse(b) }
        #expect(throws: IDX.Error.unsupportedType(0x0D)) { try IDX.parse(idx([2], type: 0x0D)) }
        #expect(throws: IDX.Error.self) { try IDX.parse([0, 0, 8, 0]) }
        #expect(throws: IDX.Error.self) { try IDX.parse([0, 0, 8, 9]) }
    }

    @Test func rejectsHugeAndOverflowingDimensionsWithoutAllocating() {
        #expect(throws: IDX.Error.self) { try IDX.parse(idx([0xFFFF_FFFF], payload: 4)) }
        #expect(throws: IDX.Error.self) { try IDX.parse(idx([0xFFFF_FFFF, 0xFFFF_FFFF, 0xFFFF_FFFF, 0xFFFF_FFFF], payload: 0)) }
        #expect(throws: IDX.Error.self) { try IDX.parse(idx([60000, 28, 28], payload: 10)) }
        #expect(throws: IDX.Error.badDimensions([0, 5])) { try IDX.parse(idx([0, 5], payload: 0)) }
        #expect(throws: IDX.Error.trailingBytes(1)) { try IDX.parse(idx([2], payload: 3)) }
    }

    @Test func rejectsCorruptAndTruncatedGzip() throws {
        let gz = try Gzip.compress(idx([100, 10]))
        #expect(throws: GzipError.self) { try IDX.parse(Array(gz[0..<(gz.count / 2)])) }
        var bad = gz
        bad[12] ^= 0xFF
        bad[13] ^= 0xFF
        #expect(throws: (any Error).self) { try IDX.parse(bad) }
        #expect(throws: GzipError.tooLarge(limit: 100)) { try Gzip.decompress(try Gzip.compress([UInt8](repeating: 0, count: 1000)), limit: 100) }
    }

    @Test func loaderSaysWhereItLookedAndWhatToPut() {
        let dir = temporaryDirectory()
        do {
            _ = try DatasetLoader.load(name: "mnist", directory: dir)
            Issue.record("expected an error")
        } catch {
            let m = "\(error)"
            #expect(m.contains(dir))
            #expect(m.contains("train-images-idx3-ubyte"))
        }
    }

    @Test func loadsAnMNISTFormatFolderAndChecksLabelCounts() throws {
        let dir = temporaryDirectory()
        func put(_ name: String, _ b: [UInt8]) throws { try Data(b).write(to: URL(fileURLWithPath: dir + "/" + name)) }
        try put("train-images-idx3-ubyte.gz", try Gzip.compress(idx([4, 3, 3])))
        try put("train-labels-idx1-ubyte", [0, 0, 8, 1, 0, 0, 0, 4, 0, 1, 2, 1])
        try put("t10k-images-idx3-ubyte", idx([2, 3, 3]))
        try put("t10k-labels-idx1-ubyte", [0, 0, 8, 1, 0, 0, 0, 2, 1, 0])
        let s = try DatasetLoader.load(name: "idx", directory: dir)
        #expect(s.train.count == 4 && s.test.count == 2 && s.train.classes == 3 && s.train.imageShape == [3, 3, 1])
        try put("t10k-labels-idx1-ubyte", [0, 0, 8, 1, 0, 0, 0, 3, 1, 0, 0])
        #expect(throws: DatasetError.self) { try DatasetLoader.load(name: "idx", directory: dir) }
    }
}

@Suite struct CIFARParserTests {
    /// Writes files in the exact CIFAR-10 binary format and loads them through the data-set loader.
    @Test func roundTripsGeneratedFiles() throws {
        let dir = temporaryDirectory()
        var r = SeededRandom(seed: 1)
        let n = 20
        let images = (0..<(n * 3072)).map { _ in Float(r.int(below: 256)) / 255 }
        let labels = (0..<n).map { $0 % 10 }
        let bytes = CIFAR10.encode(images: images, labels: labels)
        #expect(bytes.count == n * 3073)
        // Format check: first record = label byte, then the red plane.
        #expect(bytes[0] == 0 && bytes[1] == UInt8((images[0] * 255).rounded()) && bytes[1 + 1024] == UInt8((images[1] * 255).rounded()))
        try Data(bytes).write(to: URL(fileURLWithPath: dir + "/data_batch_1.bin"))
        try Data(bytes[0..<(5 * 3073)]).write(to: URL(fileURLWithPath: dir + "/test_batch.bin"))
        let s = try DatasetLoader.load(name: "cifar10", directory: dir)
        #expect(s.train.count == n && s.test.count == 5 && s.train.imageShape == [32, 32, 3])
        #expect(s.train.labels == labels)
        for i in stride(from: 0, to: images.count, by: 97) { #expect(abs(s.train.images[i] - images[i]) < 1e-6) }
    }

    @Test func rejectsMalformedFiles() {
        #expect(throws: CIFAR10.Error.empty) { try CIFAR10.parse([]) }
        #expect(throws: CIFAR10.Error.partialRecord(bytes: 3000)) { try CIFAR10.parse([UInt8](repeating: 0, count: 3000)) }
        var b = [UInt8](repeating: 0, count: 2 * 3073)
        b[3073] = 10
        #expect(throws: CIFAR10.Error.badLabel(record: 1, label: 10)) { try CIFAR10.parse(b) }
    }
}

@Suite struct JSONParserTests {
    @Test func parsesAndRejects() throws {
        let v = try StrictJSONParser.parse(Array(#"{"a":[1,-2,3.5e1,"x\u00e9\n"],"b":{"c":true,"d":null}}"#.utf8))
        #expect(v["a"] == .array([.int(1), .int(-2), .double(35), .string("xé\n")]))
        for bad in [#"{"a":1,"a":2}"#, #"{"a":1"#, #"[1,]"#, #"{"a":1} x"#, "\"\u{1}\"", #""\ud800""#, "[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]", "", "01x"] {
            #expect(throws: JSONParseError.self, "\(bad)") { try StrictJSONParser.parse(Array(bad.utf8)) }
        }
    }
}
