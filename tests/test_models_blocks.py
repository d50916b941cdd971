"""MST-Net building blocks checked against independent computations (PyTorch / hand formulas)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from mstnet.models.blocks import (
    ConvStemPatchEmbedding,
    LinearPatchEmbedding,
    MultiHeadSelfAttention,
    TransformerBlock,
    upsampling_factors,
)
from mstnet.models.clinical import ClinicalEncoder
from mstnet.models.decoder import UNETRDecoder
from mstnet.models.fusion import CrossModalAttentionFusion, TemporalFusion
from mstnet.models.resnet3d import GlobalBranchResNet3d
from mstnet.models.stdm import STDM
from mstnet.models.vit import ViTEncoder


@pytest.fixture(autouse=True)
def seeded():
    torch.manual_seed(0)


def test_upsampling_factors_of_the_paper_patch_are_2_4_4_three_times_then_2():
    assert upsampling_factors((16, 128, 128)) == ((2, 4, 4), (2, 4, 4), (2, 4, 4), (2, 2, 2))
    assert upsampling_factors((4, 16, 16)) == ((2, 2, 2), (1, 2, 2), (1, 2, 2), (2, 2, 2))
    assert upsampling_factors((1, 8, 8)) == ((1, 2, 2), (1, 2, 2), (1, 1, 1), (1, 2, 2))


@pytest.mark.parametrize("patch", [(16, 128, 128), (4, 16, 16), (8, 16, 16), (1, 32, 4), (2, 2, 2), (1, 1, 1)])
def test_upsampling_factors_multiply_to_the_patch(patch):
    factors = upsampling_factors(patch)
    assert len(factors) == 4
    for axis in range(3):
        assert math.prod(f[axis] for f in factors) == patch[axis]


def test_upsampling_factors_reject_non_powers_of_two():
    with pytest.raises(ValueError, match="power of two"):
        upsampling_factors((3, 16, 16))


def test_self_attention_equals_torch_multihead_attention_with_the_same_weights():
    attention = MultiHeadSelfAttention(32, 4).eval()
    reference = nn.MultiheadAttention(32, 4, batch_first=True).eval()
    with torch.no_grad():
        reference.in_proj_weight.copy_(attention.qkv.weight)
        reference.in_proj_bias.copy_(attention.qkv.bias)
        reference.out_proj.weight.copy_(attention.out_proj.weight)
        reference.out_proj.bias.copy_(attention.out_proj.bias)
    x = torch.randn(3, 7, 32)
    expected, _ = reference(x, x, x, need_weights=False)
    torch.testing.assert_close(attention(x), expected, atol=1e-5, rtol=1e-5)


def test_transformer_block_is_prenorm_attention_then_relu_mlp():
    block = TransformerBlock(16, 2, 24, dropout=0.0).eval()
    x = torch.randn(2, 5, 16)
    after_attention = x + block.attention(nn.functional.layer_norm(x, (16,), block.norm1.weight, block.norm1.bias, 1e-6))
    hidden = torch.relu(nn.functional.linear(block.norm2(after_attention), block.mlp[0].weight, block.mlp[0].bias))
    expected = after_attention + nn.functional.linear(hidden, block.mlp[3].weight, block.mlp[3].bias)
    torch.testing.assert_close(block(x), expected)
    assert block.norm1.eps == 1e-6


def test_linear_patch_embedding_is_a_linear_map_of_each_flattened_patch():
    embedding = LinearPatchEmbedding(8, (2, 4, 4))
    x = torch.randn(1, 1, 4, 8, 8)
    out = embedding(x)
    assert out.shape == (1, 8, 2, 2, 2)
    patch = x[0, 0, 2:4, 4:8, 0:4].reshape(-1)
    expected = embedding.projection.weight.reshape(8, -1) @ patch + embedding.projection.bias
    torch.testing.assert_close(out[0, :, 1, 1, 0], expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("patch", [(4, 16, 16), (16, 128, 128), (1, 8, 8)])
def test_conv_stem_lands_on_the_same_token_grid_as_the_linear_projection(patch):
    size = tuple(2 * p for p in patch)
    with torch.device("meta"):
        stem = ConvStemPatchEmbedding(32, patch)
        out = stem(torch.zeros(1, 1, *size))
    assert out.shape == (1, 32, 2, 2, 2)


def test_vit_taps_after_every_quarter_and_normalises_only_the_last():
    vit = ViTEncoder((4, 16, 16), (2, 8, 8), hidden_size=16, num_layers=8, num_heads=2, mlp_size=32,
                     embedding_dropout=0.0, dropout=0.0).eval()
    x = torch.randn(2, 1, 4, 16, 16)
    taps = vit(x)
    assert vit.tap_after == (2, 4, 6, 8)
    tokens = vit.patch_embedding(x).flatten(2).transpose(1, 2) + vit.position_embedding
    states = []
    for block in vit.blocks:
        tokens = block(tokens)
        states.append(tokens)
    for tap, index in zip(taps[:3], (1, 3, 5)):
        torch.testing.assert_close(tap, vit.tokens_to_map(states[index]))
    torch.testing.assert_close(taps[3], vit.tokens_to_map(vit.norm(states[7])))
    assert taps[0].shape == (2, 16, 2, 2, 2)


def _reference_attention(stdm: STDM, sequence: torch.Tensor) -> torch.Tensor:
    out, _ = stdm.attention(sequence[None], sequence[None], sequence[None])
    return out[0]


def test_stdm_depth_attention_runs_across_slices_at_each_position():
    stdm = STDM(8, num_heads=2, axis="depth").eval()
    x = torch.randn(4, 8, 3, 2, 2)
    y = stdm.conv(x)
    out = stdm(x, timepoints=2)
    for n, h, w in [(0, 0, 0), (3, 1, 0), (2, 1, 1)]:
        sequence = y[n, :, :, h, w].T  # (D, C)
        torch.testing.assert_close(out[n, :, :, h, w].T, sequence + _reference_attention(stdm, sequence), atol=1e-5, rtol=1e-5)


def test_stdm_time_attention_runs_across_time_points_of_one_patient():
    stdm = STDM(8, num_heads=2, axis="time").eval()
    timepoints = 3
    x = torch.randn(2 * timepoints, 8, 2, 2, 2)
    y = stdm.conv(x)
    out = stdm(x, timepoints=timepoints)
    for b, d, h, w in [(0, 0, 0, 0), (1, 1, 0, 1)]:
        rows = slice(b * timepoints, (b + 1) * timepoints)
        sequence = y[rows, :, d, h, w]  # (T, C)
        expected = sequence + _reference_attention(stdm, sequence)
        torch.testing.assert_close(out[rows, :, d, h, w], expected, atol=1e-5, rtol=1e-5)


def test_stdm_parameter_counts_match_the_release_at_768_and_512_channels():
    with torch.device("meta"):
        assert abs(sum(p.numel() for p in STDM(768).parameters()) / 7.67e6 - 1) < 0.01
        assert abs(sum(p.numel() for p in STDM(512).parameters()) / 3.41e6 - 1) < 0.01


@pytest.mark.parametrize("patch,planar", [((4, 8, 8), False), ((1, 8, 8), True), ((2, 4, 16), False)])
def test_decoder_returns_full_resolution_logits(patch, planar):
    size = (patch[0] * 2, patch[1] * 2, patch[2] * 2)
    decoder = UNETRDecoder(16, patch, (16, 8, 8, 4), num_classes=2, planar=planar).eval()
    grid = (2, 2, 2)
    taps = [torch.randn(1, 16, *grid) for _ in range(4)]
    assert decoder(torch.randn(1, 1, *size), taps).shape == (1, 2, *size)


def test_clinical_encoder_offsets_columns_into_one_table_and_averages_tokens():
    encoder = ClinicalEncoder((3, 4), num_numeric=2, embedding_size=6, output_size=5)
    assert encoder.embedding.num_embeddings == 2 + 3 + 4
    codes = torch.tensor([[2, 0], [1, 3]])
    numeric = torch.tensor([[0.5, -1.0], [2.0, 0.0]])
    table, projection, numeric_projection = encoder.embedding.weight, encoder.categorical_projection, encoder.numeric_projection
    for row in range(2):
        tokens = [projection(table[2 + codes[row, 0]]), projection(table[2 + 3 + codes[row, 1]]), numeric_projection(numeric[row])]
        torch.testing.assert_close(encoder(codes, numeric)[row], torch.stack(tokens).mean(0))


def test_clinical_encoder_names_the_column_with_an_out_of_range_code():
    encoder = ClinicalEncoder((3, 4))
    with pytest.raises(ValueError, match="column 1 of batch row 0 has code 4"):
        encoder(torch.tensor([[0, 4]]), None)
    with pytest.raises(ValueError, match="clinical_categorical is None"):
        encoder(None, None)


def test_cmstf_for_two_time_points_is_the_papers_formula():
    fusion = TemporalFusion(6, "cmstf").eval()
    features = torch.randn(3, 2, 6)
    f0, f1 = features[:, 0], features[:, 1]
    expected = fusion.mlp(fusion.norm(torch.cat([f0, f1, f1 - f0], dim=-1))) + (f0 + f1) / 2
    torch.testing.assert_close(fusion(features), expected)


def test_cmstf_for_three_time_points_averages_consecutive_pairs():
    fusion = TemporalFusion(6, "cmstf", num_timepoints=3).eval()
    features = torch.randn(2, 3, 6)
    pairs = [fusion(features[:, t:t + 2]) for t in range(2)]
    torch.testing.assert_close(fusion(features), (pairs[0] + pairs[1]) / 2)
    single = fusion(features[:, :1])
    torch.testing.assert_close(single, fusion(features[:, [0, 0]]))


def test_cmstf_without_difference_and_simple_fusions():
    features = torch.randn(2, 2, 4)
    nodiff = TemporalFusion(4, "cmstf_nodiff")
    assert nodiff.norm.normalized_shape == (8,)
    torch.testing.assert_close(TemporalFusion(4, "mean")(features), features.mean(1))
    torch.testing.assert_close(TemporalFusion(4, "last")(features), features[:, 1])
    with pytest.raises(ValueError, match="built for 3 time points; got 2"):
        TemporalFusion(4, "concat", num_timepoints=3)(features)


def test_time_encoding_starts_neutral_and_then_depends_on_the_interval():
    plain = TemporalFusion(4, "cmstf").eval()
    timed = TemporalFusion(4, "cmstf", time_encoding=True).eval()
    timed.load_state_dict(plain.state_dict(), strict=False)
    features = torch.randn(2, 2, 4)
    days = torch.tensor([[0.0, 365.0], [0.0, 100.0]])
    torch.testing.assert_close(timed(features, days), plain(features))
    with torch.no_grad():
        timed.time_encoding.projection.weight.normal_()
    assert not torch.allclose(timed(features, days), timed(features, days * 2))
    with pytest.raises(ValueError, match="needs days"):
        timed(features, None)


def test_cmaf_attention_weights_depend_on_both_modalities():
    fusion = CrossModalAttentionFusion(8, num_heads=2, dropout=0.0).eval()
    image, clinical = torch.randn(3, 8), torch.randn(3, 8)
    out = fusion(image, clinical)
    assert out.shape == (3, 16)
    out.sum().backward()
    for module in (fusion.image_query, fusion.image_key, fusion.clinical_query, fusion.clinical_key):
        assert module[0].weight.grad.abs().sum() > 0


def test_global_branch_parameters_and_output_grid():
    branch = GlobalBranchResNet3d(16, (1, 2, 2), channels=(4, 8, 8)).eval()
    assert branch(torch.randn(2, 1, 8, 32, 32)).shape == (2, 16, 1, 2, 2)
    with torch.device("meta"):
        paper = GlobalBranchResNet3d(768, (1, 4, 4))
    convs = 147 * 64 + 4 * 27 * 64 * 64 + 27 * (64 * 128 + 3 * 128 * 128) + 64 * 128 \
        + 27 * (128 * 256 + 3 * 256 * 256) + 128 * 256 + 256 * 768 + 768
    batch_norms = 2 * (64 + 4 * 64 + 5 * 128 + 5 * 256)
    assert sum(p.numel() for p in paper.parameters()) == convs + batch_norms
