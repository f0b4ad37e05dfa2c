"""A Python that imports torch once and then runs each script it is sent in a fresh fork of
itself: the error table runs some fifty scripts that each fail within a second, after a torch
import that takes longer than that. A fork is a new process, so each script sees what
`python script.py ...` would: its own modules, exit code, stdout and stderr.

Reads one JSON request a line, [args, cwd, stdout_path, stderr_path]; answers each with the
exit code. Used by conftest.run_script(..., warm=True)."""
import atexit
import json
import os
import runpy
import sys
import traceback

import numpy  # noqa: F401 (imported for the forks: the slow imports, done once)
import tiktoken  # noqa: F401
import torch  # noqa: F401 (no tensor op runs here, so the forks start with no thread pools to inherit)


def run(args, cwd, stdout_path, stderr_path):
    """In the fork: become `python <args>` run in `cwd`, then exit as it would."""
    os.chdir(cwd)
    os.dup2(os.open(os.devnull, os.O_RDONLY), 0)  # stdin is the requests' pipe: not the script's to read
    for fd, path in ((1, stdout_path), (2, stderr_path)):
        os.dup2(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), fd)
    sys.argv = list(args)
    sys.path[0] = os.path.dirname(os.path.abspath(args[0]))
    code = 0
    try:
        runpy.run_path(args[0], run_name="__main__")
    except SystemExit as e:  # as the interpreter reads it: None is 0, a number is itself, anything else is printed
        if e.code is None or isinstance(e.code, int):
            code = e.code or 0
        else:
            print(e.code, file=sys.stderr)
            code = 1
    except BaseException:
        traceback.print_exc()
        code = 1
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


for line in sys.stdin:
    request = json.loads(line)
    pid = os.fork()
    if pid == 0:
        run(*request)
    _, status = os.waitpid(pid, 0)
    print(os.waitstatus_to_exitcode(status), flush=True)
