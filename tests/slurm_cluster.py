"""A real, throwaway single-node SLURM cluster for tests (session fixture ``slurm_cluster``).

Register it once in ``tests/conftest.py``::

    from slurm_cluster import slurm_cluster  # noqa: F401

What the fixture does, as root on a Debian machine:
- installs Debian's ``slurm-wlm`` and ``munge`` with apt when a binary is missing (seconds when present);
- starts a private ``munged`` (own key, socket and pid file under the cluster directory, run as user
  ``munge``), ``slurmctld -D`` and ``slurmd -D`` on free ports with a generated ``slurm.conf``;
- models one fake GPU (``Gres=gpu:1`` backed by ``/dev/null``) so rules declaring ``gpu=1`` are submitted
  with ``--gpus=1`` exactly as on a GPU cluster, and are serialised like on a one-GPU node;
- has no accounting daemon: finished jobs are recorded in a ``jobcomp/filetxt`` log (``SlurmCluster.jobs``)
  and stay visible to ``squeue --states=all`` for ``MinJobAge`` (one hour), which is what the Snakemake
  executor's ``squeue`` status command relies on.

The cluster lives in a fixed directory (``$SLURM_TEST_ROOT``, default ``/tmp/slurm-test-cluster``, one per
pytest-xdist worker) so a later session finds daemons a crashed one left behind through their pid files and
stops them before starting afresh. Without root, apt or the binaries the fixture skips with the reason,
unless ``REQUIRE_SLURM=1`` is set (CI), where it fails instead.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REQUIRE_ENV = "REQUIRE_SLURM"
ROOT_ENV = "SLURM_TEST_ROOT"
DEFAULT_ROOT = Path("/tmp/slurm-test-cluster")
PARTITION = "debug"
FAKE_GPUS = 1
# Finished jobs stay queryable by squeue this long; the executor plugin switches to sacct (absent here)
# when MinJobAge < 3 x its initial status interval (default 40 s).
MIN_JOB_AGE_S = 3600
_APT_PACKAGES = ("slurm-wlm", "munge")
_BINARIES = ("munged", "slurmctld", "slurmd", "sbatch", "srun", "squeue", "sinfo", "scontrol", "scancel")
_SBIN_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_START_TIMEOUT_S = 60.0
_STOP_TIMEOUT_S = 10.0


class SlurmUnavailable(Exception):
    """SLURM cannot be installed or started on this machine; the message says why."""


@dataclass(frozen=True)
class SlurmJob:
    """One finished job as recorded by ``jobcomp/filetxt``."""

    job_id: int
    name: str
    state: str
    exit_code: str
    work_dir: str
    node_list: str
    tres: str
    fields: dict[str, str] = field(repr=False)


@dataclass(frozen=True)
class SlurmCluster:
    """Handle to the running test cluster.

    ``env`` is a complete environment for subprocesses (``SLURM_CONF`` set, the current interpreter's
    ``bin`` first on ``PATH``, inherited ``SLURM_*``/``SBATCH_*``/``SRUN_*`` variables removed).
    """

    root: Path
    conf: Path
    jobcomp_log: Path
    env: dict[str, str]
    node: str
    partition: str
    cpus: int
    mem_mb: int
    gpus: int

    def snakemake_args(self) -> list[str]:
        """Flags to add to ``snakemake --workflow-profile workflow/profiles/slurm`` here: poll job status
        every second instead of after 40 s, keep the plugin's per-job logs (``.snakemake/slurm_logs/
        rule_<rule>/<wildcards>/<jobid>.log``: which job ran which rule), and cap rule threads at the
        node's CPUs (SLURM rejects jobs asking for more)."""
        return ["--slurm-keep-successful-logs", "--seconds-between-status-checks", "1",
                "--slurm-init-seconds-before-status-checks", "1", "--max-threads", str(self.cpus)]

    def run(self, *cmd: str, check: bool = True, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        """Run a SLURM client command (``sinfo``, ``squeue``, ...) against this cluster."""
        return subprocess.run(list(cmd), env=self.env, text=True, capture_output=True, check=check,
                              timeout=timeout)

    def jobs(self, work_dir: Path | str | None = None) -> list[SlurmJob]:
        """Finished jobs from the job completion log, oldest first; those run in ``work_dir`` if given."""
        if not self.jobcomp_log.exists():
            return []
        lines = self.jobcomp_log.read_text().splitlines()
        jobs = [_parse_jobcomp_line(line) for line in lines if line.strip()]
        if work_dir is not None:
            wanted = os.path.realpath(work_dir)
            jobs = [j for j in jobs if os.path.realpath(j.work_dir) == wanted]
        return jobs

    def comments(self) -> dict[int, str]:
        """Job id -> ``--comment`` of every job slurmctld still holds (the Snakemake plugin puts
        ``rule_<name>[_wildcards_<w>]`` there)."""
        out = self.run("squeue", "--states=all", "--noheader", "--format=%i|%k").stdout
        pairs = (line.split("|", 1) for line in out.splitlines() if "|" in line)
        return {int(job_id): comment for job_id, comment in pairs if job_id.strip().isdigit()}


# jobcomp/filetxt writes "Key=Value Key=Value ..."; values may contain spaces, keys never do.
_JOBCOMP_FIELD = re.compile(r"(\w+)=(.*?)(?= \w+=|\s*$)")


def _parse_jobcomp_line(line: str) -> SlurmJob:
    fields = {key: value.strip() for key, value in _JOBCOMP_FIELD.findall(line)}
    return SlurmJob(
        job_id=int(fields["JobId"]),
        name=fields.get("Name", ""),
        state=fields.get("JobState", ""),
        exit_code=fields.get("ExitCode", ""),
        work_dir=fields.get("WorkDir", ""),
        node_list=fields.get("NodeList", ""),
        tres=fields.get("Tres", ""),
        fields=fields,
    )


def _which(name: str) -> str | None:
    return shutil.which(name, path=os.environ.get("PATH", "") + os.pathsep + _SBIN_PATH)


def ensure_installed() -> None:
    """Install slurm-wlm and munge with apt when any needed binary is missing."""
    missing = [b for b in _BINARIES if _which(b) is None]
    if not missing:
        return
    if os.geteuid() != 0:
        raise SlurmUnavailable(f"SLURM binaries missing ({', '.join(missing)}) and not root to install them")
    apt = _which("apt-get")
    if apt is None:
        raise SlurmUnavailable(f"SLURM binaries missing ({', '.join(missing)}) and no apt-get to install")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for cmd in ([apt, "update", "-qq"],
                [apt, "install", "-y", "-qq", "--no-install-recommends", *_APT_PACKAGES]):
        proc = subprocess.run(cmd, env=env, text=True, capture_output=True, timeout=900, check=False)
        if proc.returncode != 0:
            raise SlurmUnavailable(f"{' '.join(cmd)} failed (rc {proc.returncode}): {proc.stderr[-2000:]}")
    still = [b for b in _BINARIES if _which(b) is None]
    if still:
        raise SlurmUnavailable(f"apt installed {_APT_PACKAGES} but {', '.join(still)} still missing")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _detect_node() -> tuple[str, dict[str, int]]:
    """Node name and hardware as slurmd itself sees them (``slurmd -C``), so the node never registers
    as INVAL for a topology or memory mismatch."""
    out = subprocess.run([_which("slurmd") or "slurmd", "-C"], text=True, capture_output=True, timeout=30,
                         check=False)
    line = next((ln for ln in out.stdout.splitlines() if ln.startswith("NodeName=")), "")
    fields = dict(tok.split("=", 1) for tok in line.split() if "=" in tok)
    if "NodeName" not in fields:
        raise SlurmUnavailable(f"slurmd -C gave no node line: {out.stdout!r} {out.stderr!r}")
    hw = {k: int(v) for k, v in fields.items() if k != "NodeName" and v.isdigit()}
    return fields["NodeName"], hw


def _slurm_conf(root: Path, node: str, hw: dict[str, int], mem_mb: int, ctld_port: int, slurmd_port: int,
                munge_socket: Path) -> str:
    topology = " ".join(f"{k}={hw[k]}" for k in ("CPUs", "Boards", "SocketsPerBoard", "CoresPerSocket",
                                                  "ThreadsPerCore") if k in hw)
    return f"""\
# Generated by tests/slurm_cluster.py: single-node test cluster, no accounting daemon, no cgroups.
ClusterName=snaketest
SlurmctldHost={node}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={munge_socket}
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc={root}/log/jobcomp.log
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
ReturnToService=2
MinJobAge={MIN_JOB_AGE_S}
KillWait=5
MailProg=/bin/true
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/log/slurmctld.log
SlurmdLogFile={root}/log/slurmd.log
GresTypes=gpu
NodeName={node} NodeAddr=127.0.0.1 {topology} RealMemory={mem_mb} Gres=gpu:{FAKE_GPUS} State=UNKNOWN
PartitionName={PARTITION} Default=YES Nodes=ALL MaxTime=INFINITE DefMemPerCPU=1000 State=UP
"""


def _proc_table() -> dict[int, int]:
    """pid -> parent pid of every live process."""
    table = {}
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                stat = (proc / "stat").read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            if stat[0] != "Z":
                table[int(proc.name)] = int(stat[1])
    return table


def _read(pid: int, part: str) -> bytes:
    try:
        return Path(f"/proc/{pid}/{part}").read_bytes()
    except OSError:
        return b""


def _belongs_to(pid: int, root: Path) -> bool:
    """Daemons and job steps of the cluster in ``root`` (by command line, or SLURM_CONF for slurmstepd),
    and its batch scripts even when orphaned; never a shell that merely looks at the directory."""
    comm = _read(pid, "comm").strip()
    cmdline = _read(pid, "cmdline")
    if comm in (b"munged", b"slurmctld", b"slurmd") and f"{root}/".encode() in cmdline:
        return True
    if comm == b"slurmstepd":
        return f"SLURM_CONF={root}/slurm.conf\0".encode() in _read(pid, "environ")
    return f"{root}/spool/".encode() in cmdline


def _alive(pid: int) -> bool:
    return pid in _proc_table()


def _terminate(pids: list[int], sig: signal.Signals = signal.SIGTERM) -> None:
    """Send ``sig``, wait, then SIGKILL what is left."""
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + _STOP_TIMEOUT_S
    while time.monotonic() < deadline and any(_alive(p) for p in pids):
        time.sleep(0.1)
    for pid in pids:
        if _alive(pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def _stale_pids(root: Path) -> list[int]:
    """Processes of an earlier cluster in ``root`` (see ``_belongs_to``) and everything they started
    (job steps), never this process or its ancestors."""
    table = _proc_table()
    keep, pid = set(), os.getpid()
    while pid > 1:
        keep.add(pid)
        pid = table.get(pid, 1)
    stale = {p for p in table if p not in keep and _belongs_to(p, root)}
    grew = True
    while grew:
        children = {p for p, parent in table.items() if parent in stale and p not in keep} - stale
        stale |= children
        grew = bool(children)
    return sorted(stale)


def _prepare_munge(root: Path) -> tuple[Path, list[str]]:
    """Own key and socket for a private munged run as user ``munge`` (munged refuses keys it does not
    own and directories others may write; the system key /etc/munge is left alone)."""
    try:
        munge_user = pwd.getpwnam("munge")
    except KeyError as exc:
        raise SlurmUnavailable("user 'munge' missing (is the munge package installed?)") from exc
    mdir = root / "munge"
    mdir.mkdir(mode=0o755)
    os.chown(mdir, munge_user.pw_uid, munge_user.pw_gid)
    key = mdir / "munge.key"
    fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o400)
    with os.fdopen(fd, "wb") as fh:
        fh.write(os.urandom(1024))
    os.chown(key, munge_user.pw_uid, munge_user.pw_gid)
    sock = mdir / "munge.socket"
    cmd = [_which("munged") or "munged", "--foreground", f"--key-file={key}", f"--socket={sock}",
           f"--pid-file={mdir / 'munged.pid'}", f"--seed-file={mdir / 'munged.seed'}",
           f"--log-file={mdir / 'munged.log'}"]
    return sock, cmd


def _write_srun_shim(root: Path, conf: Path) -> Path:
    """``srun`` wrapper that restores SLURM_CONF.

    snakemake-executor-plugin-slurm-jobstep (0.6.1) launches each job's step with ``srun`` in an
    environment stripped of every ``SLURM_*`` variable but the job ids, SLURM_CONF included; on a cluster
    whose config is not at the compiled-in /etc/slurm/slurm.conf, that srun then fails with "Could not
    establish a configuration source". PATH survives the stripping, so a wrapper first on PATH puts
    SLURM_CONF back without touching /etc or the plugin."""
    bindir = root / "bin"
    bindir.mkdir()
    shim = bindir / "srun"
    shim.write_text(f'#!/bin/sh\n: "${{SLURM_CONF:={conf}}}"\nexport SLURM_CONF\n'
                    f'exec {_which("srun")} "$@"\n')
    shim.chmod(0o755)
    return bindir


def _clean_env(conf: Path, shim_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "SBATCH_", "SRUN_", "SALLOC_"))}
    # Jobs inherit this environment (the plugin submits with --export=ALL): the venv's python and
    # snakemake must come first inside them as well.
    bindir = os.path.dirname(sys.executable)
    env["PATH"] = os.pathsep.join([str(shim_dir), bindir, env.get("PATH", ""), _SBIN_PATH])
    env["SLURM_CONF"] = str(conf)
    return env


