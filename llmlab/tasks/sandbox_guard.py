"""The guard both sandbox mechanisms run before the untrusted program, inside the sandbox.

Never imported: sandbox_bwrap.py reads this file and passes its text to `python -I -S -c`.
It sets the limits that must be set inside the sandbox, then guards that block sockets and
writes outside the cwd, then runs the program. argv: program path, RLIMIT_NPROC (0: keep).
"""

import builtins
import io
import os
import resource
import socket
import sys

if int(sys.argv[2]):
    resource.setrlimit(resource.RLIMIT_NPROC, (int(sys.argv[2]), int(sys.argv[2])))
_root = os.path.realpath(os.getcwd())
def _inside(p):
    try:
        p = os.fspath(p)
    except TypeError:
        return True  # file descriptors: already opened under these rules
    if isinstance(p, bytes):
        p = os.fsdecode(p)
    p = os.path.realpath(p)
    return p == _root or p.startswith(_root + os.sep)
def _deny(*a, **k):
    raise PermissionError("sandbox: network access is disabled")
class _NoSocket(socket.socket):
    def __init__(self, *a, **k):
        _deny()
socket.socket = _NoSocket
socket.create_connection = _deny
socket.socketpair = _deny
_open = builtins.open
def _guarded_open(file, mode="r", *a, **k):
    if any(c in mode for c in "wax+") and not _inside(file):
        raise PermissionError(f"sandbox: writing outside the sandbox directory: {file!r}")
    return _open(file, mode, *a, **k)
builtins.open = io.open = _guarded_open
_os_open = os.open
_W = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
def _guarded_os_open(path, flags, *a, **k):
    if flags & _W and not _inside(path):
        raise PermissionError(f"sandbox: writing outside the sandbox directory: {path!r}")
    return _os_open(path, flags, *a, **k)
os.open = _guarded_os_open
def _guard_path(fn, n=1):
    def g(*a, **k):
        if not all(_inside(x) for x in a[:n]):
            raise PermissionError(f"sandbox: {fn.__name__} outside the sandbox directory")
        return fn(*a, **k)
    return g
for _n, _k in (("remove", 1), ("unlink", 1), ("rmdir", 1), ("mkdir", 1), ("makedirs", 1),
               ("rename", 2), ("replace", 2), ("chmod", 1), ("truncate", 1), ("symlink", 2),
               ("link", 2)):
    if hasattr(os, _n):
        setattr(os, _n, _guard_path(getattr(os, _n), _k))
del _n, _k
sys.argv = [sys.argv[1]]
_src = _open(sys.argv[0], encoding="utf-8").read()
_g = {"__name__": "__main__", "__file__": sys.argv[0], "__builtins__": builtins}
exec(compile(_src, sys.argv[0], "exec"), _g)
