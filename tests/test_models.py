"""Tests of moon_jax.models: standard parameter counts, the stem/head/features/dtype conventions,
BatchNorm behaviour and the registry. Shapes use ``jax.eval_shape``; real forwards are run once
per model on small inputs (module-scoped fixture) to keep the file fast on a CPU."""
from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from moon_jax.models import (
    BN_MOMENTUM,
    MLP,
    MODEL_NAMES,
    VGG16,
    ResNet18,
    ResNet50,
    SmallCNN,
    WideResNet,
    create_model,
    init_variables,
)
from moon_jax.models.common import conv_init

K = 5
# Small inputs each architecture accepts (ResNet-50 forward at 64x64 instead of 224x224).
INPUT_SHAPES = {
    "mlp": (8, 8, 1),
    "small_cnn": (8, 8, 1),
    "resnet18": (32, 32, 3),
    "vgg16": (32, 32, 3),
    "wrn28_10": (32, 32, 3),
    "resnet50": (64, 64, 3),
}
HAS_BN = {name: name != "mlp" for name in MODEL_NAMES}


def num_params(tree) -> int:
    return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(tree))


def abstract_init(model, input_shape):
    return jax.eval_shape(
        lambda: model.init(jax.random.key(0), jnp.zeros((1,) + input_shape), train=False)
    )


def abstract_apply(model, input_shape, batch=2, **kwargs):
    variables = abstract_init(model, input_shape)
    x = jax.ShapeDtypeStruct((batch,) + input_shape, jnp.float32)
    return variables, jax.eval_shape(lambda v, x: model.apply(v, x, **kwargs), variables, x)


# --------------------------------------------------------------------------- parameter counts


@pytest.mark.parametrize(
    "model, input_shape, expected",
    [
        (ResNet18(num_outputs=10), (32, 32, 3), 11_173_962),
        (ResNet50(num_outputs=1000), (224, 224, 3), 25_557_032),
        (VGG16(num_outputs=10), (32, 32, 3), 14_728_266),
        (WideResNet(num_outputs=10), (32, 32, 3), 36_479_194),
    ],
    ids=["resnet18", "resnet50", "vgg16_bn", "wrn28_10"],
)
def test_standard_parameter_counts(model, input_shape, expected):
    variables = abstract_init(model, input_shape)
    assert num_params(variables["params"]) == expected


def test_vgg_conv_bias_accounts_for_the_difference():
    with_bias = num_params(abstract_init(VGG16(10), (32, 32, 3))["params"])
    without = num_params(abstract_init(VGG16(10, conv_bias=False), (32, 32, 3))["params"])
    assert with_bias - without == 2 * 64 + 2 * 128 + 3 * 256 + 6 * 512


def test_registry_builds_the_architectures():
    assert MODEL_NAMES == ("mlp", "small_cnn", "resnet18", "vgg16", "wrn28_10", "resnet50")
    expected = [MLP, SmallCNN, ResNet18, VGG16, WideResNet, ResNet50]
    for name, cls in zip(MODEL_NAMES, expected):
        model = create_model(name, 7)
        assert type(model) is cls and model.num_outputs == 7 and model.dtype == jnp.float32
    wrn = create_model("wrn28_10", 10)
    assert (wrn.depth, wrn.widen_factor, wrn.dropout_rate) == (28, 10, 0.0)
    assert create_model("mlp", 3, hidden=(16,)).hidden == (16,)


def test_create_model_rejects_unknown_names():
    with pytest.raises(ValueError) as err:
        create_model("resnet19", 10)
    assert "resnet19" in str(err.value)
    for name in MODEL_NAMES:
        assert name in str(err.value)


# ------------------------------------------------------------------ conventions (abstract only)


