"""Bad input gets a specific, helpful error and writes nothing (proved by reading the database back)."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from cstore.errors import ModelExists, PayloadTooLarge, UnknownModel, ValidationError
from cstore.store import Store
from workloads import fingerprint


@pytest.fixture(scope="module")
def store(base_config):
    s = Store.from_config(dataclasses.replace(base_config, max_payload_bytes=4096))
    yield s
    s.close()


@pytest.fixture(scope="module")
def model(store):
    name = "badinput_model"
    if name in {m.name for m in store.list_models()}:
        store.drop_model(name, confirm=name)
    store.create_model(name, {"w": (100,), "emb": (10, 3)}, chunk_size=32)
    store.apply_update(name, "w", [1.0], indices=[1])
    yield name
    store.drop_model(name, confirm=name)


NAN = float("nan")
UPDATE_CASES = [
    # (kwargs for apply_update except name, expected error, message fragment)
    (dict(param="nope", values=[1.0], indices=[0]), ValidationError, "has no parameter 'nope'"),
    (dict(param="w", values=np.ones(99)), ValidationError, "must have shape (100,)"),
    (dict(param="w", values=np.ones((100, 1))), ValidationError, "must have shape (100,)"),
    (dict(param="w", values=["a"], indices=[0]), ValidationError, "must be numeric"),
    (dict(param="w", values=np.array([1 + 2j]), indices=[0]), ValidationError, "must be numeric"),
    (dict(param="w", values=np.array([True]), indices=[0]), ValidationError, "must be numeric"),
    (dict(param="w", values=[1.0], indices=[100]), ValidationError, "out of range [0, 100)"),
    (dict(param="w", values=[1.0], indices=[-1]), ValidationError, "out of range"),
    (dict(param="w", values=[1.0], indices=[1.5]), ValidationError, "1-D array of integers"),
    (dict(param="w", values=[1.0, 2.0], indices=[[1, 2]]), ValidationError, "1-D array of integers"),
    (dict(param="w", values=[], indices=[]), ValidationError, "empty"),
    (dict(param="w", values=[1.0, 2.0], indices=[1]), ValidationError, "values must have shape (1,)"),
    (dict(param="w", values=[NAN], indices=[0]), ValidationError, "NaN or infinity"),
    (dict(param="w", values=np.r_[np.ones(99), np.inf]), ValidationError, "NaN or infinity"),
    (dict(param="w", values=[1.0], indices=[0], lr=NAN), ValidationError, "finite and > 0"),
    (dict(param="w", values=[1.0], indices=[0], lr=-0.1), ValidationError, "finite and > 0"),
    (dict(param="w", values=[1.0], indices=[0], lr=0), ValidationError, "finite and > 0"),
    (dict(param="w", values=[1.0], indices=[0], lr="0.1"), ValidationError, "must be a number"),
    (dict(param="w", values=[1.0], indices=[0], update_type="magic"), ValidationError, "update_type 'magic'"),
    (dict(param="w", values=[1.0], indices=[0], source="space"), ValidationError, "source 'space'"),
    (dict(param="w", values=[1.0], indices=[0], metadata={"x": object()}), ValidationError, "not JSON"),
    (dict(param="w", values=[1.0], indices=[0], metadata=["not", "a", "map"]), ValidationError, "mapping"),
    (dict(param="w", values=[1.0, 2.0], indices=[3, 3], update_type="direct"), ValidationError, "duplicate"),
    (dict(param="emb", values=np.ones(3), indices=[1]), ValidationError, "values must have shape (1, 3)"),
    (dict(param="w", values=np.ones(2000), indices=np.arange(2000) % 100), PayloadTooLarge, "limit is 4096"),
]


@pytest.mark.parametrize("kwargs,error,fragment", UPDATE_CASES,
                         ids=[f"{i}-{c[2][:20]}" for i, c in enumerate(UPDATE_CASES)])
def test_bad_update_writes_nothing(session, store, model, kwargs, error, fragment):
    before = fingerprint(session, store, model)
    kwargs = dict(kwargs)
    param, values = kwargs.pop("param"), kwargs.pop("values")
    with pytest.raises(error) as exc:
        store.apply_update(model, param, values, **kwargs)
    assert fragment in str(exc.value)
    assert fingerprint(session, store, model) == before


def test_unknown_model_is_named_and_writes_nothing(session, store, model):
    before = fingerprint(session, store, model)
    with pytest.raises(UnknownModel, match="unknown model 'no_such_model'.*known models"):
        store.apply_update("no_such_model", "w", [1.0], indices=[0])
    with pytest.raises(UnknownModel):
        store.read_model("no_such_model")
    assert fingerprint(session, store, model) == before


CREATE_CASES = [
    (dict(name="1bad"), {"w": (4,)}, {}, "invalid model name"),
    (dict(name="bad name"), {"w": (4,)}, {}, "invalid model name"),
    (dict(name="okname_c1"), {}, {}, "non-empty mapping"),
    (dict(name="okname_c2"), {"w": (0,)}, {}, "positive dimensions"),
    (dict(name="okname_c3"), {"w": (-3,)}, {}, "positive dimensions"),
    (dict(name="okname_c4"), {"w": "ten"}, {}, "tuple of positive integers"),
    (dict(name="okname_c5"), {"w": (1 << 20, 1 << 20)}, {}, "elements; the limit"),
    (dict(name="okname_c6"), {"bad-param": (4,)}, {}, "invalid parameter name"),
    (dict(name="okname_c7"), {"w": (4,)}, {"chunk_size": 3}, "chunk_size must be"),
    (dict(name="okname_c8"), {"w": (4,)}, {"dtype": "int8"}, "dtype 'int8'"),
    (dict(name="okname_c9"), {"w": np.array([1.0, np.nan])}, {}, "finite numeric"),
    (dict(name="okname_c10"), {"w": (4,)}, {"init": "ones"}, "init must be"),
]


@pytest.mark.parametrize("name,params,kwargs,fragment", CREATE_CASES, ids=[c[3][:24] for c in CREATE_CASES])
def test_bad_model_definition_creates_nothing(session, store, model, name, params, kwargs, fragment):
    before = fingerprint(session, store, model)
    with pytest.raises(ValidationError, match=fragment.replace("(", r"\(").replace(")", r"\)")):
        store.create_model(name["name"], params, **kwargs)
    assert fingerprint(session, store, model) == before


def test_existing_name_snapshot_rollback_and_drop_guards(session, store, model):
    before = fingerprint(session, store, model)
    with pytest.raises(ModelExists, match="already exists"):
        store.create_model(model, {"w": (4,)})
    with pytest.raises(ValidationError, match="needs a reason"):
        store.snapshot(model, reason=" ")
    with pytest.raises(ValidationError, match="no snapshot at version 999"):
        store.rollback(model, 999, reason="x")
    with pytest.raises(ValidationError, match="confirm"):
        store.drop_model(model)
    with pytest.raises(ValidationError, match="confirm"):
        store.drop_model(model, confirm="other")
    assert fingerprint(session, store, model) == before
