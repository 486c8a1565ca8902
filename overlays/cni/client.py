"""The thin client: what a runtime execs as ``overlays-cni`` (the launcher ``overlays cni install`` writes).

Design note. A Python process costs ~10 ms to start bare (``python -I -S``), the site
and the imports of one ADD ~80 ms more, and a Go plugin ~4 ms in all: exec'd once per
verb, a Python plugin cannot come near the reference plugins. So the verbs are served
by a resident process of ours (``server``), and what the runtime execs is only this
module, copied into the launcher after a ``#!python -I -S`` line: it reads stdin and
the ``CNI_*`` variables, hands them to the server over a unix socket, and writes out
the answer and the exit code the server sends back. It imports built-in modules only
(``sys``, ``posix``, ``_socket``: no site, no package), so it costs the interpreter's
start and little more.

Crash-safe: a client that finds no server (none started yet, it exited, it died, or
it hung up without an answer) does the work itself, in this process, with the
package's path the launcher names (``one_shot``), and then starts a server for the
calls that follow. The server lives while CNI attachments do (see ``server``).

The socket is an abstract one, named by the install (version and package path) and
the client's mount and PID namespaces; and, like every abstract socket, it belongs
to a network namespace, so a client reaches only the server of the network
namespace it runs in, which is where the CNI says a plugin works. Only root may use
it (the server checks the peer's credentials).

Wire format (both ways one message, then the writer shuts its side down):
request ``len(env) len(stdin)`` (4 bytes each, big-endian), the ``CNI_*`` variables as
``KEY=VALUE`` joined by NUL, stdin; answer: the exit code (1 byte), ``len(stdout)``
(4 bytes), stdout, and the rest is what goes to stderr.
"""

import _socket
import posix
import sys

TIMEOUT = 120.0  # seconds: a verb takes milliseconds, so a server this slow is wedged (runtimes give up sooner)
PREFIX = b"CNI_"


def address(install: str) -> bytes:
    """The server's abstract socket for this install, in this mount and PID namespace."""
    mnt, pid = (posix.stat(f"/proc/self/ns/{ns}").st_ino for ns in ("mnt", "pid"))
    return f"\0overlays-cni/{install}/{mnt}/{pid}".encode()


def encode_request(env: dict[bytes, bytes], stdin: bytes) -> bytes:
    blob = b"\0".join(key + b"=" + value for key, value in sorted(env.items()))
    return len(blob).to_bytes(4, "big") + len(stdin).to_bytes(4, "big") + blob + stdin


def decode_request(data: bytes) -> tuple[dict[str, str], bytes] | None:
    """(environment, stdin) of a request; None if it is not one."""
    if len(data) < 8:
        return None
    n_env, n_stdin = int.from_bytes(data[:4], "big"), int.from_bytes(data[4:8], "big")
    if len(data) != 8 + n_env + n_stdin:
        return None
    env = {}
    for item in data[8:8 + n_env].split(b"\0") if n_env else []:
        key, sep, value = item.partition(b"=")
        if not sep or not key.startswith(PREFIX):
            return None
        env[key.decode(errors="replace")] = value.decode(errors="replace")
    return env, data[8 + n_env:]


def encode_answer(code: int, stdout: bytes, stderr: bytes) -> bytes:
    return bytes([code & 0xFF]) + len(stdout).to_bytes(4, "big") + stdout + stderr


def decode_answer(data: bytes) -> tuple[int, bytes, bytes] | None:
    if len(data) < 5 or len(data) < 5 + int.from_bytes(data[1:5], "big"):
        return None  # the server hung up halfway
    n = int.from_bytes(data[1:5], "big")
    return data[0], data[5:5 + n], data[5 + n:]


def receive_all(sock: _socket.socket) -> bytes:
    chunks: list[bytes] = []
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


def ask(where: bytes, request: bytes) -> tuple[int, bytes, bytes] | None:
    """The server's answer, or None if there is no server or it did not answer whole."""
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM | _socket.SOCK_CLOEXEC)
    try:
        sock.settimeout(TIMEOUT)
        sock.connect(where)
        sock.sendall(request)
        sock.shutdown(_socket.SHUT_WR)
        return decode_answer(receive_all(sock))
    except OSError:
        return None
    finally:
        sock.close()


def read_stdin() -> bytes:
    if posix.isatty(0):  # a person at a terminal: no configuration
        return b""
    chunks: list[bytes] = []
    while chunk := posix.read(0, 65536):
        chunks.append(chunk)
    return b"".join(chunks)


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[posix.write(fd, view):]


def main(install: str, paths: list[str]) -> int:
    """The launcher's body: the server's answer, else the work done here (and a server started)."""
    stdin = read_stdin()
    env = {k: v for k, v in posix.environ.items() if k.startswith(PREFIX)}
    where = address(install)
    answer = ask(where, encode_request(env, stdin))
    if answer is None:
        sys.path[:0] = paths
        try:
            from overlays.cni import main as one_shot  # the package, found through the launcher's paths
        except ImportError as e:
            why = str(e).replace("\\", "/").replace('"', "'")
            write_all(1, ('{"cniVersion": "1.0.0", "code": 100, "msg": "overlays-cni: cannot import the overlays '
                          f'package from {", ".join(paths)} ({why}): run overlays cni install again"}}\n').encode())
            return 1
        return one_shot.fallback(stdin, where, paths)
    code, stdout, stderr = answer
    write_all(1, stdout)
    write_all(2, stderr)
    return code
