"""One process or many under torchrun: rank, device, logging, collectives, and progress lines.

The same stage script runs alone or under `torchrun`: `setup_runtime` reads RANK / WORLD_SIZE /
LOCAL_RANK from the environment torchrun sets, binds the GPU before `init_process_group` (nccl on
GPU, gloo on CPU), and only rank 0 prints. With one process every collective is the identity.
"""

import hashlib
import os
import secrets
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from infra.cli import StageError


def resolve_device(device: str) -> str:
    """`auto` means cuda when a GPU is visible, else cpu; anything else is taken as given."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


# Intra-op threads of numeric work on the CPU. A parallel reduction's order, and so its last bits,
# follows the thread count: with the count left to the machine (or to torchrun, which sets
# OMP_NUM_THREADS=1), the same run gave other bytes elsewhere. On the CPU parallelism comes from
# processes instead: decode workers, torchrun ranks, run_all.sh --jobs.
CPU_THREADS = 1


def fix_cpu_threads(device: str) -> int | None:
    """On the CPU, compute with CPU_THREADS intra-op threads whatever the environment says, and
    return that count (to record); on a GPU, change nothing and return None."""
    if torch.device(device).type != "cpu":
        return None
    torch.set_num_threads(CPU_THREADS)
    return CPU_THREADS


def device_name(device: str) -> str:
    """The device in words, for records of what a stage cost: the GPU's name, or the CPU's core count."""
    if torch.device(device).type == "cuda":
        return torch.cuda.get_device_name(torch.device(device))
    return f"CPU ({os.cpu_count()} cores, {CPU_THREADS} thread per process)"


@dataclass(frozen=True)
class Runtime:
    rank: int
    world_size: int
    local_world_size: int
    device: str  # this process's device: cuda:LOCAL_RANK under torchrun on GPUs

    @property
    def master(self) -> bool:
        return self.rank == 0

    def log(self, *values, **kwargs) -> None:
        if self.master:
            print(*values, **kwargs, flush=True)

    def barrier(self) -> None:
        if self.world_size > 1:
            dist.barrier()

    def gather(self, tensor: torch.Tensor) -> torch.Tensor:
        """Every rank's rows, concatenated in rank order; ranks may hold different numbers of rows."""
        if self.world_size == 1:
            return tensor
        return torch.cat(gather_rows(tensor))

    def gather_with_grad(self, tensor: torch.Tensor) -> torch.Tensor:
        """As `gather`, and the backward hands each rank the gradient of its own rows, summed
        over the ranks (each rank's loss reads every rank's rows)."""
        if self.world_size == 1 or not tensor.requires_grad:
            return self.gather(tensor)
        return GatherRows.apply(tensor)

    def all_reduce_sum_(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.world_size > 1:
            dist.all_reduce(tensor)
        return tensor

    def min_over_ranks(self, value: int) -> int:
        if self.world_size == 1:
            return value
        tensor = torch.tensor([value], device=self.device)
        dist.all_reduce(tensor, op=dist.ReduceOp.MIN)
        return int(tensor.item())

    def finish(self) -> None:
        if self.world_size > 1:
            dist.destroy_process_group()

    def agree(self, job: dict) -> None:
        """Every rank must run the same job: `job` is {field: JSON-able value} (a flag's value, an
        input file's sha256, the code version; nested dicts are compared field by field). A field
        that differs stops every rank with one message naming it, and each value with its ranks and
        hosts. A collective: every rank calls it before any work, so none is left waiting."""
        if self.world_size == 1:
            return
        facts = [None] * self.world_size
        try:
            dist.all_gather_object(facts, (flat_fields(job), socket.gethostname()))
        except RuntimeError as err:  # a rank that stopped on its own error first closes its connections
            first_line = (str(err).strip().splitlines() or [""])[0][:160]
            raise StageError(
                f"another rank stopped before the ranks compared their jobs ({first_line}); its message says why"
            ) from None
        differing = []
        for field in sorted({name for fields, _ in facts for name in fields}):
            values = [fields.get(field) for fields, _ in facts]
            if any(value != values[0] for value in values):
                held = "; ".join(
                    f"{value!r} on rank {rank} ({host})"
                    for rank, (value, (_, host)) in enumerate(zip(values, facts, strict=True))
                )
                differing.append(f"{field} differs ({held})")
        if differing:
            raise StageError(f"the ranks do not run the same job: {'; '.join(differing)}; every rank stops")

    def check_shared_folder(self, folder: Path) -> None:
        """Every rank must see the files rank 0 writes into `folder` (chunks are written by their
        rank and merged by rank 0): rank 0 writes a token there, every rank reads it back."""
        if self.world_size == 1:
            return
        token = [secrets.token_hex(8) if self.master else None]
        dist.broadcast_object_list(token)
        path = Path(folder) / f".shared_check_{token[0]}"
        if self.master:
            path.write_text(token[0])
        self.barrier()
        try:
            seen = path.read_text() == token[0]
        except OSError:
            seen = False
        facts = [None] * self.world_size
        dist.all_gather_object(facts, (seen, socket.gethostname(), str(Path(folder).resolve())))
        self.barrier()
        if self.master:
            path.unlink()
        blind = [
            f"rank {rank} on {host} (its --out: {where})" for rank, (seen, host, where) in enumerate(facts) if not seen
        ]
        if blind:
            raise StageError(
                f"--out is not shared between the nodes: rank 0 wrote into {facts[0][2]}, and {', '.join(blind)} "
                "cannot see it, so their chunks would never reach the merge; give every node the same --out on a "
                "file system they all mount (NFS, Lustre, a shared disk)"
            )


def flat_fields(facts: dict, prefix: str = "") -> dict:
    """{"a.b": value} for {"a": {"b": value}}: each leaf a field of its own, named by its path."""
    flat = {}
    for name, value in facts.items():
        if isinstance(value, dict) and value:
            flat.update(flat_fields(value, f"{prefix}{name}."))
        else:
            flat[f"{prefix}{name}"] = value
    return flat


PROJECT = Path(__file__).resolve().parents[1]


def process_seconds() -> float:
    """Seconds since this process started (Linux keeps its start in /proc, in clock ticks since
    boot), so a stage's cost counts its start-up: the interpreter, imports (torch's take seconds),
    the model and the files read before the work."""
    with open("/proc/self/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()  # after "pid (name)", which may hold spaces
    started = int(fields[19]) / os.sysconf("SC_CLK_TCK")  # field 22, starttime
    return time.clock_gettime(time.CLOCK_BOOTTIME) - started


def code_version() -> str:
    """One sha256 over the stage scripts and the packages they import (each file's name and bytes):
    two ranks running different copies of the code differ here, whatever git says."""
    packages = [
        folder for folder in sorted(PROJECT.iterdir()) if (folder / "__init__.py").exists() and folder.name != "tests"
    ]
    digest = hashlib.sha256()
    for path in sorted(PROJECT.glob("*.py")) + [path for folder in packages for path in sorted(folder.rglob("*.py"))]:
        digest.update(f"{path.relative_to(PROJECT)}\n".encode() + path.read_bytes())
    return digest.hexdigest()


def flag_settings(args, per_node: tuple) -> dict:
    """{--flag: value} of a stage's arguments, less those that may differ between nodes (`per_node`:
    paths each node mounts where it likes, whose contents are compared by digest, and local resources)."""
    return {
        f"--{name.replace('_', '-')}": str(value) if isinstance(value, Path) else value
        for name, value in sorted(vars(args).items())
        if name not in per_node
    }


def gather_rows(tensor: torch.Tensor) -> list[torch.Tensor]:
    """all_gather for tensors whose first dimension differs by rank: pad to the longest, trim."""
    length = torch.tensor([len(tensor)], device=tensor.device)
    lengths = [torch.empty_like(length) for _ in range(dist.get_world_size())]
    dist.all_gather(lengths, length)
    longest = int(max(lengths).item())
    padded = torch.zeros((longest, *tensor.shape[1:]), dtype=tensor.dtype, device=tensor.device)
    padded[: len(tensor)] = tensor
    parts = [torch.empty_like(padded) for _ in lengths]
    dist.all_gather(parts, padded)
    return [part[: int(n.item())] for part, n in zip(parts, lengths, strict=True)]


class GatherRows(torch.autograd.Function):
    """Differentiable `gather`. torch.distributed.nn's all_gather is not used: on gloo its backward
    scatters into non-contiguous gradients (a transposed loss term gives them) and returns wrong
    values. Here the backward makes the gradient contiguous, sums it over ranks, keeps our rows."""

    @staticmethod
    def forward(ctx, tensor):
        parts = gather_rows(tensor)
        rank = dist.get_rank()
        ctx.start, ctx.stop = sum(len(part) for part in parts[:rank]), sum(len(part) for part in parts[: rank + 1])
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        return grad[ctx.start : ctx.stop]


def setup_runtime(device: str) -> Runtime:
    """Set up this process: `device` is auto, cpu or cuda (each rank then takes cuda:LOCAL_RANK)."""
    device = resolve_device(device)
    rank, world_size = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    local_rank, local_world_size = int(os.environ.get("LOCAL_RANK", 0)), int(os.environ.get("LOCAL_WORLD_SIZE", 1))
    if world_size > 1:
        if device == "cuda":
            device = f"cuda:{local_rank}"
        if device.startswith("cuda"):
            torch.cuda.set_device(device)  # before init_process_group, so NCCL binds the right GPU
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    return Runtime(rank, world_size, local_world_size, device)


class Progress:
    """Items done of a known total, their rate and the ETA, printed at most every `interval` s.

    `update(n, **counts)` adds n items and counts of other things (frames=...), shown as rates;
    `detail` is a callable whose text ends the line, evaluated only when the line is printed.
    """

    def __init__(self, label: str, total: int, log: Callable, interval: float = 2.0):
        self.label, self.total, self.log, self.interval = label, total, log, interval
        self.start, self.done, self.counts, self.last_print = time.time(), 0, {}, 0.0

    def update(self, n: int = 1, detail: Callable[[], str] | None = None, **counts: int) -> None:
        self.done += n
        for name, count in counts.items():
            self.counts[name] = self.counts.get(name, 0) + count
        now = time.time()
        if now - self.last_print < self.interval and self.done < self.total:
            return
        self.last_print = now
        elapsed = max(now - self.start, 1e-9)
        rate = self.done / elapsed
        eta = (self.total - self.done) / rate if rate > 0 else float("inf")
        rates = "".join(f", {count / elapsed:,.0f} {name}/s" for name, count in self.counts.items() if count)
        share = 100 * self.done / max(self.total, 1)
        line = f"{self.label} {self.done}/{self.total} ({share:.0f}%), {rate:,.2f}/s{rates}, ETA {eta:,.0f} s"
        self.log(line + (f", {detail()}" if detail else ""))
