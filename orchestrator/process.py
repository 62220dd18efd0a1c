"""The one module that spawns processes.

Today a command runs as a direct child with its stdout and stderr on pipes, in its own session
(its own process group, so a terminal's Ctrl-C reaches Oneshot and not the child, and cancel can
stop the whole group). A later step moves each command under a detached shim writing to spool
files; callers only see :class:`ChildProcess`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
from collections.abc import AsyncIterator, Mapping

from durable.exceptions import CommandNotFound
from durable.records import Stream

READ_SIZE = 1 << 20


class ChildProcess:
    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self._proc = proc
        self.pid = proc.pid

    async def output(self) -> AsyncIterator[tuple[Stream, bytes]]:
        """Chunks of raw output as they arrive, from both streams, until both close."""
        queue: asyncio.Queue[tuple[Stream, bytes] | None] = asyncio.Queue(maxsize=4)

        async def pump(stream: Stream, reader: asyncio.StreamReader) -> None:
            while chunk := await reader.read(READ_SIZE):
                await queue.put((stream, chunk))
            await queue.put(None)

        assert self._proc.stdout is not None and self._proc.stderr is not None
        pumps = [
            asyncio.ensure_future(pump(Stream.STDOUT, self._proc.stdout)),
            asyncio.ensure_future(pump(Stream.STDERR, self._proc.stderr)),
        ]
        try:
            open_streams = 2
            while open_streams:
                item = await queue.get()
                if item is None:
                    open_streams -= 1
                else:
                    yield item
        finally:
            for task in pumps:
                task.cancel()
            await asyncio.gather(*pumps, return_exceptions=True)

    async def wait(self) -> int:
        """The exit code; negative ``-N`` when killed by signal N."""
        return await self._proc.wait()

    @property
    def returncode(self) -> int | None:
        return self._proc.returncode

    def signal_group(self, signum: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signum)


async def spawn(
    argv: list[str], *, cwd: str | None = None, env: Mapping[str, str] | None = None
) -> ChildProcess:
    """Start ``argv`` (no shell) with piped output; raise CommandNotFound if it cannot start."""
    if not argv:
        raise CommandNotFound("", "empty command")
    program = argv[0]
    search_path = (env or os.environ).get("PATH")
    if os.sep not in program and shutil.which(program, path=search_path) is None:
        raise CommandNotFound(program, "command not found")
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            cwd=cwd,
            env=dict(env) if env is not None else None,
            start_new_session=True,
            limit=READ_SIZE,
        )
    except FileNotFoundError as exc:
        problem = "working directory not found" if cwd and not os.path.isdir(cwd) else (
            "command not found")
        raise CommandNotFound(program, problem) from exc
    except PermissionError as exc:
        raise CommandNotFound(program, "permission denied") from exc
    except OSError as exc:
        raise CommandNotFound(program, exc.strerror or str(exc)) from exc
    return ChildProcess(proc)
