// deepring-fuzz — DeepRing's parsers under libFuzzer, or inputs replayed through them.
//
//     deepring-fuzz --list                        the targets
//     deepring-fuzz TARGET --write-seeds DIR      write the target's valid seed inputs into DIR
//     deepring-fuzz TARGET [libFuzzer options…]   fuzz (a build made by scripts/fuzz.sh, linked with libFuzzer)
//     deepring-fuzz TARGET FILE…                  replay inputs (any build)
//
// libFuzzer is found at run time (`LLVMFuzzerRunDriver`), so the same source builds as a plain replayer.
import DeepRingFuzz
import Foundation
#if canImport(Glibc)
import Glibc
#endif

typealias Callback = @convention(c) (UnsafePointer<UInt8>?, Int) -> CInt
typealias Driver = @convention(c) (UnsafeMutablePointer<CInt>, UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?>, Callback) -> CInt

nonisolated(unsafe) var selected: FuzzTarget?

func usage() -> Never {
    FileHandle.standardError.write(Data("usage: deepring-fuzz --list | TARGET --write-seeds DIR | TARGET [libFuzzer options] | TARGET FILE…\n".utf8))
    exit(2)
}

let args = CommandLine.arguments
guard args.count >= 2 else { usage() }
if args[1] == "--list" {
    for t in FuzzTargets.all { print(t.name.padding(toLength: 18, withPad: " ", startingAt: 0) + t.summary) }
    exit(0)
}
guard let target = FuzzTargets.named(args[1]) else {
    FileHandle.standardError.write(Data("unknown target \(args[1]); `deepring-fuzz --list` shows them\n".utf8))
    exit(2)
}
selected = target
if args.count == 4 && args[2] == "--write-seeds" {
    try FileManager.default.createDirectory(atPath: args[3], withIntermediateDirectories: true)
    for (i, s) in target.seeds().enumerated() {
        try Data(s).write(to: URL(fileURLWithPath: args[3] + "/seed-\(i)"))
    }
    exit(0)
}
if let sym = dlsym(nil, "LLVMFuzzerRunDriver") {   // RTLD_DEFAULT: the program and its libraries
    let driver = unsafeBitCast(sym, to: Driver.self)
    // libFuzzer parses the rest of the command line; the target name is ours.
    var cargs: [UnsafeMutablePointer<CChar>?] = ([args[0]] + args.dropFirst(2)).map { strdup($0) } + [nil]
    var argc = CInt(cargs.count - 1)
    let rc = cargs.withUnsafeMutableBufferPointer { buf -> CInt in
        var argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>? = buf.baseAddress
        return driver(&argc, &argv) { data, size in
            selected?.run(size == 0 ? [] : Array(UnsafeBufferPointer(start: data, count: size)))
            return 0
        }
    }
    exit(rc)
}
// A plain build: replay the given files (or directories of files).
guard args.count >= 3 else { usage() }
var n = 0
for path in args.dropFirst(2) {
    var isDir: ObjCBool = false
    let files = FileManager.default.fileExists(atPath: path, isDirectory: &isDir) && isDir.boolValue
        ? ((try? FileManager.default.contentsOfDirectory(atPath: path)) ?? []).sorted().map { path + "/" + $0 } : [path]
    for f in files {
        guard let d = FileManager.default.contents(atPath: f) else { continue }
        target.run([UInt8](d))
        n += 1
    }
}
print("replayed \(n) input\(n == 1 ? "" : "s") through \(target.name)")
