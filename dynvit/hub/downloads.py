"""Pretrained weights that are downloaded (a cfg's ``hf_hub_id`` or ``url``): where they come from,
where a downloaded copy is cached, and failing fast without a network.

Without a network, huggingface_hub retries each file with back-off (about a minute before timm
gives up), and ``urllib`` may wait for a silent host indefinitely. ``create_model`` therefore asks
``offline_reason`` before handing a download to timm: offline, it loads a cached copy if there is
one (``cached_weights``) and otherwise fails at once with a ``PretrainedWeightsError`` naming the
source to download elsewhere.
"""
import hashlib
import http.client
import os
import socket
import tempfile
import threading
import urllib.parse
import urllib.request
from typing import Any, Dict, Optional

import torch

from .files import read_state_dict

__all__ = ['PROBE_TIMEOUT_S', 'PretrainedWeightsError', 'cached_weights', 'download_source', 'download_to_cache',
           'has_file_name', 'offline_reason', 'share_link_cache_path']

PROBE_TIMEOUT_S = 3.0  # a reachable host answers a TCP connect well within this; a missing network fails sooner
_TRUE = ('1', 'ON', 'YES', 'TRUE')
_DEFAULT_PORTS = {'http': 80, 'https': 443}


class PretrainedWeightsError(OSError):
    """Pretrained weights could not be fetched.

    Args:
        reason: What went wrong, one line.
        model_name: The ``arch.tag`` whose weights were fetched.
        source: Where they come from (a URL), for a user to download them elsewhere; '' if not a download.
        advice: What to do (default: download ``source`` elsewhere and pass the file to ``create_model``).
    """

    def __init__(self, reason: str, model_name: str = '', source: str = '', advice: str = ''):
        self.reason, self.model_name, self.source = reason, model_name, source
        if source and not advice:
            advice = f'download {source} elsewhere and pass pretrained_cfg_overlay=dict(file=PATH)'
        super().__init__(f'{reason}; {advice}' if advice else reason)


def download_source(cfg: Dict[str, Any]) -> str:
    """The URL a pretrained cfg's weights are downloaded from, chosen as timm chooses (a local
    ``file`` or ``state_dict`` first, then the Hugging Face Hub, then ``url``); '' when nothing is
    downloaded. Hub weights are named by their repository's page (``$HF_ENDPOINT/<repo>``)."""
    from huggingface_hub import constants
    from timm.models._builder import _resolve_pretrained_source
    from timm.models._hub import hf_split

    load_from, location = _resolve_pretrained_source(cfg)
    if load_from == 'hf-hub':
        repo_id = hf_split(location[0] if isinstance(location, (tuple, list)) else location)[0]
        return f'{constants.ENDPOINT}/{repo_id}'
    return location if load_from == 'url' else ''


def has_file_name(url: str) -> bool:
    """Whether ``url``'s path ends in a file name (timm caches url weights under that name); share
    links (Tsinghua Cloud ``.../?dl=1``, Google Drive ``uc?id=...``) do not."""
    return bool(os.path.splitext(os.path.basename(urllib.parse.urlparse(url).path))[1])


def cached_weights(cfg: Dict[str, Any], model_name: str, cache_dir: Optional[str] = None) -> str:
    """The downloaded copy of a cfg's weights in the local caches, or ''. Looks where timm and
    huggingface_hub would put them (``cache_dir`` as given to ``create_model``): the Hub cache for
    the files timm asks for (the safetensors alternative first), torch's hub cache for a ``url``
    with a file name, and ``download_to_cache``'s name for a share link."""
    from huggingface_hub import try_to_load_from_cache
    from timm.models._builder import _resolve_pretrained_source
    from timm.models._hub import HF_WEIGHTS_NAME, _get_safe_alternatives, hf_split

    load_from, location = _resolve_pretrained_source(cfg)
    if load_from == 'hf-hub':
        hub_id, filename = location if isinstance(location, (tuple, list)) else (location, HF_WEIGHTS_NAME)
        repo_id, revision = hf_split(hub_id)
        for name in [*_get_safe_alternatives(filename), filename]:
            path = try_to_load_from_cache(repo_id, name, cache_dir=cache_dir, revision=revision)
            if isinstance(path, str):
                return path
        return ''
    if load_from == 'url':
        path = (_url_cache_path(location, cache_dir) if has_file_name(location)
                else share_link_cache_path(location, model_name, cache_dir))
        return path if os.path.isfile(path) else ''
    return ''


def _checkpoints_dir(cache_dir: Optional[str] = None) -> str:
    return str(cache_dir) if cache_dir else os.path.join(torch.hub.get_dir(), 'checkpoints')


def _url_cache_path(url: str, cache_dir: Optional[str] = None) -> str:
    """Where ``torch.hub.load_state_dict_from_url`` (timm's url loader) keeps ``url``'s file."""
    return os.path.join(_checkpoints_dir(cache_dir), os.path.basename(urllib.parse.urlparse(url).path))


