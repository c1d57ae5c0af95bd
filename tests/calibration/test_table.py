import json

import pytest

from trtq.calibration import CalibrationTable, TensorRange
from trtq.core.errors import CalibrationError


def _table():
    return CalibrationTable({"a": TensorRange("a", -1.5, 3.0, "minmax", 8),
                             "b": TensorRange("b", 0.0, 0.0, "minmax", 8)}, "minmax", "ab" * 32, 8)


def test_round_trip(tmp_path):
    path = _table().save(tmp_path / "t.json")
    loaded = CalibrationTable.load(path)
    assert loaded == _table()
    assert json.loads(path.read_text())["version"] == 1
    assert loaded["a"].amax == 3.0


def test_refuses_other_versions_and_garbage(tmp_path):
    obj = _table().to_json()
    obj["version"] = 99
    with pytest.raises(CalibrationError, match="version 99"):
        CalibrationTable.from_json(obj)
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(CalibrationError, match="cannot be read as JSON"):
        CalibrationTable.load(tmp_path / "bad.json")
    with pytest.raises(CalibrationError, match="does not exist"):
        CalibrationTable.load(tmp_path / "missing.json")
    with pytest.raises(CalibrationError, match="not a trtq calibration table"):
        CalibrationTable.from_json({"ranges": {}})


def test_range_validation_and_missing_name():
    with pytest.raises(CalibrationError, match="non-finite"):
        TensorRange("x", float("-inf"), 1.0, "minmax", 1)
    with pytest.raises(CalibrationError, match="empty range"):
        TensorRange("x", 2.0, 1.0, "minmax", 1)
    with pytest.raises(CalibrationError, match="no range for tensor 'zzz'"):
        _table()["zzz"]
