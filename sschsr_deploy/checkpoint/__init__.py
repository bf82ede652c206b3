"""Safe loading and saving of SSC-HSR checkpoints: restricted unpickling, official layouts, key aliases, safetensors.

One module per job: :mod:`.unpickle` (``torch.load`` without executing pickled code), :mod:`.files` (reading
``.pth``/``.pt``/``.safetensors`` files and finding the state dict inside), :mod:`.keys` (the official key layouts
and aliases, mapped to the model's keys), :mod:`.loading` (copying a state dict into a model, with a report),
:mod:`.safetensors_io` (the package's own format), :mod:`.digest` (the SHA-256 name of a set of weights) and
:mod:`.common` (helpers they share).

Public API: :func:`safe_torch_load`, :func:`read_checkpoint`, :func:`map_state_dict`, :func:`load_official_checkpoint`,
:func:`load_into` (+ :class:`LoadReport`), :func:`check_finite`, :func:`save_safetensors`, :func:`load_safetensors`,
:func:`state_dict_sha256`.
"""

from .digest import state_dict_sha256
from .files import load_official_checkpoint, read_checkpoint
from .keys import KINDS, OFFICIAL_TOP_LEVEL, alias_partner, map_state_dict, official_aliases, official_keys
from .loading import LoadReport, check_finite, load_into
from .safetensors_io import load_safetensors, save_safetensors
from .unpickle import UnknownObject, safe_torch_load

__all__ = [
    "KINDS",
    "OFFICIAL_TOP_LEVEL",
    "LoadReport",
    "UnknownObject",
    "alias_partner",
    "check_finite",
    "load_into",
    "load_official_checkpoint",
    "load_safetensors",
    "map_state_dict",
    "official_aliases",
    "official_keys",
    "read_checkpoint",
    "safe_torch_load",
    "save_safetensors",
    "state_dict_sha256",
]
