"""What the commands share: strict JSON for scripts, checkpoints named by run or file."""

import json
import math


def test_json_for_scripts_is_strict():
    """A diverged model's perplexity is inf: the JSON says null, which every parser reads."""
    from ptblm.cli_options import json_text

    text = json_text({"perplexity": math.inf, "members": [{"perplexity": math.nan}], "tokens": 3})
    assert json.loads(text) == {"perplexity": None, "members": [{"perplexity": None}], "tokens": 3}
