"""`scripts/count_macs.py`: a bad override or setting is one line saying what is allowed (as run.py says it),
never a traceback; nothing is counted."""

import pytest

from scripts import count_macs


@pytest.mark.parametrize("override, said", [
    ("method=bogus", "error: In 'config': Could not find 'method/bogus'; allowed: cat, cat_budget"),
    ("method.config.keep_ratioo=0.3", "(did you mean method.config.keep_ratio?)"),
    ("seeed=3", "error: seeed=3: no such setting (did you mean seed?); allowed top-level settings: data"),
    ("model.steps=-1", "error: model.steps=-1 is invalid; allowed: an integer >= 1"),
    ("method.config.keep_ratio=7", "keep_ratio must be a float in (0, 1]"),
    ("model.steps=[1", "error: no viable alternative at input '[1'"),
])
def test_a_bad_override_is_one_line(override, said, capsys):
    with pytest.raises(SystemExit) as stop:
        count_macs.main([override])
    assert said in str(stop.value) and "\n" not in str(stop.value)
    assert capsys.readouterr().out == ""
