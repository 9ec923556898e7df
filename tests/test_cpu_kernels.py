"""The fused CPU kernels (models/cpu_kernels.py), attention and the sublayer exit: equal to the maths they
replace, forward and backward, with the dropout masks their documented rule draws; used by BERT's training
step; a clean fallback."""

import os
import platform
import subprocess
import sys

import pytest
import torch

from masklm.config import ModelConfig
from masklm.models import cpu_kernels
from masklm.models.attention import AttentionMask, build_attention_mask
from masklm.models.bert import BertAddNorm, BertForMaskedLM

pytestmark = pytest.mark.skipif(cpu_kernels.unavailable() is not None, reason="no C++ compiler here")

M64 = (1 << 64) - 1


M32 = (1 << 32) - 1


def _splitmix(state):
    state = (state + 0x9E3779B97F4A7C15) & M64
    z = state
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
    return state, z ^ (z >> 31)


def _mix32(x):
    """Wellons' lowbias32 on an int64 tensor of 32-bit words."""
    x = x ^ (x >> 16)
    x = (x * 0x21F0AAAD) & M32
    x = x ^ (x >> 15)
    x = (x * 0xD35A2D97) & M32
    return x ^ (x >> 15)


def _draws(seed, stream, first_word, n):
    """The kernels' generator written out: n signed 16-bit draws of stream ``stream`` from word
    ``first_word`` on; each run of 32 draws is the low halves of 16 words, then their high halves."""
    key = _splitmix((seed + stream * 0x9E3779B97F4A7C15) & M64)[1]
    k0, k1 = key & M32, key >> 32
    blocks = (n + 31) // 32
    words = _mix32(_mix32((torch.arange(16 * blocks, dtype=torch.int64) + first_word + k0) & M32) ^ k1)
    words = words.view(blocks, 16)
    draws = torch.cat([words & 0xFFFF, words >> 16], dim=1).reshape(-1)[:n]
    return torch.where(draws >= 32768, draws - 65536, draws)


