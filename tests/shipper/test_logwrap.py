"""logwrap (docs/protocol.md section 2) with real processes under dash, busybox sh, and a busybox-only PATH."""

from __future__ import annotations

import os
import shutil
import signal
import stat
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from shipper.logwrap import LOGWRAP_RELATIVE_PATH, install_logwrap, logwrap_source

BUSYBOX = shutil.which("busybox")
# What the wrapper and the test commands need, as busybox applets.
APPLETS = (
    "sh",
    "cat",
    "echo",
    "env",
    "kill",
    "mkdir",
    "mkfifo",
    "mv",
    "printf",
    "rm",
    "sleep",
    "tee",
    "test",
    "true",
)
SHELLS = ("sh", "busybox sh", "busybox only")
DEADLINE = 10.0
# The signals these tests send. A process inherits ignored dispositions (a background shell
# ignores SIGINT, nohup ignores SIGHUP), and a POSIX shell cannot trap a signal ignored on entry,
# so every logwrap here starts with them at their defaults unless a test says otherwise.
TESTED_SIGNALS = (signal.SIGINT, signal.SIGHUP, signal.SIGTERM, signal.SIGQUIT)


def dispositions(ignored: tuple[signal.Signals, ...] = ()) -> Callable[[], None]:
    """A preexec_fn: the tested signals at their defaults, except `ignored`, which are ignored."""

    def reset() -> None:
        for sig in TESTED_SIGNALS:
            signal.signal(sig, signal.SIG_IGN if sig in ignored else signal.SIG_DFL)

    return reset

pytestmark = pytest.mark.timeout(60)


@dataclass
class Wrapper:
    """How to start the installed logwrap under one shell, against one volume."""

    shell: str
    script: Path
    volume: Path
    env: dict[str, str]
    prefix: list[str]

    def argv(self, name: str, *cmd: str) -> list[str]:
        return [*self.prefix, str(self.script), name, "--", *cmd]

    def run(self, name: str, *cmd: str, input: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            self.argv(name, *cmd), env=self.env, input=input, capture_output=True, timeout=30,
            preexec_fn=dispositions(),
        )

    def popen(
        self, name: str, *cmd: str, stdout: int | None = None, stderr: int | None = None,
        ignored: tuple[signal.Signals, ...] = (),
    ) -> subprocess.Popen[bytes]:
        return subprocess.Popen(self.argv(name, *cmd), env=self.env, stdout=stdout, stderr=stderr,
                                preexec_fn=dispositions(ignored))

    def log(self, name: str) -> bytes:
        return (self.volume / "logs" / f"{name}.log").read_bytes()

    def exit_file(self, name: str) -> Path:
        return self.volume / "logs" / f"{name}.exit"

    @property
    def gnu_env(self) -> bool:
        """Whether CMD can get SIGINT back (GNU env --default-signal on PATH)."""
        return self.shell != "busybox only"


@pytest.fixture(params=SHELLS)
def wrapper(request: pytest.FixtureRequest, tmp_path: Path) -> Wrapper:
    shell: str = request.param
    volume = tmp_path / "volume"
    script = install_logwrap(volume)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BLAST_LOGS_", "LOGWRAP_"))}
    env["BLAST_LOGS_DIR"] = str(volume)
    if shell == "sh":
        return Wrapper(shell, script, volume, env, ["sh"])
    if BUSYBOX is None:
        pytest.skip("busybox is not installed")
    if shell == "busybox sh":
        return Wrapper(shell, script, volume, env, [BUSYBOX, "sh"])
    bindir = tmp_path / "busybox-bin"
    bindir.mkdir()
    for applet in APPLETS:
        (bindir / applet).symlink_to(BUSYBOX)
    env["PATH"] = str(bindir)
    return Wrapper(shell, script, volume, env, [str(bindir / "sh")])


