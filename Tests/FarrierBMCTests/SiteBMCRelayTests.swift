import FarrierBMC
import FarrierCore
import Foundation
import Testing

/// The region's end of the sites' BMC channels, on its own: which channel a job goes down, and
/// what a caller gets when the answer comes, never comes, or its channel closes.
@Suite struct SiteBMCRelayTests {
    let reference = try! BMCReference(url: "ipmi://admin@10.0.0.9:623")

    func perform(
        _ relay: SiteBMCRelay,
        site: String = "s1",
        _ operation: BMCOperation = .powerState
    ) async throws
        -> BMCOutcome
    {
        try await relay.perform(site: site, machineID: "m", reference: reference, password: "pw", operation: operation)
    }

    /// The next job sent down `jobs` (bounded: 30 s, only against a hang: on a busy machine the
    /// task that sends it may wait its turn for seconds).
    func next(_ jobs: AsyncStream<BMCRelayJob>) async throws -> BMCRelayJob {
        try await withThrowingTaskGroup(of: BMCRelayJob?.self) { group in
            group.addTask {
                var it = jobs.makeAsyncIterator()
                return await it.next()
            }
            group.addTask {
                try await Task.sleep(for: .seconds(30))
                return nil
            }
            defer { group.cancelAll() }
            guard let job = try await group.next() ?? nil else {
                throw BMCError(.timeout, address: "site channel", "no job came down the site's channel within 30 s")
            }
            return job
        }
    }

    @Test func jobsGoRoundRobinToTheSitesChannelsAndTheirAnswersComeBack() async throws {
        let relay = SiteBMCRelay(timeout: .seconds(10))
        let (a, jobsA) = await relay.open(site: "s1")
        let (b, jobsB) = await relay.open(site: "s1")
        let (_, jobsOther) = await relay.open(site: "s2")
        #expect(await relay.channelCount(site: "s1") == 2)
        async let first = perform(relay, .power(.cycle))
        let j1 = try await next(jobsA)
        #expect(j1.operation == .power(.cycle) && j1.password == "pw" && j1.reference == reference)
        await relay.answer(j1.id, from: a, .success(.done))
        #expect(try await first == .done)
        async let second = perform(relay)
        let j2 = try await next(jobsB)
        // An answer from another channel is not the job's.
        await relay.answer(j2.id, from: a, .success(.powerState(.off)))
        #expect(await relay.isPending(j2.id))
        await relay.answer(j2.id, from: b, .success(.powerState(.on)))
        #expect(try await second == .powerState(.on))
        // Nothing went to the other site.
        await relay.close(a)
        await relay.close(b)
        #expect(await relay.channelCount(site: "s1") == 0)
        _ = jobsOther
    }

    @Test func anUnansweredJobFailsAloneAsATimeoutAndAClosedChannelFailsWhatItCarried() async throws {
        let relay = SiteBMCRelay(timeout: .milliseconds(300))
        let (channel, jobs) = await relay.open(site: "s1")
        async let slow = perform(relay)
        let j1 = try await next(jobs)
        do {
            _ = try await slow
            Issue.record("an unanswered job succeeded")
        } catch let e as BMCError {
            #expect(e.kind == .timeout && e.address == "10.0.0.9:623", "\(e)")
        }
        #expect(await !relay.isPending(j1.id))
        // The channel stays open: the next job on it is answered.
        #expect(await relay.channelCount(site: "s1") == 1)
        // Answered within the relay's 300 ms; under a loaded parallel run the answer can lose that
        // race and the job time out instead, so a few jobs are tried (bounded) until one is answered.
        var answered: BMCError?
        for _ in 0..<5 where answered == nil {
            async let next2 = perform(relay, .bootOverride)
            let j2 = try await next(jobs)
            await relay.answer(j2.id, from: channel, .failure(BMCError.authenticationFailed("10.0.0.9:623")))
            do {
                _ = try await next2
                Issue.record("a refused job succeeded")
                break
            } catch let e as BMCError where e.kind == .timeout {
                continue
            } catch let e as BMCError {
                answered = e
            }
        }
        #expect(answered?.kind == .authenticationFailed, "\(String(describing: answered))")
        // Closed with a job in flight: it fails as the site's, not the BMC's.
        let relay2 = SiteBMCRelay(timeout: .seconds(10))
        let (c2, jobs2) = await relay2.open(site: "s1")
        async let cut = perform(relay2)
        _ = try await next(jobs2)
        await relay2.close(c2)
        do {
            _ = try await cut
            Issue.record("a job on a closed channel succeeded")
        } catch let away as SiteLinkAway {
            #expect(away.site == "s1" && away.inFlight)
        }
        #expect(await relay2.lostCount(machineID: "m") == 0, "a lost reading is asked again, as a new job")
        // And with no channel, at once.
        do {
            _ = try await perform(relay2)
            Issue.record("a job with no channel succeeded")
        } catch let away as SiteLinkAway {
            #expect(!away.inFlight)
        }
    }

