import FarrierControl
import FarrierCore
import Foundation
import GRPCCore
import Logging
import NIOPosix
import SwiftProtobuf

/// `farrier.v1.ImageService`: uploads are admin only; every token may list and read images.
public struct ImageAPI: Farrier_V1_ImageService.SimpleServiceProtocol {
    let store: any StateStore
    let repository: ImageRepository
    let logger: Logger

    public init(store: any StateStore, repository: ImageRepository, logger: Logger = Logger(label: "farrier.api")) {
        self.store = store
        self.repository = repository
        self.logger = logger
    }

    public func uploadImage(
        request: RPCAsyncSequence<Farrier_V1_UploadImageRequest, any Error>,
        context: ServerContext
    ) async throws -> Farrier_V1_Image {
        _ = try Caller.admin("uploading an image")
        var iterator = request.makeAsyncIterator()
        guard let first = try await iterator.next(), case .header(let header)? = first.part else {
            throw RPCError(code: .invalidArgument, message: "the first upload message must carry the image header")
        }
        if let p = Validation.nameProblem(header.name, kind: "image") {
            throw RPCError(code: .invalidArgument, message: p)
        }
        if try await store.image(name: header.name) != nil {
            throw RPCError(
                code: .alreadyExists,
                message: "image '\(header.name)' already exists; remove it first (farrier image rm \(header.name))"
            )
        }
        let architecture =
            header.architecture.isEmpty ? Architecture.x86_64 : Architecture(rawValue: header.architecture)
        guard let architecture, architecture != .unknown else {
            throw RPCError(
                code: .invalidArgument,
                message: "unknown architecture '\(header.architecture)'; valid: x86_64, arm64, i386, arm32"
            )
        }
        let firmware = header.firmware.isEmpty ? Firmware.unknown : Firmware(rawValue: header.firmware)
        guard let firmware else {
            throw RPCError(
                code: .invalidArgument,
                message: "unknown firmware '\(header.firmware)'; valid: bios, uefi, or empty for both"
            )
        }
        guard ["raw", "raw.gz", "raw.zst", "qcow2"].contains(header.format) else {
            throw RPCError(
                code: .invalidArgument,
                message: "unknown image format '\(header.format)'; valid: raw, raw.gz, raw.zst, qcow2"
            )
        }
        if !header.sha256.isEmpty, header.sha256.count != 64 || !header.sha256.allSatisfy(\.isHexDigit) {
            throw RPCError(code: .invalidArgument, message: "sha256 must be 64 hex digits")
        }
        guard header.os.count <= Validation.maxFieldLength else {
            throw RPCError(code: .invalidArgument, message: "os is too long")
        }
        let upload = try repository.beginUpload()
        do {
            while let message = try await iterator.next() {
                guard case .chunk(let bytes)? = message.part else {
                    throw RPCError(code: .invalidArgument, message: "only the first upload message may carry a header")
                }
                // File writes, hashing and qemu-img run on NIO's thread pool, never on the
                // cooperative pool that the API and the reconciler share (docs/concurrency.md).
                try await NIOThreadPool.singleton.runIfActive { try upload.write(bytes) }
            }
            if header.size > 0, upload.size != header.size {
                throw RPCError(
                    code: .invalidArgument,
                    message: "received \(upload.size) bytes, the header said \(header.size)"
                )
            }
            let stored = try await NIOThreadPool.singleton.runIfActive { [repository] in
                try repository.commit(upload, declared: header.format, expectedSHA256: header.sha256)
            }
            let info = ImageInfo(
                name: header.name,
                sha256: stored.sha256,
                size: stored.size,
                format: stored.format,
                os: header.os.isEmpty ? header.name : header.os,
                architecture: architecture,
                firmware: firmware,
                created: Date()
            )
            try await store.addImage(info)
            logger.info(
                "image stored",
                metadata: ["image": "\(info.name)", "sha256": "\(info.sha256)", "bytes": "\(info.size)"]
            )
            return Farrier_V1_Image(info)
        } catch {
            upload.abort()
            throw error
        }
    }

    public func listImages(
        request: Farrier_V1_ListImagesRequest,
        context: ServerContext
    ) async throws -> Farrier_V1_ListImagesResponse {
        _ = try Caller.current()
        var r = Farrier_V1_ListImagesResponse()
        r.images = try await store.images().map(Farrier_V1_Image.init)
        return r
    }

