"""Benchmark of the synthetic data set: generation speed and task difficulty.

Reports, for the embedded shapes data set:

* generation time of 10,000 32x32 images (and 2,000 64x64 images), best
  and median of a few repeats, on the current CPU;
* test accuracy of two linear classifiers on raw pixels -- closed-form
  ridge regression (best over a grid of penalties, chosen on the test set,
  so optimistic for the linear model) and softmax regression (jax + optax)
  -- for several ``background_bias`` values;
* with ``--convnet``, the test accuracy of a small convnet (Flax NNX)
  trained for a few epochs: the task is learnable by a model that sees
  shapes.

Usage::

    python benchmarks/bench_data.py                 # timings + linear
    python benchmarks/bench_data.py --convnet       # + convnet (minutes on CPU)
"""

from __future__ import annotations

import argparse
import itertools
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from jax_infodiscard.data import (
    SyntheticConfig,
    iterate_batches,
    load_synthetic,
    make_dataset,
    ridge_classifier_accuracy,
)


def time_generation(num: int, config: SyntheticConfig, repeats: int) -> list[float]:
    """Wall-clock seconds of ``make_dataset(num)`` for each repeat."""
    times = []
    for r in range(repeats):
        t0 = time.perf_counter()
        make_dataset(num, seed=100 + r, config=config)
        times.append(time.perf_counter() - t0)
    return times


def softmax_regression_accuracy(
    train_x: np.ndarray,
    train_y: np.ndarray,
    test_x: np.ndarray,
    test_y: np.ndarray,
    *,
    steps: int = 500,
    learning_rate: float = 3e-3,
    weight_decay: float = 1e-4,
) -> float:
    """Test accuracy of multinomial logistic regression on raw pixels."""
    x = jnp.asarray(train_x.reshape(len(train_x), -1))
    mean = x.mean(axis=0)
    x = x - mean
    xt = jnp.asarray(test_x.reshape(len(test_x), -1)) - mean
    y = jnp.asarray(train_y)
    k = int(max(train_y.max(), test_y.max())) + 1
    params = {"w": jnp.zeros((x.shape[1], k)), "b": jnp.zeros((k,))}
    tx = optax.adamw(learning_rate, weight_decay=weight_decay)

    def loss(p: dict) -> jax.Array:
        logits = x @ p["w"] + p["b"]
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    @jax.jit
    def fit(p: dict) -> dict:
        def step(carry: tuple, _: None) -> tuple:
            p, s = carry
            g = jax.grad(loss)(p)
            u, s = tx.update(g, s, p)
            return (optax.apply_updates(p, u), s), None

        (p, _), _ = jax.lax.scan(step, (p, tx.init(p)), None, length=steps)
        return p

    params = fit(params)
    pred = (xt @ params["w"] + params["b"]).argmax(axis=1)
    return float((pred == jnp.asarray(test_y)).mean())


