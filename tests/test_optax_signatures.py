"""Every name jaxloss shares with ``optax.losses`` takes optax's parameters as optax does.

Each of optax's parameters is in jaxloss's signature at the same position, of the same
kind (positional-or-keyword or keyword-only) and with the same default, so any call
that optax accepts, positional or by keyword, means the same in jaxloss. jaxloss's own
options follow, keyword-only. Nothing here compiles: it reads signatures.
"""

import inspect

import optax.losses
import pytest

import jaxloss

SHARED = sorted(set(jaxloss.__all__) & {n for n in dir(optax.losses) if not n.startswith("_")})


def test_the_shared_names_are_there():
    """optax 0.2.8 has 32 public losses, all in jaxloss; far fewer means a lookup broke."""
    assert len(SHARED) >= 30, SHARED


def _same_default(ours: object, theirs: object) -> bool:
    if ours is theirs:
        return True
    try:
        return type(ours) is type(theirs) and bool(ours == theirs)
    except Exception:  # noqa: BLE001 (arrays and the like: identity only)
        return False


@pytest.mark.parametrize("name", SHARED)
def test_signature_is_optax_s_then_keyword_only_options(name):
    theirs = list(inspect.signature(getattr(optax.losses, name)).parameters.values())
    ours = list(inspect.signature(getattr(jaxloss, name)).parameters.values())
    assert len(ours) >= len(theirs), f"{name}: optax's {theirs} but jaxloss's {ours}"
    for position, (o, t) in enumerate(zip(ours[:len(theirs)], theirs, strict=True)):
        assert (o.name, o.kind) == (t.name, t.kind), (
            f"{name}: parameter {position} is {o.name!r} ({o.kind.description}) in jaxloss, "
            f"{t.name!r} ({t.kind.description}) in optax")
        assert _same_default(o.default, t.default), (
            f"{name}({o.name}=): default {o.default!r} in jaxloss, {t.default!r} in optax")
    extra = [p for p in ours[len(theirs):] if p.kind is not inspect.Parameter.KEYWORD_ONLY]
    assert not extra, f"{name}: jaxloss's own options must be keyword-only: {extra}"
