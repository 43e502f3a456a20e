"""Field selection and the RAM-or-paged decision, for one store or several.

A dataset serves *fields*: array fields (the media, ``image_size``,
``audio_length``, ``source_row``, ...) gathered by rows, and text fields
(``caption``, ``captions``, kept columns) decoded per sample.
:func:`select_fields` turns what a user asked for into the store's array and
text names; :func:`decide_mode` picks RAM or paged mode for the bytes those
fields take. Several stores served together must agree on both
(:func:`check_same_layout`).
"""

from __future__ import annotations

from collections.abc import Sequence

from ..errors import BudgetError, OptionsError, SharedMemoryError, StoresMismatchError
from ..store.store import MEDIA_FIELDS, Store
from ..units import format_bytes

MODES = ("auto", "ram", "paged")
OUTPUT_NAMES = {array: public for public, array in MEDIA_FIELDS.items() if public != array}


def public_name(array_name: str) -> str:
    """The name a field is served under (``images`` -> ``image``)."""
    return OUTPUT_NAMES.get(array_name, array_name)


def media_array(store: Store) -> str:
    """The array holding the store's media (``images`` or ``audio``)."""
    return MEDIA_FIELDS[store.media]


def select_fields(store: Store, fields: Sequence[str] | None) -> tuple[list[str], list[str]]:
    """The store's array names and text names for the requested fields (default: media and caption).

    Raises
    ------
    OptionsError
        A requested field is not in the store; the message names those that are.
    """
    media = media_array(store)
    wanted = [media, "caption"] if fields is None else list(fields)
    arrays, text = [], []
    for requested in wanted:
        name = requested
        if name == "length":
            name = "image_size" if media == "images" else "audio_length"
        name = MEDIA_FIELDS.get(name, name)
        if name in store.manifest.text:
            text.append(name)
        elif name in store.manifest.arrays and not name.startswith("text/"):
            arrays.append(name)
        else:
            known = sorted({public_name(a) for a in store.array_names} | set(store.manifest.text) | {"length"})
            raise OptionsError(f"store {store.location} has no field {requested!r}; fields: {known}")
    return arrays, text


def fields_nbytes(store: Store, names: Sequence[str]) -> int:
    """Bytes that these array and text fields of ``store`` take."""
    return sum(store.field_nbytes(f) for f in names)


def check_mode(mode: str) -> None:
    """Raise :class:`~tensorstore_ds.errors.OptionsError` unless ``mode`` is one of :data:`MODES`."""
    if mode not in MODES:
        raise OptionsError(f"mode must be one of {MODES}, not {mode!r}")


def decide_mode(
    mode: str, needed: int, budget: int, shared: int = 0, shm: tuple[str, int] | None = None
) -> tuple[str, str]:
    """``(mode, reason)``: RAM when the fields fit ``budget`` (``mode="auto"``), else as requested.

    ``shared`` bytes of the ``needed`` ones already have a copy on this machine
    and cost nothing more: a shared copy counts once per machine. ``shm`` is
    the shared-memory directory and its free bytes, which the rest must fit.

    Raises
    ------
    OptionsError
        ``mode`` is not one of :data:`MODES`.
    BudgetError
        ``mode="ram"`` and the fields do not fit the budget.
    SharedMemoryError
        ``mode="ram"`` and they do not fit the shared-memory directory.
    """
    check_mode(mode)
    new = needed - shared
    fits = new <= budget
    held = f" ({format_bytes(shared)} of it already shared on this machine)" if shared else ""
    sizes = f"selected fields need {format_bytes(needed)}{held}, budget is {format_bytes(budget)}"
    if mode == "ram" and not fits:
        raise BudgetError(new, budget)
    if mode != "paged" and shm is not None and new > shm[1]:
        if mode == "ram":
            raise SharedMemoryError(shm[0], new, shm[1])
        if fits:
            return "paged", (
                f"{sizes}: fits, but {shm[0]} has only {format_bytes(shm[1])} free (enlarge it, "
                "e.g. docker --shm-size, or set TENSORSTORE_DS_SHM_DIR)"
            )
    if mode == "auto":
        return ("ram", f"{sizes}: fits") if fits else ("paged", f"{sizes}: does not fit")
    return mode, f"{sizes}; mode={mode!r} requested"


def agree_across_ranks(mode: str, reason: str) -> tuple[str, str]:
    """In a ``torch.distributed`` job, RAM mode on every rank only if every rank chose it.

    A collective: with a process group initialized, every rank must call it
    (every rank constructs its dataset). Without one it returns its arguments.
    """
    import torch
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return mode, reason
    cuda = dist.get_backend() == "nccl"
    device = torch.device("cuda", torch.cuda.current_device()) if cuda else torch.device("cpu")
    counts = torch.tensor([1 if mode == "ram" else 0, 1], dtype=torch.int64, device=device)
    dist.all_reduce(counts)
    ram, world = int(counts[0]), int(counts[1])
    if ram == world:
        return "ram", f"{reason} (all {world} ranks chose RAM)"
    if ram == 0:
        return "paged", f"{reason} (all {world} ranks chose paged)"
    return "paged", f"{reason}; paged on all {world} ranks, since only {ram} could hold it in RAM"


def check_same_layout(first: Store, other: Store, arrays: list[str], text: list[str]) -> None:
    """``other`` has the selected fields with the same row layouts and encodings as ``first``.

    Raises
    ------
    OptionsError
        ``other`` lacks a field.
    StoresMismatchError
        A field's rows or encoding differ.
    """
    select_fields(other, arrays + text)  # names a missing field
    for name in arrays:
        a, b = first.manifest.arrays[name], other.manifest.arrays[name]
        if (a.dtype, a.row_shape) != (b.dtype, b.row_shape):
            raise StoresMismatchError(
                first.location,
                other.location,
                f"the rows of {name!r}",
                f"{a.dtype}{list(a.row_shape)}",
                f"{b.dtype}{list(b.row_shape)}",
            )
    for name in text:
        if first.manifest.text[name] != other.manifest.text[name]:
            raise StoresMismatchError(
                first.location,
                other.location,
                f"the encoding of {name!r}",
                first.manifest.text[name],
                other.manifest.text[name],
            )