@pytest.mark.parametrize("name", MODEL_NAMES)
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16], ids=["f32", "bf16"])
def test_output_shapes_dtypes_and_head(name, dtype):
    shape = INPUT_SHAPES[name]
    for n_out in (K, K + 1):
        model = create_model(name, n_out, dtype=dtype)
        variables, (logits, features) = abstract_apply(model, shape, return_features=True)
        params = variables["params"]
        assert "stem" in params and "head" in params
        width = params["head"]["kernel"].shape[0]
        assert params["head"]["kernel"].shape == (width, n_out)
        assert logits.shape == (2, n_out) and logits.dtype == jnp.float32
        assert features.shape == (2, width) and features.dtype == jnp.float32
        assert set(variables) == ({"params", "batch_stats"} if HAS_BN[name] else {"params"})
        assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(variables))
        _, only_logits = abstract_apply(model, shape)
        assert only_logits.shape == (2, n_out) and only_logits.dtype == jnp.float32


@pytest.mark.parametrize(
    "name, width", [("mlp", 256), ("small_cnn", 128), ("resnet18", 512), ("vgg16", 512),
                    ("wrn28_10", 640), ("resnet50", 2048)]
)
def test_penultimate_width(name, width):
    variables = abstract_init(create_model(name, K), INPUT_SHAPES[name])
    assert variables["params"]["head"]["kernel"].shape == (width, K)


def _layer_calls(model, input_shape, train=False):
    """Records (module path, module) for every Conv/Dense/BatchNorm call, in call order."""
    calls = []

    def interceptor(next_fun, args, kwargs, context):
        module = context.module
        if context.method_name == "__call__" and isinstance(
            module, (nn.Conv, nn.Dense, nn.BatchNorm)
        ):
            calls.append(("/".join(module.scope.path), module))
        return next_fun(*args, **kwargs)

    variables = abstract_init(model, input_shape)
    x = jax.ShapeDtypeStruct((2,) + input_shape, jnp.float32)

    def apply(v, x):
        with nn.intercept_methods(interceptor):
            return model.apply(v, x, train=train, mutable=["batch_stats"] if train else False)

    jax.eval_shape(apply, variables, x)
    return calls


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_stem_is_first_and_head_is_last_layer(name):
    calls = [(p, m) for p, m in _layer_calls(create_model(name, K), INPUT_SHAPES[name])
             if isinstance(m, (nn.Conv, nn.Dense))]
    paths = [p for p, _ in calls]
    assert paths[0] == "stem" and paths[-1] == "head"
    # The sparse rule matches any path component, so no other layer may reuse these names.
    others = [p for p in paths[1:-1] if {"stem", "head"} & set(p.split("/"))]
    assert not others


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_bfloat16_computes_in_bfloat16_except_head(name):
    out_dtypes = {}

    def interceptor(next_fun, args, kwargs, context):
        out = next_fun(*args, **kwargs)
        if context.method_name == "__call__" and isinstance(context.module, (nn.Conv, nn.Dense)):
            out_dtypes["/".join(context.module.scope.path)] = out.dtype
        return out

    model = create_model(name, K, dtype=jnp.bfloat16)
    variables = abstract_init(model, INPUT_SHAPES[name])
    x = jax.ShapeDtypeStruct((2,) + INPUT_SHAPES[name], jnp.float32)

    def apply(v, x):
        with nn.intercept_methods(interceptor):
            return model.apply(v, x)

    jax.eval_shape(apply, variables, x)
    assert out_dtypes.pop("head") == jnp.float32
    assert out_dtypes and all(d == jnp.bfloat16 for d in out_dtypes.values())


@pytest.mark.parametrize("name", [n for n in MODEL_NAMES if HAS_BN[n]])
def test_every_batchnorm_uses_the_shared_momentum(name):
    calls = _layer_calls(create_model(name, K), INPUT_SHAPES[name], train=True)
    bns = [m for _, m in calls if isinstance(m, nn.BatchNorm)]
    convs = [m for _, m in calls if isinstance(m, nn.Conv)]
    assert bns
    assert all(bn.momentum == BN_MOMENTUM and bn.epsilon == 1e-5 for bn in bns)
    assert all(bn.use_running_average is False for bn in bns)
    # Convs followed by BN carry no bias, except VGG's (PyTorch default, see VGG16's docstring).
    assert all(c.use_bias == (name == "vgg16") for c in convs)
    assert all(c.kernel_init is conv_init for c in convs)
    assert all(bn.use_scale and bn.use_bias for bn in bns)
    assert all(bn.scale_init is nn.initializers.ones for bn in bns)
    assert all(bn.bias_init is nn.initializers.zeros for bn in bns)