def _keep_mask(seed, B, H, M, T, p):
    """[B, H, M, T] 0/1: the kernel's rule (one stream per pair; rows padded to 16 draws, each row starting
    at a multiple of 16 words per 32 draws)."""
    thr = -32768 + int(p * 65536 + 0.5)
    T16 = (T + 15) // 16 * 16
    row_words = (T16 + 31) // 32 * 16
    keep = torch.zeros(B, H, M, T)
    for pair in range(B * H):
        for i in range(M):
            keep[pair // H, pair % H, i] = (_draws(seed, pair, i * row_words, T16)[:T] >= thr).float()
    return keep


def _reference(q, k, v, bias, keep, p, scale):
    """softmax(scale q k^T + bias) * keep / (1 - p) @ v, in float64; q/k/v [B, H, *, d]."""
    s = scale * q.double() @ k.double().transpose(-2, -1)
    if bias is not None:
        s = s + bias.double()
    return (torch.softmax(s, -1) * keep.double() / (1 - p)) @ v.double()


def _seed_after(manual_seed):
    torch.manual_seed(manual_seed)
    return int(torch.randint(0, 2**62, (), dtype=torch.int64))


@pytest.mark.parametrize("p", [0.0, 0.25])
@pytest.mark.parametrize("form", ["none", "padding", "causal", "dense"])
def test_packed_equals_reference_forward_and_backward(p, form):
    B, T, H, d, scale = 3, 20, 2, 16, 0.7  # T not a multiple of 16
    torch.manual_seed(0)
    qkv = torch.randn(B, T, 3, H, d, requires_grad=True)
    valid = torch.ones(B, T, dtype=torch.long)
    valid[1, 15:] = 0
    docs = torch.tensor([[0] * 8 + [1] * 12, [0] * 20, [0] * 5 + [1] * 15])
    attn = {"none": AttentionMask(), "padding": build_attention_mask(valid, None, False, T),
            "causal": build_attention_mask(None, None, True, T),
            "dense": build_attention_mask(None, docs, False, T)}[form]
    assert attn.form == form
    seed = _seed_after(5)
    torch.manual_seed(5)
    out = cpu_kernels.attend_fused(qkv, None, attn, p, scale)  # [B, T, H, d]
    grad = torch.randn_like(out)
    (out * grad).sum().backward()
    got_grad, qkv.grad = qkv.grad.clone(), None

    q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
    keep = _keep_mask(seed, B, H, T, T, p) if p > 0 else torch.ones(B, H, T, T)
    bias = attn.bias(T, torch.float32, qkv.device)
    ref = _reference(q, k, v, bias, keep, p, scale).transpose(1, 2)
    (ref * grad.double()).sum().backward()
    assert torch.allclose(out.double(), ref, atol=1e-5), (out.double() - ref).abs().max()
    assert torch.allclose(got_grad.double(), qkv.grad.double(), atol=1e-4), (got_grad - qkv.grad).abs().max()


def test_separate_queries_with_padding_and_kept_rows():
    """The sparse last layer's call: M query rows of their own, keys and values [B, T, 2, H, d]."""
    B, T, M, H, d, p = 2, 24, 5, 2, 32, 0.1
    torch.manual_seed(1)
    queries = torch.randn(B, M, H, d, requires_grad=True)
    kv = torch.randn(B, T, 2, H, d, requires_grad=True)
    valid = torch.ones(B, T, dtype=torch.long)
    valid[0, 20:] = 0
    attn = build_attention_mask(valid, None, False, T)
    seed = _seed_after(9)
    torch.manual_seed(9)
    out = cpu_kernels.attend_fused(queries, kv, attn, p, 1.0)
    out.square().sum().backward()
    gq, gkv = queries.grad.clone(), kv.grad.clone()
    queries.grad = kv.grad = None
    k, v = kv.permute(2, 0, 3, 1, 4).unbind(0)
    ref = _reference(queries.transpose(1, 2), k, v, attn.bias(T, torch.float32, kv.device),
                     _keep_mask(seed, B, H, M, T, p), p, 1.0).transpose(1, 2)
    ref.square().sum().backward()
    assert torch.allclose(out.double(), ref, atol=1e-5)
    assert torch.allclose(gq.double(), queries.grad.double(), atol=1e-4)
    assert torch.allclose(gkv.double(), kv.grad.double(), atol=1e-4)


@pytest.mark.parametrize("packed", [True, False])
def test_projection_bias_is_added_to_q_k_v_and_its_gradient_taken(packed):
    """BERT runs the QKV projection without its bias and hands the bias to the kernel: the result and every
    gradient (the bias's too) equal attention over q, k and v with the bias added, in float64."""
    B, T, M, H, d, p = 2, 20, 20 if packed else 6, 2, 16, 0.2
    torch.manual_seed(6)
    valid = torch.ones(B, T, dtype=torch.long)
    valid[1, 13:] = 0
    attn = build_attention_mask(valid, None, False, T)
    if packed:
        q_src, kv = torch.randn(B, T, 3, H, d, requires_grad=True), None
        q_bias, kv_bias = torch.randn(3 * H * d, requires_grad=True), None
        leaves = (q_src, q_bias)
    else:
        q_src, kv = torch.randn(B, M, H, d, requires_grad=True), torch.randn(B, T, 2, H, d, requires_grad=True)
        q_bias, kv_bias = torch.randn(H * d, requires_grad=True), torch.randn(2 * H * d, requires_grad=True)
        leaves = (q_src, kv, q_bias, kv_bias)
    seed = _seed_after(13)
    torch.manual_seed(13)
    out = cpu_kernels.attend_fused(q_src, kv, attn, p, 0.5, q_bias, kv_bias)
    grad = torch.randn_like(out)
    (out * grad).sum().backward()
    got = [t.grad.clone() for t in leaves]
    for t in leaves:
        t.grad = None
    if packed:
        q, k, v = (q_src + q_bias.view(3, H, d)).permute(2, 0, 3, 1, 4).unbind(0)
    else:
        q = (q_src + q_bias.view(H, d)).transpose(1, 2)
        k, v = (kv + kv_bias.view(2, H, d)).permute(2, 0, 3, 1, 4).unbind(0)
    ref = _reference(q, k, v, attn.bias(T, torch.float32, q_src.device), _keep_mask(seed, B, H, M, T, p), p,
                     0.5).transpose(1, 2)
    (ref * grad.double()).sum().backward()
    assert torch.allclose(out.double(), ref, atol=1e-5), (out.double() - ref).abs().max()
    for mine, t in zip(got, leaves):
        assert torch.allclose(mine.double(), t.grad.double(), atol=1e-4), (mine - t.grad).abs().max()


def test_dropout_keeps_one_minus_p_and_masks_differ_between_pairs():
    """With v the identity the output is the dropped probabilities themselves: count what is kept."""
    B, T, H, p = 8, 16, 4, 0.1
    qkv = torch.zeros(B, T, 3, H, 16)
    qkv[:, :, 2] = torch.eye(16)[:, None, :]  # v = I for every head
    qkv.requires_grad_(True)
    out = cpu_kernels.attend_fused(qkv, None, AttentionMask(), p, 1.0)  # uniform probabilities 1/16
    kept = (out.detach() > 0).float()  # [B, T, H, 16]
    assert torch.allclose(out.detach()[kept.bool()], torch.tensor(1 / 16 / (1 - p)))
    assert abs(kept.mean().item() - (1 - p)) < 0.02  # 8192 draws: 3 sigma is 0.01
    assert not torch.equal(kept[:, :, 0], kept[:, :, 1]) and not torch.equal(kept[0], kept[1])


@pytest.mark.parametrize("p", [0.0, 0.2])
def test_add_norm_equals_reference_forward_and_backward(p):
    """LayerNorm(residual + dropout(h + bias)), one dropout stream per row."""
    N, D, eps = 37, 48, 1e-7
    torch.manual_seed(2)
    h, residual = torch.randn(N, D, requires_grad=True), torch.randn(N, D, requires_grad=True)
    bias = torch.randn(D, requires_grad=True)
    norm = torch.nn.LayerNorm(D, eps=eps)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
        norm.bias.uniform_(-1.0, 1.0)
    leaves = (h, bias, residual, norm.weight, norm.bias)
    seed = _seed_after(11)
    torch.manual_seed(11)
    y = cpu_kernels.add_norm(h, bias, residual, norm, p)
    grad = torch.randn(N, D)
    (y * grad).sum().backward()
    got = [t.grad.clone() for t in leaves]
    for t in leaves:
        t.grad = None
    thr = -32768 + int(p * 65536 + 0.5)
    keep = torch.stack([(_draws(seed, n, 0, D) >= thr).float()
                        for n in range(N)]) / (1 - p) if p > 0 else torch.ones(N, D)
    ref = torch.nn.functional.layer_norm(residual.double() + keep.double() * (h.double() + bias.double()), (D,),
                                         norm.weight.double(), norm.bias.double(), eps)
    (ref * grad.double()).sum().backward()
    assert torch.allclose(y.double(), ref, atol=1e-5), (y - ref).abs().max()
    for name, mine, t in zip(["h", "bias", "residual", "weight", "norm bias"], got, leaves):
        assert torch.allclose(mine.double(), t.grad.double(), atol=1e-4), name


def test_bert_sublayer_exit_uses_the_kernel_only_when_training(monkeypatch):
    from masklm.config import ModelConfig as Config

    layer = BertAddNorm(64, Config(arch="bert", hidden_size=32, num_attention_heads=2, hidden_dropout_prob=0.1))
    x, residual = torch.randn(2, 5, 64, requires_grad=True), torch.randn(2, 5, 32)
    calls = []
    real = cpu_kernels.add_norm
    monkeypatch.setattr(cpu_kernels, "add_norm", lambda *a: calls.append(a[-1]) or real(*a))
    layer.train()(x, residual).sum().backward()
    assert calls == [0.1]
    with torch.no_grad():
        layer.eval()(x, residual)
    layer.eval()(x, residual)  # eval with a gradient still runs the kernel, with no dropout
    assert calls == [0.1, 0.0]


def _tiny_bert(dropout):
    cfg = ModelConfig(arch="bert", vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                      intermediate_size=64, max_position_embeddings=32, hidden_dropout_prob=dropout,
                      attention_probs_dropout_prob=dropout)
    torch.manual_seed(0)
    return BertForMaskedLM(cfg).train()


def test_bert_training_step_uses_the_kernel_and_matches_the_explicit_path(monkeypatch):
    ids = torch.randint(5, 64, (4, 16), generator=torch.Generator().manual_seed(0))
    labels = torch.full_like(ids, -100)
    labels[:, ::3] = ids[:, ::3]
    calls = []
    real = cpu_kernels.attend_fused
    monkeypatch.setattr(cpu_kernels, "attend_fused", lambda *a, **k: calls.append(1) or real(*a, **k))

    def grads(model):
        model(ids, labels=labels).loss.backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    fused = grads(_tiny_bert(0.0))
    assert len(calls) == 2  # both layers; the last one through its sparse queries
    monkeypatch.setattr(cpu_kernels, "usable", lambda *a, **k: False)
    explicit = grads(_tiny_bert(0.0))
    assert len(calls) == 2 and fused.keys() == explicit.keys()
    for name in fused:
        assert torch.allclose(fused[name], explicit[name], atol=1e-5), name


def test_bert_dropout_is_fixed_by_the_torch_seed():
    ids = torch.randint(5, 64, (4, 16), generator=torch.Generator().manual_seed(0))
    model = _tiny_bert(0.1)

    def loss(seed):
        torch.manual_seed(seed)
        return model(ids, labels=ids).loss.item()

    assert loss(3) == loss(3) and loss(3) != loss(4)


@pytest.mark.parametrize("env, reason", [({"MASKLM_CPU_KERNELS": "0"}, "MASKLM_CPU_KERNELS=0"),
                                         ({"CXX": "/nonexistent/c++"}, "could not be built")])
def test_without_the_kernel_attention_falls_back(tmp_path, env, reason):
    code = ("import torch; from masklm.models import cpu_kernels as c; from masklm.models.bert import *;"
            "from masklm.config import ModelConfig;"
            "m = BertForMaskedLM(ModelConfig(arch='bert', vocab_size=64, hidden_size=32, num_hidden_layers=1,"
            " num_attention_heads=2, intermediate_size=64)).train();"
            "ids = torch.randint(5, 64, (2, 8)); m(ids, labels=ids).loss.backward(); print(c.unavailable())")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, "MASKLM_CACHE": str(tmp_path), **env})
    assert done.returncode == 0, done.stderr
    assert reason in done.stdout
    assert not list(tmp_path.rglob("*.so"))


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="x86-64 build levels")
def test_build_without_avx512_passes_the_reference_tests(tmp_path):
    """-march=native here has AVX-512, so the kernels' other paths (the scalar transpose, the division in
    GELU, the generic broadcast) run only on other CPUs: build for x86-64-v2 (SSE4.2, no AVX) and run this
    file's reference tests on that build."""
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__, "-k",
                           "(reference or projection_bias or dropout_keeps or bias_gelu or cross_entropy or bf16_forms) and not avx512"],
                          capture_output=True, text=True,
                          env={**os.environ, "MASKLM_CACHE": str(tmp_path), "MASKLM_CPU_KERNELS_MARCH": "x86-64-v2"})
    assert done.returncode == 0, done.stdout[-3000:]
    assert " passed" in done.stdout and "skipped" not in done.stdout.splitlines()[-1], done.stdout[-500:]
    assert len(list(tmp_path.rglob("*.so"))) == 1  # built here, for that level


