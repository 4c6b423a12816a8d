import FarrierCore
import Hummingbird
import Logging
import NIOPosix

/// Serves files of the boot root to Hummingbird's FileMiddleware (which brings Range, ETag and
/// conditional requests), resolving every path through `BootRoot` so nothing outside the root,
/// not even through a symlink, is ever served.
struct BootRootFileProvider: FileProvider {
    typealias FileIdentifier = String
    typealias FileAttributes = LocalFileSystem.FileAttributes

    let root: BootRoot
    let local: LocalFileSystem

    init(root: BootRoot, logger: Logger) {
        self.root = root
        self.local = LocalFileSystem(rootFolder: root.path, threadPool: .singleton, logger: logger)
    }

    func getFileIdentifier(_ path: String) -> String? { try? root.resolve(path) }

    func getAttributes(id: String) async throws -> FileAttributes? { try await local.getAttributes(id: id) }

    func loadFile(id: String, context: some RequestContext) async throws -> ResponseBody {
        try await local.loadFile(id: id, context: context)
    }

    func loadFile(id: String, range: ClosedRange<Int>, context: some RequestContext) async throws -> ResponseBody {
        try await local.loadFile(id: id, range: range, context: context)
    }
}