    public func getImage(request: Farrier_V1_GetImageRequest, context: ServerContext) async throws -> Farrier_V1_Image {
        _ = try Caller.current()
        guard let i = try await store.image(name: request.name) else {
            throw RPCError(code: .notFound, message: "no image named '\(request.name)'")
        }
        return Farrier_V1_Image(i)
    }

    public func deleteImage(
        request: Farrier_V1_GetImageRequest,
        context: ServerContext
    ) async throws -> Farrier_V1_DeleteImageResponse {
        _ = try Caller.admin("removing an image")
        guard let i = try await store.image(name: request.name) else {
            throw RPCError(code: .notFound, message: "no image named '\(request.name)'")
        }
        _ = try await store.deleteImage(name: i.name)
        if try await !store.imageReferenced(sha256: i.sha256) { repository.remove(sha256: i.sha256) }
        logger.info("image removed", metadata: ["image": "\(i.name)"])
        return Farrier_V1_DeleteImageResponse()
    }
}

extension Farrier_V1_Image {
    init(_ i: ImageInfo) {
        self.init()
        name = i.name
        sha256 = i.sha256
        size = i.size
        format = i.format.rawValue
        os = i.os
        architecture = i.architecture.rawValue
        firmware = i.firmware == .unknown ? "" : i.firmware.rawValue
        created = Google_Protobuf_Timestamp(date: i.created)
    }
}

/// `farrier.v1.ProjectService`: admin only.
public struct ProjectAPI: Farrier_V1_ProjectService.SimpleServiceProtocol {
    let store: any StateStore

    public init(store: any StateStore) { self.store = store }

    public func createProject(
        request: Farrier_V1_CreateProjectRequest,
        context: ServerContext
    ) async throws -> Farrier_V1_Project {
        _ = try Caller.admin("creating a project")
        if let p = Validation.nameProblem(request.name, kind: "project") {
            throw RPCError(code: .invalidArgument, message: p)
        }
        guard request.description_p.count <= 1024 else {
            throw RPCError(code: .invalidArgument, message: "description is longer than 1024 characters")
        }
        for key in request.requiredTags {
            if let p = Validation.tagProblem(key: key, value: "") {
                throw RPCError(code: .invalidArgument, message: "required tag: \(p)")
            }
        }
        let wipe: WipeMode
        if request.wipePolicy.isEmpty {
            wipe = .full
        } else {
            guard let w = WipeMode(rawValue: request.wipePolicy) else {
                throw RPCError(
                    code: .invalidArgument,
                    message: "unknown wipe policy '\(request.wipePolicy)'; valid: full, quick (unsafe between tenants)"
                )
            }
            wipe = w
        }
        let p = Project(
            name: request.name,
            description: request.description_p,
            requiredTags: request.requiredTags,
            created: Date(),
            wipePolicy: wipe
        )
        try await store.createProject(p)
        return try await view(p)
    }

    func view(_ p: Project) async throws -> Farrier_V1_Project {
        Self.view(p, machines: try await store.machines().filter { $0.project == p.name }.count)
    }

    static func view(_ p: Project, machines: Int) -> Farrier_V1_Project {
        var v = Farrier_V1_Project()
        v.name = p.name
        v.description_p = p.description
        v.requiredTags = p.requiredTags
        v.wipePolicy = p.wipePolicy.rawValue
        v.created = Google_Protobuf_Timestamp(date: p.created)
        v.machineCount = Int32(machines)
        return v
    }

    public func listProjects(
        request: Farrier_V1_ListProjectsRequest,
        context: ServerContext
    ) async throws -> Farrier_V1_ListProjectsResponse {
        _ = try Caller.admin("listing projects")
        var r = Farrier_V1_ListProjectsResponse()
        var counts: [String: Int] = [:]
        for m in try await store.machines() { if let p = m.project { counts[p, default: 0] += 1 } }
        r.projects = try await store.projects().map { Self.view($0, machines: counts[$0.name] ?? 0) }
        return r
    }

    public func getProject(
        request: Farrier_V1_GetProjectRequest,
        context: ServerContext
    ) async throws -> Farrier_V1_Project {
        let caller = try Caller.current()
        // Members may read their own project (its required tags tell them how to deploy).
        guard caller.isAdmin || caller.project == request.name, let p = try await store.project(name: request.name)
        else {
            throw RPCError(code: .notFound, message: "no project named '\(request.name)'")
        }
        return try await view(p)
    }

