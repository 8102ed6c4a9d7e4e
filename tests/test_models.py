"""Tests for the genotype network and the manual baselines (nasaudit.models).

Parameter counts are checked against the canonical architectures. Full-size models are built on
the `meta` device: the count needs only shapes, so no memory or initialisation time is spent.
"""

from __future__ import annotations

import pytest
import torch

from nasaudit.genotype import Genotype, resolve_genotype
from nasaudit.infra.device import seeded
from nasaudit.infra.errors import InputError
from nasaudit.models import build_model, count_parameters, list_models
from nasaudit.models.darts_network import build_genotype_network

BASELINES = (
    "resnet18",
    "densenet121",
    "vgg13_bn",
    "wide_resnet50_2",
    "resnext50_32x4d",
    "dla34",
    "bit_m_r50x1",
)

# Adapting a model: its 3 -> c stem conv k x k (no bias) becomes 3x3, and its 1000-class head
# over D features becomes a 10-class head. Stride and max-pool changes cost no parameters.
STEM_7x7_64 = 3 * 64 * 7 * 7  # 9,408
STEM_3x3_64 = 3 * 64 * 3 * 3  # 1,728


def head(features: int, classes: int) -> int:
    return features * classes + classes  # Linear weight + bias (DLA's 1x1 conv head likewise)


# Canonical counts at 1000 classes, from torchvision (resnet18, densenet121, vgg13_bn,
# wide_resnet50_2, resnext50_32x4d) and timm (dla34, resnetv2_50x1_bit = BiT-M R50x1).
EXPECTED = {
    # torchvision resnet18: 11,689,512 -> 11,173,962
    "resnet18": 11_689_512 - STEM_7x7_64 + STEM_3x3_64 - head(512, 1000) + head(512, 10),
    # torchvision densenet121: 7,978,856 (conv0 7x7 -> 3x3, norm0 kept) -> 6,956,426
    "densenet121": 7_978_856 - STEM_7x7_64 + STEM_3x3_64 - head(1024, 1000) + head(1024, 10),
    # torchvision vgg13_bn: 133,053,736. The stem is already 3x3 stride 1. The classifier
    # 25088-4096-4096-1000 (123,642,856 parameters) becomes one Linear(512, 10). -> 9,416,010
    "vgg13_bn": 133_053_736
    - (head(512 * 7 * 7, 4096) + head(4096, 4096) + head(4096, 1000))
    + head(512, 10),
    # torchvision wide_resnet50_2: 68,883,240 -> 66,847,050
    "wide_resnet50_2": 68_883_240 - STEM_7x7_64 + STEM_3x3_64 - head(2048, 1000) + head(2048, 10),
    # torchvision resnext50_32x4d: 25,028,904 -> 22,992,714
    "resnext50_32x4d": 25_028_904 - STEM_7x7_64 + STEM_3x3_64 - head(2048, 1000) + head(2048, 10),
    # timm dla34: 15,742,104; base layer 3 -> 16 7x7 (2,352) becomes 3x3 (432). -> 15,232,314
    "dla34": 15_742_104 - 3 * 16 * 7 * 7 + 3 * 16 * 3 * 3 - head(512, 1000) + head(512, 10),
    # timm resnetv2_50x1_bit: 25,549,352; StdConv stem 7x7 -> 3x3. -> 23,513,162
    "bit_m_r50x1": 25_549_352 - STEM_7x7_64 + STEM_3x3_64 - head(2048, 1000) + head(2048, 10),
}

FEATURES = {
    "resnet18": 512,
    "densenet121": 1024,
    "vgg13_bn": 512,
    "wide_resnet50_2": 2048,
    "resnext50_32x4d": 2048,
    "dla34": 512,
    "bit_m_r50x1": 2048,
}

# Reduced widths keep the forward tests fast with the canonical structure.
SMALL_WIDTH = {name: 16 for name in BASELINES} | {"dla34": 4}


def test_registry_lists_every_baseline():
    assert set(BASELINES) | {"tiny_cnn"} <= set(list_models())