def share_link_cache_path(url: str, model_name: str, cache_dir: Optional[str] = None) -> str:
    """Where ``download_to_cache`` keeps a share link's file: ``<arch>.<tag>-<url hash>.pth``."""
    return os.path.join(_checkpoints_dir(cache_dir), f'{model_name}-{hashlib.sha256(url.encode()).hexdigest()[:8]}.pth')


def offline_reason(url: str, timeout: float = PROBE_TIMEOUT_S) -> str:
    """Why ``url`` cannot be downloaded now, or '' (it may be: try).

    Offline when ``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``) is set, the variables huggingface_hub
    honours; dynvit takes them to mean no downloads at all, from the Hub or any URL. Otherwise an
    ``http(s)`` URL is probed with one TCP connect to its host (or to the proxy that
    ``HTTPS_PROXY`` / ``HTTP_PROXY`` / ``ALL_PROXY`` names for it), the first step of any download.
    The connect runs in a background thread that is given ``timeout`` seconds in all, so a name
    lookup without a reachable DNS server, which the socket timeout does not bound, cannot stall
    it either. Other schemes (``file://``) are not probed.
    """
    from huggingface_hub import constants

    flag = os.environ.get('HF_HUB_OFFLINE') or os.environ.get('TRANSFORMERS_OFFLINE') or ''
    if flag.upper() in _TRUE or constants.HF_HUB_OFFLINE:
        return 'offline mode (HF_HUB_OFFLINE is set)'
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ('http', 'https') or not parts.hostname:
        return ''
    host, port, what = parts.hostname, parts.port or _DEFAULT_PORTS[parts.scheme], ''
    proxy = _proxy_for(parts.scheme, parts.hostname)
    if proxy:
        host, port, what = proxy.hostname, proxy.port or _DEFAULT_PORTS.get(proxy.scheme, 1080), 'the proxy '
    error = _connect_error(host, port, timeout)
    return f'no network: {what}{host}:{port} cannot be reached ({error})' if error else ''


def _proxy_for(scheme: str, host: str) -> Optional[urllib.parse.SplitResult]:
    """The proxy the environment sets for ``scheme://host``, as urllib and httpx read it, or None."""
    proxies = urllib.request.getproxies()
    proxy = proxies.get(scheme) or proxies.get('all')
    if not proxy or urllib.request.proxy_bypass(host):
        return None
    parts = urllib.parse.urlsplit(proxy if '://' in proxy else f'http://{proxy}')
    return parts if parts.hostname else None


def _connect_error(host: str, port: int, timeout: float) -> str:
    """'' if a TCP connection to ``host:port`` opens within ``timeout`` seconds, else why not."""
    outcome = []

    def connect() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            outcome.append('')
        except OSError as e:
            outcome.append(f'{type(e).__name__}: {e}')

    probe = threading.Thread(target=connect, name='dynvit-network-probe', daemon=True)
    probe.start()
    probe.join(timeout)
    return outcome[0] if outcome else f'no answer within {timeout:g} s'


def download_to_cache(url: str, model_name: str, cache_dir: Optional[str] = None) -> str:
    """Downloads ``url`` once into torch's hub cache (``$TORCH_HOME/hub/checkpoints``, where timm
    caches url weights, or ``cache_dir``) as ``<arch>.<tag>-<url hash>.pth`` and returns the path. For
    share links whose URL path names no file (Tsinghua Cloud ``.../?dl=1``, Google Drive ``uc?id=...``).

    The file is fetched under a temporary name and kept only when it reads as a checkpoint, so an
    HTML page (a share service's warning or login page) or a cut-off transfer is never cached.
    """
    path = share_link_cache_path(url, model_name, cache_dir)
    if os.path.isfile(path):
        return path
    folder = os.path.dirname(path)
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f'.{model_name}.', suffix='.partial')
    os.close(fd)
    hint = (f'download the file yourself and pass pretrained_cfg_overlay=dict(file=PATH), or convert it once with '
            f'`dynvit convert FILE OUT.safetensors --model {model_name}`')
    try:
        try:
            torch.hub.download_url_to_file(url, tmp, progress=True)
        except (OSError, ValueError, http.client.HTTPException) as e:  # URLError is an OSError
            raise PretrainedWeightsError(f'could not download the weights of {model_name} from {url} '
                                         f'({type(e).__name__}: {e})', model_name, url, hint) from None
        with open(tmp, 'rb') as fh:
            head = fh.read(512).lstrip().lower()
        if head.startswith((b'<!doctype', b'<html')):
            raise PretrainedWeightsError(f'{url} returned a web page, not a checkpoint (the share service may ask '
                                         f'for a confirmation in a browser)', model_name, url, hint)
        try:
            read_state_dict(tmp)
        except ValueError as e:
            raise PretrainedWeightsError(f'the download from {url} is not a readable checkpoint (cut off?): {e}',
                                         model_name, url, hint) from None
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path
