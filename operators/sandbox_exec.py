"""Child program of ``Sandbox.run_code``: runs one untrusted Python script under OS limits.

Run as ``python -I sandbox_exec.py <config-json>`` in an empty temp directory; reads the source
and the script's stdin as one JSON object from fd 0. The script is model-written and NOT
validated, so this process is the whole defence: rlimits (CPU, address space, FSIZE=0, NPROC=0,
CORE=0) and an audit hook that refuses writes to files, every ``os`` mutation, process creation
and signals, sockets, every ctypes action but importing it, sqlite, mmap and rlimit changes,
and imports of modules that reach around the hook (``_posixsubprocess``, ``sqlite3``, ...). Reading files and importing ordinary
modules is allowed: generated solutions use ``math``, ``re``, ``itertools``...

Exit status: 0 ok, 1 the script raised (traceback on stderr), 3 MemoryError, killed by SIGXCPU
or SIGKILL on timeouts. Standard library only.
"""

import io
import json
import os
import resource
import sys
import traceback
import types

_BLOCKED_EVENTS = frozenset(
    """os.system os.exec os.fork os.forkpty os.posix_spawn os.spawn os.kill os.killpg os.remove os.rename
    os.rmdir os.mkdir os.symlink os.link os.chmod os.chown os.truncate os.utime os.chflags os.lchflags
    os.setxattr os.removexattr os.startfile os.add_dll_directory os.chroot
    os.mkfifo os.mknod os.setuid os.setgid os.setpgid os.setsid os.lockf os.memfd_create os.eventfd
    subprocess.Popen signal.pthread_kill resource.setrlimit resource.prlimit shutil.chown shutil.rmtree
    shutil.move shutil.copyfile shutil.copymode shutil.copystat shutil.copytree shutil.make_archive
    shutil.unpack_archive mmap.__new__ sys.addaudithook sys.remote_exec
    fcntl.ioctl fcntl.fcntl fcntl.flock fcntl.lockf pty.spawn webbrowser.open tempfile.mkstemp
    tempfile.mkdtemp""".split()
)
_BLOCKED_PREFIXES = ("socket.", "sqlite3.", "_winapi.", "winreg.", "msvcrt.", "syslog.", "urllib.",
                     "http.", "ftplib.", "smtplib.", "poplib.", "imaplib.", "nntplib.", "telnetlib.")
# Modules whose C code acts without audit events (fork_exec, dlopen, sqlite files, shm_open) or
# that only serve networking/processes. Frames, threads, signals and rlimit *reads* stay allowed:
# stdlib modules need them (typing uses sys._getframe, queue imports threading) and the hard
# rlimits, blocked events and the host's wall clock hold regardless.
_BLOCKED_MODULES = frozenset(
    "_posixsubprocess multiprocessing _multiprocessing socket _socket ssl _ssl "
    "_posixshmem sqlite3 _sqlite3 _xxsubinterpreters".split()
)
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND


def _hook(event, args):
    if event in _BLOCKED_EVENTS or event.startswith(_BLOCKED_PREFIXES):
        raise PermissionError(f"sandbox: {event} is not allowed")
    if event.startswith("ctypes.") and not (event == "ctypes.dlopen" and args[0] is None):
        # ctypes may be imported (sympy needs c_long/sizeof; the import dlopens the interpreter
        # itself), but no library can be loaded, no symbol looked up, no foreign function
        # called and no raw memory read or written.
        raise PermissionError(f"sandbox: {event} is not allowed")
    if event == "open":
        mode, flags = args[1], args[2]
        if (isinstance(mode, str) and any(c in mode for c in "wax+")) or (isinstance(flags, int) and flags & _WRITE_FLAGS):
            raise PermissionError("sandbox: writing files is not allowed")
    elif event == "import":
        root = str(args[0]).split(".")[0]
        if root in _BLOCKED_MODULES or str(args[0]) in _BLOCKED_MODULES:
            # ImportError (not PermissionError): libraries that treat such modules as optional
            # (numpy imports ctypes inside try/except ImportError) keep working.
            raise ImportError(f"sandbox: import of {args[0]} is not allowed")


def _refuse_fork_exec(*args, **kwargs):
    raise PermissionError("sandbox: creating processes is not allowed")


def main():
    config = json.loads(sys.argv[1])
    raw = b""
    while chunk := os.read(0, 1 << 20):
        raw += chunk
    job = json.loads(raw)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    cpu = max(1, int(config["cpu_s"] + 0.999))
    mem = int(config["memory_bytes"])
    limits = [(resource.RLIMIT_CPU, (cpu, cpu + 1)), (resource.RLIMIT_AS, (mem, mem)),
              (resource.RLIMIT_FSIZE, (0, 0)), (resource.RLIMIT_CORE, (0, 0)), (resource.RLIMIT_NPROC, (0, 0)),
              (resource.RLIMIT_NOFILE, (32, 32))]
    for which, value in limits:
        try:
            resource.setrlimit(which, value)
        except (ValueError, OSError):
            pass
    # Modules that could reach around the hook must not already be importable from sys.modules.
    for name in list(sys.modules):
        if name.split(".")[0] in _BLOCKED_MODULES:
            del sys.modules[name]
    # `subprocess` stays importable (sympy imports it) but its C helper is a stub that refuses:
    # _posixsubprocess.fork_exec raises no audit event of its own.
    stub = types.ModuleType("_posixsubprocess")
    stub.fork_exec = _refuse_fork_exec
    sys.modules["_posixsubprocess"] = stub
    sys.stdin = io.StringIO(job.get("stdin", ""))
    code = compile(job["source"], "<solution>", "exec")
    sys.addaudithook(_hook)
    env = {"__name__": "__main__", "__builtins__": __builtins__}
    try:
        exec(code, env)
    except SystemExit as exc:
        sys.stdout.flush()
        raise exc
    except MemoryError:
        sys.stdout.flush()
        sys.stderr.write("MemoryError\n")
        os._exit(3)
    except BaseException:  # noqa: BLE001 - report the script's own exception like python would
        sys.stdout.flush()
        traceback.print_exc()
        sys.stderr.flush()
        os._exit(1)
    sys.stdout.flush()
    sys.stderr.flush()


if __name__ == "__main__":
    main()