    /// A changing operation in a retry scope whose answer was lost (its channel closed, it
    /// timed out) goes again under its job's id when retried in that scope, so the site answers
    /// it as before instead of doing it twice; a retry that finds the site away keeps it for the
    /// next; outside a scope, or in another, an operation is a new job.
    @Test func aLostChangingJobIsSentAgainUnderItsIDInItsScope() async throws {
        let relay = SiteBMCRelay(timeout: .seconds(20))
        @Sendable func perform(
            _ operation: BMCOperation,
            scope: String?,
            on relay: SiteBMCRelay
        ) async throws -> BMCOutcome {
            try await relay.perform(
                site: "s1",
                machineID: "m",
                reference: reference,
                password: "pw",
                operation: operation,
                scope: scope
            )
        }
        let (a, jobsA) = await relay.open(site: "s1")
        async let cut = perform(.power(.cycle), scope: "step 1", on: relay)
        let j1 = try await next(jobsA)
        await relay.close(a)
        do {
            _ = try await cut
            Issue.record("a job on a closed channel succeeded")
        } catch is SiteLinkAway {}
        #expect(await relay.lostCount(machineID: "m") == 1)
        // Retried while the site is away: refused at once, and still kept for the next retry.
        do {
            _ = try await perform(.power(.cycle), scope: "step 1", on: relay)
            Issue.record("a job with no channel succeeded")
        } catch let away as SiteLinkAway {
            #expect(!away.inFlight)
        }
        #expect(await relay.lostCount(machineID: "m") == 1)
        let (b, jobsB) = await relay.open(site: "s1")
        // Another request (no scope, or another scope) is a new job, and leaves the lost one be.
        for scope in [nil, "step 2"] {
            async let other = perform(.power(.cycle), scope: scope, on: relay)
            let j = try await next(jobsB)
            #expect(j.id != j1.id)
            await relay.answer(j.id, from: b, .success(.done))
            _ = try await other
        }
        #expect(await relay.lostCount(machineID: "m") == 1)
        // The retry in its scope: the lost job's id.
        async let again = perform(.power(.cycle), scope: "step 1", on: relay)
        let j2 = try await next(jobsB)
        #expect(j2.id == j1.id && j2.operation == .power(.cycle))
        await relay.answer(j2.id, from: b, .success(.done))
        #expect(try await again == .done)
        #expect(await relay.lostCount(machineID: "m") == 0)
        // Another cycle in that scope after it was answered is a new job.
        async let third = perform(.power(.cycle), scope: "step 1", on: relay)
        let j3 = try await next(jobsB)
        #expect(j3.id != j1.id)
        await relay.answer(j3.id, from: b, .success(.done))
        _ = try await third
        // A timed-out one too, with a reading between (a relay of its own with a short
        // timeout: only the ids are checked, not answers that could come late under load).
        let quick = SiteBMCRelay(timeout: .milliseconds(300))
        let (_, jobsQ) = await quick.open(site: "s1")
        async let slow = perform(.setBootOverride(BootOverride(device: .pxe)), scope: "step 1", on: quick)
        let j4 = try await next(jobsQ)
        do {
            _ = try await slow
            Issue.record("an unanswered job succeeded")
        } catch is BMCError {}
        async let reading = perform(.powerState, scope: "step 1", on: quick)
        let j5 = try await next(jobsQ)
        #expect(j5.id != j4.id)
        _ = try? await reading
        async let retried = perform(.setBootOverride(BootOverride(device: .pxe)), scope: "step 1", on: quick)
        let j6 = try await next(jobsQ)
        #expect(j6.id == j4.id)
        _ = try? await retried
        // A lost job without a scope is not kept.
        async let unscoped = perform(.power(.off), scope: nil, on: relay)
        _ = try await next(jobsB)
        await relay.close(b)
        do {
            _ = try await unscoped
            Issue.record("a job on a closed channel succeeded")
        } catch is SiteLinkAway {}
        #expect(await relay.lostCount(machineID: "m") == 0)
    }
}
