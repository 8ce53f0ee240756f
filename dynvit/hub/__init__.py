"""Loading and saving models: the layer above ``dynvit.models`` and ``dynvit.compress``.

* ``factory``: ``create_model`` / ``list_models`` / ``load_model`` (timm's, with dynvit files
  self-describing and the zoo's shipped weights);
* ``downloads``: weights that are downloaded: their source, their cached copies, share links,
  failing fast without a network;
* ``catalog``: what a pretrained tag offers (shipped, cached or downloaded; its card's numbers);
* ``files``: self-describing safetensors files (``save_model``, ``save_pruned``), reading any
  checkpoint safely, loading one through the family's checkpoint filter;
* ``resolve``: the one way the command line turns a user's model argument into a model.
"""
from .catalog import pretrained_info
from .downloads import PretrainedWeightsError, download_to_cache
from .factory import create_model, list_models, load_model
from .files import load_checkpoint, read_dynvit_metadata, read_state_dict, save_model, save_pruned
from .resolve import model_and_file, resolve_model

__all__ = ['PretrainedWeightsError', 'create_model', 'download_to_cache', 'list_models', 'load_checkpoint',
           'load_model', 'model_and_file', 'pretrained_info', 'read_dynvit_metadata', 'read_state_dict',
           'resolve_model', 'save_model', 'save_pruned']