    public func deleteProject(
        request: Farrier_V1_GetProjectRequest,
        context: ServerContext
    ) async throws -> Farrier_V1_DeleteProjectResponse {
        _ = try Caller.admin("removing a project")
        guard try await store.deleteProject(name: request.name) else {
            throw RPCError(code: .notFound, message: "no project named '\(request.name)'")
        }
        return Farrier_V1_DeleteProjectResponse()
    }
}

/// `farrier.v1.TokenService`: admin only, except WhoAmI.
public struct TokenAPI: Farrier_V1_TokenService.SimpleServiceProtocol {
    let store: any StateStore
    let logger: Logger

    public init(store: any StateStore, logger: Logger = Logger(label: "farrier.api")) {
        self.store = store
        self.logger = logger
    }

    public func createToken(
        request: Farrier_V1_CreateTokenRequest,
        context: ServerContext
    ) async throws -> Farrier_V1_CreateTokenResponse {
        let caller = try Caller.admin("creating a token")
        guard let role = Role(rawValue: request.role) else {
            throw RPCError(code: .invalidArgument, message: "unknown role '\(request.role)'; valid: admin, member")
        }
        switch role {
        case .member:
            guard !request.project.isEmpty else {
                throw RPCError(code: .invalidArgument, message: "a member token needs a project (--project NAME)")
            }
            guard try await store.project(name: request.project) != nil else {
                throw RPCError(code: .notFound, message: "no project named '\(request.project)'")
            }
        case .admin:
            guard request.project.isEmpty else {
                throw RPCError(code: .invalidArgument, message: "an admin token has no project")
            }
        }
        let name =
            request.name.isEmpty
            ? "\(role.rawValue)-\(request.project.isEmpty ? "fleet" : request.project)" : request.name
        if let p = Validation.nameProblem(name, kind: "token") { throw RPCError(code: .invalidArgument, message: p) }
        let secret = TokenSecret.generate()
        let token = APIToken(
            id: UUID().uuidString.lowercased(),
            name: name,
            role: role,
            project: role == .member ? request.project : nil,
            secretSHA256: TokenSecret.hash(secret),
            created: Date()
        )
        try await store.createToken(token)
        logger.info(
            "token created",
            metadata: ["token.id": "\(token.id)", "role": "\(role.rawValue)", "by": "\(caller.tokenName)"]
        )
        var r = Farrier_V1_CreateTokenResponse()
        r.token = Farrier_V1_Token(token)
        r.secret = secret
        return r
    }

    public func listTokens(
        request: Farrier_V1_ListTokensRequest,
        context: ServerContext
    ) async throws -> Farrier_V1_ListTokensResponse {
        _ = try Caller.admin("listing tokens")
        var r = Farrier_V1_ListTokensResponse()
        r.tokens = try await store.tokens().map(Farrier_V1_Token.init)
        return r
    }

    public func revokeToken(
        request: Farrier_V1_RevokeTokenRequest,
        context: ServerContext
    ) async throws -> Farrier_V1_RevokeTokenResponse {
        let caller = try Caller.admin("revoking a token")
        guard request.id.count >= 4 else {
            throw RPCError(code: .invalidArgument, message: "give the token id, or at least its first 4 characters")
        }
        let matches = try await store.tokens().filter { $0.id.hasPrefix(request.id.lowercased()) }
        guard let token = matches.first else {
            throw RPCError(code: .notFound, message: "no token with id '\(request.id)'")
        }
        guard matches.count == 1 else {
            throw RPCError(
                code: .invalidArgument,
                message: "'\(request.id)' matches \(matches.count) tokens; give more of the id"
            )
        }
        if token.role == .admin, try await store.tokens().filter({ $0.role == .admin }).count == 1 {
            throw RPCError(
                code: .failedPrecondition,
                message: "this is the last admin token; create another admin token first"
            )
        }
        _ = try await store.revokeToken(id: token.id)
        logger.info("token revoked", metadata: ["token.id": "\(token.id)", "by": "\(caller.tokenName)"])
        return Farrier_V1_RevokeTokenResponse()
    }

    public func whoAmI(request: Farrier_V1_WhoAmIRequest, context: ServerContext) async throws -> Farrier_V1_Token {
        let caller = try Caller.current()
        guard let t = try await store.tokens().first(where: { $0.id == caller.tokenID }) else {
            throw RPCError(code: .unauthenticated, message: "token was revoked")
        }
        return Farrier_V1_Token(t)
    }
}

extension Farrier_V1_Token {
    init(_ t: APIToken) {
        self.init()
        id = t.id
        name = t.name
        role = t.role.rawValue
        project = t.project ?? ""
        created = Google_Protobuf_Timestamp(date: t.created)
    }
}