def _tail(path: Path, n: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return "(no log)"


class _Daemons:
    """The three daemon processes of one cluster, started in the foreground under our control."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.procs: list[subprocess.Popen[bytes]] = []

    def spawn(self, name: str, cmd: list[str], env: dict[str, str], **kwargs: object) -> None:
        with open(self.root / "log" / f"{name}.out", "wb") as out:
            # Own session: Ctrl-C on pytest must not kill the daemons before teardown cancels jobs.
            self.procs.append(subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT,
                                               stdin=subprocess.DEVNULL, start_new_session=True,
                                               **kwargs))  # type: ignore[call-overload]

    def check_running(self) -> None:
        for proc in self.procs:
            if proc.poll() is not None:
                name = Path(proc.args[0]).name  # type: ignore[index]
                raise SlurmUnavailable(f"{name} exited with rc {proc.returncode}:\n"
                                       + _tail(self.root / "log" / f"{name}.out"))

    def stop(self) -> None:
        _terminate([p.pid for p in self.procs if p.poll() is None])
        for proc in self.procs:
            try:
                proc.wait(timeout=_STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                pass
        self.procs.clear()


def _wait_idle(cluster: SlurmCluster, daemons: _Daemons) -> None:
    deadline = time.monotonic() + _START_TIMEOUT_S
    state = ""
    while time.monotonic() < deadline:
        daemons.check_running()
        proc = cluster.run("sinfo", "--noheader", "--Node", "--format=%T", check=False, timeout=10)
        state = proc.stdout.strip()
        if proc.returncode == 0 and state == "idle":
            return
        if any(bad in state for bad in ("inval", "drain", "down")) and not state.endswith("*"):
            break
        time.sleep(0.2)
    node = cluster.run("scontrol", "show", "node", cluster.node, check=False).stdout
    raise SlurmUnavailable(f"node {cluster.node} not idle (state {state!r}):\n{node}\n"
                           + _tail(cluster.root / "log" / "slurmctld.log")
                           + "\n" + _tail(cluster.root / "log" / "slurmd.log"))


def cluster_root() -> Path:
    """Directory of this process's cluster: one per pytest-xdist worker."""
    root = Path(os.environ.get(ROOT_ENV, str(DEFAULT_ROOT)))
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    return root.with_name(f"{root.name}-{worker}") if worker else root


def start_cluster(root: Path) -> tuple[SlurmCluster, _Daemons]:
    """Kill whatever an earlier session left in ``root``, wipe it, and start a fresh cluster there.

    Returns the cluster handle and the daemons (pass them to ``stop_cluster``)."""
    if os.geteuid() != 0:
        raise SlurmUnavailable("the test cluster runs its daemons as root (SlurmUser=root); not root")
    ensure_installed()
    # Whatever is left from an earlier session is of no use: no graceful shutdown needed.
    _terminate(_stale_pids(root), signal.SIGKILL)
    shutil.rmtree(root, ignore_errors=True)
    for sub in ("state", "spool", "log"):
        (root / sub).mkdir(parents=True)
    root.chmod(0o755)  # munged, running as user munge, must traverse it

    node, hw = _detect_node()
    cpus = hw.get("CPUs") or len(os.sched_getaffinity(0))
    # Leave the OS some headroom; slurmd marks a node INVAL if RealMemory exceeds what it sees.
    mem_mb = int(hw.get("RealMemory", 2048) * 0.9)
    munge_socket, munged_cmd = _prepare_munge(root)
    conf = root / "slurm.conf"
    conf.write_text(_slurm_conf(root, node, hw, mem_mb, _free_port(), _free_port(), munge_socket))
    (root / "gres.conf").write_text(f"NodeName={node} Name=gpu File=/dev/null\n")
    env = _clean_env(conf, _write_srun_shim(root, conf))
    cluster = SlurmCluster(root=root, conf=conf, jobcomp_log=root / "log" / "jobcomp.log", env=env, node=node,
                           partition=PARTITION, cpus=cpus, mem_mb=mem_mb, gpus=FAKE_GPUS)

    daemons = _Daemons(root)
    try:
        daemons.spawn("munged", munged_cmd, env, user="munge", group="munge", extra_groups=[])
        deadline = time.monotonic() + _START_TIMEOUT_S
        while not munge_socket.exists():
            daemons.check_running()
            if time.monotonic() > deadline:
                raise SlurmUnavailable("munged made no socket:\n" + _tail(root / "log" / "munged.out"))
            time.sleep(0.05)
        daemons.spawn("slurmctld", [_which("slurmctld") or "slurmctld", "-D", "-f", str(conf)], env)
        daemons.spawn("slurmd", [_which("slurmd") or "slurmd", "-D", "-f", str(conf)], env)
        _wait_idle(cluster, daemons)
    except BaseException:
        daemons.stop()
        raise
    return cluster, daemons


def stop_cluster(cluster: SlurmCluster, daemons: _Daemons) -> None:
    """Cancel remaining jobs, stop the daemons and any job steps left behind."""
    try:
        cluster.run("scancel", "--full", f"--partition={cluster.partition}", check=False, timeout=15)
        deadline = time.monotonic() + _STOP_TIMEOUT_S
        while time.monotonic() < deadline:
            active = cluster.run("squeue", "--noheader", "--states=PENDING,RUNNING,COMPLETING",
                                 "--format=%i", check=False, timeout=10)
            if active.returncode != 0 or not active.stdout.strip():
                break
            time.sleep(0.2)
    except subprocess.TimeoutExpired:
        pass
    daemons.stop()
    _terminate(_stale_pids(cluster.root))


def _required() -> bool:
    return os.environ.get(REQUIRE_ENV, "").lower() in ("1", "true", "yes")


@pytest.fixture(scope="session")
def slurm_cluster() -> Iterator[SlurmCluster]:
    """A running single-node SLURM cluster for the whole session (see module docstring)."""
    try:
        cluster, daemons = start_cluster(cluster_root())
    except SlurmUnavailable as exc:
        if _required():
            pytest.fail(f"SLURM test cluster unavailable but {REQUIRE_ENV} is set: {exc}")
        pytest.skip(f"SLURM test cluster unavailable: {exc}")
    try:
        yield cluster
    finally:
        stop_cluster(cluster, daemons)
