"""The command line as a user runs it."""
import json
import subprocess
import sys


def run(*args):
    return subprocess.run([sys.executable, '-m', 'dynvit', *args], capture_output=True, text=True, timeout=300)


def test_list_json_and_pattern():
    r = run('list', 'dynamicvit_*', '--json')
    assert r.returncode == 0
    assert json.loads(r.stdout) == ['dynamicvit_base_patch16_224', 'dynamicvit_small_patch16_224', 'dynamicvit_tiny_patch16_224']
    r = run('list', '--pretrained')
    assert 'dynamicvit_small_patch16_224.deit_in1k' in r.stdout.split()


def test_info_reports_macs():
    r = run('info', 'test_dynamicvit', '--keep-ratio', '0.5', '--json')
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert info['sparsity']['keep_ratio'] == [0.5, 0.25, 0.125]
    assert 0 < info['sparse_gmacs'] < info['dense_gmacs']


def test_info_fbs_density():
    r = run('info', 'test_fbs_resnet', '--density', '0.5', '--json')
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert info['sparsity']['density'] == 0.5 and 0 < info['sparse_gmacs'] < info['dense_gmacs']
    r = run('info', 'test_fbs_resnet', '--density', '0')
    assert r.returncode == 1 and 'density must be in (0, 1]' in r.stderr


def test_unknown_model_is_a_one_line_error():
    r = run('info', 'dynamicvit_smal_patch16_224')
    assert r.returncode == 1
    assert r.stderr.strip().count('\n') == 0
    assert 'did you mean dynamicvit_small_patch16_224' in r.stderr
    r = run('info', 'test_dynamicvit', '--keep-ratio', '1.5')
    assert r.returncode == 1 and 'keep_ratio must be in (0, 1]' in r.stderr


def test_help_has_examples():
    for cmd in ('list', 'info', 'demo', 'finetune', 'eval'):
        r = run(cmd, '--help')
        assert r.returncode == 0 and 'examples:' in r.stdout
