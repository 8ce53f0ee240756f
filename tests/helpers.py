"""Small builders shared by the tests."""
import timm
import torch

import dynvit
from dynvit.models import all_sparsity_args
from dynvit.models._helpers import vit_embed_layer

# Backbone configurations beyond the registered test variants: class token + registers,
# LayerScale, qk-norm, no class token with max pooling, fused attention off (see `make`).
BACKBONES = {
    'cls': dict(),
    'reg_ls_qknorm': dict(reg_tokens=2, init_values=0.1, qk_norm=True),
    'gap_noembedcls': dict(class_token=False, global_pool='avg', no_embed_class=True, reg_tokens=1),
    'maxpool': dict(class_token=False, global_pool='max'),
}
SPARSE_KEYS = all_sparsity_args()
SPARSE_ONLY_PARAMS = ('score_predictor.', 'norm_cls.', 'head_cls.')


def make(name='test_dynamicvit', fused_attn=True, predictor_scale=None, **kwargs):
    """A dynvit model in eval mode; `predictor_scale` spreads the keep scores so that images
    differ in threshold mode."""
    model = dynvit.create_model(name, **kwargs).eval()
    for blk in model.blocks:
        blk.attn.fused_attn = fused_attn
    if predictor_scale is not None:
        with torch.no_grad():
            for p in model.score_predictor.parameters():
                if p.ndim == 2:
                    p.mul_(predictor_scale)
    return model


def make_spec(specs, spec, sharpen=False, **kwargs):
    """The model of ``specs[spec]`` (a registered test variant and its extra arguments, ``fused=False``
    for explicit attention) with ``kwargs`` over them, in eval mode; ``sharpen`` makes the attention
    peakier (qkv weights x 4), so that class-attention scores stand far apart at the keep boundary."""
    name, extra = specs[spec]
    extra = {**extra, **kwargs}
    model = make(name, fused_attn=extra.pop('fused', True), **extra)
    if sharpen:
        with torch.no_grad():
            for blk in model.blocks:
                blk.attn.qkv.weight.mul_(4.0)
    return model


def dense_twin(model):
    """The plain timm VisionTransformer with the same backbone config and weights."""
    args = {k: v for k, v in model.model_args.items() if k not in SPARSE_KEYS}
    args['embed_layer'] = vit_embed_layer(args.pop('stem', 'patch'))
    dense = timm.models.VisionTransformer(**args).eval()
    missing, unexpected = dense.load_state_dict(model.state_dict(), strict=False)
    assert not missing and all(k.startswith(SPARSE_ONLY_PARAMS) for k in unexpected)
    for a, b in zip(dense.blocks, model.blocks):
        a.attn.fused_attn = b.attn.fused_attn
    return dense


def plain_vit(**kwargs):
    """A plain timm ViT (DeiT's layout and keys) with the tiny ``test_*`` ViTs' geometry: 32 px,
    patch 4, 32 wide, 4 blocks, 2 heads, MLP ratio 2, 10 classes (``kwargs`` over them), in eval mode."""
    args = dict(img_size=32, patch_size=4, embed_dim=32, depth=4, num_heads=2, mlp_ratio=2, num_classes=10)
    return timm.models.VisionTransformer(**{**args, **kwargs}).eval()


class Colours(torch.utils.data.Dataset):
    """Noise images (3 x 32 x 32) whose class (of 3) is their brightest colour channel: learnable in a
    few training steps."""

    def __init__(self, n=16):
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(n, 3, 32, 32, generator=g) * 0.5
        self.y = torch.arange(n) % 3
        self.x[torch.arange(n), self.y] += 1.0

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return self.x[i], int(self.y[i])


def images(batch, size=32, chans=3):
    return torch.randn(batch, chans, size, size)


def is_cnn(model):
    return model.kept_unit == 'channels'


def training_loss(model, logits, aux, target):
    """The model family's training objective on a training-mode forward (FBS: a strong L1 term,
    so that the gates get a gradient from it too)."""
    return model.training_objective(dynvit.losses.ObjectiveConfig(l1_weight=0.1))(logits, aux, target)[0]


def randomize_batch_norms(model, seed=0):
    """Random BatchNorm statistics and affine parameters, so that folding them is exercised
    (fresh ones are the identity, and ResNets zero the last one of each block)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.1)
    return model


def stages(model):
    """Number of selection stages of a token-sparse model."""
    return len(model.keep_ratio)


def run_cli(*args):
    """``dynvit ARGS`` in this process (no interpreter to start: tests that are not about start-up,
    the environment, memory or signals): its exit code and what it printed, as ``subprocess.run``
    gives them; the process's thread count is restored after a ``--threads``."""
    import contextlib
    import io
    import subprocess

    from dynvit.cli import main
    out, err, threads = io.StringIO(), io.StringIO(), torch.get_num_threads()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main([str(a) for a in args])
        except SystemExit as e:  # argparse's usage errors
            code = e.code
        finally:
            torch.set_num_threads(threads)
    return subprocess.CompletedProcess(args, code or 0, out.getvalue(), err.getvalue())
