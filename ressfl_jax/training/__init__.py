"""Pure training steps: vanilla SFL (``sfl``); attacker-aware ResSFL and attacks follow."""
