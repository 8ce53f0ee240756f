"""Policy attention: exact masked forward, DynamicViT's policy-weighted-softmax gradient."""
import pytest
import torch

from dynvit.layers import PolicyAttention, policy_attention, policy_bias
from dynvit.layers.attention import POLICY_EPS

from numerics import tolerance


def _plain(q, k, v, keep, eps=0.0):
    """The paper's attention with a keep policy, written out: a = exp(s) (G + eps) / sum exp(s) (G + eps)."""
    L = keep.shape[1]
    g = keep[:, None, None, :]
    G = g + (1 - g) * torch.eye(L) + eps
    s = (q @ k.transpose(-2, -1)) * q.shape[-1] ** -0.5
    e = (s - s.amax(-1, keepdim=True)).exp() * G
    return (e / e.sum(-1, keepdim=True)) @ v


@pytest.mark.parametrize('fused', [True, False])
def test_forward_exact_and_gradients_match_the_policy_weighted_softmax(fused):
    torch.manual_seed(0)
    B, H, L, D = 2, 3, 9, 8
    q, k, v = (torch.randn(B, H, L, D, dtype=torch.float64, requires_grad=True) for _ in range(3))
    keep = (torch.rand(B, L) > 0.4).double()
    keep[:, 0] = 1
    g = torch.randn(B, H, L, D, dtype=torch.float64)

    p1 = keep.clone().requires_grad_(True)
    out = policy_attention(q, k, v, policy_bias(p1), fused=fused)
    (out * g).sum().backward()
    ours = [t.grad.clone() for t in (q, k, v, p1)]
    for t in (q, k, v):
        t.grad = None

    p2 = keep.clone().requires_grad_(True)
    ref = _plain(q, k, v, p2)
    (ref * g).sum().backward()
    theirs = [t.grad for t in (q, k, v)]
    p3 = keep.clone().requires_grad_(True)
    (_plain(q.detach(), k.detach(), v.detach(), p3, POLICY_EPS) * g).sum().backward()
    theirs.append(p3.grad)  # the policy's gradient is the smoothed mask's (log(G + POLICY_EPS))

    # float64, the same formula in another order: rounding after the 2 products and the softmax
    # forward, about twice that backward
    torch.testing.assert_close(out, ref, rtol=0, atol=tolerance(4, ref.abs().max(), torch.float64))  # exact masking
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, rtol=0, atol=tolerance(8, b.abs().max(), torch.float64))
    dropped = keep == 0
    assert ours[3][dropped].abs().min() > 0  # dropped tokens do get a learning signal


def test_policy_attention_module_equals_timm_attention_without_policy():
    from timm.layers import Attention
    torch.manual_seed(0)
    ours = PolicyAttention(16, num_heads=2, qkv_bias=True, qk_norm=True, norm_layer=torch.nn.LayerNorm)
    timm_attn = Attention(16, num_heads=2, qkv_bias=True, qk_norm=True, norm_layer=torch.nn.LayerNorm)
    timm_attn.load_state_dict(ours.state_dict())
    x = torch.randn(2, 5, 16)
    assert torch.equal(ours(x), timm_attn(x))
    keep = torch.tensor([[1., 1., 0., 1., 0.], [1., 0., 0., 0., 1.]])
    for fused in (True, False):
        ours.fused_attn = timm_attn.fused_attn = fused
        hard = torch.zeros(2, 1, 5, 5).masked_fill((policy_bias(keep) < -1), float('-inf'))
        # the policy's bias is applied as the exact mask: rounding (SDPA or softmax over other values)
        expected = timm_attn(x, attn_mask=hard)
        torch.testing.assert_close(ours(x, attn_mask=policy_bias(keep)), expected, rtol=0,
                                   atol=tolerance(4, expected.abs().max()))
