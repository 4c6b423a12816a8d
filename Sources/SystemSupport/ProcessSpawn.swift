#if canImport(Glibc)
import Glibc
#endif

/// Starting programs with `posix_spawnp`, for the agent and the lab alike: each child gets an
/// empty signal mask and default signal dispositions (the async runtime's threads block
/// signals, and a child inheriting that mask would ignore SIGTERM and never reap its own
/// children), and optionally a session of its own, so it outlives its parent's terminal.
public enum ProcessSpawn {
    public struct Failure: Error, CustomStringConvertible {
        public let program: String
        public let errno: Int32
        public var description: String { "cannot run \(program): \(String(cString: strerror(errno)))" }
    }

    /// Starts `args`. `output`: standard input from /dev/null, standard output and error
    /// appended to this file; nil: the child shares this process's. `newSession`: setsid.
    public static func spawn(_ args: [String], output: String?, newSession: Bool) throws(Failure) -> pid_t {
        var attr = posix_spawnattr_t()
        posix_spawnattr_init(&attr)
        defer { posix_spawnattr_destroy(&attr) }
        var empty = sigset_t()
        sigemptyset(&empty)
        var all = sigset_t()
        sigfillset(&all)
        posix_spawnattr_setsigmask(&attr, &empty)
        posix_spawnattr_setsigdefault(&attr, &all)
        var flags = Int32(POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF)
        // POSIX_SPAWN_SETSID (glibc 2.26+), not exported to Swift.
        if newSession { flags |= 0x80 }
        posix_spawnattr_setflags(&attr, Int16(flags))
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        if let output {
            posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
            posix_spawn_file_actions_addopen(&actions, 1, output, O_WRONLY | O_CREAT | O_APPEND, 0o644)
            posix_spawn_file_actions_adddup2(&actions, 1, 2)
        }
        let argv = args.map { strdup($0) } + [nil]
        defer { for arg in argv { free(arg) } }
        var pid: pid_t = 0
        let rc = posix_spawnp(&pid, args[0], &actions, &attr, argv, environ)
        guard rc == 0 else { throw Failure(program: args[0], errno: rc) }
        return pid
    }

    /// Starts `args` in a session of its own (setsid, so its process group can be signalled as
    /// one), for a caller that reads what it prints: standard input from /dev/null, standard
    /// output and error both on `outputFD` (a pipe's write end: the caller closes its own copy
    /// once this returns), and exactly `environment` (`KEY=value` each) as its environment.
    /// `args[0]` is looked up in this process's PATH, not in `environment`'s.
    ///
    /// `directory`: the child starts there. Glibc declares `posix_spawn_file_actions_addchdir_np`
    /// only under `_GNU_SOURCE`, which Swift's Glibc module is not built with, so `/bin/sh` enters
    /// the directory and then `exec`s `args` (looked up in `environment`'s PATH); a directory it
    /// cannot enter ends the child with status 126.
    public static func spawn(
        _ args: [String],
        outputFD: Int32,
        directory: String?,
        environment: [String]
    ) throws(Failure) -> pid_t {
        guard let program = args.first else { throw Failure(program: "", errno: EINVAL) }
        var command = args
        if let directory { command = ["/bin/sh", "-c", "cd \"$0\" || exit 126; exec \"$@\"", directory] + args }
        var attr = posix_spawnattr_t()
        posix_spawnattr_init(&attr)
        defer { posix_spawnattr_destroy(&attr) }
        var empty = sigset_t()
        sigemptyset(&empty)
        var all = sigset_t()
        sigfillset(&all)
        posix_spawnattr_setsigmask(&attr, &empty)
        posix_spawnattr_setsigdefault(&attr, &all)
        // POSIX_SPAWN_SETSID (glibc 2.26+), not exported to Swift.
        let flags = Int32(POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF) | 0x80
        posix_spawnattr_setflags(&attr, Int16(flags))
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_adddup2(&actions, outputFD, 1)
        posix_spawn_file_actions_adddup2(&actions, outputFD, 2)
        let argv = command.map { strdup($0) } + [nil]
        defer { for arg in argv { free(arg) } }
        let envp = environment.map { strdup($0) } + [nil]
        defer { for variable in envp { free(variable) } }
        var pid: pid_t = 0
        let rc = posix_spawnp(&pid, command[0], &actions, &attr, argv, envp)
        guard rc == 0 else { throw Failure(program: program, errno: rc) }
        return pid
    }
}
