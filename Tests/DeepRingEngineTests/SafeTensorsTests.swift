import DeepRingEngine
import Foundation
import Testing

@Suite struct SafeTensorsTests {
    func header(_ json: String, data: Int) -> [UInt8] {
        let h = Array(json.utf8)
        var out = [UInt8]()
        for k in 0..<8 { out.append(UInt8(truncatingIfNeeded: UInt64(h.count) >> (8 * UInt64(k)))) }
        return out + h + [UInt8](repeating: 0, count: data)
    }

    @Test func roundTripsTensorsAndMetadata() throws {
        let a: [Float] = [1, 2, 3, 4, 5, 6], b: [Float] = [-0.5]
        let bytes = SafeTensors.serialize([("a", [2, 3], a[...]), ("b \"q\"", [1], b[...])], metadata: ["k": "v\n"])
        #expect(bytes.count % 4 == 0)
        let st = try SafeTensors.parse(bytes)
        #expect(st.metadata == ["k": "v\n"])
        #expect(try st.floats("a") == a)
        #expect(try st.floats("b \"q\"") == b)
        #expect(st.entry("a")?.shape == [2, 3])
    }

    @Test func rejectsHostileHeaders() {
        let cases: [(String, [UInt8])] = [
            ("too short", [1, 2, 3]),
            ("huge header length", [0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x7F, 0x7B]),
            ("truncated header", [100, 0, 0, 0, 0, 0, 0, 0] + Array("{}".utf8)),
            ("not json", header("{nope", data: 0)),
            ("not an object", header("[1]", data: 0)),
            ("duplicate names", header(#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#, data: 4)),
            ("out of range", header(#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#, data: 4)),
            ("shape/bytes mismatch", header(#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,4]}}"#, data: 4)),
            ("overflowing shape", header(#"{"a":{"dtype":"F32","shape":[4294967296,4294967296,4294967296],"data_offsets":[0,4]}}"#, data: 4)),
            ("negative dim", header(#"{"a":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}}"#, data: 4)),
            ("overlap", header(#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}"#, data: 8)),
            ("gap", header(#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}"#, data: 8)),
            ("trailing data", header(#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#, data: 8)),
            ("unknown dtype", header(#"{"a":{"dtype":"F31","shape":[1],"data_offsets":[0,4]}}"#, data: 4)),
            ("reversed offsets", header(#"{"a":{"dtype":"F32","shape":[0],"data_offsets":[4,0]}}"#, data: 4)),
            ("metadata not strings", header(#"{"__metadata__":{"a":1}}"#, data: 0)),
        ]
        for (name, bytes) in cases {
            #expect(throws: SafeTensors.Error.self, "\(name)") { try SafeTensors.parse(bytes) }
        }
    }

    @Test func modelFilesRoundTripBitExactly() throws {
        let m = try Model(.vgg19(inputShape: [32, 32, 1], classes: 10, widthDivisor: 16), seed: 2)
        let bytes = ModelFile.serialize(m)
        let (m2, meta) = try ModelFile.load(bytes: bytes)
        #expect(m2.architecture == m.architecture)
        #expect(meta[ModelFile.architectureKey] != nil)
        #expect(m2.parameters.values.map(\.bitPattern) == m.parameters.values.map(\.bitPattern))
        // The data section is exactly the contiguous parameter buffer.
        let st = try SafeTensors.parse(bytes)
        #expect(st.data == m.parameters.values.withUnsafeBytes { Array($0) })
        let x = Tensor(shape: [2, 32, 32, 1], data: randomFloats(2048, seed: 1))
        #expect(bitPatterns(m.forward(x)) == bitPatterns(m2.forward(x)))
    }

    @Test func rejectsHostileModelFiles() throws {
        let m = try Model(.mlp(inputShape: [4], classes: 2, hidden: [3]))
        let good = ModelFile.serialize(m)
        let st = try SafeTensors.parse(good)
        // Architecture that would need an enormous allocation.
        var huge = m.architecture
        huge.layers[0] = .dense(1 << 20)
        huge.inputShape = [1 << 20]
        let enc = try String(decoding: JSONEncoder().encode(huge), as: UTF8.self)
        var meta = st.metadata
        meta[ModelFile.architectureKey] = enc
        let hostile = SafeTensors.serialize(st.entries.map { e in (e.name, e.shape, ArraySlice(try! st.floats(e.name))) }, metadata: meta)
        #expect(throws: ModelFileError.self) { try ModelFile.load(bytes: hostile) }
        // Missing architecture, wrong shape, missing tensor, truncated file.
        let noArch = SafeTensors.serialize([("x", [1], [1][...])])
        #expect(throws: ModelFileError.self) { try ModelFile.load(bytes: noArch) }
        let wrongShape = SafeTensors.serialize(st.entries.map { e in (e.name, e.name == "layers.0.weight" ? [3, 4] : e.shape, ArraySlice(try! st.floats(e.name))) }, metadata: st.metadata)
        #expect(throws: ModelFileError.self) { try ModelFile.load(bytes: wrongShape) }
        let missing = SafeTensors.serialize(st.entries.dropLast().map { e in (e.name, e.shape, ArraySlice(try! st.floats(e.name))) }, metadata: st.metadata)
        #expect(throws: ModelFileError.self) { try ModelFile.load(bytes: missing) }
        #expect(throws: ModelFileError.self) { try ModelFile.load(bytes: Array(good.dropLast(3))) }
        var badArch = st.metadata
        badArch[ModelFile.architectureKey] = #"{"name":"x","inputShape":[4],"classes":2,"layers":[{"type":"dense","units":-3}]}"#
        let neg = SafeTensors.serialize(st.entries.map { e in (e.name, e.shape, ArraySlice(try! st.floats(e.name))) }, metadata: badArch)
        #expect(throws: ModelFileError.self) { try ModelFile.load(bytes: neg) }
    }

    /// A file written by the Python `safetensors` library (Tests/DeepRingEngineTests/Fixtures, made by
    /// Fixtures/make_fixture.py) loads here.
    @Test func readsAFileWrittenByPythonSafetensors() throws {
        let path = packageRoot.appendingPathComponent("Tests/DeepRingEngineTests/Fixtures/python_mlp.safetensors").path
        let (m, meta) = try ModelFile.load(path: path)
        #expect(meta["written_by"] == "python safetensors")
        #expect(m.architecture.layers.count == 3)
        let w = m.parameters.tensor(m.parameters.view(named: "layers.0.weight")!)
        #expect(w.shape == [4, 3])
        #expect(w.data == (0..<12).map { Float($0) * 0.25 - 1 })
    }

    /// Our files load with the Python `safetensors` library, when Python has it (CI installs it).
    @Test func pythonSafetensorsReadsOurFile() throws {
        let probe = Process()
        probe.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        probe.arguments = ["python3", "-c", "import safetensors, numpy"]
        probe.standardError = FileHandle.nullDevice
        guard (try? probe.run()) != nil else { return }
        probe.waitUntilExit()
        guard probe.terminationStatus == 0 else {
            print("skipped: python3 with safetensors and numpy is not installed (pip install safetensors numpy)")
            return
        }
        let m = try Model(.mlp(inputShape: [5], classes: 3, hidden: [4]), seed: 9)
        let file = temporaryDirectory() + "/m.safetensors"
        try ModelFile.save(m, to: file)
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        p.arguments = ["python3", packageRoot.appendingPathComponent("Tests/DeepRingEngineTests/Fixtures/check_safetensors.py").path, file]
        let pipe = Pipe()
        p.standardOutput = pipe
        try p.run()
        let out = String(decoding: pipe.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        p.waitUntilExit()
        #expect(p.terminationStatus == 0)
        let sum = m.parameters.values.reduce(0.0) { $0 + Double($1) }
        let reported = Double(out.split(separator: " ").last.map { String($0).trimmingCharacters(in: .whitespacesAndNewlines) } ?? "") ?? .nan
        #expect(abs(reported - sum) < 1e-4, "python read sum \(out), expected \(sum)")
    }
}