@pytest.mark.parametrize("name", BASELINES)
def test_canonical_parameter_count(name):
    with torch.device("meta"):
        model = build_model(name, 10)
    assert count_parameters(model) == EXPECTED[name]
    assert model.feature_dim == FEATURES[name]


def test_expected_counts_are_the_derived_numbers():
    # The arithmetic above, spelled out once more for the reader.
    assert EXPECTED == {
        "resnet18": 11_173_962,
        "densenet121": 6_956_426,
        "vgg13_bn": 9_416_010,
        "wide_resnet50_2": 66_847_050,
        "resnext50_32x4d": 22_992_714,
        "dla34": 15_232_314,
        "bit_m_r50x1": 23_513_162,
    }


@pytest.mark.parametrize("name", [*BASELINES, "tiny_cnn"])
def test_forward_features_and_gradients(name):
    width = SMALL_WIDTH.get(name)
    with seeded(0):
        model = build_model(name, 10, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), width=width)
    x = torch.rand(2, 3, 32, 32)
    model.train()
    logits = model(x)
    assert logits.shape == (2, 10)
    logits.logsumexp(1).sum().backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname
    assert model.classifier.weight.grad.abs().sum() > 0
    model.eval()
    with torch.no_grad():
        feats = model.features(x)
        assert feats.shape == (2, model.feature_dim)
        torch.testing.assert_close(model.classifier(feats), model(x))
        out, aux = model.forward_train(x)
    assert aux is None and out.shape == (2, 10)


def test_baselines_are_deterministic_under_a_seed():
    with seeded(1):
        a = build_model("resnet18", 10, width=8)
    with seeded(1):
        b = build_model("resnet18", 10, width=8)
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(pa, pb), name


# --- genotype networks -------------------------------------------------------------------