def test_resnet50_imagenet_geometry():
    """7x7/2 stem + 3x3/2 pool + three stride-2 stages: 224 -> 7 before pooling."""
    shapes = {}

    def interceptor(next_fun, args, kwargs, context):
        out = next_fun(*args, **kwargs)
        if isinstance(context.module, nn.Conv):
            shapes["/".join(context.module.scope.path)] = out.shape
        return out

    model = ResNet50(num_outputs=1000)
    variables = abstract_init(model, (224, 224, 3))

    def apply(v, x):
        with nn.intercept_methods(interceptor):
            return model.apply(v, x)

    jax.eval_shape(apply, variables, jax.ShapeDtypeStruct((1, 224, 224, 3), jnp.float32))
    assert shapes["stem"] == (1, 112, 112, 64)
    assert shapes["stage1_block1/conv1"] == (1, 56, 56, 64)  # after the max-pool
    assert shapes["stage2_block1/conv1"] == (1, 56, 56, 128)  # v1.5: 1x1 keeps the stride 1
    assert shapes["stage2_block1/conv2"] == (1, 28, 28, 128)  # ... and the 3x3 strides
    assert shapes["stage4_block3/conv3"] == (1, 7, 7, 2048)
    assert variables["params"]["stem"]["kernel"].shape == (7, 7, 3, 64)
    assert "proj_conv" in variables["params"]["stage1_block1"]  # 64 -> 256 needs a projection
    assert "proj_conv" not in variables["params"]["stage1_block2"]


