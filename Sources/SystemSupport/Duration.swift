extension Duration {
    /// Whole nanoseconds, clamped to `0...Int64.max`: for timers (NIO's `TimeAmount`,
    /// `poll(2)`), where a negative or enormous duration means "now" or "never".
    public var nanosecondsClamped: Int64 {
        let (s, a) = components
        if s >= Int64.max / 1_000_000_000 { return .max }
        return max(0, s * 1_000_000_000 + a / 1_000_000_000)
    }
}
