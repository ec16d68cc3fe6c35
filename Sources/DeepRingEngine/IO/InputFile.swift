import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// Reads files the program did not just write — model files, data sets, a ring's files, key files, query images —
/// as hostile input. A file is opened without blocking (a FIFO or a device in its place cannot stall the reader),
/// must be a regular file, and its size is checked against the caller's bound before a byte is allocated or read;
/// a file that changes size while it is read is refused.
public enum InputFile {
    public enum Error: Swift.Error, CustomStringConvertible, Equatable {
        case missing(String)
        case unreadable(String, String)
        case notRegular(String, kind: String)
        case tooLarge(String, size: Int, limit: Int)
        case changed(String)

        public var description: String {
            switch self {
            case .missing(let p): return "\(p): no such file"
            case .unreadable(let p, let why): return "\(p): cannot be read (\(why))"
            case .notRegular(let p, let k): return "\(p): is \(k), not a regular file"
            case .tooLarge(let p, let s, let l): return "\(p): is \(s) bytes, larger than the \(l)-byte limit for this file"
            case .changed(let p): return "\(p): changed while it was being read"
            }
        }

        public var path: String {
            switch self {
            case .missing(let p), .unreadable(let p, _), .notRegular(let p, _), .tooLarge(let p, _, _), .changed(let p): return p
            }
        }
    }

    /// An open regular file, checked as described above.
    public final class Handle {
        public let path: String
        public let size: Int
        public let mode: Int
        let fd: Int32

        init(path: String, fd: Int32, size: Int, mode: Int) { self.path = path; self.fd = fd; self.size = size; self.mode = mode }
        deinit { close(fd) }

        /// Reads `count` bytes from `offset` (fewer only if the file is shorter than that).
        public func read(count: Int, at offset: Int = 0) throws -> [UInt8] {
            guard count >= 0, offset >= 0 else { return [] }
            var failed = false
            let bytes = [UInt8](unsafeUninitializedCapacity: count) { buf, n in
                var off = 0
                while off < count {
                    let r = pread(fd, buf.baseAddress! + off, count - off, off_t(offset + off))
                    if r < 0 && errno == EINTR { continue }
                    if r <= 0 { failed = r < 0; break }
                    off += r
                }
                n = off
            }
            if failed { throw Error.unreadable(path, String(cString: strerror(errno))) }
            return bytes
        }

        /// The whole file; refused when its size changed since it was opened.
        public func readAll() throws -> [UInt8] {
            let b = try read(count: size)
            var st = stat()
            guard b.count == size, fstat(fd, &st) == 0, Int(st.st_size) == size else { throw Error.changed(path) }
            return b
        }
    }

    /// Opens `path` (following symbolic links) without blocking, and checks that it is a regular file of at most
    /// `limit` bytes.
    public static func open(_ path: String, limit: Int) throws -> Handle {
        let fd = Glibc.open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC)
        guard fd >= 0 else {
            let e = errno
            if e == ENOENT || e == ENOTDIR { throw Error.missing(path) }
            throw Error.unreadable(path, String(cString: strerror(e)))
        }
        var st = stat()
        guard fstat(fd, &st) == 0 else { close(fd); throw Error.unreadable(path, "fstat failed") }
        let kind = st.st_mode & S_IFMT
        guard kind == S_IFREG else {
            close(fd)
            let name: String
            switch kind {
            case S_IFDIR: name = "a directory"
            case S_IFIFO: name = "a FIFO"
            case S_IFCHR: name = "a character device"
            case S_IFBLK: name = "a block device"
            case S_IFSOCK: name = "a socket"
            default: name = "not a plain file"
            }
            throw Error.notRegular(path, kind: name)
        }
        guard st.st_size >= 0, Int(st.st_size) <= limit else {
            close(fd)
            throw Error.tooLarge(path, size: Int(st.st_size), limit: limit)
        }
        // Back to blocking reads (a regular file never blocks; the flag only mattered for the open).
        _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK)
        return Handle(path: path, fd: fd, size: Int(st.st_size), mode: Int(st.st_mode) & 0o7777)
    }

    /// The whole of a regular file of at most `limit` bytes.
    public static func read(_ path: String, limit: Int) throws -> [UInt8] {
        try open(path, limit: limit).readAll()
    }

    /// True when `path` names an existing regular file (without opening it).
    public static func isRegular(_ path: String) -> Bool {
        var st = stat()
        return stat(path, &st) == 0 && (st.st_mode & S_IFMT) == S_IFREG
    }

    /// True when `path` names an existing folder.
    public static func isDirectory(_ path: String) -> Bool {
        var st = stat()
        return stat(path, &st) == 0 && (st.st_mode & S_IFMT) == S_IFDIR
    }
}