def test_resnet18_cifar_geometry():
    params = abstract_init(ResNet18(10), (32, 32, 3))["params"]
    assert params["stem"]["kernel"].shape == (3, 3, 3, 64)
    assert "proj_conv" not in params["stage1_block1"]  # stride 1, width 64 -> 64
    for stage, width in ((2, 128), (3, 256), (4, 512)):
        assert params[f"stage{stage}_block1"]["proj_conv"]["kernel"].shape == (
            1, 1, width // 2, width)
        assert "proj_conv" not in params[f"stage{stage}_block2"]


def test_wide_resnet_structure_and_depth_check():
    params = abstract_init(WideResNet(10), (32, 32, 3))["params"]
    assert params["stem"]["kernel"].shape == (3, 3, 3, 16)
    assert sum(k.startswith("group") for k in params) == 12  # (28 - 4) / 6 = 4 blocks x 3
    assert params["group1_block1"]["proj_conv"]["kernel"].shape == (1, 1, 16, 160)
    assert params["group3_block4"]["conv2"]["kernel"].shape == (3, 3, 640, 640)
    with pytest.raises(ValueError, match="6n"):
        abstract_init(WideResNet(10, depth=27), (32, 32, 3))


# -------------------------------------------------------------------------- real forwards
#
# Compiling JAX's threefry init takes ~0.4 s per kernel on this CPU (over 20 s for ResNet-50), so
# the forward tests fill the variables with numpy instead; `init_variables` itself is tested on
# the small models at the end.


def random_variables(model, input_shape, seed=0):
    """Variables shaped like ``model.init``'s: He-normal kernels, BN scale 1 / bias 0, running
    mean 0 / var 1, other biases 0, drawn with numpy (no compile)."""
    rng = np.random.default_rng(seed)

    def fill(path, leaf):
        name = path[-1].key
        if name == "kernel":
            fan_in = math.prod(leaf.shape[:-1])
            value = rng.standard_normal(leaf.shape) * math.sqrt(2.0 / fan_in)
        elif name in ("scale", "var"):
            value = np.ones(leaf.shape)
        else:
            value = np.zeros(leaf.shape)
        return jnp.asarray(value, leaf.dtype)

    return jax.tree_util.tree_map_with_path(fill, abstract_init(model, input_shape))


@pytest.fixture(scope="module", params=MODEL_NAMES)
def forward(request):
    """Runs one model for real (one compile): eval with features on a batch of 4, train on 2.

    The eval batch is ``[a, b, a, c]``, and ``a`` is also run among other neighbours, ``[a, c, c,
    c]``: its logits must agree whatever its neighbours are (running statistics, no batch
    dependence).
    """
    name = request.param
    shape = INPUT_SHAPES[name]
    model = create_model(name, K + 1)
    variables = random_variables(model, shape)
    a, b, c = jax.random.normal(jax.random.key(1), (3,) + shape)
    x = jnp.stack([a, b, a, c])

    @jax.jit
    def run(variables, x):
        logits, features = model.apply(variables, x, train=False, return_features=True)
        other_neighbours = model.apply(variables, jnp.stack([x[0], x[3], x[3], x[3]]), train=False)
        train_out = None
        if HAS_BN[name]:
            train_out = model.apply(variables, x[:2], train=True, mutable=["batch_stats"])
        return logits, features, other_neighbours, train_out

    logits, features, other_neighbours, train_out = run(variables, x)
    logits_again, _, _, _ = run(variables, x)
    return dict(name=name, variables=variables, logits=logits, features=features,
                logits_again=logits_again, other_neighbours=other_neighbours, train_out=train_out)


def test_forward_outputs(forward):
    logits, features = forward["logits"], forward["features"]
    head = forward["variables"]["params"]["head"]
    assert logits.shape == (4, K + 1) and logits.dtype == jnp.float32
    assert features.shape == (4, head["kernel"].shape[0]) and features.dtype == jnp.float32
    assert np.all(np.isfinite(logits)) and np.all(np.isfinite(features))
    # `features` is exactly the input of `head`.
    np.testing.assert_allclose(
        features @ head["kernel"] + head["bias"], logits, rtol=1e-4, atol=1e-4)
    # Different inputs give different outputs (the network is not degenerate).
    assert not np.allclose(logits[0], logits[1])


def test_eval_is_deterministic_and_batch_independent(forward):
    logits = np.asarray(forward["logits"])
    np.testing.assert_array_equal(logits, np.asarray(forward["logits_again"]))
    np.testing.assert_allclose(logits[0], logits[2], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(logits[0], np.asarray(forward["other_neighbours"])[0], rtol=1e-5, atol=1e-5)


def test_train_mode_updates_batch_stats(forward):
    if not HAS_BN[forward["name"]]:
        assert "batch_stats" not in forward["variables"]
        return
    logits, updates = forward["train_out"]
    assert logits.shape == (2, K + 1) and logits.dtype == jnp.float32
    old = forward["variables"]["batch_stats"]
    new = updates["batch_stats"]
    assert jax.tree.structure(old) == jax.tree.structure(new)
    changed = jax.tree.map(lambda o, n: bool(np.any(np.asarray(o) != np.asarray(n))), old, new)
    assert all(jax.tree.leaves(changed)), "every BatchNorm layer must update its statistics"


def test_running_average_uses_bn_momentum():
    """One train step moves the running mean by (1 - BN_MOMENTUM) towards the batch mean."""
    model = SmallCNN(num_outputs=K, widths=(4,))
    variables = random_variables(model, (8, 8, 1))
    x = jax.random.normal(jax.random.key(1), (6, 8, 8, 1)) + 3.0
    _, updates = jax.jit(lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"]))(
        variables, x)
    conv_out = jax.lax.conv_general_dilated(
        x, variables["params"]["stem"]["kernel"], (1, 1), ((1, 1), (1, 1)),
        dimension_numbers=("NHWC", "HWIO", "NHWC"))
    old_mean = variables["batch_stats"]["stem_bn"]["mean"]
    expected = BN_MOMENTUM * old_mean + (1 - BN_MOMENTUM) * conv_out.mean(axis=(0, 1, 2))
    np.testing.assert_allclose(
        updates["batch_stats"]["stem_bn"]["mean"], expected, rtol=1e-4, atol=1e-5)


def test_bfloat16_forward_keeps_float32_logits():
    x = jax.random.normal(jax.random.key(1), (3, 8, 8, 1))
    for name in ("mlp", "small_cnn"):
        f32 = create_model(name, K)
        bf16 = create_model(name, K, dtype=jnp.bfloat16)
        variables = random_variables(bf16, (8, 8, 1))
        logits, features = jax.jit(lambda v, x: bf16.apply(v, x, return_features=True))(
            variables, x)
        assert logits.dtype == jnp.float32 and features.dtype == jnp.float32
        reference = jax.jit(f32.apply)(variables, x)
        np.testing.assert_allclose(logits, reference, rtol=0.1, atol=0.1)
        assert not np.array_equal(logits, reference)  # really computed in bfloat16


def test_wide_resnet_dropout_only_in_train_mode():
    model = WideResNet(num_outputs=K, depth=10, widen_factor=1, dropout_rate=0.5)
    variables = random_variables(model, (8, 8, 3))
    x = jax.random.normal(jax.random.key(1), (2, 8, 8, 3))

    @jax.jit
    def run(variables, x, key):
        eval_logits = model.apply(variables, x)
        train_logits, _ = model.apply(variables, x, train=True, mutable=["batch_stats"],
                                      rngs={"dropout": key})
        return eval_logits, train_logits

    eval1, train1 = run(variables, x, jax.random.key(0))
    eval2, train2 = run(variables, x, jax.random.key(1))
    np.testing.assert_array_equal(eval1, eval2)
    assert not np.allclose(train1, train2)
    with pytest.raises(Exception, match="dropout"):  # train mode needs a dropout rng
        jax.eval_shape(
            lambda v: model.apply(v, x, train=True, mutable=["batch_stats"]), variables)


def test_mlp_flattens_any_input_layout():
    model = MLP(num_outputs=K, hidden=(16, 8))
    variables = random_variables(model, (64,))
    x = jax.random.normal(jax.random.key(1), (3, 64))
    apply = jax.jit(model.apply)
    np.testing.assert_array_equal(apply(variables, x), apply(variables, x.reshape(3, 8, 8, 1)))
    assert variables["params"]["stem"]["kernel"].shape == (64, 16)
    assert variables["params"]["head"]["kernel"].shape == (8, K)


# --------------------------------------------------------------------------- init_variables


def test_init_variables_small_cnn():
    """The real (jitted) init: He fan_out convs, BN scale 1 / bias 0, zero head bias."""
    model = SmallCNN(num_outputs=K, widths=(16, 128))
    variables = init_variables(model, jax.random.key(0), (8, 8, 1))
    assert set(variables) == {"params", "batch_stats"}
    assert jax.tree.structure(variables) == jax.tree.structure(
        abstract_init(model, (8, 8, 1)))
    params = variables["params"]
    kernel = np.asarray(params["conv1"]["kernel"])  # 3x3x16x128
    assert abs(kernel.std() / math.sqrt(2.0 / (3 * 3 * 128)) - 1.0) < 0.03
    for bn in ("stem_bn", "bn1"):
        np.testing.assert_array_equal(params[bn]["scale"], 1.0)
        np.testing.assert_array_equal(params[bn]["bias"], 0.0)
        np.testing.assert_array_equal(variables["batch_stats"][bn]["mean"], 0.0)
        np.testing.assert_array_equal(variables["batch_stats"][bn]["var"], 1.0)
    np.testing.assert_array_equal(params["head"]["bias"], 0.0)
    assert "bias" not in params["stem"]
    other = init_variables(model, jax.random.key(1), (8, 8, 1))
    assert not np.array_equal(other["params"]["stem"]["kernel"], params["stem"]["kernel"])


def test_init_variables_mlp_has_no_batch_stats():
    variables = init_variables(MLP(num_outputs=K), jax.random.key(0), (8, 8, 1))
    assert set(variables) == {"params"}
    assert variables["params"]["stem"]["kernel"].shape == (64, 256)
    assert variables["params"]["head"]["kernel"].shape == (256, K)