def test_not_under_autocast_and_never_on_other_dtypes():
    """Under bf16 autocast an fp32 input may meet a bf16 matmul: only the kernels with a bf16 form take it
    (``bf16=True``; a bf16 run once read bf16 memory as fp32 and stopped on a NaN gradient), none under fp16
    autocast; called directly on fp16 they refuse."""
    x = torch.randn(2, 4, 32, requires_grad=True)
    assert cpu_kernels.usable(x) and cpu_kernels.usable(x, bf16=True)
    assert not cpu_kernels.usable(x.detach().bfloat16().requires_grad_())  # attention: fp32 only
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not cpu_kernels.usable(x)
        assert cpu_kernels.usable(x, bf16=True)
    with torch.autocast("cpu", dtype=torch.float16):
        assert not cpu_kernels.usable(x, bf16=True)
    with torch.no_grad():
        assert not cpu_kernels.usable(x, bf16=True)
    assert not cpu_kernels.usable(torch.randn(2, 4, 24, requires_grad=True))  # not a multiple of 16
    h = torch.randn(2, 4, 32, dtype=torch.float16, requires_grad=True)
    with pytest.raises(TypeError, match="fp32"):
        cpu_kernels.add_norm(h, torch.zeros(32), torch.zeros(2, 4, 32), torch.nn.LayerNorm(32), 0.1)
    with pytest.raises(TypeError, match="fp32"):  # bf16 h, but a bf16 residual: the kernel reads it as fp32
        cpu_kernels.add_norm(h.bfloat16(), torch.zeros(32), torch.zeros(2, 4, 32, dtype=torch.bfloat16),
                             torch.nn.LayerNorm(32), 0.1)


