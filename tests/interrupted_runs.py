"""Runs ``dynvit finetune`` as the command line does (``dynvit.cli.main``), once straight through
and once per interruption point with a real SIGINT sent to this process, each followed by the
same command with ``--resume``; prints a JSON report of exit codes and stderr.

Used by tests/test_cli_resume.py in a subprocess (one torch import for all the runs):
``python interrupted_runs.py FOLDER OUT_ROOT [finetune arguments ...]``. The run folders are
``OUT_ROOT/straight`` and ``OUT_ROOT/<point>``.

The points, counted in optimizer steps done (``STEPS`` per epoch):
  forward     SIGINT from inside a BatchNorm forward in training mode (running statistics
              already updated for a step that has not finished)
  step        SIGINT from inside the optimizer step (before the parameters change)
  validation  SIGINT during the end-of-epoch validation (between epochs)
  twice       two SIGINTs mid forward: stops at once without saving; the resume starts from the
              state saved at the end of the last epoch
"""
import contextlib
import io
import json
import os
import signal
import sys

import torch.nn as nn
from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook

from dynvit.cli import main

folder, out_root, *extra = sys.argv[1:]
STEPS = int(os.environ['STEPS_PER_EPOCH'])
state = dict(point=None, steps=0, fired=False)


def fire(times: int = 1) -> None:
    state['fired'] = True
    for _ in range(times):
        os.kill(os.getpid(), signal.SIGINT)


def on_bn_forward(module, args, output):
    if state['fired'] or not isinstance(module, nn.modules.batchnorm._BatchNorm):
        return
    if module.training and state['point'] in ('forward', 'twice') and state['steps'] == STEPS + 2:
        fire(2 if state['point'] == 'twice' else 1)
    if not module.training and state['point'] == 'validation' and state['steps'] == STEPS:
        fire()


def on_step_start(optimizer, args, kwargs):
    if not state['fired'] and state['point'] == 'step' and state['steps'] == 2:
        fire()


def on_step_end(optimizer, args, kwargs):
    state['steps'] += 1


nn.modules.module.register_module_forward_hook(on_bn_forward)
register_optimizer_step_pre_hook(on_step_start)
register_optimizer_step_post_hook(on_step_end)


def finetune(out: str, *flags: str) -> dict:
    out_text, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out_text), contextlib.redirect_stderr(err):
        code = main(['finetune', *extra, '--data', folder, '--out', out, *flags])
    return dict(code=code, stdout=out_text.getvalue(), stderr=err.getvalue())


report = {'straight': finetune(f'{out_root}/straight')}
for point in ('forward', 'step', 'validation', 'twice'):
    state.update(point=point, steps=0, fired=False)
    run = finetune(f'{out_root}/{point}')
    state['point'] = None
    report[point] = dict(interrupted=run, resumed=finetune(f'{out_root}/{point}', '--resume'))
print(json.dumps(report))
