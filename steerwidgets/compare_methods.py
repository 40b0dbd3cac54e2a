"""The methods :func:`~steerwidgets.compare` builds, and the data it builds them from.

- :class:`BehaviourData` — training A/B items, held-out A/B items, contrast pairs, open-ended items and the
  prompting baseline's instruction for one behaviour; :func:`behaviour_data` gives the built-in ones;
- :class:`Built` — a built method: its steerer and, where there is one, its additive vector;
- :func:`method_builder` — a name's builder: compare's own recipes (:data:`METHODS`: mean-centring on a
  generic corpus, ICV on every layer, affine on every token of the pairs) or any registered estimator it
  can feed (:func:`registered_builder`); :func:`method_names` lists them;
- :func:`stack_method` — a compare row that is a fixed stack of steerings.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from .data import (
    ABItem,
    DatasetError,
    OpenEndedItem,
    builtin_ab,
    builtin_open_ended,
    builtin_pairs,
    reference_passages,
)
from .interventions import AffineMap, Steering, SteeringError, stack_label
from .methods import ESTIMATORS, affine, get_estimator, icv, mean_centring
from .steerers import SteerFn, affine_steerer, vector_steerer
from .vectors import SteeringVector


@dataclass
class BehaviourData:
    """Training data for building vectors and held-out data for evaluating them.

    Build one for your own behaviour from :func:`~steerwidgets.load_ab_items`,
    :func:`~steerwidgets.load_pairs` and :func:`~steerwidgets.load_open_ended`; keep the test items
    out of the training items. ``pairs`` may be empty (pair-based methods then say they were skipped).
    """

    name: str
    train_items: list[ABItem]
    test_items: list[ABItem]
    pairs: list[Any] = field(default_factory=list)
    open_items: list[OpenEndedItem] = field(default_factory=list)
    instruction: str | None = None  # the prompting baseline: the behaviour asked for in words

    def check(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise SteeringError("BehaviourData needs a name (it labels the table's rows)")
        if len(self.train_items) < 2:
            raise SteeringError(f"{self.name}: give at least 2 training A/B items to build vectors from")
        if len(self.test_items) < 2:
            raise SteeringError(f"{self.name}: give at least 2 held-out A/B items to measure steerability on")
        if not self.open_items:
            raise SteeringError(f"{self.name}: give at least one open-ended item for the likelihood shift")
        overlap = {i.question for i in self.train_items} & {i.question for i in self.test_items}
        if overlap:
            raise SteeringError(
                f"{self.name}: {len(overlap)} test item(s) also appear in training; hold them out"
            )


@dataclass
class Built:
    """A built method: its steerer, and the additive vector where there is one."""

    steer: SteerFn
    vector: SteeringVector | None = None
    note: str = ""


MethodBuilder = Callable[[Any, BehaviourData, int], Built]


def registered_builder(name: str) -> MethodBuilder:
    """compare's builder for an estimator of :data:`steerwidgets.methods.ESTIMATORS`, fed what it reads:
    the training A/B items (``"ab_items"``), the contrast pairs (``"pairs"``), or the pairs when there are
    any and else the A/B items (``"ab_items_or_pairs"``), at ``[layer]``. An :class:`AffineMap` result is
    applied with the ``"affine"`` operator, a vector added."""

    def build(model: Any, data: BehaviourData, layer: int) -> Built:
        estimator = get_estimator(name)
        note = ""
        if estimator.reads == "ab_items":
            source = data.train_items
        elif estimator.reads == "pairs":
            _needs_pairs(data, name)
            source = data.pairs
        elif estimator.reads == "ab_items_or_pairs":
            # PCA on A/B answer-letter differences finds the *letter* direction (y+ is "A" for half the items,
            # "B" for the rest, so that part flips sign and dominates the variance): pairs come first.
            source = data.pairs or data.train_items
            note = "" if data.pairs else "built from A/B items (no contrast pairs): may encode the letter"
        else:
            raise SteeringError(
                f"{name} reads {estimator.reads}, which compare cannot derive from a behaviour's data; "
                "pass (name, builder) instead"
            )
        built = estimator(model, source, [layer])
        if isinstance(built, AffineMap):
            return Built(affine_steerer(built, layer), None, note)
        return Built(vector_steerer(built), built, note)

    return build


def _build_caa(model: Any, data: BehaviourData, layer: int) -> Built:
    return registered_builder("caa")(model, data, layer)


def generic_corpus() -> list[str]:
    """Mean-centring's "all activations" (Jorgensen et al. 2023 centre on generic text, not on the
    behaviour's own data): the built-in reference passages, plain prose unrelated to any behaviour."""
    return list(reference_passages())