def _bf16_awkward(*shape: int) -> torch.Tensor:
    """Random bf16 values with the ones that test rounding: exact ties a bias of 1/32 makes (ulp 1/16 at 8..16),
    values that round past bf16's largest, infinities and a NaN."""
    x = (torch.randn(*shape) * 3).bfloat16()
    flat = x.view(-1)
    flat[:8] = torch.tensor([8.0, 8.0625, 9.0, 9.0625, 3.3895e38, -3.3895e38, float("inf"), float("nan")])
    return x


def test_bf16_forms_equal_the_fp32_kernels_rounded_once():
    """The bf16 forms read bf16 exactly as fp32 and round each result once, to nearest even (a NaN stays
    NaN): equal, bit for bit, to the fp32 kernels on the widened inputs with their results rounded by torch."""
    torch.manual_seed(5)
    N, D = 70, 48
    bias = torch.full((D,), 1 / 32)
    bias[8:] = torch.randn(D - 8)
    bias[4:6] = 1e36  # 3.3895e38 + 1e36: finite in fp32, past bf16's largest: rounds to inf
    same = dict(rtol=0, atol=0, equal_nan=True)

    h = _bf16_awkward(N, D).requires_grad_()
    h32 = h.detach().float().requires_grad_()
    y, y32 = cpu_kernels.bias_gelu(h, bias), cpu_kernels.bias_gelu(h32, bias)
    assert y.dtype == torch.bfloat16 and torch.isinf(y[0, 4]) and torch.isnan(y[0, 7])
    torch.testing.assert_close(y, y32.bfloat16(), **same)
    g = torch.randn(N, D).bfloat16()
    y.backward(g)
    y32.backward(g.float())
    torch.testing.assert_close(h.grad, h32.grad.bfloat16(), **same)

    h = (torch.randn(N, D) * 2).bfloat16().requires_grad_()
    h32 = h.detach().float().requires_grad_()
    residual, bias = torch.randn(N, D), torch.randn(D, requires_grad=True)
    norm = torch.nn.LayerNorm(D)
    torch.manual_seed(6)
    y = cpu_kernels.add_norm(h, bias, residual, norm, 0.1)
    torch.manual_seed(6)
    y32 = cpu_kernels.add_norm(h32, bias, residual, norm, 0.1)
    assert y.dtype == torch.float32
    torch.testing.assert_close(y, y32, **same)  # the same fp32 maths on the same values, the same mask
    g = torch.randn(N, D)
    y.backward(g)
    bias_grad, bias.grad = bias.grad.clone(), None
    y32.backward(g)
    assert h.grad.dtype == torch.bfloat16
    torch.testing.assert_close(h.grad, h32.grad.bfloat16(), **same)
    torch.testing.assert_close(bias_grad, bias.grad, **same)

    from masklm.models.heads import cross_entropy_sum

    x = (torch.randn(9, 37) * 4).bfloat16().requires_grad_()  # V = 37: a scalar tail
    x32 = x.detach().float().requires_grad_()
    target = torch.randint(0, 37, (9,))
    loss, loss32 = cross_entropy_sum(x, target, excluded=3), cross_entropy_sum(x32, target, excluded=3)
    assert loss.item() == loss32.item()
    loss.backward()
    loss32.backward()
    assert x.grad.dtype == torch.bfloat16 and (x.grad[:, 3] == 0).all()
    torch.testing.assert_close(x.grad, x32.grad.bfloat16(), **same)


