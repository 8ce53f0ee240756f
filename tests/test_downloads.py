"""Downloaded pretrained weights without a network: a cached copy loads, anything else fails at once
naming the source; the probe is bounded; ``pretrained_info`` tells shipped, cached and download
apart. Nothing here downloads: the hosts are ``.invalid`` or a closed local port."""
import socket
import time

import pytest
import torch
from huggingface_hub import constants
from safetensors.torch import save_file

import dynvit
from dynvit.hub import PretrainedWeightsError, pretrained_info
from dynvit.hub.downloads import offline_reason, share_link_cache_path
from dynvit.hub.zoo import WEIGHTS_DIR, read_card

DEAD_PROXY = 'http://127.0.0.1:9'  # the discard port: nothing listens, the connection is refused at once


@pytest.fixture
def no_network(monkeypatch):
    """Every download goes through a proxy that refuses connections."""
    for var in ('HF_HUB_OFFLINE', 'TRANSFORMERS_OFFLINE', 'no_proxy', 'NO_PROXY'):
        monkeypatch.delenv(var, raising=False)
    for var in ('https_proxy', 'HTTPS_PROXY', 'http_proxy', 'HTTP_PROXY'):
        monkeypatch.setenv(var, DEAD_PROXY)


def _hub_cache(root, repo_id, filename, state_dict):
    """A Hugging Face cache holding ``repo_id``'s ``filename`` at ``main``, as hf_hub_download leaves it."""
    repo = root / f'models--{repo_id.replace("/", "--")}'
    commit = '0' * 40
    (repo / 'snapshots' / commit).mkdir(parents=True)
    (repo / 'refs').mkdir()
    (repo / 'refs' / 'main').write_text(commit)
    save_file({k: v.contiguous() for k, v in state_dict.items()}, str(repo / 'snapshots' / commit / filename))


def _same_weights(model, state_dict):
    return all(torch.equal(v, state_dict[k]) for k, v in model.state_dict().items())


def test_offline_a_cached_copy_loads_and_a_missing_one_fails_at_once(tmp_path, monkeypatch, no_network):
    weights = dynvit.create_model('test_fbs_resnet').state_dict()
    _hub_cache(tmp_path, 'timm/cached_repo', 'model.safetensors', weights)
    torch.save(weights, tmp_path / 'named.pth')  # a url's file, where torch's hub cache keeps it
    share_link = 'https://share.invalid/f/0123/?dl=1'
    torch.save(weights, share_link_cache_path(share_link, 'test_fbs_resnet', str(tmp_path)))
    for offline_mode in (False, True):
        if offline_mode:
            monkeypatch.setenv('HF_HUB_OFFLINE', '1')
        for source in (dict(hf_hub_id='timm/cached_repo'), dict(url='https://weights.invalid/x/named.pth'),
                       dict(url=share_link)):
            model = dynvit.create_model('test_fbs_resnet', pretrained=True, pretrained_cfg_overlay=source,
                                        cache_dir=str(tmp_path))
            assert _same_weights(model, weights), source
        start = time.perf_counter()
        with pytest.raises(PretrainedWeightsError) as e:
            dynvit.create_model('test_fbs_resnet', pretrained=True, cache_dir=str(tmp_path),
                                pretrained_cfg_overlay=dict(hf_hub_id='timm/missing_repo'))
        assert time.perf_counter() - start < 2
        why = 'offline mode (HF_HUB_OFFLINE is set)' if offline_mode else 'no network: the proxy 127.0.0.1:9'
        assert why in e.value.reason and 'no downloaded copy is cached' in e.value.reason
        assert e.value.model_name == 'test_fbs_resnet' and e.value.source == f'{constants.ENDPOINT}/timm/missing_repo'
        assert str(e.value).endswith(f'download {e.value.source} elsewhere and pass '
                                     f'pretrained_cfg_overlay=dict(file=PATH)')


def test_the_probe_is_bounded_and_skips_local_urls(monkeypatch):
    for var in ('HF_HUB_OFFLINE', 'TRANSFORMERS_OFFLINE', 'https_proxy', 'HTTPS_PROXY', 'all_proxy', 'ALL_PROXY'):
        monkeypatch.delenv(var, raising=False)
    assert offline_reason('file:///tmp/weights.pth') == ''
    assert offline_reason('https://weights.invalid/w.pth').startswith(
        'no network: weights.invalid:443 cannot be reached')
    def silent_host(*args, **kwargs):  # no answer, and no name lookup failure either, for 2 s
        time.sleep(2)
        raise TimeoutError('timed out')
    monkeypatch.setattr(socket, 'create_connection', silent_host)
    start = time.perf_counter()
    assert offline_reason('https://slow.invalid/w.pth', timeout=0.2).endswith('(no answer within 0.2 s)')
    assert time.perf_counter() - start < 1


def test_pretrained_info_tells_shipped_cached_and_download_apart(tmp_path, monkeypatch):
    info = pretrained_info('fbs_resnet18_half.fmnist_d50')
    card = read_card(WEIGHTS_DIR / 'fbs_resnet18_half.fmnist_d50.safetensors')
    assert info['weights'] == 'shipped' and info['source'] == str(WEIGHTS_DIR / 'fbs_resnet18_half.fmnist_d50.safetensors')
    assert (info['top1'], info['macs'], info['dataset']) == (card['test_top1'], card['mean_macs'], card['dataset'])
    assert info['description'] == (f'{card["dataset"]} test top-1 {card["test_top1"]:.2%}, '
                                   f'{card["mean_macs"] / 1e6:.2f} MMACs/image, '
                                   f'{card["saved_fraction_vs_own_dense"]:.1%} saved')
    monkeypatch.setattr(constants, 'HF_HUB_CACHE', str(tmp_path))  # an empty Hugging Face cache
    info = pretrained_info('fbs_resnet18.tv_in1k')
    assert info['weights'] == 'download' and info['source'] == f'{constants.ENDPOINT}/timm/resnet18.tv_in1k'
    assert 'gates untrained' in info['description'] and info['top1'] is None
    _hub_cache(tmp_path, 'timm/resnet18.tv_in1k', 'model.safetensors', {'w': torch.zeros(1)})
    assert pretrained_info('fbs_resnet18.tv_in1k')['weights'] == 'cached'
