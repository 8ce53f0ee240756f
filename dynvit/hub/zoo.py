"""The zoo: the weights shipped with the package, their cards, their index, and the zoo's old names.

Each shipped file ``<arch>.<tag>.safetensors`` is a self-describing dynvit file with a card beside
it (``<arch>.<tag>.md``, a JSON block the tests compare with the file). ``weights/zoo.json`` indexes
them: per model its data config and model arguments (what ``dynvit.models`` registers as the tag's
pretrained cfg and arguments, without opening the weights), and ``renamed``, the zoo's names of
dynvit 0.1, which named the architecture the models were built from, not their geometry; they load
for one more release, with a FutureWarning, then they go.
"""
import json
import re
import warnings
from pathlib import Path
from typing import Any, Dict, List

from ..models import WEIGHTS_DIR, zoo_index
from .files import atomic_write, read_dynvit_metadata

__all__ = ['WEIGHTS_DIR', 'current_name', 'index_entry', 'read_card', 'renamed', 'weights_file', 'write_index',
           'zoo_models']

INDEX = WEIGHTS_DIR / 'zoo.json'


def zoo_models() -> List[str]:
    """The zoo's models (``arch.tag``) whose weights are installed, by name."""
    return sorted(name for name in zoo_index().get('models', {}) if (WEIGHTS_DIR / f'{name}.safetensors').is_file())


def weights_file(name: str) -> Path:
    """Where the weights of the zoo's ``arch.tag`` are."""
    return WEIGHTS_DIR / f'{name}.safetensors'


def read_card(name_or_file: Any) -> Dict[str, Any]:
    """The JSON block of the card of the zoo's ``arch.tag`` (or of ``weights/<name>.safetensors``)."""
    path = Path(str(name_or_file))
    card = path.with_suffix('.md') if path.suffix == '.safetensors' else WEIGHTS_DIR / f'{name_or_file}.md'
    return json.loads(re.search(r'```json\n(.*?)\n```', card.read_text(), re.S).group(1))


def renamed() -> Dict[str, str]:
    """``{old name: current name}`` of the zoo's models renamed since 0.1."""
    return dict(zoo_index().get('renamed', {}))


def current_name(model_name: str) -> str:
    """``model_name``, or the zoo's current name for a renamed one (with a FutureWarning)."""
    prefix, _, name = model_name.rpartition(':')  # 'hf-hub:' style prefixes pass through
    new = renamed().get(name)
    if new is None:
        return model_name
    warnings.warn(f"{name!r} is the zoo's old name of {new!r} (named for its real geometry) and goes in "
                  f'dynvit 0.3: use {new!r}', FutureWarning, stacklevel=3)
    return f'{prefix}:{new}' if prefix else new


def index_entry(path: Path) -> Dict[str, Any]:
    """What the index holds of a shipped file: its data config and model arguments, from its metadata."""
    meta = read_dynvit_metadata(str(path))
    return {'pretrained_cfg': meta['pretrained_cfg'], 'model_args': meta['model_args']}


def write_index() -> Path:
    """Writes ``weights/zoo.json`` from the shipped files (keeping the renamed names)."""
    files = sorted(WEIGHTS_DIR.glob('*.safetensors'))
    index = {'models': {p.name[:-len('.safetensors')]: index_entry(p) for p in files}, 'renamed': renamed()}
    with atomic_write(str(INDEX)) as tmp:
        Path(tmp).write_text(json.dumps(index, indent=1, sort_keys=True) + '\n')
    return INDEX
