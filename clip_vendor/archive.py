"""OpenAI's TorchScript archives read as data: their weights, without running anything in them.

OpenAI released CLIP as TorchScript archives. `torch.jit.load` would rebuild the saved modules and
run their code, a crafted `__setstate__` included, so a file a user hands us could run code. This
reader never does. The archive is a zip: `data.pkl` pickles the module tree, each tensor's bytes
sit in `data/{key}`, and `code/` holds each module class's TorchScript source, whose class bodies
declare which attributes are parameters and buffers (`__parameters__ = [...]`).

- `data.pkl` goes through an unpickler that knows only tensors (`torch._utils._rebuild_tensor_v2`
  over storages read from the zip), `collections.OrderedDict`, and the archive's own module
  classes (`__torch__.*`), which become inert attribute records. Any other global is refused, by
  name, before anything is built from it; a module whose state is not a plain attribute dict
  (a custom `__setstate__`) is refused too.
- The code files are parsed (`ast.parse`), never run, for the `__parameters__` and `__buffers__`
  lists.
- Before anything is read, the zip's directory must be one torch writes (`check_zip_entries`): no
  entry twice (torch.jit.load and zipfile would read different copies), weights stored as is (so
  they cannot declare more bytes than the file holds), and compressed entries (torch deflates the
  code files) within a size limit: a zip bomb is refused by its declared sizes, never inflated.
- Anything else that goes wrong while reading is one ArchiveError naming the file and what was
  wrong: the file is not in OpenAI's layout, whatever the exception inside.

The result is what `torch.jit.load(path).state_dict()` gives: every parameter and buffer of the
module tree, named by its path (`visual.conv1.weight`), with its dtype and values bit for bit.
"""

import ast
import collections
import pickle
import zipfile
from pathlib import Path, PurePosixPath

import torch

MAX_COMPRESSED_ENTRY = 64 * 2**20  # bytes one deflated entry may declare (code files are kilobytes)
MAX_COMPRESSED_TOTAL = 256 * 2**20  # and all of them together
STORAGE_DTYPES = {
    "FloatStorage": torch.float32,
    "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16,
    "DoubleStorage": torch.float64,
    "LongStorage": torch.int64,
    "IntStorage": torch.int32,
    "ShortStorage": torch.int16,
    "CharStorage": torch.int8,
    "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool,
}
MODULE_NAMESPACE = "__torch__"  # TorchScript names every class of an archive under it


class ArchiveError(ValueError):
    """An archive that cannot be read as data; the message names the file and what was refused."""


class ArchiveObject:
    """A module of the archive, as a record: its class name and its attributes. Nothing runs."""

    qualified_name = "?"

    def __setstate__(self, state):
        if not isinstance(state, dict):
            raise pickle.UnpicklingError(
                f"{self.qualified_name} carries a custom __setstate__ (its saved state is a "
                f"{type(state).__name__}, not an attribute dict); such code is never run"
            )
        self.attributes = state


class StorageType:
    """A storage class named in data.pkl: only a tag of a persistent id, giving its dtype."""

    def __init__(self, name: str):
        self.name, self.dtype = name, STORAGE_DTYPES[name]

    def __call__(self, *args):
        raise pickle.UnpicklingError(f"it calls torch.{self.name}, which is only a tag of tensor data; refused")


def whole_numbers(value) -> bool:
    return isinstance(value, tuple) and all(type(item) is int for item in value)


def rebuild_tensor(storage, storage_offset, size, stride, requires_grad=False, *_):
    """The tensor a pickle describes, viewed on a flat storage tensor (torch's own layout rule)."""
    if not (isinstance(storage, torch.Tensor) and type(storage_offset) is int and whole_numbers(size)):
        raise pickle.UnpicklingError(f"_rebuild_tensor_v2 is called on a {type(storage).__name__}, not tensor data")
    if not (whole_numbers(stride) and len(stride) == len(size)):
        raise pickle.UnpicklingError(f"_rebuild_tensor_v2 is given size {size!r} and stride {stride!r}")
    return storage.as_strided(size, stride, storage_offset).detach().clone()


class DataOnlyUnpickler(pickle.Unpickler):
    def __init__(self, file, archive: zipfile.ZipFile, prefix: str):
        super().__init__(file)
        self.archive, self.prefix = archive, prefix
        self.module_classes = {}

    def find_class(self, module, name):
        if module == "torch._utils" and name == "_rebuild_tensor_v2":
            return rebuild_tensor
        if module == "collections" and name == "OrderedDict":
            return collections.OrderedDict
        if module == "torch" and name in STORAGE_DTYPES:
            return StorageType(name)
        if module == MODULE_NAMESPACE or module.startswith(MODULE_NAMESPACE + "."):
            qualified = f"{module}.{name}"
            if qualified not in self.module_classes:
                self.module_classes[qualified] = type(name, (ArchiveObject,), {"qualified_name": qualified})
            return self.module_classes[qualified]
        raise pickle.UnpicklingError(f"it names the global {module}.{name}, which is not tensor data; refused")

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage" and isinstance(pid[1], StorageType)):
            raise pickle.UnpicklingError(f"unknown persistent id {str(pid)[:80]}")
        _, storage_type, key, _, numel = pid
        dtype = storage_type.dtype
        data = bytearray(self.archive.read(f"{self.prefix}/data/{key}"))
        flat = torch.frombuffer(data, dtype=dtype) if data else torch.empty(0, dtype=dtype)
        if flat.numel() < numel:
            raise pickle.UnpicklingError(f"storage {key} holds {flat.numel()} values, {numel} expected")
        return flat