def wait_for(predicate: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + DEADLINE
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def log_has(w: Wrapper, name: str, text: bytes) -> Callable[[], bool]:
    path = w.volume / "logs" / f"{name}.log"
    return lambda: path.exists() and text in path.read_bytes()


@pytest.mark.parametrize("code", [0, 1, 3])
def test_exit_code_is_kept_and_recorded(wrapper: Wrapper, code: int) -> None:
    done = wrapper.run("blast", "sh", "-c", f"echo line; exit {code}")
    assert done.returncode == code
    assert wrapper.exit_file("blast").read_text() == f"{code}\n"
    assert wrapper.log("blast") == done.stdout == b"line\n"
    assert not [p.name for p in (wrapper.volume / "logs").iterdir() if p.name.startswith(".")]


def test_command_killed_by_a_signal_gives_128_plus_n(wrapper: Wrapper) -> None:
    done = wrapper.run("blast", "sh", "-c", "echo bye; kill -KILL $$")
    assert done.returncode == 128 + signal.SIGKILL
    assert wrapper.exit_file("blast").read_text() == "137\n"
    assert wrapper.log("blast") == done.stdout == b"bye\n"
    assert b"Killed" not in done.stderr


def _signal_when_ready(w: Wrapper, sig: int, script: str, *, first: tuple[signal.Signals, ...] = (),
                       ignored: tuple[signal.Signals, ...] = ()) -> tuple[int, bytes]:
    """Starts logwrap (with `ignored` ignored on entry), sends it `first`, then `sig`."""
    proc = w.popen("blast", "sh", "-c", script, stdout=subprocess.PIPE, ignored=ignored)
    try:
        wait_for(log_has(w, "blast", b"ready\n"), "the command to start")
        for early in first:
            proc.send_signal(early)
        proc.send_signal(sig)
        out, _ = proc.communicate(timeout=20)
    finally:
        proc.kill()
        proc.wait()
    return proc.returncode, out


def test_sigterm_is_forwarded_to_a_command_that_traps_it(wrapper: Wrapper) -> None:
    script = 'trap "echo trapped; exit 7" TERM; echo ready; while :; do sleep 0.05; done'
    code, out = _signal_when_ready(wrapper, signal.SIGTERM, script)
    assert code == 7
    assert wrapper.log("blast") == out == b"ready\ntrapped\n"
    assert wrapper.exit_file("blast").read_text() == "7\n"


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_signal_kills_a_command_that_does_not_trap_it(wrapper: Wrapper, sig: signal.Signals) -> None:
    code, out = _signal_when_ready(wrapper, sig, "echo ready; exec sleep 30")
    assert code == 128 + sig
    assert wrapper.exit_file("blast").read_text() == f"{128 + sig}\n"
    assert wrapper.log("blast") == out == b"ready\n"


def test_sigint_is_forwarded(wrapper: Wrapper) -> None:
    code, _ = _signal_when_ready(wrapper, signal.SIGINT, "echo ready; exec sleep 30")
    # A POSIX shell starts background commands with SIGINT ignored; only GNU env can undo
    # that, so without it logwrap stops the command with SIGTERM instead.
    expected = signal.SIGINT if wrapper.gnu_env else signal.SIGTERM
    assert code == 128 + expected
    assert wrapper.exit_file("blast").read_text() == f"{128 + expected}\n"


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGHUP])
def test_a_signal_ignored_on_entry_stays_ignored(wrapper: Wrapper, sig: signal.Signals) -> None:
    """README (logwrap and signals): started with SIG ignored (nohup, a background shell), logwrap
    cannot trap it (POSIX), so it neither forwards it nor dies of it; SIGTERM still stops CMD.

    Both signals are pending together when logwrap's traps run, the lower number first: had
    logwrap forwarded SIG, CMD (`sleep`, SIGINT reset by GNU env) would end of it, not of SIGTERM.
    """
    code, out = _signal_when_ready(wrapper, signal.SIGTERM, "echo ready; exec sleep 30",
                                   first=(sig,), ignored=(sig,))
    assert code == 128 + signal.SIGTERM
    assert wrapper.exit_file("blast").read_text() == f"{128 + signal.SIGTERM}\n"
    assert wrapper.log("blast") == out == b"ready\n"


