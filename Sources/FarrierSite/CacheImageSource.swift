import FarrierHTTP

/// `/images/<sha256>` at a site: from its cache, pulled from the region the first time. The
/// file stays leased (not evicted) until its response is sent or cut off.
public struct CacheImageSource: ImageSource {
    public let cache: SiteCache

    public init(cache: SiteCache) { self.cache = cache }

    public func open(_ name: String) async throws -> ImageFile? {
        let lease: SiteCache.Lease
        do {
            lease = try await cache.acquire(name)
        } catch SiteCache.Failure.notFound {
            return nil
        }
        let cache = cache
        return ImageFile(path: lease.path, size: lease.size, release: { await cache.release(lease) })
    }
}