def expected_genotype_params(g: Genotype, C: int, layers: int, num_classes: int) -> int:
    """The DARTS NetworkCIFAR parameter count from per-op formulas (auxiliary head excluded).

    BN is affine (2 parameters per channel), convs have no bias. Preprocessing a c_in input
    to c channels costs c_in * c + 2c whether it is a 1x1 ReLUConvBN or a FactorizedReduce
    (two c_in -> c/2 1x1 convs).
    """

    def op(name: str, c: int, stride: int) -> int:
        if name.startswith("sep_conv_"):
            k = int(name[-1])
            return 2 * (k * k * c + c * c + 2 * c)
        if name.startswith("dil_conv_"):
            k = int(name[-1])
            return k * k * c + c * c + 2 * c
        if name == "conv_7x1_1x7":
            return 14 * c * c + 2 * c
        if name == "skip_connect" and stride == 2:
            return c * c + 2 * c
        return 0

    total = 3 * (3 * C) * 9 + 2 * (3 * C)  # stem: 3x3 conv to 3C channels + BN
    c_pp, c_p, c = 3 * C, 3 * C, C
    for i in range(layers):
        reduction = i in (layers // 3, 2 * layers // 3)
        c = 2 * c if reduction else c
        ops, concat = (g.reduce, g.reduce_concat) if reduction else (g.normal, g.normal_concat)
        total += (c_pp * c + 2 * c) + (c_p * c + 2 * c)
        total += sum(op(name, c, 2 if reduction and j < 2 else 1) for name, j in ops)
        c_pp, c_p = c_p, len(concat) * c
    return total + c_p * num_classes + num_classes


def test_darts_v2_has_the_published_parameter_count():
    g = resolve_genotype("darts_v2")
    with torch.device("meta"):
        model = build_model("darts_v2", 10)  # C=36, layers=20, auxiliary head on
    # DARTS reports 3.3M; its code counts 3,349,342 without the auxiliary head.
    assert count_parameters(model) == 3_349_342
    assert expected_genotype_params(g, 36, 20, 10) == 3_349_342
    assert count_parameters(model, exclude_auxiliary=False) > 3_349_342
    with torch.device("meta"):
        no_aux = build_genotype_network(g, 10, auxiliary=False)
    assert count_parameters(no_aux, exclude_auxiliary=False) == 3_349_342


@pytest.mark.parametrize("name", ["nasnet", "amoebanet", "pc_darts", "darts_v1"])
def test_other_genotypes_match_the_formula(name):
    g = resolve_genotype(name)
    with torch.device("meta"):
        model = build_genotype_network(g, 100, C=16, layers=8)
    assert count_parameters(model) == expected_genotype_params(g, 16, 8, 100)


def test_build_model_by_genotype_name_trains_with_auxiliary_head():
    with seeded(0):
        model = build_model("darts", 10, C=8, layers=5, drop_path_prob=0.3)
    assert model.drop_path_prob == pytest.approx(0.3)
    x = torch.rand(3, 3, 32, 32)
    model.train()
    logits, aux = model.forward_train(x)
    assert logits.shape == (3, 10) and aux.shape == (3, 10)
    (logits.logsumexp(1).sum() + 0.4 * aux.logsumexp(1).sum()).backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname
    model.eval()
    with torch.no_grad():
        out, aux = model.forward_train(x)
        assert aux is None
        assert model.features(x).shape == (3, model.feature_dim) == (3, 4 * 4 * 8)
        torch.testing.assert_close(model(x), out)


def test_nasnet_with_five_nodes_builds_and_runs():
    g = resolve_genotype("nasnet")
    assert len(g.normal) == 10  # 5 intermediate nodes
    with seeded(0):
        model = build_genotype_network(g, 10, C=8, layers=5)
    model.eval()
    with torch.no_grad():
        assert model(torch.rand(2, 3, 32, 32)).shape == (2, 10)
    # The last cell is a normal cell: NASNet's concatenates 5 nodes of 4C channels each.
    assert model.feature_dim == 5 * 4 * 8


@pytest.mark.parametrize("size", [(28, 28), (17, 23), (64, 64)])
def test_genotype_network_other_input_sizes(size):
    g = resolve_genotype("darts_v2")
    with seeded(0):
        model = build_genotype_network(g, 10, C=4, layers=3)
    model.train()
    logits, aux = model.forward_train(torch.rand(2, 3, *size))
    assert logits.shape == (2, 10) and aux.shape == (2, 10)


def test_drop_path_only_in_training_and_follows_the_seed():
    g = resolve_genotype("darts_v2")
    with seeded(0):
        model = build_genotype_network(g, 10, C=4, layers=3, auxiliary=False, drop_path_prob=0.5)
    x = torch.rand(4, 3, 16, 16)
    model.train()
    with seeded(1):
        a = model(x)
    with seeded(1):
        b = model(x)
    with seeded(2):
        c = model(x)
    torch.testing.assert_close(a, b)
    assert not torch.allclose(a, c)
    model.drop_path_prob = 0.0
    assert model.body.drop_path_prob == 0.0
    torch.testing.assert_close(model(x), model(x))


def test_genotype_like_namedtuple_works():
    # Any object with the four Genotype fields builds (e.g. DARTS's own namedtuple).
    from collections import namedtuple

    Like = namedtuple("Like", "normal normal_concat reduce reduce_concat")
    g = Like(
        [("conv_7x1_1x7", 0), ("sep_conv_7x7", 1)], [2], [("none", 0), ("skip_connect", 1)], [2]
    )
    model = build_genotype_network(g, 5, C=4, layers=3)
    model.eval()
    with torch.no_grad():
        assert model(torch.rand(1, 3, 32, 32)).shape == (1, 5)


def test_unknown_op_is_an_input_error():
    g = Genotype(
        normal=(("sep_conv_9x9", 0), ("skip_connect", 1)),
        normal_concat=(2,),
        reduce=(("max_pool_3x3", 0), ("skip_connect", 1)),
        reduce_concat=(2,),
    )
    with pytest.raises(InputError, match="sep_conv_9x9"):
        build_genotype_network(g, 10, C=4, layers=3)
    # The study's extra ops are fine in "paper" but not in the 8-op DARTS space.
    g2 = g._replace(normal=(("sep_conv_7x7", 0), ("skip_connect", 1)))
    build_genotype_network(g2, 10, C=4, layers=3, space="paper")
    with pytest.raises(InputError, match="sep_conv_7x7"):
        build_genotype_network(g2, 10, C=4, layers=3, space="darts")