def test_stdout_and_stderr_keep_their_order(wrapper: Wrapper) -> None:
    script = 'i=0; while [ $i -lt 200 ]; do echo "out $i"; echo "err $i" >&2; i=$((i+1)); done'
    done = wrapper.run("blast", "sh", "-c", script)
    expected = b"".join(b"out %d\nerr %d\n" % (i, i) for i in range(200))
    assert done.returncode == 0
    assert wrapper.log("blast") == done.stdout == expected
    assert done.stderr == b""


def test_unterminated_last_line_is_kept_byte_exact(wrapper: Wrapper) -> None:
    done = wrapper.run("blast", "printf", "a\\n\\tb \\342\\202\\254\\r\\nno newline")
    assert done.returncode == 0
    assert wrapper.log("blast") == done.stdout == b"a\n\tb \xe2\x82\xac\r\nno newline"


def test_a_second_run_appends(wrapper: Wrapper) -> None:
    first = wrapper.run("blast", "sh", "-c", "echo first; exit 4")
    second = wrapper.run("blast", "printf", "second")
    assert (first.returncode, second.returncode) == (4, 0)
    assert wrapper.log("blast") == b"first\nsecond"
    assert second.stdout == b"second"
    assert wrapper.exit_file("blast").read_text() == "0\n"


def test_exit_file_is_absent_while_the_command_runs(wrapper: Wrapper, tmp_path: Path) -> None:
    exit_file = wrapper.exit_file("blast")
    exit_file.parent.mkdir(parents=True)
    exit_file.write_text("99\n")
    go = tmp_path / "go"
    script = f'echo ready; while [ ! -e "{go}" ]; do sleep 0.02; done; echo went'
    proc = wrapper.popen("blast", "sh", "-c", script, stdout=subprocess.DEVNULL)
    try:
        wait_for(log_has(wrapper, "blast", b"ready\n"), "the command to start")
        assert not exit_file.exists()
        go.touch()
        assert proc.wait(timeout=20) == 0
    finally:
        proc.kill()
        proc.wait()
    assert exit_file.read_text() == "0\n"
    assert wrapper.log("blast") == b"ready\nwent\n"


def test_command_not_found_is_127_and_recorded(wrapper: Wrapper) -> None:
    done = wrapper.run("blast", "no-such-command-here", "arg")
    assert done.returncode == 127
    assert wrapper.exit_file("blast").read_text() == "127\n"
    assert b"no-such-command-here" in wrapper.log("blast")
    assert wrapper.log("blast") == done.stdout


def test_command_not_executable_is_126(wrapper: Wrapper, tmp_path: Path) -> None:
    plain = tmp_path / "plain-file"
    plain.write_text("echo hi\n")
    done = wrapper.run("blast", str(plain))
    assert done.returncode == 126
    assert wrapper.exit_file("blast").read_text() == "126\n"


def test_stdin_is_passed_to_the_command(wrapper: Wrapper) -> None:
    done = wrapper.run("blast", "cat", input=b"from stdin\n")
    assert done.returncode == 0
    assert wrapper.log("blast") == done.stdout == b"from stdin\n"


def test_works_with_stdin_closed(wrapper: Wrapper) -> None:
    argv = ["sh", "-c", 'exec "$@" <&-', "close-stdin", *wrapper.argv("blast", "sh", "-c", "echo hi; exit 5")]
    done = subprocess.run(argv, env=wrapper.env, capture_output=True, timeout=30)
    assert done.returncode == 5, done.stderr
    assert wrapper.log("blast") == done.stdout == b"hi\n"
    assert wrapper.exit_file("blast").read_text() == "5\n"