class SmallConvNet(nnx.Module):
    """Five 3x3 conv + BatchNorm + ReLU layers, two max-pools, global pooling.

    Inputs are centred per image (the image's mean colour is subtracted):
    the class is a shape, so only colour *differences* matter.
    """

    def __init__(self, num_classes: int, width: int = 16, *, rngs: nnx.Rngs):
        chans = [3, width, 2 * width, 2 * width, 4 * width, 4 * width]
        self.convs = nnx.List(
            [
                nnx.Conv(cin, cout, (3, 3), use_bias=False, rngs=rngs)
                for cin, cout in itertools.pairwise(chans)
            ]
        )
        self.norms = nnx.List([nnx.BatchNorm(c, rngs=rngs) for c in chans[1:]])
        self.head = nnx.Linear(8 * width, num_classes, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = x - x.mean(axis=(1, 2), keepdims=True)
        for i, (conv, norm) in enumerate(zip(self.convs, self.norms, strict=True)):
            x = jax.nn.relu(norm(conv(x)))
            if i in (0, 2):
                x = nnx.max_pool(x, (2, 2), (2, 2))
        x = jnp.concatenate([x.mean(axis=(1, 2)), x.max(axis=(1, 2))], axis=-1)
        return self.head(x)


def convnet_accuracy(
    train, test, *, epochs: int, width: int, batch_size: int = 128, seed: int = 0
) -> tuple[float, float]:
    """Trains :class:`SmallConvNet`; returns (test accuracy, seconds)."""
    model = SmallConvNet(train.num_classes, width, rngs=nnx.Rngs(seed))
    steps = epochs * (len(train) // batch_size)
    schedule = optax.warmup_cosine_decay_schedule(0.0, 3e-3, 100, steps)
    optimizer = nnx.Optimizer(model, optax.adamw(schedule, 1e-4), wrt=nnx.Param)
    graphdef, state = nnx.split((model, optimizer))

    @jax.jit
    def train_step(state, image, label):
        model, optimizer = nnx.merge(graphdef, state)
        model.train()

        def loss_fn(m):
            logits = m(image)
            return optax.softmax_cross_entropy_with_integer_labels(logits, label).mean()

        loss, grads = nnx.value_and_grad(loss_fn)(model)
        optimizer.update(model, grads)
        return nnx.state((model, optimizer)), loss

    @jax.jit
    def predict(state, image):
        model, _ = nnx.merge(graphdef, state)
        model.eval()
        return model(image).argmax(axis=-1)

    def evaluate(state) -> float:
        correct = 0
        for batch in iterate_batches(test, 500):
            correct += int((predict(state, batch["image"]) == batch["label"]).sum())
        return correct / len(test)

    t0 = time.perf_counter()
    per_epoch = len(train) // batch_size
    for step, batch in enumerate(
        iterate_batches(
            train,
            batch_size,
            shuffle=True,
            seed=seed,
            drop_remainder=True,
            num_epochs=epochs,
        )
    ):
        state, loss = train_step(state, batch["image"], batch["label"])
        if (step + 1) % per_epoch == 0:
            print(
                f"  epoch {(step + 1) // per_epoch:3d}  loss {float(loss):.3f}  "
                f"test {evaluate(state):.3f}  ({time.perf_counter() - t0:.0f} s)",
                flush=True,
            )
    return evaluate(state), time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--train", type=int, default=10_000)
    parser.add_argument("--test", type=int, default=2_000)
    parser.add_argument("--convnet", action="store_true")
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--skip-linear", action="store_true")
    args = parser.parse_args()
    print(f"jax {jax.__version__}, devices {jax.devices()}")

    make_dataset(8, seed=0)  # first-call overheads
    for num, size in [(10_000, 32), (2_000, 64)]:
        ts = time_generation(num, SyntheticConfig(image_size=size), args.repeats)
        print(
            f"generate {num} x {size}x{size}: best {min(ts):.2f} s, "
            f"median {np.median(ts):.2f} s ({num / min(ts):,.0f} images/s)"
        )

    for bias in [] if args.skip_linear else [0.0, 0.5, 1.0]:
        config = SyntheticConfig(background_bias=bias)
        train = load_synthetic("train", args.train, config=config)
        test = load_synthetic("test", args.test, config=config)
        ridge = max(
            ridge_classifier_accuracy(
                train.images,
                train.labels,
                test.images,
                test.labels,
                l2=[1.0, 10.0, 100.0, 1000.0, 10000.0],
            )
        )
        soft = softmax_regression_accuracy(
            train.images, train.labels, test.images, test.labels
        )
        print(
            f"background_bias={bias}: linear on raw pixels -- ridge {ridge:.3f}, "
            f"softmax {soft:.3f} (chance {1 / train.num_classes:.3f})"
        )

    if args.convnet:
        train = load_synthetic("train", args.train)
        test = load_synthetic("test", args.test)
        acc, secs = convnet_accuracy(train, test, epochs=args.epochs, width=args.width)
        print(
            f"small convnet (width {args.width}), {args.epochs} epochs on "
            f"{len(train)} images: test {acc:.3f} ({secs:.0f} s)"
        )


if __name__ == "__main__":
    main()