def _build_mean_centring(model: Any, data: BehaviourData, layer: int) -> Built:
    _needs_pairs(data, "mean_centring")
    corpus = generic_corpus()
    vec = mean_centring(model, [p.positive for p in data.pairs], corpus, [layer])
    return Built(vector_steerer(vec), vec, f"centred on {len(corpus)} generic reference passages")


def _build_icv(model: Any, data: BehaviourData, layer: int) -> Built:
    _needs_pairs(data, "icv")
    vec = icv(model, [(p.negative, p.positive) for p in data.pairs], None)
    steer = vector_steerer(vec, operator="add_norm_preserving")
    return Built(steer, None, "every layer, norm-preserving; one PCA across layers")


def _build_affine(model: Any, data: BehaviourData, layer: int) -> Built:
    # Fitted on every token of the contrast pairs, since it is applied at every position; with only
    # A/B items, on the answer-letter activations (which meet other positions' activations badly).
    if data.pairs:
        amap = affine(model, data.pairs, layer, tokens="all")
    else:
        amap = affine(model, data.train_items, layer)
    n_src, n_tgt = amap.meta["n_samples"]
    where = amap.meta["read_position"]
    note = f"shrinkage {amap.meta['shrinkage_source']:.2f}, {n_src}+{n_tgt} samples ({where})"
    return Built(affine_steerer(amap, layer), None, note)


#: compare's own recipes for methods it builds differently from :func:`registered_builder`: mean-centring on
#: a generic corpus, ICV on every layer (norm-preserving), affine on every token of the pairs. Every other
#: name is looked up in :data:`steerwidgets.methods.ESTIMATORS`.
METHODS: dict[str, MethodBuilder] = {
    "mean_centring": _build_mean_centring,
    "icv": _build_icv,
    "affine": _build_affine,
}


_FED = ("ab_items", "pairs", "ab_items_or_pairs")  # what registered_builder can feed an estimator


def method_names() -> list[str]:
    """The names :func:`compare` accepts: its own recipes and every registered estimator it can feed."""
    return sorted(set(METHODS) | {name for name, est in ESTIMATORS.items() if est.reads in _FED})


def method_builder(name: str) -> MethodBuilder:
    """compare's builder for a method name (its own recipe first, else the registered estimator)."""
    if name in METHODS:
        return METHODS[name]
    if name in method_names():
        return registered_builder(name)
    raise SteeringError(f"unknown method {name!r}; choose from {method_names()}")


def stack_method(spec: Any) -> tuple[str, list[Steering]] | None:
    """A compare() row that is a fixed stack: ``Steering``, a list of them, or ``(label, stack)``."""
    if isinstance(spec, Steering):
        return stack_label([spec]), [spec]
    if isinstance(spec, (list, tuple)) and spec and all(isinstance(x, Steering) for x in spec):
        return stack_label(list(spec)), list(spec)
    if isinstance(spec, tuple) and len(spec) == 2 and isinstance(spec[0], str):
        inner = stack_method(spec[1])
        if inner is not None:
            return spec[0], inner[1]
    return None


def behaviour_data(name: str, n_items: int, n_train: int | None = None) -> BehaviourData:
    """Built-in data for a behaviour: the first ``n_items`` A/B items are held out for evaluation, the
    rest (at most ``n_train``) train the vectors; ``n_items`` open-ended items; all contrast pairs."""
    items = list(builtin_ab(name))
    if len(items) < n_items + 2:
        raise SteeringError(
            f"{name!r} has {len(items)} A/B items: too few to hold out {n_items} and train on the rest; "
            "lower n_items"
        )
    train = items[n_items:]
    if n_train is not None:
        train = train[:n_train]
    try:
        pairs = list(builtin_pairs(name))
    except DatasetError:
        pairs = []  # the pair-based methods say so in their row
    return BehaviourData(
        name=name,
        train_items=train,
        test_items=items[:n_items],
        pairs=pairs,
        open_items=list(builtin_open_ended(name))[:n_items],
    )


def _needs_pairs(data: BehaviourData, method: str) -> None:
    if not data.pairs:
        raise SteeringError(f"{method} is built from contrast pairs and {data.name!r} has none")


def reference_caa(
    model: Any, data: BehaviourData, layer: int, methods: Sequence[tuple[str, MethodBuilder]]
) -> tuple[Built, bool]:
    """The CAA steerer sizes are matched to, and whether it is the compared method named "caa" (built
    once, reused for its row); else a CAA vector from the training items."""
    for name, builder in methods:
        if name == "caa":
            try:
                return builder(model, data, layer), True
            except SteeringError:
                break
    return _build_caa(model, data, layer), False