def test_nobody_reading_stdout_does_not_stop_the_log(wrapper: Wrapper) -> None:
    script = 'i=0; while [ $i -lt 3000 ]; do echo "line $i"; i=$((i+1)); done; exit 6'
    proc = wrapper.popen("blast", "sh", "-c", script, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert proc.stdout is not None
    proc.stdout.close()
    assert proc.wait(timeout=20) == 6
    assert wrapper.log("blast") == b"".join(b"line %d\n" % i for i in range(3000))
    assert wrapper.exit_file("blast").read_text() == "6\n"


def test_blast_logs_dir_is_honoured_and_created(wrapper: Wrapper, tmp_path: Path) -> None:
    other = tmp_path / "elsewhere" / "volume"
    env = {**wrapper.env, "BLAST_LOGS_DIR": str(other)}
    done = subprocess.run(
        wrapper.argv("results-export", "echo", "x"), env=env, capture_output=True, timeout=30
    )
    assert done.returncode == 0
    assert (other / "logs" / "results-export.log").read_bytes() == b"x\n"
    assert (other / "logs" / "results-export.exit").read_text() == "0\n"
    assert not (wrapper.volume / "logs").exists()


def test_background_child_holding_the_output_does_not_hold_the_exit(wrapper: Wrapper, tmp_path: Path) -> None:
    go = tmp_path / "go"
    script = f'(while [ ! -e "{go}" ]; do sleep 0.02; done; echo late) & echo main; exit 2'
    env = {**wrapper.env, "LOGWRAP_DRAIN_SECONDS": "0"}
    # tee, left copying, keeps our stdout and stderr: send them to files, not pipes.
    err = tmp_path / "stderr"
    try:
        with err.open("wb") as err_file:
            done = subprocess.run(
                wrapper.argv("blast", "sh", "-c", script),
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=err_file,
                timeout=30,
            )
        assert done.returncode == 2
        assert wrapper.exit_file("blast").read_text() == "2\n"
        assert b"still open" in err.read_bytes()
    finally:
        go.touch()
    # tee keeps copying what the leftover child writes, then ends with it.
    wait_for(log_has(wrapper, "blast", b"main\nlate\n"), "the background child's line")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], b"missing NAME"),
        (["Bad_Name", "--", "true"], b"invalid NAME"),
        (["-x", "--", "true"], b"invalid NAME"),
        (["a" * 254, "--", "true"], b"invalid NAME"),
        (["blast", "true"], b"expected '--'"),
        (["blast", "--"], b"missing CMD"),
    ],
)
def test_usage_errors_exit_2(wrapper: Wrapper, args: list[str], message: bytes) -> None:
    done = subprocess.run(
        [*wrapper.prefix, str(wrapper.script), *args], env=wrapper.env, capture_output=True, timeout=30
    )
    assert done.returncode == 2
    assert message in done.stderr
    assert b"usage: logwrap NAME -- CMD" in done.stderr
    assert done.stdout == b""
    if args[:1] == ["blast"]:
        # A valid NAME: the failure is kept with the container's logs.
        assert message in wrapper.log("blast")
        assert wrapper.exit_file("blast").read_text() == "2\n"
    else:
        assert not (wrapper.volume / "logs").exists()


def test_accepts_names_kubernetes_allows(wrapper: Wrapper) -> None:
    for name in ("a", "load-blastdb-into-ram", "x.y-1", "9" * 63):
        assert wrapper.run(name, "true").returncode == 0
        assert wrapper.exit_file(name).read_text() == "0\n"


def test_install_is_atomic_idempotent_and_executable(tmp_path: Path) -> None:
    target = install_logwrap(tmp_path)
    assert target == tmp_path / LOGWRAP_RELATIVE_PATH
    assert target.read_bytes() == logwrap_source()
    assert stat.S_IMODE(target.stat().st_mode) == 0o755
    inode = target.stat().st_ino
    assert install_logwrap(tmp_path) == target
    assert target.stat().st_ino == inode
    target.write_bytes(b"#!/bin/sh\nexit 1\n")
    target.chmod(0o600)
    install_logwrap(tmp_path)
    assert target.read_bytes() == logwrap_source()
    assert stat.S_IMODE(target.stat().st_mode) == 0o755
    assert sorted(p.name for p in target.parent.iterdir()) == ["logwrap"]
    done = subprocess.run([str(target), "-h"], capture_output=True, timeout=30)
    assert done.returncode == 0
    assert done.stdout.startswith(b"usage: logwrap")


def test_packaged_script_is_posix_sh() -> None:
    source = logwrap_source()
    assert source.startswith(b"#!/bin/sh\n")
    for shell in ("dash", "busybox sh"):
        exe = shutil.which(shell.split()[0])
        if exe is None:
            continue
        check = subprocess.run([exe, *shell.split()[1:], "-n"], input=source, capture_output=True, timeout=30)
        assert check.returncode == 0, check.stderr