def declared_tensors(archive: zipfile.ZipFile, prefix: str) -> dict[str, tuple[list, list | None]]:
    """{qualified class name: (parameter names, buffer names or None)} from the code files' class
    bodies, read with ast.parse (never run). Archives older than `__buffers__` give None."""
    declared = {}
    for name in archive.namelist():
        if not (name.startswith(f"{prefix}/code/") and name.endswith(".py")):
            continue
        module = ".".join(PurePosixPath(name[len(f"{prefix}/code/") : -len(".py")]).parts)
        for node in ast.parse(archive.read(name).decode("utf-8")).body:
            if isinstance(node, ast.ClassDef):
                lists = {
                    target.id: ast.literal_eval(statement.value)
                    for statement in node.body
                    if isinstance(statement, ast.Assign)
                    for target in statement.targets
                    if isinstance(target, ast.Name) and target.id in ("__parameters__", "__buffers__")
                }
                tensors = [
                    statement.target.id
                    for statement in node.body
                    if isinstance(statement, ast.AnnAssign) and ast.unparse(statement.annotation) == "Tensor"
                ]
                parameters = lists.get("__parameters__", [])
                buffers = lists.get("__buffers__")
                if buffers is None:  # before __buffers__ existed, every other tensor attribute was a buffer
                    buffers = [name for name in tensors if name not in parameters]
                declared[f"{module}.{node.name}"] = (parameters, buffers)
    return declared


def check_zip_entries(archive: zipfile.ZipFile, path) -> None:
    """Refuse a zip torch would not write, from its directory alone (nothing is inflated): an entry
    twice, or entries declaring more bytes than the file holds (stored) or than code needs (deflated)."""
    entries = archive.infolist()
    twice = next(
        (name for name, count in collections.Counter(entry.filename for entry in entries).items() if count > 1), None
    )
    if twice:
        raise ArchiveError(f"{path}: holds the entry {twice} twice (torch would read one copy, zipfile the other)")
    stored = sum(entry.file_size for entry in entries if entry.compress_type == zipfile.ZIP_STORED)
    if stored > Path(path).stat().st_size:
        raise ArchiveError(f"{path}: its stored entries declare {stored:,} bytes, more than the file's size")
    deflated = [entry for entry in entries if entry.compress_type != zipfile.ZIP_STORED]
    largest = max(deflated, key=lambda entry: entry.file_size, default=None)
    if largest and largest.file_size > MAX_COMPRESSED_ENTRY:
        raise ArchiveError(
            f"{path}: entry {largest.filename} would inflate to {largest.file_size:,} bytes (a zip bomb?); a "
            f"compressed entry of a checkpoint holds code, at most {MAX_COMPRESSED_ENTRY:,} bytes"
        )
    if sum(entry.file_size for entry in deflated) > MAX_COMPRESSED_TOTAL:
        raise ArchiveError(f"{path}: its compressed entries would inflate past {MAX_COMPRESSED_TOTAL:,} bytes")


def archive_prefix(archive: zipfile.ZipFile, path) -> str:
    tops = {name.split("/", 1)[0] for name in archive.namelist() if name.count("/") == 1 and name.endswith("/data.pkl")}
    if len(tops) != 1:
        raise ArchiveError(f"{path}: not a TorchScript archive (no single data.pkl)")
    prefix = tops.pop()
    byte_order = f"{prefix}/byteorder"
    if byte_order in archive.namelist() and archive.read(byte_order).strip() != b"little":
        raise ArchiveError(f"{path}: a big-endian archive; only little-endian ones are read")
    return prefix


def read_archive_state_dict(path) -> dict[str, torch.Tensor]:
    """{name: tensor} of every parameter and buffer in a TorchScript archive, as
    `torch.jit.load(path).state_dict()` would give, read without running any of its code."""
    try:
        with zipfile.ZipFile(path) as archive:
            check_zip_entries(archive, path)
            prefix = archive_prefix(archive, path)
            declared = declared_tensors(archive, prefix)
            with archive.open(f"{prefix}/data.pkl") as data:
                root = DataOnlyUnpickler(data, archive, prefix).load()
    except ArchiveError:
        raise
    except Exception as err:  # a crafted file can raise anything inside pickle, ast or zipfile: one refusal
        what = str(err).strip().splitlines()[0][:200] if str(err).strip() else ""
        raise ArchiveError(f"{path}: refused to read the TorchScript archive: {type(err).__name__}: {what}") from None
    if not isinstance(root, ArchiveObject):
        raise ArchiveError(f"{path}: data.pkl holds a {type(root).__name__}, not a TorchScript module")
    state_dict = {}
    collect_tensors(root, "", declared, state_dict, path)
    return state_dict


def collect_tensors(module: ArchiveObject, prefix: str, declared: dict, out: dict, path) -> None:
    if module.qualified_name not in declared:
        raise ArchiveError(f"{path}: module class {module.qualified_name} has no class definition in code/")
    parameters, buffers = declared[module.qualified_name]
    attributes = getattr(module, "attributes", {})
    for name in [*parameters, *buffers]:
        value = attributes.get(name)
        if value is None:
            continue  # a declared but unset parameter (bias=None) is not in a state dict
        if not isinstance(value, torch.Tensor):
            raise ArchiveError(f"{path}: {prefix}{name} is declared a tensor but holds a {type(value).__name__}")
        out[prefix + name] = value
    for name, value in attributes.items():
        if isinstance(value, ArchiveObject):
            collect_tensors(value, f"{prefix}{name}.", declared, out, path)