def test_bert_bf16_autocast_step_uses_the_kernels_and_matches_pytorchs_ops(monkeypatch):
    """Under bf16 autocast, BERT's sublayer exits, GELU and loss go through the kernels' bf16 forms (attention
    keeps SDPA), and the loss and gradients match the same step on PyTorch's ops to bf16's precision."""
    from masklm.models.heads import cross_entropy_sum

    ids = torch.randint(5, 64, (4, 16), generator=torch.Generator().manual_seed(0))
    labels = torch.full_like(ids, -100)
    labels[:, ::3] = ids[:, ::3]
    calls = []
    for name in ("add_norm", "bias_gelu", "cross_entropy_forward", "attend_fused"):
        real = getattr(cpu_kernels, name)
        monkeypatch.setattr(cpu_kernels, name, lambda *a, _n=name, _r=real, **k: calls.append(_n) or _r(*a, **k))

    def step(model):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits = model(ids, labels=labels, return_loss=False).logits
        loss = cross_entropy_sum(logits, labels[labels != -100])  # outside autocast, as the trainer takes it
        loss.backward()
        return loss.item(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    loss, fused = step(_tiny_bert(0.0))
    assert sorted(set(calls)) == ["add_norm", "bias_gelu", "cross_entropy_forward"]
    assert calls.count("add_norm") == 4 and calls.count("bias_gelu") == 2
    monkeypatch.setattr(cpu_kernels, "usable", lambda *a, **k: False)
    ref_loss, explicit = step(_tiny_bert(0.0))
    assert abs(loss - ref_loss) < 1e-2 * ref_loss
    for name in fused:
        scale = explicit[name].abs().max().item()
        assert (fused[name] - explicit[name]).abs().max().item() <= 0.03 * scale + 1e-6, name


def test_bias_gelu_equals_exact_gelu_forward_and_backward():
    torch.manual_seed(3)
    h = (torch.randn(6, 5, 48) * 4).requires_grad_()  # well into both tails
    bias = torch.randn(48, requires_grad=True)
    y = cpu_kernels.bias_gelu(h, bias)
    grad = torch.randn_like(y)
    (y * grad).sum().backward()
    got = h.grad.clone(), bias.grad.clone()
    h.grad = bias.grad = None
    ref = torch.nn.functional.gelu(h.double() + bias.double())
    (ref * grad.double()).sum().backward()
    assert torch.allclose(y.double(), ref, atol=2e-6, rtol=1e-6), (y - ref).abs().max()
    assert torch.allclose(got[0].double(), h.grad.double(), atol=2e-6)
    assert torch.allclose(got[1].double(), bias.grad.double(), atol=1e-5)


@pytest.mark.parametrize("V, excluded, weighted", [(64, None, False), (37, 3, True), (100, 0, True)])
def test_cross_entropy_sum_through_the_kernel_equals_log_softmax(V, excluded, weighted, monkeypatch):
    """V not a multiple of 16 (a scalar tail), the excluded token the largest logit of its rows, weights."""
    from masklm.models.heads import cross_entropy_sum

    calls = []
    real = cpu_kernels.cross_entropy_forward
    monkeypatch.setattr(cpu_kernels, "cross_entropy_forward", lambda *a: calls.append(1) or real(*a))

    torch.manual_seed(4)
    x = (torch.randn(9, V) * 5).requires_grad_()
    if excluded is not None:
        with torch.no_grad():
            x[:, excluded] = 40.0  # excluded must not set the softmax's scale
    target = torch.randint(5, V, (9,))
    weights = torch.rand(9) if weighted else None
    assert cpu_kernels.usable(x, multiple=1)
    loss = cross_entropy_sum(x, target, weights, excluded)
    (loss * 0.5).backward()
    got = x.grad.clone()
    x.grad = None
    xd = x.double()
    if excluded is not None:
        xd = xd.index_fill(-1, torch.tensor([excluded]), float("-inf"))
    nll = -xd.log_softmax(-1).gather(1, target[:, None]).squeeze(1)
    ref = (nll if weights is None else nll * weights.double()).sum()
    (ref * 0.5).backward()
    assert calls == [1]  # the kernel ran (the check is made outside the Function, where grad mode is on)
    assert loss.dtype == torch.float32 and abs(loss.item() - ref.item()) < 1e-4 * max(1.0, ref.item())
    assert torch.allclose(got.double(), x.grad.double(), atol=1e-6)
    if excluded is not None:
        assert (got[:, excluded] == 0).all()


def test_masklm_train_says_when_the_kernels_cannot_be_used(tmp_path, monkeypatch, capsys):
    """A CPU run without a compiler still trains, and says in one line why it is slower."""
    from test_training import write_corpus

    from masklm.cli import main

    corpus = write_corpus(tmp_path / "toy.txt")
    monkeypatch.setattr(cpu_kernels, "unavailable", lambda: "no C++ compiler found (install g++ or set CXX)")
    monkeypatch.setattr(cpu_kernels, "usable", lambda *a, **k: False)
    assert main(["train", "--corpus", str(corpus), "--out", str(tmp_path / "run"), "--vocab-size", "120",
                 "--size", "tiny", "--max-steps", "2", "--batch-size", "4", "--seq-len", "32", "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert "fused CPU kernels not used: no C++ compiler found (install g++ or set CXX); training runs on " \
           "PyTorch's ops (slower)" in err
